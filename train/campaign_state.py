"""What a training campaign commits so that any machine continues it: plan, position, data order, weights.

A campaign (:mod:`train.campaign`) trains the multitask backbone from scratch for millions of images, far
longer than one machine is lent, in *stretches*. Between stretches everything it needs lives in
``models/campaign/`` (small enough to commit, one commit per stretch, the tree keeping only the latest):

- ``plan.json``    fixed when the campaign starts: datasets and their shares, age balancing, augmentation,
  batch size, chunk size, the input-size stages, the learning-rate schedule, the seed;
- ``state.json``   the position: images seen, chunks done and batches into the next, each sampling pool's
  place in its cycle, and the sha256 of the weights file it belongs to;
- ``weights.npz``  every weight of the model, large tensors as bfloat16 (the top 16 bits of float32, rounded
  to nearest even: about 30 MB for VGG16), small ones (batch-norm statistics, biases) as float32, and
  AdamW's second moments as 8-bit logarithms (15 MB);
- ``log.csv``      one row per stretch (CPU, precision, images seen, images/s, validation per dataset);
- ``history.csv``  one row per evaluation (images seen, learning rate, loss, validation per dataset).

AdamW's second moments are kept as 8-bit logarithms (15 MB; they take about 1,000 steps to rebuild), its
first moments are not (they rebuild within a few dozen): a stretch starts those at zero and ramps the learning
rate back up over ``rewarm_images``. The measured cost of such a restart is in ``docs/campaign.md``.
Nothing here imports TensorFlow; files are written whole and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from train.data import bin_shares

CAMPAIGN_DIR = Path(__file__).resolve().parent.parent / "models" / "campaign"
SCHEMA = "campaign/1"
#: Tensors with at least this many values are stored as bfloat16; smaller ones (biases, batch-norm
#: statistics, heads) as float32: they are a few hundred kB and moving variances need the precision.
BF16_MIN_SIZE = 4096


@dataclass
class Plan:
    """The campaign's fixed recipe. ``stages``: [[input size, images], ...] in order; the last size is the
    backbone's input size. ``datasets``: {name: share of the images drawn} (shares sum to 1)."""

    datasets: dict[str, float]
    stages: list[list[int]] = field(default_factory=lambda: [[64, 1_800_000], [96, 600_000]])
    batch_size: int = 64
    chunk_images: int = 6400
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_images: int = 32_000
    decay_images: int = 360_000  # the last images decay the learning rate linearly to final_lr_fraction
    final_lr_fraction: float = 0.01
    rewarm_images: int = 3_200
    age_balance: float = 0.5
    augment: str = "photo"
    seed: int = 20261206
    eval_every_chunks: int = 5
    data_dirs: dict[str, str] = field(default_factory=dict)  # {dataset: folder as typed}, for continuing
    split_dirs: dict[str, str] = field(default_factory=dict)  # {dataset: split folder} where not the default
    limit: int | None = None  # tests: N training and N//4 validation images per dataset
    schema: str = SCHEMA

    @property
    def total_images(self) -> int:
        return sum(images for _, images in self.stages)

    @property
    def total_chunks(self) -> int:
        return math.ceil(self.total_images / self.chunk_images)

    def size_at(self, images_seen: int) -> int:
        """The input size of the stage that ``images_seen`` falls in (the last one past the end)."""
        end = 0
        for size, images in self.stages:
            end += images
            if images_seen < end:
                return size
        return self.stages[-1][0]

    def lr_at(self, images_seen: float) -> float:
        """Warm-up, then constant, then a linear decay over the last ``decay_images`` (warm-up, stable,
        decay): a stretch may stop anywhere and still leave a backbone that fine-tuning can cool down."""
        warm = min(1.0, images_seen / max(self.warmup_images, 1))
        left = self.total_images - images_seen
        decay = 1.0 if left >= self.decay_images else max(0.0, left) / max(self.decay_images, 1)
        return self.lr * warm * (self.final_lr_fraction + (1 - self.final_lr_fraction) * decay)


@dataclass
class State:
    """Where the campaign stands: ``chunks_done`` whole chunks, then ``batches_done`` batches of the next
    (a stretch also saves within a chunk, every few minutes). ``cursors``: {pool: draws so far} at the start
    of the chunk in progress, for each sampling pool (a dataset, or a dataset's age bin); with the plan's
    seed they fix every later draw."""

    images_seen: int = 0
    chunks_done: int = 0
    batches_done: int = 0
    cursors: dict[str, int] = field(default_factory=dict)
    stretches: int = 0
    weights_sha256: str | None = None
    train_seconds: float = 0.0


