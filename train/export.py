"""Export the trained models for inference: OpenVINO IR, float32, each split into trunk + head.

    python -m train.export                                             # models/, parity on random images
    python -m train.export --data-dir ../shared/data/utkface [--limit N]  # parity on the test split

For each ``<task>_model.h5`` in ``--models-dir`` this writes ``<task>_model.trunk.xml/.bin`` (VGG blocks 1-2),
``<task>_model.head.xml/.bin`` (the rest; batch norm folded into the convolutions as in
:func:`core.models.inference_copy`) and ``<task>_model.export.json``: the source ``.h5``'s sha256 (core uses
the export only while it matches), the runtime and its version, a digest of the trunk's weights (equal
digests: core runs one trunk for both models) and the parity numbers: the ``.h5`` and the export on the same
faces (with the test-time flip, as the app runs them), their age MAE or gender accuracy where labels are
known and the largest output difference. Every training run's export step calls :func:`export_model` too
(on validation chips). See :mod:`core.runtime` for how core chooses between the ``.h5`` and the export.

Where ``<task>_model.int8.json`` (activation ranges measured by ``python -m train.quantize`` on training faces,
committed) was measured on this ``.h5``, the export also builds ``<task>_model.head.int8.xml/.bin``, the head
with its convolutions on int8 (:mod:`train.quantize`), and records it in the sidecar.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import numpy as np

from core.lite import convert
from core.modelfiles import MODEL_FILES, file_sha256, models_dir, part_path, read_metadata, sidecar_path
from core.models import Networks, inference_copy, load_keras_model, predict_crops, split_model, trunk_digest
from core.runtime import EXPORT_RUNTIME, export_parts, import_openvino, openvino_network, runtime_version
from train.data import labels as sample_labels
from train.data import load_chips, load_or_make_split
from train.int8 import build_int8

#: Faces scored per batch in the parity check.
PARITY_BATCH = 64


def _convert(model, input_shape: tuple[int, ...], path: Path) -> None:
    """One Keras (sub)model as float32 OpenVINO IR at ``path`` (.xml + .bin), batch size free.

    Through TensorFlow's own LiteRT converter (:func:`core.lite.convert`) and OpenVINO's LiteRT reader, not
    ``openvino.convert_model``: that one sends usage telemetry unless the user has opted out.
    """
    import tempfile

    import tensorflow as tf

    ov = import_openvino()

    spec = tf.TensorSpec([None, *input_shape], tf.float32)
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        flatbuffer = Path(tmp) / "model.tflite"
        flatbuffer.write_bytes(convert(tf.function(lambda x: model(x, training=False), input_signature=[spec])))
        ov.save_model(ov.Core().read_model(str(flatbuffer)), str(path), compress_to_fp16=False)


def _scores(task: str, outputs: np.ndarray, labels: np.ndarray) -> dict:
    if task == "age":
        return {"age_mae": round(float(np.mean(np.abs(outputs - labels))), 4)}
    return {"gender_accuracy": round(float(np.mean((outputs >= 0.5) == (labels >= 0.5))), 5)}


def export_outputs(model_path: Path, task: str, faces: np.ndarray, precisions: tuple[str, ...], *,
                   batch: int = PARITY_BATCH) -> dict[str, np.ndarray]:
    """Outputs of the export of ``model_path`` (``task``) on uint8 ``faces`` with the test-time flip, as the
    app runs it, per precision (``float32``/``int8``, :func:`core.runtime.export_parts`)."""
    out = {}
    for precision in precisions:
        parts = {part: openvino_network(xml) for part, xml in export_parts(model_path, precision).items()}
        networks = Networks("export", precision, {task: parts["trunk"]}, {task: parts["head"]})
        out[precision] = np.concatenate(
            [networks.run({task: faces[i:i + batch]}, {task: True})[task] for i in range(0, len(faces), batch)]
            or [np.zeros(0, np.float32)])
    return out


def parity(model_path: Path, task: str, faces: np.ndarray, labels: np.ndarray | None, data: str) -> dict:
    """The ``.h5`` (Keras, float32) and its export on the same uint8 faces, both with the test-time flip."""
    keras_out = predict_crops(load_keras_model(model_path), faces, flip=True, batch_size=PARITY_BATCH)
    export_out = export_outputs(model_path, task, faces, ("float32",))["float32"]
    record: dict = {"data": data, "n": int(len(faces)), "flip": True,
                    "max_abs_diff": float(np.max(np.abs(export_out - keras_out))) if len(faces) else 0.0}
    if labels is not None:
        record["keras"] = _scores(task, keras_out, labels)
        record["export"] = _scores(task, export_out, labels)
    return record


def export_model(model_path: Path, *, faces: np.ndarray | None = None, labels: np.ndarray | None = None,
                 data: str = "") -> dict:
    """Export one ``.h5`` next to itself (see the module docstring); return the sidecar's record.

    ``faces`` (uint8, the model's input size) and ``labels`` feed the parity check; without them it runs on
    32 random images (output difference only).
    """
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy("float32")
    meta = read_metadata(model_path)
    task, size = meta["task"], int(meta["input_size"])
    model = load_keras_model(model_path)
    trunk, head = split_model(inference_copy(model))
    sidecar_path(model_path).unlink(missing_ok=True)  # no stale record while the parts are rewritten
    _convert(trunk, (size, size, 3), part_path(model_path, "trunk"))
    _convert(head, tuple(trunk.compute_output_shape((None, size, size, 3))[1:]), part_path(model_path, "head"))
    record = {
        "task": task,
        "source": model_path.name,
        "source_sha256": file_sha256(model_path),
        "runtime": EXPORT_RUNTIME,
        "runtime_version": runtime_version(),
        "format": "OpenVINO IR, float32 (batch norm folded into the convolutions)",
        "converter": f"TensorFlow {tf.__version__}'s LiteRT converter, then OpenVINO's reader",
        "parts": {part: part_path(model_path, part).name for part in ("trunk", "head")},
        "trunk": "input to pool2 (VGG blocks 1-2); the head takes its output",
        "trunk_sha256": trunk_digest(model),
        "input": f"float32 (N, {size}, {size}, 3): core.vggface.preprocess_input of uint8 RGB faces",
        "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if faces is None:
        faces = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
        labels, data = None, "32 random images"
    record["parity"] = parity(model_path, task, faces, labels, data)
    int8 = build_int8(model_path)  # from the committed ranges file, where it matches this .h5
    if int8 is not None:
        record["int8"] = int8
    sidecar_path(model_path).write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, help="default models/ (or AGEGENDER_MODELS_DIR)")
    parser.add_argument("--data-dir", type=Path, help="UTKFace chips: parity on the saved test split")
    parser.add_argument("--limit", type=int, help="parity on the first N test chips only")
    parser.add_argument("--tasks", nargs="+", default=["age", "gender"], choices=("age", "gender"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    directory = models_dir(args.models_dir)
    samples = None
    if args.data_dir:
        samples = load_or_make_split(args.data_dir)["test"][: args.limit or None]
    for task in args.tasks:
        path = directory / MODEL_FILES[task]
        if not path.is_file():
            print(f"error: {path} not found", file=sys.stderr)
            return 2
        faces = labels = None
        data = ""
        if samples:
            faces = load_chips(args.data_dir, samples, int(read_metadata(path)["input_size"]))
            labels, data = sample_labels(samples, task), f"test split, chips as given (n={len(samples)})"
        record = export_model(path, faces=faces, labels=labels, data=data)
        int8 = f"; int8 head {record['int8']['head']}" if "int8" in record else ""
        print(f"{task}: {record['parts']} ({record['runtime']} {record['runtime_version']}); parity "
              f"{json.dumps(record['parity'])}{int8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
