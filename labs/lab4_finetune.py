"""Lab 4: ResNet50V2 transfer learning and two-phase fine-tuning.

```
python -m labs.lab4_finetune                     # offline default: digits, finetune
python -m labs.lab4_finetune --compare           # scratch vs head vs finetune
python -m labs.lab4_finetune --dataset tf_flowers --weights imagenet --epochs 10
python -m labs.lab4_finetune --dataset folder:PATH --weights runs/.../base.weights.h5
```

What it teaches: reuse a pretrained backbone in two phases.

1. Head: ResNet50V2 (include_top=False) frozen and called with ``training=False``,
   so its BatchNorm layers stay in inference mode; only a new head
   (GlobalAveragePooling2D, Dropout, Dense) learns.
2. Fine-tune: the top ``--unfreeze N`` residual blocks (or layers) become trainable,
   BatchNorm layers stay frozen, the model is recompiled with a 10x lower learning
   rate (``--fine-tune-lr``) and training continues the same history: the epochs
   keep counting and the learning curves mark where fine-tuning starts.

``--mode scratch|head|finetune`` picks the method (scratch trains every layer from
random weights, BatchNorm included); ``--compare`` runs all three on the same data
and plots them together (one sub-folder per mode). ``resnet_v2.preprocess_input``
runs inside the model (common/transfer.py); the data code only scales to [0, 1].

Weights (``--weights``, default auto): imagenet (from the Keras cache or a download),
auto (imagenet when available, else random with a notice), none, or PATH: a backbone
weights file. Every run writes its trained backbone as ``base.weights.h5`` (95 MB)
besides model.keras (the whole model with its optimizer state, about 170 MB), and
``--weights runs/.../base.weights.h5`` starts a later run from it, on any dataset
(the head is always new). A whole model's file is refused with that remedy.

Offline there are no ImageNet weights, and the run says so in one line: the backbone
is random, its features are weak (small and unnormalised: the frozen BatchNorm
layers keep their initial statistics), so accuracy is poor in every mode and the
run shows the mechanics, not the result, of transfer learning. ``--mode scratch``
also needs far more steps than the default for its BatchNorm moving statistics to
catch up (training accuracy rises long before validation accuracy does). The real
result needs ``--weights imagenet`` and tf_flowers (the original course reached 0.93
validation accuracy).

Data: ``tf_flowers`` is the course's dataset (3,670 photos, 5 classes, through tfds:
streamed with tf.data, resized in the pipeline, 80/10/10 split of its one split).
``folder:PATH`` (one sub-folder per class, e.g. dog breeds) streams through a Keras
PyDataset with Pillow, skipping (and counting) unreadable files. Both default to
128x128 images, 16 times the CPU cost of 32x32: on a CPU add e.g.
``--image-size 64 --train-images 500``. The offline default is the embedded
``digits`` (8x8 grayscale, upsampled to 32x32 RGB inside the model, the minimum).

Heat maps (plots/gradcam.png) are grad-CAM: channel weights from the gradient of the
class logit w.r.t. a block's output (``gradient_of`` is the one backend-specific
helper). At 32x32 the last block outputs are 1x1, so the deepest 4x4 one is used.

``--resume`` is refused: the phases (and --compare's modes) are separate fits.

Measured on a 2-core CPU (torch 2.13 CPU, Keras 3.15.1; no ImageNet weights, no
GPU lent, so GPU images/s per phase are not measured):

- ``python -m labs.lab4_finetune`` (digits, 600 training images, 3 head + 3
  fine-tune epochs, batch 32): test accuracy 0.553, macro F1 0.50 (random
  backbone). At load average ~1: 57 s training, 79 s wall; phase 1 (head) 81
  images/s, phase 2 (top 2 blocks) 52 images/s. The same run on Keras as shipped
  (``WORKBOOK_KERAS_FIXES=0``, same load): 67 s training, 87 s wall, 64 and 47
  images/s, identical accuracy. Earlier, with other jobs on the machine: 1,103 s
  wall at load 8 to 10, 4 min 59 s at load 2-3. Trainable parameters: 20,490
  in phase 1, 8,937,482 in phase 2 (top 2 blocks), of 23,585,290.
- ``--quick`` (64 / 32 / 32 images, 1 + 1 epochs): 109 s wall at load 7.8, 52 s
  of CPU time (before ``common.speedups``).
- ``--compare --train-images 300 --epochs 4`` (batch 64), load ~1: test accuracy
  scratch 0.267, head 0.114, finetune 0.153 (all weak: too few steps, and a
  random backbone gives the head nothing to build on); 44 / 22 / 32 s training,
  147 s wall. Before ``common.speedups``: 0.106 / 0.175 / 0.139, 996 s wall at
  load 7 (same seeds; the fused kernels change the trajectories).
- images/s per phase (parameters.json) swing with the other jobs' load here.
"""

