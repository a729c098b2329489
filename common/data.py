"""Datasets: embedded, generated, canonical (tfds), and the user's own files.

Names accepted by ``--dataset``:

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits, shipped with the
  package, so every image lab runs offline on a fresh machine.
- ``mnist``, ``fashion_mnist``, ``cifar10``: through tensorflow-datasets, from the
  network or a prepared ``TFDS_DATA_DIR``; a clear remedy when neither is there.
- ``npz:PATH``: a keras.datasets-style .npz with x_train, y_train, x_test, y_test.
- ``folder:PATH``: one sub-folder per class. Read with Pillow rather than
  ``keras.utils.image_dataset_from_directory``, because that aborts on the first
  corrupt file; here unreadable files are skipped, counted and reported.
- Generated, deterministic from the seed: ``adding`` (the adding problem) and
  ``ring`` (8 Gaussians on a circle).

Images come back as float32 in [0, 1], shaped (N, H, W, C); labels as int64.
Train, validation and test are always disjoint; validation is carved from train.
"""

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.cli import WorkbookError, first_line

TFDS_IMAGE_SETS = ("mnist", "fashion_mnist", "cifar10")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
QUICK_SIZES = {"train": 256, "val": 64, "test": 128}


@dataclass
class ImageData:
    """Three disjoint splits of an image classification set."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    source: str
    embedded: bool = False
    notes: dict = field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    def describe(self):
        """A JSON-ready summary for config.json and report.md."""
        return {
            "name": self.name,
            "source": self.source,
            "embedded": self.embedded,
            "num_train": len(self.x_train),
            "num_val": len(self.x_val),
            "num_test": len(self.x_test),
            "image_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            **self.notes,
        }


def unavailable(name, reason):
    """The one-paragraph error for a canonical dataset that cannot be reached."""
    return WorkbookError(
        f"the dataset {name!r} is not available offline and could not be downloaded "
        f"({reason}). Either run on the embedded data with --dataset digits, or "
        f"prepare {name} once on a machine with network access "
        f"(python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\") "
        "and point TFDS_DATA_DIR at that folder (default ~/tensorflow_datasets)."
    )


def network_reachable(host="storage.googleapis.com", timeout=3.0):
    """Whether tfds's download host resolves and answers within ``timeout`` s."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    def connect():
        with socket.create_connection((host, 443), timeout=timeout):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout + 1)
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


