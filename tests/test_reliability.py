"""The gender reliability rule: computed from validation predictions (train.reliability), stored with the
gender model, applied by core to every face (FaceResult.gender "uncertain"), shown by the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import core
from conftest import models_with_rule, reliability_block
from core.reliability import GenderReliability
from core.results import FaceResult
from train.reliability import gender_reliability


def synthetic(n: int = 3000, seed: int = 0):
    """Validation-like predictions: gender right 65 % of the time under a predicted age of 13, else 97 %, and
    a coin toss whenever P(female) is within 0.45-0.55."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 80, n)
    truth = rng.integers(0, 2, n)
    conf = rng.uniform(0.5, 1.0, n)
    right = rng.random(n) < np.where(age < 13, 0.65, np.where(conf < 0.55, 0.5, 0.97))
    p_female = np.where(right == (truth == 1), conf, 1.0 - conf)
    return age, p_female, truth


def test_buckets_under_the_target_are_marked_and_the_band_found():
    block = gender_reliability(*synthetic())
    verdict = {b["label"]: b["reliable"] for b in block["age_buckets"]}
    assert verdict["0-4"] is verdict["5-9"] is False and verdict["15-19"] and verdict["30-39"] and verdict["70+"]
    assert block["reliable_from_age"] == 15.0  # the 10-14 bucket straddles 13: 65 % for most of it
    band = block["probability_band"]
    assert band["low"] == pytest.approx(0.45) and band["high"] == pytest.approx(0.55)
    assert band["accuracy"] < 0.85 and all(b["reliable"] for b in band["bins"] if b["low"] >= band["high"])
    v = block["validation"]
    assert v["accuracy_shown"] > 0.95 > v["accuracy_all"] > v["accuracy_uncertain"]
    assert v["uncertain"] == round(v["uncertain_share"] * v["n"])


def test_small_buckets_join_a_neighbour_and_too_few_faces_is_unreliable():
    age = np.array([1.0] * 40 + [25.0] * 40 + [75.0] * 5)  # 70+ has 5 faces: joins 20-29's neighbour group
    truth = np.ones(len(age), int)
    block = gender_reliability(age, np.full(len(age), 0.99), truth, min_faces=30)
    labels = [b["label"] for b in block["age_buckets"]]
    assert labels[-1].endswith("+") and sum(b["n"] for b in block["age_buckets"]) == len(age)
    assert all(b["n"] >= 30 for b in block["age_buckets"])
    tiny = gender_reliability([30.0] * 10, [0.99] * 10, [1] * 10, min_faces=30)  # right every time, but 10 faces
    assert not any(b["reliable"] for b in tiny["age_buckets"])


def test_the_rule_judges_each_face():
    rule = GenderReliability.from_metadata(reliability_block(unreliable_below=13, band=(0.4, 0.6)))
    assert rule is not None and rule.reliable_from_age == 13
    ok, why = rule.judge(4.0, 0.73)
    assert not ok and "0-12" in why and "70%" in why
    assert rule.judge(30.0, 0.99) == (True, None)
    ok, why = rule.judge(30.0, 0.55)
    assert not ok and "between 0.40 and 0.60" in why
    assert rule.judge(30.0, 0.6)[0] and rule.judge(130.0, 0.01)[0]  # the band is open; the last bucket has no end
    assert GenderReliability.from_metadata(None) is None
    assert GenderReliability.from_metadata({"schema": "something else"}) is None


def test_face_result_says_uncertain_and_keeps_the_probability():
    f = FaceResult(box=(0, 0, 10, 10), confidence=0.99, age=4.0, age_range=(2.0, 7.0), female_probability=0.73,
                   gender_reliable=False, gender_note="predicted age 0-4: 70% right")
    assert f.gender == "uncertain" and f.likely_gender == "female" and f.gender_probability == pytest.approx(0.73)
    d = f.as_dict()
    assert d["gender"] == "uncertain" and d["gender_reliable"] is False and d["female_probability"] == 0.73
    adult = FaceResult(box=(0, 0, 1, 1), confidence=1, age=30, age_range=(25, 35), female_probability=0.1)
    assert adult.gender == "male" and adult.gender_reliable

    from core.draw import UNCERTAIN_COLOR, annotate, face_label

    assert face_label(1, f) == "1: 4 ?"
    img = annotate(np.zeros((40, 40, 3), np.uint8), [f])
    assert (img == UNCERTAIN_COLOR).all(axis=-1).any()


def test_export_stores_the_rule_and_core_applies_it(tiny_models, tmp_path, astronaut):
    """python -m train wrote the block after exporting the second model; core reads whichever block is there."""
    block = json.loads((tiny_models / "gender_model.json").read_text())["gender_reliability"]
    assert block["schema"] == "gender-reliability/1" and block["validation"]["n"] > 0
    assert block["computed_on"]["split"] == "val" and block["computed_on"]["age_model_exported"]

    from core.models import AgeGenderModels

    for name, rule, expected in (("young", reliability_block(unreliable_below=200), False),
                                 ("none", None, True), ("adult", reliability_block(), True)):
        models = AgeGenderModels(models_with_rule(tiny_models, tmp_path / name, rule))
        face = core.analyze(astronaut, models=models)[0]
        assert face.gender_reliable is expected and (face.gender == "uncertain") is not expected
        assert (face.gender_note is None) is expected


def test_cli_recomputes_the_block(tiny_models, utk_dir, tmp_path, capsys):
    from train.reliability import main

    folder = models_with_rule(tiny_models, tmp_path / "models", None)
    split = tmp_path / "split"
    from train.data import load_or_make_split

    load_or_make_split(utk_dir, split, log=lambda *_: None)
    assert main(["--data-dir", str(utk_dir), "--split-dir", str(split), "--models-dir", str(folder),
                 "--min-faces", "3", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "wrote gender_reliability" in out and "validation faces uncertain" in out
    block = json.loads((folder / "gender_model.json").read_text())["gender_reliability"]
    assert block["min_faces"] == 3 and block["computed_on"]["faces"] == block["validation"]["n"]
    from train.card import build_card

    assert "## Gender shown as uncertain\n\nMeasured by `python -m train.reliability`" in build_card(folder)
    assert main(["--data-dir", str(tmp_path / "nowhere"), "--models-dir", str(folder)]) == 2


def test_cli_table_names_uncertain_faces(tiny_models, tmp_path, astronaut_jpeg, capsys):
    from core.__main__ import main

    folder = models_with_rule(tiny_models, tmp_path / "models", reliability_block(unreliable_below=200))
    photo = tmp_path / "a.jpg"
    photo.write_bytes(astronaut_jpeg)
    assert main([str(photo), "--models-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "uncertain" in out and "gender of face 1 uncertain: predicted age" in out
    assert main([str(photo), "--models-dir", str(folder), "-o", str(tmp_path / "f.csv")]) == 0
    assert "gender_reliable" in (tmp_path / "f.csv").read_text().splitlines()[0]