import math
import sys
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from common import cli, plots, training, transfer
from common.cli import WorkbookError
from common.runs import Run, atomic_write_text, seed_everything

LAB = "lab4_finetune"
MODES = ("scratch", "head", "finetune")
SCRATCH_NOTICE = ("mode scratch: every layer starts from random weights and trains "
                  "(BatchNorm included); --weights is not used.")

HYPERPARAMETERS = {
    "epochs": 6,                 # total epochs per mode (finetune: head + fine-tune)
    "batch_size": 32,            # images per step
    "learning_rate": 1e-3,       # Adam, head phase and scratch
    "fine_tune_divisor": 10,     # --fine-tune-lr defaults to learning_rate / 10
    "unfreeze": 2,               # residual blocks unfrozen in phase 2
    "dropout": 0.2,              # before the new Dense head
    "patience": 3,               # EarlyStopping on val_loss, epochs
    "digits_train_images": 600,  # embedded default: images per training epoch
    "stream_image_size": 128,    # tf_flowers / folder: pixels a side
    "quick_sizes": {"train": 64, "val": 32, "test": 32},
    "gradcam_images": 8,
    "gradcam_min_cells": 4,      # heat map from the deepest feature map >= 4x4
}

ARCHITECTURES = {"resnet50v2": transfer.build_transfer_model}
# What --unfreeze can count in ResNet50V2 (tests check these against the model).
RESNET50V2_COUNTS = {"blocks": 16, "layers": 53}
DATASETS_HELP = (
    "digits (embedded, offline default), tf_flowers (the course's dataset, via "
    "tensorflow-datasets: network or TFDS_DATA_DIR), or folder:PATH (one sub-folder "
    "per class, streamed)"
)


# ---------------------------------------------------------------------- data
@dataclass
class LabData:
    """What fit needs (arrays or a stream) plus test batches for evaluation."""

    train: object
    train_labels: object
    validation: object
    test_batches: object          # callable -> iterator of (images, labels) numpy
    class_names: list
    input_shape: tuple
    num_train: int
    summary: dict = field(default_factory=dict)
    skipped: object = None        # callable -> number of unreadable files skipped


def _array_batches(x, y, batch_size):
    def batches():
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]
    return batches


def _subsample(x, y, count, rng):
    if count is None or len(x) <= count:
        return x, y
    index = np.sort(rng.choice(len(x), size=count, replace=False))
    return x[index], y[index]


def load_digits(args):
    """The embedded offline default: 8x8 digits; the model upsamples to 32x32 RGB."""
    from common.data import load_images

    data = load_images("digits", seed=args.seed, quick=args.quick)
    rng = np.random.default_rng(args.seed)
    sizes = dict(HYPERPARAMETERS["quick_sizes"]) if args.quick else {
        "train": HYPERPARAMETERS["digits_train_images"], "val": None, "test": None}
    if args.train_images:
        sizes["train"] = args.train_images
    x_train, y_train = _subsample(data.x_train, data.y_train, sizes["train"], rng)
    x_val, y_val = _subsample(data.x_val, data.y_val, sizes["val"], rng)
    x_test, y_test = _subsample(data.x_test, data.y_test, sizes["test"], rng)
    summary = {**data.describe(), "num_train": len(x_train), "num_val": len(x_val),
               "num_test": len(x_test),
               "note": "tf_flowers is the course's dataset; digits is the offline "
                       "stand-in, upsampled to 32x32 RGB inside the model"}
    return LabData(x_train, y_train, (x_val, y_val),
                   _array_batches(x_test, y_test, args.batch_size),
                   data.class_names, data.input_shape, len(x_train), summary)


