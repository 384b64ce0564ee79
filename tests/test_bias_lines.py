"""train.bias_lines: lines on the age output, fitted on validation under a bias limit, scored on test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.bias_lines import bias_under, constrained_line, main, score


def test_score_equals_a_hand_computation():
    r = score(np.array([10.0, 30.0, 3.0]), np.array([13.0, 28.0, 4.0]))
    assert r["mae"] == pytest.approx(2.0)  # (3 + 2 + 1) / 3
    assert r["bias_under_20"] == pytest.approx(2.0)  # (+3 + 1) / 2
    assert r["bias"]["0-4"] == pytest.approx(1.0) and r["bias"]["10-14"] == pytest.approx(3.0)
    assert r["bias"]["20-39"] == pytest.approx(-2.0) and r["bias"]["60-"] is None


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
    rows = [{"file": f"{a}.jpg", "age": a, "pred_age": a / 1.25 + 6.0} for a in range(1, 81)]
    for name in ("val.json", "test.json"):
        (tmp_path / name).write_text(json.dumps({"predictions": rows}))
    assert main(["--val", str(tmp_path / "val.json"), "--test", str(tmp_path / "test.json"),
                 "--bias-limit", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "as it is" in out and "age' = 1.250 x age -7.50" in out and "MAE 0.000, bias under 20" in out
    assert "MAE 4.275, bias under 20 +4.00" in out  # as it is: mean of 6 - 0.2 x age over ages 1-19
    assert main(["--val", str(tmp_path / "val.json"), str(tmp_path / "val.json"),
                 "--test", str(tmp_path / "test.json")]) == 2