def load_tfds(name, split, **kwargs):
    """``tfds.load`` with the workbook's offline error; returns what tfds returns.

    A prepared copy (``TFDS_DATA_DIR``) is used first. Only when there is none and
    the download host answers is tfds allowed to download: offline, tfds's own
    retries take minutes before they fail, so the lab fails at once instead.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise WorkbookError(
            f"tensorflow-datasets is not installed, so {name!r} cannot be loaded. "
            "Install the workbook's environment (make setup) or use --dataset digits."
        ) from error
    options = dict(
        split=split,
        data_dir=os.environ.get("TFDS_DATA_DIR"),
        as_supervised=True,
        **kwargs,
    )
    try:
        return tfds.load(name, download=False, **options)
    except Exception as error:  # not prepared here (or a broken copy)
        local_error = error
    if not network_reachable():
        raise unavailable(
            name, "not prepared locally and no network: " + first_line(local_error)
        )
    try:
        return tfds.load(name, download=True, **options)
    except Exception as error:  # network, disk, unprepared builder, ...
        raise unavailable(name, first_line(error)) from error


def _tfds_arrays(name, split):
    import tensorflow_datasets as tfds

    batches = list(tfds.as_numpy(load_tfds(name, split).batch(4096)))
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return images, labels


def _scale(images):
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    images = images.astype("float32")
    if images.size and images.max() > 1.0:
        images /= 255.0
    return images


def _split(x, y, fraction, seed):
    """A seeded split, stratified by class whenever the class counts allow it."""
    from sklearn.model_selection import train_test_split

    held_out = max(1, int(round(fraction * len(y))))
    counts = np.bincount(y)
    classes = np.count_nonzero(counts)
    can_stratify = (
        counts[counts > 0].min() >= 2 and classes <= held_out <= len(y) - classes
    )
    return train_test_split(
        x,
        y,
        test_size=held_out,
        random_state=seed,
        stratify=y if can_stratify else None,
    )


def _subsample(x, y, count, rng):
    if len(x) <= count:
        return x, y
    index = np.sort(rng.choice(len(x), size=count, replace=False))
    return x[index], y[index]


def _load_digits(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    return x_train, y_train, x_test, y_test, [str(d) for d in range(10)]


def _read_npz(path):
    path = Path(path)
    if not path.is_file():
        raise WorkbookError(
            f"no .npz file at {path}. Give --dataset npz:PATH with the path of a "
            "keras.datasets-style file holding x_train, y_train, x_test, y_test."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise WorkbookError(
            f"cannot read {path} as a numpy .npz archive ({first_line(error)}). "
            "Save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., "
            "y_test=...)."
        ) from error
    required = ("x_train", "y_train", "x_test", "y_test")
    missing = [key for key in required if key not in arrays]
    if missing:
        raise WorkbookError(
            f"{path} lacks the arrays {', '.join(missing)} (it has "
            f"{', '.join(sorted(arrays)) or 'none'}). A workbook .npz holds x_train, "
            "y_train, x_test and y_test, as keras.datasets.mnist.load_data() returns."
        )
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if len(x) != len(y) or len(x) == 0:
            raise WorkbookError(
                f"{path}: x_{part} has {len(x)} images but y_{part} has {len(y)} "
                "labels; they must be the same, non-zero length."
            )
        if x.ndim not in (3, 4):
            raise WorkbookError(
                f"{path}: x_{part} has shape {x.shape}; images must be (N, H, W) or "
                "(N, H, W, C)."
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise WorkbookError(
            f"{path}: train images are {arrays['x_train'].shape[1:]} but test images "
            f"are {arrays['x_test'].shape[1:]}; both splits need the same image size."
        )
    labels = np.concatenate([arrays["y_train"].ravel(), arrays["y_test"].ravel()])
    values, encoded = np.unique(labels, return_inverse=True)
    count = len(arrays["y_train"])
    return (
        _scale(arrays["x_train"]),
        encoded[:count].astype("int64"),
        _scale(arrays["x_test"]),
        encoded[count:].astype("int64"),
        [str(value) for value in values],
    )


def scan_image_folder(path):
    """Class folders and image files under ``path``: (files, labels, class_names)."""
    root = Path(path)
    if not root.is_dir():
        raise WorkbookError(
            f"no folder at {root}. Give --dataset folder:PATH with a folder holding "
            "one sub-folder per class (e.g. PATH/cat/*.jpg, PATH/dog/*.jpg)."
        )
    class_names = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    files, labels = [], []
    for label, name in enumerate(class_names):
        for file in sorted((root / name).rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    if not files:
        raise WorkbookError(
            f"{root} holds no images in class sub-folders (looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} files in {len(class_names)} "
            "sub-folders). Put each class's images in its own sub-folder."
        )
    return files, np.asarray(labels, dtype="int64"), class_names


def _read_folder(path, image_size=None):
    from PIL import Image, UnidentifiedImageError

    files, labels, class_names = scan_image_folder(path)
    images, kept, skipped = [], [], []
    for file, label in zip(files, labels):
        try:
            with Image.open(file) as image:
                image.load()
                images.append(image.copy())
                kept.append(label)
        except (OSError, UnidentifiedImageError, ValueError):
            skipped.append(file)
    if not images:
        raise WorkbookError(
            f"none of the {len(files)} image files under {path} could be read "
            "(all corrupt or not images). Check the files open in an image viewer."
        )
    if skipped:
        print(
            f"warning: skipped {len(skipped)} unreadable image file(s) under "
            f"{path}, e.g. {skipped[0]}"
        )
    grayscale = all(image.mode in ("L", "1", "I;16", "I") for image in images)
    mode = "L" if grayscale else "RGB"
    if image_size is None:
        image_size = Counter(image.size for image in images).most_common(1)[0][0]
    else:
        image_size = (image_size, image_size)
    arrays = np.stack(
        [np.asarray(image.convert(mode).resize(image_size)) for image in images]
    )
    return _scale(arrays), np.asarray(kept, dtype="int64"), class_names, len(skipped)


def load_images(name, seed=0, quick=False, val_fraction=0.1, image_size=None):
    """Load an image classification set by its ``--dataset`` name."""
    notes, embedded = {}, False
    if name == "digits":
        x_train, y_train, x_test, y_test, class_names = _load_digits(seed)
        source, embedded = "scikit-learn load_digits (embedded, 8x8)", True
    elif name in TFDS_IMAGE_SETS:
        x_train, y_train = _tfds_arrays(name, "train")
        x_test, y_test = _tfds_arrays(name, "test")
        x_train, x_test = _scale(x_train), _scale(x_test)
        y_train, y_test = y_train.astype("int64"), y_test.astype("int64")
        class_names = [str(c) for c in range(int(max(y_train.max(), y_test.max())) + 1)]
        source = f"tensorflow-datasets {name}"
    elif name.startswith("npz:"):
        x_train, y_train, x_test, y_test, class_names = _read_npz(name[4:])
        source = f"npz file {name[4:]}"
    elif name.startswith("folder:"):
        images, labels, class_names, skipped = _read_folder(name[7:], image_size)
        x_train, x_test, y_train, y_test = _split(images, labels, 0.2, seed)
        source = f"image folder {name[7:]}"
        notes["skipped_files"] = skipped
    else:
        raise WorkbookError(
            f"unknown dataset {name!r}. Use digits (embedded), "
            f"{', '.join(TFDS_IMAGE_SETS)} (tensorflow-datasets), npz:PATH or "
            "folder:PATH."
        )
    x_train, x_val, y_train, y_val = _split(x_train, y_train, val_fraction, seed)
    if quick:
        rng = np.random.default_rng(seed)
        x_train, y_train = _subsample(x_train, y_train, QUICK_SIZES["train"], rng)
        x_val, y_val = _subsample(x_val, y_val, QUICK_SIZES["val"], rng)
        x_test, y_test = _subsample(x_test, y_test, QUICK_SIZES["test"], rng)
        notes["quick_subset"] = True
    return ImageData(
        name,
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        class_names,
        source,
        embedded,
        notes,
    )


def load_text(name="imdb_reviews"):
    """A tfds text classification set as lists of strings and int64 labels."""
    import tensorflow_datasets as tfds

    splits = {}
    for split in ("train", "test"):
        pairs = list(tfds.as_numpy(load_tfds(name, split)))
        texts = [text.decode("utf-8") for text, _ in pairs]
        splits[split] = (texts, np.asarray([label for _, label in pairs], "int64"))
    return splits["train"], splits["test"]


def make_adding(num_sequences, seq_len, seed):
    """The adding problem (Hochreiter & Schmidhuber 1997).

    Each sequence has ``seq_len`` steps of (value, marker): values uniform in [0, 1],
    exactly two markers set, one in each half. The target is the sum of the two
    marked values; always predicting the mean scores MSE 1/6 ~ 0.167.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(num_sequences, seq_len)).astype("float32")
    markers = np.zeros_like(values)
    half = seq_len // 2
    rows = np.arange(num_sequences)
    first = rng.integers(0, half, size=num_sequences)
    second = rng.integers(half, seq_len, size=num_sequences)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values[rows, first] + values[rows, second]).astype("float32")
    return x, y


def ring_modes(num_modes=8, radius=2.0):
    """Centres of the ring's Gaussians, shape (num_modes, 2)."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def make_ring(num_points, seed, num_modes=8, radius=2.0, std=0.02):
    """Points from 8 Gaussians on a circle: the classic GAN mode-collapse test."""
    rng = np.random.default_rng(seed)
    centres = ring_modes(num_modes, radius)
    modes = rng.integers(0, num_modes, size=num_points)
    points = centres[modes] + rng.normal(0.0, std, size=(num_points, 2))
    return points.astype("float32"), modes.astype("int64")