def read_plan(folder: Path = CAMPAIGN_DIR) -> Plan | None:
    path = Path(folder) / "plan.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {data.get('schema')!r}, this code reads {SCHEMA!r}")
    return Plan(**data)


def read_state(folder: Path = CAMPAIGN_DIR) -> State:
    path = Path(folder) / "state.json"
    return State(**json.loads(path.read_text())) if path.is_file() else State()


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    _write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_log8(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative values (AdamW's second moments) -> (uint8 codes, float32 [lo, hi]): 0 stays 0, others
    are 1..255 on a log2 scale between the tensor's smallest and largest (a step of (hi - lo) / 254 in
    log2, about 5 % of a step size for a typical range of 40 octaves)."""
    v = np.asarray(v, np.float32)
    positive = v > 0
    if not positive.any():
        return np.zeros(v.shape, np.uint8), np.zeros(2, np.float32)
    logs = np.log2(v[positive])
    lo, hi = float(logs.min()), float(logs.max())
    codes = np.zeros(v.shape, np.uint8)
    codes[positive] = 1 + np.round((logs - lo) / max(hi - lo, 1e-12) * 254).astype(np.uint8)
    return codes, np.array([lo, hi], np.float32)


def from_log8(codes: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    lo, hi = float(bounds[0]), float(bounds[1])
    values = np.exp2(lo + (codes.astype(np.float32) - 1) / 254 * (hi - lo)).astype(np.float32)
    return np.where(codes == 0, np.float32(0), values)


def pack_weights(named: dict[str, np.ndarray], velocities: dict[str, np.ndarray] | None = None) -> bytes:
    """{name: float32 array} -> the bytes of an ``.npz``: large arrays under ``bf16/<name>``, small ones under
    ``f32/<name>``; AdamW's second moments (``velocities``, by variable path) as 8-bit logs under
    ``v8/<path>`` with their range under ``v8range/<path>``."""
    arrays = {}
    for name, value in named.items():
        value = np.asarray(value, np.float32)
        key = "bf16/" if value.size >= BF16_MIN_SIZE else "f32/"
        arrays[key + name] = to_bfloat16(value) if key == "bf16/" else value
    for path, value in (velocities or {}).items():
        arrays["v8/" + path], arrays["v8range/" + path] = to_log8(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_weights(path: Path) -> dict[str, np.ndarray]:
    """The weights in an ``.npz`` of :func:`pack_weights` -> {name: float32 array}."""
    with np.load(path) as data:
        return {key.split("/", 1)[1]: (from_bfloat16(data[key]) if key.startswith("bf16/") else data[key])
                for key in data.files if key.startswith(("bf16/", "f32/"))}


def unpack_velocities(path: Path) -> dict[str, np.ndarray]:
    """The second moments in an ``.npz`` of :func:`pack_weights` -> {variable path: float32 array}."""
    with np.load(path) as data:
        return {key[3:]: from_log8(data[key], data["v8range/" + key[3:]])
                for key in data.files if key.startswith("v8/")}


def save_checkpoint(folder: Path, named: dict[str, np.ndarray], state: State,
                    velocities: dict[str, np.ndarray] | None = None) -> State:
    """Write the weights (and second moments), then the state that names their sha256 (in that order: a kill
    between the two leaves the previous state, which the sha256 check then refuses to pair with the new
    weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = pack_weights(named, velocities)
    _write_bytes(folder / "weights.npz", data)
    state.weights_sha256 = hashlib.sha256(data).hexdigest()
    write_json(folder / "state.json", asdict(state))
    return state


def load_checkpoint(folder: Path) -> tuple[State, dict[str, np.ndarray] | None]:
    """The state and its weights (``None`` for a campaign not started). Raises ``ValueError`` when the
    weights file is not the one the state names (a kill between the two writes)."""
    folder = Path(folder)
    state = read_state(folder)
    path = folder / "weights.npz"
    if state.weights_sha256 is None or not path.is_file():
        return state, None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != state.weights_sha256:
        raise ValueError(f"{path} (sha256 {digest[:12]}) is not the file state.json names "
                         f"({state.weights_sha256[:12]}): restore both from git (`git checkout -- {folder}`)")
    return state, unpack_weights(path)


def append_row(path: Path, row: dict, *, replace_key: str | None = None) -> None:
    """Add a row to a CSV (new columns widen the header). With ``replace_key``, a row with the same value
    in that column is replaced (a stretch updates its own row at every evaluation)."""
    path = Path(path)
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    if replace_key is not None:
        rows = [r for r in rows if r.get(replace_key) != str(row[replace_key])]
    rows.append({k: ("" if v is None else v) for k, v in row.items()})
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _write_bytes(path, out.getvalue().encode())


# ---- the data order -----------------------------------------------------------------------------------

def pool_shares(datasets: dict[str, float], bins: dict[str, np.ndarray], balance: float) -> dict[str, float]:
    """{pool: share}: a dataset's share split over its 5-year age bins by ``n ** (1 - balance)``
    (:func:`train.data.bin_shares`); a dataset without ages (bins all -1) is one pool."""
    shares = {}
    for name, share in datasets.items():
        known = bins[name][bins[name] >= 0]
        if len(known) < len(bins[name]) or not len(known):
            shares[f"{name}/all"] = share
            continue
        for b, s in bin_shares(known, balance).items():
            shares[f"{name}/{b}"] = share * s
    return shares


def pool_members(bins: dict[str, np.ndarray], pools: list[str]) -> dict[str, np.ndarray]:
    """{pool: indices into the dataset's training images}."""
    out = {}
    for pool in pools:
        name, b = pool.rsplit("/", 1)
        out[pool] = np.arange(len(bins[name])) if b == "all" else np.flatnonzero(bins[name] == int(b))
    return out


def chunk_order(plan: Plan, chunk: int, shares: dict[str, float], members: dict[str, np.ndarray],
                cursors: dict[str, int]) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """The examples of chunk ``chunk`` -> ([(dataset, index), ...], cursors after it).

    Which pool each example comes from is drawn with a generator seeded by (plan seed, chunk); each pool
    walks through its members in cycles, cycle k in the order of a permutation seeded by (plan seed, pool,
    k). So the order depends only on the plan, the chunk number and the cursors: a resumed campaign sees
    exactly the examples an uninterrupted one would have."""
    pools = sorted(shares)
    p = np.array([shares[k] for k in pools], np.float64)
    picks = np.random.default_rng([plan.seed, chunk]).choice(len(pools), size=plan.chunk_images, p=p / p.sum())
    cursors = dict(cursors)
    out: list[tuple[str, int]] = [("", 0)] * plan.chunk_images
    for k, pool in enumerate(pools):
        where = np.flatnonzero(picks == k)
        if not len(where):
            continue
        n, start = len(members[pool]), cursors.get(pool, 0)
        positions = np.arange(start, start + len(where))
        cycles = {}
        for slot, pos in zip(where, positions):
            cycle = int(pos // n)
            if cycle not in cycles:
                key = int(hashlib.sha256(pool.encode()).hexdigest()[:8], 16)
                cycles[cycle] = np.random.default_rng([plan.seed, key, cycle]).permutation(n)
            out[slot] = (pool.rsplit("/", 1)[0], int(members[pool][cycles[cycle][pos % n]]))
        cursors[pool] = start + len(where)
    return out, cursors


# ---- weights by layer name ------------------------------------------------------------------------------

def model_weights(model) -> dict[str, np.ndarray]:
    """{``layer/index``: float32 array} of every weight of a Keras model (trainable or not)."""
    return {f"{layer.name}/{i}": np.asarray(w, np.float32)
            for layer in model.layers for i, w in enumerate(layer.get_weights())}


def set_model_weights(model, named: dict[str, np.ndarray], *, strict: bool = True) -> list[str]:
    """Set the layers of ``model`` that ``named`` has weights for (same names and shapes); return their
    names. ``strict``: every layer with weights must be found (resuming); otherwise others are left as
    they are (a task model taking the campaign's backbone)."""
    done = []
    for layer in model.layers:
        current = layer.get_weights()
        if not current:
            continue
        values = [named.get(f"{layer.name}/{i}") for i in range(len(current))]
        if any(v is None or v.shape != c.shape for v, c in zip(values, current)):
            if strict:
                raise ValueError(f"the campaign's weights do not fit layer {layer.name!r}")
            continue
        layer.set_weights(values)
        done.append(layer.name)
    return done


def optimizer_velocities(model) -> dict[str, np.ndarray]:
    """{variable path: AdamW's second moment} of a compiled model's built optimizer (empty where the
    optimizer keeps none)."""
    opt = model.optimizer
    variables, velocities = getattr(opt, "_trainable_variables", []), getattr(opt, "_velocities", [])
    return {var.path: np.asarray(v) for var, v in zip(variables, velocities)}


def set_optimizer_velocities(model, named: dict[str, np.ndarray]) -> int:
    """Set the built optimizer's second moments from ``named`` (same paths and shapes); return how many."""
    opt, done = model.optimizer, 0
    for var, v in zip(getattr(opt, "_trainable_variables", []), getattr(opt, "_velocities", [])):
        value = named.get(var.path)
        if value is not None and tuple(value.shape) == tuple(v.shape):
            v.assign(value)
            done += 1
    return done
