"""The training run: config -> data -> model -> ``fit`` with callbacks -> exported ``.h5`` + metadata.

    python -m train age --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf --augment photo

Several ``--data-dir`` train on their mix (:func:`train.data.make_mixed_dataset`); validation reports every
metric on their union (Keras, ``val_*``) and on each dataset alone (``val_mae_aaf``, ...).

A run lives in ``--run-dir`` (default ``runs/<task>``):

- ``config.json``     the full run configuration (also copied next to the exported model);
- ``checkpoint.keras`` the whole model with optimizer state, written after every epoch;
- ``state.json``      the last finished epoch, for ``--resume``;
- ``history.csv``     one row per epoch (CSVLogger, appended across resumes; with several datasets also
  each dataset's validation metrics, e.g. ``val_mae_utkface``, ``val_mae_aaf``);
- ``best.weights.h5`` the best weights at the final input size (lowest ``val_loss``);
- ``model.keras``     the final model (multitask: the backbone that age/gender runs start from).

For ``age`` and ``gender`` the model is exported to ``--out-dir`` (default ``models/``) as
``<task>_model.h5`` in float32 with ``<task>_model.json`` metadata, ``history_<task>.csv`` and
``<task>_run.json``, and for inference as OpenVINO IR next to it (:mod:`train.export`). Training uses
``mixed_bfloat16`` where the hardware supports it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from core.models import DEFAULT_MODELS_DIR, MODEL_FILES, predict_crops
from train.augment import AUGMENTATIONS
from train.data import (
    Source,
    check_age_balance,
    dataset_weights,
    describe_dataset,
    for_task,
    labels,
    load_chips,
    load_chips_of,
    load_or_make_split,
    make_dataset,
    make_mixed_dataset,
    sources,
)
from train.model import TASKS

ROOT = Path(__file__).resolve().parent.parent

#: Bands of predicted age for the calibrated age range, and its coverage (central 80 %).
AGE_BANDS = ((0, 10), (10, 20), (20, 30), (30, 45), (45, 60), (60, 200))
INTERVAL_QUANTILES = (0.10, 0.90)


def parse_schedule(text: str) -> list[tuple[int, int]]:
    """``"64:6,96:4"`` -> [(64, 6), (96, 4)]: input size and epochs per phase (progressive resizing)."""
    phases = []
    for part in text.split(","):
        size, _, epochs = part.partition(":")
        phases.append((int(size), int(epochs)))
    if not phases or any(s < 32 or e < 1 for s, e in phases):
        raise ValueError(f"bad schedule {text!r}: expected SIZE:EPOCHS[,SIZE:EPOCHS...], size >= 32")
    return phases


def parse_dataset_weights(text: str) -> dict[str, float]:
    """``"utkface=1,aaf=2"`` -> {"utkface": 1.0, "aaf": 2.0}."""
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not name.strip() or weight is None:
            raise argparse.ArgumentTypeError(f"bad dataset weights {text!r}: expected NAME=WEIGHT[,NAME=WEIGHT...]")
        out[name.strip()] = weight
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=TASKS)
    p.add_argument("--data-dir", type=Path, action="append", required=True,
                   help="a dataset folder: UTKFace chips, All-Age-Faces crops, or any folder of images with a "
                        "labels.csv (file,age,gender[,race]); repeat to train on several")
    p.add_argument("--dataset-weights", type=parse_dataset_weights,
                   help="NAME=WEIGHT,... sampling weight of each dataset (names: utkface, aaf, or a labels.csv "
                        "folder's name). Default: proportional to each dataset's training images, i.e. every "
                        "image about once per epoch as if the folders were one. Larger weights show a dataset's "
                        "faces more often (a small folder of your own photos needs one to count), at the price "
                        "of repeating them: a from-scratch network memorises repeated faces. An epoch is always "
                        "as many images as all training sets hold together.")
    p.add_argument("--augment", choices=AUGMENTATIONS, default="photo",
                   help="photo (default): flip and crop jitter plus blur, low resolution, JPEG artefacts, colour, "
                        "grayscale and occlusion, as faces in real photos; basic: flip, rotation, zoom, shift, "
                        "brightness, contrast (the shipped models' recipe). See train/augment.py")
    p.add_argument("--schedule", default="64:6,96:4",
                   help="progressive resizing, SIZE:EPOCHS,...; the last size is the model's input size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW decoupled weight decay")
    p.add_argument("--init", default="scratch",
                   help="scratch | campaign (the backbone campaign's weights in models/campaign, python -m "
                        "train campaign) | vggface (rcmalli no-top weights from --vggface-weights) | PATH of a "
                        "model.keras from an earlier run (e.g. the multitask backbone), of a shipped model .h5 "
                        "(continue training it) or of an rcmalli .h5")
    p.add_argument("--vggface-weights", default=os.environ.get("VGGFACE_WEIGHTS"),
                   help="rcmalli_vggface_tf_notop_vgg16.h5 (or set VGGFACE_WEIGHTS)")
    p.add_argument("--freeze-blocks", type=int, default=0, help="freeze VGG blocks 1..N")
    p.add_argument("--crop", choices=("aligned", "chip"), default="aligned",
                   help="aligned: each chip's face found by MTCNN and cropped onto the chip template, as the "
                        "app does (default); chip: the chip as it is")
    p.add_argument("--patience", type=int, default=4, help="early stopping patience (epochs, final size)")
    p.add_argument("--run-dir", type=Path, help="default runs/<task>")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_MODELS_DIR, help="where age/gender models go")
    p.add_argument("--split-dir", type=Path, action="append",
                   help="split folder of each --data-dir, in the same order (default train/splits/<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    p.add_argument("--limit", type=int,
                   help="use only N training and N//4 validation samples of each dataset (smoke runs)")
    p.add_argument("--precision", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="auto: mixed_bfloat16 on a GPU and on a CPU with bf16 math where bf16 measured faster "
                        "than float32 (core.models.bf16_policy_available), float32 elsewhere")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--until-epoch", type=int,
                   help="stop once this many epochs of the schedule are done in all (with --resume: idempotent)")
    p.add_argument("--max-epochs", type=int,
                   help="stop after this many epochs in this invocation (continue later with --resume)")
    p.add_argument("--epoch-images", type=int,
                   help="images per epoch, drawn with --dataset-weights (default: as many as the training sets "
                        "hold together); shorter epochs give a fine-tune more checkpoints and validations")
    p.add_argument("--age-balance", type=float, default=0.0,
                   help="0 (default) to 1: draw training images by 5-year age bin, each bin of n images shown in "
                        "proportion to n**(1-B). 0 keeps each dataset's own age mix; 0.5 shows rare ages "
                        "(children, the old) more often; 1 shows every bin equally often")
    p.add_argument("--no-cache", action="store_true",
                   help="do not cache decoded chips (nor computed landmarks) in .cache/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _set_precision(choice: str) -> str:
    from core.models import bf16_policy_available

    policy = "float32"
    if choice == "bfloat16" or (choice == "auto" and bf16_policy_available()):
        policy = "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _initialise(model, init: str, vggface_weights: str | None, log) -> str:
    """Apply --init to a freshly built model; return a description for the provenance record."""
    from core.vggface import load_vggface_weights

    if init == "scratch":
        return "from scratch (He-normal convolutions, batch norm)"
    if init == "campaign":
        from train.campaign_state import CAMPAIGN_DIR, load_checkpoint, read_plan, set_model_weights

        state, weights = load_checkpoint(CAMPAIGN_DIR)
        plan = read_plan(CAMPAIGN_DIR)
        if weights is None or plan is None:
            raise FileNotFoundError(f"--init campaign: no campaign state in {CAMPAIGN_DIR} (python -m train "
                                    "campaign starts one)")
        names = set_model_weights(model, weights, strict=False)
        log(f"initialised {len(names)} layers from the campaign ({state.images_seen:,} images seen)")
        return (f"the backbone campaign after {state.images_seen:,} of {plan.total_images:,} images "
                f"({len(names)} layers)")
    if init == "vggface":
        if not vggface_weights:
            raise FileNotFoundError("--init vggface needs --vggface-weights PATH or VGGFACE_WEIGHTS "
                                    "(rcmalli_vggface_tf_notop_vgg16.h5 from keras-vggface v2.0)")
        init = vggface_weights
    path = Path(init)
    if not path.is_file():
        raise FileNotFoundError(f"--init {init}: no such file")
    if path.suffix == ".keras" or _is_keras_model_h5(path):
        src = keras.models.load_model(path, compile=False)
        names = copy_weights_by_name(src, model)
        heads = [n for n in names if not n.startswith(("conv", "bn"))]
        log(f"initialised {len(names)} layers from {path} (heads: {heads or 'none'})")
        return f"backbone{' and head' if heads else ''} from {path.parent.name}/{path.name} ({len(names)} layers)"
    names = load_vggface_weights(model, path)
    log(f"loaded VGGFace weights into {len(names)} layers from {path}")
    return f"VGGFace weights from {path.name} ({len(names)} layers)"


def _is_keras_model_h5(path: Path) -> bool:
    """True for a whole Keras model saved as ``.h5`` (e.g. a shipped ``models/age_model.h5``), as opposed to a
    weights-only file such as the rcmalli VGGFace one."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError:
        return False


