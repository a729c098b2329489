"""Lab 4: ResNet50V2 transfer learning and two-phase fine-tuning.

    python -m labs.lab4_finetune                   # offline default: digits, finetune
    python -m labs.lab4_finetune --compare         # scratch vs head vs finetune
    python -m labs.lab4_finetune --dataset tf_flowers --weights imagenet --epochs 10
    python -m labs.lab4_finetune --dataset folder:PATH --weights RUN/base.weights.h5

What it teaches: reuse a pretrained backbone in two phases. Phase 1 (head): the
ResNet50V2 backbone is frozen and called with ``training=False``, so its BatchNorm
layers stay in inference mode, and only a new head learns. Phase 2 (fine-tune):
the top ``--unfreeze N`` residual blocks (or layers) become trainable, BatchNorm
stays frozen, the model is recompiled with a 10x lower learning rate and training
continues the same history. ``--mode scratch`` trains every layer from random
weights instead, ``--mode head`` stops after phase 1, ``--compare`` runs all three.
Every run writes its backbone as base.weights.h5, and ``--weights PATH`` starts a
later run from it on any dataset. plots/gradcam.png shows what the predictions
look at (grad-CAM). Offline there are no ImageNet weights: the backbone is random
and the run shows the mechanics of transfer learning, not its result (the course
reached 0.93 on tf_flowers with ImageNet weights).

Data: digits (embedded 8x8, upsampled to 32x32 RGB inside the model), the course's
tf_flowers (tfds, streamed with tf.data), or folder:PATH (streamed with a Keras
PyDataset, unreadable files skipped and counted). ``--resume`` is refused: the
phases are separate fits.

Measured results (3 seeds, random backbone): see the README's results table.
"""

import json
import math
import sys

import keras
import numpy as np

from common import cli, experiment, plots, training, transfer
from common.cli import WorkbookError
from common.data import ImageFolderStream
from common.gradients import value_and_input_gradients

HYPERPARAMETERS = {
    "epochs": 6,  # total epochs per run (finetune: head epochs + fine-tune epochs)
    "batch_size": 32,  # images per step
    "learning_rate": 1e-3,  # Adam step size: head phase and scratch
    "fine_tune_divisor": 10,  # --fine-tune-lr defaults to learning_rate / 10
    "unfreeze": 2,  # residual blocks trained in phase 2
    "dropout": 0.2,  # before the new Dense head
    "patience": 3,  # epochs without val_loss improvement before stopping
    "digits_train_images": 600,  # embedded default: training images
    "stream_image_size": 128,  # tf_flowers and folders: pixels a side
    "gradcam_images": 8,  # test images in plots/gradcam.png
    "gradcam_min_cells": 4,  # heat map from the deepest feature map >= 4x4 cells
}
QUICK_SIZES = {"train": 64, "val": 32, "test": 32}  # images per split with --quick
TF_FLOWERS_SPLITS = {
    "train": "train[:80%]",
    "val": "train[80%:90%]",
    "test": "train[90%:]",
}
MODES = ("scratch", "head", "finetune")
# What --unfreeze can count in ResNet50V2 (a test checks these against the model).
RESNET50V2_COUNTS = {"blocks": 16, "layers": 53}


