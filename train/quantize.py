"""Int8 heads for the inference export: ranges measured on training faces, the convolutions quantized.

    python -m train.quantize --data-dir ../shared/data/utkface --data-dir ../shared/data/aaf

Each exported model runs as a trunk (VGG blocks 1-2) and a head (blocks 3-5 and the output layers, four
fifths of the arithmetic with the flip, see :mod:`core.models`). This puts the head's nine convolutions on
int8, the way OpenVINO's CPU plugin runs them with int8 kernels (about 1.7x the float32 speed with AVX2 and
2.6x with AVX-512 VNNI, docs/speed.md):

- **weights**: per output channel, symmetric, 255 levels (``scale = max |w| / 127``), stored as int8 with
  their scales (``Convert`` + ``Multiply`` before each convolution);
- **activations**: a ``FakeQuantize`` of 256 levels over ``[0, max]`` on the head's input and after each ReLU
  that feeds a convolution or a max pool (all are non-negative), ``max`` being the largest value seen on
  the calibration faces (their mirrored copies too, as the app runs them). The average of per-image maxima
  (NNCF's default) clipped the larger activations of young children and aged them by 1.2 years;
- the dense output layers and the age model's calibration curve stay float32 (they are a few thousand
  multiplications, and quantizing a one-number input moved ages by years); so does the trunk (quantizing
  blocks 1-2 aged faces over 35 by 0.2-0.3 years on average).

Steps: ``python -m train.quantize`` measures the ranges (on ``--calibration`` faces drawn from the training
splits of the ``--data-dir`` datasets, aligned as the app crops them) and writes ``<task>_model.int8.json``
next to the ``.h5`` (committed: ranges, the ``.h5``'s sha256, the calibration and the parity on the test
splits), then builds the int8 head. ``python -m train.export`` (``make export``) rebuilds it from that file
on any machine, without the data. Core runs it where it measured fastest (:mod:`core.runtime`);
``AGEGENDER_PRECISION=float32`` runs the float32 head instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from core.modelfiles import (
    MODEL_FILES,
    file_sha256,
    int8_ranges_path,
    models_dir,
    part_path,
    read_metadata,
    sidecar_path,
)
from core.models import network_input
from core.runtime import import_openvino, openvino_network, usable_export
from train.data import labels as sample_labels
from train.data import load_chips_of, load_or_make_split, sources
from train.export import export_model, export_outputs
from train.int8 import SITE_LAYERS, activation_sites, build_int8

#: Faces the ranges are measured on by default (with their mirrored copies: twice as many inputs).
CALIBRATION_FACES = 600


def activation_ranges(head_xml: Path, features: np.ndarray, *, batch: int = 64) -> list[float]:
    """The largest value at each activation site (:func:`activation_sites`) of the float32 head ``head_xml``
    over ``features`` (trunk outputs) -> one float per entry of :data:`SITE_LAYERS`."""
    ov = import_openvino()
    model = ov.Core().read_model(str(head_xml))
    sites = activation_sites(model)
    probe = ov.Model(sites, model.get_parameters(), "activation_ranges")
    compiled = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    low = np.full(len(sites), np.inf)
    high = np.full(len(sites), -np.inf)
    for start in range(0, len(features), batch):
        outputs = compiled(np.ascontiguousarray(features[start:start + batch], np.float32))
        values = [outputs[i] for i in range(len(sites))]
        low = np.minimum(low, [float(v.min()) for v in values])
        high = np.maximum(high, [float(v.max()) for v in values])
    if len(features) == 0 or (low < 0).any():
        raise ValueError("activation ranges need at least one input, and non-negative activations at every site")
    return [float(h) for h in high]


def attach_int8(model_path: Path, log=print) -> dict[str, Any] | None:
    """:func:`build_int8`, and its entry written into the export sidecar (replacing any older one)."""
    entry = build_int8(model_path, log)
    _record_int8(model_path, entry)
    return entry


def _record_int8(model_path: Path, entry: dict[str, Any] | None) -> None:
    """Write ``entry`` (None: none) as the int8 entry of the export sidecar of ``model_path``."""
    sidecar = sidecar_path(model_path)
    record = json.loads(sidecar.read_text())
    record.pop("int8", None)
    if entry is not None:
        record["int8"] = entry
    sidecar.write_text(json.dumps(record, indent=2))


def parity(model_path: Path, task: str, faces: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Float32 and int8 exports of one model on the same faces (flip on): their scores and differences."""
    out = export_outputs(model_path, task, faces, ("float32", "int8"))
    diff = np.abs(out["int8"] - out["float32"])
    record: dict[str, Any] = {"n": int(len(faces)), "mean_abs_diff": round(float(diff.mean()), 5),
                              "max_abs_diff": round(float(diff.max()), 5)}
    if task == "age":
        for precision in ("float32", "int8"):
            record[f"{precision}_mae"] = round(float(np.mean(np.abs(out[precision] - labels))), 4)
        record["mean_signed_diff"] = round(float(np.mean(out["int8"] - out["float32"])), 5)
    else:
        for precision in ("float32", "int8"):
            record[f"{precision}_accuracy"] = round(float(np.mean((out[precision] >= 0.5) == (labels >= 0.5))), 5)
        record["decisions_changed"] = int(np.sum((out["int8"] >= 0.5) != (out["float32"] >= 0.5)))
    return record


