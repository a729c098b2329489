"""Lab 2: recurrent networks, SimpleRNN vs LSTM vs GRU.

    python -m labs.lab2_rnn --arch 3                # headline: SimpleRNN, adding
    python -m labs.lab2_rnn --arch 3 --cell gru     # the same network, GRU cells
    python -m labs.lab2_rnn --arch 3 --compare      # all three cells, same data
    python -m labs.lab2_rnn --dataset seasonal      # forecast a series' next value
    python -m labs.lab2_rnn --dataset digits        # 8x8 digits read row by row
    python -m labs.lab2_rnn --dataset imdb_reviews  # sentiment (tfds)

What it teaches: how a recurrent layer reads a sequence one step at a time, and
why gated cells (LSTM, GRU) carry information over long spans where a plain
SimpleRNN cannot. The default task is the adding problem: 50 steps of (value,
marker) pairs, target = the sum of the two marked values. Always predicting the
mean scores MSE 1/6 ~ 0.167 (printed and stored as ``baseline_mse``); a model
that beats it has learned to remember the first marked value across the gap.

Architectures (the original course lab's numbering; ``--cell`` swaps the
recurrent layer in any of them):

- ``--arch 1``: recurrent(32, tanh) -> Dense(32, relu) -> output; Adam.
- ``--arch 2``: recurrent(32, tanh) -> Dense(64) -> Dense(64) -> Dense(32) (relu)
  -> output; RMSprop.
- ``--arch 3``: recurrent(32, tanh) -> recurrent(32, relu) -> Dense(32, relu) ->
  output; Adam. The relu is the course's, for SimpleRNN; LSTM and GRU keep
  their own tanh there (relu inside a gated cell let the LSTM's loss explode).

The output layer follows the data: Dense(1) linear for regression (adding,
seasonal), Dense(1, sigmoid) for binary sentiment (imdb_reviews), and
Dense(10, softmax) for the ten digit classes (one sigmoid unit cannot say which
of ten digits it saw).

The default cell is ``simple`` (SimpleRNN), the course's cell, so the headline
command ``--arch 3`` shows SimpleRNN *failing* on the adding problem: its test
MSE stays near the baseline. That is the lesson; ``--cell lstm``/``--cell gru``
or ``--compare`` show the gated cells solving it.

``--compare`` writes one run directory for the comparison, holding one complete
sub-run per cell (``simple/``, ``lstm/``, ``gru/``, each a full run directory
with its own config.json, history, metrics, model and plots). The comparison
folder itself has comparison.md/.json (the table), history.csv/json (every
cell's epochs, with a ``cell`` column), plots/learning_curves.png (all cells on
one figure), plots/comparison.png (test metric, parameters, train time and
inference time per cell), plots/predictions.png (regression), metrics.json
(status, ``best_cell`` and the best cell's figures, ``train_seconds`` summed over
the cells, and ``<cell>_<figure>`` for every cell) and the best cell's
model.keras.

``--resume RUN_DIR`` continues an interrupted single run from its last epoch
checkpoint. A ``--compare`` run is resumed cell by cell: ``--resume
RUN_DIR/lstm`` continues that cell's sub-run.

No masking anywhere: a mask sends Keras's LSTM/GRU on torch to the generic
Python time loop. Text is pre-padded (zeros first) instead, so the last step
the recurrent layer reads is a real token.

``--threads`` (default 1) sets torch's intra-op threads. Recurrent steps are
tiny matrix products (batch x 32 units) where splitting work across threads
costs more than it saves; on a 2-core machine shared with other jobs, two
spinning OpenMP threads measured 7 to 45 times slower per step than one
(``python -m bench.rnn_speed``; an idle machine was not available to measure).

Measured on a 2-core x86_64 CPU, torch backend, Keras 3.15.1, torch 2.13.0,
1 torch thread, defaults (adding, 50 steps, 8,000 training / 1,000 validation /
2,000 test sequences, 32 units, Adam 3e-3, batch 128, 12 epochs), load average
about 1, with ``common.speedups`` (torch's fused RNN kernels; see below).

    python -m labs.lab2_rnn --arch 3
    SimpleRNN: test MSE 0.152 vs 0.172 for the mean predictor; 17 s training,
    30 s wall in all. Keras as shipped (WORKBOOK_KERAS_FIXES=0, same load):
    MSE 0.148, 73 s training, 87 s wall.

    python -m labs.lab2_rnn --arch 3 --compare  (112 s wall)
    | cell      | test MSE | parameters | train time (s) | inference (ms/seq) |
    |-----------|----------|------------|----------------|--------------------|
    | SimpleRNN | 0.1519   | 4,289      | 15             | 0.035              |
    | LSTM      | 0.0044   | 13,889     | 39             | 0.091              |
    | GRU       | 0.0003   | 10,881     | 40             | 0.104              |

GRU solves the task by epoch 4, LSTM by epoch 8; SimpleRNN never gets far
below the baseline. Part of SimpleRNN's trouble is exploding gradients: with
``--clipnorm 1.0`` (15 epochs) it reached 0.027, still 10 times behind the GRU
(measured before ``common.speedups``). Runs are deterministic for a given code
path; the fused kernels sum in another order than Keras's Python loop, so their
figures differ in the third digit (0.152 vs 0.148 above). Before the fused
kernels, at load 6-9, ``--compare`` took 694 s (306 / 199 / 140 s training).

Other data (1 thread):
``--dataset digits --cell gru`` (40 epochs): test accuracy 0.961, 10 s training
(load ~1).
``--dataset seasonal --cell gru --num-sequences 3000 --epochs 8``: test MSE
0.053 vs 0.123 for repeating the last value and 0.99 for the mean, 13 s training,
31 s wall (load ~1).
"""

