"""Where the API server's memory goes, per component, measured in one process on real photos.

    python -m bench.memory [--photos DIR|synthetic] [--models-dir DIR] [--json PATH]

Each step reports the resident set size (RSS) and glibc's own account of its heap (in use, free in its
arenas, mapped block by block; :mod:`core.memory`):

1. ``start``: Python with core, NumPy, OpenCV and Pillow imported; ``loaded``: both models and the detector
   loaded (:func:`core.pipeline.prepare`).
2. ``queue``: what ``--max-queue`` (32) waiting photos hold as sent (compressed, what the API keeps) and
   decoded (RGB), and what one photo's detection input takes (float32, at most 1280 px).
3. ``detection``: every photo through :func:`core.detect.detect_faces` twice, the interpreters each network
   keeps, and the memory they hold (RSS given back when they are dropped); then the same with PNet fed one
   pyramid level at a time, an interpreter per level shape (48 kept at most), as before the canvases of
   :mod:`core.pnet_canvas`.
4. ``models``: the networks on 1 to 16 faces (at most :data:`core.models.MAX_FACES_PER_CALL` per call) and
   RSS after each; then one call on 25 faces at once, as before that bound.
5. ``large_photo``: the peak RSS above the floor while one 24 MP photo (6000 x 4000 JPEG) is decoded and
   analysed, as the API's worker does (:func:`core.api.analyze_and_trim`).
6. ``allocator``: glibc's free memory and RSS before and after :func:`core.memory.trim`.

The photos are those of ``python -m bench.load`` (``../shared/data/photos`` where it exists). The last line is
one JSON object (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import bench_photos
from core import memory


def snapshot() -> dict[str, float]:
    """RSS and glibc's account of this process, in MB."""
    info = memory.allocator_mb() or {}
    return {"rss": round(memory.rss_mb()[0], 1), **{k: round(v, 1) for k, v in info.items()}}


def held_by(drop) -> float:
    """MB of RSS given back when ``drop()`` releases something (freed memory trimmed before and after)."""
    gc.collect()
    memory.trim()
    before = memory.rss_mb()[0]
    drop()
    gc.collect()
    memory.trim()
    return round(before - memory.rss_mb()[0], 1)


def queue_sizes(photos: list[tuple[str, bytes]], max_queue: int = 32) -> dict[str, float]:
    """MB that ``max_queue`` average photos take as sent and decoded, and one photo's detection input."""
    from PIL import Image

    from core.detect import DETECT_MAX_SIDE

    sent, decoded, detect_in = [], [], []
    for _, data in photos:
        w, h = Image.open(io.BytesIO(data)).size
        scale = min(1.0, DETECT_MAX_SIDE / max(w, h))
        sent.append(len(data))
        decoded.append(w * h * 3)
        detect_in.append(round(w * scale) * round(h * scale) * 3 * 4)
    return {"queue_sent_mb": round(max_queue * float(np.mean(sent)) / 1e6, 1),
            "queue_decoded_mb": round(max_queue * float(np.mean(decoded)) / 1e6, 1),
            "largest_decoded_mb": round(max(decoded) / 1e6, 1),
            "largest_detection_input_mb": round(max(detect_in) / 1e6, 1)}


