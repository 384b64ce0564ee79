"""python -m train and its campaign: options checked at once, without TensorFlow; user errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_help_and_option_checks_need_no_tensorflow():
    probe = subprocess.run([sys.executable, "-c", "import sys; from train.options import build_train_parser, "
                            "build_campaign_parser; from pathlib import Path; build_train_parser().format_help(); "
                            "build_campaign_parser(Path('m'), Path('r')).format_help(); "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr
    out = run_train("--help")
    assert out.returncode == 0 and "--age-balance" in out.stdout and "(default: 0.0)" in out.stdout
    assert "``" not in out.stdout and ":mod:" not in out.stdout


def test_bad_options_and_folders_are_one_line_and_status_2(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (("age", "--data-dir", str(tmp_path / "missing")), "is not a folder"),
        (("age", "--data-dir", str(tmp_path), "--lr", "-1"), "--lr: -1 must be above 0"),
        (("age", "--data-dir", str(tmp_path), "--schedule", "8:1"), "bad schedule"),
        (("age", "--data-dir", str(tmp_path), "--age-balance", "2"), "must be at most 1"),
        (("age", "--data-dir", str(tmp_path), "--batch-size", "0"), "must be at least 1"),
        (("campaign", "--stages", "64:0"), "bad stages"),
        (("campaign", "--hours", "0"), "must be above 0"),
    ]
    for args, message in cases:
        out = run_train(*args)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    run_dir = tmp_path / "run"
    out = run_train("age", "--data-dir", str(tmp_path / "empty"), "--run-dir", str(run_dir))
    assert out.returncode == 2 and "no labelled images in" in out.stderr and "Traceback" not in out.stderr
    assert not run_dir.exists()  # nothing left behind
