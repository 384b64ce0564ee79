"""Model soup: the weight average of fine-tuning runs, saved like a trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.soup import average_weights
from train.soup import main as soup_main
from train.trainer import main as train_main


def test_average_weights_is_elementwise_and_checks_shapes():
    a = [np.zeros((2, 3), np.float32), np.ones(3, np.float32)]
    b = [np.full((2, 3), 2.0, np.float32), np.full(3, 3.0, np.float32)]
    out = average_weights([a, b])
    np.testing.assert_array_equal(out[0], np.ones((2, 3)))
    np.testing.assert_array_equal(out[1], np.full(3, 2.0))
    with pytest.raises(ValueError):
        average_weights([a, [np.zeros((3, 2), np.float32), np.ones(3, np.float32)]])


def test_soup_of_two_seeds(tmp_path, utk_dir):
    import keras

    common = ["age", "--data-dir", str(utk_dir), "--schedule", "32:1", "--batch-size", "8",
              "--split-dir", str(tmp_path / "splits"), "--precision", "float32", "--no-cache"]
    for seed in ("1", "2"):
        assert train_main([*common, "--seed", seed, "--run-dir", str(tmp_path / f"age_s{seed}"),
                           "--out-dir", str(tmp_path / f"out_s{seed}")]) == 0
    out = tmp_path / "soup"
    assert soup_main(["age", str(tmp_path / "age_s1"), str(tmp_path / "age_s2"), "--data-dir", str(utk_dir),
                      "--out-dir", str(out), "--split-dir", str(tmp_path / "splits")]) == 0
    soup = keras.models.load_model(out / "age_model.h5", compile=False)
    runs = [keras.models.load_model(tmp_path / f"age_s{s}" / "model.keras", compile=False) for s in "12"]
    for name in ("conv3_1", "bn5_3"):  # backbone weights are the mean (the head is then calibrated)
        for w, w1, w2 in zip(*(m.get_layer(name).get_weights() for m in (soup, *runs))):
            np.testing.assert_allclose(w, (w1 + w2) / 2, rtol=1e-6, atol=1e-6)
    meta = json.loads((out / "age_model.json").read_text())
    assert "soup" in meta["provenance"]["initialisation"] and "calibration" in meta
    record = json.loads((out / "age_run.json").read_text())
    assert [r["seed"] for r in record["soup_of"]] == [1, 2]
    assert (out / "history_age.csv").is_file() and (out / "history_age_age_s2.csv").is_file()
    assert soup_main(["gender", str(tmp_path / "age_s1"), "--data-dir", str(utk_dir),
                      "--out-dir", str(out)]) == 2  # wrong task: a clear error
