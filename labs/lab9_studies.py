"""Lab 9: architecture studies -- what a choice of layers does, measured.

    python -m labs.lab9_studies                   # --study models: FC, CNN, ResNet
    python -m labs.lab9_studies --study kernels   # 3x3 5x5 7x7 1x1+3x3, same size
    python -m labs.lab9_studies --study depth     # 2-16 layers, gradients, clipping
    python -m labs.lab9_studies --study blocks    # basic, bottleneck, wide; 3 seeds
    python -m labs.lab9_studies --arch k7         # one variant of a study alone
    python -m labs.lab9_studies --dataset folder:.data/mnist/train \\
        --test-dataset folder:.data/mnist/test --train-images 3000

What it teaches: a study is a controlled comparison (same data, seed and
hyperparameters; one thing changed), and its report.md says from the numbers what
it shows: dense vs CNN vs ResNet (accuracy, cost, the train-test gap); kernel sizes
on one parameter budget (receptive fields); depth, with per-layer gradients
recorded as it trains (fading in deep plain stacks; skips; clipping); residual
block designs over seeds, to tell a difference from seed noise.

Measured results (digits, real MNIST and CIFAR-10): see the README's results table.
"""

import re
import sys
from collections import defaultdict
from functools import partial

import keras
import numpy as np

from common import cli, experiment, plots
from common.callbacks import GradientNorms, gradient_heatmaps, gradient_summary
from common.data import load_images
from common.training import evaluate_classifier, inference_ms_per_image

HYPERPARAMETERS = {
    "epochs": 20,  # maximum per variant; EarlyStopping on val_loss stops sooner
    "batch_size": 64,  # images per step
    "learning_rate": 1e-3,  # Adam step size
    "patience": 5,  # epochs without val_loss improvement before stopping
    "width": 32,  # filters of the first conv layer (kernels: KERNEL_WIDTHS)
    "dense_units": (256, 128, 64),  # hidden units of the fully connected network
    "weight_decay": 0.05,  # decoupled, per unit learning rate (regularized ResNet)
    "dropout": 0.3,  # dropout rate before the classifier (regularized ResNet)
    "clipnorm": 1.0,  # global gradient-norm threshold of the clipped depth variant
    "probe_images": 256,  # training images the gradients are measured on
}
POOL = partial(keras.layers.MaxPooling2D, 2, padding="same")  # halves the size
BN_MOMENTUM = 0.9  # few steps an epoch on small sets: Keras's 0.99 adapts too slowly
KERNEL_WIDTHS = {  # filters of the three units: equal parameters, within 1 %
    3: (32, 64, 64),  # on grey and colour images, 10 classes (a test checks 5 %)
    5: (19, 38, 39),
    7: (12, 24, 35),
    "1x1+3x3": (36, 72, 71),  # the 1x1 convolutions reduce to half of these
}
GRADIENTS = "gradient_norms.json"  # in each run: RMS gradient per layer and epoch


