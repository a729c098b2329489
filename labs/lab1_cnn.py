"""Lab 1: convolutional networks, augmentation, transfer learning, model selection.

    python -m labs.lab1_cnn                          # baseline CNN on embedded digits
    python -m labs.lab1_cnn --arch resnet --augment basic --activation gelu
    python -m labs.lab1_cnn --search 8               # keras-tuner, then retrain best
    python -m labs.lab1_cnn --dataset npz:mnist.npz  # your own MNIST-format data

What it teaches: how a CNN is put together (convolution, BatchNorm, pooling,
residual connections), what preprocessing does when it is shown rather than
hidden (a Normalization layer adapted on the training images; augmentation as
layers that are active only in training), how activations compare, how to select
a model on the validation set with keras-tuner and touch the test set once, and
how a frozen pretrained backbone with a new head transfers (--arch transfer).

Measured on the course machine (2-core x86_64 CPU, torch 2.13.0 CPU backend):

    python -m labs.lab1_cnn                  baseline CNN, digits: test accuracy
                                             0.9944, macro F1 0.9944, early stop at
                                             epoch 29 (best 21), 30 s training, 42 s
                                             wall (load ~1). On Keras as shipped
                                             (WORKBOOK_KERAS_FIXES=0, same load):
                                             0.9917, stop at 21 (best 13), 34 s
                                             training, 48 s wall
    python -m labs.lab1_cnn --arch mlp       MLP, digits: test accuracy 0.9778
                                             (100 s training at load ~9)

Not measured here: the 8,000-image real-MNIST comparison with the keras-io
"Simple MNIST convnet" (no MNIST copy is reachable offline on this machine). Run
it with --dataset npz:PATH on a keras.datasets.mnist .npz to fill that row.
"""

import sys

import keras
import numpy as np

from common import cli, plots
from common.data import load_images
from common.runs import Run, seed_everything
from common.training import (
    evaluate_classifier,
    fit,
    inference_ms_per_image,
    misclassified_grid,
)

LAB = "lab1_cnn"
HYPERPARAMETERS = {
    "epochs": 30,  # maximum; EarlyStopping on val_loss usually stops sooner
    "batch_size": 64,  # images per step
    "learning_rate": 2e-3,  # Adam step size
    "patience": 8,  # epochs without val_loss improvement before stopping
    "width": 32,  # filters in the first conv stage; later stages double it
    "dropout": 0.3,  # before the classifier
    "activation": "relu",
}
# Keras's default BatchNorm momentum (0.99) needs hundreds of steps before its
# moving statistics fit; a small set gives ~20 steps an epoch, so use 0.9.
BN_MOMENTUM = 0.9
ACTIVATIONS = ("relu", "elu", "gelu", "swish")
AUGMENTATIONS = ("none", "basic", "randaugment", "mixup", "cutmix")


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------
def conv_bn(x, filters, activation, name):
    x = keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.Activation(activation, name=f"{name}_{activation}")(x)


def pool(x, name):
    return keras.layers.MaxPooling2D(2, padding="same", name=name)(x)


def classifier_head(x, num_classes, dropout, name="head"):
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return keras.layers.Dense(
        num_classes, activation="softmax", name=f"{name}_softmax"
    )(x)


def preprocessing(inputs, normalization, augmentation):
    """Augment (training only) images in [0, 1], then standardize them."""
    x = inputs
    if augmentation is not None:
        x = augmentation(x)
    return normalization(x)


# ----------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------
def build_mlp(
    input_shape,
    num_classes,
    normalization,
    augmentation=None,
    width=32,
    dropout=0.3,
    activation="relu",
    name="mlp",
):
    """No convolutions: the dense baseline the original course started from."""
    inputs = keras.Input(input_shape, name="image")
    x = preprocessing(inputs, normalization, augmentation)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate((16 * width, 8 * width), start=1):
        x = keras.layers.Dense(units, activation=activation, name=f"dense{index}")(x)
        x = keras.layers.Dropout(dropout, name=f"dense{index}_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def build_baseline(
    input_shape,
    num_classes,
    normalization,
    augmentation=None,
    width=32,
    dropout=0.3,
    activation="relu",
    name="baseline_cnn",
):
    """Two stages of two 3x3 convolutions with BatchNorm, max-pooling between."""
    inputs = keras.Input(input_shape, name="image")
    x = preprocessing(inputs, normalization, augmentation)
    for stage, filters in enumerate((width, 2 * width), start=1):
        x = conv_bn(x, filters, activation, f"stage{stage}a")
        x = conv_bn(x, filters, activation, f"stage{stage}b")
        x = pool(x, f"stage{stage}_pool")
    return keras.Model(inputs, classifier_head(x, num_classes, dropout), name=name)


