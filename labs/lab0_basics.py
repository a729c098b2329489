"""Lab 0: first steps -- an MLP fitting cos(x), and convolution as a Sobel filter.

    python -m labs.lab0_basics                    # --task cosine: MLP fits cos(x)
    python -m labs.lab0_basics --compare          # tanh vs relu vs gelu vs sigmoid
    python -m labs.lab0_basics --task sobel       # Sobel filter, fixed then learned

What it teaches. **cosine**: a three-layer fully connected network learns cos(x)
from points of one interval. Half the test points lie inside that interval, half
just outside, and the two errors differ by orders of magnitude: the network
interpolates, it does not extrapolate (tanh flattens out, relu goes on in a
straight line). **sobel**: a convolution slides a small kernel over the image; the
fixed Sobel kernels (kernels/conv.py) pick out vertical and horizontal edges in
two real photographs shipped with scikit-learn; then one trainable 3x3
convolution, randomly initialised, is fitted to (image, Sobel output) pairs until
its kernel is the Sobel kernel. Photographs are smooth, so the loss is tiny long
before the kernel is right: watch the kernel, not only the loss.

Measured results: README.md, results table (Lab 0 rows).
"""

import argparse
import math
import sys

import keras
import numpy as np

from common import cli, experiment, plots
from common.callbacks import Snapshots
from common.data import Splits
from common.runs import atomic_write_json
from kernels.conv import SOBEL_X, SOBEL_Y, SobelEdges

HYPERPARAMETERS = {
    "epochs": 100,  # maximum; EarlyStopping on val_loss stops cosine sooner
    "batch_size": 32,  # points (cosine) or image tiles (sobel) per step
    "learning_rate": 0.05,  # Adam step size
    "patience": 10,  # epochs without val_loss improvement before stopping
    "units": 64,  # neurons in each of the MLP's two hidden layers
    "activation": "tanh",  # the MLP's hidden activation
    "interval": (-math.pi, math.pi),  # radians: where cos(x) is sampled to train
    "num_points": 2000,  # training points; validation 500, test 1,000 + 1,000
    "outside": 0.5,  # width of each outside test band, as a share of the interval
    "tile_size": 32,  # pixels: photographs are cut into square tiles of this size
}
ACTIVATIONS = ("tanh", "relu", "gelu", "sigmoid")
DATASETS = {"cosine": "cosine", "sobel": "sample_images"}  # each task's own data
LUMA = np.array([0.299, 0.587, 0.114], dtype="float32")  # RGB to grey, ITU-R 601
SOBEL_KERNEL = np.stack([SOBEL_X, SOBEL_Y], axis=-1)[:, :, None, :]  # (3, 3, 1, 2)


# -- Data: points of cos(x), and tiles of photographs with their Sobel output --------
def load_data(args):
    if args.arch == "cosine":
        return cosine_splits(args.interval, args.seed)
    return photograph_splits(args.seed)


def function_splits(name, source, target, x_train, x_val, x_test, **notes):
    """Splits of (x, target(x)) pairs: every label is a known function of its x."""
    y_test = target(x_test)
    notes["mean_predictor_test_mse"] = float(np.var(y_test))
    return Splits(
        name,
        source,
        x_train,
        target(x_train),
        x_val,
        target(x_val),
        x_test,
        y_test,
        task="regression",
        embedded=True,
        notes=notes,
    )


def cosine_splits(interval, seed, num_points=HYPERPARAMETERS["num_points"]):
    """Training and validation points inside the interval; test points half
    inside, half in the two bands just outside it."""
    low, high = interval
    band = HYPERPARAMETERS["outside"] * (high - low)
    rng = np.random.default_rng(seed)

    def uniform(start, stop, count):
        return rng.uniform(start, stop, (count, 1)).astype("float32")

    outside = [uniform(low - band, low, 500), uniform(high, high + band, 500)]
    x_test = rng.permutation(np.concatenate([uniform(low, high, 1000), *outside]))
    source = (
        f"cos(x) at uniform random x in [{low:.4g}, {high:.4g}] (generated, seed "
        f"{seed}); half the test points lie in the {band:.3g} wide bands outside"
    )
    x_train, x_val = uniform(low, high, num_points), uniform(low, high, 500)
    return function_splits("cosine", source, np.cos, x_train, x_val, x_test)


def read_photographs():
    """scikit-learn's two real photographs (427 x 640) as grey values in [0, 1]."""
    from sklearn.datasets import load_sample_images

    return [image @ LUMA / 255 for image in load_sample_images().images]


def sobel_targets(images):
    """The fixed Sobel filter's output (Sobel x, Sobel y) as numpy, (N, H, W, 2)."""
    return keras.ops.convert_to_numpy(SobelEdges(output_mode="xy")(images))