# ----------------------------------------------------------------------------
# Data: arrays for digits; streams for tf_flowers and image folders
# ----------------------------------------------------------------------------
def load_data(args):
    """digits as arrays; tf_flowers and folder:PATH streamed (common/data.py)."""
    from common import data

    if args.dataset == "digits":
        splits = data.load_images("digits", args.seed, test_dataset=args.test_dataset)
        limit = args.train_images or HYPERPARAMETERS["digits_train_images"]
        if len(splits.x_train) > limit:
            rng = np.random.default_rng(args.seed)
            keep = np.sort(rng.choice(len(splits.x_train), size=limit, replace=False))
            splits.x_train, splits.y_train = splits.x_train[keep], splits.y_train[keep]
        splits.notes["note"] = "the offline stand-in for tf_flowers"
        return splits
    sizes = {"train": args.train_images, "val": None, "test": None}
    if args.quick:
        sizes = {**QUICK_SIZES, "train": args.train_images or QUICK_SIZES["train"]}
    stream = (args.batch_size, args.image_size, args.seed, sizes)
    if args.dataset == "tf_flowers":
        return data.stream_tfds_images("tf_flowers", TF_FLOWERS_SPLITS, *stream)
    if args.dataset.startswith("folder:"):
        return data.stream_image_folder(args.dataset[len("folder:") :], *stream)
    raise WorkbookError(
        f"unknown dataset {args.dataset!r} for lab 4. Use digits (embedded, offline), "
        "tf_flowers (the course's dataset, via tensorflow-datasets) or folder:PATH "
        "(one sub-folder per class)."
    )


# ----------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------
def build_resnet50v2(args, splits):
    """(model, backbone, notice): ResNet50V2 and a new head (common/transfer.py);
    scratch trains every layer from random weights."""
    scratch = args.mode == "scratch"
    model, base, notice = transfer.build_transfer_model(
        tuple(splits.notes.get("image_shape") or splits.input_shape),
        splits.num_classes,
        weights="none" if scratch else args.weights,
        dropout=HYPERPARAMETERS["dropout"],
        min_size=args.image_size,
        train_base=scratch,
    )
    if scratch:
        notice = "mode scratch: every layer starts from random weights and trains "
        notice += "(BatchNorm included); --weights is not used."
    return model, base, notice


ARCHITECTURES = {"resnet50v2": build_resnet50v2}


def compile_model(model, learning_rate):
    optimizer = keras.optimizers.Adam(learning_rate)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])


def build_model(args, splits):
    model, _, notice = ARCHITECTURES[args.arch](args, splits)
    print(notice)
    model.weights_notice = notice  # for config.json and report.md
    compile_model(model, args.learning_rate)
    return model


# ----------------------------------------------------------------------------
# Training: phase 1 (head, or scratch), then phase 2 (fine-tune) in one history
# ----------------------------------------------------------------------------
def train(model, splits, run, args):
    """Phase 1 trains the head (or everything, scratch); for finetune, phase 2
    unfreezes the top blocks, recompiles and continues the same history."""
    base, notice = model.get_layer("resnet50v2"), model.weights_notice
    run.write_config(weights_notice=notice, hyperparameters=HYPERPARAMETERS)
    images = splits.describe().get("num_train") or 0  # None: unknown (mocked)
    streamed = splits.train is not None  # a stream batches and shuffles itself
    phases = []

    def phase(name, learning_rate, epochs, rows=(), boundaries=()):
        print(f"\nphase {name}: {epochs} epoch(s), learning rate {learning_rate:g}")
        result = training.fit(
            model,
            run,
            splits.train if streamed else splits.x_train,
            None if streamed else splits.y_train,
            validation_data=splits.validation or (splits.x_val, splits.y_val),
            epochs=epochs,
            batch_size=None if streamed else args.batch_size,
            shuffle=not streamed,
            patience=args.patience,
            title=experiment.default_title(LAB, args),
            initial_rows=rows,
            boundaries=boundaries,
            checkpoint=False,
        )
        done, seconds = result["epochs_run"] - len(rows), result["train_seconds"]
        speed = round(images * done / seconds, 2) if seconds else None
        phases.append(
            {"phase": name, **transfer.parameter_table(model)}
            | {"learning_rate": learning_rate, "epochs": done, "seconds": seconds}
            | {"images_per_second": speed}
        )
        return result

    if args.mode == "finetune":
        result = phase("1: head (frozen base)", args.learning_rate, args.head_epochs)
        rows = json.loads((run.path / "history.json").read_text())
        unfrozen = transfer.unfreeze_top(base, args.unfreeze, args.unfreeze_unit)
        compile_model(model, args.fine_tune_lr)
        print(f"unfrozen: the top {args.unfreeze} {args.unfreeze_unit}, {unfrozen}")
        head_seconds, epochs = result["train_seconds"], args.epochs - args.head_epochs
        starts = [(len(rows) + 0.5, "fine-tuning starts")]
        result = phase("2: fine-tune", args.fine_tune_lr, epochs, rows, starts)
        result["train_seconds"] = round(head_seconds + result["train_seconds"], 2)
        result["fine_tuning_starts_epoch"] = len(rows) + 1
    else:
        scratch = args.mode == "scratch"
        first = "scratch (all layers)" if scratch else "1: head (frozen base)"
        result, unfrozen = phase(first, args.learning_rate, args.epochs), []
    run.write_json("parameters.json", phases)
    base.save_weights(run.path / ".tmp-base.weights.h5")  # renamed when complete
    (run.path / ".tmp-base.weights.h5").replace(run.path / "base.weights.h5")
    run.add_section("Weights", notice)
    run.add_section("Parameters per phase", parameter_markdown(phases))
    fine_tuned = ", ".join(unfrozen) or "none (no phase 2)"
    run.add_section("Layers fine-tuned in phase 2", fine_tuned)
    for index, row in enumerate(phases, start=1):
        result[f"phase{index}_trainable_params"] = row["trainable"]
        result[f"phase{index}_images_per_second"] = row["images_per_second"]
    result.update(mode=args.mode, unfrozen_layers=len(unfrozen))
    return {**result, "trainable_params_final": phases[-1]["trainable"]}


