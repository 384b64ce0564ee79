"""UTKFace: names -> labels, duplicate groups, the saved split, and the tf.data pipelines.

File names are ``[age]_[gender]_[race]_[datetime].jpg.chip.jpg`` (gender 0 male, 1 female; race 0-4).
Malformed names are skipped and counted. Byte-identical files form a group that stays on one side of the
split. The split is seeded, stratified by age bucket x gender, and saved as three file lists.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.crop import crop_face
from core.image import load_image
from core.vggface import preprocess_input

NAME_RE = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")

#: Age buckets used for stratification and for per-bucket evaluation.
AGE_BUCKETS = ((0, 12), (13, 19), (20, 39), (40, 59), (60, 200))
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_DIR = Path(__file__).resolve().parent / "splits"
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"


@dataclass(frozen=True)
class Sample:
    name: str
    age: int
    gender: int  # 0 male, 1 female
    race: int


def parse_name(name: str) -> Sample | None:
    """Labels from a UTKFace file name, or ``None`` when the name is malformed."""
    m = NAME_RE.match(name)
    if not m:
        return None
    age, gender, race = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not 0 < age <= 116:
        return None
    return Sample(name, age, gender, race)


def age_bucket(age: float) -> str:
    for lo, hi in AGE_BUCKETS:
        if lo <= age <= hi:
            return f"{lo}-{hi}" if hi < 200 else f"{lo}+"
    return f"{AGE_BUCKETS[-1][0]}+"


def scan(data_dir: Path) -> tuple[list[Sample], list[str]]:
    """All well-named samples in ``data_dir`` (sorted) and the malformed names that were skipped."""
    samples, malformed = [], []
    for path in sorted(p for p in Path(data_dir).iterdir() if p.is_file()):
        if not path.name.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        s = parse_name(path.name)
        (samples.append(s) if s else malformed.append(path.name))
    return samples, malformed


def duplicate_groups(data_dir: Path, names: list[str]) -> list[list[str]]:
    """Group names whose files are byte-identical (every name is in exactly one group)."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for name in names:
        digest = hashlib.sha1((Path(data_dir) / name).read_bytes()).hexdigest()
        by_hash[digest].append(name)
    return sorted(by_hash.values())


