"""Lab 6: semantic segmentation with a U-Net, and what its skip connections do.

    python -m labs.lab6_unet                        # U-Net on generated scenes
    python -m labs.lab6_unet --compare              # unet vs no-skip, same data
    python -m labs.lab6_unet --dataset oxford_iiit_pet --image-size 128
    python -m labs.lab6_unet --dataset folder:PATH  # PATH/images/, PATH/masks/

What it teaches: segmentation as classification of every pixel; the U-Net's
encoder (convolutions and pooling trade resolution for context), its decoder
(upsampling back to full size) and the skip connections that hand the decoder the
encoder's fine detail (--arch no-skip removes them: outlines and the thin border
class suffer); augmentation that moves image and mask together (a flip and an
affine warp, bilinear for the image, nearest-neighbour for the mask); pixel
accuracy against the majority-class baseline, and mean IoU, the stricter measure.

Measured results: README's results table (Lab 6 rows).
"""

import sys

import keras
import numpy as np
from keras import layers

from common import cli, experiment, plots
from common.cli import WorkbookError
from common.data import SCENE_CLASSES, Splits, load_tfds, make_scenes, read_mask_folder

HYPERPARAMETERS = {
    "epochs": 20,  # maximum; the learning rate decays to 0 over them (cosine)
    "batch_size": 16,  # images per step
    "learning_rate": 2e-3,  # Adam's initial step size
    "patience": 5,  # epochs without val_loss improvement before stopping
    "depth": 4,  # encoder blocks (each halves the resolution), as in the course
    "width": 8,  # filters of the first block; each level doubles them
    "num_scenes": 1500,  # generated scenes (70 % train, 10 % validation, 20 % test)
    "scene_size": 64,  # default --image-size of scenes (pixels, square)
    "image_size": 128,  # default --image-size of real photos (pixels, square)
    "augment": "warp",  # none, flip, or warp (flip + rotation, zoom, shift)
}
BN_MOMENTUM = 0.9  # BatchNorm statistics settle within a short epoch
AUGMENTATIONS = ("none", "flip", "warp")
PET_CLASSES = ["pet", "background", "border"]  # tfds trimap values 1, 2, 3
QUICK_SIZES = {"train": 32, "val": 8, "test": 16}


# ---- Data: scenes and folders (common.data), Oxford-IIIT Pets (tfds) ----------
def read_tfds_pets(split, size):
    """Oxford-IIIT Pets images and trimaps (pet, background, border), resized."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def resize(example):
        image = tf.image.resize(example["image"], (size, size), antialias=True) / 255
        mask = example["segmentation_mask"]
        mask = tf.image.resize(mask, (size, size), method="nearest")[..., 0]
        return image, tf.cast(mask, tf.int32) - 1

    dataset = load_tfds("oxford_iiit_pet", split, as_supervised=False).map(resize)
    batches = list(tfds.as_numpy(dataset.batch(256)))
    images, masks = (np.concatenate(arrays) for arrays in zip(*batches))
    return images, masks.astype("uint8")


def read_dataset(spec, args, split="train"):
    """(images, masks, class names, source) of ``spec``; ``split``: tfds's split."""
    size = args.image_size
    if spec == "scenes":
        seed = args.seed + (split == "test")
        x, y = make_scenes(64 if args.quick else args.num_scenes, size, seed)
        return x, y, SCENE_CLASSES, f"generated scenes, {size} px"
    if spec == "oxford_iiit_pet":
        return *read_tfds_pets(split, size), PET_CLASSES, f"tfds {split}, {size} px"
    if spec.startswith("folder:"):
        return *read_mask_folder(spec[7:], size), f"folder {spec[7:]}, {size} px"
    raise WorkbookError(
        f"unknown dataset {spec!r}. Use scenes (generated), oxford_iiit_pet "
        "(tensorflow-datasets) or folder:PATH (PATH/images and PATH/masks)."
    )


