"""One timing probe of whichever ``core`` is on PYTHONPATH (run by ``python -m bench.ab``).

    python bench/probe.py MANIFEST.json REPEATS

Uses only ``core.analyze``, ``core.detect.detect_faces``, ``core.pipeline.analyze_many`` and
``core.models.load_models`` (present in every revision being compared) and the input files listed in the
manifest; prints one JSON object: the cold start (from importing ``core`` to the first photo's result), warm
median milliseconds per photo end to end and for detection alone, and chips per second with and without the
test-time flip. ``python -m bench`` times our side with the same two functions.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def warm_median_ms(call: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, Any]:
    """Median milliseconds of ``repeats`` calls after ``warmup`` untimed ones, and the last call's result."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2), result


def photo_latency(data: bytes, models, repeats: int, *, warmup: int = 1) -> tuple[float, int]:
    """Warm median milliseconds of ``core.analyze`` on one photo, and the number of faces it found. The warm-up
    includes tracing the tf.function for this batch size."""
    import core

    ms, faces = warm_median_ms(lambda: core.analyze(data, models=models), repeats, warmup)
    return ms, len(faces)


def detect_latency(data: bytes, repeats: int, *, warmup: int = 3) -> float:
    """Warm median milliseconds of the face detector alone on one photo, decoded once beforehand."""
    import io

    import numpy as np
    from PIL import Image

    from core.detect import detect_faces

    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return warm_median_ms(lambda: detect_faces(rgb), repeats, warmup)[0]


def new_size_latency(data: bytes, models, n: int) -> float:
    """Median milliseconds of ``core.analyze`` on ``n`` copies of a photo, each resized to a size not seen
    before in this process (8 px narrower and 6 px lower each time): what an upload of a new photo costs once
    per-shape set-up (traced functions, interpreters) cannot be reused."""
    import io

    from PIL import Image

    import core

    image = Image.open(io.BytesIO(data)).convert("RGB")
    times = []
    for k in range(1, n + 1):
        buffer = io.BytesIO()
        image.resize((image.width - 8 * k, image.height - 6 * k)).save(buffer, "JPEG", quality=90)
        t = time.perf_counter()
        core.analyze(buffer.getvalue(), models=models)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


def chips_per_second(chips: list[tuple[str, bytes]], models, *, batch_size: int = 64) -> float:
    """Throughput of ``analyze_many`` on already-cropped faces, after one warm-up batch."""
    from core.pipeline import analyze_many

    list(analyze_many(chips[:batch_size], detect=False, batch_size=batch_size, models=models))
    t = time.perf_counter()
    n = sum(1 for _ in analyze_many(chips, detect=False, batch_size=batch_size, models=models))
    return round(n / (time.perf_counter() - t), 2)


def main() -> None:
    manifest = json.loads(Path(sys.argv[1]).read_text())
    repeats = int(sys.argv[2])
    photos = [key for key in manifest if key != "chips"]
    key = "720p_1face" if "720p_1face" in manifest else photos[0]
    started = time.perf_counter()  # cold start: imports, models, detector, first photo
    import core
    from core.models import load_models

    core.analyze(Path(manifest[key]).read_bytes())
    cold_start = time.perf_counter() - started
    models = load_models()
    out = {f"{name}_ms": photo_latency(Path(manifest[name]).read_bytes(), models, repeats, warmup=3)[0]
           for name in photos}
    out.update({f"{name}_detect_ms": detect_latency(Path(manifest[name]).read_bytes(), repeats) for name in photos})
    out[f"{key}_new_size_ms"] = new_size_latency(Path(manifest[key]).read_bytes(), models, 9)
    chips = [(p, Path(p).read_bytes()) for p in manifest["chips"]]
    out["chips_per_s"] = chips_per_second(chips, models)
    out["chips_per_s_no_flip"] = chips_per_second(chips, load_models(tta=False))
    out["cold_start_s"] = round(cold_start, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
