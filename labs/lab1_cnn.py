"""Lab 1: convolutional networks, augmentation, transfer learning, model selection.

    python -m labs.lab1_cnn                          # baseline CNN on embedded digits
    python -m labs.lab1_cnn --arch resnet --augment basic --activation gelu
    python -m labs.lab1_cnn --search 8               # keras-tuner, then retrain best
    python -m labs.lab1_cnn --dataset folder:.data/mnist/train \\
        --test-dataset folder:.data/mnist/test       # real MNIST from PNG folders

What it teaches: how a CNN is put together (convolution, BatchNorm, pooling,
residual connections), what preprocessing does when it is shown rather than
hidden (a Normalization layer adapted on the training images; augmentation as
layers that are active only in training), how activations compare, how to select
a model on the validation set with keras-tuner and touch the test set once, and
how a frozen pretrained backbone with a new head transfers (--arch transfer).

Measured results (3 seeds, real MNIST and CIFAR-10 against the course bars): see
the README's results table.
"""

import sys

import keras
import numpy as np

from common import cli, experiment, plots, training
from common.data import load_images

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
SEARCHED = ("learning_rate", "width", "dropout", "activation")  # by --search


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------
def load_data(args):
    splits = load_images(
        args.dataset,
        seed=args.seed,
        image_size=args.image_size,
        test_dataset=args.test_dataset,
    )
    if args.augment in ("mixup", "cutmix"):  # they mix labels: batches, not layers
        if args.quick:
            splits.take({"train": 256, "val": 64, "test": 128}, args.seed)
        splits.train = MixedBatches(splits, args.batch_size, args.augment, args.seed)
        y_val = keras.utils.to_categorical(splits.y_val, splits.num_classes)
        splits.validation = (splits.x_val, y_val)
    return splits


class MixedBatches(keras.utils.PyDataset):
    """Shuffled one-hot batches passed through Keras's MixUp or CutMix layer."""

    def __init__(self, splits, batch_size, kind, seed):
        super().__init__()
        self.x = splits.x_train
        self.y = keras.utils.to_categorical(splits.y_train, splits.num_classes)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.x))
        layer = keras.layers.MixUp if kind == "mixup" else keras.layers.CutMix
        self.mixer = layer(seed=seed)

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        mixed = self.mixer({"images": self.x[rows], "labels": self.y[rows]})
        return (
            keras.ops.convert_to_numpy(mixed["images"]),
            keras.ops.convert_to_numpy(mixed["labels"]),
        )

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.x))


# ----------------------------------------------------------------------------
# Builders: each takes the preprocessed image tensor and returns class scores
# ----------------------------------------------------------------------------
def conv_bn(x, filters, activation, name, size=3, strides=1):
    x = keras.layers.Conv2D(
        filters, size, strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.Activation(activation, name=f"{name}_{activation}")(x)


def pool(x, name, size=2):
    return keras.layers.MaxPooling2D(size, 2, padding="same", name=name)(x)


def dense_head(x, num_classes, units, dropout, activation, batch_norm=False):
    """Hidden dense layers (each after dropout), then the softmax layer."""
    x = keras.layers.Flatten(name="flatten")(x)
    for index, width in enumerate(units, start=1):
        x = keras.layers.Dropout(dropout, name=f"dense{index}_dropout")(x)
        x = keras.layers.Dense(width, use_bias=not batch_norm, name=f"dense{index}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(
                momentum=BN_MOMENTUM, name=f"dense{index}_bn"
            )(x)
        x = keras.layers.Activation(activation, name=f"dense{index}_{activation}")(x)
    x = keras.layers.Dropout(dropout, name="output_dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def pooled_head(x, num_classes, dropout):
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def build_mlp(x, num_classes, width, dropout, activation):
    """No convolutions: the dense baseline the course started from."""
    return dense_head(x, num_classes, (16 * width, 8 * width), dropout, activation)


def build_plain(x, num_classes, width, dropout, activation):
    """The course's MNIST CNN: convolution, max-pooling, dense and ReLU only."""
    for stage, filters in enumerate((width, 2 * width), start=1):
        for part in "ab":
            x = keras.layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"conv{stage}{part}"
            )(x)
        x = pool(x, f"stage{stage}_pool")
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(4 * width, activation="relu", name="dense1")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="softmax")(x)