def build_vgg(
    input_shape,
    num_classes,
    normalization,
    augmentation=None,
    width=32,
    dropout=0.3,
    activation="relu",
    name="vgg_bn",
):
    """VGG-style: 6 conv (3 stages of 2, BatchNorm) and 3 dense layers."""
    inputs = keras.Input(input_shape, name="image")
    x = preprocessing(inputs, normalization, augmentation)
    for stage, filters in enumerate((width, 2 * width, 4 * width), start=1):
        x = conv_bn(x, filters, activation, f"stage{stage}a")
        x = conv_bn(x, filters, activation, f"stage{stage}b")
        x = pool(x, f"stage{stage}_pool")
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate((8 * width, 4 * width), start=1):
        x = keras.layers.Dropout(dropout, name=f"dense{index}_dropout")(x)
        x = keras.layers.Dense(units, use_bias=False, name=f"dense{index}")(x)
        x = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, name=f"dense{index}_bn"
        )(x)
        x = keras.layers.Activation(activation, name=f"dense{index}_{activation}")(x)
    x = keras.layers.Dropout(dropout, name="output_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def residual_block(x, filters, activation, name, downsample=False):
    """Two 3x3 convolutions plus a skip connection (1x1 projection when needed)."""
    strides = 2 if downsample else 1
    shortcut = x
    if downsample or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_project"
        )(x)
        shortcut = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, name=f"{name}_project_bn"
        )(shortcut)
    x = keras.layers.Conv2D(
        filters,
        3,
        strides=strides,
        padding="same",
        use_bias=False,
        name=f"{name}_conv1",
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(x)
    x = keras.layers.Activation(activation, name=f"{name}_{activation}1")(x)
    x = keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=False, name=f"{name}_conv2"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation(activation, name=f"{name}_{activation}2")(x)


def build_resnet(
    input_shape,
    num_classes,
    normalization,
    augmentation=None,
    width=32,
    dropout=0.3,
    activation="relu",
    name="residual_cnn",
):
    """A small ResNet: a stem and three stages of residual blocks."""
    inputs = keras.Input(input_shape, name="image")
    x = preprocessing(inputs, normalization, augmentation)
    x = conv_bn(x, width, activation, "stem")
    x = residual_block(x, width, activation, "block1")
    x = residual_block(x, 2 * width, activation, "block2", downsample=True)
    x = residual_block(x, 4 * width, activation, "block3", downsample=True)
    return keras.Model(inputs, classifier_head(x, num_classes, dropout), name=name)


def build_transfer(
    input_shape,
    num_classes,
    normalization,
    augmentation=None,
    width=32,
    dropout=0.3,
    activation="relu",
    name="transfer",
    weights="auto",
):
    """A frozen Keras-applications backbone with a new head (shared with lab 4).

    The backbone brings its own preprocessing, so the Normalization layer is not
    used; augmentation still runs first.
    """
    from common.transfer import build_transfer_model

    model, _, notice = build_transfer_model(
        input_shape, num_classes, weights=weights, dropout=dropout, name=name
    )
    if augmentation is not None:
        inputs = keras.Input(input_shape, name="image")
        model = keras.Model(inputs, model(augmentation(inputs)), name=name)
    print(notice if notice.startswith("notice") else f"notice: {notice}")
    return model


ARCHITECTURES = {
    "mlp": build_mlp,
    "baseline": build_baseline,
    "vgg": build_vgg,
    "resnet": build_resnet,
    "transfer": build_transfer,
}


# ----------------------------------------------------------------------------
# Augmentation: geometric and photometric layers in the model (training only);
# MixUp and CutMix mix labels too, so they run on batches in the input pipeline.
# ----------------------------------------------------------------------------
def build_augmentation(kind, input_shape, seed):
    """The in-model augmentation layer for ``kind``, or None."""
    if kind == "basic":
        from kernels.warp import RandomAffineWarp

        return RandomAffineWarp(
            rotation_factor=0.04,
            zoom_height_factor=0.1,
            translation_height_factor=0.1,
            translation_width_factor=0.1,
            flip_mode="horizontal" if input_shape[-1] == 3 else None,
            fill_mode="constant",
            seed=seed,
            name="augment_basic",
        )
    if kind == "randaugment":
        return keras.layers.RandAugment(
            value_range=(0, 1),
            num_ops=2,
            factor=0.3,
            seed=seed,
            name="augment_randaugment",
        )
    return None


class MixedBatches(keras.utils.PyDataset):
    """Shuffled one-hot batches passed through Keras's MixUp or CutMix layer."""

    def __init__(self, x, y, num_classes, batch_size, kind, seed):
        super().__init__()
        self.x, self.y = x, keras.utils.to_categorical(y, num_classes)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))
        layer = keras.layers.MixUp if kind == "mixup" else keras.layers.CutMix
        self.mixer = layer(seed=seed)

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        mixed = self.mixer(
            {"images": self.x[rows], "labels": self.y[rows]}, training=True
        )
        return (
            keras.ops.convert_to_numpy(mixed["images"]),
            keras.ops.convert_to_numpy(mixed["labels"]),
        )

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.x))


