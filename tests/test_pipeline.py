"""core.analyze end to end with small trained models."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import core
from conftest import ASTRONAUT_FACE
from core import FaceNotDetected, FaceResult, InvalidImage, ModelNotFound
from core.models import AgeGenderModels, load_models
from test_detect import iou


@pytest.fixture(scope="module")
def models(tiny_models) -> AgeGenderModels:
    return load_models(tiny_models)


def test_astronaut_one_face_with_age_and_gender(astronaut, models):
    faces = core.analyze(astronaut, models=models)
    assert len(faces) == 1
    f = faces[0]
    assert isinstance(f, FaceResult)
    assert iou(f.box, ASTRONAUT_FACE) > 0.7
    assert 0.0 <= f.female_probability <= 1.0 and f.gender in ("female", "male")
    assert f.age >= 0 and f.age_range[0] <= f.age <= f.age_range[1]
    d = json.loads(json.dumps(f.as_dict()))
    assert set(d) >= {"box", "confidence", "age", "age_range", "gender", "female_probability", "landmarks"}


def test_every_input_kind_gives_the_same_result(astronaut, astronaut_jpeg, tmp_path, models):
    path = tmp_path / "a.jpg"
    path.write_bytes(astronaut_jpeg)
    ref = core.analyze(astronaut_jpeg, models=models)[0].as_dict()
    assert core.analyze(path, models=models)[0].as_dict() == ref
    assert core.analyze(Image.open(io.BytesIO(astronaut_jpeg)), models=models)[0].as_dict() == ref


def test_exif_rotated_copy_gives_the_same_face(astronaut, models):
    """The stored pixels are rotated; the EXIF tag says how to turn them back."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(astronaut, k=1)))  # 90 deg counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 deg clockwise
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif)
    faces = core.analyze(buf.getvalue(), models=models)
    assert len(faces) == 1 and iou(faces[0].box, ASTRONAUT_FACE) > 0.7
    upright = core.analyze(astronaut, models=models)[0]
    assert abs(faces[0].age - upright.age) < 3
    assert abs(faces[0].female_probability - upright.female_probability) < 0.1


def test_no_face_is_an_empty_list_unless_enforced(models):
    blank = np.full((240, 320, 3), 128, np.uint8)
    assert core.analyze(blank, models=models) == []
    with pytest.raises(FaceNotDetected, match="no face"):
        core.analyze(blank, models=models, enforce_detection=True)


def test_bad_image_and_no_face_are_distinguishable(models):
    with pytest.raises(InvalidImage):
        core.analyze(b"not an image", models=models)
    assert not issubclass(InvalidImage, FaceNotDetected) and not issubclass(FaceNotDetected, InvalidImage)


def test_detect_false_uses_the_whole_image(astronaut_chip, models):
    faces = core.analyze(astronaut_chip, detect=False, models=models)
    assert len(faces) == 1 and faces[0].box == (0.0, 0.0, 200.0, 200.0) and faces[0].landmarks == {}


def test_batched_prediction_matches_one_by_one(astronaut, models):
    from core.crop import crop_face
    from core.detect import detect_faces

    face = detect_faces(astronaut)[0]
    size = models.input_sizes["age"]
    crop = crop_face(astronaut, face.landmark_array(), size)
    crops = np.stack([crop, crop[:, ::-1], np.zeros_like(crop)])
    batch = models.predict({size: crops})
    for i in range(3):
        one = models.predict({size: crops[i:i + 1]})
        assert abs(one.ages[0] - batch.ages[i]) < 1e-2
        assert abs(one.female_probabilities[0] - batch.female_probabilities[i]) < 1e-3


def test_missing_models_say_how_to_get_them(tmp_path, astronaut):
    with pytest.raises(ModelNotFound, match="python -m train"):
        AgeGenderModels(tmp_path)


def test_metadata_has_what_core_needs(tiny_models):
    for task in ("age", "gender"):
        meta = json.loads((tiny_models / f"{task}_model.json").read_text())
        assert meta["input_size"] == 32 and meta["task"] == task and "provenance" in meta
    bands = json.loads((tiny_models / "age_model.json").read_text())["age_intervals"]["bands"]
    assert bands[0]["low"] == 0 and all(b["q_low"] <= b["q_high"] for b in bands)


def test_load_models_caches_each_flip_setting_once(tiny_models):
    plain = load_models(tiny_models, tta=False)
    assert plain is load_models(tiny_models, tta=False) and plain is not load_models(tiny_models)
    assert plain.flip == {"age": False, "gender": False} and load_models(tiny_models).flip["age"]
