"""The inference export (OpenVINO IR next to each .h5) and the trunk the two models share."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import astronaut_faces as faces
from core.errors import ModelNotFound
from core.models import MODEL_FILES, AgeGenderModels, predict_crops
from core.runtime import file_sha256, part_path, sidecar_path

pytest.importorskip("openvino")

#: How far the export's outputs may be from the .h5's (float32 both; other kernels sum in another order).
TOLERANCE = {"age": 1e-3, "gender": 1e-5}


def copy_models(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def predictions(directory: Path, runtime: str, x: np.ndarray, monkeypatch,
                precision: str = "float32") -> tuple[AgeGenderModels, dict]:
    """Both models' outputs on ``x`` by ``runtime`` in ``precision`` (float32: the tolerances above hold)."""
    monkeypatch.setenv("AGEGENDER_RUNTIME", runtime)
    monkeypatch.setenv("AGEGENDER_PRECISION", precision)
    models = AgeGenderModels(directory)
    pred = models.predict({x.shape[1]: x})
    return models, {"age": pred.ages, "gender": pred.female_probabilities}


def test_training_writes_the_export_with_its_sidecar(tiny_models):
    for task, name in MODEL_FILES.items():
        model_path = tiny_models / name
        record = json.loads(sidecar_path(model_path).read_text())
        assert record["task"] == task and record["runtime"] == "openvino"
        assert record["source_sha256"] == file_sha256(model_path)
        for part in ("trunk", "head"):
            assert part_path(model_path, part).is_file() and part_path(model_path, part).with_suffix(".bin").is_file()
        parity = record["parity"]
        assert parity["n"] > 0 and parity["max_abs_diff"] < TOLERANCE[task]
        assert set(parity["keras"]) == set(parity["export"])


def test_export_gives_the_h5_outputs_on_real_faces(tiny_models, astronaut, monkeypatch):
    x = faces(astronaut, 32)
    keras_models, keras_out = predictions(tiny_models, "keras", x, monkeypatch)
    export_models, export_out = predictions(tiny_models, "export", x, monkeypatch)
    assert (keras_models.runtime, export_models.runtime) == ("keras", "export")
    assert export_models.precision == "float32"
    for task in MODEL_FILES:
        np.testing.assert_allclose(export_out[task], keras_out[task], atol=TOLERANCE[task], rtol=1e-5)


def test_auto_uses_the_export_in_either_precision(tiny_models, monkeypatch):
    monkeypatch.setenv("AGEGENDER_PRECISION", "float32")
    assert (AgeGenderModels(tiny_models).runtime, AgeGenderModels(tiny_models).precision) == ("export", "float32")
    monkeypatch.setenv("AGEGENDER_PRECISION", "bfloat16")  # as asked: no measurement
    models = AgeGenderModels(tiny_models)
    assert (models.runtime, models.precision) == ("export", "bfloat16")


def _no_measurement(model_path, candidates):
    raise AssertionError("measured although it should not have")


@pytest.mark.parametrize("faster", ["float32", "bfloat16"])
def test_on_a_bf16_cpu_auto_runs_the_export_in_the_precision_measured_faster(tiny_models, tmp_path, monkeypatch,
                                                                            faster):
    import core.hardware
    import core.models
    import core.runtime

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AGEGENDER_PRECISION", "auto")
    monkeypatch.setattr(core.hardware, "cpu_supports_bf16", lambda: True)
    calls = []

    def measure(model_path, candidates):
        assert candidates == ("float32", "bfloat16")  # the tiny models have no int8 heads
        calls.append(model_path.name)
        return {"float32": 1.0, "bfloat16": 0.5} if faster == "bfloat16" else {"float32": 0.5, "bfloat16": 1.0}

    monkeypatch.setattr(core.models, "measured_precision",
                        lambda path, candidates: core.runtime.measured_precision(path, candidates, measure=measure))
    core.models._cached_networks.cache_clear()
    models = AgeGenderModels(tiny_models)
    assert (models.runtime, models.precision) == ("export", faster)
    core.models._cached_networks.cache_clear()
    assert AgeGenderModels(tiny_models).precision == faster and calls == ["age_model.h5"]  # remembered
    core.models._cached_networks.cache_clear()
    monkeypatch.setattr(core.hardware, "cpu_supports_bf16", lambda: False)  # no bf16 math: never measured
    assert AgeGenderModels(tiny_models).precision == "float32" and len(calls) == 1
    core.models._cached_networks.cache_clear()