def build_baseline(x, num_classes, width, dropout, activation):
    """Two stages of two 3x3 convolutions with BatchNorm, max-pooling between."""
    for stage, filters in enumerate((width, 2 * width), start=1):
        x = conv_bn(x, filters, activation, f"stage{stage}a")
        x = conv_bn(x, filters, activation, f"stage{stage}b")
        x = pool(x, f"stage{stage}_pool")
    return pooled_head(x, num_classes, dropout)


def build_vgg(x, num_classes, width, dropout, activation):
    """The course's CIFAR-10 bar: 6 conv (3 stages of 2, BatchNorm, max-pooling)
    and 3 dense layers."""
    for stage, filters in enumerate((width, 2 * width, 4 * width), start=1):
        x = conv_bn(x, filters, activation, f"stage{stage}a")
        x = conv_bn(x, filters, activation, f"stage{stage}b")
        x = pool(x, f"stage{stage}_pool")
    units = (8 * width, 4 * width)
    return dense_head(x, num_classes, units, dropout, activation, batch_norm=True)


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
    x = conv_bn(x, filters, activation, f"{name}_1", strides=strides)
    x = keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_2_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation(activation, name=f"{name}_{activation}")(x)


def build_resnet(x, num_classes, width, dropout, activation):
    """A small ResNet: a stem and three stages of residual blocks."""
    x = conv_bn(x, width, activation, "stem")
    x = residual_block(x, width, activation, "block1")
    x = residual_block(x, 2 * width, activation, "block2", downsample=True)
    x = residual_block(x, 4 * width, activation, "block3", downsample=True)
    return pooled_head(x, num_classes, dropout)


def build_alexnet(x, num_classes, width, dropout, activation):
    """AlexNet for 32x32 inputs, as the course sized it: five convolutions, 3x3
    max-pooling with stride 2 (overlapping), two dropout-regularised dense layers;
    BatchNorm stands in for local response normalization (not in Keras)."""
    x = conv_bn(x, 2 * width, activation, "conv1", size=5)
    x = pool(x, "pool1", size=3)
    x = conv_bn(x, 6 * width, activation, "conv2", size=5)
    x = pool(x, "pool2", size=3)
    for index, filters in enumerate((12 * width, 8 * width, 8 * width), start=3):
        x = conv_bn(x, filters, activation, f"conv{index}")
    x = pool(x, "pool5", size=3)
    units = (32 * width, 32 * width)
    return dense_head(x, num_classes, units, max(dropout, 0.5), activation)


ARCHITECTURES = {
    "mlp": build_mlp,
    "plain": build_plain,
    "baseline": build_baseline,
    "vgg": build_vgg,
    "resnet": build_resnet,
    "alexnet": build_alexnet,
    "transfer": None,  # a frozen ResNet50V2 backbone (common.transfer)
}


def build_augmentation(kind, input_shape, seed):
    """The in-model augmentation layer for ``kind`` (active in training only)."""
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
            value_range=(0, 1), num_ops=2, factor=0.3, seed=seed, name="randaugment"
        )
    return None


