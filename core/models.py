"""Load the shipped age and gender models (``models/*.h5`` + JSON metadata) and run them batched.

Each ``<task>_model.h5`` has a sidecar ``<task>_model.json`` with its input size, preprocessing, the age
range table (age model) and provenance. Both models see every face of an image in one call of one
``tf.function`` (with a horizontally flipped copy when the metadata asks for test-time flip).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ModelNotFound
from core.reliability import GenderReliability
from core.vggface import preprocess_input

#: Folder with the shipped models; override with the AGEGENDER_MODELS_DIR environment variable.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MODEL_FILES = {"age": "age_model.h5", "gender": "gender_model.h5"}


def models_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("AGEGENDER_MODELS_DIR") or DEFAULT_MODELS_DIR)


def metadata_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def read_metadata(model_path: Path) -> dict[str, Any]:
    meta = metadata_path(model_path)
    if not meta.is_file():
        raise ModelNotFound(f"{meta} is missing: every model needs its metadata file next to it. "
                            "Re-export the model with `python -m train`.")
    return json.loads(meta.read_text())


def require_model_file(path: Path) -> None:
    """Raise :class:`ModelNotFound`, saying how to get it, when the model file ``path`` is missing."""
    if not path.is_file():
        raise ModelNotFound(
            f"model file {path} not found. Train it with `python -m train {path.stem.split('_')[0]} "
            "--data-dir PATH/TO/UTKFace` (see README), or put a trained .h5 and its .json there, or point "
            "AGEGENDER_MODELS_DIR at a folder that has them."
        )


def require_models(directory: str | Path | None = None) -> None:
    """Raise :class:`ModelNotFound` at once (without loading anything) when a model file is missing."""
    for name in MODEL_FILES.values():
        require_model_file(models_dir(directory) / name)


def load_keras_model(path: Path):
    """Load one ``.h5`` model for inference (``compile=False``)."""
    import keras

    require_model_file(path)
    return keras.models.load_model(path, compile=False)


#: Ages and age ranges are reported within 0..MAX_AGE years (UTKFace's oldest label is 116).
MAX_AGE = 120.0

#: Layers that stay float32 when inference runs in bfloat16 (the outputs).
FLOAT32_LAYERS = ("age_dense", "age", "gender", "race")


def inference_precision() -> str:
    """``bfloat16`` where the CPU has native bf16 math, else ``float32``; AGEGENDER_PRECISION overrides."""
    from core.hardware import cpu_supports_bf16

    choice = os.environ.get("AGEGENDER_PRECISION", "auto").lower()
    if choice in ("float32", "bfloat16"):
        return choice
    return "bfloat16" if cpu_supports_bf16() else "float32"


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


class AgeGenderModels:
    """Both models, loaded once; :meth:`predict` runs every crop of an image in one batched call.

    Test-time flip follows each model's metadata (``tta_flip``) unless ``tta`` is given; the environment
    variable AGEGENDER_TTA=0 or 1 sets that default (without the flipped copy the models run twice as fast).
    """

    def __init__(self, directory: str | Path | None = None, *, tta: bool | None = None):
        import tensorflow as tf

        self.directory = models_dir(directory)
        paths = {task: self.directory / name for task, name in MODEL_FILES.items()}
        self.precision = inference_precision()
        self.age_model = load_keras_model(paths["age"])
        self.gender_model = load_keras_model(paths["gender"])
        bf16 = self.precision == "bfloat16"
        self.age_model = inference_copy(self.age_model, bfloat16=bf16)
        self.gender_model = inference_copy(self.gender_model, bfloat16=bf16)
        self.metadata = {task: read_metadata(p) for task, p in paths.items()}
        self.input_sizes = {task: int(m["input_size"]) for task, m in self.metadata.items()}
        self.gender_reliability = GenderReliability.from_metadata(self.metadata["gender"].get("gender_reliability"))
        if tta is None and os.environ.get("AGEGENDER_TTA", "").strip() in ("0", "1"):
            tta = os.environ["AGEGENDER_TTA"].strip() == "1"
        self.flip = {task: tta if tta is not None else bool(m.get("tta_flip", True))
                     for task, m in self.metadata.items()}
        self._lock = threading.Lock()

        def run(model, x, flip: bool):
            x = preprocess_input(x)
            n = tf.shape(x)[0]
            if flip:
                x = tf.concat([x, x[:, :, ::-1, :]], axis=0)
            y = tf.reshape(tf.cast(model(x, training=False), tf.float32), [-1])
            return (y[:n] + y[n:]) / 2.0 if flip else y

        @tf.function(reduce_retracing=True)
        def both(age_x, gender_x):
            return (run(self.age_model, age_x, self.flip["age"]),
                    run(self.gender_model, gender_x, self.flip["gender"]))

        self._both = both

    def predict(self, crops: dict[int, np.ndarray]) -> Predictions:
        """``crops`` maps input size -> (N, size, size, 3) uint8 faces (same faces, same order)."""
        age_x = crops[self.input_sizes["age"]]
        gender_x = crops[self.input_sizes["gender"]]
        if len(age_x) == 0:
            return Predictions(np.zeros(0, np.float32), np.zeros(0, np.float32))
        with self._lock:
            ages, probs = self._both(age_x, gender_x)
        return Predictions(np.asarray(ages, np.float64), np.clip(np.asarray(probs, np.float64), 0.0, 1.0))

    def age_range(self, age: float) -> tuple[float, float]:
        return age_interval(age, self.metadata["age"].get("age_intervals"))

    def judge_gender(self, age: float, female_probability: float) -> tuple[bool, str | None]:
        """``(reliable, why not)`` by the gender model's ``gender_reliability`` rule; reliable without one."""
        if self.gender_reliability is None:
            return True, None
        return self.gender_reliability.judge(age, female_probability)


@lru_cache(maxsize=4)
def _cached(directory: str, tta: bool | None) -> AgeGenderModels:
    return AgeGenderModels(directory, tta=tta)


def load_models(directory: str | Path | None = None, *, tta: bool | None = None) -> AgeGenderModels:
    """The process-wide models for ``directory`` (default ``models/``), loaded on first use; ``tta`` as in
    :class:`AgeGenderModels` (``False``: without the test-time flipped copy)."""
    return _cached(str(models_dir(directory).resolve()), tta)


def predict_crops(model, crops: np.ndarray, *, flip: bool = True, batch_size: int = 128) -> np.ndarray:
    """Outputs of one Keras model on uint8 crops, in batches, averaged with the flipped copy if ``flip``.

    Used by training (calibration) and evaluation; the app path is :meth:`AgeGenderModels.predict`.
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(x):
        x = preprocess_input(x)
        y = tf.cast(model(x, training=False), tf.float32)
        if flip:
            y = (y + tf.cast(model(x[:, :, ::-1, :], training=False), tf.float32)) / 2.0
        return y

    out = [np.asarray(run(crops[i:i + batch_size])) for i in range(0, len(crops), batch_size)]
    if not out:
        return np.zeros((0,), np.float32)
    y = np.concatenate(out, axis=0)
    return y.reshape(len(crops), -1).squeeze(-1) if y.ndim == 2 and y.shape[-1] == 1 else y