def test_prepare_times_the_precisions_before_the_detector_starts_building(tiny_models, tmp_path, monkeypatch):
    """The first start's precision measurement runs alone, not while the detector builds in the other thread
    (which narrowed the measured margin), and only once per CPU."""
    from functools import lru_cache

    import core.hardware
    import core.models
    import core.pipeline
    import core.runtime

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AGEGENDER_PRECISION", "auto")
    monkeypatch.setattr(core.hardware, "cpu_supports_bf16", lambda: True)
    events = []

    def measure(model_path, candidates):
        events.append("measure")
        return {"float32": 0.5, "bfloat16": 1.0}

    @lru_cache(maxsize=1)
    def detector():
        events.append("detector")
        return object()

    monkeypatch.setattr(core.models, "measured_precision",
                        lambda path, candidates: core.runtime.measured_precision(path, candidates, measure=measure))
    monkeypatch.setattr(core.pipeline, "get_detector", detector)
    core.models._cached.cache_clear()
    core.models._cached_networks.cache_clear()
    try:
        assert core.pipeline.prepare(tiny_models).precision == "float32"
        assert events == ["measure", "detector"]
        detector.cache_clear()
        core.models._cached.cache_clear()
        core.models._cached_networks.cache_clear()
        assert core.pipeline.prepare(tiny_models).precision == "float32"
        assert events == ["measure", "detector", "detector"]  # remembered: measured once per CPU
    finally:
        core.models._cached.cache_clear()
        core.models._cached_networks.cache_clear()


def test_the_precision_measurement_is_kept_per_cpu_and_survives_an_unwritable_cache(tiny_models, tmp_path,
                                                                                     monkeypatch):
    import core.runtime
    from core.runtime import PRECISION_FILE, measured_precision

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_models / MODEL_FILES["age"]
    choice = measured_precision(model)  # a real measurement, on this CPU, of the tiny export
    assert choice in ("float32", "bfloat16")
    record = json.loads((tmp_path / "cache" / PRECISION_FILE).read_text())
    (key, entry), = record.items()
    assert key == core.runtime.precision_key() and entry["precision"] == choice
    assert all(entry["seconds"][p] > 0 for p in ("float32", "bfloat16"))
    assert measured_precision(model, measure=_no_measurement) == choice
    monkeypatch.setattr(core.runtime, "precision_key", lambda candidates: "another CPU")
    assert measured_precision(model, measure=lambda p, c: {"float32": 2.0, "bfloat16": 1.0}) == "bfloat16"
    assert len(json.loads((tmp_path / "cache" / PRECISION_FILE).read_text())) == 2
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert measured_precision(model, measure=lambda p, c: {"float32": 1.0, "bfloat16": 1.0}) == "float32"  # a tie


def test_a_stale_export_falls_back_to_the_h5(tiny_models, tmp_path, monkeypatch):
    directory = copy_models(tiny_models, tmp_path / "models")
    sidecar = sidecar_path(directory / MODEL_FILES["gender"])
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "source_sha256": "0" * 64}))  # as if the .h5 were retrained
    monkeypatch.setenv("AGEGENDER_PRECISION", "float32")
    assert AgeGenderModels(directory).runtime == "keras"
    monkeypatch.setenv("AGEGENDER_RUNTIME", "export")
    with pytest.raises(ModelNotFound, match="sha256 differs"):
        AgeGenderModels(directory)
    with pytest.raises(ValueError, match="AGEGENDER_RUNTIME"):
        monkeypatch.setenv("AGEGENDER_RUNTIME", "tflite")
        AgeGenderModels(directory)


def test_a_missing_export_falls_back_to_the_h5(tiny_models, tmp_path, monkeypatch):
    directory = copy_models(tiny_models, tmp_path / "models")
    part_path(directory / MODEL_FILES["age"], "head").with_suffix(".bin").unlink()
    monkeypatch.setenv("AGEGENDER_PRECISION", "float32")
    assert AgeGenderModels(directory).runtime == "keras"


@pytest.fixture(scope="module")
def shared_trunk_models(tiny_models, tmp_path_factory) -> Path:
    """The tiny models with the gender model's blocks 1-2 replaced by the age model's (as after fine-tuning
    both from one backbone with those blocks frozen), exported by ``python -m train.export``."""
    from core.models import load_keras_model, split_model
    from train.export import main as export_main

    directory = copy_models(tiny_models, tmp_path_factory.mktemp("shared") / "models")
    age = load_keras_model(directory / MODEL_FILES["age"])
    gender = load_keras_model(directory / MODEL_FILES["gender"])
    age_trunk, gender_trunk = split_model(age)[0], split_model(gender)[0]
    gender_trunk.set_weights(age_trunk.get_weights())
    gender.save(directory / MODEL_FILES["gender"])
    assert export_main(["--models-dir", str(directory)]) == 0
    return directory


