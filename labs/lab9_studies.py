"""Lab 9: architecture studies -- what a choice of layers does, measured.

    python -m labs.lab9_studies                   # --study models: FC, CNN, ResNet
    python -m labs.lab9_studies --study kernels   # 3x3 5x5 7x7 1x1+3x3, same size
    python -m labs.lab9_studies --study depth     # 2-16 layers, gradients, clipping
    python -m labs.lab9_studies --study blocks    # basic, bottleneck, wide; 3 seeds
    python -m labs.lab9_studies --dataset folder:.data/mnist/train \\
        --test-dataset folder:.data/mnist/test --train-images 5000

What it teaches: a study is a controlled comparison -- the same data, seed and
hyperparameters for every variant, one thing changed. ``models``: a fully
connected network against a CNN and a ResNet (with and without regularization):
accuracy, overfitting (the train-test gap), parameters, time. ``kernels``: on one
parameter budget, bigger kernels see more (receptive field) with fewer filters.
``depth``: per-layer gradient norms, recorded by a callback during training, show
gradients fading in deep plain stacks, and what skips and clipping do.
``blocks``: residual block designs over several seeds, so that a difference can
be told from seed noise. Each study's report.md ends with a paragraph written
from its measured numbers.

Measured results (digits, real MNIST and CIFAR-10): see the README's results table.
"""

import functools
import json
import re
import sys

import keras
import numpy as np

from common import cli, experiment, plots
from common.data import load_images
from common.training import evaluate_classifier, inference_ms_per_image

HYPERPARAMETERS = {
    "epochs": 20,  # maximum per variant; EarlyStopping on val_loss stops sooner
    "batch_size": 64,  # images per step
    "learning_rate": 1e-3,  # Adam step size
    "patience": 5,  # epochs without val_loss improvement before stopping
    "width": 32,  # filters of the first conv layer; sets the kernel study's budget
    "dense_units": (256, 128, 64),  # hidden units of the fully connected network
    "weight_decay": 5e-4,  # L2 penalty per squared weight (regularized ResNet)
    "dropout": 0.3,  # dropout rate before the classifier (regularized ResNet)
    "clipnorm": 1.0,  # global gradient-norm threshold of the clipped depth variant
    "probe_images": 256,  # training images the gradient norms are measured on
}
BN_MOMENTUM = 0.9  # few steps an epoch on small sets: Keras's 0.99 adapts too slowly
STUDIES = {
    "models": ("fc", "cnn", "resnet", "resnet_regularized"),
    "kernels": ("k3", "k5", "k7", "k1_3"),
    "depth": ("plain2", "plain4", "plain8", "plain16", "residual16"),
    "blocks": ("basic", "bottleneck", "wide"),
}
GRADIENTS = "gradient_norms.json"  # per run: layer names, norms per epoch


