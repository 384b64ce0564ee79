"""Datasets of labelled faces: names -> labels, duplicate groups, the saved splits, chips and tf.data pipelines.

Three kinds of folder load the same way (:func:`scan`, :func:`load_or_make_split`):

- **UTKFace** chips ``[age]_[gender]_[race]_[datetime].jpg.chip.jpg`` (gender 0 male, 1 female; race 0-4);
- **All-Age-Faces** crops ``[age]_[gender]_aaf_[number].jpg`` (same gender coding; no race label);
- **your own folder** with a ``labels.csv`` (columns ``file,age,gender`` and optionally ``race``), which
  loads as a dataset named after the folder.

UTKFace and AAF are recognised by their file names (:func:`dataset_name`). Malformed names (bad rows of a
``labels.csv``) are skipped and counted. Byte-identical files form a group that stays on one side of the
split. The split is seeded, stratified by age bucket x gender, and saved as three file lists in
``train/splits/<dataset>/``, next to the dataset's MTCNN landmarks (:mod:`train.landmarks`).
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.crop import crop_face
from core.image import load_image
from core.vggface import preprocess_input
from train import landmark_store
from train.options import AUGMENTATIONS

UTKFACE, AAF = "utkface", "aaf"
NAME_RE = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")
AAF_NAME_RE = re.compile(r"^(\d{1,3})_([01])_aaf_(\d+)\.jpg$")
#: The file that makes a folder a dataset of its own: columns file, age, gender and optionally race.
LABELS_CSV = "labels.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_AGE = 116  # UTKFace's oldest label; names above it are malformed

#: Age buckets used for stratification and for per-bucket evaluation.
AGE_BUCKETS = ((0, 12), (13, 19), (20, 39), (40, 59), (60, 200))
SPLITS = ("train", "val", "test")
#: ``train/splits/<dataset>/`` holds each dataset's split lists and landmarks.
SPLITS_ROOT = Path(__file__).resolve().parent / "splits"
#: The UTKFace split (the shipped models' split). Kept for callers that pass a split folder explicitly;
#: ``split_dir=None`` picks ``train/splits/<dataset>`` for any folder.
DEFAULT_SPLIT_DIR = SPLITS_ROOT / UTKFACE
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``name`` is its path relative to the dataset folder."""

    name: str
    age: int  # whole years; -1 where unknown (LFW: such a face trains and scores gender only)
    gender: int  # 0 male, 1 female; -1 where unknown (the face trains and scores age only)
    race: int  # UTKFace coding 0-4; -1 where unknown (AAF, a labels.csv without race)
    dataset: str = UTKFACE
    person: str = ""  # who it is, where known: a person's photos stay on one side of the split


def parse_name(name: str) -> Sample | None:
    """Labels from a UTKFace file name, or ``None`` when the name is malformed."""
    m = NAME_RE.match(name)
    if not m:
        return None
    age, gender, race = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not 0 < age <= MAX_AGE:
        return None
    return Sample(name, age, gender, race, UTKFACE)


def parse_aaf_name(name: str) -> Sample | None:
    """Labels from an All-Age-Faces file name ``[age]_[gender]_aaf_[number].jpg``, or ``None`` when malformed.
    AAF has no race label (``race=-1``)."""
    m = AAF_NAME_RE.match(name)
    if not m:
        return None
    age, gender = int(m.group(1)), int(m.group(2))
    if not 0 < age <= MAX_AGE:
        return None
    return Sample(name, age, gender, -1, AAF)


#: Datasets recognised by their file names.
NAME_PARSERS = {UTKFACE: parse_name, AAF: parse_aaf_name}