import copy
import csv
import io
import json
import sys
from dataclasses import dataclass, field

import keras
import numpy as np

from common import cli, plots
from common.cli import WorkbookError
from common.runs import Run, atomic_write_text, seed_everything
from common.training import fit, inference_ms_per_image, misclassified_grid

LAB = "lab2_rnn"
HYPERPARAMETERS = {
    "units": 32,  # recurrent units per layer
    "epochs": {"adding": 12, "seasonal": 12, "digits": 40, "imdb_reviews": 6},
    "batch_size": 128,  # sequences per step
    "learning_rate": 3e-3,  # Adam / RMSprop step size
    "patience": 8,  # epochs without val_loss improvement (LSTM plateaus ~7 first)
    "clipnorm": None,  # gradient norm clipping, off (see --clipnorm)
    "num_sequences": 8000,  # training sequences (adding) or windows (seasonal)
    "num_val": 1000,  # validation sequences (adding, seasonal)
    "num_test": 2000,  # test sequences (adding, seasonal)
    "threads": 1,  # torch intra-op threads (see the docstring)
    "vocabulary_size": 10000,  # imdb_reviews: most frequent words kept
    "embedding_dim": 32,  # imdb_reviews: token embedding width
}
SEQ_LEN = {"adding": 50, "seasonal": 48, "digits": 8, "imdb_reviews": 200}
DATASETS = tuple(SEQ_LEN)
QUICK = {"train": 256, "val": 64, "test": 128, "epochs": 2}
CELLS = {"simple": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}
SEASONAL_PERIODS = (24, 168)  # daily and weekly cycles of an hourly series
INFERENCE_SAMPLES = 512


# ----------------------------------------------------------------------------
# Data: every set comes back as a SequenceData with three disjoint splits
# ----------------------------------------------------------------------------
@dataclass
class SequenceData:
    """Sequences (N, T, features) or token ids (N, T) with targets, three splits."""

    name: str
    task: str  # regression | binary | multiclass
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    class_names: list = field(default_factory=list)
    vocabulary_size: int = 0  # > 0: x holds token ids, the model embeds them
    notes: dict = field(default_factory=dict)

    @property
    def seq_len(self):
        return self.x_train.shape[1]

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    def describe(self):
        return {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "num_train": len(self.x_train),
            "num_val": len(self.x_val),
            "num_test": len(self.x_test),
            "sequence_shape": list(self.input_shape),
            **({"num_classes": len(self.class_names)} if self.class_names else {}),
            **self.notes,
        }


def split_sizes(args):
    if args.quick:
        return QUICK["train"], QUICK["val"], QUICK["test"]
    return args.num_sequences, HYPERPARAMETERS["num_val"], HYPERPARAMETERS["num_test"]


def mean_predictor_mse(y_train, y_test):
    """Test MSE of always predicting the training mean: the bar to beat."""
    return float(np.mean((y_test - np.mean(y_train)) ** 2))


def load_adding(seq_len, num_train, num_val, num_test, seed):
    from common.data import make_adding

    if seq_len < 2:
        raise WorkbookError(
            f"the adding problem needs at least 2 steps (one marker in each half), "
            f"got --seq-len {seq_len}. Use e.g. --seq-len {SEQ_LEN['adding']}."
        )
    x, y = make_adding(num_train + num_val + num_test, seq_len, seed)
    cut_val, cut_test = num_train, num_train + num_val
    data = SequenceData(
        "adding", "regression", x[:cut_val], y[:cut_val], x[cut_val:cut_test],
        y[cut_val:cut_test], x[cut_test:], y[cut_test:],
        source=f"generated adding problem, {seq_len} steps of (value, marker)",
    )
    data.notes["baseline_mse"] = mean_predictor_mse(data.y_train, data.y_test)
    data.notes["baseline_mse_theory"] = 1 / 6
    return data