def build_model(args, splits, hyper=None):
    """Input -> augmentation (training only) -> standardization -> the arch."""
    hyper = hyper or vars(args)
    augmentation = build_augmentation(args.augment, splits.input_shape, args.seed)
    inputs = keras.Input(splits.input_shape, name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    if args.arch == "transfer":
        from common.transfer import build_transfer_model

        backbone, _, notice = build_transfer_model(
            splits.input_shape, splits.num_classes, args.weights, hyper["dropout"]
        )
        print(notice if notice.startswith("notice") else f"notice: {notice}")
        outputs = backbone(x)
    else:
        normalization = keras.layers.Normalization(axis=-1, name="standardize")
        normalization.adapt(splits.x_train)
        outputs = ARCHITECTURES[args.arch](
            normalization(x),
            splits.num_classes,
            hyper["width"],
            hyper["dropout"],
            hyper["activation"],
        )
    model = keras.Model(inputs, outputs, name=args.arch.replace("-", "_"))
    mixed = splits.train is not None
    model.compile(
        optimizer=keras.optimizers.Adam(hyper["learning_rate"]),
        loss="categorical_crossentropy" if mixed else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


# ----------------------------------------------------------------------------
# Model selection: keras-tuner on the validation set, before the real run
# ----------------------------------------------------------------------------
def search(args, splits, run):
    """keras-tuner RandomSearch; the best settings replace the flags' values."""
    import keras_tuner

    def build(hp):
        hyper = {
            "learning_rate": hp.Float("learning_rate", 3e-4, 1e-2, sampling="log"),
            "width": hp.Choice("width", [16, 32, 48]),
            "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1),
            "activation": hp.Choice("activation", list(ACTIVATIONS)),
        }
        return build_model(args, splits, hyper)

    tuner = keras_tuner.RandomSearch(
        build,
        objective="val_accuracy",
        max_trials=min(args.search, 2) if args.quick else args.search,
        seed=args.seed,
        directory=str(run.path / "tuner"),
        project_name="search",
        overwrite=True,
    )
    tuner.search(
        splits.train or splits.x_train,
        None if splits.train else splits.y_train,
        batch_size=None if splits.train else args.batch_size,
        epochs=min(args.epochs, 10),
        validation_data=splits.validation or (splits.x_val, splits.y_val),
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=3)],
    )
    trials = [
        {"trial": t.trial_id, **t.hyperparameters.values, "val_accuracy": t.score}
        for t in tuner.oracle.get_best_trials(num_trials=args.search)
    ]
    run.write_json("search_trials.json", trials)
    run.add_section(
        "Model selection (keras-tuner, validation set)",
        experiment.markdown_table(trials),
    )
    plots.scatter_groups(
        trials,
        "learning_rate",
        "val_accuracy",
        "activation",
        run.plots / "search_trials.png",
        "keras-tuner random search: one point per trial",
        xlabel="learning rate (log scale)",
        ylabel="best validation accuracy",
    )
    best = tuner.get_best_hyperparameters(1)[0].values
    print(f"search: best of {len(trials)} trials: {best}")
    vars(args).update(best)


# ----------------------------------------------------------------------------
# Evaluation and plots
# ----------------------------------------------------------------------------
def augmentation_gallery(args, splits, path):
    """plots/augmentation.png: originals in the first row, augmented copies below."""
    originals, labels = splits.x_train[:8], splits.y_train[:8]
    rows = [originals]
    captions = [f"original {splits.class_names[label]}" for label in labels]
    layer = build_augmentation(args.augment, splits.input_shape, args.seed)
    for repeat in range(3):
        if layer is None:  # MixUp / CutMix: the caption gives the mixed labels
            images, soft = MixedBatches(splits, 64, args.augment, args.seed + repeat)[0]
            images, top = images[:8], np.argsort(soft[:8], axis=1)[:, ::-1]
            captions += [
                f"{row[a]:.2f} {splits.class_names[a]} + {row[b]:.2f} "
                f"{splits.class_names[b]}"
                for row, (a, b) in zip(soft, top[:, :2])
            ]
        else:
            images = keras.ops.convert_to_numpy(layer(originals, training=True))
            captions += [f"{args.augment} #{repeat + 1}"] * len(originals)
        rows.append(images)
    plots.image_grid(
        np.concatenate(rows),
        captions,
        path,
        f"Augmentation '{args.augment}': originals (top row) and augmented copies",
        columns=len(originals),
    )


def evaluate(model, splits, run, args):
    title = experiment.default_title(LAB, args)
    figures, predictions, report = training.evaluate_classifier(
        model, run, splits.x_test, splits.y_test, splits.class_names, title
    )
    training.misclassified_grid(
        run, splits.x_test, splits.y_test, predictions, splits.class_names, title
    )
    if args.augment != "none":
        augmentation_gallery(args, splits, run.plots / "augmentation.png")
    run.add_section("Classification report (test set)", f"```\n{report}```")
    return {
        **figures,
        "inference_ms_per_image": training.inference_ms_per_image(model, splits.x_test),
        **{f"hp_{key}": getattr(args, key) for key in SEARCHED},
    }


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def add_arguments(parser):
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
        type=cli.non_negative_int,
        default=0,
        metavar="N",
        help="keras-tuner random search of N trials, then retrain the best",
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


LAB = experiment.Lab(
    name="lab1_cnn",
    description="Lab 1: CNNs with augmentation, transfer learning and model selection.",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch="baseline",
    datasets="digits (embedded), mnist, fashion_mnist, cifar10 (tfds), npz:PATH or "
    "folder:PATH",
    default_dataset="digits",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    prepare=lambda args, splits, run: args.search and search(args, splits, run),
    title=lambda args: (
        f"Lab 1 {args.arch} ({args.activation}, augment "
        f"{args.augment}) on {args.dataset}"
    ),
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