def copy_weights_by_name(src, dst) -> list[str]:
    """Copy weights between layers of the same name and shapes (e.g. multitask -> age: the backbone and
    the age head, so the single-task model starts exactly where the multitask model's age output was)."""
    src_layers = {layer.name: layer for layer in src.layers}
    copied = []
    for layer in dst.layers:
        other = src_layers.get(layer.name)
        if other is None or not layer.weights:
            continue
        weights = other.get_weights()
        if [w.shape for w in weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(weights)
            copied.append(layer.name)
    if not any(name.startswith("conv") for name in copied):
        raise ValueError("no backbone layer matched by name")
    return copied


class EpochInfo(keras.callbacks.Callback):
    """Adds training images/s, epoch seconds, input size and learning rate to each epoch's logs, and the CPU
    time of this process per training image (all its threads, the tf.data pipeline's too): on a machine
    shared with other jobs the wall-clock rate varies with their load, the CPU time per image much less."""

    def __init__(self, n_train: int, size: int):
        super().__init__()
        self.n_train, self.size = n_train, size

    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.t_val = time.perf_counter(), None
        self.cpu0, self.cpu_val = time.process_time(), None

    def on_test_begin(self, logs=None):
        if self.t_val is None:
            self.t_val, self.cpu_val = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        end = self.t_val or time.perf_counter()
        logs["images_per_s"] = self.n_train / max(end - self.t0, 1e-9)
        logs["cpu_ms_per_image"] = 1000 * ((self.cpu_val or time.process_time()) - self.cpu0) / self.n_train
        logs["epoch_seconds"] = time.perf_counter() - self.t0
        logs["input_size"] = self.size
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class SaveState(keras.callbacks.Callback):
    """Records the last finished epoch for --resume. Runs after ModelCheckpoint (callback order), so the
    state never points past the checkpoint."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def on_epoch_end(self, epoch, logs=None):
        (self.run_dir / "state.json").write_text(json.dumps({"epochs_done": epoch + 1}))


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights with the lowest val_loss (at the final input size) across resumes."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def on_train_begin(self, logs=None):
        best = self.run_dir / "best.json"
        self.best = json.loads(best.read_text())["val_loss"] if best.is_file() else math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss", math.inf)
        if value < self.best:
            self.best = value
            self.model.save_weights(str(self.run_dir / "best.weights.h5"))
            (self.run_dir / "best.json").write_text(json.dumps({"epoch": epoch + 1, "val_loss": value}))


class ProgressFile(keras.callbacks.Callback):
    """Writes ``progress.json`` in the run folder for the dashboard's live monitor (``ui/monitor.py``): at the
    start and end of each epoch and every ``every_batches`` batches or ``every_seconds`` within it.

    Fields: ``state`` (``running``, then ``finished`` once training is over, export may follow), ``step``
    (``training``/``validation``), ``epoch`` (1-based) of ``epochs`` (this invocation's last), ``batch`` of
    ``batches``, ``images_per_s`` (this epoch's training so far), ``elapsed_s`` (this invocation),
    ``eta_s`` (the batches left at this epoch's speed, scaled by the last epoch's validation overhead; later
    phases at larger sizes are slower, and early stopping may end sooner), ``phase``, ``input_size``,
    ``updated`` (UTC) and ``pid``. Written to a temporary file and renamed, so a reader never sees half of it.
    """

    def __init__(self, run_dir: Path, *, size: int, phase: str, epochs: int, batch_size: int, started: float,
                 every_batches: int = 20, every_seconds: float = 5.0, unit: str = "epoch"):
        super().__init__()
        self.unit = unit  # what an "epoch" is called on the monitor (the campaign's are chunks)
        self.path, self.size, self.phase, self.epochs = run_dir / "progress.json", size, phase, epochs
        self.batch_size, self.started = batch_size, started
        self.every_batches, self.every_seconds = every_batches, every_seconds
        self.epoch, self.batch, self.step, self.state = 0, 0, "starting", "running"
        self.t_epoch = self.t_written = self.train_seconds = 0.0
        self.overhead = 1.0  # epoch seconds / training seconds of the last epoch (validation, callbacks)

    def _write(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and self.batch % self.every_batches and now - self.t_written < self.every_seconds:
            return
        self.t_written = now
        batches = self.params.get("steps")
        train_s = self.train_seconds if self.step == "validation" else now - self.t_epoch
        done = self.batch if self.step == "training" else (batches or 0)
        rate = done * self.batch_size / train_s if done and train_s > 0 else None
        eta = None
        if rate and batches:
            left = (batches - done) + batches * max(0, self.epochs - self.epoch)
            eta = round(left * self.batch_size / rate * self.overhead, 1)
        payload = {"schema": "train-progress/1", "run": self.path.parent.name, "state": self.state,
                   "step": self.step, "phase": self.phase, "input_size": self.size, "epoch": self.epoch,
                   "epochs": self.epochs, "batch": done, "batches": batches,
                   "images_per_s": None if rate is None else round(rate, 2),
                   "elapsed_s": round(now - self.started, 1), "eta_s": 0.0 if self.state == "finished" else eta,
                   "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "pid": os.getpid(),
                   "unit": self.unit}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.path)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.batch, self.step, self.t_epoch = epoch + 1, 0, "training", time.perf_counter()
        self._write(force=True)

    def on_train_batch_end(self, batch, logs=None):
        self.batch = batch + 1
        self._write()

    def on_test_begin(self, logs=None):
        if self.step == "training":
            self.train_seconds, self.step = time.perf_counter() - self.t_epoch, "validation"
            self._write(force=True)

    def on_epoch_end(self, epoch, logs=None):
        self.overhead = max(1.0, (time.perf_counter() - self.t_epoch) / max(self.train_seconds, 1e-9))
        self._write(force=True)

    def on_train_end(self, logs=None):
        if self.model.stop_training or self.epoch >= self.epochs:
            self.state = "finished"
        else:
            self.step = "next phase"
        self._write(force=True)


def dataset_metrics(task: str, pred, y) -> dict[str, float]:
    """Age MAE and gender accuracy of predictions, under the names Keras gives them (``mae``, ``accuracy``;
    ``age_mae``, ``gender_accuracy`` for multitask), over the faces that have the label (-1: none); a
    metric without any labelled face is left out."""
    def mae(p, t):
        p, t = np.ravel(p), np.ravel(t)
        known = t >= 0  # -1: no label (LFW's ages)
        return float(np.mean(np.abs(p[known] - t[known]))) if known.any() else None

    def accuracy(p, t):
        p, t = np.ravel(p), np.ravel(t)
        known = t >= 0
        return float(np.mean((p[known] >= 0.5) == (t[known] >= 0.5))) if known.any() else None

    if task == "age":
        out = {"mae": mae(pred, y)}
    elif task == "gender":
        out = {"accuracy": accuracy(pred, y)}
    else:
        out = {"age_mae": mae(pred["age"], y["age"]), "gender_accuracy": accuracy(pred["gender"], y["gender"])}
    return {k: v for k, v in out.items() if v is not None}


def validation_by_dataset(task: str, pred: np.ndarray, y: np.ndarray, samples) -> dict | None:
    """{dataset: {metric: value, "n": count}} for samples of two or more datasets; ``None`` for one."""
    of = np.array([s.dataset for s in samples])
    names = sorted({s.dataset for s in samples})
    if len(names) < 2:
        return None
    return {name: {**{k: round(v, 4) for k, v in dataset_metrics(task, pred[of == name], y[of == name]).items()},
                   "n": int((of == name).sum())} for name in names}


class PerDatasetValidation(keras.callbacks.Callback):
    """Each dataset's validation metrics on their own, as ``val_<metric>_<dataset>`` in the epoch's logs (and
    so in ``history.csv``; it must come before the CSVLogger)."""

    def __init__(self, parts: Mapping[str, tuple[np.ndarray, object]], task: str, batch_size: int):
        super().__init__()
        self.task = task
        self.parts = {name: (make_dataset(x, y, batch_size=batch_size, training=False), y)
                      for name, (x, y) in parts.items()}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for name, (ds, y) in self.parts.items():
            pred = self.model.predict(ds, verbose=0)
            logs.update({f"val_{k}_{name}": v for k, v in dataset_metrics(self.task, pred, y).items()})


def train(args: argparse.Namespace) -> dict:
    from train.model import build_model, compile_args, freeze_blocks

    run_dir = args.run_dir or ROOT / "runs" / args.task
    run_dir.mkdir(parents=True, exist_ok=True)
    log = print
    state_file, ckpt = run_dir / "state.json", run_dir / "checkpoint.keras"
    resuming = args.resume and state_file.is_file() and ckpt.is_file()
    if args.resume and not resuming:
        log(f"--resume: nothing to resume in {run_dir}, starting a new run")
    if resuming:
        saved = json.loads((run_dir / "config.json").read_text())
        for key in ("schedule", "batch_size", "lr", "warmup_epochs", "weight_decay", "freeze_blocks",
                    "seed", "limit", "precision", "init"):
            setattr(args, key, saved[key])
        args.crop = saved.get("crop", "chip")
        args.augment = saved.get("augment", "basic")  # runs before --augment trained with the basic recipe
        args.dataset_weights = saved.get("dataset_weights")
        args.age_balance = saved.get("age_balance", 0.0)
    keras.utils.set_random_seed(args.seed)
    policy = _set_precision(args.precision)
    phases = parse_schedule(args.schedule)
    total_epochs = sum(e for _, e in phases)

    srcs = sources(args.data_dir, args.split_dir)
    if resuming and set(saved.get("datasets", srcs)) != set(srcs):
        raise ValueError(f"--resume: the run trained on {sorted(saved['datasets'])}, not {sorted(srcs)}")
    splits: dict[str, dict[str, list]] = {}
    for name, src in list(srcs.items()):
        whole = load_or_make_split(src.data_dir, src.split_dir, seed=42, log=log)
        split = {part: for_task(samples, args.task) for part, samples in whole.items()}
        if whole["train"] and not split["train"]:
            log(f"{name}: no {args.task} labels (LFW has no ages); not used for the {args.task} model")
            continue
        if args.limit:
            split = {**split, "train": split["train"][: args.limit],
                     "val": split["val"][: max(4, args.limit // 4)]}
        if not split["train"] or not split["val"]:
            raise ValueError(f"no training or validation samples found in {src.data_dir} (expected UTKFace or "
                             "All-Age-Faces file names, or a labels.csv)")
        splits[name] = split
    srcs = {name: src for name, src in srcs.items() if name in splits}
    if not splits:
        raise ValueError(f"none of the datasets has {args.task} labels")
    train_s = [s for split in splits.values() for s in split["train"]]
    val_s = [s for split in splits.values() for s in split["val"]]
    weights = dataset_weights({k: len(v["train"]) for k, v in splits.items()}, args.dataset_weights)
    epoch_images = args.epoch_images or len(train_s)
    if epoch_images < 1:
        raise ValueError(f"--epoch-images must be positive, got {epoch_images}")
    check_age_balance(args.age_balance)  # before any chip is loaded
    steps_per_epoch = math.ceil(epoch_images / args.batch_size)

    config = {
        "task": args.task, "data_dir": str(args.data_dir[0]), "data_dirs": [str(d) for d in args.data_dir],
        "schedule": args.schedule,
        "batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": args.warmup_epochs,
        "weight_decay": args.weight_decay, "init": args.init, "freeze_blocks": args.freeze_blocks,
        "crop": args.crop, "augment": args.augment, "patience": args.patience, "seed": args.seed,
        "limit": args.limit, "precision": args.precision, "policy": policy, "n_train": len(train_s),
        "epoch_images": epoch_images,
        "n_val": len(val_s), "n_test": sum(len(v["test"]) for v in splits.values()),
        "split_dir": str(next(iter(srcs.values())).split_dir),
        "dataset_weights": weights,
        "age_balance": args.age_balance,
        "datasets": {name: {"data_dir": str(src.data_dir), "split_dir": str(src.split_dir),
                            "n_train": len(splits[name]["train"]), "n_val": len(splits[name]["val"]),
                            "n_test": len(splits[name]["test"]), "weight": round(weights[name], 4)}
                     for name, src in srcs.items()},
    }

    if resuming:
        epochs_done = json.loads(state_file.read_text())["epochs_done"]
        model = keras.models.load_model(ckpt)
        init_note = json.loads((run_dir / "config.json").read_text()).get("init_note", args.init)
        log(f"resuming {run_dir} after epoch {epochs_done}/{total_epochs}")
    else:
        epochs_done = 0
        model = build_model(args.task)
        init_note = _initialise(model, args.init, args.vggface_weights, log)
        frozen = freeze_blocks(model, args.freeze_blocks)
        if frozen:
            log(f"frozen: {len(frozen)} layers of blocks 1..{args.freeze_blocks}")
        warmup = int(args.warmup_epochs * steps_per_epoch)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=args.lr * 0.01, decay_steps=max(1, total_epochs * steps_per_epoch - warmup),
            alpha=0.01, warmup_target=args.lr, warmup_steps=warmup)
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay)
        model.compile(optimizer=optimizer, **compile_args(args.task))
        for f in ("history.csv", "best.weights.h5", "best.json"):
            (run_dir / f).unlink(missing_ok=True)
    config["init_note"] = init_note
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))

    verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()
    stop_at = epochs_done + args.max_epochs if args.max_epochs else total_epochs
    if args.until_epoch:
        stop_at = min(stop_at, args.until_epoch)
    epoch_end = 0
    stopped_early = False
    trained = False
    for index, (size, epochs) in enumerate(phases):
        epoch_start, epoch_end = epoch_end, epoch_end + epochs
        if epochs_done >= epoch_end or stopped_early or epochs_done >= stop_at:
            continue
        final = index == len(phases) - 1
        log(f"phase {index + 1}/{len(phases)}: {size}px, epochs {max(epoch_start, epochs_done) + 1}-{epoch_end}")
        align = args.crop == "aligned"
        train_parts, val_parts = {}, {}
        for name, split in splits.items():
            src, cache = srcs[name], not args.no_cache
            for parts, part in ((train_parts, "train"), (val_parts, "val")):
                parts[name] = (load_chips(src.data_dir, split[part], size, cache=cache, align=align,
                                          store=src.landmarks_file), labels(split[part], args.task))
        train_ds = make_mixed_dataset(train_parts, batch_size=args.batch_size, weights=weights, seed=args.seed,
                                      augment=args.augment, examples_per_epoch=epoch_images,
                                      ages={k: labels(v["train"], "age") for k, v in splits.items()},
                                      age_balance=args.age_balance)
        val_ds = make_dataset(np.concatenate([x for x, _ in val_parts.values()]), labels(val_s, args.task),
                              batch_size=args.batch_size, training=False)
        per_dataset = [PerDatasetValidation(val_parts, args.task, args.batch_size)] if len(srcs) > 1 else []
        callbacks = [
            EpochInfo(epoch_images, size),
            *per_dataset,
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
            keras.callbacks.ModelCheckpoint(str(ckpt), save_weights_only=False),
            SaveState(run_dir),
            ProgressFile(run_dir, size=size, phase=f"{index + 1}/{len(phases)}", epochs=min(total_epochs, stop_at),
                         batch_size=args.batch_size, started=started),
        ]
        if final:
            callbacks += [
                BestWeights(run_dir),
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience, verbose=1),
            ]
        first = max(epoch_start, epochs_done)
        last = min(epoch_end, stop_at)
        hist = model.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
                         callbacks=callbacks, verbose=verbose)
        epochs_done = first + len(hist.epoch)
        trained = True
        stopped_early = epochs_done < last
    if trained:
        config["train_seconds_this_session"] = round(time.perf_counter() - started, 1)
    if epochs_done < total_epochs and not stopped_early:
        log(f"stopped after epoch {epochs_done}/{total_epochs} (--max-epochs/--until-epoch); continue with --resume")
        config["epochs_done"] = epochs_done
        if args.task == "multitask":  # a backbone used as it stands (age/gender runs start from its checkpoint)
            config["note"] = (f"stopped after epoch {epochs_done} of the planned {total_epochs} "
                              "(--until-epoch/--max-epochs); "
                              "--resume continues it")
            publish_history(run_dir, args.out_dir, args.task, config)
        return config

    best = run_dir / "best.weights.h5"
    if best.is_file():
        model.load_weights(str(best))
        log(f"restored best weights: {json.loads((run_dir / 'best.json').read_text())}")
    model.save(run_dir / "model.keras")
    if args.task == "multitask":
        log(f"backbone saved to {run_dir / 'model.keras'}")
        publish_history(run_dir, args.out_dir, args.task, config)
        return config
    return export(model, args.task, phases[-1][0], config, run_dir, args.out_dir, srcs, val_s, log,
                  cache=not args.no_cache)


def calibrate_age_intervals(pred: np.ndarray, true: np.ndarray) -> dict:
    """Residual quantiles (true - predicted) per band of predicted age: the table behind ``age_range``."""
    bands = []
    residual = true - pred
    for lo, hi in AGE_BANDS:
        mask = (pred >= lo) & (pred < hi)
        r = residual[mask] if mask.sum() >= 20 else residual
        q_lo, q_hi = np.quantile(r, INTERVAL_QUANTILES)
        bands.append({"low": lo, "high": hi, "q_low": round(float(q_lo), 2), "q_high": round(float(q_hi), 2),
                      "n": int(mask.sum())})
    lows = np.array([next(b for b in bands if b["low"] <= p < b["high"] or b is bands[-1])["q_low"] for p in pred])
    highs = np.array([next(b for b in bands if b["low"] <= p < b["high"] or b is bands[-1])["q_high"] for p in pred])
    inside = float(np.mean((true >= pred + lows) & (true <= pred + highs)))
    return {"coverage_target": INTERVAL_QUANTILES[1] - INTERVAL_QUANTILES[0], "coverage_validation": round(inside, 4),
            "bands": bands}


def export(model, task: str, size: int, config: dict, run_dir: Path, out_dir: Path,
           data_dir: Path | Mapping[str, Source], val_samples, log, *, cache: bool = True) -> dict:
    """Save a float32 copy of ``model`` as ``<task>_model.h5`` with its metadata (:func:`save_model`), then
    the run's history and configuration next to it, then the gender model's reliability rule
    (:func:`train.reliability.after_export`, once both models are there)."""
    from train.reliability import after_export

    metadata = save_model(model, task, size, config, out_dir, data_dir, val_samples, cache=cache)
    publish_history(run_dir, out_dir, task, config)
    log(f"exported {out_dir / MODEL_FILES[task]}: validation {metadata['validation']}")
    after_export(out_dir, data_dir if isinstance(data_dir, Mapping) else sources([data_dir]), val_samples, log,
                 cache=cache)
    return metadata


def save_model(model, task: str, size: int, config: dict, out_dir: Path, data_dir: Path | Mapping[str, Source],
               val_samples, *, cache: bool = True) -> dict:
    """Save a float32 copy of ``model`` as ``<task>_model.h5`` plus ``<task>_model.json`` metadata.

    ``data_dir``: the dataset folder, or {dataset: Source} for samples of several datasets. Validation numbers
    in the metadata come from the app's crop (MTCNN landmarks of each image). An age model is first
    calibrated on them (:mod:`train.calibrate`: a least-absolute-deviations line folded into the head; with
    several datasets, one line on the union of their validation sets) and its age-range table is fitted on
    the calibrated predictions. With several datasets the validation numbers are also given per dataset.
    """
    from train.calibrate import age_metadata, calibrate_age_model, fitted_on
    from train.model import build_model, compile_args

    keras.mixed_precision.set_global_policy("float32")
    clean = build_model(task)
    clean.set_weights(model.get_weights())
    align = config.get("crop") == "aligned"
    srcs = data_dir if isinstance(data_dir, Mapping) else sources([data_dir])
    x_val = load_chips_of(srcs, val_samples, size, cache=cache, align=True)
    y = labels(val_samples, task)
    calibration = None
    names = sorted({s.dataset for s in val_samples})
    if task == "age":
        calibration, pred, clean = calibrate_age_model(clean, x_val, y, fitted_on=fitted_on(names))
    else:
        pred = predict_crops(clean, x_val, flip=True)
    clean.compile(optimizer="adam", loss=compile_args(task)["loss"])  # the loss reloads with the .h5
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILES[task]
    clean.save(model_path)

    metadata: dict = {
        "task": task,
        "input_size": size,
        "preprocessing": "vggface_v1: RGB->BGR, minus mean (B, G, R) = (93.5940, 104.7624, 129.1863)",
        "crop": "core.crop.crop_face: similarity transform onto the UTKFace chip landmark template",
        "training_crop": ("MTCNN landmarks of each chip onto the template (the app's crop)" if align
                          else "the chip as it is"),
        "tta_flip": True,
        "output": "age in years" if task == "age" else "probability that the face is female (UTKFace label 1)",
        "validation": {},
        "provenance": {
            "dataset": " + ".join(describe_dataset(name) for name in names),
            "initialisation": config.get("init_note"),
            "run": {k: config.get(k) for k in ("schedule", "batch_size", "lr", "freeze_blocks", "crop", "policy",
                                           "n_train", "n_val", "n_test", "augment", "datasets")},
            "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "hardware": f"{platform.machine()} {os.cpu_count()} CPU cores",
        },
    }
    if task == "age":
        metadata.update(age_metadata(calibration, pred, y))
    else:
        metadata["validation"] = {"accuracy": round(float(np.mean((pred >= 0.5) == (y >= 0.5))), 4), "n": len(y),
                                  "crop": "app"}
    by_dataset = validation_by_dataset(task, pred, y, val_samples)
    if by_dataset:
        metadata["validation"]["per_dataset"] = by_dataset
    model_path.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    _export_for_inference(model_path, x_val[:PARITY_CHIPS], y[:PARITY_CHIPS])
    return metadata


#: Validation chips on which the inference export is compared with the .h5 at the end of training.
PARITY_CHIPS = 256


def _export_for_inference(model_path: Path, faces: np.ndarray, targets: np.ndarray) -> None:
    """The inference export next to the new ``.h5`` (:func:`train.export.export_model`). The ``.h5`` is what
    training produces: if the export fails, core runs the ``.h5`` and ``python -m train.export`` can retry."""
    import warnings

    from train.export import export_model

    try:
        export_model(model_path, faces=faces, labels=targets,
                     data=f"validation split, app crops (first {len(faces)})")
    except Exception as error:  # noqa: BLE001 - never lose a finished training run to its export step
        warnings.warn(f"the inference export of {model_path.name} failed ({type(error).__name__}: {error}); "
                      "core will run the .h5. Retry with `python -m train.export`.", RuntimeWarning, stacklevel=2)


def publish_history(run_dir: Path, out_dir: Path, task: str, config: dict) -> None:
    """Copy a run's history and configuration next to the shipped models (for the dashboard and card).

    A run that continued an exported model (``--init models/<task>_model.h5``) is one stage of that model's
    training: the published history is the earlier stages' history followed by this run's epochs (numbered
    on), with a ``stage`` column, and the run record keeps the earlier record under ``parent_run``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    parent_run, parent_history = _parent_stage(run_dir, config.get("init") or "", task)
    record = {**config, "parent_run": parent_run} if parent_run else config
    if (run_dir / "history.csv").is_file():
        import pandas as pd

        history = pd.read_csv(run_dir / "history.csv")
        if parent_history is not None:
            before = pd.read_csv(parent_history)
            if "stage" not in before.columns:
                before.insert(0, "stage", 1)
            history.insert(0, "stage", int(before["stage"].max()) + 1)
            history["epoch"] += int(before["epoch"].max()) + 1
            history = pd.concat([before, history], ignore_index=True)
        history.to_csv(out_dir / f"history_{task}.csv", index=False)
    (out_dir / f"{task}_run.json").write_text(json.dumps(record, indent=2))


def _parent_stage(run_dir: Path, init: str, task: str) -> tuple[dict | None, Path | None]:
    """Run record and history of the exported model a run started from, if any.

    Both are copied into the run folder the first time (``parent_run.json``, ``parent_history.csv``), so
    publishing again, even over the parent's own files, gives the same result.
    """
    snap_run, snap_history = run_dir / "parent_run.json", run_dir / "parent_history.csv"
    source = Path(init)
    if not snap_run.is_file() and source.suffix == ".h5" and source.is_file() and _is_keras_model_h5(source):
        for name, snap in ((f"{task}_run.json", snap_run), (f"history_{task}.csv", snap_history)):
            if (source.parent / name).is_file():
                shutil.copyfile(source.parent / name, snap)
    return (json.loads(snap_run.read_text()) if snap_run.is_file() else None,
            snap_history if snap_history.is_file() else None)
