"""``model.fit`` with the workbook's callbacks, and the evaluation classifiers share.

This is not a trainer: it calls Keras's ``fit`` once with EarlyStopping (best
weights restored), the HistoryRecorder and TerminateOnNaN, then turns what
happened into the run's status: completed, early_stopped, interrupted (Ctrl-C)
or diverged (NaN/inf loss). Interrupted and diverged runs still write their
history, learning curves, metrics.json and model, then raise a clear error.
"""

import math
import sys
import time

import keras
import numpy as np

from common import plots
from common.callbacks import HistoryRecorder, InterruptSafeBackup, early_stopping
from common.cli import RunInterrupted, WorkbookError
from common.runs import BACKUP, atomic_write_text


def progress_verbosity():
    """Keras's live progress bar on a terminal, one line per epoch in a log file."""
    return 1 if sys.stdout.isatty() else 2


def fit(
    model,
    run,
    x,
    y=None,
    validation_data=None,
    epochs=10,
    batch_size=None,
    patience=5,
    monitor="val_loss",
    title="learning curves",
    callbacks=(),
    initial_rows=(),
    boundaries=(),
    checkpoint=True,
    **fit_kwargs,
):
    """Fit ``model`` and return the run's training figures as a dict.

    With ``checkpoint`` (the default) keras's BackupAndRestore saves the model and
    optimizer after every epoch in RUN_DIR/backup, so that ``--resume RUN_DIR``
    continues an interrupted fit; the folder is deleted when the fit finishes. A
    lab that calls ``fit`` more than once (phases, comparisons) passes
    ``checkpoint=False``, since the checkpoint cannot tell the fits apart.
    """
    if run.resumed and not initial_rows:
        initial_rows = run.initial_rows
    stopper = early_stopping(monitor=monitor, patience=patience)
    recorder = HistoryRecorder(
        run.path,
        title=title,
        initial_rows=initial_rows,
        early_stopping=stopper,
        boundaries=boundaries,
    )
    all_callbacks = [stopper, recorder, keras.callbacks.TerminateOnNaN(), StopOnNaN()]
    all_callbacks += callbacks
    if checkpoint:
        all_callbacks.append(
            InterruptSafeBackup(str(run.path / BACKUP), double_checkpoint=True)
        )
    status = "completed"
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        model.fit(
            x,
            y,
            validation_data=validation_data,
            epochs=epochs,
            batch_size=batch_size,
            callbacks=all_callbacks,
            verbose=progress_verbosity(),
            **fit_kwargs,
        )
    except KeyboardInterrupt:
        status = "interrupted"
        if stopper.best_weights is not None:
            model.set_weights(stopper.best_weights)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    new_rows = recorder.rows[len(initial_rows) :]
    losses = [row[key] for row in new_rows for key in row if key.endswith("loss")]
    if any(loss is None or not math.isfinite(loss) for loss in losses):
        status = "diverged"
    elif status == "completed" and stopper.stopped_epoch:
        status = "early_stopped"
    best, stopped = recorder.marked_epochs()
    result = {
        "status": status,
        "best_epoch": best,
        "stopped_epoch": stopped,
        "epochs_run": len(recorder.rows),
        "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(cpu_seconds, 2),  # steadier on a shared machine
        "params": int(model.count_params()),
    }
    if status in ("interrupted", "diverged"):
        recorder.plot()
        run.write_metrics(result)
        if status == "interrupted":
            run.save_model(model)
            run.write_report(f"{run.lab} (interrupted)", result)
            again = (
                f"Continue it with --resume {run.path}."
                if checkpoint
                else "This lab keeps no checkpoint (several fits): run the command "
                "again to train from the start."
            )
            raise RunInterrupted(
                f"training was interrupted after {len(recorder.rows)} epoch(s). "
                f"History, learning curves, metrics.json (status interrupted) and "
                f"the best model so far are in {run.path}. {again}"
            )
        run.write_report(f"{run.lab} (diverged)", result)
        raise WorkbookError(
            f"training diverged: the loss became NaN or infinite at epoch "
            f"{len(recorder.rows)}. The history and plots are in {run.path} "
            "(metrics.json status diverged). Try a lower --learning-rate, "
            "e.g. 10 times smaller."
        )
    return result


class StopOnNaN(keras.callbacks.Callback):
    """Stops when any loss of an epoch (a GAN's two, not only "loss", which is
    all Keras's TerminateOnNaN watches) is NaN or infinite."""

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            if key.endswith("loss") and not math.isfinite(float(value)):
                self.model.stop_training = True


def inference_ms_per_image(model, x, batch_size=256, repeats=3):
    """Median wall time of ``model.predict`` over ``x``, in ms per image."""
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(x, batch_size=batch_size, verbose=0)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)) / max(len(x), 1)


def evaluate_classifier(model, run, x_test, y_test, class_names, title, batch_size=256):
    """The one classifier evaluation: test accuracy, loss and macro F1, the
    confusion matrix, the classification report and the predictions file.

    ``model`` is a Keras model (its ``predict`` is called on ``x_test``) or an array
    of already computed test probabilities: (N, classes) softmax, or (N,) / (N, 1)
    sigmoid for two classes. Writes plots/confusion_matrix.png,
    classification_report.txt and predictions.npz (true and predicted classes, so
    the report can recompute the accuracy); returns (figures, predictions, report).
    """
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    if isinstance(model, np.ndarray):
        probabilities = model
    else:
        probabilities = model.predict(x_test, batch_size=batch_size, verbose=0)
    probabilities = np.asarray(probabilities, dtype="float64")
    truth = np.asarray(y_test).astype("int64").reshape(-1)
    if probabilities.ndim == 1 or probabilities.shape[-1] == 1:
        positive = np.clip(probabilities.reshape(-1), 1e-7, 1 - 1e-7)
        probabilities = np.stack([1 - positive, positive], axis=-1)
    predictions = np.argmax(probabilities, axis=-1)
    picked = probabilities[np.arange(len(truth)), truth]
    test_loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
    labels = list(range(len(class_names)))
    report = classification_report(
        truth,
        predictions,
        labels=labels,
        target_names=[str(c) for c in class_names],
        digits=3,
        zero_division=0,
    )
    atomic_write_text(run.path / "classification_report.txt", report)
    np.savez(run.path / "predictions.npz", y_true=truth, y_pred=predictions)
    plots.confusion_matrix(
        truth,
        predictions,
        class_names,
        run.plots / "confusion_matrix.png",
        f"{title}: test confusion matrix",
    )
    figures = {
        "test_accuracy": float(accuracy_score(truth, predictions)),
        "test_loss": test_loss,
        "macro_f1": float(
            f1_score(
                truth, predictions, labels=labels, average="macro", zero_division=0
            )
        ),
    }
    return figures, predictions, report


def misclassified_grid(run, x_test, y_test, predictions, class_names, title, limit=24):
    """plots/misclassified.png: test images the model got wrong, true vs predicted."""
    wrong = np.flatnonzero(predictions != y_test)[:limit]
    if len(wrong) == 0:
        return None
    captions = [
        f"true {class_names[y_test[i]]}\npred {class_names[predictions[i]]}"
        for i in wrong
    ]
    return plots.image_grid(
        x_test[wrong],
        captions,
        run.plots / "misclassified.png",
        f"{title}: misclassified test images "
        f"({np.count_nonzero(predictions != y_test)} of {len(y_test)})",
        title_colors=["firebrick"] * len(wrong),
    )