def seasonal_series(length, seed):
    """An hourly-looking series: daily and weekly cycles plus noise.

    No trend: a recurrent net with tanh units cannot extrapolate a level it never
    saw in training (with a linear trend, the test stretch lay outside the
    training range and a GRU lost to repeating the last value).
    """
    rng = np.random.default_rng(seed)
    time = np.arange(length, dtype="float64")
    daily, weekly = SEASONAL_PERIODS
    series = (2.0 * np.sin(2 * np.pi * time / daily + rng.uniform(0, 2 * np.pi))
              + 1.0 * np.sin(2 * np.pi * time / weekly + rng.uniform(0, 2 * np.pi))
              + rng.normal(0.0, 0.3, size=length))
    return series


def windows(series, seq_len):
    """Every window of ``seq_len`` values (N, T, 1) and the value after it (N,)."""
    count = len(series) - seq_len
    index = np.arange(seq_len)[None, :] + np.arange(count)[:, None]
    x = series[index][..., None].astype("float32")
    return x, series[seq_len:].astype("float32")


def load_seasonal(seq_len, num_train, num_val, num_test, seed):
    """Windows of a generated seasonal series; splits are consecutive in time.

    The series is cut into train, validation and test stretches first, then each
    stretch is windowed, so no test window overlaps a training one. Values are
    standardized with the training stretch's mean and standard deviation.
    """
    lengths = [count + seq_len for count in (num_train, num_val, num_test)]
    series = seasonal_series(sum(lengths), seed)
    train_end, val_end = lengths[0], lengths[0] + lengths[1]
    mean, std = series[:train_end].mean(), series[:train_end].std()
    series = (series - mean) / std
    x_train, y_train = windows(series[:train_end], seq_len)
    x_val, y_val = windows(series[train_end:val_end], seq_len)
    x_test, y_test = windows(series[val_end:], seq_len)
    data = SequenceData(
        "seasonal", "regression", x_train, y_train, x_val, y_val, x_test, y_test,
        source=f"generated seasonal series (periods {SEASONAL_PERIODS} steps plus "
               f"noise), window of {seq_len} -> next value, standardized",
    )
    data.notes["baseline_mse"] = mean_predictor_mse(y_train, y_test)
    data.notes["persistence_mse"] = float(np.mean((x_test[:, -1, 0] - y_test) ** 2))
    return data


def load_digit_rows(seed, quick):
    """scikit-learn's 8x8 digits as sequences of 8 rows of 8 pixels."""
    from common.data import load_images

    images = load_images("digits", seed=seed, quick=quick)

    def rows(x):
        return x[..., 0].astype("float32")

    return SequenceData(
        "digits", "multiclass", rows(images.x_train), images.y_train,
        rows(images.x_val), images.y_val, rows(images.x_test), images.y_test,
        source=images.source + ", read row by row (8 steps x 8 pixels)",
        class_names=images.class_names,
    )


def pre_pad(token_ids):
    """Move each row's trailing zeros (padding) to the front, keeping token order."""
    token_ids = np.asarray(token_ids)
    length = token_ids.shape[1]
    shift = length - np.count_nonzero(token_ids, axis=1)
    columns = (np.arange(length)[None, :] - shift[:, None]) % length
    return np.take_along_axis(token_ids, columns, axis=1)


def load_imdb(seq_len, vocabulary_size, seed, quick):
    """IMDB reviews (tfds) as pre-padded token ids from a TextVectorization.

    The vocabulary is adapted on the training texts only. TextVectorization runs
    here, in the data pipeline on numpy, not inside the model, so the model
    itself is plain Keras and runs on torch.
    """
    from sklearn.model_selection import train_test_split

    from common.data import load_text

    (train_texts, train_labels), (test_texts, test_labels) = load_text("imdb_reviews")
    train_texts, test_texts = np.asarray(train_texts), np.asarray(test_texts)
    stratify = train_labels if np.min(np.bincount(train_labels)) >= 2 else None
    x_train, x_val, y_train, y_val = train_test_split(
        train_texts, train_labels, test_size=0.1, random_state=seed,
        stratify=stratify)
    x_test, y_test = test_texts, test_labels
    if quick:
        rng = np.random.default_rng(seed)

        def subset(x, y, count):
            keep = np.sort(rng.permutation(len(x))[:count])
            return x[keep], y[keep]

        x_train, y_train = subset(x_train, y_train, QUICK["train"])
        x_val, y_val = subset(x_val, y_val, QUICK["val"])
        x_test, y_test = subset(x_test, y_test, QUICK["test"])
    vectorizer = keras.layers.TextVectorization(
        max_tokens=vocabulary_size, output_sequence_length=seq_len)
    vectorizer.adapt(x_train, batch_size=1024)

    def encode(texts):
        ids = keras.ops.convert_to_numpy(vectorizer(texts))
        return pre_pad(ids).astype("int32")

    data = SequenceData(
        "imdb_reviews", "binary", encode(x_train), y_train.astype("float32"),
        encode(x_val), y_val.astype("float32"), encode(x_test),
        y_test.astype("float32"),
        source=f"tensorflow-datasets imdb_reviews, first {seq_len} tokens, "
               "pre-padded, TextVectorization vocabulary from the training texts",
        class_names=["negative", "positive"],
        vocabulary_size=len(vectorizer.get_vocabulary()),
    )
    return data