def parameter_markdown(phases):
    names = {"phase": "phase", "trainable": "trainable params"}
    names |= {"non_trainable": "non-trainable params", "total": "total params"}
    names |= {"trainable_layers": "layers training", "learning_rate": "learning rate"}
    names |= {"epochs": "epochs", "seconds": "s", "images_per_second": "images/s"}
    rows = [{names[key]: row[key] for key in names} for row in phases]
    return experiment.markdown_table(rows) + (
        "\nNon-trainable counts include the BatchNorm moving statistics, frozen in "
        "every phase except scratch. images/s: training images per second of the "
        "phase, validation included."
    )


# ----------------------------------------------------------------------------
# Evaluation and plots
# ----------------------------------------------------------------------------
def evaluate(model, splits, run, args):
    """Stream the test split once: the classifier's figures and confusion matrix,
    the misclassified images, and grad-CAM maps of the first test images."""
    title, names = experiment.default_title(LAB, args), splits.class_names
    probabilities, labels, samples, wrong = [], [], [], []
    for images, batch_labels in splits.test_batches(args.batch_size):
        batch = np.asarray(model.predict_on_batch(images))
        for image, label, guess in zip(images, batch_labels, batch.argmax(axis=-1)):
            if len(samples) < HYPERPARAMETERS["gradcam_images"]:
                samples.append((image, int(label)))
            if guess != label and len(wrong) < 24:
                wrong.append((image, f"true {names[label]}\npred {names[guess]}"))
        probabilities.append(batch)
        labels.append(np.asarray(batch_labels))
    labels = np.concatenate(labels)
    figures, predictions, report = training.evaluate_classifier(
        np.concatenate(probabilities), run, None, labels, names, title
    )
    if wrong:
        plots.image_grid(
            np.stack([image for image, _ in wrong]),
            [caption for _, caption in wrong],
            run.plots / "misclassified.png",
            f"{title}: misclassified test images "
            f"({np.count_nonzero(predictions != labels)} of {len(labels)})",
            title_colors=["firebrick"] * len(wrong),
        )
    layer_name = plot_gradcam(model, samples, names, run.plots / "gradcam.png", title)
    run.add_section("Grad-CAM", f"Heat maps from `{layer_name}`, first test images.")
    run.add_section("Classification report (test set)", f"```\n{report}```")
    files = "base.weights.h5: the backbone alone, for a later run's `--weights PATH`."
    run.add_section("Files", files)
    random = (
        args.mode == "scratch"
        or transfer.RANDOM_BACKBONE_NOTICE in model.weights_notice
    )
    figures["weights"] = "none (random)" if random else args.weights
    if isinstance(splits.train, ImageFolderStream):
        streams = (splits.train, splits.validation, splits.test)
        figures["skipped_files"] = sum(len(stream.skipped) for stream in streams)
    return figures


