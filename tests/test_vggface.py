"""The VGGFace network: rcmalli layer names, by-name weight loading, preprocessing."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from core import WeightsMismatch
from core.vggface import (
    CONV_LAYER_NAMES,
    POOL_LAYER_NAMES,
    VGGFACE_MEAN_BGR,
    build_vggface_vgg16,
    load_vggface_weights,
    preprocess_input,
)


def write_rcmalli_file(path, weights: dict[str, list[np.ndarray]]) -> None:
    """A weights file laid out like rcmalli_vggface_tf_notop_vgg16.h5 (Keras 2 save_weights)."""
    with h5py.File(path, "w") as f:
        names = ["input_1"] + list(weights)
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.5"
        f.create_group("input_1").attrs["weight_names"] = []
        for layer, arrays in weights.items():
            g = f.create_group(layer)
            wn = [f"{layer}/kernel:0".encode(), f"{layer}/bias:0".encode()]
            g.attrs["weight_names"] = wn
            for n, a in zip(wn, arrays):
                g.create_dataset(n.decode(), data=a)


def test_layer_names_match_keras_vggface():
    model = build_vggface_vgg16((64, 64, 3), batch_norm=False)
    names = [layer.name for layer in model.layers]
    for n in CONV_LAYER_NAMES + POOL_LAYER_NAMES:
        assert n in names
    assert len(CONV_LAYER_NAMES) == 13
    assert model.get_layer("conv5_3").get_weights()[0].shape == (3, 3, 512, 512)
    assert model.output_shape == (None, 2, 2, 512)


def test_by_name_loading_reproduces_outputs(tmp_path):
    rng = np.random.default_rng(0)
    reference = build_vggface_vgg16((32, 32, 3), batch_norm=False)
    weights = {}
    for name in CONV_LAYER_NAMES:
        layer = reference.get_layer(name)
        arrays = [rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.get_weights()]
        layer.set_weights(arrays)
        weights[name] = arrays
    path = tmp_path / "rcmalli_vggface_tf_notop_vgg16.h5"
    write_rcmalli_file(path, weights)
    x = rng.uniform(-100, 100, (2, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(reference(x))

    plain = build_vggface_vgg16((32, 32, 3), batch_norm=False)
    assert sorted(load_vggface_weights(plain, path)) == sorted(CONV_LAYER_NAMES)
    np.testing.assert_allclose(np.asarray(plain(x)), expected, rtol=1e-4, atol=1e-4)

    # With batch norm, freshly built BN layers are the identity in inference mode (up to epsilon).
    with_bn = build_vggface_vgg16((32, 32, 3), batch_norm=True)
    load_vggface_weights(with_bn, path)
    out = np.asarray(with_bn(x, training=False))
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.999


def test_loading_refuses_files_that_do_not_fit(tmp_path):
    model = build_vggface_vgg16((32, 32, 3), batch_norm=False)
    other = tmp_path / "other.h5"
    write_rcmalli_file(other, {"dense_1": [np.zeros((4, 4), np.float32), np.zeros(4, np.float32)]})
    with pytest.raises(WeightsMismatch, match="no layer"):
        load_vggface_weights(model, other)
    wrong = tmp_path / "wrong.h5"
    write_rcmalli_file(wrong, {"conv1_1": [np.zeros((3, 3, 3, 32), np.float32), np.zeros(32, np.float32)]})
    with pytest.raises(WeightsMismatch, match="shapes"):
        load_vggface_weights(model, wrong)
    with pytest.raises(FileNotFoundError):
        load_vggface_weights(model, tmp_path / "missing.h5")


def test_preprocess_numpy_and_tensor_agree():
    import tensorflow as tf

    x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    a = preprocess_input(x)
    b = np.asarray(preprocess_input(tf.constant(x)))
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a[0, 0, 0], x[0, 0, 0, ::-1].astype(np.float32) - np.array(VGGFACE_MEAN_BGR),
                               rtol=1e-6)


def test_inference_copy_folds_batch_norm_without_changing_outputs():
    import keras

    from core.models import inference_copy
    from train.model import build_model

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)  # the same initial weights in every run
    model = build_model("age", input_size=32)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial statistics, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    x = rng.uniform(-120, 120, (4, 32, 32, 3)).astype(np.float32)
    want = model(x, training=False).numpy()
    folded = inference_copy(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(folded(x, training=False).numpy(), want, rtol=1e-4, atol=1e-3)
    bf16 = inference_copy(model, bfloat16=True)
    assert bf16.get_layer("conv3_1").compute_dtype == bf16.get_layer("conv3_1").kernel.dtype == "bfloat16"
    assert bf16.output.dtype == "float32"
    np.testing.assert_allclose(bf16(x, training=False).numpy(), want, rtol=0.1, atol=1.0)
