"""Callbacks shared by every lab: Keras's EarlyStopping, and a history recorder.

``HistoryRecorder`` writes history.csv and history.json after every epoch (so an
interrupted run keeps its rows) and draws learning_curves.png at the end of
training, or when :meth:`HistoryRecorder.plot` is called after an interrupt.
``GradientNorms`` records the loss gradient of every layer's kernel each epoch;
``Snapshots`` hands the model to a lab's function at chosen epochs.
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
import numpy as np

from common import plots
from common.gradients import value_and_gradients
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


class Snapshots(keras.callbacks.Callback):
    """Calls ``take(model, epoch, logs)`` before training (epoch 0; ``start=False``
    skips it, e.g. on resume) and after the chosen epochs: those in ``epochs``; or
    with ``every``, each every-th and the last; or, given neither, all."""

    def __init__(self, take, epochs=None, every=None, start=True):
        super().__init__()
        self.take, self.epochs, self.every, self.start = take, epochs, every, start

    def on_train_begin(self, logs=None):
        if self.start:
            self.take(self.model, 0, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        done, last = epoch + 1, epoch + 1 == self.params["epochs"]
        if self.epochs is not None:
            chosen = done in self.epochs
        else:
            chosen = not self.every or done % self.every == 0 or last
        if chosen or (self.every and self.model.stop_training):
            self.take(self.model, done, logs or {})


class GradientNorms(keras.callbacks.Callback):
    """The loss gradient of every layer's kernel (conv, dense), on a fixed probe
    batch, at initialization and after each epoch: its root mean square per
    weight, which unlike the norm compares layers of different sizes.

    Keras's ``fit`` keeps its gradients to itself, so this takes them once more
    through :mod:`common.gradients` (one small function per backend). Writes
    ``path`` after every epoch as {"layers": [names], "sizes": [weights per
    kernel], "rms": [[per layer] per epoch, initialization first]}; at the end of
    training it draws them at ``plot`` as a layer by epoch heatmap.

    Args:
        images, labels: the probe batch (a few hundred training examples).
        path: the JSON file to write.
        plot, title: the heatmap's PNG file (None: no heatmap) and title.
        loss: ``loss(labels, predictions)``; default the compiled model's loss.
    """

    def __init__(self, images, labels, path, plot=None, title="", loss=None):
        super().__init__()
        self.images, self.labels, self.path = images, labels, path
        self.plot, self.title, self.loss = plot, title, loss
        self.layers, self.rms = [], []

    def on_train_begin(self, logs=None):
        self.layers = [layer for layer in self.model.layers if hasattr(layer, "kernel")]
        self.rms = []
        self.on_epoch_end(-1)  # the gradients at initialization

    def on_epoch_end(self, epoch, logs=None):
        loss = keras.losses.get(self.loss or self.model.loss)

        def probe_loss():
            predictions = self.model(self.images, training=False)
            return keras.ops.mean(loss(self.labels, predictions))

        kernels = [layer.kernel for layer in self.layers]
        _, gradients = value_and_gradients(probe_loss, kernels)
        squares = [keras.ops.mean(gradient * gradient) for gradient in gradients]
        self.rms.append(
            [float(np.sqrt(keras.ops.convert_to_numpy(s))) for s in squares]
        )
        atomic_write_json(self.path, self.record())

    def on_train_end(self, logs=None):
        if self.plot:
            gradient_heatmaps({self.model.name: self.record()}, self.plot, self.title)

    def record(self):
        return {
            "layers": [layer.name for layer in self.layers],
            "sizes": [int(np.prod(layer.kernel.shape)) for layer in self.layers],
            "rms": self.rms,
        }


def gradient_summary(record):
    """Two figures of a GradientNorms record: the RMS gradient per weight over
    all kernels before training, and the largest global norm of any epoch."""
    sizes, squares = np.asarray(record["sizes"]), np.square(record["rms"])
    return {
        "init_gradient_rms": float(squares[0] @ sizes / sizes.sum()) ** 0.5,
        "max_gradient_norm": float(np.sqrt(squares @ sizes).max()),
    }


def gradient_heatmaps(records, path, title):
    """GradientNorms records ({name: record}) side by side on one colour scale."""
    panels = {
        name: (record["layers"], record["rms"]) for name, record in records.items()
    }
    label = "RMS loss gradient per kernel weight"
    return plots.layer_heatmaps(panels, path, title, label)
