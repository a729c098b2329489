"""Lab 2: recurrent networks, SimpleRNN vs LSTM vs GRU.

    python -m labs.lab2_rnn --arch 3                  # headline: LSTM, Seattle weather
    python -m labs.lab2_rnn --arch 3 --cell simple    # the same network, SimpleRNN
    python -m labs.lab2_rnn --dataset adding --compare  # gated cells vs SimpleRNN
    python -m labs.lab2_rnn --dataset digits          # 8x8 digits read row by row
    python -m labs.lab2_rnn --dataset imdb_reviews    # sentiment (tfds)

What it teaches: how a recurrent layer reads a sequence one step at a time, and
why gated cells (LSTM, GRU) carry information over long spans where a plain
SimpleRNN cannot.

The default data is a real series: the daily Seattle weather of 2012-2015 that
ships inside the vega-datasets package (1,461 days of maximum and minimum
temperature, precipitation and wind). A model reads the last 14 days and
forecasts tomorrow's maximum temperature. Splits are consecutive in time (the
last 365 days test, the 180 before them validate), and two baselines are printed
beside the model's test MSE (in degrees C squared): repeating today's maximum
(``persistence_mse``) and always predicting the training mean (``baseline_mse``);
a ridge regression on the same windows (``ridge_mse``) shows what a linear model
gets. ``--dataset adding`` is the long-memory lesson: 50 steps of (value, marker)
pairs, target = the sum of the two marked values (the mean scores MSE 1/6); its
``--compare`` trains all three cells and shows the gated ones solving it.

Architectures (the course's numbering; ``--cell`` swaps the recurrent layer):

- ``--arch 1``: recurrent(32, tanh) -> Dense(32, relu) -> output; Adam.
- ``--arch 2``: recurrent(32, tanh) -> Dense(64) -> Dense(64) -> Dense(32) (relu)
  -> output; RMSprop.
- ``--arch 3``: recurrent(32, tanh) -> recurrent(32, relu) -> Dense(32, relu) ->
  output; Adam. The relu is the course's, for SimpleRNN; LSTM and GRU keep tanh.

The default cell is LSTM: on the weather series the course's SimpleRNN only ties
with persistence (README), the gated cells beat it. ``--compare`` trains all
three cells for the chosen arch. No masking: a mask
sends Keras's LSTM/GRU on torch to a Python time loop, so text is pre-padded.
One torch thread by default (``--threads``): a recurrent step is a tiny matrix
product where a second thread costs more than it saves (bench/rnn_speed.py).

Measured results (3 seeds): see the README's results table.
"""

import sys

import keras
import numpy as np

from common import cli, experiment, plots
from common.cli import WorkbookError
from common.data import Splits, check_arrays, load_images, load_text, make_adding
from common.text import pre_pad
from common.training import evaluate_classifier, inference_ms_per_image

HYPERPARAMETERS = {
    "units": 32,  # recurrent units per layer
    "epochs": {"weather": 80, "adding": 12, "digits": 40, "imdb_reviews": 6},
    "batch_size": {"weather": 32, "adding": 128, "digits": 128, "imdb_reviews": 128},
    "learning_rate": 3e-3,  # Adam / RMSprop step size
    "patience": {"weather": 15, "adding": 8, "digits": 8, "imdb_reviews": 3},
    "clipnorm": None,  # gradient norm clipping, off (see --clipnorm)
    "num_sequences": 8000,  # adding: training sequences (1,000 val, 2,000 test)
    "vocabulary_size": 10000,  # imdb_reviews: most frequent words kept
    "embedding_dim": 32,  # imdb_reviews: token embedding width
}
SEQ_LEN = {"weather": 14, "adding": 50, "digits": 8, "imdb_reviews": 200}
WEATHER_COLUMNS = ("temp_max", "temp_min", "precipitation", "wind")
WEATHER_SPLIT_DAYS = {"test": 365, "val": 180}
CELLS = {"simple": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}


# ----------------------------------------------------------------------------
# Data: every set comes back as a Splits with three disjoint splits
# ----------------------------------------------------------------------------
def windows(series, seq_len):
    """Every window of ``seq_len`` rows (N, T, F) and the index of the next row."""
    count = len(series) - seq_len
    index = np.arange(seq_len)[None, :] + np.arange(count)[:, None]
    return series[index].astype("float32"), np.arange(seq_len, len(series))


