"""Lab 1: convolutional networks, augmentation, transfer learning, model selection.

    python -m labs.lab1_cnn                          # baseline CNN on embedded digits
    python -m labs.lab1_cnn --dataset mnist          # the mnist recipe: plain CNN
    python -m labs.lab1_cnn --dataset folder:.data/cifar10/train \\
        --test-dataset folder:.data/cifar10/test     # the cifar10 recipe: 6+3 VGG
    python -m labs.lab1_cnn --arch resnet --augment basic --search 8  # keras-tuner

What it teaches: how a CNN is put together (convolution, BatchNorm, pooling,
residual connections), preprocessing shown rather than hidden (a Normalization
layer adapted on the training images; augmentation layers active only in
training), how activations compare, model selection on the validation set with
keras-tuner, and a frozen pretrained backbone with a new head (--arch transfer).

Each kind of data has a recipe of defaults (RECIPES; any flag overrides it):
--recipe auto takes mnist for mnist, fashion_mnist and 28x28 grey folders,
cifar10 for cifar10 and 32x32 colour folders, small otherwise (config.json
records it). From airbench (KellerJordan/cifar10-airbench) cifar10 takes flip
and crop, label smoothing, a one-cycle rate, large batches and test-time flips;
not its whitening initialisation or lookahead (not in Keras; left for length).
Measured results on real MNIST and CIFAR-10: the README's results table.
"""

import argparse
import sys

import keras
import numpy as np

from common import cli, experiment, plots, training
from common.data import load_images, scan_image_folder

# One recipe of defaults per kind of data. Units: epochs a maximum (EarlyStopping may
# stop sooner), batch_size images per step, learning_rate Adam's (onecycle's peak),
# patience epochs without a better val_loss, width the first conv stage's filters
# (later stages double it); tta: also predict the mirrored test images, average.
RECIPE_KEYS = ("arch", "epochs", "batch_size", "learning_rate", "patience", "width")
RECIPE_KEYS += ("dropout", "augment", "schedule", "label_smoothing", "tta")
RECIPES = {  # small: digits (1,797 8x8 images) and any other data
    "small": ("baseline", 30, 64, 2e-3, 8, 32, 0.3, "none", "constant", 0.0, False),
    # course bar: 99.3 % with convolution, dense, max-pooling and ReLU only
    "mnist": ("plain", 8, 128, 3e-3, 8, 16, 0.0, "none", "onecycle", 0.1, False),
    # course bar: 88 % with 6 conv + 3 dense layers, BatchNorm and max-pooling
    "cifar10": ("vgg", 24, 256, 4e-3, 24, 32, 0.2, "flipcrop", "onecycle", 0.2, True),
}
HYPERPARAMETERS = {name: dict(zip(RECIPE_KEYS, row)) for name, row in RECIPES.items()}
# Keras's BatchNorm momentum 0.99 needs hundreds of steps to fit; digits has ~20.
BN_MOMENTUM = 0.9
ACTIVATIONS = ("relu", "elu", "gelu", "swish")
AUGMENTATIONS = ("none", "basic", "flipcrop", "randaugment", "mixup", "cutmix")
SEARCHED = ("learning_rate", "width", "dropout", "activation")  # by --search


def choose_recipe(dataset, image_size=None):
    """--recipe auto: by the tfds name, or by a folder's first image."""
    named = {"mnist": "mnist", "fashion_mnist": "mnist", "cifar10": "cifar10"}
    if not dataset.startswith("folder:"):
        return named.get(dataset, "small")
    from PIL import Image

    try:
        with Image.open(scan_image_folder(dataset[7:])[0][0]) as image:
            side, grey = image.size, image.mode in ("L", "1", "I", "I;16")
    except OSError:
        return "small"  # an unreadable first file: the loader reports it
    known = {((28, 28), True): "mnist", ((32, 32), False): "cifar10"}
    return known.get(((image_size,) * 2 if image_size else side, grey), "small")


