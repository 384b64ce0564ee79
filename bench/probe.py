"""One timing probe of whichever ``core`` is on PYTHONPATH (run by ``python -m bench.ab``).

    python bench/probe.py MANIFEST.json REPEATS

Uses only ``core.analyze`` and ``core.pipeline.analyze_many`` (present in every revision being compared)
and the input files listed in the manifest; prints one JSON object: warm median milliseconds per photo
and chips per second.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    import core
    from core.models import load_models
    from core.pipeline import analyze_many

    manifest = json.loads(Path(sys.argv[1]).read_text())
    repeats = int(sys.argv[2])
    models = load_models()
    out = {}
    for key, path in manifest.items():
        if key == "chips":
            continue
        data = Path(path).read_bytes()
        for _ in range(3):  # warm-up, including tracing for this batch size
            core.analyze(data, models=models)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            core.analyze(data, models=models)
            times.append(time.perf_counter() - t)
        out[f"{key}_ms"] = round(statistics.median(times) * 1000, 2)
    chips = [(p, Path(p).read_bytes()) for p in manifest["chips"]]
    list(analyze_many(chips[:64], detect=False, batch_size=64, models=models))
    t = time.perf_counter()
    n = sum(1 for _ in analyze_many(chips, detect=False, batch_size=64, models=models))
    out["chips_per_s"] = round(n / (time.perf_counter() - t), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