def augmentation_gallery(kind, layer, x, y, class_names, path, seed):
    """plots/augmentation.png: originals in the first row, augmented copies below."""
    originals = x[:8]
    rows, captions = [originals], [f"original {class_names[label]}" for label in y[:8]]
    for repeat in range(3):
        if kind in ("mixup", "cutmix"):
            batches = MixedBatches(
                x[:64], y[:64], len(class_names), 64, kind, seed + repeat
            )
            batches.order = np.arange(64)
            images, labels = batches[0]
            images = images[:8]
            captions += [_mix_caption(row, class_names) for row in labels[:8]]
        else:
            images = keras.ops.convert_to_numpy(layer(originals, training=True))
            captions += [f"{kind} #{repeat + 1}"] * len(originals)
        rows.append(images)
    plots.image_grid(
        np.concatenate(rows),
        captions,
        path,
        f"Augmentation '{kind}': originals (top row) and augmented training images",
        columns=len(originals),
    )


def _mix_caption(label_row, class_names):
    top = np.argsort(label_row)[::-1][:2]
    return " + ".join(
        f"{label_row[i]:.2f} {class_names[i]}" for i in top if label_row[i] > 0.01
    )


# ----------------------------------------------------------------------------
# Training, search, evaluation
# ----------------------------------------------------------------------------
def compile_model(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model


def make_model(args, data, normalization, hyper):
    augmentation = build_augmentation(args.augment, data.input_shape, args.seed)
    builder = ARCHITECTURES[args.arch]
    extra = {"weights": args.weights} if args.arch == "transfer" else {}
    model = builder(
        data.input_shape,
        data.num_classes,
        normalization,
        augmentation,
        width=hyper["width"],
        dropout=hyper["dropout"],
        activation=hyper["activation"],
        **extra,
    )
    return compile_model(model, hyper["learning_rate"])


def training_inputs(args, data):
    """(x, y, batch_size) for fit: arrays, or a MixUp/CutMix batch sequence."""
    if args.augment in ("mixup", "cutmix"):
        batches = MixedBatches(
            data.x_train,
            data.y_train,
            data.num_classes,
            args.batch_size,
            args.augment,
            args.seed,
        )
        return batches, None, None
    y = keras.utils.to_categorical(data.y_train, data.num_classes)
    return data.x_train, y, args.batch_size


def search(args, data, normalization, run):
    """keras-tuner RandomSearch on the validation set; returns the best settings."""
    import keras_tuner

    def build(hp):
        hyper = {
            "learning_rate": hp.Float("learning_rate", 3e-4, 1e-2, sampling="log"),
            "width": hp.Choice("width", [16, 32, 48]),
            "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1),
            "activation": hp.Choice("activation", list(ACTIVATIONS)),
        }
        return make_model(args, data, normalization, hyper)

    tuner = keras_tuner.RandomSearch(
        build,
        objective="val_accuracy",
        max_trials=args.search,
        seed=args.seed,
        directory=str(run.path / "tuner"),
        project_name="search",
        overwrite=True,
    )
    x, y, batch_size = training_inputs(args, data)
    y_val = keras.utils.to_categorical(data.y_val, data.num_classes)
    tuner.search(
        x,
        y,
        batch_size=batch_size,
        epochs=min(args.epochs, 10),
        validation_data=(data.x_val, y_val),
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=3)],
    )
    trials = []
    for trial in tuner.oracle.get_best_trials(num_trials=args.search):
        trials.append(
            {
                "trial": trial.trial_id,
                **trial.hyperparameters.values,
                "val_accuracy": trial.score,
            }
        )
    run.write_json("search_trials.json", trials)
    table = [
        "| trial | learning_rate | width | dropout | activation | val_accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for row in trials:
        table.append(
            f"| {row['trial']} | {row['learning_rate']:.2e} | {row['width']} "
            f"| {row['dropout']:.1f} | {row['activation']} | "
            f"{row['val_accuracy']:.4f} |"
        )
    (run.path / "search_trials.md").write_text("\n".join(table) + "\n")
    plot_trials(trials, run.plots / "search_trials.png")
    best = tuner.get_best_hyperparameters(1)[0].values
    print(f"search: best of {len(trials)} trials: {best}")
    return best, "\n".join(table)


def plot_trials(trials, path):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for activation in ACTIVATIONS:
        rows = [row for row in trials if row["activation"] == activation]
        if rows:
            axis.scatter(
                [row["learning_rate"] for row in rows],
                [row["val_accuracy"] for row in rows],
                s=[20 + 2 * row["width"] for row in rows],
                label=activation,
                alpha=0.8,
            )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate (log scale)")
    axis.set_ylabel("best validation accuracy")
    axis.set_title(
        "keras-tuner random search: one point per trial\n(marker size = width)"
    )
    axis.grid(alpha=0.3)
    axis.legend(title="activation")
    plots.save(figure, path)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def parse_args(argv):
    parser = cli.make_parser(
        LAB,
        "Lab 1: CNNs with augmentation, transfer learning and model selection.",
        ARCHITECTURES,
        default_arch="baseline",
        default_dataset="digits",
        datasets_help="digits (embedded), mnist, fashion_mnist, cifar10 (tfds), "
        "npz:PATH or folder:PATH",
        epochs=HYPERPARAMETERS["epochs"],
        batch_size=HYPERPARAMETERS["batch_size"],
        learning_rate=HYPERPARAMETERS["learning_rate"],
        patience=HYPERPARAMETERS["patience"],
    )
    parser.add_argument(
        "--activation", choices=ACTIVATIONS, default=HYPERPARAMETERS["activation"]
    )
    parser.add_argument("--augment", choices=AUGMENTATIONS, default="none")
    parser.add_argument(
        "--width",
        type=cli.positive_int,
        default=HYPERPARAMETERS["width"],
        help="filters in the first conv stage",
    )
    parser.add_argument(
        "--dropout", type=cli.fraction, default=HYPERPARAMETERS["dropout"]
    )
    parser.add_argument(
        "--search",
        type=int,
        default=0,
        metavar="N",
        help="keras-tuner random search of N trials, then retrain best",
    )
    parser.add_argument(
        "--weights",
        default="auto",
        help="--arch transfer: imagenet, none, auto or a weights PATH",
    )
    parser.add_argument(
        "--image-size",
        type=cli.positive_int,
        default=None,
        help="folder:PATH only: resize images to this square size",
    )
    args = parser.parse_args(argv)
    if args.search < 0:
        parser.error(
            f"--search must be 0 (off) or a number of trials, got {args.search}"
        )
    if args.quick:
        args.epochs = min(args.epochs, 2)
        args.search = min(args.search, 2)
    return args


def main(argv=None):
    argv = cli.resume_argv(sys.argv[1:] if argv is None else argv, LAB)
    args = parse_args(argv)
    seed_everything(args.seed)
    data = load_images(
        args.dataset, seed=args.seed, quick=args.quick, image_size=args.image_size
    )
    run = Run.create(LAB, args, argv)
    run.write_config(data=data.describe())
    print(
        f"data: {data.source}: {len(data.x_train)} train, {len(data.x_val)} "
        f"validation, {len(data.x_test)} test images of {data.input_shape}, "
        f"{data.num_classes} classes"
    )

    normalization = keras.layers.Normalization(axis=-1, name="standardize")
    normalization.adapt(data.x_train)
    hyper = {
        "learning_rate": args.learning_rate,
        "width": args.width,
        "dropout": args.dropout,
        "activation": args.activation,
    }
    sections = []
    if args.search:
        best, table = search(args, data, normalization, run)
        hyper.update(best)
        sections.append(("Model selection (keras-tuner, validation set)", table))

    model = make_model(args, data, normalization, hyper)
    if args.augment != "none":
        layer = build_augmentation(args.augment, data.input_shape, args.seed)
        augmentation_gallery(
            args.augment,
            layer,
            data.x_train,
            data.y_train,
            data.class_names,
            run.plots / "augmentation.png",
            args.seed,
        )
    x, y, batch_size = training_inputs(args, data)
    y_val = keras.utils.to_categorical(data.y_val, data.num_classes)
    title = (
        f"Lab 1 {args.arch} ({hyper['activation']}, augment {args.augment}) "
        f"on {args.dataset}"
    )
    result = fit(
        model,
        run,
        x,
        y,
        validation_data=(data.x_val, y_val),
        epochs=args.epochs,
        batch_size=batch_size,
        patience=args.patience,
        title=title,
    )

    figures, predictions, report = evaluate_classifier(
        model, run, data.x_test, data.y_test, data.class_names, title
    )
    misclassified_grid(
        run, data.x_test, data.y_test, predictions, data.class_names, title
    )
    metrics = {
        **result,
        **figures,
        "inference_ms_per_image": inference_ms_per_image(model, data.x_test),
        **{f"hp_{key}": value for key, value in hyper.items()},
    }
    run.write_metrics(metrics)
    run.save_model(model)
    sections.append(("Classification report (test set)", f"```\n{report}```"))
    run.write_report(title, metrics, sections)
    print(
        f"test accuracy {figures['test_accuracy']:.4f}, macro F1 "
        f"{figures['macro_f1']:.4f}, {result['train_seconds']:.0f} s training"
    )
    run.finish()
    return metrics


if __name__ == "__main__":
    sys.exit(cli.run(main))