def make_split(samples: list[Sample], groups: list[list[str]], *, seed: int = 42,
               fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Seeded split, stratified by age bucket x gender, that never separates a duplicate group."""
    label = {s.name: s for s in samples}
    strata: dict[tuple[str, int], list[list[str]]] = defaultdict(list)
    for group in groups:
        first = label[group[0]]
        strata[(age_bucket(first.age), first.gender)].append(group)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {k: [] for k in SPLITS}
    for key in sorted(strata):
        items = strata[key]
        order = rng.permutation(len(items))
        n = len(items)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        for rank, idx in enumerate(order):
            part = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            out[part].extend(items[idx])
    return {k: sorted(v) for k, v in out.items()}


def load_or_make_split(data_dir: Path, split_dir: Path = DEFAULT_SPLIT_DIR, *, seed: int = 42,
                       log=print) -> dict[str, list[Sample]]:
    """Read the saved split; create and save it first when absent. Names missing from ``data_dir`` are
    dropped (and counted), so the split also works on a subset of the data."""
    samples, malformed = scan(data_dir)
    if malformed:
        log(f"skipped {len(malformed)} malformed file names, e.g. {malformed[:3]}")
    by_name = {s.name: s for s in samples}
    files = {k: Path(split_dir) / f"{k}.txt" for k in SPLITS}
    if not all(f.is_file() for f in files.values()):
        groups = duplicate_groups(data_dir, [s.name for s in samples])
        n_dup = sum(len(g) for g in groups if len(g) > 1)
        log(f"{len(samples)} samples, {n_dup} files in {sum(len(g) > 1 for g in groups)} duplicate groups")
        split = make_split(samples, groups, seed=seed)
        Path(split_dir).mkdir(parents=True, exist_ok=True)
        for k, f in files.items():
            f.write_text("\n".join(split[k]) + "\n")
        log(f"saved split to {split_dir}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    result = {}
    for k, f in files.items():
        names = [n for n in f.read_text().split() if n]
        result[k] = [by_name[n] for n in names if n in by_name]
        if len(result[k]) < len(names):
            log(f"{k}: {len(names) - len(result[k])} listed files are not in {data_dir}")
    return result


def chip_landmarks(data_dir: Path, samples: list[Sample], *, cache: bool = True,
                   progress: bool = False) -> np.ndarray:
    """MTCNN landmarks of the largest face on each chip, exactly as the app detects it -> (N, 5, 2) float32,
    NaN where no face is found. Cached in ``.cache/`` keyed by the file list."""
    from core.detect import detect_faces

    key = hashlib.sha1(("\n".join(s.name for s in samples) + f"|{Path(data_dir).resolve()}").encode())
    path = CACHE_DIR / f"landmarks_{key.hexdigest()[:16]}.npy"
    if cache and path.is_file():
        return np.load(path)
    out = np.full((len(samples), 5, 2), np.nan, np.float32)
    for i, sample in enumerate(samples):
        faces = detect_faces(load_image(Path(data_dir) / sample.name))
        if faces:
            out[i] = faces[0].landmark_array()
        if progress and (i + 1) % 1000 == 0:
            print(f"landmarks: {i + 1}/{len(samples)}", flush=True)
    if cache:
        CACHE_DIR.mkdir(exist_ok=True)
        np.save(path, out)
    return out


def load_chips(data_dir: Path, samples: list[Sample], size: int, *, cache: bool = True,
               align: bool = False) -> np.ndarray:
    """Decode chips and put each through :func:`core.crop.crop_face` -> (N, size, size, 3) uint8.

    ``align=False`` feeds the chip as it is (``landmarks=None``): the path of inference with
    ``detect=False``. ``align=True`` is the app's path: MTCNN landmarks of the chip's face
    (:func:`chip_landmarks`) onto the chip template, the chip frame where no face is found. Results are
    cached in ``.cache/`` keyed by the file list, size and mode.
    """
    key = hashlib.sha1(("\n".join(s.name for s in samples) + f"|{size}|{Path(data_dir).resolve()}").encode())
    path = CACHE_DIR / f"{'aligned' if align else 'chips'}_{size}_{key.hexdigest()[:16]}.npy"
    if cache and path.is_file():
        return np.load(path)
    marks = chip_landmarks(data_dir, samples, cache=cache, progress=True) if align else None

    def one(i: int) -> np.ndarray:
        lm = None if marks is None or np.isnan(marks[i]).any() else marks[i].astype(np.float64)
        return crop_face(load_image(Path(data_dir) / samples[i].name), lm, size)

    with ThreadPoolExecutor(max_workers=2) as pool:
        arr = (np.stack(list(pool.map(one, range(len(samples))))) if samples
               else np.zeros((0, size, size, 3), np.uint8))
    if cache:
        CACHE_DIR.mkdir(exist_ok=True)
        np.save(path, arr)
    return arr


def labels(samples: list[Sample], task: str) -> dict[str, np.ndarray] | np.ndarray:
    """Targets for a task: age in years (float32), gender 1 = female (float32), race 0-4 (int32)."""
    age = np.array([s.age for s in samples], np.float32)
    gender = np.array([s.gender for s in samples], np.float32)
    race = np.array([s.race for s in samples], np.int32)
    if task == "age":
        return age
    if task == "gender":
        return gender
    return {"age": age, "gender": gender, "race": race}


def augmenter(seed: int):
    """Training-only augmentation: flip, small rotation / scale / shift, brightness and contrast."""
    import keras
    from keras import layers

    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed + 1),
        layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 2),
        layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 3),
        layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 4),
        layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5),
    ], name="augment")


def make_dataset(images: np.ndarray, targets, *, batch_size: int, training: bool, seed: int = 0):
    """tf.data pipeline: (shuffle, augment) -> VGGFace preprocessing -> batches, prefetched."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    if training:
        aug = augmenter(seed)
        # In order, one batch at a time: the random layers draw from seeded generators whose state is a
        # variable, and parallel calls drew in thread order, so the same --seed gave other augmentations
        # (and other weights) from run to run. Still far ahead of training: about 770 img/s at 96 px on
        # 2 cores here (1260 in parallel) against 40-64 img/s for the training steps.
        ds = ds.map(lambda x, y: (aug(tf.cast(x, tf.float32), training=True), y))
    ds = ds.map(lambda x, y: (preprocess_input(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
