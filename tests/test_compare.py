"""``train.compare``: paired differences of two models' per-image predictions, by hand on a tiny set."""

import json

import pytest

from train.compare import compare, main


def _pred(file, age, pred_age, gender, p_female):
    return {"file": file, "age": age, "pred_age": pred_age, "gender": gender, "p_female": p_female, "race": 0}


A = {"predictions": [_pred("a.jpg", 10, 14.0, 1, 0.8), _pred("b.jpg", 30, 28.0, 0, 0.6),
                     _pred("c.jpg", 50, 50.0, 1, 0.9), _pred("only_a.jpg", 40, 90.0, 0, 0.9)]}
B = {"predictions": [_pred("a.jpg", 10, 11.0, 1, 0.3), _pred("b.jpg", 30, 31.0, 0, 0.2),
                     _pred("c.jpg", 50, 47.0, 1, 0.7), _pred("only_b.jpg", 5, 60.0, 1, 0.0)]}


def test_point_estimates_equal_a_hand_computation_on_the_common_files():
    m = compare(A, B, resamples=200)["metrics"]
    # common files a, b, c. A errors: +4, -2, 0; B errors: +1, +1, -3.
    assert m["age_mae"]["a"] == pytest.approx(2.0)
    assert m["age_mae"]["b"] == pytest.approx(5 / 3, abs=1e-4)
    assert m["age_mae"]["b_minus_a"] == pytest.approx(5 / 3 - 2.0, abs=1e-4)
    assert m["age_bias"]["a"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["age_bias"]["b"] == pytest.approx(-1 / 3, abs=1e-4)
    assert m["age_mae_under_20"]["a"] == pytest.approx(4.0)
    assert m["age_bias_under_20"]["b"] == pytest.approx(1.0)
    # A: a right (0.8 female), b wrong (0.6 says female, is male), c right -> 2/3; B: a wrong, b right, c right
    assert m["gender_accuracy"]["a"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["gender_accuracy"]["b"] == pytest.approx(2 / 3, abs=1e-4)


def test_intervals_hold_the_estimate_and_vanish_for_identical_models():
    result = compare(A, B, resamples=500, seed=1)
    assert result["n"] == 3
    for m in result["metrics"].values():
        lo, hi = m["ci95"]
        assert lo <= hi
    same = compare(A, A, resamples=100)["metrics"]
    for m in same.values():
        assert m["b_minus_a"] == 0 and m["ci95"] == [0.0, 0.0]


def test_no_common_file_is_an_error():
    with pytest.raises(SystemExit, match="no scored image in common"):
        compare(A, {"predictions": [_pred("x.jpg", 1, 1.0, 0, 0.1)]})


def test_command_line_prints_one_json_line_last(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(A))
    (tmp_path / "b.json").write_text(json.dumps(B))
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--resamples", "50"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["n"] == 3 and set(last["metrics"]) >= {"age_mae", "gender_accuracy"}