def load_data(args):
    num_train, num_val, num_test = split_sizes(args)
    if args.dataset == "adding":
        return load_adding(args.seq_len, num_train, num_val, num_test, args.seed)
    if args.dataset == "seasonal":
        return load_seasonal(args.seq_len, num_train, num_val, num_test, args.seed)
    if args.dataset == "digits":
        return load_digit_rows(args.seed, args.quick)
    return load_imdb(args.seq_len, args.vocabulary_size, args.seed, args.quick)


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------
def recurrent(cell, units, name, activation="tanh", return_sequences=False):
    """A SimpleRNN, LSTM or GRU layer: the one piece ``--cell`` swaps."""
    layer = getattr(keras.layers, CELLS[cell])
    return layer(units, activation=activation, return_sequences=return_sequences,
                 name=name)


def sequence_inputs(data):
    """The model's input, and its first tensor (token ids are embedded)."""
    if data.vocabulary_size:
        inputs = keras.Input((data.seq_len,), dtype="int32", name="token_ids")
        embedded = keras.layers.Embedding(
            data.vocabulary_size, HYPERPARAMETERS["embedding_dim"],
            name="embedding")(inputs)
        return inputs, embedded
    inputs = keras.Input(data.input_shape, name="sequence")
    return inputs, inputs


def output_layer(data, x):
    if data.task == "multiclass":
        return keras.layers.Dense(len(data.class_names), activation="softmax",
                                  name="softmax")(x)
    if data.task == "binary":
        return keras.layers.Dense(1, activation="sigmoid", name="sigmoid")(x)
    return keras.layers.Dense(1, name="prediction")(x)


def build_arch1(data, cell="simple", units=32, name="arch1"):
    """recurrent(tanh) -> Dense(32, relu) -> output."""
    inputs, x = sequence_inputs(data)
    x = recurrent(cell, units, f"{cell}_1")(x)
    x = keras.layers.Dense(32, activation="relu", name="dense_32")(x)
    return keras.Model(inputs, output_layer(data, x), name=name)


def build_arch2(data, cell="simple", units=32, name="arch2"):
    """recurrent(tanh) -> Dense(64) -> Dense(64) -> Dense(32), relu -> output."""
    inputs, x = sequence_inputs(data)
    x = recurrent(cell, units, f"{cell}_1")(x)
    for index, width in enumerate((64, 64, 32), start=1):
        x = keras.layers.Dense(width, activation="relu",
                               name=f"dense{index}_{width}")(x)
    return keras.Model(inputs, output_layer(data, x), name=name)


def build_arch3(data, cell="simple", units=32, name="arch3"):
    """Two stacked recurrent layers -> Dense(32, relu) -> output.

    The course's second SimpleRNN uses relu. A gated cell keeps its own tanh:
    relu inside an LSTM/GRU lets the cell state grow without bound (measured on
    the adding problem: the LSTM's training loss jumped to 2.8 at epoch 10).
    """
    inputs, x = sequence_inputs(data)
    x = recurrent(cell, units, f"{cell}_1", return_sequences=True)(x)
    second_activation = "relu" if cell == "simple" else "tanh"
    x = recurrent(cell, units, f"{cell}_2", activation=second_activation)(x)
    x = keras.layers.Dense(32, activation="relu", name="dense_32")(x)
    return keras.Model(inputs, output_layer(data, x), name=name)


ARCHITECTURES = {"1": build_arch1, "2": build_arch2, "3": build_arch3}
OPTIMIZERS = {"1": keras.optimizers.Adam, "2": keras.optimizers.RMSprop,
              "3": keras.optimizers.Adam}
LOSSES = {
    "regression": ("mse", ["mae"]),
    "binary": ("binary_crossentropy", ["accuracy"]),
    "multiclass": ("sparse_categorical_crossentropy", ["accuracy"]),
}


def build_model(arch, cell, data, units, learning_rate, clipnorm=None):
    model = ARCHITECTURES[arch](data, cell=cell, units=units, name=f"arch{arch}_{cell}")
    loss, metrics = LOSSES[data.task]
    optimizer = OPTIMIZERS[arch](learning_rate, clipnorm=clipnorm)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


# ----------------------------------------------------------------------------
# Evaluation and plots
# ----------------------------------------------------------------------------
def regression_figures(model, data, batch_size=512):
    predictions = model.predict(data.x_test, batch_size=batch_size, verbose=0)
    predictions = np.asarray(predictions, dtype="float64").reshape(-1)
    errors = predictions - data.y_test
    figures = {"mse": float(np.mean(errors ** 2)),
               "mae": float(np.mean(np.abs(errors))),
               "baseline_mse": data.notes["baseline_mse"]}
    if "persistence_mse" in data.notes:
        figures["persistence_mse"] = data.notes["persistence_mse"]
    return figures, predictions