def large_photo_peak(models, megapixels: int = 24) -> dict[str, float]:
    """MB the API's worker takes above its floor, at its peak, for one large photo (the kernel's peak RSS
    reset first where Linux allows: ``/proc/self/clear_refs``)."""
    import cv2
    from PIL import Image
    from skimage import data as skdata

    from core.api import analyze_and_trim

    w = int((megapixels * 1e6 * 1.5) ** 0.5)
    buf = io.BytesIO()
    Image.fromarray(cv2.resize(skdata.astronaut(), (w, w * 2 // 3), interpolation=cv2.INTER_CUBIC)).save(
        buf, format="JPEG", quality=90)
    photo = buf.getvalue()
    gc.collect()
    memory.trim()
    floor = memory.rss_mb()[0]
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return {"megapixels": megapixels, "peak_above_floor_mb": float("nan")}
    analyze_and_trim(photo, models=models)
    return {"megapixels": megapixels, "jpeg_mb": round(len(photo) / 1e6, 1),
            "peak_above_floor_mb": round(memory.rss_mb()[1] - floor, 1),
            "after_mb": round(memory.rss_mb()[0] - floor, 1)}


def level_by_level(nets: dict) -> Any:
    """A stand-in for :func:`core.mtcnn_lite.pnet_maps` that runs PNet on each level alone, on its own
    interpreter per shape (the way before canvases), and the network that keeps those interpreters."""
    from core import mtcnn_lite

    pnet = mtcnn_lite.LiteNet(nets["pnet"].flatbuffer, nets["pnet"].widths)
    pnet.max_shapes = 48

    def maps(levels: list[np.ndarray], _net) -> list[list[np.ndarray]]:
        return [[out[0] for out in pnet(level[None])] for level in levels]

    return maps, pnet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", help="a folder of photos, or 'synthetic' (default: as python -m bench.load)")
    parser.add_argument("--models-dir", help="default: models/ or AGEGENDER_MODELS_DIR")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from core import mtcnn_lite
    from core.detect import detect_faces, get_detector
    from core.image import load_image
    from core.models import MAX_FACES_PER_CALL
    from core.pipeline import prepare

    out: dict[str, Any] = {"start": snapshot()}
    models = prepare(args.models_dir)
    nets = get_detector().nets
    out["loaded"] = snapshot()
    photos = bench_photos(args.photos)
    out["photos"] = len(photos)
    out["queue"] = queue_sizes(photos)

    images = [load_image(data) for _, data in photos]
    for _ in range(2):
        for rgb in images:
            detect_faces(rgb)
    out["detection"] = {"after": snapshot(),
                        "shapes": {name: len(net._interpreters) for name, net in nets.items()},
                        "interpreters_mb": held_by(lambda: [net._interpreters.clear() for net in nets.values()])}
    maps, pnet = level_by_level(nets)
    real = mtcnn_lite.pnet_maps
    mtcnn_lite.pnet_maps = maps
    try:
        shapes = set()
        for _ in range(2):
            for rgb in images:
                detect_faces(rgb)
                shapes |= set(pnet._interpreters)
    finally:
        mtcnn_lite.pnet_maps = real
    out["detection_level_by_level"] = {"after": snapshot(), "pnet_shapes_seen": len(shapes),
                                       "pnet_shapes_kept": len(pnet._interpreters),
                                       "pnet_interpreters_mb": held_by(pnet._interpreters.clear)}
    del images

    size = next(iter(models.input_sizes.values()))
    faces = np.random.default_rng(0).integers(0, 256, (25, size, size, 3), np.uint8)
    crops = lambda n: {s: faces[:n] for s in set(models.input_sizes.values())}  # noqa: E731
    gc.collect()
    memory.trim()
    per_batch = {}
    for n in (1, 2, 4, 8, 12, 16):
        models.predict(crops(n))
        per_batch[n] = snapshot()["rss"]
    models.networks.run({task: faces for task in models.input_sizes}, models.flip)  # 25 faces in one call
    out["models"] = {"max_faces_per_call": MAX_FACES_PER_CALL, "rss_after_faces": per_batch,
                     "rss_after_25_in_one_call": snapshot()["rss"]}
    out["large_photo"] = large_photo_peak(models)
    gc.collect()
    before = snapshot()
    memory.trim()
    out["allocator"] = {"before_trim": before, "after_trim": snapshot()}

    for key in ("start", "loaded"):
        print(f"{key}: {out[key]}")
    print(f"queue of 32 photos: {out['queue']}")
    print(f"detection (canvases): {out['detection']}")
    print(f"detection (level by level, as before): {out['detection_level_by_level']}")
    print(f"models: {out['models']}")
    print(f"one large photo: {out['large_photo']}")
    print(f"allocator: {out['allocator']}")
    text = json.dumps(out)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