@pytest.mark.parametrize("runtime", ["keras", "export"])
def test_identical_trunks_run_once_with_the_same_outputs(shared_trunk_models, tiny_models, astronaut, runtime,
                                                         monkeypatch):
    from core.models import load_keras_model

    x = faces(astronaut, 32)
    models, out = predictions(shared_trunk_models, runtime, x, monkeypatch)
    assert models.networks.shared and models.runtime == runtime
    for task, name in MODEL_FILES.items():  # each whole model on its own, with the flip, as the app runs it
        alone = predict_crops(load_keras_model(shared_trunk_models / name), x, flip=True)
        np.testing.assert_allclose(out[task], alone, atol=TOLERANCE[task], rtol=1e-5)
    trained_separately, _ = predictions(tiny_models, runtime, x, monkeypatch)
    assert not trained_separately.networks.shared  # the tiny models differ everywhere


@pytest.mark.parametrize("runtime", ["keras", "export"])
@pytest.mark.parametrize("flip", [{"age": False, "gender": True}, {"age": True, "gender": False}])
def test_each_model_flips_on_its_own_through_the_shared_trunk(shared_trunk_models, astronaut, runtime, flip,
                                                              monkeypatch):
    """One model with the test-time flip and the other without (``tta_flip`` per model): the trunk runs once on
    the faces and their mirrored copies, and each model still gives what it gives alone with its own setting."""
    from core.models import load_keras_model

    x = faces(astronaut, 32)
    monkeypatch.setenv("AGEGENDER_RUNTIME", runtime)
    monkeypatch.setenv("AGEGENDER_PRECISION", "float32")
    models = AgeGenderModels(shared_trunk_models)
    models.flip = flip
    pred = models.predict({x.shape[1]: x})
    assert models.networks.shared
    for task, out in (("age", pred.ages), ("gender", pred.female_probabilities)):
        alone = predict_crops(load_keras_model(shared_trunk_models / MODEL_FILES[task]), x, flip=flip[task])
        np.testing.assert_allclose(out, alone, atol=TOLERANCE[task], rtol=1e-5)


def test_one_trunk_weight_differs_and_nothing_is_shared(shared_trunk_models, tmp_path, astronaut, monkeypatch):
    from core.models import load_keras_model

    directory = copy_models(shared_trunk_models, tmp_path / "models")
    path = directory / MODEL_FILES["gender"]
    gender = load_keras_model(path)
    kernel, bias = gender.get_layer("conv1_1").get_weights()
    gender.get_layer("conv1_1").set_weights([kernel, np.nextafter(bias, np.float32(1))])  # one ulp on each bias
    gender.save(path)
    x = faces(astronaut, 32)
    monkeypatch.setenv("AGEGENDER_PRECISION", "float32")
    models, out = predictions(directory, "auto", x, monkeypatch)
    assert models.runtime == "keras" and not models.networks.shared  # the gender export is stale now
    for task, name in MODEL_FILES.items():
        alone = predict_crops(load_keras_model(directory / name), x, flip=True)
        np.testing.assert_allclose(out[task], alone, atol=TOLERANCE[task], rtol=1e-5)


def test_flip_settings_share_the_loaded_networks(tiny_models):
    from core.models import _cached, _cached_networks, load_models

    # Both caches are LRU-bounded; earlier tests in the session may hold an AgeGenderModels whose networks
    # were evicted and rebuilt since. Start from empty caches to check the sharing itself.
    _cached.cache_clear()
    _cached_networks.cache_clear()
    assert load_models(tiny_models, tta=False).networks is load_models(tiny_models).networks


@pytest.mark.parametrize(("setting", "expected"), [
    ("0", {"age": False, "gender": False}), ("1", {"age": True, "gender": True}),
    ("gender", {"age": False, "gender": True}), ("age", {"age": True, "gender": False}),
    ("", {"age": True, "gender": True}),  # the metadata's tta_flip (true for both)
])
def test_agegender_tta_sets_the_flip_of_both_models_or_of_one(tiny_models, monkeypatch, setting, expected):
    monkeypatch.setenv("AGEGENDER_TTA", setting)
    assert AgeGenderModels(tiny_models).flip == expected
    assert AgeGenderModels(tiny_models, tta=False).flip == {"age": False, "gender": False}  # an explicit choice wins