def load_weather(seq_len):
    """Seattle's daily weather (vega-datasets, offline): 14 days -> next temp_max.

    Targets are split in time: the last 365 days test, the 180 before validate.
    A window may read days of the split before it (its inputs), never its target.
    Inputs and target are standardized with the training stretch's statistics.
    """
    from sklearn.linear_model import Ridge
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    values = frame[list(WEATHER_COLUMNS)].to_numpy("float64")
    check_arrays("seattle_weather", values=values)
    x, target_rows = windows(values, seq_len)
    y = values[target_rows, 0]
    test_start = len(y) - WEATHER_SPLIT_DAYS["test"]
    val_start = test_start - WEATHER_SPLIT_DAYS["val"]
    if val_start < 50:
        raise WorkbookError(
            f"--seq-len {seq_len} leaves only {max(val_start, 0)} training days of "
            f"the {len(values)}; use a window of at most {len(y) - 595} days."
        )
    train_values = values[: target_rows[val_start]]
    mean, std = train_values.mean(0), train_values.std(0)
    x = ((x - mean) / std).astype("float32")
    y_scaled = ((y - mean[0]) / std[0]).astype("float32")
    parts = np.split(np.arange(len(y)), [val_start, test_start])
    splits = Splits(
        "weather",
        "vega-datasets seattle_weather (real, 2012-2015): "
        f"{seq_len} days of {', '.join(WEATHER_COLUMNS)} -> next day's temp_max",
        *[array[index] for index in parts for array in (x, y_scaled)],
        task="regression",
        embedded=True,
    )
    train, test = parts[0], parts[2]
    ridge = Ridge(1.0).fit(x[train].reshape(len(train), -1), y[train])
    predicted = ridge.predict(x[test].reshape(len(test), -1))
    splits.notes.update(
        target_unit="degrees C",
        target_scale=[float(mean[0]), float(std[0])],
        persistence_mse=float(np.mean((y[test - 1] - y[test]) ** 2)),
        baseline_mse=float(np.mean((y[test] - y[train].mean()) ** 2)),
        ridge_mse=float(np.mean((predicted - y[test]) ** 2)),
        test_dates=[
            str(frame["date"].iloc[target_rows[i]].date()) for i in test[[0, -1]]
        ],
    )
    return splits


def load_adding(seq_len, num_train, seed):
    if seq_len < 2:
        raise WorkbookError(
            f"the adding problem needs at least 2 steps (one marker in each half), "
            f"got --seq-len {seq_len}. Use e.g. --seq-len {SEQ_LEN['adding']}."
        )
    x, y = make_adding(num_train + 3000, seq_len, seed)
    parts = np.split(np.arange(len(y)), [num_train, num_train + 1000])
    splits = Splits(
        "adding",
        f"generated adding problem, {seq_len} steps of (value, marker)",
        *[array[index] for index in parts for array in (x, y)],
        task="regression",
        embedded=True,
    )
    test, train = parts[2], parts[0]
    splits.notes["baseline_mse"] = float(np.mean((y[test] - y[train].mean()) ** 2))
    return splits


def load_digit_rows(args):
    """scikit-learn's 8x8 digits as sequences of 8 rows of 8 pixels."""
    splits = load_images("digits", seed=args.seed)
    for part in ("train", "val", "test"):
        setattr(splits, f"x_{part}", getattr(splits, f"x_{part}")[..., 0])
    splits.source += ", read row by row (8 steps x 8 pixels)"
    return splits


def load_imdb(args):
    """IMDB reviews (tfds) as pre-padded token ids; the vocabulary is adapted on
    the training texts only, in the data pipeline (the model stays plain Keras)."""
    from sklearn.model_selection import train_test_split

    (texts, labels), (test_texts, test_labels) = load_text("imdb_reviews")
    x_train, x_val, y_train, y_val = train_test_split(
        np.asarray(texts), labels, test_size=0.1, random_state=args.seed
    )
    vectorizer = keras.layers.TextVectorization(
        max_tokens=args.vocabulary_size, output_sequence_length=args.seq_len
    )
    vectorizer.adapt(x_train, batch_size=1024)

    def encode(texts):
        return pre_pad(keras.ops.convert_to_numpy(vectorizer(texts))).astype("int32")

    splits = Splits(
        "imdb_reviews",
        f"tensorflow-datasets imdb_reviews, first {args.seq_len} tokens, pre-padded",
        *(encode(x_train), y_train, encode(x_val), y_val),
        *(encode(np.asarray(test_texts)), test_labels),
        task="binary",
        class_names=["negative", "positive"],
    )
    splits.notes["vocabulary_size"] = len(vectorizer.get_vocabulary())
    return splits


