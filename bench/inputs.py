"""Benchmark inputs, built in code from ``skimage.data.astronaut()`` so anyone can rerun them.

Photos: 240p, 720p and 1080p JPEGs with one face, and with several faces (the astronaut pasted 4 times at
different sizes). Chips: UTKFace chips from ``--data-dir`` when given, else 200 x 200 crops of the
astronaut with varied brightness.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

RESOLUTIONS = {"240p": (426, 240), "720p": (1280, 720), "1080p": (1920, 1080)}


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photo(resolution: str, faces: int) -> bytes:
    """A JPEG of the given resolution holding ``faces`` astronaut heads (1 or several)."""
    w, h = RESOLUTIONS[resolution]
    head = _astronaut()[20:260, 120:340]  # head and shoulders
    canvas = np.full((h, w, 3), (70, 90, 110), np.uint8)
    if faces == 1:
        scale = 0.8 * h / head.shape[0]
        positions = [(w // 2, h // 2, scale)]
    else:
        scale = min(0.45 * h / head.shape[0], w / faces / head.shape[1] * 0.9)
        positions = [(int(w * (i + 0.5) / faces), h // 2 + (i % 2) * h // 8 - h // 16,
                      scale * (1.0 - 0.12 * i)) for i in range(faces)]
    for cx, cy, s in positions:
        img = cv2.resize(head, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        y0, x0 = max(0, cy - img.shape[0] // 2), max(0, cx - img.shape[1] // 2)
        region = canvas[y0:y0 + img.shape[0], x0:x0 + img.shape[1]]
        region[:] = img[: region.shape[0], : region.shape[1]]
    return _jpeg(canvas)


def chips(n: int, data_dir: Path | None = None) -> list[bytes]:
    """``n`` face chips as JPEG bytes."""
    if data_dir and Path(data_dir).is_dir():
        files = sorted(Path(data_dir).glob("*.jpg"))[:n]
        if len(files) == n:
            return [f.read_bytes() for f in files]
    face = cv2.resize(_astronaut()[40:230, 150:320], (200, 200), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    return [_jpeg(np.clip(face * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)) for _ in range(n)]


def write_inputs(folder: Path, n_chips: int, data_dir: Path | None = None) -> dict[str, list[str] | str]:
    """Write every input into ``folder``; return a manifest of their paths (shared with the peer)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, list[str] | str] = {}
    for res in RESOLUTIONS:
        for faces in (1, 4):
            key = f"{res}_{'1face' if faces == 1 else f'{faces}faces'}"
            path = folder / f"{key}.jpg"
            path.write_bytes(photo(res, faces))
            manifest[key] = str(path)
    chip_dir = folder / "chips"
    chip_dir.mkdir(exist_ok=True)
    paths = []
    for i, data in enumerate(chips(n_chips, data_dir)):
        p = chip_dir / f"{i:05d}.jpg"
        p.write_bytes(data)
        paths.append(str(p))
    manifest["chips"] = paths
    return manifest
