"""Load the shipped age and gender models (``models/*.h5`` + JSON metadata) and run them batched.

Each ``<task>_model.h5`` has a sidecar ``<task>_model.json`` with its input size, preprocessing, the age
range table (age model) and provenance. Both models see every face of an image in one batched call (with a
horizontally flipped copy when the metadata asks for test-time flip), on Keras or on the inference export
shipped next to the ``.h5`` (:mod:`core.runtime`). Each model runs as a trunk (VGG blocks 1-2) and a head
(the rest); where both models' trunks have byte-identical weights, as in the shipped pair (fine-tuned from
one backbone with blocks 1-2 frozen), the trunk runs once for both.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core import hardware
from core.errors import ModelNotFound
from core.modelfiles import DEFAULT_MODELS_DIR, model_paths, models_dir, read_metadata, require_model_file
from core.modelfiles import MODEL_FILES as MODEL_FILES  # re-exported: the app and train import both from here
from core.modelfiles import require_models as require_models
from core.reliability import GenderReliability
from core.runtime import (
    Network,
    compile_precision,
    export_parts,
    known_precision,
    measured_precision,
    openvino_network,
    read_sidecar,
    runtime_choice,
    usable_export,
    usable_int8,
    weights_digest,
)
from core.vggface import preprocess_input


def load_keras_model(path: Path):
    """Load one ``.h5`` model for inference (``compile=False``); a missing file is reported before Keras is
    imported."""
    require_model_file(path)
    import keras

    return keras.models.load_model(path, compile=False)


#: The last layer of each model's trunk: the end of VGG block 2 (see :func:`split_model`).
TRUNK_END = "pool2"

#: Ages and age ranges are reported within 0..MAX_AGE years (UTKFace's oldest label is 116).
MAX_AGE = 120.0

#: The layers of an age model's calibration curve (``train.calibrate.fold_age_curve``), after its head:
#: ``age_years`` (the head's years), ``age_hinges`` (``max(years - knot, 0)`` per knot), ``age_curve_in``
#: (both side by side); the output ``age`` is their weighted sum: a continuous piecewise-linear map.
AGE_CURVE_LAYERS = ("age_years", "age_hinges", "age_curve_in")

#: Layers that stay float32 when inference runs in bfloat16 (the outputs, and the age calibration curve).
FLOAT32_LAYERS = ("age_dense", *AGE_CURVE_LAYERS, "age", "gender", "race")

#: Faces per call of the networks (:meth:`AgeGenderModels.predict`): a runtime keeps buffers for the largest
#: batch it has run, so a photo with many faces goes through a few at a time (docs/memory.md). The outputs
#: do not depend on the batch they ran in.
MAX_FACES_PER_CALL = 8


def precision_override() -> str | None:
    """``AGEGENDER_PRECISION`` when it names a precision (``float32``/``bfloat16``/``int8``), else None
    (``auto``)."""
    choice = os.environ.get("AGEGENDER_PRECISION", "auto").strip().lower()
    return choice if choice in ("float32", "bfloat16", "int8") else None


def inference_precision() -> str:
    """The Keras path's precision: ``bfloat16`` where the CPU has native bf16 math, else ``float32``;
    AGEGENDER_PRECISION overrides (``int8`` exists only in the export: Keras runs float32 then).

    The export measures which precision is fastest on the CPU instead (:func:`export_candidates`)."""
    override = precision_override()
    if override in ("float32", "bfloat16"):
        return override
    return "bfloat16" if override is None and hardware.cpu_supports_bf16() else "float32"


def bf16_policy_available() -> bool:
    """Whether ``mixed_bfloat16`` will be fast here: any visible GPU, and a CPU with bf16 math unless bf16
    measured slower than float32 on it; float32 elsewhere (training's ``--precision auto``).

    The measurement is the inference export's (:func:`core.runtime.measured_precision`, the shipped age
    model's layers, timed once per CPU and remembered); it predicts training too: on an Intel Xeon with
    AVX512-BF16 but no AMX, inference ran 1.7x and a fine-tune 1.7x faster in float32 (19.7 against 11.5
    images/s, docs/training.md). Without a usable export of the shipped models, a bf16 CPU counts as fast.
    """
    hardware.import_tensorflow()
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return True
    if not hardware.cpu_supports_bf16():
        return False
    age = model_paths(DEFAULT_MODELS_DIR)["age"]
    return usable_export(age)[0] is None or measured_precision(age) == "bfloat16"


def inference_copy(model, *, bfloat16: bool = False):
    """A copy of ``model`` for inference: batch norm folded into the convolutions, optionally in bfloat16.

    Each ``bnX_Y`` layer (inference mode: a fixed per-channel scale and shift right after ``convX_Y``, see
    :func:`core.vggface.build_vggface_vgg16`) is replaced by the identity and folded into that convolution's
    kernel and bias, which removes one pass over every activation map. With ``bfloat16`` the layers store
    and compute in bfloat16, output layers (:data:`FLOAT32_LAYERS`) kept float32: the same arithmetic as a
    ``mixed_bfloat16`` copy, without casting every float32 weight to bfloat16 at each call (which made up
    about a tenth of a one-face call here) and at half the weight memory. The outputs equal the original
    model's up to float rounding (tested).
    """
    import keras

    def clone(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            return _folded_batch_norm_layer()(name=layer.name)
        config = layer.get_config()
        if bfloat16 and layer.name not in FLOAT32_LAYERS and "dtype" in config:
            config["dtype"] = "bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    batch_norms = {x.name: x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)}
    for layer in copy.layers:
        if not layer.weights:
            continue
        weights = model.get_layer(layer.name).get_weights()
        bn = batch_norms.get("bn" + layer.name.removeprefix("conv")) if layer.name.startswith("conv") else None
        layer.set_weights(_fold_batch_norm(weights, bn) if bn is not None else weights)
    return copy


@lru_cache(maxsize=1)
def _folded_batch_norm_layer():
    """The layer class that stands where a batch-norm layer was folded away (defined on first use: importing
    core does not import Keras)."""
    import keras

    class FoldedBatchNorm(keras.layers.Layer):
        """The identity: its batch norm now lives in the preceding convolution's kernel and bias."""

        def call(self, inputs, training=None, mask=None):
            return inputs

    return FoldedBatchNorm


def _fold_batch_norm(conv_weights: list[np.ndarray], bn) -> list[np.ndarray]:
    """Conv kernel and bias with an inference-mode BatchNormalization applied after them folded in."""
    kernel, bias = conv_weights
    values = {w.path.rsplit("/", 1)[-1]: np.asarray(w.numpy(), np.float64) for w in bn.weights}
    scale = values.get("gamma", 1.0) / np.sqrt(values["moving_variance"] + bn.epsilon)
    shift = values.get("beta", 0.0) - values["moving_mean"] * scale
    return [(kernel * scale).astype(kernel.dtype), (bias * scale + shift).astype(bias.dtype)]


def age_interval(age: float, table: dict[str, Any] | None) -> tuple[float, float]:
    """The calibrated age range around a predicted age, from the metadata's residual-quantile table.

    The table holds quantiles of (true - predicted) per band of predicted age, measured on the validation
    split; the range is widened if needed so that it contains the estimate, and clipped to 0-MAX_AGE.
    """
    if not table or not table.get("bands"):
        return (max(0.0, age), age)
    band = table["bands"][-1]
    for b in table["bands"]:
        if b["low"] <= age < b["high"]:
            band = b
            break
    low = min(age, age + band["q_low"])  # the range always contains the estimate itself
    high = max(age, age + band["q_high"])
    return (float(np.clip(low, 0.0, MAX_AGE)), float(np.clip(high, 0.0, MAX_AGE)))


@dataclass
class Predictions:
    ages: np.ndarray  # years, float
    female_probabilities: np.ndarray  # 0..1


def split_model(model) -> tuple[Any, Any]:
    """``model`` as a trunk (input -> :data:`TRUNK_END`) and a head (the trunk's output -> outputs), sharing
    its layers: ``head(trunk(x)) == model(x)``."""
    import keras

    cut = model.get_layer(TRUNK_END).output
    return (keras.Model(model.input, cut, name=f"{model.name}_trunk"),
            keras.Model(cut, model.output, name=f"{model.name}_head"))


def trunk_digest(model) -> str:
    """A digest of the trunk's weights (convolutions and batch norms of blocks 1-2) as stored in the model:
    two models share their trunk's computation iff their digests are equal."""
    return weights_digest(split_model(model)[0].get_weights())


def keras_network(model) -> Network:
    """A Keras model as a :data:`core.runtime.Network`: one ``tf.function`` (traced again for a new batch size
    only once: ``reduce_retracing``), NumPy in and out."""
    import tensorflow as tf

    function = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: np.asarray(function(x))


def network_input(faces: np.ndarray, flip: bool) -> np.ndarray:
    """Uint8 faces (N, H, W, 3) preprocessed (:func:`core.vggface.preprocess_input`), followed by their
    horizontally mirrored copies when ``flip`` (2N rows)."""
    x = preprocess_input(faces)
    return np.concatenate([x, x[:, :, ::-1]]) if flip else x


def average_flip(outputs: np.ndarray, n: int, flip: bool) -> np.ndarray:
    """Float32 outputs of :func:`network_input`'s rows, each face's averaged with its mirrored copy's."""
    y = np.asarray(outputs, np.float32)
    return (y[:n] + y[n:]) / 2.0 if flip else y


@dataclass
class Networks:
    """Both models as trunk + head networks, loaded once per process (:func:`load_networks`).

    ``trunks["age"] is trunks["gender"]`` where the two trunks' weights are identical: :meth:`run` then
    computes blocks 1-2 once for both models' faces when they get the same input.
    """

    runtime: str  # "keras" or "export"
    precision: str  # "float32" or "bfloat16"
    trunks: dict[str, Network]
    heads: dict[str, Network]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def shared(self) -> bool:
        return self.trunks["age"] is self.trunks["gender"]

    def run(self, faces: dict[str, np.ndarray], flip: dict[str, bool]) -> dict[str, np.ndarray]:
        """Outputs per task (float32, one per face) for uint8 faces per task; ``flip``: test-time flip per task.

        Tasks whose trunk is the same network and whose faces are the same array share one trunk call (on
        the mirrored copies too if either task flips).
        """
        groups: dict[tuple[int, int], list[str]] = {}
        for task in faces:
            groups.setdefault((id(self.trunks[task]), id(faces[task])), []).append(task)
        out = {}
        with self._lock:
            for tasks in groups.values():
                x, mirrored = faces[tasks[0]], any(flip[t] for t in tasks)
                n = len(x)
                features = self.trunks[tasks[0]](network_input(x, mirrored))
                for t in tasks:
                    y = self.heads[t](features if flip[t] or not mirrored else features[:n])
                    out[t] = average_flip(y, n, flip[t]).reshape(-1)
        return out


def _keras_networks(paths: dict[str, Path], precision: str) -> Networks:
    hardware.import_tensorflow()  # maybe while the detector thread imports it too
    trunks, heads, digests = {}, {}, {}
    for task, path in paths.items():
        model = load_keras_model(path)
        digests[task] = trunk_digest(model)
        trunk, heads[task] = split_model(inference_copy(model, bfloat16=precision == "bfloat16"))
        trunks[task] = keras_network(trunk)
        heads[task] = keras_network(heads[task])
    if digests["age"] == digests["gender"]:
        trunks["gender"] = trunks["age"]
    return Networks("keras", precision, trunks, heads)


def _export_networks(paths: dict[str, Path], records: dict[str, dict[str, Any]], precision: str) -> Networks:
    """The exported parts in ``precision`` (``records``: their checked sidecars); one trunk compiled where
    both are equal."""
    shared = records["age"]["trunk_sha256"] == records["gender"]["trunk_sha256"]
    trunks, heads = {}, {}
    for task, path in paths.items():
        parts = export_parts(path, precision)
        trunks[task] = (trunks["age"] if shared and task == "gender"
                        else openvino_network(parts["trunk"], compile_precision(precision)))
        heads[task] = openvino_network(parts["head"], compile_precision(precision))
    return Networks("export", precision, trunks, heads)


def int8_unusable(paths: dict[str, Path], records: dict[str, dict[str, Any]]) -> str:
    """Why the int8 heads of ``paths`` cannot run (``records``: their usable export sidecars); "" where they can."""
    for task, path in paths.items():
        ok, why = usable_int8(path, records[task])
        if not ok:
            return why
    return ""


def export_candidates(paths: dict[str, Path], records: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The precisions the export of ``paths`` can run in on this CPU: float32; bfloat16 where the CPU has bf16
    math; int8 where both int8 heads are built and current."""
    return (("float32",) + (("bfloat16",) if hardware.cpu_supports_bf16() else ())
            + (("int8",) if not int8_unusable(paths, records) else ()))


def _export_precision(paths: dict[str, Path], records: dict[str, dict[str, Any]], runtime: str) -> str:
    """The precision the export runs in: AGEGENDER_PRECISION's where set (int8 where its heads cannot run: an
    error with ``AGEGENDER_RUNTIME=export``, float32 with a warning otherwise); else the only candidate
    (:func:`export_candidates`), or whichever measured fastest on this CPU
    (:func:`core.runtime.measured_precision`, once per CPU)."""
    override = precision_override()
    if override == "int8":
        why = int8_unusable(paths, records)
        if not why:
            return "int8"
        if runtime == "export":
            raise ModelNotFound(f"AGEGENDER_PRECISION=int8, but {why}.")
        warnings.warn(f"AGEGENDER_PRECISION=int8, but {why}; running the export in float32", stacklevel=2)
        return "float32"
    if override:
        return override
    candidates = export_candidates(paths, records)
    return candidates[0] if len(candidates) == 1 else measured_precision(paths["age"], candidates)


def _usable_exports(paths: dict[str, Path]) -> tuple[dict[str, dict[str, Any]], str]:
    """The checked export sidecar of each model, or ``({}, why not)`` where either export cannot run."""
    checked = {task: usable_export(path) for task, path in paths.items()}
    why = next((reason for _, reason in checked.values() if reason), "")
    return ({} if why else {task: record for task, (record, _) in checked.items()}), why


@lru_cache(maxsize=4)
def _cached_networks(directory: str, runtime: str, requested: str) -> Networks:
    paths = model_paths(Path(directory))
    if runtime in ("export", "auto"):
        records, why = _usable_exports(paths)
        if not why:
            return _export_networks(paths, records, _export_precision(paths, records, runtime))
        if runtime == "export":
            raise ModelNotFound(f"AGEGENDER_RUNTIME=export, but {why}.")
    return _keras_networks(paths, inference_precision())


def requested_precision() -> str:
    """AGEGENDER_PRECISION as asked (``auto`` when unset or not a precision), with whether the CPU has bf16
    math where it is ``auto``: what the loaded networks depend on besides the folder and the runtime."""
    return precision_override() or f"auto ({'bf16' if hardware.cpu_supports_bf16() else 'no bf16'})"


def settle_precision(directory: str | Path | None = None) -> None:
    """Run the export's one-time precision measurement (:func:`core.runtime.measured_precision`) now where
    loading the networks of ``directory`` will need it: the export usable with more than one candidate
    precision on this CPU (:func:`export_candidates`), no AGEGENDER_PRECISION, nothing measured on this CPU
    yet. Elsewhere it returns at once.

    :func:`core.pipeline.prepare` calls it before the detector starts building in its second thread: timed
    while that thread competes for the cores, the two precisions' margin shrank (0.47 s against 0.50 s,
    where alone 0.28 s against 0.48 s) and a close call could pick the slower one and remember it.
    """
    if runtime_choice() == "keras" or precision_override():
        return
    paths = model_paths(models_dir(directory))
    sidecars = {task: read_sidecar(path)[0] for task, path in paths.items()}
    if any(record is None for record in sidecars.values()):
        return
    # The candidates need only the sidecars; the .h5 hashes (0.1 s, done again when the networks load) only
    # where a measurement is still to be made.
    candidates = export_candidates(paths, sidecars)
    if len(candidates) < 2 or known_precision(candidates) is not None:
        return
    if not _usable_exports(paths)[1]:
        measured_precision(paths["age"], candidates)


def load_networks(directory: str | Path | None = None) -> Networks:
    """Both models' networks for ``directory``, once per process and runtime/precision setting.

    The runtime is :func:`core.runtime.runtime_choice`'s: with ``auto``, the export where it is usable, else
    Keras. The export runs in whichever of its candidate precisions (:func:`export_candidates`: float32,
    bf16 where the CPU has bf16 math, int8 where the int8 heads are built) measured fastest on this CPU
    (:func:`core.runtime.measured_precision`); AGEGENDER_PRECISION decides instead when set.
    """
    return _cached_networks(str(models_dir(directory).resolve()), runtime_choice(), requested_precision())


class AgeGenderModels:
    """Both models (their networks loaded once per process); :meth:`predict` runs every crop of an image in
    one batched call.

    Test-time flip follows each model's metadata (``tta_flip``) unless ``tta`` is given; the environment
    variable AGEGENDER_TTA=0 or 1 sets that default (without the flipped copy the models run twice as fast),
    and AGEGENDER_TTA=gender or =age flips that model only (1.27x the chips/s of both; docs/speed.md).
    """

    def __init__(self, directory: str | Path | None = None, *, tta: bool | None = None):
        self.directory = models_dir(directory)
        self.networks = load_networks(self.directory)
        self.metadata = {task: read_metadata(p) for task, p in model_paths(self.directory).items()}
        self.input_sizes = {task: int(m["input_size"]) for task, m in self.metadata.items()}
        self.gender_reliability = GenderReliability.from_metadata(self.metadata["gender"].get("gender_reliability"))
        setting = os.environ.get("AGEGENDER_TTA", "").strip().lower()
        if tta is None and setting in ("0", "1"):
            tta = setting == "1"
        self.flip = {task: tta if tta is not None else bool(m.get("tta_flip", True))
                     for task, m in self.metadata.items()}
        if tta is None and setting in self.flip:  # "age" or "gender": that model only
            self.flip = {task: task == setting for task in self.flip}

    @property
    def runtime(self) -> str:
        return self.networks.runtime

    @property
    def precision(self) -> str:
        return self.networks.precision

    def predict(self, crops: dict[int, np.ndarray]) -> Predictions:
        """``crops`` maps input size -> (N, size, size, 3) uint8 faces (same faces, same order)."""
        faces = {task: crops[size] for task, size in self.input_sizes.items()}
        if len(faces["age"]) == 0:
            return Predictions(np.zeros(0, np.float32), np.zeros(0, np.float32))
        parts = []
        for start in range(0, len(faces["age"]), MAX_FACES_PER_CALL):
            views: dict[int, np.ndarray] = {}  # one slice per array: tasks sharing faces share the trunk's call
            parts.append(self.networks.run({task: views.setdefault(id(x), x[start:start + MAX_FACES_PER_CALL])
                                            for task, x in faces.items()}, self.flip))
        out = {task: np.concatenate([part[task] for part in parts]) for task in parts[0]}
        return Predictions(np.asarray(out["age"], np.float64),
                           np.clip(np.asarray(out["gender"], np.float64), 0.0, 1.0))

    def age_range(self, age: float) -> tuple[float, float]:
        return age_interval(age, self.metadata["age"].get("age_intervals"))

    def judge_gender(self, age: float, female_probability: float) -> tuple[bool, str | None]:
        """``(reliable, why not)`` by the gender model's ``gender_reliability`` rule; reliable without one."""
        if self.gender_reliability is None:
            return True, None
        return self.gender_reliability.judge(age, female_probability)