def _image_names(data_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(data_dir).iterdir()
                  if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def dataset_name(data_dir: Path) -> str:
    """``"utkface"``, ``"aaf"``, or the folder's own name for a folder with a ``labels.csv``.

    Without a ``labels.csv`` the file names decide: ``aaf`` when most of them contain ``_aaf_``, otherwise
    ``utkface`` (also for a folder of badly named files, which then scans as all malformed).
    """
    data_dir = Path(data_dir)
    if (data_dir / LABELS_CSV).is_file():
        name = data_dir.resolve().name
        if name in NAME_PARSERS:
            raise ValueError(f"{data_dir}: a folder with a {LABELS_CSV} may not be called {name!r} "
                             f"(the name of a built-in dataset); rename it")
        return name
    names = _image_names(data_dir)
    n_aaf = sum("_aaf_" in n for n in names)
    return AAF if names and n_aaf * 2 > len(names) else UTKFACE


#: What each built-in dataset is, for the models' provenance.
DATASET_NOTES = {UTKFACE: "UTKFace aligned & cropped (non-commercial research licence)",
                 AAF: "All-Age-Faces (research use; no race label)"}


def describe_dataset(name: str) -> str:
    """One line about a dataset for the model metadata: the built-in note, or that it is an own folder."""
    return DATASET_NOTES.get(name, f"{name} (own folder with a {LABELS_CSV})")


def default_split_dir(data_dir: Path) -> Path:
    """``train/splits/<dataset>``: where a folder's split lists and landmarks live by default."""
    return SPLITS_ROOT / dataset_name(data_dir)


def age_bucket(age: float) -> str:
    if age < 0:
        return "unknown"
    for lo, hi in AGE_BUCKETS:
        if lo <= age <= hi:
            return f"{lo}-{hi}" if hi < 200 else f"{lo}+"
    return f"{AGE_BUCKETS[-1][0]}+"


BALANCE_BIN_YEARS = 5
BALANCE_LAST_BIN = 80  # ages from here on share one bin


def age_bins(ages: np.ndarray) -> np.ndarray:
    """Ages -> the bins that ``--age-balance`` evens out: 5-year bins (0-4, 5-9, ...), 80 and over in one."""
    ages = np.asarray(ages, dtype=np.float64)
    return (np.minimum(ages, BALANCE_LAST_BIN) // BALANCE_BIN_YEARS).astype(np.int64)


def check_age_balance(balance: float) -> None:
    """Raise ``ValueError`` unless ``balance`` (``--age-balance``) is in [0, 1]."""
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"age balance must be in [0, 1], got {balance}")


def bin_shares(bins: np.ndarray, balance: float) -> dict[int, float]:
    """Sampling share of each age bin for ``balance`` in [0, 1]: a bin of n images gets a share proportional
    to ``n ** (1 - balance)``. 0 keeps the data's own age mix (each image equally often), 1 shows every bin
    equally often, 0.5 is in between (square-root balancing). Shares sum to 1."""
    check_age_balance(balance)
    values, counts = np.unique(np.asarray(bins), return_counts=True)
    mass = counts.astype(np.float64) ** (1.0 - balance)
    return {int(v): float(m / mass.sum()) for v, m in zip(values, mass)}


def scan(data_dir: Path) -> tuple[list[Sample], list[str]]:
    """All well-labelled samples in ``data_dir`` (sorted by name) and the malformed entries that were skipped:
    file names for UTKFace and AAF, ``"labels.csv line N: reason"`` for a folder with a ``labels.csv``."""
    kind = dataset_name(data_dir)
    if kind not in NAME_PARSERS:
        return _scan_labels_csv(Path(data_dir), kind)
    parse = NAME_PARSERS[kind]
    samples, malformed = [], []
    for name in _image_names(data_dir):
        s = parse(name)
        (samples.append(s) if s else malformed.append(name))
    return samples, malformed


_GENDERS = {"0": 0, "1": 1, "m": 0, "male": 0, "f": 1, "female": 1}


def _scan_labels_csv(data_dir: Path, dataset: str) -> tuple[list[Sample], list[str]]:
    """Rows of ``labels.csv``: ``file`` (path relative to the folder), ``age`` (whole years 0-116), ``gender``
    (0/1, m/f or male/female; 1 = female), optionally ``race`` (0-4 in UTKFace's coding, empty = unknown) and
    ``person`` (a name or id: one person's photos stay on one side of the split). An empty age or gender is
    unknown (the face trains only the other model); a row without both is malformed."""
    path = data_dir / LABELS_CSV
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = {c.strip().lower(): c for c in reader.fieldnames or ()}
        missing = {"file", "age", "gender"} - set(columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} "
                             f"(expected file,age,gender[,race])")
        rows = [(reader.line_num, {k: (row.get(c) or "").strip() for k, c in columns.items()}) for row in reader]
    samples: dict[str, Sample] = {}
    malformed = []
    for line, row in rows:
        reason = None
        name, age, gender, race = row["file"], row["age"], row["gender"].lower(), row.get("race", "")
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            reason = f"bad file {name!r} (a path inside the folder)"
        elif not name.lower().endswith(IMAGE_SUFFIXES) or not (data_dir / name).is_file():
            reason = f"no image {name!r}"
        elif name in samples:
            reason = f"{name!r} listed twice"
        elif age and (not age.isdigit() or int(age) > MAX_AGE):
            reason = f"age {age!r} is not a whole number 0-{MAX_AGE} (or empty: unknown)"
        elif gender and gender not in _GENDERS:
            reason = f"gender {row['gender']!r} is not 0/1, m/f or male/female (or empty: unknown)"
        elif not age and not gender:
            reason = "neither age nor gender"
        elif race not in ("", "-1", "0", "1", "2", "3", "4"):
            reason = f"race {race!r} is not 0-4 or empty"
        if reason:
            malformed.append(f"{LABELS_CSV} line {line}: {reason}")
            continue
        samples[name] = Sample(name, int(age) if age else -1, _GENDERS[gender] if gender else -1, int(race or -1),
                               dataset, row.get("person", ""))
    return sorted(samples.values(), key=lambda s: s.name), malformed