def load_data(args):
    if args.dataset == "weather":
        return load_weather(args.seq_len)
    if args.dataset == "adding":
        return load_adding(args.seq_len, args.num_sequences, args.seed)
    if args.dataset == "digits":
        return load_digit_rows(args)
    return load_imdb(args)


# ----------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------
def recurrent(cell, units, name, activation="tanh", return_sequences=False):
    """A SimpleRNN, LSTM or GRU layer: the one piece ``--cell`` swaps."""
    layer = getattr(keras.layers, CELLS[cell])
    return layer(
        units, activation=activation, return_sequences=return_sequences, name=name
    )


def sequence_inputs(splits):
    """The model's input, and its first tensor (token ids are embedded)."""
    if splits.task == "binary":
        inputs = keras.Input(splits.input_shape, dtype="int32", name="token_ids")
        vocabulary = splits.notes["vocabulary_size"]
        embedding_dim = HYPERPARAMETERS["embedding_dim"]
        return inputs, keras.layers.Embedding(vocabulary, embedding_dim)(inputs)
    inputs = keras.Input(splits.input_shape, name="sequence")
    return inputs, inputs


def output_layer(splits, x):
    if splits.task == "classification":
        return keras.layers.Dense(
            splits.num_classes, activation="softmax", name="softmax"
        )(x)
    if splits.task == "binary":
        return keras.layers.Dense(1, activation="sigmoid", name="sigmoid")(x)
    return keras.layers.Dense(1, name="prediction")(x)


def build_arch1(x, cell, units):
    """recurrent(tanh) -> Dense(32, relu)."""
    x = recurrent(cell, units, f"{cell}_1")(x)
    return keras.layers.Dense(32, activation="relu", name="dense_32")(x)


def build_arch2(x, cell, units):
    """recurrent(tanh) -> Dense(64) -> Dense(64) -> Dense(32), relu."""
    x = recurrent(cell, units, f"{cell}_1")(x)
    for index, width in enumerate((64, 64, 32), start=1):
        x = keras.layers.Dense(width, activation="relu", name=f"dense{index}")(x)
    return x


def build_arch3(x, cell, units):
    """Two stacked recurrent layers -> Dense(32, relu). The course's second
    SimpleRNN uses relu; a gated cell keeps tanh (relu inside an LSTM let its cell
    state grow without bound: the training loss jumped to 2.8 on adding)."""
    x = recurrent(cell, units, f"{cell}_1", return_sequences=True)(x)
    activation = "relu" if cell == "simple" else "tanh"
    x = recurrent(cell, units, f"{cell}_2", activation=activation)(x)
    return keras.layers.Dense(32, activation="relu", name="dense_32")(x)


ARCHITECTURES = {"1": build_arch1, "2": build_arch2, "3": build_arch3}
OPTIMIZERS = {"1": "Adam", "2": "RMSprop", "3": "Adam"}
LOSSES = {
    "regression": ("mse", ["mae"]),
    "binary": ("binary_crossentropy", ["accuracy"]),
    "classification": ("sparse_categorical_crossentropy", ["accuracy"]),
}


def build_model(args, splits):
    inputs, x = sequence_inputs(splits)
    x = ARCHITECTURES[args.arch](x, args.cell, args.units)
    model = keras.Model(
        inputs, output_layer(splits, x), name=f"arch{args.arch}_{args.cell}"
    )
    optimizer = getattr(keras.optimizers, OPTIMIZERS[args.arch])
    loss, metrics = LOSSES[splits.task]
    model.compile(
        optimizer=optimizer(args.learning_rate, clipnorm=args.clipnorm),
        loss=loss,
        metrics=metrics,
    )
    return model


# ----------------------------------------------------------------------------
# Evaluation and plots
# ----------------------------------------------------------------------------
def evaluate(model, splits, run, args):
    title = experiment.default_title(LAB, args)
    inference = inference_ms_per_image(model, splits.x_test[:512])
    if splits.task != "regression":
        figures, _, report = evaluate_classifier(
            model, run, splits.x_test, splits.y_test, splits.class_names, title
        )
        run.add_section("Classification report (test set)", f"```\n{report}```")
        return {**figures, "inference_ms_per_sample": inference}
    predicted = model.predict(splits.x_test, batch_size=512, verbose=0).reshape(-1)
    truth = splits.y_test
    offset, scale = splits.notes.get("target_scale", (0.0, 1.0))
    predicted, truth = offset + scale * predicted, offset + scale * truth
    figures = {
        "mse": float(np.mean((predicted - truth) ** 2)),
        "mae": float(np.mean(np.abs(predicted - truth))),
        **{k: v for k, v in splits.notes.items() if k.endswith("_mse")},
        "inference_ms_per_sample": inference,
    }
    predictions_plot(splits, truth, predicted, figures, run.plots / "predictions.png")
    return figures