def classifier_figures(model, data, run, title, batch_size=512):
    """Accuracy, loss and macro F1 on the test set, with a confusion matrix."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    probabilities = np.asarray(model.predict(data.x_test, batch_size=batch_size,
                                             verbose=0), dtype="float64")
    epsilon = 1e-7
    if data.task == "binary":
        probability = np.clip(probabilities.reshape(-1), epsilon, 1 - epsilon)
        predictions = (probability >= 0.5).astype("int64")
        truth = data.y_test.astype("int64")
        loss = -np.mean(truth * np.log(probability)
                        + (1 - truth) * np.log(1 - probability))
    else:
        predictions = np.argmax(probabilities, axis=-1)
        truth = data.y_test.astype("int64")
        picked = probabilities[np.arange(len(truth)), truth]
        loss = -np.mean(np.log(np.clip(picked, epsilon, 1.0)))
    labels = list(range(len(data.class_names)))
    report = classification_report(truth, predictions, labels=labels,
                                   target_names=data.class_names, digits=3,
                                   zero_division=0)
    atomic_write_text(run.path / "classification_report.txt", report)
    plots.confusion_matrix(truth, predictions, data.class_names,
                           run.plots / "confusion_matrix.png",
                           f"{title}: test confusion matrix")
    if data.name == "digits":
        misclassified_grid(run, data.x_test[..., None], truth, predictions,
                           data.class_names, title)
    figures = {"test_accuracy": float(accuracy_score(truth, predictions)),
               "test_loss": float(loss),
               "macro_f1": float(f1_score(truth, predictions, labels=labels,
                                          average="macro", zero_division=0))}
    return figures, report


def predictions_plot(panels, data, path, title):
    """plots/predictions.png: predicted vs true test targets, one panel per model.

    ``panels`` is {label: predictions}. A seasonal run also gets a stretch of the
    test series in time, true and predicted next values.
    """
    import matplotlib.pyplot as plt

    in_time = data.name == "seasonal"
    columns = len(panels) + (1 if in_time else 0)
    figure, axes = plt.subplots(1, columns, figsize=(4.6 * columns, 4.4),
                                squeeze=False)
    truth = data.y_test
    low, high = float(np.min(truth)), float(np.max(truth))
    unit = "standardized value" if in_time else "sum of the two marked values"
    for axis, (label, predicted) in zip(axes[0], panels.items()):
        mse = float(np.mean((predicted - truth) ** 2))
        axis.scatter(truth, predicted, s=5, alpha=0.35, label="test sequence")
        axis.plot([low, high], [low, high], color="black", linewidth=1,
                  label="perfect (y = x)")
        axis.axhline(float(np.mean(data.y_train)), color="gray", linestyle="--",
                     label=f"mean predictor (MSE {data.notes['baseline_mse']:.3f})")
        axis.set_xlabel(f"true target ({unit})")
        axis.set_ylabel(f"predicted ({unit})")
        axis.set_title(f"{label}: test MSE {mse:.4f}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="upper left")
    if in_time:
        axis = axes[0][-1]
        steps = np.arange(min(200, len(truth)))
        axis.plot(steps, truth[steps], color="black", linewidth=1.5, label="true")
        axis.plot(steps, data.x_test[steps, -1, 0], color="gray", linestyle=":",
                  label="repeat the last value "
                        f"(MSE {data.notes['persistence_mse']:.3f})")
        for label, predicted in panels.items():
            axis.plot(steps, predicted[steps], linewidth=1, label=f"{label}")
        axis.set_xlabel("test step (hours after the end of validation)")
        axis.set_ylabel(f"next value ({unit})")
        axis.set_title("one-step-ahead forecasts in time")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    return plots.save(figure, path)


def cell_color(cell):
    return plots.CELL_COLORS[list(CELLS).index(cell) % len(plots.CELL_COLORS)]


def comparison_bars(finished, data, path, title):
    """plots/comparison.png: test metric, parameters, train and inference time."""
    import matplotlib.pyplot as plt

    key, label = headline_metric(data)
    panels = {
        label + (" (log scale)" if key == "mse" else ""): key,
        "parameters (count)": "params",
        "train time (s)": "train_seconds",
        "inference (ms per sequence)": "inference_ms_per_sample",
    }
    names = [CELLS[cell] for cell in finished]
    colors = [cell_color(cell) for cell in finished]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    for axis, (panel, name) in zip(axes, panels.items()):
        values = [finished[cell][name] for cell in finished]
        bars = axis.bar(names, values, color=colors)
        axis.bar_label(bars, labels=[f"{value:.3g}" for value in values],
                       fontsize=8)
        if name == "mse":
            axis.set_yscale("log")
            axis.axhline(data.notes["baseline_mse"], color="black", linestyle="--",
                         linewidth=1, label="mean predictor "
                                            f"({data.notes['baseline_mse']:.3f})")
            axis.legend(fontsize=8, loc="upper right")
            axis.set_ylim(top=max(values + [data.notes["baseline_mse"]]) * 3)
        else:
            axis.margins(y=0.15)
        axis.set_title(panel)
        axis.set_ylabel(panel)
        axis.set_xlabel("recurrent cell")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(title)
    return plots.save(figure, path)


def cell_learning_curves(histories, data, path, title, best_epochs=None):
    """plots/learning_curves.png: loss and metric per epoch, every cell on one figure.

    ``histories`` is {cell: history rows}; ``best_epochs`` {cell: epoch} marks the
    epoch whose weights were kept. Regression losses are drawn on a log scale with
    the mean predictor's MSE, the bar a model must get below.
    """
    import matplotlib.pyplot as plt

    metric = "mae" if data.task == "regression" else "accuracy"
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for cell, rows in histories.items():
        if not rows:
            continue
        color = cell_color(cell)
        epochs = [row["epoch"] for row in rows]
        best = (best_epochs or {}).get(cell)
        for axis, key in zip(axes, ("loss", metric)):
            axis.plot(epochs, [row.get(f"val_{key}") for row in rows], "o-",
                      color=color, markersize=3, label=f"{CELLS[cell]}")
            axis.plot(epochs, [row.get(key) for row in rows], "--", color=color,
                      alpha=0.5)
            if best and best <= len(rows):
                axis.plot([best], [rows[best - 1].get(f"val_{key}")], "*",
                          color=color, markersize=13, markeredgecolor="black")
        if len(epochs) < 16:
            for axis in axes:
                axis.set_xticks(epochs)
    for axis in axes:
        axis.plot([], [], "-", color="gray", label="validation (solid)")
        axis.plot([], [], "--", color="gray", alpha=0.5, label="training (dashed)")
        axis.plot([], [], "*", color="gray", markersize=11, markeredgecolor="black",
                  label="best epoch (weights kept)")
    if data.task == "regression":
        axes[0].axhline(data.notes["baseline_mse"], color="black", linestyle="--",
                        linewidth=1, label=f"mean predictor "
                                           f"({data.notes['baseline_mse']:.3f})")
        axes[0].set_yscale("log")
        labels = ("loss: mean squared error (log scale)", "mean absolute error")
    else:
        labels = ("loss: cross-entropy", "accuracy (share correct)")
    for axis, label in zip(axes, labels):
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    return plots.save(figure, path)


# ----------------------------------------------------------------------------
# One training run (a cell), and the comparison of all three
# ----------------------------------------------------------------------------
def configure_threads(threads):
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(threads)


def describe_model(args, cell, data):
    return (f"Lab 2 arch {args.arch} ({CELLS[cell]}) on {data.name}, "
            f"{data.seq_len} steps")


def train_cell(args, data, cell, run):
    """Train, evaluate and write one complete run directory; returns its metrics."""
    seed_everything(args.seed)
    model = build_model(args.arch, cell, data, args.units, args.learning_rate,
                        args.clipnorm)
    title = describe_model(args, cell, data)
    print(f"model: {model.name}, {model.count_params():,} parameters, "
          f"{args.epochs} epochs max")
    result = fit(model, run, data.x_train, data.y_train,
                 validation_data=(data.x_val, data.y_val), epochs=args.epochs,
                 batch_size=args.batch_size, patience=args.patience, title=title)
    cell_learning_curves({cell: read_history(run)}, data,
                         run.plots / "learning_curves.png", title,
                         {cell: result["best_epoch"]})
    sections = []
    predictions = None
    if data.task == "regression":
        figures, predictions = regression_figures(model, data)
        predictions_plot({CELLS[cell]: predictions}, data,
                         run.plots / "predictions.png", title)
    else:
        figures, report = classifier_figures(model, data, run, title)
        sections.append(("Classification report (test set)", f"```\n{report}```"))
    inference = inference_ms_per_image(model, data.x_test[:INFERENCE_SAMPLES])
    metrics = {**result, **figures, "inference_ms_per_sample": inference}
    run.write_metrics(metrics)
    run.save_model(model)
    run.write_report(title, metrics, sections)
    print(summary_line(cell, metrics))
    return metrics, predictions


def summary_line(cell, metrics):
    name = CELLS[cell]
    if "mse" in metrics:
        text = (f"{name}: test MSE {metrics['mse']:.4f} (always predicting the mean "
                f"scores {metrics['baseline_mse']:.4f})")
        if "persistence_mse" in metrics:
            text += f", repeating the last value {metrics['persistence_mse']:.4f}"
    else:
        text = (f"{name}: test accuracy {metrics['test_accuracy']:.4f}, "
                f"macro F1 {metrics['macro_f1']:.4f}")
    return text + f", {metrics['train_seconds']:.0f} s training"


def headline_metric(data):
    return ("mse", "test MSE") if data.task == "regression" else (
        "test_accuracy", "test accuracy")


def cell_argv(argv, cell):
    """The command line that reproduces one cell of a comparison on its own."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--compare" or item.startswith("--out="):
            continue
        if item == "--out":
            skip = True
            continue
        kept.append(item)
    return kept + ["--cell", cell]