def load_data(args):
    """70/10/20 % of the images for training/validation/test; or 90/10 % and a
    test set of its own (tfds's test split, or --test-dataset)."""
    x, y, names, source = read_dataset(args.dataset, args)
    test = args.test_dataset
    test = test or ("oxford_iiit_pet" if args.dataset == "oxford_iiit_pet" else None)
    order = np.random.default_rng(args.seed).permutation(len(x))
    cuts = [round(f * len(x)) for f in ((0.9,) if test else (0.7, 0.8))]
    arrays = [array for rows in np.split(order, cuts) for array in (x[rows], y[rows])]
    if test:
        *test_arrays, test_names, test_source = read_dataset(test, args, "test")
        if test_names != names:
            raise WorkbookError(
                f"the test set {test} has the classes {test_names} but {args.dataset}"
                f" has {names}; give a test set with the same classes."
            )
        arrays, source = arrays + test_arrays, f"{source}; test: {test_source}"
    if min(len(array) for array in arrays) == 0:
        raise WorkbookError(
            f"{args.dataset} has {len(x)} images, too few for a training, a "
            "validation and a test split. Give at least 10."
        )
    data = Splits(args.dataset, source, *arrays, "segmentation", list(names))
    data.embedded = args.dataset == "scenes"
    if args.quick:
        data.take(QUICK_SIZES, args.seed)
    shares = np.bincount(data.y_train.ravel(), minlength=len(names)) / data.y_train.size
    data.notes.update(
        majority_class=names[np.argmax(shares)],
        majority_baseline=float(np.mean(data.y_test == np.argmax(shares))),
        train_pixel_shares={n: round(float(s), 4) for n, s in zip(names, shares)},
    )
    if args.augment != "none":
        data.train = PairedAugmentation(data, args.batch_size, args.seed, args.augment)
        data.validation = (data.x_val, data.y_val)
    return data


# ---- Augmentation that moves image and mask together --------------------------
def augment_pairs(images, masks, rng, augment="warp"):
    """One random flip (and rotation, zoom, shift) per pair, the same for image and
    mask: the workbook's batched warp, bilinear for the image and nearest-neighbour
    for the mask (which must not get invented in-between classes)."""
    from kernels.warp import affine_transforms, warp

    count, height, width = masks.shape
    scale = float(augment == "warp")

    def uniform(limit):
        return (scale * rng.uniform(-limit, limit, count)).astype("float32")

    zoom, shift = 1.0 + uniform(0.1), uniform(0.06)  # zoom 0.9-1.1, shift 6 %
    flip = (rng.random(count) < 0.5).astype("float32")
    # rotation (radians, at most 11 degrees), zoom and shift (pixels), then flip
    transforms = affine_transforms(
        height, width, uniform(0.2), zoom, zoom, shift * height, shift * width, flip
    )
    images = warp(images, transforms, "bilinear", "reflect")
    masks = warp(masks[..., None].astype("float32"), transforms, "nearest", "reflect")
    masks = np.rint(keras.ops.convert_to_numpy(masks)[..., 0]).astype("uint8")
    return keras.ops.convert_to_numpy(images), masks


class PairedAugmentation(keras.utils.PyDataset):
    """Shuffled training batches of augmented pairs. The draws depend only on
    (seed, epoch, batch), so every variant of a comparison and a resumed run see
    the same data; ``epoch`` is set by a callback, since fit knows it."""

    def __init__(self, splits, batch_size, seed, augment):
        super().__init__()
        self.x, self.y, self.batch_size = splits.x_train, splits.y_train, batch_size
        self.seed, self.augment, self.epoch = seed, augment, 0

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, index):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))
        rows = np.sort(order[index * self.batch_size : (index + 1) * self.batch_size])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return augment_pairs(self.x[rows], self.y[rows], rng, self.augment)


def fit_kwargs(args, splits, run):
    """With augmentation: a gallery of augmented pairs, and the epoch callback."""
    if splits.train is None:
        return {}
    images, masks = splits.x_train[:4], splits.y_train[:4]
    rng = np.random.default_rng(args.seed)
    augmented = augment_pairs(images, masks, rng, args.augment)
    draw_rows(
        [images, masks, *augmented],
        ["image", "mask", f"augmented ({args.augment})", "its mask, moved alike"],
        [""] * len(images),
        splits.class_names,
        run.plots / "augmentation.png",
        "Augmentation moves image and mask together (training only)",
    )
    batches = splits.train
    set_epoch = lambda epoch, logs: setattr(batches, "epoch", epoch)  # noqa: E731
    return {"callbacks": [keras.callbacks.LambdaCallback(on_epoch_begin=set_epoch)]}