# ---- Data ---------------------------------------------------------------------
def load_data(args):
    options = dict(image_size=args.image_size, test_dataset=args.test_dataset)
    splits = load_images(args.dataset, args.seed, **options)
    if one_hot(args):  # mixing and smoothing need one-hot labels: batches
        if args.quick:
            splits.take(LAB.quick_sizes, args.seed)
        splits.train = Batches(splits, args.batch_size, args.augment, args.seed)
        y_val = keras.utils.to_categorical(splits.y_val, splits.num_classes)
        splits.validation = (splits.x_val, y_val)
    return splits


def one_hot(args):
    return args.augment in ("mixup", "cutmix") or args.label_smoothing > 0


class Batches(keras.utils.PyDataset):
    """Shuffled one-hot batches, mixed by Keras's MixUp or CutMix layer if asked."""

    def __init__(self, splits, batch_size, kind, seed):
        super().__init__()
        self.x = splits.x_train
        self.y = keras.utils.to_categorical(splits.y_train, splits.num_classes)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.x))
        mixers = {"mixup": keras.layers.MixUp, "cutmix": keras.layers.CutMix}
        self.mixer = mixers[kind](seed=seed) if kind in mixers else None

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        if self.mixer is None:
            return self.x[rows], self.y[rows]
        mixed = self.mixer({"images": self.x[rows], "labels": self.y[rows]})
        return tuple(keras.ops.convert_to_numpy(mixed[key]) for key in mixed)

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.x))


# ---- Builders: from the preprocessed images to class probabilities -----------
def conv_bn(x, filters, activation, name, size=3, strides=1):
    x = keras.layers.Conv2D(
        filters, size, strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if activation is None:  # the residual block adds first
        return x
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
    """The course's CIFAR-10 bar: 6 conv (BatchNorm, max-pooling) + 3 dense."""
    for stage, filters in enumerate((width, 2 * width, 4 * width), start=1):
        x = conv_bn(x, filters, activation, f"stage{stage}a")
        x = conv_bn(x, filters, activation, f"stage{stage}b")
        x = pool(x, f"stage{stage}_pool")
    return dense_head(x, num_classes, (8 * width, 4 * width), dropout, activation, True)


def residual_block(x, filters, activation, name, downsample=False):
    """Two 3x3 convolutions plus a skip connection (1x1 projection when needed)."""
    strides = 2 if downsample else 1
    shortcut = x
    if downsample or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, None, f"{name}_project", 1, strides)
    x = conv_bn(x, filters, activation, f"{name}_1", strides=strides)
    x = conv_bn(x, filters, None, f"{name}_2")
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
    return dense_head(x, num_classes, (32 * width,) * 2, max(dropout, 0.5), activation)


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
    from kernels.warp import RandomAffineWarp

    if kind in ("basic", "flipcrop"):  # flipcrop: airbench's mirror and shift by
        basic, shift = kind == "basic", 0.1 if kind == "basic" else 0.125  # 4 of 32
        return RandomAffineWarp(
            rotation_factor=0.04 * basic,
            zoom_height_factor=0.1 * basic,
            translation_height_factor=shift,
            translation_width_factor=shift,
            flip_mode="horizontal" if input_shape[-1] == 3 else None,  # not digits
            fill_mode="constant" if basic else "reflect",  # flipcrop: as pad-crop,
            interpolation="bilinear" if basic else "nearest",  # whole pixels
            seed=seed,
            name=f"augment_{kind}",
        )
    if kind == "randaugment":
        return keras.layers.RandAugment(
            value_range=(0, 1), num_ops=2, factor=0.3, seed=seed, name="randaugment"
        )
    return None