def history_table(histories):
    rows = [{"cell": cell, **row} for cell, cell_rows in histories.items()
            for row in cell_rows]
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return rows, buffer.getvalue()


def comparison_table(results, data):
    """Markdown and JSON rows: one per cell, the same figures for each."""
    key, label = headline_metric(data)
    rows = []
    for cell, metrics in results.items():
        rows.append({
            "cell": CELLS[cell],
            key: metrics.get(key),
            "params": metrics.get("params"),
            "train_seconds": metrics.get("train_seconds"),
            "inference_ms_per_sample": metrics.get("inference_ms_per_sample"),
            "epochs_run": metrics.get("epochs_run"),
            "best_epoch": metrics.get("best_epoch"),
            "status": metrics.get("status"),
        })
    lines = [f"| cell | {label} | parameters | train time (s) | inference "
             "(ms/sample) | epochs | best epoch | status |",
             "|---|---|---|---|---|---|---|---|"]

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    for row in rows:
        lines.append(
            f"| {row['cell']} | {number(row[key], '.4f')} | "
            f"{number(row['params'], ',')} | {number(row['train_seconds'], '.1f')} | "
            f"{number(row['inference_ms_per_sample'], '.3f')} | "
            f"{row['epochs_run']} | {row['best_epoch']} | {row['status']} |")
    if data.task == "regression":
        lines.append("")
        lines.append(f"Always predicting the training mean scores test MSE "
                     f"{data.notes['baseline_mse']:.4f}.")
    return rows, "\n".join(lines) + "\n"


