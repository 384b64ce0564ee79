"""A from-scratch backbone trained for millions of images, in stretches on whatever machine is at hand.

    python -m train campaign --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf \\
                             --data-dir ../shared/data/lfw          # start it, or continue it
    python -m train campaign --hours 3                              # continue (folders from the plan)

The multitask network (age, gender and race heads on the VGGFace VGG16, :mod:`train.model`) sees the
plan's images in chunks (:class:`train.campaign_state.Plan`; 6,400 images by default, a few minutes). After
every chunk the weights and the position are written to ``models/campaign/`` (:mod:`train.campaign_state`),
so a stretch killed at any moment loses at most the chunk in progress; every ``eval_every_chunks`` chunks
the validation split of each dataset is scored and a row is added to ``history.csv``, and the stretch's
row in ``log.csv`` is brought up to date. The data order, the augmentation's random choices and the
learning rate are functions of the plan, the chunk number and the pools' cursors, so a continued campaign
trains on exactly what an uninterrupted one would have. Training runs at the best precision this CPU has
(``mixed_bfloat16`` where bf16 measured fast, float32 elsewhere). ``touch runs/campaign/STOP`` ends a
stretch cleanly after the chunk in progress (with a last validation row); ``--hours`` does so by the clock.

Faces without an age (LFW) train the gender head only, faces without a race the other two
(:func:`train.data.with_masks`). A finished (or stopped) campaign is the starting point of the shipped
models: ``python -m train age --init campaign ...`` (see the Makefile's ``models``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
from keras import ops

from train import campaign_state as cs
from train.callbacks import ProgressFile
from train.data import (
    age_bins,
    dataset_weights,
    for_task,
    index_batches,
    labels,
    load_chips,
    load_or_make_split,
    sources,
    with_masks,
)
from train.model import build_model, compile_args, set_precision
from train.options import build_campaign_parser

ROOT = Path(__file__).resolve().parent.parent
#: Created in the run folder (``touch runs/campaign/STOP``), it ends the stretch after the chunk in progress.
STOP_FILE = "STOP"


def build_parser() -> argparse.ArgumentParser:
    return build_campaign_parser(cs.CAMPAIGN_DIR, ROOT / "runs" / "campaign")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    policy = keras.mixed_precision.global_policy()  # set for the run only (a caller's process goes on)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return 0


def _splits(data_dirs: list[str], split_dirs: list[str] | None, limit: int | None):
    srcs = sources([Path(d) for d in data_dirs], [Path(d) for d in split_dirs] if split_dirs else None)
    splits = {}
    for name, src in srcs.items():
        split = load_or_make_split(src.data_dir, src.split_dir)
        if limit:
            split = {**split, "train": split["train"][:limit], "val": split["val"][: max(4, limit // 4)]}
        splits[name] = split
    return srcs, splits


def new_plan(args, splits) -> cs.Plan:
    sizes = {name: len(split["train"]) for name, split in splits.items()}
    shares = dataset_weights(sizes, args.dataset_weights)
    plan = cs.Plan(datasets={k: round(v, 6) for k, v in shares.items()}, batch_size=args.batch_size,
                   chunk_images=args.chunk_images, lr=args.lr, age_balance=args.age_balance,
                   augment=args.augment, seed=args.seed)
    if args.stages:
        plan.stages = args.stages
        total = plan.total_images
        plan.warmup_images = min(plan.warmup_images, total // 10)
        plan.decay_images = min(plan.decay_images, total * 3 // 20)
        plan.rewarm_images = min(plan.rewarm_images, max(plan.chunk_images // 2, 1))
    if plan.chunk_images % plan.batch_size:
        raise ValueError(f"--chunk-images {plan.chunk_images} is not a multiple of --batch-size {plan.batch_size}")
    return plan


class CampaignLR(keras.optimizers.schedules.LearningRateSchedule):
    """The plan's learning rate (:meth:`train.campaign_state.Plan.lr_at`) at the optimizer's global step,
    times a ramp from 0 over the plan's ``rewarm_images`` after ``restart_step``: a continued stretch starts
    with fresh AdamW moments, and full steps on them would jolt the weights."""

    def __init__(self, plan: cs.Plan, restart_step: int = 0):
        self.plan, self.restart_step = plan, restart_step

    def __call__(self, step):
        plan = self.plan
        images = ops.cast(step, "float32") * plan.batch_size
        warm = ops.minimum(1.0, images / max(plan.warmup_images, 1))
        decay = ops.clip((plan.total_images - images) / max(plan.decay_images, 1), 0.0, 1.0)
        lr = plan.lr * warm * (plan.final_lr_fraction + (1 - plan.final_lr_fraction) * decay)
        if self.restart_step > 0:
            ramp = max(plan.rewarm_images // plan.batch_size, 1)
            lr = lr * ops.clip((ops.cast(step, "float32") - self.restart_step + 1) / ramp, 0.0, 1.0)
        return lr

    def get_config(self) -> dict:
        return {"restart_step": self.restart_step}


def evaluate(model, val: dict, batch_size: int) -> dict[str, float]:
    """Validation per dataset: age MAE and the slope of predicted on true age where ages are known, gender
    accuracy where genders are; no flip (the shipped models' numbers come from train.evaluate)."""
    from core.vggface import preprocess_input

    out = {}
    for name, (x, samples) in val.items():
        if not len(samples):
            continue
        pred = model.predict(preprocess_input(x), batch_size=batch_size, verbose=0)
        age, gender = labels(samples, "age"), labels(samples, "gender")
        known = age >= 0
        if known.sum() >= 2:
            p = np.ravel(pred["age"])[known]
            out[f"val_age_mae_{name}"] = round(float(np.mean(np.abs(p - age[known]))), 4)
            out[f"val_age_slope_{name}"] = round(float(np.polyfit(age[known], p, 1)[0]), 4)
        known = gender >= 0
        if known.any():
            hits = (np.ravel(pred["gender"])[known] >= 0.5) == (gender[known] >= 0.5)
            out[f"val_gender_acc_{name}"] = round(float(np.mean(hits)), 4)
    return out


def open_campaign(args) -> tuple[cs.Plan, dict, dict]:
    """The plan in ``args.folder`` (written first from the options when there is none) and the sources and
    splits of its datasets (``args.data_dir`` where given, else the folders the plan names)."""
    folder = Path(args.folder)
    plan = cs.read_plan(folder)
    if plan is None:
        if not args.data_dir:
            raise ValueError(f"no campaign in {folder}: start one with --data-dir (repeat for each dataset)")
        srcs, splits = _splits([str(d) for d in args.data_dir], args.split_dir, args.limit)
        plan = new_plan(args, splits)
        plan.data_dirs, plan.limit = {n: str(s.data_dir) for n, s in srcs.items()}, args.limit
        plan.split_dirs = {n: str(s.split_dir) for n, s in srcs.items()} if args.split_dir else {}
        folder.mkdir(parents=True, exist_ok=True)
        cs.write_json(folder / "plan.json", asdict(plan))
        print(f"new campaign in {folder}: {plan.total_images:,} images in {plan.total_chunks} chunks, "
              f"shares {plan.datasets}")
    if args.data_dir:
        dirs, split_dirs = [str(d) for d in args.data_dir], args.split_dir
    else:
        dirs = list(plan.data_dirs.values())
        split_dirs = [plan.split_dirs[n] for n in plan.data_dirs] if plan.split_dirs else None
    srcs, splits = _splits(dirs, split_dirs, plan.limit)
    if set(srcs) != set(plan.datasets):
        raise ValueError(f"the campaign trains on {sorted(plan.datasets)}, the folders given are {sorted(srcs)}")
    return plan, srcs, splits


class CampaignData:
    """The campaign's faces: training crops at the current input size (one tensor), their targets and label
    masks, each dataset's validation crops, the sampling pools, and the batches of any chunk."""

    def __init__(self, plan: cs.Plan, srcs: dict, splits: dict, *, cache: bool = True):
        self.plan, self.srcs, self.splits, self.cache = plan, srcs, splits, cache
        self.train = {name: split["train"] for name, split in splits.items()}
        ages = {name: labels(s, "age") for name, s in self.train.items()}
        bins = {name: np.where(a >= 0, age_bins(np.maximum(a, 0)), -1) for name, a in ages.items()}
        self.shares = cs.pool_shares(plan.datasets, bins, plan.age_balance)
        self.members = cs.pool_members(bins, list(self.shares))
        self.offsets = dict(zip(self.train, np.cumsum([0] + [len(s) for s in self.train.values()])[:-1].tolist()))
        self.size: int | None = None

    def load(self, size: int) -> None:
        """Crops at ``size`` (decoded once per machine and size, then read from ``.cache/``)."""
        import tensorflow as tf

        if size == self.size:
            return
        parts = [load_chips(self.srcs[n].data_dir, s, size, cache=self.cache, align=True,
                            store=self.srcs[n].landmarks_file) for n, s in self.train.items()]
        targets, weights = with_masks(labels([x for s in self.train.values() for x in s], "multitask"))
        self.images, self.columns = tf.constant(np.concatenate(parts)), tf.nest.map_structure(
            tf.constant, (targets, weights))
        self.val = {}
        for name, split in self.splits.items():
            samples = for_task(split["val"], "multitask")
            self.val[name] = (load_chips(self.srcs[name].data_dir, samples, size, cache=self.cache, align=True,
                                         store=self.srcs[name].landmarks_file), samples)
        self.size = size

    def batches(self, chunk: int, cursors: dict[str, int]):
        """The augmented batches of chunk ``chunk`` at the loaded size, and the cursors after it."""
        import tensorflow as tf

        order, cursors = cs.chunk_order(self.plan, chunk, self.shares, self.members, cursors)
        index = tf.data.Dataset.from_tensor_slices(np.array([self.offsets[d] + i for d, i in order], np.int64))
        return index_batches(index, self.images, self.columns, batch_size=self.plan.batch_size,
                             augment=self.plan.augment, seed=self.plan.seed + 7919 * chunk), cursors


class SaveWithinChunk(keras.callbacks.Callback):
    """Writes the campaign's checkpoint every ``every_s`` seconds within a chunk (its position: the batches
    of the chunk done so far), so that a stretch killed on a slow CPU loses minutes, not a whole chunk."""

    def __init__(self, folder: Path, plan: cs.Plan, state: cs.State, skipped: int, every_s: float):
        super().__init__()
        self.folder, self.plan, self.state, self.skipped, self.every_s = folder, plan, state, skipped, every_s
        self.base_seconds = state.train_seconds
        self.t0 = self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        state = self.state
        state.batches_done = self.skipped + batch + 1
        state.images_seen = state.chunks_done * self.plan.chunk_images + state.batches_done * self.plan.batch_size
        state.train_seconds = round(self.base_seconds + now - self.t0, 1)
        cs.save_checkpoint(self.folder, cs.model_weights(self.model), state, cs.optimizer_velocities(self.model))
        self.last = time.perf_counter()


def build_network(plan: cs.Plan, weights: dict | None, images_seen: int, *, seed: int,
                  velocities: dict | None = None):
    """The multitask network with ``weights`` (``None``: from scratch), compiled with AdamW on the plan's
    schedule, its step set to ``images_seen`` (with the re-warm ramp when that is past 0) and its second
    moments set from ``velocities`` where given (first moments start at zero)."""
    keras.utils.set_random_seed(seed)
    model = build_model("multitask")
    if weights is not None:
        cs.set_model_weights(model, weights)
    step = images_seen // plan.batch_size
    optimizer = keras.optimizers.AdamW(learning_rate=CampaignLR(plan, step), weight_decay=plan.weight_decay)
    model.compile(optimizer=optimizer, **compile_args("multitask"))
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(step)
    if velocities:
        cs.set_optimizer_velocities(model, velocities)
    return model


def run(args) -> cs.State:
    from core.hardware import cpu_description

    folder = Path(args.folder)
    plan, srcs, splits = open_campaign(args)
    state, weights = cs.load_checkpoint(folder)
    if state.images_seen >= plan.total_images:
        print(f"the campaign is complete ({state.images_seen:,} images)")
        return state
    data = CampaignData(plan, srcs, splits, cache=not args.no_cache)
    policy = set_precision(args.precision)
    velocities = cs.unpack_velocities(folder / "weights.npz") if weights is not None else None
    model = build_network(plan, weights, state.images_seen, seed=plan.seed + state.chunks_done,
                          velocities=velocities)

    state.stretches += 1
    stretch = {"stretch": state.stretches, "started": _now(), "cpu": cpu_description(), "policy": policy,
               "images_at_start": state.images_seen}
    started, trained_s, trained_images = time.perf_counter(), 0.0, 0
    stop_images = min(plan.total_images, args.until_images or plan.total_images)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    print(f"stretch {state.stretches} on {stretch['cpu']} ({policy}): from {state.images_seen:,} images "
          f"(chunk {state.chunks_done + 1}/{plan.total_chunks}) to {stop_images:,}", flush=True)
    stop_file = args.run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)

    def out_of_time() -> bool:
        return bool(args.hours) and time.perf_counter() - started > args.hours * 3600

    while state.images_seen < stop_images and not out_of_time():
        if stop_file.exists():
            print(f"{stop_file} found: stopping", flush=True)
            stop_file.unlink(missing_ok=True)
            break
        size = plan.size_at(state.images_seen)
        data.load(size)
        chunk, skip = state.chunks_done, state.batches_done
        ds, cursors = data.batches(chunk, state.cursors)
        stage = next(i for i, (s, _) in enumerate(plan.stages) if s == size) + 1
        progress = ProgressFile(args.run_dir, size=size, phase=f"{stage}/{len(plan.stages)}",
                                epochs=plan.total_chunks, batch_size=plan.batch_size, started=started,
                                unit="chunk")
        saver = SaveWithinChunk(folder, plan, state, skip, args.save_every)
        t0 = time.perf_counter()
        hist = model.fit(ds.skip(skip), epochs=chunk + 1, initial_epoch=chunk, verbose=0,
                         callbacks=[progress, saver], shuffle=False)
        seconds = time.perf_counter() - t0
        done = plan.chunk_images - skip * plan.batch_size
        trained_s, trained_images = trained_s + seconds, trained_images + done
        losses.append(float(hist.history["loss"][-1]))
        state.chunks_done, state.batches_done, state.cursors = chunk + 1, 0, cursors
        state.images_seen = state.chunks_done * plan.chunk_images
        state.train_seconds = round(saver.base_seconds + seconds, 1)
        cs.save_checkpoint(folder, cs.model_weights(model), state, cs.optimizer_velocities(model))
        rate = trained_images / trained_s
        print(f"chunk {state.chunks_done}/{plan.total_chunks}: {size} px, loss {losses[-1]:.4f}, "
              f"{rate:.1f} images/s, {state.images_seen:,} images seen", flush=True)
        last = state.images_seen >= stop_images or stop_file.exists() or out_of_time()
        if state.chunks_done % plan.eval_every_chunks == 0 or last:
            metrics = evaluate(model, data.val, plan.batch_size)
            cs.append_row(folder / "history.csv", {
                "images_seen": state.images_seen, "chunk": state.chunks_done, "stretch": state.stretches,
                "input_size": size, "lr": f"{plan.lr_at(state.images_seen):.3g}",
                "loss": round(float(np.mean(losses)), 4), "images_per_s": round(rate, 2), "updated": _now(),
                **metrics})
            losses = []
            cs.append_row(folder / "log.csv", {
                **stretch, "updated": _now(), "images_at_end": state.images_seen,
                "images_this_stretch": trained_images, "train_hours": round(trained_s / 3600, 3),
                "images_per_s": round(rate, 2), "input_size": size, **metrics}, replace_key="stretch")
            print("  validation: " + ", ".join(f"{k[4:]} {v}" for k, v in metrics.items()), flush=True)
    progress_done(args.run_dir)
    print(f"stretch {state.stretches} stopped at {state.images_seen:,} of {plan.total_images:,} images "
          f"({100 * state.images_seen / plan.total_images:.1f} %); commit {folder} to keep it", flush=True)
    return state


def progress_done(run_dir: Path) -> None:
    """Mark the live monitor's progress file finished (the stretch ended on its own)."""
    path = Path(run_dir) / "progress.json"
    if path.is_file():
        data = json.loads(path.read_text())
        data.update(state="finished", eta_s=0.0, updated=_now())
        cs.write_json(path, data)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    raise SystemExit(main())