def load_data(args):
    splits = load_images(args.dataset, seed=args.seed, test_dataset=args.test_dataset)
    if args.train_images:  # a seeded subset, for measuring on large sets
        splits.take({"train": args.train_images, "val": args.train_images // 9}, 0)
        splits.notes["train_images_limit"] = args.train_images
    return splits


# ----------------------------------------------------------------------------
# Building blocks: a convolution (BatchNorm, ReLU), pooling, residual blocks
# ----------------------------------------------------------------------------
def conv(x, filters, size, name, strides=1, batch_norm=True, relu=True, decay=0.0):
    x = keras.layers.Conv2D(
        filters,
        size,
        strides,
        padding="same",
        use_bias=not batch_norm,
        kernel_regularizer=keras.regularizers.L2(decay) if decay else None,
        name=f"{name}_conv",
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def pool(x, name):
    return keras.layers.MaxPooling2D(2, padding="same", name=name)(x)


def head(x, num_classes, dropout=0.0):
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x) if dropout else x
    return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def stem(x, width, decay=0.0):
    """A 3x3 convolution; images of 16 px and more are then pooled to half size."""
    large = x.shape[1] >= 16
    x = conv(x, width, 3, "stem", decay=decay)
    return pool(x, "stem_pool") if large else x


def residual(x, y, filters, name, strides, decay):
    """x + y, through a 1x1 projection of x where the shape changes; then ReLU."""
    if strides > 1 or x.shape[-1] != filters:
        x = conv(x, filters, 1, f"{name}_project", strides, relu=False, decay=decay)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def basic_block(x, filters, name, strides=1, decay=0.0):
    """Two 3x3 convolutions around a skip connection (ResNet-18/34)."""
    y = conv(x, filters, 3, f"{name}_a", strides, decay=decay)
    y = conv(y, filters, 3, f"{name}_b", relu=False, decay=decay)
    return residual(x, y, filters, name, strides, decay)


def bottleneck_block(x, filters, name, strides=1, decay=0.0):
    """1x1 down to a quarter of the width, 3x3, 1x1 back up (ResNet-50)."""
    y = conv(x, filters // 4, 1, f"{name}_reduce", decay=decay)
    y = conv(y, filters // 4, 3, f"{name}_a", strides, decay=decay)
    y = conv(y, filters, 1, f"{name}_expand", relu=False, decay=decay)
    return residual(x, y, filters, name, strides, decay)


# ----------------------------------------------------------------------------
# Architectures: each maps the standardized images to class probabilities
# ----------------------------------------------------------------------------
def build_fc(x, num_classes, width):
    """Fully connected: the image flattened, three hidden layers, softmax."""
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(HYPERPARAMETERS["dense_units"], start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"dense{index}")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def build_cnn(x, num_classes, width):
    """The course's simple CNN: three 3x3 convolutions, max-pooling, one dense."""
    for index, filters in enumerate((width, 2 * width, 2 * width), start=1):
        x = conv(x, filters, 3, f"conv{index}", batch_norm=False)
        x = pool(x, f"pool{index}") if index < 3 else x
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(4 * width, activation="relu", name="dense1")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def build_resnet(x, num_classes, width, regularized=False):
    """A stem and three basic blocks; regularized: L2 on every kernel, dropout
    before the classifier, and augmentation (added in ``build_model``)."""
    decay = HYPERPARAMETERS["weight_decay"] if regularized else 0.0
    x = stem(x, width, decay)
    for index, (factor, strides) in enumerate(((1, 1), (2, 2), (4, 2)), start=1):
        x = basic_block(x, factor * width, f"block{index}", strides, decay)
    return head(x, num_classes, HYPERPARAMETERS["dropout"] if regularized else 0.0)


def kernel_cnn_params(kernel, widths, channels, num_classes):
    """The kernel network's parameter count (BatchNorm keeps 4 per channel)."""
    total = 0
    for inputs, filters in zip((channels, *widths), widths):
        if kernel == "1x1+3x3":
            middle = max(1, filters // 2)
            total += inputs * middle + 4 * middle + 9 * middle * filters + 4 * filters
        else:
            total += kernel * kernel * inputs * filters + 4 * filters
    return total + (widths[-1] + 1) * num_classes


@functools.lru_cache(maxsize=None)
def kernel_widths(kernel, channels, num_classes, width):
    """Widths (w, 2w, c) that match the 3x3 network's parameters at ``width``:
    the closest count, and of those within 1 % the most even (c nearest 2w)."""
    budget = kernel_cnn_params(3, (width, 2 * width, 2 * width), channels, num_classes)
    scored = []
    for first in range(1, 2 * width + 1):
        for last in range(1, 8 * width + 1):
            widths = (first, 2 * first, last)
            params = kernel_cnn_params(kernel, widths, channels, num_classes)
            scored.append((abs(params / budget - 1), widths))
    close = [widths for error, widths in scored if error < 0.01]
    if close:
        return min(close, key=lambda widths: abs(np.log(widths[2] / widths[1])))
    return min(scored)[1]


def build_kernel_cnn(x, num_classes, width, kernel):
    """Three conv units of one kernel size, pooled after the first two; a
    "1x1+3x3" unit is a 1x1 convolution to half the width, then a 3x3."""
    widths = kernel_widths(kernel, x.shape[-1], num_classes, width)
    for index, filters in enumerate(widths, start=1):
        size = kernel
        if kernel == "1x1+3x3":
            x, size = conv(x, max(1, filters // 2), 1, f"unit{index}_reduce"), 3
        x = conv(x, filters, size, f"unit{index}")
        x = pool(x, f"pool{index}") if index < 3 else x
    return head(x, num_classes)


def build_deep(x, num_classes, width, depth, skips):
    """``depth`` 3x3 convolutions, no BatchNorm; with ``skips`` an identity skip
    spans each pair after the first layer: the same layers and parameters."""
    x = conv(x, width, 3, "conv1", batch_norm=False)
    x = pool(x, "pool1") if x.shape[1] >= 16 else x
    index = 2
    while index <= depth:
        if skips and index < depth:
            y = conv(x, width, 3, f"conv{index}", batch_norm=False)
            y = conv(y, width, 3, f"conv{index + 1}p", batch_norm=False, relu=False)
            x, index = residual(x, y, width, f"conv{index + 1}", 1, 0.0), index + 2
        else:
            x, index = conv(x, width, 3, f"conv{index}", batch_norm=False), index + 1
    return head(x, num_classes)


BLOCKS = {  # block, widths of the two stages in units of --width
    "basic": (basic_block, (1, 2)),
    "bottleneck": (bottleneck_block, (4, 8)),  # inner widths 1 and 2: as basic
    "wide": (basic_block, (2, 4)),
}


def build_blocks(x, num_classes, width, block):
    """A stem and two stages of two blocks; the second stage halves the size."""
    make, factors = BLOCKS[block]
    x = stem(x, width)
    for stage, factor in enumerate(factors, start=1):
        for index in (1, 2):
            strides = 2 if stage == 2 and index == 1 else 1
            x = make(x, factor * width, f"stage{stage}_block{index}", strides)
    return head(x, num_classes)


ARCHITECTURES = {
    "fc": build_fc,
    "cnn": build_cnn,
    "resnet": build_resnet,
    "resnet_regularized": functools.partial(build_resnet, regularized=True),
    **{
        name: functools.partial(build_kernel_cnn, kernel=kernel)
        for name, kernel in (("k3", 3), ("k5", 5), ("k7", 7), ("k1_3", "1x1+3x3"))
    },
    **{
        f"plain{depth}": functools.partial(build_deep, depth=depth, skips=False)
        for depth in (2, 4, 8, 16)
    },
    "residual16": functools.partial(build_deep, depth=16, skips=True),
    **{name: functools.partial(build_blocks, block=name) for name in BLOCKS},
}


def build_model(args, splits):
    """Input -> (augmentation) -> standardization -> the architecture; Adam, with
    the global gradient norm clipped at ``args.clipnorm`` when it is set."""
    inputs = keras.Input(splits.input_shape, name="image")
    x = inputs
    if args.arch == "resnet_regularized":
        from kernels.warp import RandomAffineWarp

        x = RandomAffineWarp(
            rotation_factor=0.04,
            zoom_height_factor=0.1,
            translation_height_factor=0.1,
            translation_width_factor=0.1,
            flip_mode="horizontal" if splits.input_shape[-1] == 3 else None,
            fill_mode="constant",
            seed=args.seed,
            name="augment",
        )(x)
    normalization = keras.layers.Normalization(axis=-1, name="standardize")
    normalization.adapt(splits.x_train)
    outputs = ARCHITECTURES[args.arch](normalization(x), splits.num_classes, args.width)
    model = keras.Model(inputs, outputs, name=args.arch)
    optimizer = keras.optimizers.Adam(args.learning_rate, global_clipnorm=args.clipnorm)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def receptive_field(model):
    """Input pixels one output unit sees along the conv/pool path (the whole image
    without convolutions). 1x1 convolutions add nothing and are skipped, so a
    strided shortcut is not counted twice."""
    field, jump, convolutions = 1, 1, 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            size, strides = layer.kernel_size[0], layer.strides[0]
            convolutions += 1
        elif isinstance(layer, keras.layers.MaxPooling2D):
            size, strides = layer.pool_size[0], layer.strides[0]
        else:
            continue
        if size > 1:
            field, jump = field + (size - 1) * jump, jump * strides
    return field if convolutions else int(model.input_shape[1])


# ----------------------------------------------------------------------------
# Gradients per layer, recorded during training
# ----------------------------------------------------------------------------
class GradientNorms(keras.callbacks.Callback):
    """The loss gradient's norm for every kernel (conv and dense layers) on a
    fixed probe batch, at initialization and after every epoch, written to
    ``path`` as {"layers": [...], "norms": [[one per layer] per epoch]}."""

    def __init__(self, images, labels, path):
        super().__init__()
        self.images, self.labels, self.path = images, labels, path

    def on_train_begin(self, logs=None):
        self.layers = [layer for layer in self.model.layers if hasattr(layer, "kernel")]
        self.norms = []
        self.on_epoch_end(-1)

    def on_epoch_end(self, epoch, logs=None):
        from common.gradients import value_and_gradients

        images, labels = self.images, self.labels

        def loss():
            probabilities = self.model(images, training=False)
            return keras.ops.mean(
                keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            )

        kernels = [layer.kernel for layer in self.layers]
        _, gradients = value_and_gradients(loss, kernels)
        norms = [keras.ops.convert_to_numpy(keras.ops.norm(g)) for g in gradients]
        self.norms.append([float(norm) for norm in norms])
        record = {"layers": [layer.name for layer in self.layers], "norms": self.norms}
        experiment.atomic_write_text(self.path, json.dumps(record) + "\n")


def fit_kwargs(args, splits, run):
    count = HYPERPARAMETERS["probe_images"]
    probe = (splits.x_train[:count], splits.y_train[:count], run.path / GRADIENTS)
    return {"callbacks": [GradientNorms(*probe)]}


# ----------------------------------------------------------------------------
# Evaluation and plots
# ----------------------------------------------------------------------------
def gradient_heatmaps(records, path, title):
    """A panel per variant: layer (input first) by epoch, log10 gradient norm."""
    import matplotlib.pyplot as plt

    logs = {
        name: np.log10(np.maximum(np.asarray(record["norms"]).T, 1e-12))
        for name, record in records.items()
    }
    low, high = min(map(np.min, logs.values())), max(map(np.max, logs.values()))
    rows = max(len(record["layers"]) for record in records.values())
    size = (3.4 * len(records) + 2.5, 0.22 * rows + 2.6)
    figure, axes = plt.subplots(
        1, len(records), figsize=size, squeeze=False, layout="constrained"
    )
    for axis, (name, values) in zip(axes[0], logs.items()):
        image = axis.imshow(values, aspect="auto", cmap="magma", vmin=low, vmax=high)
        axis.set_yticks(range(len(values)), records[name]["layers"], fontsize=7)
        axis.set_xlabel("epoch (0 = initialization)")
        axis.set_ylabel("layer (input first)")
        axis.set_title(name)
    figure.colorbar(image, ax=list(axes[0]), label="log10 gradient norm of the kernel")
    figure.suptitle(title)
    figure.savefig(path, dpi=plots.DPI)  # constrained layout: a colorbar for all
    plt.close(figure)
    return path


def feature_maps(model, image, layers, path, title, filters=None, channels=8):
    """A row per layer of the first ``channels`` feature maps of ``image`` (each
    on its own colour scale); ``filters`` (k, k, in, out) adds a row of them."""
    import matplotlib.pyplot as plt

    probe = keras.Model(model.inputs, [model.get_layer(name).output for name in layers])
    maps = probe.predict(image[None], verbose=0)
    maps = maps if isinstance(maps, list) else [maps]
    rows = [] if filters is None else [("filter", filters.mean(axis=2))]
    rows += [(name.replace("_relu", ""), value[0]) for name, value in zip(layers, maps)]
    size = (1.3 * (channels + 1), 1.3 * len(rows) + 1.0)
    figure, axes = plt.subplots(len(rows), channels + 1, figsize=size, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes[0][0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
    axes[0][0].set_title("input", fontsize=8)
    for row, (name, values) in enumerate(rows):
        if row:
            axes[row][0].text(0.5, 0.5, name, ha="center", va="center", fontsize=8)
        for channel in range(min(channels, values.shape[-1])):
            plane, axis = values[..., channel], axes[row][channel + 1]
            limit = np.abs(plane).max() if name == "filter" else None
            colours = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit} if limit else {}
            axis.imshow(plane, **colours)
            axis.set_title(f"{name} {channel}", fontsize=7)
    figure.suptitle(title, fontsize=10)
    return plots.save(figure, path)


def evaluate(model, splits, run, args):
    title = experiment.default_title(LAB, args)
    figures, _, report = evaluate_classifier(
        model, run, splits.x_test, splits.y_test, splits.class_names, title
    )
    scores = model.predict(splits.x_train, batch_size=256, verbose=0)
    train_accuracy = float(np.mean(np.argmax(scores, -1) == splits.y_train))
    record = json.loads((run.path / GRADIENTS).read_text())
    norms = np.asarray(record["norms"])
    heatmap = f"{title}: gradient norm per layer"
    gradient_heatmaps({args.arch: record}, run.plots / "gradient_norms.png", heatmap)
    spatial = [
        layer.name[: -len("_conv")]
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size[0] > 1
    ]
    if args.study == "kernels":
        kernel = keras.ops.convert_to_numpy(
            model.get_layer(f"{spatial[0]}_conv").kernel
        )
        name = f"{title}: first {kernel.shape[0]}x{kernel.shape[0]} layer"
        path = run.plots / "first_layer.png"
        feature_maps(
            model, splits.x_test[0], [f"{spatial[0]}_relu"], path, name, kernel
        )
    if args.study == "depth":
        depths = np.unique(np.linspace(0, len(spatial) - 1, 6).round().astype(int))
        chosen = [re.sub(r"p$", "", spatial[i]) + "_relu" for i in depths]
        name = f"{title}: feature maps of one test image by depth"
        feature_maps(
            model, splits.x_test[0], chosen, run.plots / "feature_maps.png", name
        )
    run.add_section("Classification report (test set)", f"```\n{report}```")
    return {
        **figures,
        "train_accuracy": train_accuracy,
        "train_test_gap": train_accuracy - figures["test_accuracy"],
        "inference_ms_per_image": inference_ms_per_image(model, splits.x_test),
        "receptive_field": receptive_field(model),
        "init_gradient_ratio": float(norms[0, 0] / norms[0, -1]),
        "max_gradient_norm": float(np.sqrt((norms**2).sum(axis=1)).max()),
    }


# ----------------------------------------------------------------------------
# The study: its variants, then a table and a paragraph from the measured numbers
# ----------------------------------------------------------------------------
def variants(args):
    """{variant: overrides} of ``--study``, each over ``--seeds`` seeds."""
    chosen = {arch: {"arch": arch} for arch in STUDIES[args.study]}
    if args.study == "depth":  # all unclipped, but plain16 again with clipping
        chosen = {
            name: {**overrides, "clipnorm": None} for name, overrides in chosen.items()
        }
        chosen["plain16_clipped"] = {"arch": "plain16", "clipnorm": args.clipnorm}
    if args.seeds == 1:
        return chosen
    return {
        f"{name}_seed{args.seed + index}": {**overrides, "seed": args.seed + index}
        for name, overrides in chosen.items()
        for index in range(args.seeds)
    }


COLUMNS = {
    "models": ("train_accuracy", "test_accuracy", "train_test_gap", "params"),
    "kernels": ("test_accuracy", "params", "params_vs_k3", "receptive_field"),
    "depth": ("test_accuracy", "init_gradient_ratio", "max_gradient_norm", "params"),
    "blocks": ("test_accuracy", "test_accuracy_std", "seeds", "params"),
}


def summarize(group):
    """The mean of every figure over a variant's seeds, and the accuracy's spread."""
    numbers = [k for k, v in group[0].items() if isinstance(v, (int, float))]
    row = {key: float(np.mean([metrics[key] for metrics in group])) for key in numbers}
    accuracies = [metrics["test_accuracy"] for metrics in group]
    spread = float(np.std(accuracies, ddof=1)) if len(group) > 1 else 0.0
    return {**row, "test_accuracy_std": spread, "seeds": len(group)}


def explain(study, rows, size, clipnorm):
    """The "what this shows" paragraph: which variant won, by how much, at what
    cost, and what the study is about, from the measured numbers only."""
    order = sorted(rows, key=lambda name: rows[name]["test_accuracy"])
    best, worst = rows[order[-1]], rows[order[0]]
    text = [
        f"{order[-1]} scored the highest test accuracy, {best['test_accuracy']:.4f}, "
        f"{best['test_accuracy'] - worst['test_accuracy']:.4f} above the lowest "
        f"({order[0]}), with {best['params']:,.0f} parameters against "
        f"{worst['params']:,.0f} and {best['train_seconds']:.0f} s of training "
        f"against {worst['train_seconds']:.0f} s."
    ]
    if study == "models":
        gaps = sorted(rows, key=lambda name: rows[name]["train_test_gap"])
        text.append(
            f"The train-test accuracy gap (overfitting) was largest for {gaps[-1]} "
            f"({rows[gaps[-1]]['train_test_gap']:.4f}), smallest for {gaps[0]} "
            f"({rows[gaps[0]]['train_test_gap']:.4f})."
        )
        if {"resnet", "resnet_regularized"} <= set(rows):
            plain, regular = rows["resnet"], rows["resnet_regularized"]
            text.append(
                f"L2, dropout and augmentation moved the ResNet's gap from "
                f"{plain['train_test_gap']:.4f} to {regular['train_test_gap']:.4f} "
                f"and its test accuracy by "
                f"{regular['test_accuracy'] - plain['test_accuracy']:+.4f}."
            )
    if study == "kernels":
        params = [row["params"] for row in rows.values()]
        fields = ", ".join(
            f"{n} {r['receptive_field']:.0f} px" for n, r in rows.items()
        )
        text.append(
            f"Parameters differ by at most {max(params) / min(params) - 1:.1%}; "
            f"receptive fields on the {size}-px images: {fields}. On one budget a "
            "larger kernel sees more of the image per layer with fewer filters."
        )
    if study == "depth":
        plain = [name for name in rows if re.fullmatch(r"plain\d+", name)]
        ratios = ", ".join(f"{n} {rows[n]['init_gradient_ratio']:.2g}" for n in plain)
        text.append(
            "The first layer's gradient norm as a share of the last layer's at "
            f"initialization: {ratios}."
        )
        if {"plain16", "residual16"} <= set(rows):
            deep = rows["plain16"]["init_gradient_ratio"]
            skip = rows["residual16"]["init_gradient_ratio"]
            text.append(
                f"With skip connections over the same 16 layers it is {skip:.2g}: "
                + (
                    "the skips carry the gradient back to the first layers."
                    if deep < skip / 2
                    else "no marked difference on this data."
                )
            )
        if {"plain16", "plain16_clipped"} <= set(rows):
            change = rows["plain16_clipped"]["test_accuracy"]
            text.append(
                f"Clipping the global gradient norm at {clipnorm:g} changed plain16's "
                f"test accuracy by {change - rows['plain16']['test_accuracy']:+.4f} "
                "(largest unclipped norm on the probe batch: "
                f"{rows['plain16']['max_gradient_norm']:.3g})."
            )
    if study == "blocks" or worst["seeds"] > 1:
        spreads = sorted(rows, key=lambda name: rows[name]["test_accuracy_std"])
        text.append(
            "Mean ± standard deviation over seeds: "
            + "; ".join(
                f"{n} {r['test_accuracy']:.4f} ± {r['test_accuracy_std']:.4f}"
                for n, r in rows.items()
            )
            + f". Most stable: {spreads[0]}; least: {spreads[-1]}."
        )
        margin = best["test_accuracy"] - worst["test_accuracy"]
        if worst["seeds"] < 2:
            text.append("With one seed the spread is unknown: use --seeds 3.")
        elif margin < max(row["test_accuracy_std"] for row in rows.values()):
            text.append("The margin is within the seed-to-seed spread: no winner.")
    return " ".join(text)


def conclude(results, run, args):
    """After the comparison: the study's table, paragraph and plots; with seeds,
    ``<variant>_<figure>`` averaged over them (and test_accuracy_std)."""
    groups = {}
    for name, metrics in results.items():
        if metrics.get("status") in experiment.FINISHED:
            groups.setdefault(re.sub(r"_seed-?\d+$", "", name), []).append(metrics)
    if not groups:
        return {}
    rows = {name: summarize(group) for name, group in groups.items()}
    for row in rows.values() if "k3" in rows else ():
        row["params_vs_k3"] = row["params"] / rows["k3"]["params"] - 1
    columns = (*COLUMNS[args.study], "train_seconds")
    table = [{"variant": n, **{c: r[c] for c in columns}} for n, r in rows.items()]
    size = run.config.get("data", {}).get("input_shape", ["?"])[0]
    run.add_section(f"Study: {args.study}", experiment.markdown_table(table))
    paragraph = explain(args.study, rows, size, args.clipnorm)
    run.add_section("What this shows", paragraph)
    print(f"\nwhat this shows: {paragraph}")
    panels = {column.replace("_", " "): column for column in columns}
    panels = {
        label: [row[key] for row in rows.values()] for label, key in panels.items()
    }
    if args.study == "depth":
        ratios = panels.pop("init gradient ratio")
        panels["log10 init gradient ratio"] = list(np.log10(ratios))
        records = {n: json.loads((run.path / n / GRADIENTS).read_text()) for n in rows}
        path = run.plots / "gradient_norms.png"
        gradient_heatmaps(records, path, f"Lab 9 depth study on {args.dataset}")
    title = f"Lab 9 {args.study} study on {args.dataset}"
    plots.bar_chart(list(rows), panels, run.plots / "study.png", title, "variant")
    if args.seeds == 1:
        return {}
    keys = ("test_accuracy", "test_accuracy_std", "params", "train_seconds")
    return {f"{name}_{key}": row[key] for name, row in rows.items() for key in keys}


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("--study", choices=list(STUDIES), default="models")
    parser.add_argument(
        "--seeds",
        type=cli.positive_int,
        metavar="N",
        help="train each variant with seeds --seed ... --seed+N-1 and report the "
        "mean and spread (default: 3 for --study blocks, else 1)",
    )
    parser.add_argument(
        "--clipnorm",
        type=cli.positive_float,
        metavar="X",
        help="--study depth: the global gradient-norm threshold of plain16_clipped "
        f"(default {HYPERPARAMETERS['clipnorm']})",
    )
    parser.add_argument(
        "--width",
        type=cli.positive_int,
        default=HYPERPARAMETERS["width"],
        help="filters of the first conv layer (and the kernel study's budget)",
    )
    parser.add_argument(
        "--train-images",
        type=cli.positive_int,
        metavar="N",
        help="train on at most N images (validate on N/9), seeded; the test "
        "split stays whole",
    )


def check_arguments(args, parser):
    if args.clipnorm is not None and args.study != "depth":
        parser.error(f"--clipnorm applies to --study depth, not --study {args.study}")
    if args.train_images is not None and args.train_images < 9:
        parser.error("--train-images must be at least 9 (one validation image)")
    if args.study == "depth":
        args.clipnorm = args.clipnorm or HYPERPARAMETERS["clipnorm"]
    args.seeds = args.seeds or (3 if args.study == "blocks" else 1)


LAB = experiment.Lab(
    name="lab9_studies",
    description="Lab 9: architecture studies: FC vs CNN vs ResNet, kernel size, "
    "depth and gradients, residual blocks (each a comparison).",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch="cnn",
    datasets="digits (embedded, default), mnist, cifar10 (tfds), npz:PATH or "
    "folder:PATH",
    default_dataset="digits",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    fit_kwargs=fit_kwargs,
    variants=variants,
    conclude=conclude,
    always_compare=True,
    title=lambda args: f"Lab 9 {args.study} study: {args.arch} on {args.dataset}",
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
