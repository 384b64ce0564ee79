"""The trainer's speed on this CPU, configuration against configuration, alternated in one process.

    python -m train.speed                                  # the default grid, synthetic faces
    python -m train.speed --sizes 64,96 --batches 64,128 --jit off,on --augments basic,photo --rounds 3

Each configuration (input size, batch size, XLA ``jit_compile``, augmentation recipe, precision) gets its own
compiled multitask model (the campaign's network) and its own tf.data pipeline over the same synthetic
uint8 faces; then every round times ``--steps`` training steps of each configuration in turn, so a machine
whose speed drifts (other jobs, turbo, a neighbour) slows every configuration alike. Prints images/s per
round and the median, and a JSON line. Only speed is measured here: the data are random, not faces.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import numpy as np


def _configs(args) -> list[dict]:
    grid = itertools.product(args.sizes, args.batches, args.jit, args.augments, args.precisions)
    return [{"size": s, "batch": b, "jit": j, "augment": a, "precision": p} for s, b, j, a, p in grid]


def _build(config: dict, n_images: int, seed: int):
    """A compiled multitask model and an endless training pipeline for one configuration."""
    import keras

    from train.data import make_mixed_dataset
    from train.model import build_model, compile_args

    keras.mixed_precision.set_global_policy(config["precision"])
    rng = np.random.default_rng(seed)
    size = config["size"]
    images = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    targets = {"age": rng.uniform(1, 90, n_images).astype(np.float32),
               "gender": rng.integers(0, 2, n_images).astype(np.float32),
               "race": rng.integers(-1, 5, n_images).astype(np.int32)}
    ds = make_mixed_dataset({"synthetic": (images, targets)}, batch_size=config["batch"], seed=seed,
                            augment=config["augment"], examples_per_epoch=10**9)
    model = build_model("multitask")
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=config["jit"] == "on",
                  **compile_args("multitask"))
    keras.mixed_precision.set_global_policy("float32")
    return model, iter(ds)


def _time(model, batches, steps: int, batch: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        x, y, w = next(batches)
        model.train_on_batch(x, y, sample_weight=w)
    return steps * batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    def csv(kind):
        return lambda text: [kind(v) for v in text.split(",")]

    p = argparse.ArgumentParser(prog="python -m train.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=csv(int), default=[64, 96])
    p.add_argument("--batches", type=csv(int), default=[64])
    p.add_argument("--jit", type=csv(str), default=["off"], help="off,on: XLA jit_compile")
    p.add_argument("--augments", type=csv(str), default=["basic"])
    p.add_argument("--precisions", type=csv(str), default=None,
                   help="mixed_bfloat16,float32 (default: both where the CPU has bf16 math, else float32)")
    p.add_argument("--steps", type=int, default=12, help="training steps per configuration and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=512, help="synthetic faces per pipeline")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.hardware import cpu_description, cpu_supports_bf16

    if args.precisions is None:
        args.precisions = ["mixed_bfloat16", "float32"] if cpu_supports_bf16() else ["float32"]
    configs = _configs(args)
    print(f"machine: {cpu_description()}; {len(configs)} configurations, {args.steps} steps each, "
          f"{args.rounds} rounds", flush=True)
    built = []
    for config in configs:
        model, batches = _build(config, args.images, seed=0)
        _time(model, batches, 3, config["batch"])  # trace, compile, warm the pipeline
        built.append((config, model, batches))
    rates: list[list[float]] = [[] for _ in configs]
    for r in range(args.rounds):
        for i, (config, model, batches) in enumerate(built):
            rates[i].append(_time(model, batches, args.steps, config["batch"]))
        print(f"round {r + 1}: " + ", ".join(f"{v[-1]:.1f}" for v in rates), flush=True)
    rows = []
    for config, values in zip(configs, rates):
        rows.append({**config, "images_per_s": [round(v, 2) for v in values],
                     "median": round(float(np.median(values)), 2)})
        print(f"{config['size']:>3} px  batch {config['batch']:>3}  jit {config['jit']:>3}  "
              f"{config['augment']:>6}  {config['precision']:>14}: median {rows[-1]['median']:.1f} images/s  "
              f"({', '.join(f'{v:.1f}' for v in values)})", flush=True)
    print(json.dumps({"machine": cpu_description(), "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