def load_data(args):
    splits = load_images(args.dataset, seed=args.seed, test_dataset=args.test_dataset)
    if args.train_images:  # a seeded subset, for measuring on large sets
        limits = {"train": args.train_images, "val": max(1, args.train_images // 9)}
        splits.take(limits, args.seed).notes.pop("quick_subset")  # not --quick
        splits.notes["train_images_limit"] = args.train_images
    return splits


# ---- Building blocks: convolution (BatchNorm, ReLU), pooling, residual blocks
def conv(x, filters, size, name, strides=1, batch_norm=True, relu=True):
    x = keras.layers.Conv2D(
        filters, size, strides, "same", use_bias=not batch_norm, name=f"{name}_conv"
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def classify(x, num_classes, dropout=0.0, pooled=True):
    """Global average pooling (or ``pooled=False``: flat features), dropout, softmax."""
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x) if pooled else x
    x = keras.layers.Dropout(dropout, name="head_dropout")(x) if dropout else x
    return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def residual(x, y, filters, name, strides=1):
    """x + y, through a 1x1 projection of x where the shape changes; then ReLU."""
    if strides > 1 or x.shape[-1] != filters:
        x = conv(x, filters, 1, f"{name}_project", strides, relu=False)
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def basic_block(x, filters, name, strides=1):
    """Two 3x3 convolutions around a skip connection (ResNet-18/34)."""
    y = conv(x, filters, 3, f"{name}_a", strides)
    y = conv(y, filters, 3, f"{name}_b", relu=False)
    return residual(x, y, filters, name, strides)


def bottleneck_block(x, filters, name, strides=1):
    """1x1 down to a quarter of the width, 3x3, 1x1 back up (ResNet-50)."""
    y = conv(x, filters // 4, 1, f"{name}_reduce")
    y = conv(y, filters // 4, 3, f"{name}_a", strides)
    y = conv(y, filters, 1, f"{name}_expand", relu=False)
    return residual(x, y, filters, name, strides)


# ---- Architectures: each maps standardized images to class probabilities
def build_fc(x, num_classes, width):
    """Fully connected: the image flattened, three hidden layers, softmax."""
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(HYPERPARAMETERS["dense_units"], start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"dense{index}")(x)
    return classify(x, num_classes, pooled=False)


def build_cnn(x, num_classes, width):
    """The course's simple CNN: three 3x3 convolutions, max-pooling, one dense."""
    for index, filters in enumerate((width, 2 * width, 2 * width), start=1):
        x = conv(x, filters, 3, f"conv{index}", batch_norm=False)
        x = POOL(name=f"pool{index}")(x) if index < 3 else x
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(4 * width, activation="relu", name="dense1")(x)
    return classify(x, num_classes, pooled=False)


def build_kernel_cnn(x, num_classes, width, kernel):
    """Three conv units of one kernel size, pooled after the first two; a
    "1x1+3x3" unit is a 1x1 convolution to half the width, then a 3x3."""
    for index, filters in enumerate(KERNEL_WIDTHS[kernel], start=1):
        size = kernel
        if kernel == "1x1+3x3":
            x, size = conv(x, max(1, filters // 2), 1, f"unit{index}_reduce"), 3
        x = conv(x, filters, size, f"unit{index}")
        x = POOL(name=f"pool{index}")(x) if index < 3 else x
    return classify(x, num_classes)


def build_deep(x, num_classes, width, depth, skips):
    """``depth`` 3x3 convolutions, no BatchNorm; with ``skips`` an identity skip
    spans each pair after the first layer: the same layers and parameters."""
    x = conv(x, width, 3, "conv1", batch_norm=False)
    x = POOL(name="pool1")(x) if x.shape[1] >= 16 else x
    index = 2
    while index <= depth:
        if skips and index < depth:
            y = conv(x, width, 3, f"conv{index}", batch_norm=False)
            y = conv(y, width, 3, f"conv{index + 1}", batch_norm=False, relu=False)
            x, index = residual(x, y, width, f"conv{index + 1}"), index + 2
        else:
            x, index = conv(x, width, 3, f"conv{index}", batch_norm=False), index + 1
    return classify(x, num_classes)


BLOCKS = {  # block, widths of the two stages in units of the width
    "basic": (basic_block, (1, 2)),
    "bottleneck": (bottleneck_block, (4, 8)),  # inner widths 1 and 2, as basic
    "wide": (basic_block, (2, 4)),
}


def build_blocks(x, num_classes, width, block, dropout=0.0):
    """A stem (pooled from 16 px up) and two stages of two blocks; the second
    stage halves the size."""
    make, factors = BLOCKS[block]
    x = conv(x, width, 3, "stem")
    x = POOL(name="stem_pool")(x) if x.shape[1] >= 16 else x
    for stage, factor in enumerate(factors, start=1):
        for index in (1, 2):
            strides = 2 if stage == 2 and index == 1 else 1
            x = make(x, factor * width, f"stage{stage}_block{index}", strides)
    return classify(x, num_classes, dropout)


STUDIES = {  # each study's variants: name -> builder
    "models": {
        "fc": build_fc,
        "cnn": build_cnn,
        "resnet": partial(build_blocks, block="basic"),
        "resnet_regularized": partial(  # and weight decay: see build_model
            build_blocks, block="basic", dropout=HYPERPARAMETERS["dropout"]
        ),
    },
    "kernels": {
        "k3": partial(build_kernel_cnn, kernel=3),
        "k5": partial(build_kernel_cnn, kernel=5),
        "k7": partial(build_kernel_cnn, kernel=7),
        "k1_3": partial(build_kernel_cnn, kernel="1x1+3x3"),
    },
    "depth": {
        **{f"plain{n}": partial(build_deep, depth=n, skips=False) for n in (2, 4, 8)},
        "plain16": partial(build_deep, depth=16, skips=False),
        "residual16": partial(build_deep, depth=16, skips=True),
    },
    "blocks": {block: partial(build_blocks, block=block) for block in BLOCKS},
}
ARCHITECTURES = {name: b for study in STUDIES.values() for name, b in study.items()}


def build_model(args, splits):
    """Input -> standardization -> the architecture; Adam, the global gradient norm
    clipped at ``args.clipnorm`` if set, AdamW's weight decay if regularized."""
    inputs = keras.Input(splits.input_shape, name="image")
    standardize = keras.layers.Normalization(axis=-1, name="standardize")
    standardize.adapt(splits.x_train)
    width = HYPERPARAMETERS["width"]
    outputs = ARCHITECTURES[args.arch](standardize(inputs), splits.num_classes, width)
    decay = HYPERPARAMETERS["weight_decay"] if "regularized" in args.arch else None
    optimizer = keras.optimizers.Adam(
        args.learning_rate, weight_decay=decay, global_clipnorm=args.clipnorm
    )
    model = keras.Model(inputs, outputs, name=args.arch)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit_kwargs(args, splits, run):
    """Every run records its per-layer gradients on a fixed probe batch."""
    count, title = HYPERPARAMETERS["probe_images"], experiment.default_title(LAB, args)
    probe = (splits.x_train[:count], splits.y_train[:count], run.path / GRADIENTS)
    plot = (run.plots / "gradient_norms.png", f"{title}: gradient per layer")
    return {"callbacks": [GradientNorms(*probe, *plot)]}


# ---- Evaluation and plots
def receptive_field(model):
    """Input pixels one output unit sees along the conv/pool path (dense: the whole
    image); 1x1 layers are skipped: a strided shortcut is not counted twice."""
    field, jump = 1, 1
    for layer in model.layers:
        size = getattr(layer, "kernel_size", getattr(layer, "pool_size", (1,)))[0]
        if size > 1:
            field, jump = field + (size - 1) * jump, jump * layer.strides[0]
    convolutions = [layer for layer in model.layers if hasattr(layer, "kernel_size")]
    return field if convolutions else int(model.input_shape[1])


def evaluate(model, splits, run, args):
    """The classifier's figures and plots, the train-test gap, the receptive field,
    the gradients; the kernel study's first layer, the depth study's feature maps."""
    title = experiment.default_title(LAB, args)
    x, y, names = splits.x_test, splits.y_test, splits.class_names
    figures, _, report = evaluate_classifier(model, run, x, y, names, title)
    run.add_section("Classification report (test set)", f"```\n{report}```")
    scores = model.predict(splits.x_train, batch_size=256, verbose=0)
    train_accuracy = float(np.mean(np.argmax(scores, -1) == splits.y_train))
    convolutions = [c for c in model.layers if isinstance(c, keras.layers.Conv2D)]
    spatial = [c.name[:-5] for c in convolutions if c.kernel_size[0] > 1]  # - "_conv"
    if args.study in ("kernels", "depth"):  # the first layer; six depths
        chosen = np.linspace(0, len(spatial) - 1, 6 if args.study == "depth" else 1)
        layers = [spatial[index] for index in np.unique(chosen.round().astype(int))]
        outputs = {name: model.get_layer(f"{name}_relu").output for name in layers}
        maps = keras.Model(model.inputs, outputs).predict(x[:1], verbose=0)
        rows, name = [(layer, maps[layer][0]) for layer in layers], "feature_maps.png"
        caption = f"{title}: feature maps of one test image by depth"
        if args.study == "kernels":  # and what it looks for: filters, mean over inputs
            kernel = model.get_layer(f"{spatial[0]}_conv").kernel
            rows.insert(0, ("filter", keras.ops.convert_to_numpy(kernel).mean(axis=2)))
            caption = f"{title}: the first non-1x1 layer's filters (red +, blue -) and "
            caption, name = caption + "activations of one test image", "first_layer.png"
        plots.feature_maps(x[0], rows, run.plots / name, caption)
    return {
        **figures,
        "train_accuracy": train_accuracy,
        "train_test_gap": train_accuracy - figures["test_accuracy"],
        "inference_ms_per_image": inference_ms_per_image(model, x[:1000]),
        "receptive_field": receptive_field(model),
        **gradient_summary(experiment.read_json(run.path / GRADIENTS, {})),
    }


# ---- The study: its variants, then a table, a chart and a paragraph
def variants(args):
    """{variant: overrides} of ``--study``, each over ``--seeds`` seeds; the depth
    study trains plain16 once more, with the gradient norm clipped."""
    chosen = {arch: {"arch": arch, "clipnorm": None} for arch in STUDIES[args.study]}
    if args.study == "depth":
        chosen["plain16_clipped"] = {"arch": "plain16", "clipnorm": args.clipnorm}
    seeds = range(args.seed, args.seed + args.seeds)
    if args.seeds == 1:
        return chosen
    return {f"{n}_seed{s}": {**o, "seed": s} for n, o in chosen.items() for s in seeds}


COLUMNS = {  # the study's table, after test accuracy
    "models": ("train_accuracy", "train_test_gap", "params", "train_seconds"),
    "kernels": ("params", "receptive_field", "train_seconds"),
    "depth": ("init_gradient_rms", "max_gradient_norm", "params", "train_seconds"),
    "blocks": ("test_accuracy_std", "params", "train_seconds"),
}
FINDINGS = {  # each study's own sentence, filled in from the measured numbers
    "models": "The widest train-test gap (overfitting) is {gappiest}; dropout and "
    "weight decay took the ResNet's from {r[resnet][train_test_gap]:.4f} to "
    "{r[resnet_regularized][train_test_gap]:.4f} and its test accuracy by "
    "{regularized:+.4f}.",
    "kernels": "The parameter counts differ by at most {excess:.1%}; on the "
    "{size}-px images the receptive fields run from {narrow} to {wide}.",
    "depth": "Before training, the RMS gradient per weight falls from "
    "{r[plain2][init_gradient_rms]:.2g} in plain2 to "
    "{r[plain16][init_gradient_rms]:.2g} in plain16; skip connections give the same "
    "16 layers {skip_gain:.3g} times as much. plain16's largest global gradient "
    "norm on the probe batch, {r[plain16][max_gradient_norm]:.3g}, is {acted} the "
    "clipping threshold {clipnorm:g}; clipping changed its test accuracy by "
    "{clipped:+.4f}.",
    "blocks": "",
}


def summarize(group):
    """The mean of every figure over a variant's seeds, and the accuracy's spread."""
    numbers = [key for key, value in group[0].items() if isinstance(value, float)]
    row = {key: float(np.mean([metrics[key] for metrics in group])) for key in numbers}
    accuracies = [metrics["test_accuracy"] for metrics in group]
    spread = float(np.std(accuracies, ddof=1)) if len(group) > 1 else 0.0
    return {**group[0], **row, "test_accuracy_std": spread, "seeds": len(group)}


def explain(study, rows, data, clipnorm):
    """The "what this shows" paragraph, from the measured numbers: which variant
    won, by how much, at what cost; the study's own figures; whether it is noise."""
    nan = float("nan")  # printed for a variant that did not finish
    r = defaultdict(lambda: defaultdict(lambda: nan))
    r.update({name: defaultdict(lambda: nan, row) for name, row in rows.items()})

    def gain(name, than, key="test_accuracy"):
        return r[name][key] - r[than][key]

    order = sorted(rows, key=lambda name: rows[name]["test_accuracy"], reverse=True)
    first, second, last = order[0], order[min(1, len(order) - 1)], order[-1]
    best, worst = rows[first], rows[last]
    text = (
        f"{first} scored the highest test accuracy, {best['test_accuracy']:.4f}, "
        f"{gain(first, last):.4f} above {last}, with {best['params']:,} parameters "
        f"against {worst['params']:,} and {best['train_seconds']:.0f} s of training "
        f"against {worst['train_seconds']:.0f} s. "
    )
    field = {name: row["receptive_field"] for name, row in rows.items()}
    gap = {name: row["train_test_gap"] for name, row in rows.items()}
    narrow, wide = min(field, key=field.get), max(field, key=field.get)
    gappiest, counts = max(gap, key=gap.get), [row["params"] for row in rows.values()]
    norm, rms = r["plain16"]["max_gradient_norm"], "init_gradient_rms"
    text += FINDINGS[study].format(
        r=r,
        gappiest=f"{gappiest}'s, {gap[gappiest]:.4f}",
        regularized=gain("resnet_regularized", "resnet"),
        excess=max(counts) / min(counts) - 1,
        size=data["input_shape"][0],
        narrow=f"{narrow}'s {field[narrow]} px",
        wide=f"{wide}'s {field[wide]} px",
        skip_gain=r["residual16"][rms] / r["plain16"][rms],
        acted="above" if norm > (clipnorm or nan) else "below",
        clipnorm=clipnorm or nan,
        clipped=gain("plain16_clipped", "plain16"),
    )
    lead, seeds, tests = gain(first, second), best["seeds"], data["num_test"]
    spread = max(row["test_accuracy_std"] for row in rows.values())
    error = 2 * (best["test_accuracy"] * (1 - best["test_accuracy"]) / tests) ** 0.5
    if seeds > 1:
        stds = ", ".join(f"{n} {v['test_accuracy_std']:.4f}" for n, v in rows.items())
        text += f" Over {seeds} seeds the test accuracy's standard deviation was "
        within = f"; {first}'s lead over {second}, {lead:.4f}, is within it: no clear"
        text += stds + (f"{within} winner." if lead < spread else ".")
    elif lead < error:  # against the test set's sampling error
        text += (
            f" {first} leads {second} by {lead * tests:.0f} of {tests} test images; "
            f"within two binomial standard errors ({error:.4f}) that may be noise: "
            "use --seeds 3."
        )
    return " ".join(text.split())  # one space between sentences


def conclude(results, run, args):
    """After the comparison: the study's table and paragraph, the depth study's
    gradients side by side; over seeds, ``<variant>_<figure>`` means and spread."""
    groups = {}
    for name, metrics in results.items():
        if metrics.get("status") in experiment.FINISHED:
            base = re.sub(r"_seed-?\d+$", "", name)
            groups.setdefault(base, []).append({**metrics, "run": name})
    if not groups:
        return {}
    rows = {name: summarize(group) for name, group in groups.items()}
    columns = ("test_accuracy", *COLUMNS[args.study])
    table = [{"variant": n, **{c: r[c] for c in columns}} for n, r in rows.items()]
    run.add_section(f"Study: {args.study}", experiment.markdown_table(table))
    paragraph = explain(args.study, rows, run.config["data"], args.clipnorm)
    run.add_section("What this shows", paragraph)
    print(f"\nwhat this shows: {paragraph}")
    if args.study == "depth":  # every variant's gradients on one colour scale
        paths = {name: run.path / row["run"] / GRADIENTS for name, row in rows.items()}
        records = {name: experiment.read_json(path, {}) for name, path in paths.items()}
        title = f"Lab 9 depth study on {args.dataset}: gradient per layer"
        gradient_heatmaps(records, run.plots / "gradient_norms.png", title)
    if args.seeds == 1:
        return {}
    summary = [{"variant": name, **row} for name, row in rows.items()]
    title = f"Lab 9 {args.study} study on {args.dataset}: means over {args.seeds} seeds"
    path, spread = run.plots / "study.png", "test_accuracy_std"
    plots.comparison_bars(summary, "test_accuracy", path, title, errors=spread)
    keys = ("test_accuracy", "test_accuracy_std", "params", "train_seconds")
    return {f"{name}_{key}": row[key] for name, row in rows.items() for key in keys}


# ---- Command line
def add_arguments(parser):
    add = parser.add_argument
    add("--study", choices=list(STUDIES), help="None: the --arch's, or models")
    add("--seeds", type=cli.positive_int, help="per variant; None: 3 blocks, else 1")
    add("--clipnorm", type=cli.positive_float, help="depth: for plain16_clipped; 1.0")
    add("--train-images", type=cli.positive_int, help="at most; validation: 1/9 of it")


def check_arguments(args, parser):
    home = [study for study, names in STUDIES.items() if args.arch in names]
    args.study = (home or [args.study or "models"])[0]  # --arch k7: kernels
    if args.clipnorm is not None and args.study != "depth":
        parser.error(f"--clipnorm applies to --study depth, not --study {args.study}")
    if args.arch is None:  # the whole study; --arch runs one variant alone
        args.compare, args.arch = True, args.study  # (the run folder's label)
    if args.compare and args.study == "depth":
        args.clipnorm = args.clipnorm or HYPERPARAMETERS["clipnorm"]
    args.seeds = args.seeds or (3 if args.study == "blocks" else 1)


LAB = experiment.Lab(
    name="lab9_studies",
    description="Lab 9: architecture studies: models, kernels, depth, blocks.",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch=None,
    datasets="digits (embedded, default), mnist, cifar10 (tfds), npz:, folder:",
    default_dataset="digits",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    fit_kwargs=fit_kwargs,
    variants=variants,
    conclude=conclude,
    title=lambda args: f"Lab 9 {args.study} study: {args.arch} on {args.dataset}",
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
