"""Average the weights of fine-tuning runs that started from the same backbone ("model soup").

    python -m train.soup age runs/age_s42 runs/age_s7 --data-dir ../shared/data/utkface [--out-dir models]

Fine-tunes of one backbone with different seeds (data order, augmentation, dropout) end in the same basin
of the loss, so the average of their weights is one network of the same size that usually predicts better
than each of them, at no extra inference cost (Wortsman et al., 2022, "Model soups"). Each run folder must
hold a finished run (``model.keras`` and ``config.json``) of the same task and input size. The soup is
saved like any trained model (calibration, metadata, validation numbers through the app's crop); the
history of the first run is published as ``history_<task>.csv`` and the others as
``history_<task>_<run>.csv``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def average_weights(weight_lists: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of several models' weight lists (same architecture: same count and shapes)."""
    if not weight_lists:
        raise ValueError("no models to average")
    shapes = [[w.shape for w in ws] for ws in weight_lists]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("the models do not have the same architecture (weight shapes differ)")
    return [np.mean(np.stack(ws), axis=0).astype(ws[0].dtype) for ws in zip(*weight_lists)]


def main(argv: list[str] | None = None) -> int:
    import keras

    from core.models import DEFAULT_MODELS_DIR
    from train.data import validation_sources
    from train.publish import publish_history, save_model

    parser = argparse.ArgumentParser(prog="python -m train.soup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("age", "gender"))
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (runs/<name>)")
    parser.add_argument("--data-dir", type=Path, action="append", required=True,
                        help="the runs' dataset folder(s), repeated as in training")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--split-dir", type=Path, action="append",
                        help="split folder of each --data-dir, in the same order (default train/splits/<dataset>)")
    args = parser.parse_args(argv)

    configs = []
    for run in args.runs:
        if not (run / "model.keras").is_file() or not (run / "config.json").is_file():
            print(f"error: {run} is not a finished run (no model.keras or config.json)", file=sys.stderr)
            return 2
        configs.append(json.loads((run / "config.json").read_text()))
    sizes = {c["schedule"].split(",")[-1].split(":")[0] for c in configs}
    if any(c["task"] != args.task for c in configs) or len(sizes) != 1:
        print(f"error: the runs must all be {args.task} runs with the same final input size", file=sys.stderr)
        return 2
    size = int(sizes.pop())
    try:
        weights = average_weights([keras.models.load_model(r / "model.keras", compile=False).get_weights()
                                   for r in args.runs])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = keras.models.load_model(args.runs[0] / "model.keras", compile=False)
    model.set_weights(weights)

    names = [r.name for r in args.runs]
    config = {**configs[0], "soup_of": [{"run": name, "seed": c["seed"]} for name, c in zip(names, configs)],
              "init_note": f"uniform soup (weight average) of {len(names)} fine-tunes ({', '.join(names)}), "
                           f"each: {configs[0].get('init_note')}"}
    try:
        srcs, val = validation_sources(args.data_dir, args.split_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metadata = save_model(model, args.task, size, config, args.out_dir, srcs, val)
    publish_history(args.runs[0], args.out_dir, args.task, config)
    for run in args.runs[1:]:
        if (run / "history.csv").is_file():
            shutil.copyfile(run / "history.csv", args.out_dir / f"history_{args.task}_{run.name}.csv")
    print(f"soup of {', '.join(names)} -> {args.out_dir}: validation {metadata['validation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