def gradcam_layer(base, min_cells=HYPERPARAMETERS["gradcam_min_cells"]):
    """The deepest block output at least ``min_cells`` a side (the last one is 1x1
    at 32x32 input, which would make a one-pixel heat map)."""
    outputs = [
        layer
        for layer in base.layers
        if layer.name.endswith("_out") or layer.name == "post_relu"
    ]
    big = [layer for layer in outputs if min(layer.output.shape[1:3]) >= min_cells]
    return (big or outputs)[-1].name


def gradcam(model, base, images, classes, layer_name):
    """Grad-CAM heat maps (N, h, w) in [0, 1] for ``classes``: the feature map's
    channels weighted by the mean gradient of the class logit."""
    ops = keras.ops
    prefix = keras.Model(model.input, model.get_layer("resnet_v2_preprocess").output)
    feature = base.get_layer(layer_name).output
    lower, upper = keras.Model(base.input, feature), keras.Model(feature, base.output)
    pooling, dense = model.get_layer("pooling"), model.get_layer("predictions")
    classes = ops.convert_to_tensor(np.asarray(classes, dtype="int32")[:, None])

    def summed_class_logits(feature_maps):  # image i's logit depends on map i only
        logits = ops.matmul(pooling(upper(feature_maps)), dense.kernel) + dense.bias
        return ops.sum(ops.take_along_axis(logits, classes, axis=1))

    feature_maps = lower(prefix(images, training=False), training=False)
    _, (gradients,) = value_and_input_gradients(
        summed_class_logits, [feature_maps], create_graph=False
    )
    weights = ops.mean(gradients, axis=(1, 2), keepdims=True)
    maps = ops.convert_to_numpy(ops.relu(ops.sum(weights * feature_maps, axis=-1)))
    peak = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def plot_gradcam(model, samples, class_names, path, title):
    """plots/gradcam.png: test images (top row) and their grad-CAM maps blended
    over them (bottom row), shown at 64 pixels a side or more."""
    from matplotlib import colormaps

    base = model.get_layer("resnet50v2")
    images = np.stack([image for image, _ in samples]).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    predicted = probabilities.argmax(axis=-1)
    layer_name = gradcam_layer(base)
    maps = gradcam(model, base, images, predicted, layer_name)[..., None]
    scale = math.ceil(64 / min(images.shape[1:3]))
    images = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    maps = keras.ops.image.resize(maps, images.shape[1:3], interpolation="bilinear")
    heat = colormaps["jet"](np.clip(keras.ops.convert_to_numpy(maps)[..., 0], 0, 1))
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    captions, colors = [], []
    for (_, label), guess, chance in zip(samples, predicted, probabilities.max(-1)):
        captions.append(
            f"true {class_names[label]}\npred {class_names[guess]} ({chance:.2f})"
        )
        colors.append("black" if guess == label else "firebrick")
    cells = "x".join(str(size) for size in base.get_layer(layer_name).output.shape[1:3])
    plots.image_grid(
        np.concatenate([rgb, 0.5 * rgb + 0.5 * heat[..., :3]]),
        captions + [f"grad-CAM: {class_names[guess]}" for guess in predicted],
        path,
        f"{title}: grad-CAM of the predicted class (bottom row; red = most "
        f"relevant, blue = not)\nfrom layer {layer_name} ({cells} cells, upsampled)",
        columns=len(samples),
        title_colors=colors + ["black"] * len(samples),
    )
    return layer_name