def duplicate_groups(data_dir: Path, names: list[str]) -> list[list[str]]:
    """Group names whose files are byte-identical (every name is in exactly one group)."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for name in names:
        digest = hashlib.sha1((Path(data_dir) / name).read_bytes()).hexdigest()
        by_hash[digest].append(name)
    return sorted(by_hash.values())


def join_people(samples: list[Sample], groups: list[list[str]]) -> list[list[str]]:
    """Merge groups that hold photos of one person (``Sample.person``), so that a person, like a set of
    byte-identical files, is never on both sides of a split. Samples without a person keep their groups."""
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    person = {s.name: s.person for s in samples}
    first_of: dict[str, int] = {}
    for i, group in enumerate(groups):
        for name in group:
            who = person.get(name, "")
            if who:
                j = first_of.setdefault(who, i)
                parent[root(i)] = root(j)
    merged: dict[int, list[str]] = defaultdict(list)
    for i, group in enumerate(groups):
        merged[root(i)].extend(group)
    return sorted(sorted(g) for g in merged.values())


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


def load_or_make_split(data_dir: Path, split_dir: Path | None = None, *, seed: int = 42,
                       log=print) -> dict[str, list[Sample]]:
    """Read the saved split of ``data_dir``; create and save it first when absent.

    ``split_dir=None`` means ``train/splits/<dataset>`` (:func:`dataset_name`). Names missing from
    ``data_dir`` are dropped (and counted), so the split also works on a subset of the data.
    """
    split_dir = Path(split_dir) if split_dir is not None else default_split_dir(data_dir)
    samples, malformed = scan(data_dir)
    if malformed:
        log(f"skipped {len(malformed)} malformed entries in {data_dir}, e.g. {malformed[:3]}")
    by_name = {s.name: s for s in samples}
    files = {k: split_dir / f"{k}.txt" for k in SPLITS}
    if not all(f.is_file() for f in files.values()):
        groups = join_people(samples, duplicate_groups(data_dir, [s.name for s in samples]))
        n_dup = sum(len(g) for g in groups if len(g) > 1)
        log(f"{len(samples)} samples, {n_dup} files in {sum(len(g) > 1 for g in groups)} groups of copies or of "
            "one person's photos")
        split = make_split(samples, groups, seed=seed)
        split_dir.mkdir(parents=True, exist_ok=True)
        for k, f in files.items():
            f.write_text("".join(f"{n}\n" for n in split[k]))
        log(f"saved split to {split_dir}: " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    result = {}
    for k, f in files.items():
        names = [n for n in f.read_text().splitlines() if n.strip()]
        result[k] = [by_name[n] for n in names if n in by_name]
        if len(result[k]) < len(names):
            log(f"{k}: {len(names) - len(result[k])} listed files are not in {data_dir}")
    return result


@dataclass(frozen=True)
class Source:
    """One dataset folder with the folder of its split lists and landmarks (``train/splits/<name>``)."""

    name: str
    data_dir: Path
    split_dir: Path

    @classmethod
    def of(cls, data_dir: Path, split_dir: Path | None = None) -> Source:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"{data_dir} is not a folder")
        name = dataset_name(data_dir)
        return cls(name, data_dir, Path(split_dir) if split_dir is not None else SPLITS_ROOT / name)

    @property
    def landmarks_file(self) -> Path:
        return self.split_dir / landmark_store.STORE_NAME


def sources(data_dirs: list[Path], split_dirs: list[Path] | None = None) -> dict[str, Source]:
    """Repeated ``--data-dir`` (and optional ``--split-dir``, matched by position) -> {dataset name: Source}."""
    split_dirs = list(split_dirs or [])
    if split_dirs and len(split_dirs) != len(data_dirs):
        raise ValueError(f"{len(split_dirs)} --split-dir for {len(data_dirs)} --data-dir: give one per "
                         "--data-dir, in the same order, or none (train/splits/<dataset>)")
    out: dict[str, Source] = {}
    for i, data_dir in enumerate(data_dirs):
        src = Source.of(data_dir, split_dirs[i] if split_dirs else None)
        if src.name in out:
            raise ValueError(f"{out[src.name].data_dir} and {data_dir} are both dataset {src.name!r}")
        out[src.name] = src
    return out


def validation_sources(data_dirs: list[Path], split_dirs: list[Path] | None = None
                       ) -> tuple[dict[str, Source], list[Sample]]:
    """The sources of ``data_dirs`` and the union of their saved validation splits (made if missing).

    Raises ``FileNotFoundError``/``ValueError`` for a missing folder or split, and ``ValueError`` when no
    validation sample is found."""
    srcs = sources(data_dirs, split_dirs)
    val = [s for src in srcs.values() for s in load_or_make_split(src.data_dir, src.split_dir)["val"]]
    if not val:
        raise ValueError(f"no validation samples of the saved split in {', '.join(map(str, data_dirs))}")
    return srcs, val


def chip_landmarks(data_dir: Path, samples: list[Sample], *, cache: bool = True, progress: bool = False,
                   store: Path | None = None) -> np.ndarray:
    """MTCNN landmarks of the largest face on each image, exactly as the app detects it -> (N, 5, 2) float32,
    NaN where no face is found.

    Read first from the dataset's landmarks file in the repository (``store``; default
    ``train/splits/<dataset>/landmarks.npz``, see :mod:`train.landmarks`), then, with ``cache``, from this
    machine's ``.cache/``; only names found in neither are computed (and added to ``.cache/``). Entries are
    keyed by file name and file size, and used only when made by the current detector version.
    """
    data_dir = Path(data_dir)
    names = [s.name for s in samples]
    store = Path(store) if store is not None else default_split_dir(data_dir) / landmark_store.STORE_NAME
    out = np.full((len(names), 5, 2), np.nan, np.float32)
    found = np.zeros(len(names), bool)
    landmark_store.lookup(landmark_store.read_current(store), data_dir, names, out, found)
    local = CACHE_DIR / f"landmarks_{dataset_name(data_dir)}_{_folder_key(data_dir)}.npz"
    local_table = landmark_store.read_current(local, warn=False) if cache else {}
    landmark_store.lookup(local_table, data_dir, names, out, found)
    todo = [n for n, f in zip(names, found) if not f]
    if todo:
        if progress:
            print(f"landmarks: {len(names) - len(todo)} of {len(names)} stored, computing {len(todo)} "
                  f"(python -m train.landmarks stores them in the repository)", flush=True)
        computed = landmark_store.compute(data_dir, todo, progress=1000 if progress else 0)
        landmark_store.lookup(computed, data_dir, names, out, found)
        if cache:
            landmark_store.write_landmarks(local, {**local_table, **computed}, dataset=dataset_name(data_dir))
    return out


def _folder_key(data_dir: Path) -> str:
    return hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]


def load_chips(data_dir: Path, samples: list[Sample], size: int, *, cache: bool = True,
               align: bool = False, store: Path | None = None) -> np.ndarray:
    """Decode images and put each through :func:`core.crop.crop_face` -> (N, size, size, 3) uint8.

    ``align=False`` feeds the image as it is (``landmarks=None``): the path of inference with
    ``detect=False`` (a non-square image is stretched to the square). ``align=True`` is the app's path:
    MTCNN landmarks of the image's face (:func:`chip_landmarks`, ``store`` is its landmarks file) onto the
    chip template, the whole image where no face is found. Results are cached in ``.cache/`` keyed by the
    dataset, the folder, the size, every file's name, size and modification time (a file replaced under the
    same name is read again) and, when aligned, the landmarks themselves.
    """
    data_dir = Path(data_dir)
    marks = chip_landmarks(data_dir, samples, cache=cache, progress=True, store=store) if align else None
    key = hashlib.sha1(f"{size}|{data_dir.resolve()}".encode())
    for s in samples:
        stat = (data_dir / s.name).stat()
        key.update(f"\n{s.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    if marks is not None:
        key.update(marks.tobytes())
    path = CACHE_DIR / f"{'aligned' if align else 'chips'}_{dataset_name(data_dir)}_{size}_{key.hexdigest()[:16]}.npy"
    if cache and path.is_file():
        return np.load(path)

    def one(i: int) -> np.ndarray:
        lm = None if marks is None or np.isnan(marks[i]).any() else marks[i].astype(np.float64)
        return crop_face(load_image(data_dir / samples[i].name), lm, size)

    with ThreadPoolExecutor(max_workers=2) as pool:
        arr = (np.stack(list(pool.map(one, range(len(samples))))) if samples
               else np.zeros((0, size, size, 3), np.uint8))
    if cache:
        CACHE_DIR.mkdir(exist_ok=True)
        np.save(path, arr)
    return arr


def load_chips_of(srcs: Mapping[str, Source], samples: list[Sample], size: int, *, cache: bool = True,
                  align: bool = False) -> np.ndarray:
    """:func:`load_chips` for samples of several datasets (``sample.dataset`` picks the source; each
    dataset is loaded and cached on its own) -> one array in the order of ``samples``."""
    unknown = {s.dataset for s in samples} - set(srcs)
    if unknown:
        raise ValueError(f"samples of dataset(s) {sorted(unknown)} but no folder for them")
    out = np.zeros((len(samples), size, size, 3), np.uint8)
    for name, src in srcs.items():
        idx = [i for i, s in enumerate(samples) if s.dataset == name]
        if idx:
            out[idx] = load_chips(src.data_dir, [samples[i] for i in idx], size, cache=cache, align=align,
                                  store=src.landmarks_file)
    return out


def labels(samples: list[Sample], task: str) -> dict[str, np.ndarray] | np.ndarray:
    """Targets for a task: age in years (float32), gender 1 = female (float32), race 0-4 (int32; -1 unknown)."""
    age = np.array([s.age for s in samples], np.float32)
    gender = np.array([s.gender for s in samples], np.float32)
    race = np.array([s.race for s in samples], np.int32)
    if task == "age":
        return age
    if task == "gender":
        return gender
    return {"age": age, "gender": gender, "race": race}


def with_masks(targets):
    """Multitask targets -> (targets, sample weights): an unknown label (-1: race of AAF, age of LFW, ...)
    gets weight 0 in its loss and its (weighted) metrics, and a harmless value (0) in place of -1, so its
    rows never reach that head's loss; ``None`` weights for single-task targets (their samples all have
    the label: :func:`for_task`)."""
    if not isinstance(targets, Mapping):
        return targets, None
    weights = {k: (np.asarray(v) >= 0).astype(np.float32) for k, v in targets.items()}
    return {k: np.maximum(np.asarray(v), 0).astype(np.asarray(v).dtype) for k, v in targets.items()}, weights


def for_task(samples: list[Sample], task: str) -> list[Sample]:
    """The samples that carry the label a task trains on (all of them for ``multitask``)."""
    if task == "age":
        return [s for s in samples if s.age >= 0]
    if task == "gender":
        return [s for s in samples if s.gender >= 0]
    return list(samples)


def _concat(trees: list):
    """Concatenate arrays, or dicts of arrays with the same keys, along the first axis."""
    if isinstance(trees[0], Mapping):
        return {k: np.concatenate([t[k] for t in trees]) for k in trees[0]}
    return np.concatenate(trees)


def make_dataset(images: np.ndarray, targets, *, batch_size: int, training: bool, seed: int = 0,
                 augment: str = "photo"):
    """tf.data pipeline of one array of uint8 crops and their targets -> preprocessed batches, prefetched.

    ``training=False`` (validation): batches in order, :func:`core.vggface.preprocess_input`, nothing random.
    ``training=True``: every image once per epoch in a new seeded order, augmented (``augment``: ``basic``,
    ``photo`` or ``none``, see :mod:`train.augment`); :func:`make_mixed_dataset` with one part.
    """
    if training:
        return make_mixed_dataset({"": (images, targets)}, batch_size=batch_size, seed=seed, augment=augment)
    import tensorflow as tf

    targets, weights = with_masks(targets)
    ds = tf.data.Dataset.from_tensor_slices((images, targets) if weights is None else (images, targets, weights))
    ds = ds.batch(batch_size).map(lambda x, *rest: (preprocess_input(x), *rest),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def dataset_weights(sizes: Mapping[str, int], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Sampling shares per dataset, summing to 1. Default: proportional to size (each image about once per
    epoch). Raises ``ValueError`` for unknown or missing names, negative weights or an all-zero sum."""
    if weights is None:
        weights = dict(sizes)
    unknown, missing = set(weights) - set(sizes), set(sizes) - set(weights)
    if unknown or missing:
        raise ValueError(f"dataset weights for {sorted(unknown)} but no such dataset" if unknown
                         else f"no dataset weight for {sorted(missing)} (give one for each of {sorted(sizes)})")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"dataset weights must be >= 0 with a positive sum, got {dict(weights)}")
    total = sum(weights.values())
    return {k: float(weights[k]) / total for k in sizes}