@lru_cache(maxsize=4)
def _cached(directory: str, tta: bool | None, runtime: str, precision: str) -> AgeGenderModels:
    return AgeGenderModels(directory, tta=tta)


def load_models(directory: str | Path | None = None, *, tta: bool | None = None) -> AgeGenderModels:
    """The process-wide models for ``directory`` (default ``models/``), loaded on first use; ``tta`` as in
    :class:`AgeGenderModels` (``False``: without the test-time flipped copy). Settings that differ only in
    ``tta`` share the loaded networks."""
    return _cached(str(models_dir(directory).resolve()), tta, runtime_choice(), requested_precision())


def predict_crops(model, crops: np.ndarray, *, flip: bool = True, batch_size: int = 128) -> np.ndarray:
    """Outputs of one Keras model on uint8 crops, in batches, averaged with the flipped copy if ``flip``.

    Used by training (calibration), evaluation and the export's parity check; the app path is
    :meth:`AgeGenderModels.predict`.
    """
    network = keras_network(model)
    out = [average_flip(network(network_input(crops[i:i + batch_size], flip)), len(crops[i:i + batch_size]), flip)
           for i in range(0, len(crops), batch_size)]
    if not out:
        return np.zeros((0,), np.float32)
    y = np.concatenate(out, axis=0)
    return y.reshape(len(crops), -1).squeeze(-1) if y.ndim == 2 and y.shape[-1] == 1 else y
