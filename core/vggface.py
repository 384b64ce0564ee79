"""The VGGFace VGG16 network (Parkhi et al., 2015) with the layer names of rcmalli/keras-vggface.

Layer names follow the keras-vggface ``VGG16`` model (``conv1_1`` ... ``conv5_3``, ``pool1`` ... ``pool5``),
so a real ``rcmalli_vggface_tf_notop_vgg16.h5`` file loads by name with :func:`load_vggface_weights`.

Optionally a ``BatchNormalization`` layer (``bn1_1`` ... ``bn5_3``) follows each convolution, before its
ReLU. That makes the network trainable from scratch on a CPU budget; the weights loader skips those layers,
and freshly built they are the identity in inference mode (mean 0, variance 1, gamma 1, beta 0).

Preprocessing is VGGFace "version 1": RGB -> BGR, then subtract the VGGFace mean pixel. It is defined once,
here, and used by both training and inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.errors import WeightsMismatch

#: VGGFace mean pixel, BGR order (rcmalli keras_vggface.utils.preprocess_input, version 1).
VGGFACE_MEAN_BGR = (93.5940, 104.7624, 129.1863)

#: (block, number of convolutions, filters) of VGG16.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

CONV_LAYER_NAMES = tuple(f"conv{b}_{i}" for b, n, _ in VGG16_BLOCKS for i in range(1, n + 1))
POOL_LAYER_NAMES = tuple(f"pool{b}" for b, _, _ in VGG16_BLOCKS)


def preprocess_input(images: Any) -> Any:
    """VGGFace preprocessing of RGB images in 0..255: float32, RGB -> BGR, minus the mean pixel.

    Works on NumPy arrays and on TensorFlow tensors of shape (..., H, W, 3).
    """
    if isinstance(images, np.ndarray):
        x = images.astype(np.float32)[..., ::-1]
        return x - np.asarray(VGGFACE_MEAN_BGR, dtype=np.float32)
    import tensorflow as tf

    x = tf.cast(images, tf.float32)[..., ::-1]
    return x - tf.constant(VGGFACE_MEAN_BGR, dtype=tf.float32)


def build_vggface_vgg16(
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    *,
    batch_norm: bool = True,
    name: str = "vggface_vgg16",
):
    """The convolutional part of VGGFace VGG16 (``include_top=False``): input -> ``pool5``.

    Spatial size is free (``None``) by default, so the same weights run at any input size.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for block, n_convs, filters in VGG16_BLOCKS:
        for i in range(1, n_convs + 1):
            suffix = f"{block}_{i}"
            if batch_norm:
                x = layers.Conv2D(filters, 3, padding="same", use_bias=True, name=f"conv{suffix}",
                                  kernel_initializer="he_normal")(x)
                x = layers.BatchNormalization(name=f"bn{suffix}")(x)
                x = layers.Activation("relu", name=f"relu{suffix}")(x)
            else:
                x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{suffix}",
                                  kernel_initializer="he_normal")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"pool{block}")(x)
    return keras.Model(inputs, x, name=name)


def _h5_weight_groups(path: Path) -> dict[str, list[np.ndarray]]:
    """Read a Keras 2 style weights file (``save_weights`` or a whole-model ``.h5``) as {layer: arrays}."""
    import h5py

    out: dict[str, list[np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f.get("model_weights", f)
        names = root.attrs.get("layer_names")
        if names is None:
            raise WeightsMismatch(
                f"{path} has no 'layer_names' attribute: it is not a Keras .h5 weights file in the "
                "keras-vggface layout. Use rcmalli_vggface_tf_notop_vgg16.h5 from keras-vggface v2.0."
            )
        for raw in names:
            layer = raw.decode() if isinstance(raw, bytes) else str(raw)
            group = root[layer]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                            for w in group.attrs.get("weight_names", [])]
            if weight_names:
                out[layer] = [np.asarray(group[w]) for w in weight_names]
    return out


def load_vggface_weights(model, path: str | Path) -> list[str]:
    """Load VGGFace weights into ``model`` by layer name; return the names of the layers loaded.

    ``model`` may be the backbone or a whole age/gender model built on it. Only layers present in both
    are loaded (BatchNormalization and head layers are left as they are).

    Raises:
        WeightsMismatch: the file matches no layer of the model, or a matched layer has other shapes.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"VGGFace weights file {path} not found. Download rcmalli_vggface_tf_notop_vgg16.h5 "
            "(keras-vggface release v2.0) and pass its path."
        )
    groups = _h5_weight_groups(path)
    by_name = {layer.name: layer for layer in _all_layers(model)}
    loaded: list[str] = []
    for name, arrays in groups.items():
        layer = by_name.get(name)
        if layer is None:
            continue
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise WeightsMismatch(f"layer {name!r}: the file has shapes {got}, the model expects {expected}.")
        layer.set_weights(arrays)
        loaded.append(name)
    if not loaded:
        raise WeightsMismatch(
            f"no layer of {path} matched the model by name (file layers: {sorted(groups)[:6]}...). "
            "Expected the keras-vggface VGG16 names conv1_1 ... conv5_3."
        )
    return loaded


def _all_layers(model) -> list:
    """Layers of a model, descending into nested models."""
    result = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            result.extend(_all_layers(layer))
        result.append(layer)
    return result