def make_mixed_dataset(parts: Mapping[str, tuple[np.ndarray, object]], *, batch_size: int,
                       weights: Mapping[str, float] | None = None, seed: int = 0, augment: str = "photo",
                       examples_per_epoch: int | None = None, ages: Mapping[str, np.ndarray] | None = None,
                       age_balance: float = 0.0):
    """Training batches drawn from one or more datasets -> preprocessed, augmented batches, prefetched.

    ``parts``: {dataset: (uint8 crops (N, S, S, 3), targets)}, the same size S and kind of targets in all.
    ``weights``: {dataset: weight}, normalised by :func:`dataset_weights` (default: proportional to N).
    An epoch is ``ceil(examples_per_epoch / batch_size)`` batches, by default as many examples as all parts
    hold together. With one part and that default, every image is seen exactly once per epoch; otherwise
    each example comes from a dataset drawn with the weights (``tf.data.Dataset.sample_from_datasets``) and
    each dataset cycles through its images in a new seeded order. The pipeline moves indices; crops are
    gathered from one tensor, so no shuffle buffer holds images.

    ``age_balance`` > 0 (with ``ages``: {dataset: true age of each image}) draws each dataset's examples by
    age bin with :func:`bin_shares` instead of uniformly, so that rare ages (children, the old) are seen
    more often and the regression is pulled less towards the common adult ages. Each bin cycles through its
    own images in a new seeded order.
    """
    import tensorflow as tf


    if augment not in (*AUGMENTATIONS, "none"):
        raise ValueError(f"unknown augmentation {augment!r}; expected one of {AUGMENTATIONS} or 'none'")
    names = list(parts)
    sizes = {k: len(parts[k][0]) for k in names}
    if not names or min(sizes.values()) == 0:
        raise ValueError(f"every dataset needs training images, got {sizes}")
    shares = dataset_weights(sizes, weights)
    total = examples_per_epoch or sum(sizes.values())
    steps = math.ceil(total / batch_size)

    images = tf.constant(parts[names[0]][0] if len(names) == 1 else np.concatenate([parts[k][0] for k in names]))
    targets, sample_weights = with_masks(_concat([parts[k][1] for k in names]))
    columns = tf.nest.map_structure(tf.constant, (targets,) if sample_weights is None else (targets, sample_weights))
    offsets = np.cumsum([0] + [sizes[k] for k in names])
    if age_balance:
        if ages is None or set(ages) != set(names):
            raise ValueError("age balancing needs the ages of every dataset's images")
        streams = [_balanced_stream(np.asarray(ages[k]), int(offsets[i]), age_balance, seed + 100 * (i + 1))
                   for i, k in enumerate(names)]
    else:
        streams = [tf.data.Dataset.range(offsets[i], offsets[i + 1]).shuffle(
            sizes[k], seed=seed + i, reshuffle_each_iteration=True) for i, k in enumerate(names)]
    if len(names) == 1 and total == sizes[names[0]] and not age_balance:
        index = streams[0]
    else:
        index = tf.data.Dataset.sample_from_datasets(
            [s.repeat() for s in streams], weights=[shares[k] for k in names], seed=seed,
            rerandomize_each_iteration=True).take(steps * batch_size)

    return index_batches(index, images, columns, batch_size=batch_size, augment=augment, seed=seed)