def load_tf_flowers(args):
    """tf_flowers through tfds and tf.data: decode, resize, batch, prefetch."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from common.data import load_tfds

    size = args.image_size
    quick = HYPERPARAMETERS["quick_sizes"]
    splits = {"train": "train[:80%]", "val": "train[80%:90%]", "test": "train[90%:]"}
    limits = {"train": quick["train"] if args.quick else args.train_images,
              "val": quick["val"] if args.quick else None,
              "test": quick["test"] if args.quick else None}

    def prepare(image, label):
        image = tf.image.resize(image, (size, size)) / 255.0
        return tf.cast(image, tf.float32), label

    streams, counts, info = {}, {}, None
    for part, split in splits.items():
        dataset, info = load_tfds("tf_flowers", split, with_info=True)
        if limits[part]:
            dataset = dataset.take(limits[part])
        try:
            count = info.splits[split].num_examples
        except Exception:  # noqa: BLE001  (a mocked or partial info)
            count = None
        counts[part] = min(count, limits[part]) if count and limits[part] else count
        if part == "train":
            dataset = dataset.shuffle(1024, seed=args.seed,
                                      reshuffle_each_iteration=True)
        streams[part] = (dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
                         .batch(args.batch_size).prefetch(tf.data.AUTOTUNE))
    class_names = list(info.features["label"].names)
    test = streams["test"]
    summary = {"name": "tf_flowers", "source": "tensorflow-datasets tf_flowers "
               "(streamed with tf.data, 80/10/10 split of 'train')",
               "num_train": counts["train"], "num_val": counts["val"],
               "num_test": counts["test"], "image_shape": [size, size, 3],
               "num_classes": len(class_names)}
    return LabData(streams["train"], None, streams["val"],
                   lambda: iter(tfds.as_numpy(test)), class_names, (size, size, 3),
                   counts["train"] or 0, summary)


class ImageFolderSequence(keras.utils.PyDataset):
    """Batches of (images in [0, 1], labels) read with Pillow as they are needed.

    Unreadable files are skipped (and counted in ``skipped``), so a large folder is
    never loaded whole and one corrupt file does not stop training.
    """

    def __init__(self, files, labels, batch_size, image_size, shuffle=False, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.files, self.labels = list(files), np.asarray(labels, dtype="int64")
        self.batch_size, self.image_size, self.shuffle = batch_size, image_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(self.files))
        self.skipped = set()
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self):
        return math.ceil(len(self.files) / self.batch_size)

    def _read(self, index):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[index]) as image:
                image = image.convert("RGB").resize((self.image_size, self.image_size))
                return np.asarray(image, dtype="float32") / 255.0
        except (OSError, UnidentifiedImageError, ValueError):
            if index not in self.skipped:
                print(f"warning: skipped unreadable image {self.files[index]}")
            self.skipped.add(index)
            return None

    def __getitem__(self, batch):
        picks = self.order[batch * self.batch_size:(batch + 1) * self.batch_size]
        images, labels = [], []
        for index in picks:
            image = self._read(index)
            if image is not None:
                images.append(image)
                labels.append(self.labels[index])
        if not images:
            raise WorkbookError(
                f"a whole batch of {len(picks)} image files could not be read (e.g. "
                f"{self.files[picks[0]]}). Check the folder's images open in an "
                "image viewer, or remove the broken files."
            )
        return np.stack(images), np.asarray(labels, dtype="int64")

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)


def load_folder(args, path):
    """A class-per-folder set, split 72/8/20 (train/val/test), streamed."""
    from sklearn.model_selection import train_test_split

    from common.data import scan_image_folder

    files, labels, class_names = scan_image_folder(path)
    if len(class_names) < 2:
        raise WorkbookError(
            f"{path} has {len(class_names)} class sub-folder(s); a classifier needs "
            "at least two (PATH/class_a/*.jpg, PATH/class_b/*.jpg, ...)."
        )
    index = np.arange(len(files))

    def split(items, fraction):
        stratify = labels[items] if np.min(np.bincount(labels[items])) >= 2 else None
        try:
            return train_test_split(items, test_size=fraction, random_state=args.seed,
                                    stratify=stratify)
        except ValueError:  # too few images per class to stratify
            return train_test_split(items, test_size=fraction, random_state=args.seed)

    if len(files) < 10:
        raise WorkbookError(
            f"{path} holds only {len(files)} images; train, validation and test "
            "splits need at least 10."
        )
    train_index, test_index = split(index, 0.2)
    train_index, val_index = split(train_index, 0.1)
    rng = np.random.default_rng(args.seed)
    quick = HYPERPARAMETERS["quick_sizes"]
    limits = {"train": quick["train"] if args.quick else args.train_images,
              "val": quick["val"] if args.quick else None,
              "test": quick["test"] if args.quick else None}
    parts = {}
    for part, chosen in (("train", train_index), ("val", val_index),
                         ("test", test_index)):
        chosen = np.sort(chosen)
        if limits[part] and len(chosen) > limits[part]:
            chosen = np.sort(rng.choice(chosen, size=limits[part], replace=False))
        parts[part] = ImageFolderSequence(
            [files[i] for i in chosen], labels[chosen], args.batch_size,
            args.image_size, shuffle=part == "train", seed=args.seed)
    test = parts["test"]
    summary = {"name": args.dataset, "source": f"image folder {path} (streamed with "
               "a Keras PyDataset and Pillow)",
               "num_train": len(parts["train"].files),
               "num_val": len(parts["val"].files), "num_test": len(test.files),
               "image_shape": [args.image_size, args.image_size, 3],
               "num_classes": len(class_names)}
    size = args.image_size
    return LabData(parts["train"], None, parts["val"],
                   lambda: (test[i] for i in range(len(test))), class_names,
                   (size, size, 3), len(parts["train"].files), summary,
                   skipped=lambda: sum(len(p.skipped) for p in parts.values()))


def load_data(args):
    if args.dataset == "digits":
        return load_digits(args)
    if args.dataset == "tf_flowers":
        return load_tf_flowers(args)
    if args.dataset.startswith("folder:"):
        return load_folder(args, args.dataset[len("folder:"):])
    raise WorkbookError(
        f"unknown dataset {args.dataset!r} for lab 4. Use digits (embedded, offline), "
        "tf_flowers (the course's dataset, via tensorflow-datasets) or folder:PATH "
        "(one sub-folder per class)."
    )


# ------------------------------------------------------------------ training
def compile_model(model, learning_rate):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _fit(model, run, data, args, epochs, title, initial_rows=(), boundaries=()):
    arrays = data.train_labels is not None  # else a stream that shuffles itself
    return training.fit(
        model, run, data.train, data.train_labels, validation_data=data.validation,
        epochs=epochs, batch_size=args.batch_size if arrays else None,
        patience=args.patience, title=title, initial_rows=initial_rows,
        boundaries=boundaries, shuffle=arrays, checkpoint=False,
    )


def _read_rows(run):
    import json

    return json.loads((run.path / "history.json").read_text())


def _phase_row(phase, model, learning_rate, epochs, seconds, num_train):
    counts = transfer.parameter_table(model)
    return {"phase": phase, **counts, "learning_rate": learning_rate,
            "epochs": epochs, "seconds": round(seconds, 2),
            "images_per_second": round(num_train * epochs / seconds, 2)
            if seconds else None}


def build_model(mode, data, args):
    """``(model, base, weights notice, weights source)`` for one mode; scratch
    ignores --weights."""
    seed_everything(args.seed)
    weights = "none" if mode == "scratch" else args.weights
    model, base, notice = transfer.build_transfer_model(
        data.input_shape, len(data.class_names), weights=weights,
        dropout=HYPERPARAMETERS["dropout"], min_size=args.image_size,
        train_base=mode == "scratch")
    keras_weights, path, _ = transfer.resolve_weights(weights)
    source = keras_weights or path or "none (random)"
    if "download failed" in notice:
        source = "none (random)"
    if mode == "scratch":
        return model, base, SCRATCH_NOTICE, source
    return model, base, notice, source


def train_mode(mode, model, base, run, data, args):
    """Train one mode (two phases for finetune) into ``run``; returns (figures,
    phases, unfrozen layer names, history rows)."""
    title = f"ResNet50V2 {mode} on {args.dataset}"
    head_epochs = args.head_epochs if mode == "finetune" else args.epochs
    compile_model(model, args.learning_rate)
    phase_name = ("scratch (all layers)" if mode == "scratch"
                  else "1: head (frozen base)")
    print(f"\n[{mode}] phase {phase_name}: {head_epochs} epoch(s), learning rate "
          f"{args.learning_rate:g}")
    result = _fit(model, run, data, args, head_epochs, title)
    phases = [_phase_row(phase_name, model, args.learning_rate, result["epochs_run"],
                         result["train_seconds"], data.num_train)]
    unfrozen = []
    if mode == "finetune":
        rows = _read_rows(run)
        unfrozen = transfer.unfreeze_top(base, args.unfreeze, args.unfreeze_unit)
        compile_model(model, args.fine_tune_lr)
        fine_tune_epochs = args.epochs - args.head_epochs
        print(f"\n[{mode}] phase 2: fine-tuning the top {args.unfreeze} "
              f"{args.unfreeze_unit} ({len(unfrozen)} layers, BatchNorm frozen): "
              f"epochs {len(rows) + 1}-{len(rows) + fine_tune_epochs}, learning rate "
              f"{args.fine_tune_lr:g}")
        first = result
        result = _fit(model, run, data, args, fine_tune_epochs, title,
                      initial_rows=rows,
                      boundaries=[(len(rows) + 0.5, "fine-tuning starts")])
        phases.append(_phase_row("2: fine-tune", model, args.fine_tune_lr,
                                 result["epochs_run"] - len(rows),
                                 result["train_seconds"], data.num_train))
        result["train_seconds"] = round(first["train_seconds"]
                                        + result["train_seconds"], 2)
        result["fine_tuning_starts_epoch"] = len(rows) + 1
    figures = dict(result)
    figures.update(mode=mode, unfrozen_layers=len(unfrozen),
                   trainable_params_final=phases[-1]["trainable"])
    return figures, phases, unfrozen, _read_rows(run)


# ---------------------------------------------------------------- evaluation
class _Precomputed:
    """Stands in for a model whose predictions were already streamed."""

    def __init__(self, probabilities):
        self.probabilities = probabilities

    def predict(self, x, batch_size=None, verbose=0):
        return self.probabilities


def evaluate(model, run, data, title):
    """Stream the test batches once: figures, confusion matrix, misclassified grid,
    and a few images (with their labels) for the heat maps."""
    probabilities, labels, wrong, samples = [], [], [], []
    for images, batch_labels in data.test_batches():
        batch_probabilities = np.asarray(model.predict_on_batch(images))
        predicted = batch_probabilities.argmax(axis=-1)
        for image, label, guess in zip(images, batch_labels, predicted):
            if len(samples) < HYPERPARAMETERS["gradcam_images"]:
                samples.append((image, int(label)))
            if guess != label and len(wrong) < 24:
                wrong.append((image, int(label), int(guess)))
        probabilities.append(batch_probabilities)
        labels.append(np.asarray(batch_labels))
    probabilities, labels = np.concatenate(probabilities), np.concatenate(labels)
    figures, predictions, report = training.evaluate_classifier(
        _Precomputed(probabilities), run, None, labels, data.class_names, title)
    if wrong:
        names = data.class_names
        plots.image_grid(
            np.stack([image for image, _, _ in wrong]),
            [f"true {names[t]}\npred {names[p]}" for _, t, p in wrong],
            run.plots / "misclassified.png",
            f"{title}: misclassified test images ({int(np.sum(predictions != labels))}"
            f" of {len(labels)})", title_colors=["firebrick"] * len(wrong))
    return figures, samples, report


# ------------------------------------------------------------------ grad-CAM
def gradient_of(function, tensor):
    """``(value, d sum(value) / d tensor)``: the one backend-specific piece."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        leaf = keras.ops.convert_to_tensor(tensor).detach().requires_grad_(True)
        with torch.enable_grad():
            value = function(leaf)
            (gradient,) = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), gradient
    if backend == "tensorflow":
        import tensorflow as tf

        tensor = tf.convert_to_tensor(tensor)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            value = function(tensor)
        return value, tape.gradient(value, tensor)
    if backend == "jax":
        import jax

        value, pullback = jax.vjp(function, tensor)
        return value, pullback(jax.numpy.ones_like(value))[0]
    raise NotImplementedError(f"grad-CAM has no gradient helper for {backend}")


