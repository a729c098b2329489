"""Callbacks shared by every lab: Keras's EarlyStopping, and a history recorder.

``HistoryRecorder`` writes history.csv and history.json after every epoch (so an
interrupted run keeps its rows) and draws learning_curves.png at the end of
training, or when :meth:`HistoryRecorder.plot` is called after an interrupt.
"""

import contextlib
import csv
import io
import math
import signal
import threading
import time
from pathlib import Path

import keras

from common import plots
from common.runs import atomic_write_json, atomic_write_text


def early_stopping(monitor="val_loss", patience=5, mode="auto"):
    """Keras's EarlyStopping, restoring the best weights at the end of training.

    After ``fit`` it holds ``best_epoch`` and ``stopped_epoch`` (0-based; 0 means
    it never stopped training early).
    """
    return keras.callbacks.EarlyStopping(
        monitor=monitor,
        patience=patience,
        mode=mode,
        restore_best_weights=True,
        verbose=1,
    )


def _number(value):
    value = float(keras.ops.convert_to_numpy(value))
    return value if math.isfinite(value) else float("nan")


class HistoryRecorder(keras.callbacks.Callback):
    """Write every epoch's logs, epoch time and learning rate as it goes.

    Args:
        directory: the run directory (history.csv/json go here, the plot to plots/).
        title: the learning-curve figure's title.
        initial_rows: rows of an earlier phase or run to continue from; epochs keep
            counting after them.
        early_stopping: the EarlyStopping callback whose best/stop epochs to mark.
    """

    def __init__(
        self,
        directory,
        title="learning curves",
        initial_rows=(),
        early_stopping=None,
        boundaries=(),
    ):
        super().__init__()
        self.directory = Path(directory)
        self.title = title
        self.initial_rows = [dict(row) for row in initial_rows]
        self.early_stopping = early_stopping
        self.boundaries = list(boundaries)
        self.rows = []
        self._epoch_start = None
        self._offset = len(self.initial_rows)

    def on_train_begin(self, logs=None):
        self.rows = [dict(row) for row in self.initial_rows]
        self._epoch_start = None
        self._offset = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_start if self._epoch_start else 0.0
        if self._offset is None:
            # keras counts from 0 in a new fit, or from the checkpoint on resume
            self._offset = len(self.rows) - epoch
        row = {"epoch": len(self.rows) + 1}
        row.update({key: _number(value) for key, value in (logs or {}).items()})
        row["epoch_seconds"] = round(seconds, 4)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and hasattr(optimizer, "learning_rate"):
            row["learning_rate"] = _number(optimizer.learning_rate)
        self.rows.append(row)
        self.write()

    def on_train_end(self, logs=None):
        self.plot()

    def write(self):
        columns = []
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.directory / "history.csv", buffer.getvalue())
        atomic_write_json(self.directory / "history.json", self.rows)

    def marked_epochs(self):
        """(best, stopped) epochs counted from 1 in this history, or None."""
        stopper = self.early_stopping
        if stopper is None or stopper.best is None:
            return None, None
        offset = len(self.initial_rows) if self._offset is None else self._offset
        best = offset + stopper.best_epoch + 1
        stopped = offset + stopper.stopped_epoch + 1 if stopper.stopped_epoch else None
        return best, stopped

    def plot(self):
        """Draw plots/learning_curves.png from the rows so far."""
        if not self.rows:
            return None
        best, stopped = self.marked_epochs()
        (self.directory / "plots").mkdir(exist_ok=True)
        return plots.learning_curves(
            self.rows,
            self.directory / "plots" / "learning_curves.png",
            self.title,
            best_epoch=best,
            stopped_epoch=stopped,
            boundaries=self.boundaries,
        )


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C back until the block ends, so a file is never half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: pending.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


class InterruptSafeBackup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, with Ctrl-C held back while it saves.

    A Ctrl-C that lands in the middle of the checkpoint write would leave a
    truncated weights file that the resumed run cannot load.
    """

    def on_epoch_end(self, epoch, logs=None):
        with sigint_deferred():
            super().on_epoch_end(epoch, logs)