def photograph_splits(seed):
    """Non-overlapping grey tiles of the photographs, split 70/15/15 at random."""
    size = HYPERPARAMETERS["tile_size"]
    tiles = [
        photo[top : top + size, left : left + size, None]
        for photo in read_photographs()
        for top in range(0, photo.shape[0] - size + 1, size)
        for left in range(0, photo.shape[1] - size + 1, size)
    ]
    tiles = np.stack(tiles)[np.random.default_rng(seed).permutation(len(tiles))]
    source = (
        "scikit-learn's photographs china.jpg and flower.jpg (427 x 640), cut into "
        f"{len(tiles)} grey tiles of {size} x {size} pixels; targets: their Sobel x, y"
    )
    parts = np.split(tiles, [int(0.7 * len(tiles)), int(0.85 * len(tiles))])
    return function_splits("sample_images", source, sobel_targets, *parts)


# -- Builders ------------------------------------------------------------------------
def build_cosine_mlp(units=64, activation="tanh", name="cosine_mlp"):
    """Three fully connected layers: x -> units -> units -> cos(x)."""
    inputs = keras.Input((1,), name="x")
    x = keras.layers.Dense(units, activation=activation, name="hidden1")(inputs)
    x = keras.layers.Dense(units, activation=activation, name="hidden2")(x)
    outputs = keras.layers.Dense(1, name="cos_x")(x)
    return keras.Model(inputs, outputs, name=name)


def build_learned_sobel(name="learned_sobel"):
    """One trainable 3x3 convolution, no bias, two filters (to become Sobel x, y).

    Randomly initialised (Glorot uniform); "same" zero padding, as SobelEdges uses,
    so the Sobel kernel reproduces the targets exactly, borders included.
    """
    inputs = keras.Input((None, None, 1), name="grey_image")
    convolution = keras.layers.Conv2D(
        2, 3, padding="same", use_bias=False, name="kernel"
    )
    return keras.Model(inputs, convolution(inputs), name=name)


ARCHITECTURES = {"cosine": build_cosine_mlp, "sobel": build_learned_sobel}


def build_model(args, splits):
    if args.arch == "cosine":
        model = build_cosine_mlp(HYPERPARAMETERS["units"], args.activation)
    else:
        model = build_learned_sobel()
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss="mse")
    return model


# -- Snapshots during training: the fit at a few epochs, the kernel at every epoch ---
def snapshots(path, capture, epochs=None):
    """A callback keeping ``capture(model)`` at epoch 0 and the chosen epochs (None:
    all) in a JSON file; a resumed run appends to it."""
    rows = experiment.read_json(path, [])

    def take(model, epoch, logs):
        value = np.asarray(capture(model), dtype="float64").tolist()
        rows[:] = [row for row in rows if row["epoch"] < epoch]  # no repeats
        rows.append({"epoch": epoch, "value": value})
        atomic_write_json(path, rows)

    return Snapshots(take, epochs, start=not rows)


def cosine_grid(interval, count=400):  # x over the interval and both outside bands
    band = HYPERPARAMETERS["outside"] * (interval[1] - interval[0])
    return np.linspace(interval[0] - band, interval[1] + band, count)[:, None]


def kernel_of(model):  # the learned (3, 3, 1, 2) kernel as numpy
    return keras.ops.convert_to_numpy(model.get_layer("kernel").kernel)


def fit_kwargs(args, splits, run):
    capture, epochs = kernel_of, None  # sobel: the kernel after every epoch
    if args.arch == "cosine":  # cosine: the output on a grid after a few epochs
        grid = cosine_grid(args.interval).astype("float32")
        epochs = [e for e in (1, 2, 5, 10, 20, 50, 100, 200, 500) if e <= args.epochs]

        def capture(model):
            return model.predict(grid, verbose=0)[:, 0]

    return {"callbacks": [snapshots(run.path / "snapshots.json", capture, epochs)]}


# -- Evaluation and plots ------------------------------------------------------------
def evaluate(model, splits, run, args):
    snapshots = experiment.read_json(run.path / "snapshots.json", [])
    if args.arch == "cosine":
        return evaluate_cosine(model, splits, run, args, snapshots)
    return evaluate_sobel(model, splits, run, snapshots)


def evaluate_cosine(model, splits, run, args, snapshots):
    x, truth = splits.x_test[:, 0], splits.y_test[:, 0]
    errors = (model.predict(splits.x_test, verbose=0)[:, 0] - truth) ** 2
    inside = (x >= args.interval[0]) & (x <= args.interval[1])
    figures = {
        "task": "cosine",
        "test_mse_inside": float(errors[inside].mean()),
        "test_mse_outside": float(errors[~inside].mean()),
    }
    plot_cosine(model, snapshots, splits, figures, args, run)
    return figures


