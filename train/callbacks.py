"""Keras callbacks of a training run: what each epoch adds to the logs, what it writes to the run folder.

- :class:`EpochInfo`: images/s, CPU time per image, epoch seconds, input size and learning rate in the logs;
- :class:`PerDatasetValidation`: each dataset's validation metrics (``val_<metric>_<dataset>``);
- :class:`SaveState`: the last finished epoch (``state.json``), for ``--resume``;
- :class:`BestWeights`: the weights with the lowest ``val_loss`` (``best.weights.h5``, ``best.json``);
- :class:`ProgressFile`: ``progress.json`` for the dashboard's live monitor (also the campaign's).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from train.data import make_dataset
from train.metrics import dataset_metrics


class EpochInfo(keras.callbacks.Callback):
    """Adds training images/s, epoch seconds, input size and learning rate to each epoch's logs, and the CPU
    time of this process per training image (all its threads, the tf.data pipeline's too): on a machine
    shared with other jobs the wall-clock rate varies with their load, the CPU time per image much less."""

    def __init__(self, n_train: int, size: int):
        super().__init__()
        self.n_train, self.size = n_train, size

    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.t_val = time.perf_counter(), None
        self.cpu0, self.cpu_val = time.process_time(), None

    def on_test_begin(self, logs=None):
        if self.t_val is None:
            self.t_val, self.cpu_val = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        end = self.t_val or time.perf_counter()
        logs["images_per_s"] = self.n_train / max(end - self.t0, 1e-9)
        logs["cpu_ms_per_image"] = 1000 * ((self.cpu_val or time.process_time()) - self.cpu0) / self.n_train
        logs["epoch_seconds"] = time.perf_counter() - self.t0
        logs["input_size"] = self.size
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class SaveState(keras.callbacks.Callback):
    """Records the last finished epoch for --resume. Runs after ModelCheckpoint (callback order), so the
    state never points past the checkpoint."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def on_epoch_end(self, epoch, logs=None):
        (self.run_dir / "state.json").write_text(json.dumps({"epochs_done": epoch + 1}))


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights with the lowest val_loss (at the final input size) across resumes."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def on_train_begin(self, logs=None):
        best = self.run_dir / "best.json"
        self.best = json.loads(best.read_text())["val_loss"] if best.is_file() else math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss", math.inf)
        if value < self.best:
            self.best = value
            self.model.save_weights(str(self.run_dir / "best.weights.h5"))
            (self.run_dir / "best.json").write_text(json.dumps({"epoch": epoch + 1, "val_loss": value}))


class ProgressFile(keras.callbacks.Callback):
    """Writes ``progress.json`` in the run folder for the dashboard's live monitor (``ui/monitor.py``): at the
    start and end of each epoch and every ``every_batches`` batches or ``every_seconds`` within it.

    Fields: ``state`` (``running``, then ``finished`` once training is over, export may follow), ``step``
    (``training``/``validation``), ``epoch`` (1-based) of ``epochs`` (this invocation's last), ``batch`` of
    ``batches``, ``images_per_s`` (this epoch's training so far), ``elapsed_s`` (this invocation),
    ``eta_s`` (the batches left at this epoch's speed, scaled by the last epoch's validation overhead; later
    phases at larger sizes are slower, and early stopping may end sooner), ``phase``, ``input_size``,
    ``updated`` (UTC) and ``pid``. Written to a temporary file and renamed, so a reader never sees half of it.
    """

    def __init__(self, run_dir: Path, *, size: int, phase: str, epochs: int, batch_size: int, started: float,
                 every_batches: int = 20, every_seconds: float = 5.0, unit: str = "epoch"):
        super().__init__()
        self.unit = unit  # what an "epoch" is called on the monitor (the campaign's are chunks)
        self.path, self.size, self.phase, self.epochs = run_dir / "progress.json", size, phase, epochs
        self.batch_size, self.started = batch_size, started
        self.every_batches, self.every_seconds = every_batches, every_seconds
        self.epoch, self.batch, self.step, self.state = 0, 0, "starting", "running"
        self.t_epoch = self.t_written = self.train_seconds = 0.0
        self.overhead = 1.0  # epoch seconds / training seconds of the last epoch (validation, callbacks)

    def _write(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and self.batch % self.every_batches and now - self.t_written < self.every_seconds:
            return
        self.t_written = now
        batches = self.params.get("steps")
        train_s = self.train_seconds if self.step == "validation" else now - self.t_epoch
        done = self.batch if self.step == "training" else (batches or 0)
        rate = done * self.batch_size / train_s if done and train_s > 0 else None
        eta = None
        if rate and batches:
            left = (batches - done) + batches * max(0, self.epochs - self.epoch)
            eta = round(left * self.batch_size / rate * self.overhead, 1)
        payload = {"schema": "train-progress/1", "run": self.path.parent.name, "state": self.state,
                   "step": self.step, "phase": self.phase, "input_size": self.size, "epoch": self.epoch,
                   "epochs": self.epochs, "batch": done, "batches": batches,
                   "images_per_s": None if rate is None else round(rate, 2),
                   "elapsed_s": round(now - self.started, 1), "eta_s": 0.0 if self.state == "finished" else eta,
                   "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "pid": os.getpid(),
                   "unit": self.unit}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.path)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.batch, self.step, self.t_epoch = epoch + 1, 0, "training", time.perf_counter()
        self._write(force=True)

    def on_train_batch_end(self, batch, logs=None):
        self.batch = batch + 1
        self._write()

    def on_test_begin(self, logs=None):
        if self.step == "training":
            self.train_seconds, self.step = time.perf_counter() - self.t_epoch, "validation"
            self._write(force=True)

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        if self.step == "training":  # no validation pass this epoch (the campaign validates every few chunks)
            self.train_seconds = now - self.t_epoch
        self.overhead = max(1.0, (now - self.t_epoch) / max(self.train_seconds, 1e-9))
        self._write(force=True)

    def on_train_end(self, logs=None):
        if self.model.stop_training or self.epoch >= self.epochs:
            self.state = "finished"
        else:
            self.step = "next phase"
        self._write(force=True)


class PerDatasetValidation(keras.callbacks.Callback):
    """Each dataset's validation metrics on their own, as ``val_<metric>_<dataset>`` in the epoch's logs (and
    so in ``history.csv``; it must come before the CSVLogger)."""

    def __init__(self, parts: Mapping[str, tuple[np.ndarray, object]], task: str, batch_size: int):
        super().__init__()
        self.task = task
        self.parts = {name: (make_dataset(x, y, batch_size=batch_size, training=False), y)
                      for name, (x, y) in parts.items()}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for name, (ds, y) in self.parts.items():
            pred = self.model.predict(ds, verbose=0)
            logs.update({f"val_{k}_{name}": v for k, v in dataset_metrics(self.task, pred, y).items()})