def learning_rate(args, splits, peak):
    """constant, or onecycle: a linear warm-up to ``peak``, then a cosine decay."""
    if args.schedule == "constant":
        return peak
    steps = args.epochs * -(-len(splits.x_train) // args.batch_size)  # ceil
    warmup = int(0.2 * steps)  # a fifth of the steps up, the rest down
    return keras.optimizers.schedules.CosineDecay(
        peak / 10, steps - warmup, alpha=0.01, warmup_target=peak, warmup_steps=warmup
    )


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
        settings = [hyper[key] for key in ("width", "dropout", "activation")]
        build = ARCHITECTURES[args.arch]
        outputs = build(normalization(x), splits.num_classes, *settings)
    model = keras.Model(inputs, outputs, name=args.arch.replace("-", "_"))
    loss = "sparse_categorical_crossentropy"
    if one_hot(args):
        smoothing = args.label_smoothing
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    rate = learning_rate(args, splits, hyper["learning_rate"])
    model.compile(keras.optimizers.Adam(rate), loss, metrics=["accuracy"])
    return model


# ---- Model selection: keras-tuner on the validation set, before the run -------
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
    table = experiment.markdown_table(trials)
    run.add_section("Model selection (keras-tuner, validation set)", table)
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


# ---- Evaluation and plots -----------------------------------------------------
def augmentation_gallery(args, splits, path):
    """plots/augmentation.png: originals in the first row, augmented copies below."""
    originals, labels, names = (
        splits.x_train[:8],
        splits.y_train[:8],
        splits.class_names,
    )
    rows, captions = [originals], [f"original {names[label]}" for label in labels]
    layer = build_augmentation(args.augment, splits.input_shape, args.seed)
    for repeat in range(3):
        if layer is None:  # MixUp / CutMix: the caption gives the mixed labels
            images, soft = Batches(splits, 64, args.augment, args.seed + repeat)[0]
            images, top = images[:8], np.argsort(soft[:8], axis=1)[:, ::-1]
            captions += [
                f"{row[a]:.2f} {names[a]} + {row[b]:.2f} {names[b]}"
                for row, (a, b) in zip(soft, top[:, :2])
            ]
        else:
            images = keras.ops.convert_to_numpy(layer(originals, training=True))
            captions += [f"{args.augment} #{repeat + 1}"] * len(originals)
        rows.append(images)
    title = f"Augmentation '{args.augment}': originals (top row) and augmented copies"
    plots.image_grid(np.concatenate(rows), captions, path, title, columns=8)


def evaluate(model, splits, run, args):
    title = experiment.default_title(LAB, args)
    scores = model.predict(splits.x_test, batch_size=256, verbose=0)
    if args.tta:  # airbench's test-time augmentation: the mirrored image too
        mirrored = np.ascontiguousarray(splits.x_test[:, :, ::-1])
        scores = (scores + model.predict(mirrored, batch_size=256, verbose=0)) / 2
    figures, predictions, report = training.evaluate_classifier(
        scores, run, splits.x_test, splits.y_test, splits.class_names, title
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


# ---- Command line: a flag left out takes its value from the recipe ------------
def add_arguments(parser):
    add = parser.add_argument
    add("--recipe", choices=("auto", *RECIPES), default="auto", help="defaults set")
    add("--activation", choices=ACTIVATIONS, default="relu")
    add("--augment", choices=AUGMENTATIONS)
    add("--width", type=cli.positive_int, help="filters in the first conv stage")
    add("--dropout", type=cli.fraction)
    add("--schedule", choices=("constant", "onecycle"), help="learning rate")
    add("--label-smoothing", type=cli.fraction)
    add("--tta", action=argparse.BooleanOptionalAction, help="test-time flip")
    add("--search", type=cli.non_negative_int, default=0, help="keras-tuner trials")
    add("--weights", default="auto", help="transfer: imagenet, none, auto or PATH")
    add("--image-size", type=cli.positive_int, help="folder: resize to this square")


def check_arguments(args, parser):
    """Fill every flag left out from the recipe (auto: chosen by the data)."""
    if args.recipe == "auto":
        args.recipe = choose_recipe(args.dataset, args.image_size)
    for key, value in HYPERPARAMETERS[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


LAB = experiment.Lab(
    name="lab1_cnn",
    description="Lab 1: CNNs with augmentation, transfer learning and model selection.",
    hyperparameters=dict.fromkeys(RECIPE_KEYS[1:5]),  # from the recipe
    architectures=ARCHITECTURES,
    default_arch=None,  # the recipe's
    datasets="digits, mnist, fashion_mnist, cifar10 (tfds), npz:PATH or folder:PATH",
    default_dataset="digits",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
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