def plot_cosine(model, snapshots, splits, figures, args, run):
    """plots/cosine_fit.png: the output at several epochs, and the final error."""
    import matplotlib.pyplot as plt

    x = cosine_grid(args.interval)[:, 0]
    final = model.predict(x[:, None].astype("float32"), verbose=0)[:, 0]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    for axis in (top, bottom):
        axis.axvspan(*args.interval, color="g", alpha=0.08, label="training interval")
    top.plot(x, np.cos(x), color="black", linewidth=3, label="cos(x)")
    shown = splits.x_train[:200, 0]
    rug = np.full_like(shown, -2.8)
    top.plot(shown, rug, "|", color="gray", label="training x (200 shown)")
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(snapshots), 1)))
    for color, row in zip(colors, snapshots):
        label = f"after epoch {row['epoch']}" if row["epoch"] else "before training"
        top.plot(x, row["value"], color=color, linewidth=1.2, label=label)
    top.plot(x, final, "r--", linewidth=2, label="final (best weights)")
    top.set(ylim=(-3, 3), ylabel="y", title="the network's output f(x) in training")
    bottom.semilogy(x, np.abs(final - np.cos(x)) + 1e-12, label="|f(x) - cos(x)|")
    for key, style in (("inside", "--"), ("outside", ":")):
        rms = np.sqrt(figures[f"test_mse_{key}"])
        bottom.axhline(rms, color="gray", linestyle=style, label=f"test RMSE {key}")
    bottom.set(xlabel="x (radians)", ylabel="absolute error (log scale)")
    bottom.set_title("error of the final network: small inside, large outside")
    for axis in (top, bottom):
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(title(args))
    plots.save(figure, run.plots / "cosine_fit.png")


def distances(snapshots):
    """Frobenius distances to Sobel: [both filters, filter 1, filter 2] a snapshot."""
    errors = [np.asarray(row["value"]) - SOBEL_KERNEL for row in snapshots]
    return [
        [float(np.linalg.norm(e[..., k])) for k in (slice(2), 0, 1)] for e in errors
    ]


def evaluate_sobel(model, splits, run, snapshots):
    kernel = kernel_of(model)
    predictions = model.predict(splits.x_test, verbose=0)
    plot_edges(read_photographs(), model, run)
    plot_kernels(snapshots, kernel, run)
    return {
        "task": "sobel",
        "kernel_error": distances([{"value": kernel}])[0][0],
        "initial_kernel_error": distances(snapshots[:1] or [{"value": kernel}])[0][0],
        "test_mse": float(np.mean((predictions - splits.y_test) ** 2)),
    }


def plot_edges(photos, model, run):
    """plots/sobel_filters.png: fixed filter on both photographs, learned on one."""
    import matplotlib.pyplot as plt

    images = [photo[None, :, :, None] for photo in photos]
    rows = [(f"photograph {i + 1}\nfixed Sobel", images[i]) for i in range(2)]
    rows.append(("photograph 1\nlearned 3x3 conv", images[0]))
    outputs = [*(sobel_targets(image)[0] for image in images), model(images[0])[0]]
    height, width = photos[0].shape
    figure, axes = plt.subplots(3, 4, figsize=(13, 9.6 * height / width + 1))
    for axes_row, (name, image), edges in zip(axes, rows, outputs):
        edges = keras.ops.convert_to_numpy(edges)
        panels = {
            "grey input": image[0, :, :, 0],
            "vertical edges: |filter 1|": np.abs(edges[..., 0]),
            "horizontal edges: |filter 2|": np.abs(edges[..., 1]),
            "gradient magnitude": np.hypot(edges[..., 0], edges[..., 1]),
        }
        for axis, (caption, panel) in zip(axes_row, panels.items()):
            axis.imshow(panel, cmap="gray", vmin=0, vmax=np.percentile(panel, 99.5))
            axis.set(xticks=[], yticks=[], title=caption if name == rows[0][0] else "")
        axes_row[0].set_ylabel(name)
    figure.suptitle(
        "Sobel filters (kernels/conv.py) on real photographs: brighter = stronger edge"
    )
    plots.save(figure, run.plots / "sobel_filters.png")


