"""Age, gender and multitask models on the VGGFace VGG16 backbone from :mod:`core.vggface`: the recipe (layers,
losses, frozen blocks), how weights pass between models, and the precision training runs in."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from core.models import bf16_policy_available
from core.vggface import build_vggface_vgg16
from train.options import TASKS

#: Age targets are standardised inside the model: the head predicts z, the model outputs years.
AGE_MEAN = 33.0
AGE_STD = 20.0



def build_model(task: str, *, input_size: int | None = None, batch_norm: bool = True,
                dropout: float = 0.3, weight_decay: float = 5e-4, age_knots=()) -> keras.Model:
    """VGGFace VGG16 base + global average pooling + the task's head(s).

    - ``age``: linear output in years (``Dense(1)`` then a fixed rescaling), trained with MSE. With
      ``age_knots``, a calibration curve bending at those ages follows
      (:data:`core.models.AGE_CURVE_LAYERS`), set to the identity here; :func:`train.calibrate.fold_age_curve`
      sets it. Training builds models without it.
    - ``gender``: sigmoid probability of *female*, trained with binary cross-entropy.
    - ``multitask``: both plus a 5-way race softmax; used to train the shared backbone from scratch.

    Output layers are float32 even under a ``mixed_bfloat16`` policy.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    shape = (input_size, input_size, 3)
    base = build_vggface_vgg16(shape, batch_norm=batch_norm)
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    x = layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = {}
    if task in ("age", "multitask"):
        z = layers.Dense(1, name="age_dense", dtype="float32", kernel_regularizer=reg)(x)
        if task == "age" and len(age_knots):
            years = layers.Rescaling(AGE_STD, offset=AGE_MEAN, name="age_years", dtype="float32")(z)
            hinges = layers.Dense(len(age_knots), activation="relu", name="age_hinges", dtype="float32")(years)
            both = layers.Concatenate(name="age_curve_in", dtype="float32")([years, hinges])
            outputs["age"] = layers.Dense(1, name="age", dtype="float32")(both)
        else:
            outputs["age"] = layers.Rescaling(AGE_STD, offset=AGE_MEAN, name="age", dtype="float32")(z)
    if task in ("gender", "multitask"):
        outputs["gender"] = layers.Dense(1, activation="sigmoid", name="gender", dtype="float32",
                                         kernel_regularizer=reg)(x)
    if task == "multitask":
        outputs["race"] = layers.Dense(5, activation="softmax", name="race", dtype="float32",
                                       kernel_regularizer=reg)(x)
    if task != "multitask":
        outputs = outputs[task]
    model = keras.Model(base.input, outputs, name=f"vggface_{task}")
    if task == "age" and len(age_knots):  # the curve starts as the identity: hinges at the knots, weight 0
        knots = np.asarray(age_knots, np.float32)
        model.get_layer("age_hinges").set_weights([np.ones((1, len(knots)), np.float32), -knots])
        model.get_layer("age").set_weights([np.r_[1.0, np.zeros(len(knots))].astype(np.float32)[:, None],
                                            np.zeros(1, np.float32)])
    return model


def compile_args(task: str) -> dict:
    """Keras ``compile`` keyword arguments (loss, metrics, loss_weights) for a task's model.

    Multitask models get one entry per output and loss weights that put the age MSE (in years squared) on
    the scale of the cross-entropies; each output's loss and metrics leave out images without its label.
    Loss names are the ones that reload from Keras 3 ``.h5`` files.
    """
    losses = {"age": "mean_squared_error", "gender": "binary_crossentropy",
              "race": "sparse_categorical_crossentropy"}
    metrics = {"age": ["mae"], "gender": ["accuracy", keras.metrics.AUC(name="auc")]}
    if task != "multitask":
        return {"loss": losses[task], "metrics": metrics[task]}
    weights = {"age": 1.0 / AGE_STD**2, "gender": 1.0, "race": 0.5}
    # every metric is weighted: an image without a label (race of AAF, age of LFW) has weight 0 for that
    # output (train.data.with_masks), so it counts in neither the loss nor the metric
    return {"loss": losses, "weighted_metrics": {**metrics, "race": ["accuracy"]}, "loss_weights": weights}


def freeze_blocks(model: keras.Model, n_blocks: int) -> list[str]:
    """Freeze VGG blocks 1..n (their conv and batch-norm layers); return the frozen layer names."""
    frozen = []
    for layer in model.layers:
        name = layer.name
        for block in range(1, n_blocks + 1):
            if name.startswith((f"conv{block}_", f"bn{block}_")):
                layer.trainable = False
                frozen.append(name)
    return frozen


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


def is_keras_model_h5(path: Path) -> bool:
    """True for a whole Keras model saved as ``.h5`` (e.g. a shipped ``models/age_model.h5``), as opposed to a
    weights-only file such as the rcmalli VGGFace one."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError:
        return False


def set_precision(choice: str) -> str:
    """Set Keras's global dtype policy for training from ``--precision`` (``auto``/``bfloat16``/``float32``):
    ``mixed_bfloat16`` where asked, or with ``auto`` where it is fast here (:func:`core.models.bf16_policy_available`);
    return the policy's name."""
    policy = "float32"
    if choice == "bfloat16" or (choice == "auto" and bf16_policy_available()):
        policy = "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy
