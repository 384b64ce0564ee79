"""Int8 heads of the inference export (train.quantize) and how core chooses them."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import astronaut_faces as faces
from core.errors import ModelNotFound
from core.models import MODEL_FILES, AgeGenderModels, network_input
from core.runtime import file_sha256, int8_ranges_path, part_path, sidecar_path, usable_int8

pytest.importorskip("openvino")

from train.int8 import ACTIVATION_LEVELS, SITE_LAYERS, build_int8, quantized_weights  # noqa: E402 - after the skip
from train.quantize import attach_int8, measure_ranges  # noqa: E402 - after the skip: these import openvino

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def int8_models(tiny_models, tmp_path_factory, astronaut) -> Path:
    """The tiny models with ranges measured on the astronaut's faces and their int8 heads built."""
    directory = tmp_path_factory.mktemp("int8") / "models"
    shutil.copytree(tiny_models, directory)
    for name in MODEL_FILES.values():
        path = directory / name
        size = json.loads(path.with_suffix(".json").read_text())["input_size"]
        measure_ranges(path, faces(astronaut, size), "the astronaut, four ways")
        assert attach_int8(path) is not None
    return directory


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3)),
              elements=st.floats(-4, 4, width=32)))
def test_weights_are_int8_per_output_channel_within_half_a_step(w):
    values, scale = quantized_weights(w)
    assert values.dtype == np.int8 and np.abs(values.astype(int)).max() <= 127
    assert scale.shape == (len(w), 1, 1) and (scale > 0).all()
    assert (np.abs(values * scale - w) <= scale / 2 + 1e-6).all()
    peaks = np.abs(w).reshape(len(w), -1).max(axis=1)
    hit = np.abs(values.reshape(len(w), -1)).max(axis=1)
    normal = peaks / 127 > np.finfo(np.float32).tiny  # not all zeros (or subnormals): scale 1 there
    assert (hit[normal] == 127).all()  # each channel's largest weight uses the whole range


def test_ranges_are_the_largest_activations_keras_computes_at_each_site(int8_models, astronaut):
    """The ranges, measured on the exported float32 head, are the maxima of pool2 and of each ReLU of blocks
    3-5 in the .h5, on the same faces and their mirrored copies."""
    import keras

    from core.models import load_keras_model

    for name in MODEL_FILES.values():
        path = int8_models / name
        record = json.loads(int8_ranges_path(path).read_text())
        assert record["source_sha256"] == file_sha256(path)
        assert [site["after"] for site in record["sites"]] == list(SITE_LAYERS)
        model = load_keras_model(path)
        probe = keras.Model(model.input, [model.get_layer(layer).output for layer in SITE_LAYERS])
        size = json.loads(path.with_suffix(".json").read_text())["input_size"]
        x = network_input(faces(astronaut, size), True)
        expected = [float(np.max(np.asarray(out))) for out in probe.predict(x, verbose=0)]
        np.testing.assert_allclose([site["max"] for site in record["sites"]], expected, rtol=1e-3, atol=1e-5)


def test_the_int8_head_quantizes_every_convolution_and_runs_them_on_int8(int8_models):
    from core.runtime import import_openvino

    ov = import_openvino()
    path = int8_models / MODEL_FILES["age"]
    xml = part_path(path, "head.int8")
    model = ov.Core().read_model(str(xml))
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert types.count("FakeQuantize") == len(SITE_LAYERS) and types.count("Convolution") == len(SITE_LAYERS) - 1
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            assert op.get_attributes()["levels"] == ACTIVATION_LEVELS
        if op.get_type_name() == "Convolution":  # weights: int8 constant -> float -> times the channel scales
            weights = op.input(1).get_source_output().get_node()
            assert weights.get_type_name() == "Multiply"
            constant = weights.input(0).get_source_output().get_node().input(0).get_source_output().get_node()
            assert constant.get_output_element_type(0).get_type_name() == "i8"
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    runtime = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
               for op in compiled.get_runtime_model().get_ordered_ops()]
    convolutions = [precision for kind, precision in runtime if kind == "Convolution"]
    assert len(convolutions) == len(SITE_LAYERS) - 1
    assert all(precision in ("u8", "i8") for precision in convolutions), runtime