def calibration_features(model_path: Path, faces: np.ndarray, *, batch: int = 32) -> np.ndarray:
    """What the head sees for uint8 ``faces`` and their mirrored copies: the float32 trunk's outputs."""
    trunk = openvino_network(part_path(model_path, "trunk"))
    x = network_input(faces, True)
    return np.concatenate([trunk(x[i:i + batch]) for i in range(0, len(x), batch)])


def measure_ranges(model_path: Path, faces: np.ndarray, calibration: str) -> dict[str, Any]:
    """Measure the activation ranges of the exported ``model_path`` on uint8 ``faces`` and write its ranges
    file (:func:`core.runtime.int8_ranges_path`) -> the record written."""
    maxima = activation_ranges(part_path(model_path, "head"), calibration_features(model_path, faces))
    record = {
        "source": model_path.name,
        "source_sha256": file_sha256(model_path),
        "calibration": calibration,
        "method": ("activations: uint8 over [0, max seen] after pool2 and each ReLU of blocks 3-5; weights: int8 "
                   "per output channel, symmetric; trunk, dense layers and age curve float32 (train/quantize.py)"),
        "sites": [{"after": layer, "max": round(high, 6)} for layer, high in zip(SITE_LAYERS, maxima)],
        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    int8_ranges_path(model_path).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, action="append", required=True,
                        help="a dataset folder (repeat: UTKFace and AAF); calibration on its training split, "
                             "parity on its test split")
    parser.add_argument("--split-dir", type=Path, action="append",
                        help="the split files of each --data-dir, in order (default: train/splits/<dataset>)")
    parser.add_argument("--models-dir", type=Path, help="default models/ (or AGEGENDER_MODELS_DIR)")
    parser.add_argument("--no-cache", action="store_true", help="do not keep the cropped faces in .cache/")
    parser.add_argument("--calibration", type=int, default=CALIBRATION_FACES,
                        help=f"training faces the ranges are measured on, drawn in proportion to each dataset's "
                             f"training split (default {CALIBRATION_FACES}; with their mirrored copies)")
    parser.add_argument("--limit", type=int, help="parity on the first N test faces of each dataset only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=["age", "gender"], choices=("age", "gender"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    srcs = sources(args.data_dir, args.split_dir)
    cache = not args.no_cache
    splits = {name: load_or_make_split(src.data_dir, src.split_dir) for name, src in srcs.items()}
    train_total = sum(len(split["train"]) for split in splits.values())
    rng = np.random.default_rng(args.seed)
    calibration = []
    for split in splits.values():
        n = round(args.calibration * len(split["train"]) / train_total)
        picked = sorted(rng.choice(len(split["train"]), min(n, len(split["train"])), replace=False))
        calibration += [split["train"][i] for i in picked]
    counts = ", ".join(f"{sum(s.dataset == name for s in calibration)} {name}" for name in splits)
    directory = models_dir(args.models_dir)
    for task in args.tasks:
        path = directory / MODEL_FILES[task]
        if not path.is_file():
            print(f"error: {path} not found", file=sys.stderr)
            return 2
        if usable_export(path)[0] is None:
            export_model(path)  # the float32 export the ranges are measured on
        size = int(read_metadata(path)["input_size"])
        faces = load_chips_of(srcs, calibration, size, cache=cache, align=True)
        record = measure_ranges(path, faces, f"{len(calibration)} faces of the training splits ({counts}, seed "
                                             f"{args.seed}), aligned as the app crops them, and their mirrored copies")
        entry = attach_int8(path)
        if entry is None:
            print(f"error: no int8 head built for {path.name} (see the warning above)", file=sys.stderr)
            return 1
        record["parity"] = {}
        for name, split in splits.items():
            test = split["test"][: args.limit or None]
            record["parity"][name] = parity(path, task, load_chips_of(srcs, test, size, cache=cache, align=True),
                                            np.asarray(sample_labels(test, task)))
        record["parity"]["crop"] = "test splits, aligned as the app crops them, test-time flip on"
        int8_ranges_path(path).write_text(json.dumps(record, indent=2) + "\n")
        # The head stays as built (the ranges did not change); the sidecar points at the file as written now.
        _record_int8(path, {**entry, "ranges_sha256": file_sha256(int8_ranges_path(path)),
                            "parity": record["parity"]})
        print(f"{task}: {entry['head']}; parity {json.dumps(record['parity'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