def plot_kernels(snapshots, kernel, run):
    """plots/learned_kernels.png: the kernel at a few epochs next to the Sobel
    kernel, and its distance to the Sobel kernel at every epoch."""
    import matplotlib.pyplot as plt

    last = snapshots[-1]["epoch"] if snapshots else 0
    columns = [
        (f"epoch {row['epoch']}" if row["epoch"] else "random init", row["value"])
        for row in snapshots
        if row["epoch"] in (0, 1, 2, 5, 10, 20, 50) and row["epoch"] < last
    ]
    columns += [(f"final (epoch {last})", kernel), ("Sobel (target)", SOBEL_KERNEL)]
    count = len(columns)
    layout = [[f"{row}.{i}" for i in range(count)] for row in (0, 1)]
    figure, axes = plt.subplot_mosaic(
        [*layout, ["curve"] * count],
        figsize=(1.3 * count + 2, 7.5),
        height_ratios=(1, 1, 2),
        layout="constrained",
    )
    for index, (caption, value) in enumerate(columns):
        for row in (0, 1):
            weights, axis = np.asarray(value)[:, :, 0, row], axes[f"{row}.{index}"]
            image = axis.imshow(weights, cmap="coolwarm", vmin=-2.5, vmax=2.5)
            for (i, j), weight in np.ndenumerate(weights):
                axis.text(j, i, f"{weight:.1f}", ha="center", va="center", fontsize=7)
            axis.set(xticks=[], yticks=[], title=caption if row == 0 else "")
            axis.title.set_fontsize(8)
    for row in (0, 1):
        axes[f"{row}.0"].set_ylabel(f"filter {row + 1}\n(Sobel {'xy'[row]})")
    figure.colorbar(image, ax=[axes[name[-1]] for name in layout], label="weight")
    epochs = [row["epoch"] for row in snapshots]
    names = ("both filters", "filter 1", "filter 2")
    for values, name in zip(zip(*distances(snapshots)), names):
        axes["curve"].semilogy(epochs, values, label=name)
    axes["curve"].set(
        xlabel="epoch (0 = random initialisation)",
        ylabel="distance to Sobel\n(Frobenius norm, log scale)",
    )
    axes["curve"].grid(alpha=0.3, which="both")
    axes["curve"].locator_params(axis="x", integer=True)
    axes["curve"].legend()
    figure.suptitle("The trainable 3x3 kernel becomes the Sobel kernel")
    figure.savefig(run.plots / "learned_kernels.png", dpi=plots.DPI)
    plt.close(figure)


# -- Command line and the runner -----------------------------------------------------
def add_arguments(parser):
    parser.add_argument(
        "--task",
        dest="arch",
        choices=list(ARCHITECTURES),
        default=argparse.SUPPRESS,
        help="another name for --arch: cosine (MLP fits cos x) or sobel (3x3 conv)",
    )
    parser.add_argument(
        "--interval",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        default=list(HYPERPARAMETERS["interval"]),
        help="cosine: the training interval of x, in radians",
    )
    parser.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=HYPERPARAMETERS["activation"],
        help="cosine: the hidden layers' activation",
    )


def check_arguments(args, parser):
    own = DATASETS[args.arch]
    args.dataset = own if args.dataset == "auto" else args.dataset
    if args.dataset != own or args.test_dataset:
        parser.error(
            f"--task {args.arch} uses its own data (--dataset {own}, generated or "
            "shipped with scikit-learn, with its test set held out): leave out "
            "--dataset and --test-dataset"
        )
    low, high = args.interval
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        parser.error(f"--interval needs finite numbers LOW < HIGH, got {low} {high}")
    if args.compare and args.arch == "sobel":
        parser.error(
            "--compare compares the cosine MLP's activations; --task sobel trains "
            "one convolution, so there is nothing to compare"
        )


def title(args):
    if args.arch == "sobel":
        return "Lab 0: a 3x3 convolution learning Sobel"
    low, high = args.interval
    return f"Lab 0: {args.activation} MLP fitting cos(x) on [{low:.3g}, {high:.3g}]"


def summary(metrics):
    if metrics.get("task") == "sobel":
        result = (
            f"kernel distance to Sobel {metrics['initial_kernel_error']:.3f} -> "
            f"{metrics['kernel_error']:.2g}, test MSE {metrics['test_mse']:.2e}"
        )
    else:
        result = (
            f"test MSE inside the interval {metrics.get('test_mse_inside'):.2e}, "
            f"just outside {metrics.get('test_mse_outside'):.3f}"
        )
    return f"{result}, {metrics.get('train_seconds', 0):.0f} s training"


LAB = experiment.Lab(
    name="lab0_basics",
    description="Lab 0: an MLP fitting cos(x); convolution as a Sobel filter.",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch="cosine",
    datasets="auto: the task's own, cosine (generated points, for --task cosine) "
    "or sample_images (scikit-learn's two photographs, for --task sobel)",
    default_dataset="auto",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    headline=lambda args: (
        ("kernel_error", "min") if args.arch == "sobel" else ("test_mse_inside", "min")
    ),
    fit_kwargs=fit_kwargs,
    variants=lambda args: {name: {"activation": name} for name in ACTIVATIONS},
    summary=summary,
    title=title,
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