def predictions_plot(splits, truth, predicted, figures, path):
    """plots/predictions.png: the test year in time (weather) beside persistence,
    or predicted against true targets (adding)."""
    title = f"Lab 2 on {splits.name}: test-set predictions"
    if splits.name != "weather":
        unit = "sum of the two marked values"
        return plots.predicted_vs_true(truth, predicted, path, title, unit)
    days = np.arange(len(truth))
    first, last = splits.notes["test_dates"]
    series = {
        "observed": (days, truth),
        f"persistence (MSE {figures['persistence_mse']:.2f})": (days[1:], truth[:-1]),
        f"model (MSE {figures['mse']:.2f})": (days, predicted),
    }
    return plots.curves(
        series,
        path,
        title,
        f"test day ({first} to {last})",
        "next day's maximum temperature (degrees C)",
        style="-",
    )


def summary(metrics):
    if "mse" not in metrics:
        return (
            f"test accuracy {metrics['test_accuracy']:.4f}, macro F1 "
            f"{metrics['macro_f1']:.4f}, {metrics['train_seconds']:.0f} s training"
        )
    baselines = [
        k for k in ("baseline_mse", "persistence_mse", "ridge_mse") if k in metrics
    ]
    text = ", ".join(f"{k.split('_')[0]} {metrics[k]:.4f}" for k in baselines)
    return f"test MSE {metrics['mse']:.4f} ({text}); {metrics['train_seconds']:.0f} s"


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument(
        "--cell",
        choices=list(CELLS),
        default=None,
        help="recurrent layer: SimpleRNN, LSTM (default) or GRU",
    )
    parser.add_argument(
        "--seq-len",
        type=cli.positive_int,
        default=None,
        help="steps per sequence; default per dataset: "
        + ", ".join(f"{k} {v}" for k, v in SEQ_LEN.items()),
    )
    parser.add_argument(
        "--num-sequences",
        type=cli.positive_int,
        default=HYPERPARAMETERS["num_sequences"],
        help="adding: training sequences",
    )
    parser.add_argument(
        "--units",
        type=cli.positive_int,
        default=HYPERPARAMETERS["units"],
        help="units per layer",
    )
    parser.add_argument(
        "--clipnorm",
        type=cli.positive_float,
        default=None,
        help="clip each gradient to this norm (try 1.0 for SimpleRNN)",
    )
    parser.add_argument(
        "--vocabulary-size",
        type=cli.positive_int,
        default=HYPERPARAMETERS["vocabulary_size"],
        help="imdb_reviews: words kept in the vocabulary",
    )


def check_arguments(args, parser):
    if args.dataset not in SEQ_LEN:
        parser.error(
            f"unknown --dataset {args.dataset!r}; choose one of {', '.join(SEQ_LEN)}"
        )
    if args.compare and args.cell is not None:
        parser.error("--compare trains all three cells; leave out --cell")
    args.cell = args.cell or "lstm"
    if args.dataset == "digits" and args.seq_len not in (None, 8):
        parser.error(
            "--dataset digits is always read as 8 rows of 8 pixels; leave out --seq-len"
        )
    args.seq_len = args.seq_len or SEQ_LEN[args.dataset]
    for name in ("epochs", "batch_size", "patience"):
        if getattr(args, name) is None:
            setattr(args, name, HYPERPARAMETERS[name][args.dataset])


LAB = experiment.Lab(
    name="lab2_rnn",
    description="Lab 2: SimpleRNN vs LSTM vs GRU on sequences.",
    hyperparameters={
        "learning_rate": HYPERPARAMETERS["learning_rate"],
        "epochs": None,
        "batch_size": None,
        "patience": None,
    },
    architectures=ARCHITECTURES,
    default_arch="3",
    datasets="weather (real daily series, default), adding (generated), digits "
    "(embedded, rows as steps), imdb_reviews (tfds)",
    default_dataset="weather",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    headline=lambda args: (
        ("mse", "min")
        if args.dataset in ("weather", "adding")
        else ("test_accuracy", "max")
    ),
    variants=lambda args: {cell: {"cell": cell} for cell in CELLS},
    summary=summary,
    title=lambda args: f"Lab 2 arch {args.arch} ({CELLS[args.cell]}) on {args.dataset}",
    threads=1,
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
