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

For ``age`` and ``gender`` the model is exported to ``--out-dir`` (default ``models/``; for a ``--limit``
smoke run ``<run-dir>/models``) as
``<task>_model.h5`` in float32 with ``<task>_model.json`` metadata, ``history_<task>.csv`` and
``<task>_run.json``, and for inference as OpenVINO IR next to it (:mod:`train.export`). Training uses
``mixed_bfloat16`` where the hardware supports it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np

from core.models import DEFAULT_MODELS_DIR
from core.vggface import load_vggface_weights
from train.callbacks import BestWeights, EpochInfo, PerDatasetValidation, ProgressFile, SaveState
from train.campaign_state import CAMPAIGN_DIR, load_checkpoint, read_plan, set_model_weights
from train.data import (
    Source,
    check_age_balance,
    dataset_weights,
    for_task,
    labels,
    load_chips,
    load_or_make_split,
    make_dataset,
    make_mixed_dataset,
    scan,
    sources,
)
from train.model import (
    build_model,
    compile_args,
    copy_weights_by_name,
    freeze_blocks,
    is_keras_model_h5,
    set_precision,
)
from train.options import build_train_parser, parse_schedule
from train.publish import export, publish_history

ROOT = Path(__file__).resolve().parent.parent

def build_parser() -> argparse.ArgumentParser:
    return build_train_parser()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    policy = keras.mixed_precision.global_policy()  # set for the run only (a caller's process goes on)
    try:
        train(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return 0


def _initialise(model, init: str, vggface_weights: str | None, log) -> str:
    """Apply --init to a freshly built model; return a description for the provenance record."""
    if init == "scratch":
        return "from scratch (He-normal convolutions, batch norm)"
    if init == "campaign":
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
    if path.suffix == ".keras" or is_keras_model_h5(path):
        src = keras.models.load_model(path, compile=False)
        names = copy_weights_by_name(src, model)
        heads = [n for n in names if not n.startswith(("conv", "bn"))]
        log(f"initialised {len(names)} layers from {path} (heads: {heads or 'none'})")
        return f"backbone{' and head' if heads else ''} from {path.parent.name}/{path.name} ({len(names)} layers)"
    names = load_vggface_weights(model, path)
    log(f"loaded VGGFace weights into {len(names)} layers from {path}")
    return f"VGGFace weights from {path.name} ({len(names)} layers)"


def train(args: argparse.Namespace) -> dict:
    """One run of ``python -m train`` (see the module docstring): splits, model, the schedule's phases
    through ``fit``, then the export (:func:`train.publish.export`); returns the run's configuration (the
    exported metadata for ``age``/``gender`` runs that finished)."""
    run_dir = args.run_dir or ROOT / "runs" / args.task
    log = print
    for data_dir in args.data_dir:  # before anything is written: a folder of no dataset leaves no run folder
        if not scan(data_dir)[0]:
            raise ValueError(f"no labelled images in {data_dir}: expected UTKFace names "
                             "([age]_[gender]_[race]_[date].jpg.chip.jpg), All-Age-Faces names "
                             "([age]_[gender]_aaf_[number].jpg), or a labels.csv (file,age,gender)")
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.out_dir is None:
        args.out_dir = run_dir / "models" if args.limit else DEFAULT_MODELS_DIR
        if args.limit:
            log(f"--limit (a smoke run): the model goes to {args.out_dir}, not models/ (--out-dir to choose)")
    state_file, ckpt = run_dir / "state.json", run_dir / "checkpoint.keras"
    resuming = args.resume and state_file.is_file() and ckpt.is_file()
    if args.resume and not resuming:
        log(f"--resume: nothing to resume in {run_dir}, starting a new run")
    saved = _restore_settings(args, run_dir) if resuming else {}
    keras.utils.set_random_seed(args.seed)
    policy = set_precision(args.precision)
    phases = parse_schedule(args.schedule)
    total_epochs = sum(e for _, e in phases)

    srcs = sources(args.data_dir, args.split_dir)
    if resuming and set(saved.get("datasets", srcs)) != set(srcs):
        raise ValueError(f"--resume: the run trained on {sorted(saved['datasets'])}, not {sorted(srcs)}")
    srcs, splits = load_splits(srcs, args.task, limit=args.limit, log=log)
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
        model, init_note = _new_model(args, steps_per_epoch * total_epochs, steps_per_epoch, log)
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
        train_parts, val_parts = _phase_chips(srcs, splits, size, args)
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

    _keep_best(model, run_dir, log)
    if args.task == "multitask":
        log(f"backbone saved to {run_dir / 'model.keras'}")
        publish_history(run_dir, args.out_dir, args.task, config)
        return config
    return export(model, args.task, phases[-1][0], config, run_dir, args.out_dir, srcs, val_s, log,
                  cache=not args.no_cache)


def _restore_settings(args: argparse.Namespace, run_dir: Path) -> dict:
    """``--resume``: the run's own settings from its ``config.json`` back into ``args`` (with the defaults of
    runs older than a setting); return the saved configuration."""
    saved = json.loads((run_dir / "config.json").read_text())
    for key in ("schedule", "batch_size", "lr", "warmup_epochs", "weight_decay", "freeze_blocks",
                "seed", "limit", "precision", "init"):
        setattr(args, key, saved[key])
    args.crop = saved.get("crop", "chip")
    args.augment = saved.get("augment", "basic")  # runs before --augment trained with the basic recipe
    args.dataset_weights = saved.get("dataset_weights")
    args.age_balance = saved.get("age_balance", 0.0)
    return saved


def load_splits(srcs: dict[str, Source], task: str, *, limit: int | None = None, log=print
                ) -> tuple[dict[str, Source], dict[str, dict[str, list]]]:
    """Each dataset's saved split (made if missing), restricted to the samples with ``task``'s label and to
    ``limit``; a dataset without any such label (LFW for ages) is left out of both results."""
    splits: dict[str, dict[str, list]] = {}
    for name, src in list(srcs.items()):
        whole = load_or_make_split(src.data_dir, src.split_dir, seed=42, log=log)
        split = {part: for_task(samples, task) for part, samples in whole.items()}
        if whole["train"] and not split["train"]:
            log(f"{name}: no {task} labels (LFW has no ages); not used for the {task} model")
            continue
        if limit:
            split = {**split, "train": split["train"][:limit], "val": split["val"][: max(4, limit // 4)]}
        if not split["train"] or not split["val"]:
            raise ValueError(f"no training or validation samples found in {src.data_dir} (expected UTKFace or "
                             "All-Age-Faces file names, or a labels.csv)")
        splits[name] = split
    if not splits:
        raise ValueError(f"none of the datasets has {task} labels")
    return {name: src for name, src in srcs.items() if name in splits}, splits


def _new_model(args: argparse.Namespace, total_steps: int, steps_per_epoch: int, log) -> tuple[keras.Model, str]:
    """A new model for a run: built, initialised (``--init``), blocks frozen, and compiled with AdamW on a
    warm-up then cosine schedule over ``total_steps``; with the initialisation's description."""
    model = build_model(args.task)
    init_note = _initialise(model, args.init, args.vggface_weights, log)
    frozen = freeze_blocks(model, args.freeze_blocks)
    if frozen:
        log(f"frozen: {len(frozen)} layers of blocks 1..{args.freeze_blocks}")
    warmup = int(args.warmup_epochs * steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.lr * 0.01, decay_steps=max(1, total_steps - warmup),
        alpha=0.01, warmup_target=args.lr, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=args.weight_decay)
    model.compile(optimizer=optimizer, **compile_args(args.task))
    return model, init_note


def _phase_chips(srcs: dict[str, Source], splits: dict[str, dict[str, list]], size: int, args: argparse.Namespace
                 ) -> tuple[dict, dict]:
    """{dataset: (chips, labels)} of the training and of the validation split at one phase's input size."""
    align = args.crop == "aligned"
    train_parts, val_parts = {}, {}
    for name, split in splits.items():
        src, cache = srcs[name], not args.no_cache
        for parts, part in ((train_parts, "train"), (val_parts, "val")):
            parts[name] = (load_chips(src.data_dir, split[part], size, cache=cache, align=align,
                                      store=src.landmarks_file), labels(split[part], args.task))
    return train_parts, val_parts


def _keep_best(model, run_dir: Path, log) -> None:
    """The best weights of the final phase (:class:`train.callbacks.BestWeights`) back into ``model``, which
    is saved as the run's ``model.keras``."""
    best = run_dir / "best.weights.h5"
    if best.is_file():
        model.load_weights(str(best))
        log(f"restored best weights: {json.loads((run_dir / 'best.json').read_text())}")
    model.save(run_dir / "model.keras")
