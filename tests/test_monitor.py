"""The live training monitor's two ends: train.callbacks.ProgressFile writes progress.json, ui.monitor reads it."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from ui.monitor import duration, find_runs, read_progress


def drive(tmp_path, *, epochs: int = 2, steps: int = 10, stop_early: bool = False,
          validate: bool = True) -> list[dict]:
    """Run a ProgressFile through the callbacks Keras calls for ``epochs`` epochs of ``steps`` batches and a
    validation pass each; return every progress.json written (a snapshot after each call)."""
    from train.callbacks import ProgressFile

    cb = ProgressFile(tmp_path, size=64, phase="1/1", epochs=epochs, batch_size=8, started=time.perf_counter(),
                      every_batches=4, every_seconds=3600)
    cb.set_params({"steps": steps, "epochs": epochs})
    cb.set_model(SimpleNamespace(stop_training=False))
    seen = []

    def snap():
        seen.append(json.loads((tmp_path / "progress.json").read_text()))

    for epoch in range(epochs):
        cb.on_epoch_begin(epoch)
        snap()
        for batch in range(steps):
            time.sleep(0.02)  # at most 400 images/s: an estimate of time left that rounds above 0
            cb.on_train_batch_end(batch)
            snap()
        if validate:
            cb.on_test_begin()
            snap()
        cb.on_epoch_end(epoch, {})
        snap()
        if stop_early:
            cb.model.stop_training = True
            break
    cb.on_train_end()
    snap()
    return seen


def test_progress_file_follows_epochs_and_batches(tmp_path):
    seen = drive(tmp_path)
    first = seen[0]
    assert first["state"] == "running" and first["step"] == "training" and first["epoch"] == 1
    assert first["epochs"] == 2 and first["batches"] == 10 and first["input_size"] == 64 and first["phase"] == "1/1"
    batches = [s["batch"] for s in seen if s["epoch"] == 1 and s["step"] == "training"]
    assert batches == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8]  # written every 4 batches (and at the epoch's start)
    in_epoch = [s for s in seen if s["epoch"] == 1 and s["batch"] == 8 and s["step"] == "training"][0]
    assert in_epoch["images_per_s"] > 0 and in_epoch["eta_s"] > 0 and in_epoch["elapsed_s"] >= 0
    validating = [s for s in seen if s["step"] == "validation"][0]
    assert validating["batch"] == 10
    last = seen[-1]
    assert last["state"] == "finished" and last["eta_s"] == 0.0 and last["epoch"] == 2
    assert not (tmp_path / "progress.json.tmp").exists()


def test_progress_file_marks_early_stopping_finished(tmp_path):
    last = drive(tmp_path, epochs=5, stop_early=True)[-1]
    assert last["state"] == "finished" and last["epoch"] == 1


def test_time_left_without_validation_passes(tmp_path):
    """Epochs without a validation pass (the campaign's chunks) keep an estimate of the time left in step with
    the batches left, rather than dividing by a validation that never ran."""
    seen = drive(tmp_path, epochs=3, steps=10, validate=False)
    second = [s for s in seen if s["epoch"] == 2 and s["step"] == "training" and s["batch"] == 8][0]
    # 2 batches of this epoch and 10 of the next are left: at the measured speed, well under a minute
    assert second["eta_s"] is not None and 0 < second["eta_s"] < 60


def test_a_phase_that_is_not_the_last_stays_running(tmp_path):
    from train.callbacks import ProgressFile

    cb = ProgressFile(tmp_path, size=64, phase="1/2", epochs=4, batch_size=8, started=time.perf_counter())
    cb.set_params({"steps": 3})
    cb.set_model(SimpleNamespace(stop_training=False))
    cb.on_epoch_begin(0)
    cb.on_epoch_end(0, {})
    cb.on_train_end()
    run = read_progress(tmp_path)
    assert run is not None and run.state == "running" and run.progress["step"] == "next phase"
    assert run.fraction == pytest.approx(0.25)


def test_training_writes_progress(tiny_models):
    """python -m train wrote progress.json in each run folder of the tiny models and marked it finished."""
    for task in ("age", "gender"):
        run = read_progress(tiny_models.parent / f"run_{task}")
        assert run is not None and run.state == "finished" and run.progress["epoch"] == run.progress["epochs"] == 1
        assert run.progress["images_per_s"] > 0 and run.fraction == 1.0


def test_runs_running_first_and_damaged_files_skipped(tmp_path):
    for name, state in (("a", "finished"), ("b", "running")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "progress.json").write_text(json.dumps({"state": state, "epoch": 1, "epochs": 2}))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "progress.json").write_text("{half a fi")
    assert [r.name for r in find_runs(tmp_path)] == ["b", "a"]
    assert find_runs(tmp_path / "missing") == []


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (None, 12, 200, 3725)] == ["n/a", "12 s", "3 min 20 s", "1 h 02 min"]