def test_core_runs_the_int8_heads_when_asked(int8_models, astronaut, monkeypatch):
    x = faces(astronaut, json.loads((int8_models / "age_model.json").read_text())["input_size"])
    monkeypatch.setenv("AGEGENDER_RUNTIME", "export")
    for precision in ("float32", "int8"):
        monkeypatch.setenv("AGEGENDER_PRECISION", precision)
        models = AgeGenderModels(int8_models)
        assert (models.runtime, models.precision) == ("export", precision)
        pred = models.predict({x.shape[1]: x})
        p = pred.female_probabilities
        assert np.isfinite(pred.ages).all() and ((p >= 0) & (p <= 1)).all()
    # How close int8 comes to float32 is the shipped models' question (below), not the tiny ones'.


def test_auto_measures_float32_against_int8_and_remembers(int8_models, tmp_path, monkeypatch):
    import core.hardware
    import core.models
    import core.runtime

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AGEGENDER_PRECISION", "auto")
    monkeypatch.setattr(core.hardware, "cpu_supports_bf16", lambda: False)
    asked = []

    def measure(model_path, candidates):
        asked.append(candidates)
        return {p: {"float32": 1.0, "bfloat16": 0.4, "int8": 0.5}[p] for p in candidates}

    monkeypatch.setattr(core.models, "measured_precision",
                        lambda path, candidates: core.runtime.measured_precision(path, candidates, measure=measure))
    core.models._cached_networks.cache_clear()
    try:
        assert AgeGenderModels(int8_models).precision == "int8"
        core.models._cached_networks.cache_clear()
        assert AgeGenderModels(int8_models).precision == "int8" and asked == [("float32", "int8")]
        monkeypatch.setattr(core.hardware, "cpu_supports_bf16", lambda: True)  # another set: measured again
        core.models._cached_networks.cache_clear()
        assert AgeGenderModels(int8_models).precision == "bfloat16"
        assert asked == [("float32", "int8"), ("float32", "bfloat16", "int8")]
    finally:
        core.models._cached_networks.cache_clear()


def test_a_real_measurement_of_three_precisions_is_kept(int8_models, tmp_path, monkeypatch):
    from core.runtime import PRECISION_FILE, measured_precision, precision_key

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    candidates = ("float32", "bfloat16", "int8")
    choice = measured_precision(int8_models / MODEL_FILES["age"], candidates)
    assert choice in candidates
    entry = json.loads((tmp_path / "cache" / PRECISION_FILE).read_text())[precision_key(candidates)]
    assert entry["precision"] == choice and all(entry["seconds"][p] > 0 for p in candidates)


def test_ranges_of_another_h5_build_no_int8_head(int8_models, tmp_path, monkeypatch):
    directory = tmp_path / "models"
    shutil.copytree(int8_models, directory)
    path = directory / MODEL_FILES["gender"]
    ranges = int8_ranges_path(path)
    record = json.loads(ranges.read_text())
    ranges.write_text(json.dumps({**record, "source_sha256": "0" * 64}))  # as if the .h5 were retrained
    messages = []
    assert build_int8(path, messages.append) is None
    assert "measured on another" in messages[0] and not part_path(path, "head.int8").exists()
    attach_int8(path, messages.append)
    sidecar = json.loads(sidecar_path(path).read_text())
    assert "int8" not in sidecar
    monkeypatch.setenv("AGEGENDER_PRECISION", "int8")
    monkeypatch.setenv("AGEGENDER_RUNTIME", "export")
    with pytest.raises(ModelNotFound, match="int8"):
        AgeGenderModels(directory)
    monkeypatch.setenv("AGEGENDER_RUNTIME", "auto")
    with pytest.warns(UserWarning, match="AGEGENDER_PRECISION=int8"):
        models = AgeGenderModels(directory)
    assert (models.runtime, models.precision) == ("export", "float32")


def test_ranges_measured_again_make_the_built_head_stale(int8_models, tmp_path):
    directory = tmp_path / "models"
    shutil.copytree(int8_models, directory)
    path = directory / MODEL_FILES["age"]
    record = json.loads(sidecar_path(path).read_text())
    assert usable_int8(path, record) == (True, "")
    ranges = int8_ranges_path(path)
    ranges.write_text(ranges.read_text() + " ")
    ok, why = usable_int8(path, record)
    assert not ok and "re-run `python -m train.export`" in why
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert attach_int8(path) is not None  # rebuilt from the new file
    assert usable_int8(path, json.loads(sidecar_path(path).read_text())) == (True, "")