def compare(args, argv, data, run):
    """Train every cell on the same data and seed; write the comparison."""
    results, histories, predictions, sub_runs = {}, {}, {}, {}
    key, label = headline_metric(data)
    for cell in CELLS:
        print(f"\n=== {CELLS[cell]} ===")
        cell_args = copy.copy(args)
        cell_args.cell, cell_args.compare, cell_args.resume = cell, False, None
        cell_args.out = str(run.path / cell)
        sub_runs[cell] = Run.create(LAB, cell_args, cell_argv(argv, cell))
        sub_runs[cell].write_config(data=data.describe())
        try:
            results[cell], predictions[cell] = train_cell(cell_args, data, cell,
                                                          sub_runs[cell])
        except cli.RunInterrupted:
            write_comparison(args, data, run, results, histories, predictions,
                             sub_runs, interrupted=True)
            raise
        except WorkbookError as error:  # diverged: keep going with the others
            print(f"warning: {CELLS[cell]} failed: {error}")
            results[cell] = {"status": "diverged"}
        histories[cell] = read_history(sub_runs[cell])
    return write_comparison(args, data, run, results, histories, predictions,
                            sub_runs)


def read_history(cell_run):
    path = cell_run.path / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def write_comparison(args, data, run, results, histories, predictions, sub_runs,
                     interrupted=False):
    key, label = headline_metric(data)
    title = (f"Lab 2 arch {args.arch}: SimpleRNN vs LSTM vs GRU on {data.name}, "
             f"{data.seq_len} steps")
    rows, table = comparison_table(results, data)
    run.write_json("comparison.json", {"dataset": data.name, "arch": args.arch,
                                       "metric": key, "rows": rows,
                                       **{k: v for k, v in data.notes.items()}})
    atomic_write_text(run.path / "comparison.md", f"# {title}\n\n{table}")
    history_rows, history_csv = history_table(histories)
    atomic_write_text(run.path / "history.csv", history_csv)
    run.write_json("history.json", history_rows)
    if histories:
        best_epochs = {cell: results.get(cell, {}).get("best_epoch")
                       for cell in histories}
        cell_learning_curves(histories, data, run.plots / "learning_curves.png",
                             title, best_epochs)
    finished = {cell: metrics for cell, metrics in results.items()
                if metrics.get(key) is not None}
    if finished:
        comparison_bars(finished, data, run.plots / "comparison.png", title)
    shown = {CELLS[cell]: values for cell, values in predictions.items()
             if values is not None}
    if shown:
        predictions_plot(shown, data, run.plots / "predictions.png", title)
    metrics = {"status": "interrupted" if interrupted else "completed"}
    if finished:
        choose = min if data.task == "regression" else max
        best = choose(finished, key=lambda cell: finished[cell][key])
        metrics["best_cell"] = best
        metrics.update({name: value for name, value in finished[best].items()
                        if name != "status"})
        run.save_model(keras.saving.load_model(sub_runs[best].path / "model.keras"))
    metrics["train_seconds"] = round(sum(
        result.get("train_seconds", 0.0) for result in results.values()), 2)
    for cell, result in results.items():
        for name in (key, "params", "train_seconds", "inference_ms_per_sample",
                     "best_epoch", "status"):
            if name in result:
                metrics[f"{cell}_{name}"] = result[name]
    run.write_metrics(metrics)
    sections = [("Comparison (test set)", table),
                ("Sub-runs", "\n".join(f"- [{CELLS[cell]}]({cell}/report.md)"
                                       for cell in sub_runs))]
    run.write_report(title, metrics, sections)
    print(f"\n{table}")
    return metrics


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def parse_args(argv):
    parser = cli.make_parser(
        LAB, "Lab 2: SimpleRNN vs LSTM vs GRU on sequences.",
        ARCHITECTURES, default_arch="3", default_dataset="adding",
        datasets_help="adding (generated, default), seasonal (generated series "
                      "forecasting), digits (embedded, rows as steps), "
                      "imdb_reviews (tfds)",
        epochs=None, batch_size=HYPERPARAMETERS["batch_size"],
        learning_rate=HYPERPARAMETERS["learning_rate"],
        patience=HYPERPARAMETERS["patience"],
    )
    parser._option_string_actions["--epochs"].help = (
        "maximum number of epochs, EarlyStopping may stop sooner; left out (None): "
        + ", ".join(f"{name} {count}" for name, count
                    in HYPERPARAMETERS["epochs"].items()))
    parser.add_argument("--cell", choices=list(CELLS), default="simple",
                        help="recurrent layer: SimpleRNN, LSTM or GRU")
    parser.add_argument("--compare", action="store_true",
                        help="train all three cells on the same data and seed, "
                             "and write comparison plots and a table")
    parser.add_argument("--seq-len", type=cli.positive_int, default=None,
                        help="steps per sequence; left out (None): adding "
                             f"{SEQ_LEN['adding']}, seasonal {SEQ_LEN['seasonal']}, "
                             f"imdb_reviews {SEQ_LEN['imdb_reviews']} tokens; "
                             "digits is always 8 rows")
    parser.add_argument("--num-sequences", type=cli.positive_int,
                        default=HYPERPARAMETERS["num_sequences"],
                        help="training sequences (adding) or windows (seasonal)")
    parser.add_argument("--units", type=cli.positive_int,
                        default=HYPERPARAMETERS["units"],
                        help="units per recurrent layer")
    parser.add_argument("--clipnorm", type=cli.positive_float,
                        default=HYPERPARAMETERS["clipnorm"],
                        help="clip each gradient to this norm (off by default; "
                             "try 1.0 and watch what it does for SimpleRNN)")
    parser.add_argument("--vocabulary-size", type=cli.positive_int,
                        default=HYPERPARAMETERS["vocabulary_size"],
                        help="imdb_reviews: words kept in the vocabulary")
    parser.add_argument("--threads", type=cli.positive_int,
                        default=HYPERPARAMETERS["threads"],
                        help="torch intra-op threads (1 is fastest for small RNNs)")
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS:
        parser.error(f"unknown --dataset {args.dataset!r}; choose one of "
                     f"{', '.join(DATASETS)}")
    cell_given = any(item == "--cell" or item.startswith("--cell=") for item in argv)
    if args.compare and cell_given:
        parser.error("--compare trains all three cells; leave out --cell")
    if args.compare and args.resume:
        parser.error("a --compare run cannot be resumed as a whole; resume one "
                     "cell's sub-run (--resume RUN_DIR/lstm) or start it again")
    if args.dataset == "digits" and args.seq_len not in (None, 8):
        parser.error("--dataset digits is always read as 8 rows of 8 pixels; "
                     "leave out --seq-len")
    if args.seq_len is None:
        args.seq_len = SEQ_LEN[args.dataset]
    if args.epochs is None:
        args.epochs = HYPERPARAMETERS["epochs"][args.dataset]
    if args.compare:
        args.cell = ",".join(CELLS)
    if args.quick:
        args.epochs = min(args.epochs, QUICK["epochs"])
    return args


def main(argv=None):
    argv = cli.resume_argv(sys.argv[1:] if argv is None else list(argv), LAB)
    args = parse_args(argv)
    configure_threads(args.threads)
    seed_everything(args.seed)
    data = load_data(args)
    run = Run.create(LAB, args, argv)
    run.write_config(data=data.describe())
    print(f"data: {data.source}: {len(data.x_train)} train, {len(data.x_val)} "
          f"validation, {len(data.x_test)} test sequences of shape "
          f"{data.input_shape}")
    if "baseline_mse" in data.notes:
        print(f"baseline: always predicting the training mean scores test MSE "
              f"{data.notes['baseline_mse']:.4f}")
    if args.compare:
        metrics = compare(args, argv, data, run)
    else:
        metrics, _ = train_cell(args, data, args.cell, run)
        if data.name == "adding" and metrics.get("mse", 0) > 0.5 * metrics.get(
                "baseline_mse", 1):
            print(f"note: the {CELLS[args.cell]} did not carry the first marked "
                  "value across the gap; compare --cell lstm, --cell gru or "
                  "--compare.")
    run.finish()
    return metrics


if __name__ == "__main__":
    sys.exit(cli.run(main))
