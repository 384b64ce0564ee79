"""train.bias_lines: lines on the age output, fitted on validation under a bias limit, scored on test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.bias_lines import bias_under, constrained_line, main


def write_predictions(path, true, pred) -> None:
    rows = [{"file": f"{i}.jpg", "age": float(a), "pred_age": float(p), "gender": i % 2, "p_female": 0.5}
            for i, (a, p) in enumerate(zip(true, pred))]
    path.write_text(json.dumps({"predictions": rows}))


def test_the_model_as_it_is_scores_as_a_hand_computation(tmp_path, capsys):
    write_predictions(tmp_path / "t.json", [10, 30, 3], [13, 28, 4])
    assert main(["--val", str(tmp_path / "t.json"), "--test", str(tmp_path / "t.json"), "--bias-limit", "9"]) == 0
    as_it_is = capsys.readouterr().out.splitlines()[1]
    assert "MAE 2.000" in as_it_is  # (3 + 2 + 1) / 3
    assert "bias under 20 +2.00" in as_it_is  # (+3 + 1) / 2
    assert "0-4 +1.0" in as_it_is and "10-14 +3.0" in as_it_is and "30-39 -2.0" in as_it_is
    assert "60-69" not in as_it_is  # no face there


def test_a_compressed_model_is_undone_by_the_constrained_line():
    """Predictions squeezed towards the middle (children over-aged, the old under-aged): the line with a tight
    bias limit is the inverse of the squeeze, and it beats the model as it is."""
    true = np.arange(1.0, 81.0)
    pred = true / 1.25 + 6.0
    sets = [(true[::2], pred[::2]), (true[1::2], pred[1::2])]
    assert bias_under(true, pred) > 3
    scale, offset, mae = constrained_line(sets, 0.05)
    assert scale == pytest.approx(1.25, abs=1e-6) and offset == pytest.approx(-7.5, abs=1e-6)
    assert mae == pytest.approx(0.0, abs=1e-6)
    assert constrained_line(sets, 0.05, scales=np.array([1.0]), offsets=np.array([0.0])) is None


def test_cli_reads_evaluate_json(tmp_path, capsys):
    ages = np.arange(1.0, 81.0)
    for name in ("val.json", "test.json"):
        write_predictions(tmp_path / name, ages, ages / 1.25 + 6.0)
    assert main(["--val", str(tmp_path / "val.json"), "--test", str(tmp_path / "test.json"),
                 "--bias-limit", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "as it is" in out and "age' = 1.250 x age -7.50" in out and "MAE 0.000, bias under 20" in out
    assert "MAE 4.275, bias under 20 +4.00" in out  # as it is: mean of 6 - 0.2 x age over ages 1-19
    assert main(["--val", str(tmp_path / "val.json"), str(tmp_path / "val.json"),
                 "--test", str(tmp_path / "test.json")]) == 2