def test_the_shipped_ranges_were_measured_on_the_shipped_models():
    """A retrained .h5 needs its ranges measured again (python -m train.quantize), else it runs float32."""
    for name in MODEL_FILES.values():
        ranges = int8_ranges_path(REPO_MODELS / name)
        if not ranges.is_file():
            pytest.skip(f"no {ranges.name}")
        record = json.loads(ranges.read_text())
        assert record["source_sha256"] == file_sha256(REPO_MODELS / name)
        assert [site["after"] for site in record["sites"]] == list(SITE_LAYERS)
        assert all(site["max"] > 0 for site in record["sites"])
        assert set(record["parity"]) >= {"utkface", "aaf"}


def test_the_shipped_int8_heads_stay_within_a_fraction_of_a_year_of_float32(tmp_path, astronaut, monkeypatch):
    """The shipped models exported as `make export` does (their int8 heads from the committed ranges), on real
    faces: on the test splits the int8 heads moved ages by 0.06 years on average and 1.6 at most, and the
    female probability by 0.03 at most (models/*_model.int8.json); here each face must stay within 0.75 years
    and 0.05, on AVX2 as on AVX-512 kernels."""
    from train.export import main as export_main

    directory = tmp_path / "models"
    directory.mkdir()
    for name in MODEL_FILES.values():
        source = REPO_MODELS / name
        if not int8_ranges_path(source).is_file():
            pytest.skip(f"no {int8_ranges_path(source).name}")
        for path in (source, source.with_suffix(".json"), int8_ranges_path(source)):
            shutil.copy(path, directory / path.name)
    assert export_main(["--models-dir", str(directory)]) == 0
    x = faces(astronaut, json.loads((directory / "age_model.json").read_text())["input_size"])
    monkeypatch.setenv("AGEGENDER_RUNTIME", "export")
    out = {}
    for precision in ("float32", "int8"):
        monkeypatch.setenv("AGEGENDER_PRECISION", precision)
        models = AgeGenderModels(directory)
        assert models.precision == precision
        out[precision] = models.predict({x.shape[1]: x})
    assert np.abs(out["int8"].ages - out["float32"].ages).max() < 0.75
    assert np.abs(out["int8"].female_probabilities - out["float32"].female_probabilities).max() < 0.05


def test_a_precision_that_does_not_compile_here_is_left_out_of_the_measurement(int8_models, tmp_path, monkeypatch):
    """With oneDNN capped below the CPU (ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU), OpenVINO cannot compile bf16:
    the measurement goes on with the others instead of failing the start."""
    import core.runtime
    from core.runtime import PRECISION_FILE, measured_precision, precision_key

    real = core.runtime.openvino_network

    def network(xml, precision="float32"):
        if precision == "bfloat16":
            raise RuntimeError("Supported primitive descriptors list is empty for node: MaxPool")
        return real(xml, precision)

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(core.runtime, "openvino_network", network)
    candidates = ("float32", "bfloat16", "int8")
    with pytest.warns(UserWarning, match="does not compile in bfloat16"):
        choice = measured_precision(int8_models / MODEL_FILES["age"], candidates)
    assert choice in ("float32", "int8")
    entry = json.loads((tmp_path / "cache" / PRECISION_FILE).read_text())[precision_key(candidates)]
    assert entry["seconds"]["bfloat16"] is None and entry["seconds"][choice] > 0


def test_the_command_measures_ranges_on_training_faces_and_records_parity_on_the_test_split(
        tiny_models, utk_dir, tmp_path):
    from train.quantize import main as quantize_main

    directory = tmp_path / "models"
    shutil.copytree(tiny_models, directory)
    splits = tiny_models.parent / "splits"  # the split the tiny models were trained on
    assert quantize_main(["--data-dir", str(utk_dir), "--split-dir", str(splits), "--models-dir", str(directory),
                          "--calibration", "8", "--no-cache"]) == 0
    test_n = len([n for n in (splits / "test.txt").read_text().splitlines() if n.strip()])
    for task, name in MODEL_FILES.items():
        path = directory / name
        record = json.loads(int8_ranges_path(path).read_text())
        assert record["source_sha256"] == file_sha256(path)
        assert record["calibration"].startswith("8 faces of the training splits")
        parity = record["parity"]["utkface"]
        assert parity["n"] == test_n and parity["max_abs_diff"] >= parity["mean_abs_diff"] >= 0
        assert ({"float32_mae", "int8_mae"} if task == "age" else {"decisions_changed"}) <= set(parity)
        sidecar = json.loads(sidecar_path(path).read_text())
        assert sidecar["int8"]["ranges_sha256"] == file_sha256(int8_ranges_path(path))  # the file as finally written
        assert usable_int8(path, sidecar) == (True, "")
