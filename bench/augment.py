"""The training input pipeline's speed, per augmentation recipe (:mod:`train.augment`), with or without a model.

    python -m bench.augment --data-dir ../shared/data/utkface          # the pipeline alone, batches/s
    python -m bench.augment --data-dir ../shared/data/utkface --fit    # then training epochs of each recipe

Each recipe is timed in one process, recipes in turn, so that other jobs on a shared machine slow them alike.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import keras
import numpy as np

from core.models import bf16_policy_available
from train.data import labels, load_chips, load_or_make_split, make_dataset
from train.model import build_model, compile_args
from train.options import AUGMENTATIONS


def benchmark(images, *, batch_size: int = 64, recipes=("none", *AUGMENTATIONS), repeats: int = 2,
              seed: int = 0) -> dict[str, list[tuple[float, float]]]:
    """The training pipeline alone (no model), per recipe: each pass is one epoch of ``images`` through
    :func:`train.data.make_dataset` (gather, augment, preprocess, batch).
    -> {recipe: [(batches/s, CPU ms per image of this process), ...]}."""
    targets = np.zeros(len(images), np.float32)
    out: dict[str, list[tuple[float, float]]] = {}
    for recipe in recipes:
        ds = make_dataset(images, targets, batch_size=batch_size, training=True, seed=seed, augment=recipe)
        for _ in ds.take(2):  # build and warm up the pipeline
            pass
        out[recipe] = []
        for _ in range(repeats):
            started, cpu, n = time.perf_counter(), time.process_time(), 0
            for _ in ds:
                n += 1
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            out[recipe].append((n / wall, 1000 * cpu / len(images)))
    return out


def benchmark_training(datasets: dict, n_images: int, *, rounds: int = 3) -> dict[str, list[tuple[float, float]]]:
    """Training speed of the age model on each of ``datasets`` (one epoch of ``n_images`` each): one epoch
    per dataset in turn, ``rounds`` times, in one process with one compiled model, so that other jobs on a
    shared machine slow every recipe alike. -> {name: [(images/s, CPU ms per image of this process), ...]}."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16_policy_available() else "float32")
    model = build_model("age")
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), **compile_args("age"))
    for ds in datasets.values():  # trace and warm up
        model.fit(ds, epochs=1, verbose=0)
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in datasets}
    for _ in range(rounds):
        for name, ds in datasets.items():
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(ds, epochs=1, verbose=0)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[name].append((n_images / wall, 1000 * cpu / n_images))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.augment --data-dir D [--fit]``: the pipeline's own throughput (batches/s, no model)
    for each recipe; with ``--fit`` also the age model's training speed on each, interleaved."""
    parser = argparse.ArgumentParser(prog="python -m bench.augment", description=main.__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=640, help="training images (the first N of the split)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit", action="store_true", help="also time training epochs of the age model")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    samples = load_or_make_split(args.data_dir)["train"][: args.limit]
    images = load_chips(args.data_dir, samples, args.size)
    for recipe, runs in benchmark(images, batch_size=args.batch_size, repeats=args.repeats).items():
        rates, cpu = [r for r, _ in runs], [c for _, c in runs]
        print(f"pipeline {recipe:>5}: " + ", ".join(f"{r:.1f}" for r in rates) + f" batches/s of {args.batch_size}"
              f" at {args.size} px (best {max(rates) * args.batch_size:.0f} images/s); CPU "
              f"{np.median(cpu):.2f} ms per image", flush=True)
    if args.fit:
        y = labels(samples, "age")
        datasets = {r: make_dataset(images, y, batch_size=args.batch_size, training=True, augment=r)
                    for r in AUGMENTATIONS}
        for recipe, runs in benchmark_training(datasets, len(images), rounds=args.repeats).items():
            rates, cpu = [r for r, _ in runs], [c for _, c in runs]
            print(f"training {recipe:>5}: " + ", ".join(f"{r:.1f}" for r in rates) + " images/s (median "
                  f"{np.median(rates):.1f}); CPU {np.median(cpu):.1f} ms per image", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