def index_batches(index, images, columns, *, batch_size: int, augment: str, seed: int):
    """Indices (a tf.data dataset of int64) -> preprocessed, augmented training batches, prefetched.

    ``images``: one tensor of uint8 crops; ``columns``: the tuple (targets,) or (targets, sample weights),
    gathered at the same indices. The same indices and ``seed`` give the same batches (every random choice
    of :mod:`train.augment` is a stateless function of seeds drawn from ``seed``), which is what lets the
    campaign (:mod:`train.campaign`) resume a chunk exactly.
    """
    import tensorflow as tf

    from train import augment as aug

    def gather(j):
        return (tf.gather(images, j), *tf.nest.map_structure(lambda t: tf.gather(t, j), columns))

    parallel = tf.data.AUTOTUNE
    if augment == "photo":
        def degrade(j, seed_pair):  # per image before batching: each its own blur, size and JPEG quality
            x, *rest = gather(j)
            return (aug.photo_image(x, seed_pair), *rest)

        ds = aug.with_seeds(index, seed + 1000).map(degrade, num_parallel_calls=parallel)
        ds = aug.with_seeds(ds.batch(batch_size), seed + 2000).map(
            lambda el, s: (aug.photo_batch(el[0], s), *el[1:]), num_parallel_calls=parallel)
    else:
        ds = index.batch(batch_size).map(gather, num_parallel_calls=parallel)
        if augment == "basic":
            layers = aug.augmenter(seed)
            # One batch at a time: the Keras random layers draw from seeded generators whose state is a
            # variable, and parallel calls draw in thread order, so the same --seed would give other images.
            ds = ds.map(lambda x, *r: (layers(tf.cast(x, tf.float32), training=True), *r))
    ds = ds.map(lambda x, *r: (preprocess_input(x), *r), num_parallel_calls=parallel)
    return ds.prefetch(parallel)


def _balanced_stream(ages: np.ndarray, offset: int, balance: float, seed: int):
    """Endless indices ``offset + i`` of one dataset, drawn by age bin with :func:`bin_shares`."""
    import tensorflow as tf

    bins = age_bins(ages)
    shares = bin_shares(bins, balance)
    subs = []
    for n, b in enumerate(shares):
        members = (np.flatnonzero(bins == b) + offset).astype(np.int64)
        subs.append(tf.data.Dataset.from_tensor_slices(members).shuffle(
            len(members), seed=seed + n, reshuffle_each_iteration=True).repeat())
    return tf.data.Dataset.sample_from_datasets(subs, weights=list(shares.values()), seed=seed,
                                                rerandomize_each_iteration=True)