def gradcam_layer(base, min_cells=HYPERPARAMETERS["gradcam_min_cells"]):
    """The deepest block output at least ``min_cells`` a side (the last one is 1x1
    at 32x32 input, which would make a one-pixel heat map)."""
    candidates = [layer for layer in base.layers
                  if layer.name.endswith("_out") or layer.name == "post_relu"]
    good = [layer for layer in candidates if min(layer.output.shape[1:3]) >= min_cells]
    return (good or candidates)[-1].name


def gradcam(model, base, images, classes, layer_name):
    """Grad-CAM heat maps (N, h, w) in [0, 1] for ``classes``: the feature map's
    channels weighted by the mean gradient of the class logit."""
    ops = keras.ops
    prefix = keras.Model(model.input, model.get_layer("resnet_v2_preprocess").output)
    feature = base.get_layer(layer_name).output
    lower = keras.Model(base.input, feature)
    upper = keras.Model(feature, base.output)
    pooling, dense = model.get_layer("pooling"), model.get_layer("predictions")
    classes = ops.convert_to_tensor(np.asarray(classes, dtype="int32")[:, None])

    def class_logits(feature_maps):
        pooled = pooling(upper(feature_maps, training=False))
        logits = ops.matmul(pooled, dense.kernel) + dense.bias
        return ops.take_along_axis(logits, classes, axis=1)[:, 0]

    feature_maps = lower(prefix(images, training=False), training=False)
    _, gradients = gradient_of(class_logits, feature_maps)
    weights = ops.mean(gradients, axis=(1, 2), keepdims=True)
    maps = ops.relu(ops.sum(weights * feature_maps, axis=-1))
    maps = ops.convert_to_numpy(maps)
    peak = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def plot_gradcam(model, base, samples, class_names, path, title):
    import matplotlib.pyplot as plt

    images = np.stack([image for image, _ in samples]).astype("float32")
    labels = [label for _, label in samples]
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    predicted = probabilities.argmax(axis=-1)
    layer_name = gradcam_layer(base)
    maps = gradcam(model, base, images, predicted, layer_name)
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(1.7 * count + 1.4, 4.8),
                                squeeze=False, layout="constrained")
    height, width = images.shape[1:3]
    overlay = None
    for column in range(count):
        image = images[column]
        shown = image[..., 0] if image.shape[-1] == 1 else image
        cmap = "gray" if image.shape[-1] == 1 else None
        for row in range(2):
            axes[row, column].imshow(shown, cmap=cmap, vmin=0, vmax=1,
                                     interpolation="nearest")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        overlay = axes[1, column].imshow(
            maps[column], cmap="jet", alpha=0.5, vmin=0, vmax=1,
            interpolation="bilinear", extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        right = predicted[column] == labels[column]
        axes[0, column].set_title(
            f"true {class_names[labels[column]]}\npred {class_names[predicted[column]]}"
            f" ({probabilities[column, predicted[column]]:.2f})", fontsize=8,
            color="black" if right else "firebrick")
    axes[0, 0].set_ylabel("test image")
    axes[1, 0].set_ylabel("grad-CAM")
    shape = tuple(base.get_layer(layer_name).output.shape[1:3])
    figure.colorbar(overlay, ax=axes[:, -1].tolist(), shrink=0.8,
                    label="grad-CAM relevance to the predicted class (0-1)")
    figure.suptitle(f"{title}: grad-CAM of the predicted class\n(layer {layer_name}, "
                    f"{shape[0]}x{shape[1]} cells, upsampled to the image)")
    figure.savefig(path, dpi=plots.DPI)
    plt.close(figure)
    return layer_name


# ------------------------------------------------------------------- reports
def parameter_markdown(phases):
    lines = ["| phase | trainable params | non-trainable params | total | "
             "layers training | learning rate | epochs | s | images/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in phases:
        lines.append(
            f"| {row['phase']} | {row['trainable']:,} | {row['non_trainable']:,} | "
            f"{row['total']:,} | {row['trainable_layers']} | {row['learning_rate']:g} |"
            f" {row['epochs']} | {row['seconds']} | {row['images_per_second']} |")
    lines.append("")
    lines.append("Non-trainable counts include the BatchNorm moving statistics, "
                 "which stay frozen in every phase except scratch. images/s counts "
                 "training images per second of the phase, validation included.")
    return "\n".join(lines)


def save_weights(run, base):
    """base.weights.h5: the backbone, for a later run's --weights PATH."""
    import os

    temporary = run.path / ".tmp-base.weights.h5"
    base.save_weights(temporary)
    os.replace(temporary, run.path / "base.weights.h5")


def run_one(mode, model, base, run, data, args, notice, source):
    """Train, evaluate and write one mode's complete run directory."""
    seed_everything(args.seed)
    figures, phases, unfrozen, rows = train_mode(mode, model, base, run, data, args)
    title = f"ResNet50V2 {mode} on {args.dataset}"
    test_figures, samples, report = evaluate(model, run, data, title)
    figures.update(test_figures)
    layer_name = plot_gradcam(model, base, samples, data.class_names,
                              run.plots / "gradcam.png", title)
    if data.skipped is not None:
        figures["skipped_files"] = data.skipped()
    figures["weights"] = source
    for row in phases:
        key = "phase1" if row["phase"].startswith(("1", "scratch")) else "phase2"
        figures[f"{key}_trainable_params"] = row["trainable"]
        figures[f"{key}_images_per_second"] = row["images_per_second"]
    run.write_json("parameters.json", phases)
    run.save_model(model)
    save_weights(run, base)
    unfrozen_text = ", ".join(unfrozen) if unfrozen else "none (no phase 2)"
    run.write_metrics(figures)
    run.write_report(f"Lab 4: ResNet50V2 {mode} on {args.dataset}", figures, [
        ("Weights", notice),
        ("Parameters per phase", parameter_markdown(phases)),
        ("Layers fine-tuned in phase 2", unfrozen_text),
        ("Grad-CAM", f"Heat maps from `{layer_name}` for the first test images."),
        ("Classification report", f"```\n{report}\n```"),
        ("Files", "model.keras (whole model), base.weights.h5 (backbone only: "
         "pass it to `--weights` to start a later run from it), parameters.json."),
    ])
    return figures, rows


def compare_plot(results, path, boundary):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, label in ((axes[0], "val_accuracy", "validation accuracy"),
                             (axes[1], "val_loss", "validation loss")):
        for mode, (_, rows) in results.items():
            axis.plot([row["epoch"] for row in rows], [row.get(key) for row in rows],
                      "o-", markersize=3, label=mode)
        if boundary:
            axis.axvline(boundary, color="purple", linestyle="-.",
                         label="fine-tuning starts (finetune)")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("ResNet50V2: scratch vs head vs finetune (validation set)")
    return plots.save(figure, path)


def run_compare(run, models, data, args):
    """All three modes in sub-folders, then the comparison in the parent folder."""
    import csv
    import io

    results = {}
    for mode in MODES:
        child = Run(run.path / mode, LAB, {**run.config, "args": {
            **run.config["args"], "mode": mode, "compare": False}})
        child.plots.mkdir(parents=True, exist_ok=True)
        child.write_config()
        print(f"\n=== mode {mode} -> {child.path}")
        model, base, notice, source = models.pop(mode)
        results[mode] = run_one(mode, model, base, child, data, args, notice, source)
        del model, base
    boundary = results["finetune"][0].get("fine_tuning_starts_epoch")
    compare_plot(results, run.plots / "learning_curves.png",
                 boundary - 0.5 if boundary else None)
    plots.bar_chart(list(MODES), {
        "test accuracy (fraction)": [results[m][0]["test_accuracy"] for m in MODES],
        "training time (s)": [results[m][0]["train_seconds"] for m in MODES]},
        run.plots / "compare_test_accuracy.png",
        f"ResNet50V2 on {args.dataset}: test accuracy and training time per mode")
    epochs = max(len(rows) for _, rows in results.values())
    wide = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch}
        for mode, (_, rows) in results.items():
            if epoch <= len(rows):
                for key, value in rows[epoch - 1].items():
                    if key != "epoch":
                        row[f"{mode}_{key}"] = value
        wide.append(row)
    columns = []
    for row in wide:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(wide)
    atomic_write_text(run.path / "history.csv", buffer.getvalue())
    run.write_json("history.json", wide)
    statuses = [results[m][0]["status"] for m in MODES]
    metrics = {
        "status": "completed" if all(s in ("completed", "early_stopped")
                                     for s in statuses) else statuses[-1],
        "best_epoch": results["finetune"][0]["best_epoch"],
        "stopped_epoch": results["finetune"][0]["stopped_epoch"],
        "train_seconds": round(sum(results[m][0]["train_seconds"] for m in MODES), 2),
        "params": results["finetune"][0]["params"],
        "test_accuracy": max(results[m][0]["test_accuracy"] for m in MODES),
    }
    for mode in MODES:
        for key in ("test_accuracy", "macro_f1", "train_seconds"):
            metrics[f"{mode}_{key}"] = results[mode][0][key]
    run.write_metrics(metrics)
    table = ["| mode | test accuracy | macro F1 | train s | trainable params (last "
             "phase) | folder |", "|---|---|---|---|---|---|"]
    for mode in MODES:
        figures = results[mode][0]
        table.append(f"| {mode} | {figures['test_accuracy']:.3f} | "
                     f"{figures['macro_f1']:.3f} | {figures['train_seconds']} | "
                     f"{figures['trainable_params_final']:,} | "
                     f"[{mode}/]({mode}/report.md) |")
    run.write_report(f"Lab 4: ResNet50V2 scratch vs head vs finetune on "
                     f"{args.dataset}", metrics, [
                         ("Weights (head and finetune)",
                          run.config.get("weights_notice", "")),
                         ("Modes", "\n".join(table) + "\n\nEach mode's model, "
                          "history, parameter table, confusion matrix and grad-CAM "
                          "are in its sub-folder; test_accuracy above is the best "
                          "mode's. head and finetune share the seed, so their "
                          "curves coincide until fine-tuning starts."),
                     ])
    return metrics


# ----------------------------------------------------------------------- CLI
def parse_args(argv):
    parser = cli.make_parser(
        LAB, "ResNet50V2 transfer learning: train a head on a frozen backbone, then "
        "fine-tune its top blocks (two phases, one history).",
        ARCHITECTURES, "resnet50v2", "digits", DATASETS_HELP,
        epochs=HYPERPARAMETERS["epochs"], batch_size=HYPERPARAMETERS["batch_size"],
        learning_rate=HYPERPARAMETERS["learning_rate"],
        patience=HYPERPARAMETERS["patience"])
    parser.add_argument("--mode", choices=MODES, default="finetune",
                        help="scratch: every layer from random weights; head: frozen "
                             "backbone, new head only; finetune: head, then the top "
                             "--unfreeze blocks")
    parser.add_argument("--compare", action="store_true",
                        help="run scratch, head and finetune and plot them together")
    parser.add_argument("--weights", default="auto",
                        help="imagenet, auto (imagenet if available, else random), "
                             "none, or PATH of a backbone weights file (a run's "
                             "base.weights.h5)")
    parser.add_argument("--head-epochs", type=cli.positive_int, default=None,
                        help="finetune: epochs of phase 1 (head); the rest of --epochs "
                             "fine-tune (default: half of --epochs)")
    parser.add_argument("--fine-tune-lr", type=cli.positive_float, default=None,
                        help="phase 2 learning rate (default: --learning-rate / 10)")
    parser.add_argument("--unfreeze", type=cli.non_negative_int,
                        default=HYPERPARAMETERS["unfreeze"],
                        help="how many top blocks (or layers) phase 2 trains")
    parser.add_argument("--unfreeze-unit", choices=("blocks", "layers"),
                        default="blocks",
                        help="what --unfreeze counts: residual blocks, or layers with "
                             "weights (BatchNorm layers stay frozen either way)")
    parser.add_argument("--image-size", type=cli.positive_int, default=None,
                        help="pixels a side at the backbone (default: 32 for digits, "
                             f"{HYPERPARAMETERS['stream_image_size']} for tf_flowers "
                             "and folders; at least 32)")
    parser.add_argument("--train-images", type=cli.positive_int, default=None,
                        help="use at most this many training images (default: "
                             f"{HYPERPARAMETERS['digits_train_images']} for digits, "
                             "all for the others)")
    args = parser.parse_args(argv)
    if args.resume:
        parser.error("lab 4 cannot --resume: its phases (and --compare's modes) are "
                     "separate fits that one checkpoint cannot tell apart, and a "
                     "ResNet50V2 checkpoint per epoch costs more than the default "
                     "run saves; start the same command again instead")
    if args.quick:
        args.epochs = min(args.epochs, 2)
    if args.image_size is None:
        args.image_size = (transfer.MIN_INPUT_SIZE if args.dataset == "digits"
                           else HYPERPARAMETERS["stream_image_size"])
    if args.image_size < transfer.MIN_INPUT_SIZE:
        parser.error(f"--image-size must be at least {transfer.MIN_INPUT_SIZE} "
                     "(ResNet50V2's minimum input)")
    if args.head_epochs is None:
        args.head_epochs = max(1, math.ceil(args.epochs / 2))
    if args.fine_tune_lr is None:
        args.fine_tune_lr = args.learning_rate / HYPERPARAMETERS["fine_tune_divisor"]
    fine_tuning = args.compare or args.mode == "finetune"
    if fine_tuning and args.head_epochs >= args.epochs:
        parser.error(f"finetune needs at least one fine-tuning epoch: --head-epochs "
                     f"({args.head_epochs}) must be below --epochs ({args.epochs})")
    available = RESNET50V2_COUNTS[args.unfreeze_unit]
    if fine_tuning and not 1 <= args.unfreeze <= available:
        parser.error(f"--unfreeze {args.unfreeze}: ResNet50V2 has {available} "
                     f"{args.unfreeze_unit} to unfreeze (layers: with weights, "
                     f"BatchNorm not counted); give 1 to {available}, or use "
                     "--mode head to train the head only")
    if args.compare:
        args.mode = "compare"
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.mode != "scratch":
        transfer.resolve_weights(args.weights)  # a bad --weights fails before work
    seed_everything(args.seed)
    data = load_data(args)
    modes = MODES if args.mode == "compare" else (args.mode,)
    models = {mode: build_model(mode, data, args) for mode in modes}
    notice = models["finetune" if args.mode == "compare" else args.mode][2]
    print(notice)
    run = Run.create(LAB, args, argv)
    run.write_config(data=data.summary, weights_notice=notice,
                     hyperparameters=HYPERPARAMETERS)
    started = time.perf_counter()
    if args.mode == "compare":
        metrics = run_compare(run, models, data, args)
    else:
        model, base, _, source = models.pop(args.mode)
        metrics, _ = run_one(args.mode, model, base, run, data, args, notice, source)
    print(f"\n{args.mode}: test accuracy {metrics['test_accuracy']:.3f}, "
          f"{time.perf_counter() - started:.0f} s")
    print(notice)
    run.finish()
    return metrics


if __name__ == "__main__":
    sys.exit(cli.run(main))