# ---- Architectures ------------------------------------------------------------
def conv_block(x, filters, name):
    """Two 3x3 convolutions, each with BatchNorm and ReLU, as in the course."""
    for index in (1, 2):
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"{name}_conv{index}"
        )(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def build_unet(
    shape, classes, normalization, depth=4, width=8, skips=True, name="unet"
):
    """Encoder blocks with pooling, a bottleneck, decoder blocks with upsampling;
    with ``skips`` each decoder block also gets the encoder's output at its
    resolution (the U-Net). The output is one logit per class and pixel."""
    inputs = keras.Input(shape, name="image")
    x, encoder = normalization(inputs), []
    for level in range(1, depth + 1):
        x = conv_block(x, width * 2 ** (level - 1), f"down{level}")
        encoder.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = conv_block(x, width * 2**depth, "bottleneck")
    for level in range(depth, 0, -1):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_up")(x)
        if skips:
            x = layers.Concatenate(name=f"up{level}_skip")([x, encoder[level - 1]])
        x = conv_block(x, width * 2 ** (level - 1), f"up{level}")
    # Logits, not softmax: Keras 3.15.1's torch sparse cross-entropy on rank-4
    # probabilities fails in backward ("grad_input must be contiguous").
    outputs = layers.Conv2D(classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def build_no_skip(shape, classes, normalization, depth=4, width=8):
    """The same encoder-decoder without the skip connections."""
    return build_unet(shape, classes, normalization, depth, width, False, "no_skip")


ARCHITECTURES = {"unet": build_unet, "no-skip": build_no_skip}


def build_model(args, splits):
    normalization = layers.Normalization(axis=-1, name="standardize")
    normalization.adapt(splits.x_train)
    model = ARCHITECTURES[args.arch](
        splits.input_shape, splits.num_classes, normalization, args.depth, args.width
    )
    steps = args.epochs * int(np.ceil(len(splits.x_train) / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    # Mean IoU is measured on the test set only: Keras's MeanIoU fills its
    # confusion matrix with ops.scatter, a Python loop over pixels on torch.
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")],
    )
    return model


# ---- Evaluation and plots -----------------------------------------------------
def confusion_counts(truth, predicted, classes):
    """Per-image confusion matrices: counts of (image, true class, predicted class)."""
    count = len(truth)
    codes = truth.reshape(count, -1).astype("int64") * classes
    codes += predicted.reshape(count, -1) + classes**2 * np.arange(count)[:, None]
    counts = np.bincount(codes.ravel(), minlength=count * classes**2)
    return counts.reshape(count, classes, classes)


def intersection_over_union(confusion):
    """IoU per class (last axis) from confusion counts; NaN where a class is absent."""
    hits = np.diagonal(confusion, axis1=-2, axis2=-1).astype("float64")
    union = confusion.sum(axis=-1) + confusion.sum(axis=-2) - hits
    return np.divide(hits, union, out=np.full(hits.shape, np.nan), where=union > 0)


def evaluate(model, splits, run, args):
    """Pixel accuracy, mean and per-class IoU on the test set; examples and bars."""
    names, x_test, y_test = splits.class_names, splits.x_test, splits.y_test
    predicted, confusion = [], []
    for start in range(0, len(x_test), 256):  # in chunks: logits are large
        logits = model.predict(x_test[start : start + 256], verbose=0)
        predicted.append(np.argmax(logits, axis=-1).astype("uint8"))
        truth = y_test[start : start + 256]
        confusion.append(confusion_counts(truth, predicted[-1], len(names)))
    predicted, confusion = np.concatenate(predicted), np.concatenate(confusion)
    total = confusion.sum(axis=0)
    class_iou = intersection_over_union(total)
    image_iou = np.nanmean(intersection_over_union(confusion), axis=-1)
    figures = {
        "pixel_accuracy": float(np.trace(total) / total.sum()),
        "mean_iou": float(np.nanmean(class_iou)),
        "majority_baseline": splits.notes["majority_baseline"],
        "majority_class": splits.notes["majority_class"],
        **{f"iou_{n.replace(' ', '_')}": float(v) for n, v in zip(names, class_iou)},
    }
    order = np.argsort(image_iou, kind="stable")
    rest = np.random.default_rng(args.seed).permutation(order[2:-2])[:4]
    kinds = dict.fromkeys(rest, "random") | dict.fromkeys(order[::-1][:2], "best")
    kinds |= dict.fromkeys(order[:2], "worst")  # a test set of one: worst wins
    picks = sorted(kinds, key=lambda i: ("worst", "best", "random").index(kinds[i]))
    title = f"{model.name} on {args.dataset}"
    draw_rows(
        [
            x_test[picks],
            y_test[picks],
            predicted[picks],
            (x_test[picks], predicted[picks]),
        ],
        ["test image", "true mask", "predicted mask", "prediction over image"],
        [f"{kinds[i]}: IoU {image_iou[i]:.2f}" for i in picks],
        names,
        run.plots / "segmentation_examples.png",
        f"{title}: worst, best and random test images (mean IoU of each image)",
    )
    plots.bar_chart(
        names,
        {"intersection over union (0-1)": list(np.nan_to_num(class_iou))},
        run.plots / "class_iou.png",
        f"{model.name}: test IoU per class\nmean IoU {figures['mean_iou']:.3f}, "
        f"pixel accuracy {figures['pixel_accuracy']:.3f}\n(majority-class "
        f"baseline {figures['majority_baseline']:.3f})",
        xlabel="class",
    )
    shares = total.sum(axis=1) / total.sum()
    table = ["| class | IoU | test pixel share |", "|---|---|---|"]
    table += [
        f"| {n} | {v:.4f} | {s:.4f} |" for n, v, s in zip(names, class_iou, shares)
    ]
    run.add_section("Per-class IoU (test set)", "\n".join(table))
    return figures


def draw_rows(columns, headings, row_labels, class_names, path, title):
    """One row per example, one column per panel: an image (N, H, W, 3), a mask
    (N, H, W) in class colours, or (images, masks) for a mask blended over images."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20").colors
    colors = np.asarray(colors)[: len(class_names), :3]
    count = len(row_labels)
    height = 2.2 * count + 1.1  # inches: rows, then the title and the class legend
    figure, axes = plt.subplots(
        count, len(columns), figsize=(2.3 * len(columns), height)
    )
    for column, (panel, heading) in enumerate(zip(columns, headings)):
        for row, axis in enumerate(np.reshape(axes, (count, -1))[:, column]):
            if isinstance(panel, tuple):
                image = 0.5 * panel[0][row] + 0.5 * colors[panel[1][row]]
            else:
                image = panel[row] if panel.ndim == 4 else colors[panel[row]]
            axis.imshow(np.clip(image, 0, 1), interpolation="nearest")
            axis.set(xticks=[], yticks=[], title=heading if row == 0 else "")
            axis.set_ylabel(row_labels[row] if column == 0 else "", fontsize=8)
    patches = [Patch(color=c, label=n) for c, n in zip(colors, class_names)]
    figure.legend(handles=patches, loc="lower center", ncol=len(patches), title="class")
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.75 / height, 1, 1 - 0.3 / height))
    figure.savefig(path, dpi=plots.DPI)
    plt.close(figure)


# ---- Command line -------------------------------------------------------------
SIZES = f"{HYPERPARAMETERS['scene_size']} for scenes, {HYPERPARAMETERS['image_size']}"
FLAGS = {  # name: (type, help[, default]); the defaults are in HYPERPARAMETERS
    "depth": (cli.positive_int, "encoder blocks; image sides divisible by 2**depth"),
    "width": (cli.positive_int, "filters of the first block, doubled at every level"),
    "num_scenes": (cli.positive_int, "scenes: images generated (70/10/20 %% splits)"),
    "image_size": (cli.positive_int, f"pixels a side (None: {SIZES} photos)", None),
}


def add_arguments(parser):
    parser.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default=HYPERPARAMETERS["augment"],
        help="training augmentation, the same for image and mask",
    )


def check_arguments(args, parser):
    if args.image_size is None:
        scenes = args.dataset == "scenes"
        args.image_size = HYPERPARAMETERS["scene_size" if scenes else "image_size"]
    step = 2**args.depth
    if args.image_size % step or args.image_size < 2 * step:
        parser.error(
            f"--image-size {args.image_size} must be a multiple of 2**depth = {step} "
            f"and at least {2 * step}, so that --depth {args.depth} poolings halve it "
            f"evenly (e.g. --image-size {max(2, round(args.image_size / step)) * step})"
        )


def summary(metrics):
    return (
        f"pixel accuracy {metrics['pixel_accuracy']:.4f} (majority baseline "
        f"{metrics['majority_baseline']:.4f}), mean IoU {metrics['mean_iou']:.4f}, "
        f"{metrics.get('train_seconds', 0):.0f} s training"
    )


LAB = experiment.Lab(
    name="lab6_unet",
    description="Lab 6: semantic segmentation with a U-Net (and without its skips).",
    hyperparameters=HYPERPARAMETERS,
    architectures=ARCHITECTURES,
    default_arch="unet",
    datasets="scenes (generated, default), oxford_iiit_pet (tfds), folder:PATH "
    "(PATH/images/NAME.jpg + PATH/masks/NAME.png of class indices, optional "
    "PATH/classes.txt)",
    default_dataset="scenes",
    load_data=load_data,
    build=build_model,
    evaluate=evaluate,
    flags=FLAGS,
    add_arguments=add_arguments,
    check_arguments=check_arguments,
    headline=("mean_iou", "max"),
    fit_kwargs=fit_kwargs,
    summary=summary,
    title=lambda args: f"Lab 6 {args.arch} on {args.dataset} ({args.image_size} px)",
    quick_sizes=QUICK_SIZES,
)


def main(argv=None):
    return experiment.run(LAB, argv)


if __name__ == "__main__":
    sys.exit(cli.run(main))