def conclude(results, run, args):
    """--compare: what each mode trained, beside the runner's comparison table."""
    rows = [
        {"mode": mode, "weights": figures.get("weights")}
        | {"trainable params (last phase)": figures.get("trainable_params_final")}
        | {
            "macro F1": figures.get("macro_f1"),
            "folder": f"[{mode}/]({mode}/report.md)",
        }
        for mode, figures in results.items()
    ]
    run.add_section(
        "What each mode trained",
        experiment.markdown_table(rows) + "\nhead and finetune share the seed, so "
        "their curves coincide until fine-tuning starts; each mode's sub-folder has "
        "its learning curves (phase boundary marked), parameters per phase, "
        "confusion matrix and grad-CAM.",
    )


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def add_arguments(parser):
    add = parser.add_argument
    add(
        "--mode", choices=MODES, default="finetune", help="scratch, head or both phases"
    )
    add("--weights", default="auto", help="imagenet, auto, none or a weights PATH")
    add("--head-epochs", type=cli.positive_int, help="None: half of --epochs")
    add("--fine-tune-lr", type=cli.positive_float, help="None: --learning-rate / 10")
    add("--unfreeze", type=cli.non_negative_int, default=HYPERPARAMETERS["unfreeze"])
    add("--unfreeze-unit", choices=("blocks", "layers"), default="blocks")
    add("--image-size", type=cli.positive_int, help="None: 32 digits, 128 others")
    add("--train-images", type=cli.positive_int, help="None: 600 digits, all others")


def check_arguments(args, parser):
    """Usage errors (exit 2) and per-dataset defaults; then a bad --weights fails
    (exit 1) before any work."""
    if args.quick:
        args.epochs = min(args.epochs, 2)
    if args.image_size is None:
        large = HYPERPARAMETERS["stream_image_size"]
        args.image_size = transfer.MIN_INPUT_SIZE if args.dataset == "digits" else large
    if args.image_size < transfer.MIN_INPUT_SIZE:
        parser.error(f"--image-size must be at least {transfer.MIN_INPUT_SIZE}")
    if args.test_dataset and args.dataset != "digits":
        parser.error("--test-dataset works with --dataset digits only")
    args.head_epochs = args.head_epochs or max(1, math.ceil(args.epochs / 2))
    divisor = HYPERPARAMETERS["fine_tune_divisor"]
    args.fine_tune_lr = args.fine_tune_lr or args.learning_rate / divisor
    fine_tuning = args.compare or args.mode == "finetune"
    if fine_tuning and args.head_epochs >= args.epochs:
        parser.error(
            f"finetune needs at least one fine-tuning epoch: --head-epochs "
            f"({args.head_epochs}) must be below --epochs ({args.epochs})"
        )
    available = RESNET50V2_COUNTS[args.unfreeze_unit]
    if fine_tuning and not 1 <= args.unfreeze <= available:
        parser.error(
            f"--unfreeze {args.unfreeze}: ResNet50V2 has {available} "
            f"{args.unfreeze_unit} to unfreeze; give 1 to {available}, or use "
            "--mode head to train the head only"
        )
    args.mode = "compare" if args.compare else args.mode
    if args.mode != "scratch":
        transfer.resolve_weights(args.weights)


LAB = experiment.Lab(
    name="lab4_finetune",
    description="Lab 4: ResNet50V2 transfer learning: a head on a frozen backbone, "
    "then fine-tuning its top blocks.",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch="resnet50v2",
    datasets="digits (embedded, default), tf_flowers (tfds), folder:PATH",
    default_dataset="digits",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    train=train,
    variants=lambda args: {mode: {"mode": mode} for mode in MODES},
    conclude=conclude,
    title=lambda args: f"Lab 4: ResNet50V2 {args.mode} on {args.dataset}",
    quick_sizes=QUICK_SIZES,
)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(item.split("=")[0] == "--resume" for item in argv):
        experiment.make_parser(LAB).error(
            "lab 4 cannot --resume: its phases (and --compare's modes) are separate "
            "fits that one checkpoint cannot tell apart; run the command again"
        )
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
