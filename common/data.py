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

import keras
import numpy as np

from common.cli import WorkbookError, first_line

TFDS_IMAGE_SETS = ("mnist", "fashion_mnist", "cifar10")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Splits:
    """Three disjoint splits of a dataset, and what a run needs to know about it.

    Every lab's loader returns one. ``x_*``/``y_*`` are numpy arrays (``y`` may be
    None, ``x`` may be a dict of arrays); a lab whose data does not fit in memory
    sets ``train`` / ``validation`` / ``test`` to streaming sources (a
    ``keras.utils.PyDataset`` or a ``tf.data.Dataset``), which ``fit`` and
    :meth:`test_batches` then use instead of the arrays.
    ``notes`` holds baselines and facts for config.json's data summary.
    """

    name: str
    source: str
    x_train: object = None
    y_train: object = None
    x_val: object = None
    y_val: object = None
    x_test: object = None
    y_test: object = None
    task: str = "classification"
    class_names: list = field(default_factory=list)
    embedded: bool = False
    notes: dict = field(default_factory=dict)
    train: object = None
    validation: object = None
    test: object = None

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def input_shape(self):
        return tuple(_first_array(self.x_train).shape[1:])

    def sizes(self):
        return {
            f"num_{part}": _length(getattr(self, f"x_{part}"))
            for part in ("train", "val", "test")
        }

    def test_batches(self, batch_size):
        """The test split as numpy (x, y) batches: the ``test`` stream when there is
        one (a ``keras.utils.PyDataset`` or a ``tf.data.Dataset``), else the arrays."""
        if self.test is None:
            x, y, step = self.x_test, self.y_test, batch_size
            starts = range(0, _length(x), step)
            return ((_index(x, slice(i, i + step)), y[i : i + step]) for i in starts)
        if hasattr(self.test, "as_numpy_iterator"):
            return self.test.as_numpy_iterator()
        return (self.test[index] for index in range(len(self.test)))

    def take(self, sizes, seed):
        """A seeded subsample of each array split (``--quick``): {"train": n, ...}."""
        rng = np.random.default_rng(seed)
        for part, count in sizes.items():
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            length = _length(x)
            if x is None or length is None or length <= count:
                continue
            index = np.sort(rng.choice(length, size=count, replace=False))
            setattr(self, f"x_{part}", _index(x, index))
            setattr(self, f"y_{part}", None if y is None else _index(y, index))
        self.notes["quick_subset"] = True
        return self

    def describe(self):
        """A JSON-ready summary for config.json and report.md."""
        summary = {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "embedded": self.embedded,
            **{key: value for key, value in self.sizes().items() if value is not None},
        }
        if self.x_train is not None:
            summary["input_shape"] = list(self.input_shape)
        if self.class_names:
            summary["num_classes"] = self.num_classes
        return {**summary, **self.notes}


def _first_array(x):
    return next(iter(x.values())) if isinstance(x, dict) else x


def _length(x):
    return None if x is None else len(_first_array(x))


def _index(x, index):
    if isinstance(x, dict):
        return {key: value[index] for key, value in x.items()}
    return x[index]


def check_arrays(name, **arrays):
    """Refuse NaN or inf in numeric input arrays, naming the array and the index."""
    for label, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise WorkbookError(
                f"{name}: {label} holds {int(bad.sum())} NaN or infinite value(s), "
                f"the first at index {where}. Clean or drop those samples before "
                "training (a NaN input makes every loss NaN)."
            )


def check_classes(name, labels, class_names):
    """A classifier needs at least two classes in its training labels."""
    present = np.unique(np.asarray(labels))
    if len(present) < 2:
        only = class_names[int(present[0])] if len(present) else "none"
        raise WorkbookError(
            f"{name}: the training data holds only one class ({only!r}), so there "
            "is nothing to tell apart and any classifier would score 100 %. Give "
            "data with at least two classes."
        )


# The running lab's offline data, named in the remedy when a canonical set cannot
# be reached (the runner sets it to the lab's default dataset before loading).
OFFLINE_DEFAULT = {"dataset": "digits"}


def unavailable(name, reason):
    """The one-paragraph error for a canonical dataset that cannot be reached."""
    offline = OFFLINE_DEFAULT["dataset"]
    return WorkbookError(
        f"the dataset {name!r} is not available offline and could not be downloaded "
        f"({reason}). Either run on the lab's offline data with --dataset "
        f"{offline}, or prepare {name} once on a machine with network access "
        f"(python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\") "
        "and point TFDS_DATA_DIR at that folder (default ~/tensorflow_datasets), "
        "or read your own copy with --dataset folder:PATH."
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
    options = {
        "split": split,
        "data_dir": os.environ.get("TFDS_DATA_DIR"),
        "as_supervised": True,
        **kwargs,  # a lab may ask for whole feature dicts (as_supervised=False)
    }
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

    dataset, info = load_tfds(name, split, with_info=True)
    batches = list(tfds.as_numpy(dataset.batch(4096)))
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return images, labels, list(info.features["label"].names)


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
        if "pickle" in str(error):
            reason = (
                "it holds Python objects rather than plain numeric arrays, and the "
                "workbook never unpickles a data file (that can run code)"
            )
        else:
            reason = f"it is not a readable .npz archive ({type(error).__name__})"
        raise WorkbookError(
            f"cannot read {path}: {reason}. Save numeric arrays with "
            "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
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


def stream_tfds_images(name, parts, batch_size, image_size, seed, sizes):
    """A tfds image set streamed with tf.data (decoded, resized to ``image_size``
    square, scaled to [0, 1], batched, prefetched), for sets too large to hold.

    ``parts`` maps "train", "val", "test" to tfds split strings (e.g.
    "train[:80%]"); ``sizes`` caps each ({"train": n or None, ...}).
    """
    import tensorflow as tf

    streams, notes = {}, {"image_shape": [image_size, image_size, 3]}

    def resize(image, label):
        return tf.image.resize(image, (image_size, image_size)) / 255.0, label

    for part, split in parts.items():
        dataset, info = load_tfds(name, split, with_info=True)
        if sizes.get(part):
            dataset = dataset.take(sizes[part])
        count = int(dataset.cardinality())  # negative: unknown (a mocked dataset)
        notes[f"num_{part}"] = count if count >= 0 else None
        if part == "train":
            dataset = dataset.shuffle(1024, seed=seed)
        dataset = dataset.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
        streams[part] = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return Splits(
        name,
        f"tensorflow-datasets {name} (streamed with tf.data; {', '.join(parts)} "
        f"= {', '.join(parts.values())})",
        class_names=list(info.features["label"].names),
        notes=notes,
        train=streams["train"],
        validation=streams["val"],
        test=streams["test"],
    )


class ImageFolderStream(keras.utils.PyDataset):
    """Batches of (images in [0, 1], labels) read with Pillow as they are needed,
    so that a large folder is never loaded whole; unreadable files are skipped,
    and their indices kept in ``skipped``."""

    def __init__(self, files, labels, batch_size, image_size, shuffle, seed):
        super().__init__()
        self.files, self.labels, self.batch_size = files, labels, batch_size
        self.image_size, self.shuffle = image_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order, self.skipped = np.arange(len(files)), set()
        self.on_epoch_end()

    def __len__(self):
        return -(-len(self.files) // self.batch_size)

    def read(self, index):
        image = _decode(self.files[index])
        if image is None:
            if index not in self.skipped:
                print(f"warning: skipped unreadable image {self.files[index]}")
            self.skipped.add(index)
            return None
        image = image.convert("RGB").resize((self.image_size,) * 2)
        return np.asarray(image, dtype="float32") / 255.0

    def __getitem__(self, batch):
        picks = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        kept = [(self.read(i), self.labels[i]) for i in picks]
        kept = [(image, label) for image, label in kept if image is not None]
        if not kept:
            raise WorkbookError(
                f"a whole batch of {len(picks)} image files could not be read (e.g. "
                f"{self.files[picks[0]]}). Check that the folder's images open in an "
                "image viewer, or remove the broken files."
            )
        images, labels = zip(*kept)
        return np.stack(images), np.asarray(labels, dtype="int64")

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.order)


def stream_image_folder(path, batch_size, image_size, seed, sizes):
    """``folder:PATH`` streamed: class sub-folders split 72/8/20 (train/val/test)
    by file, each split a :class:`ImageFolderStream`; ``sizes`` caps each split
    ({"train": n or None, ...})."""
    files, labels, class_names = scan_image_folder(path)
    check_classes(path, labels, class_names)
    if len(files) < 10:
        raise WorkbookError(
            f"{path} holds only {len(files)} images; train, validation and test "
            "splits need at least 10."
        )
    train, test, _, _ = _split(np.arange(len(files)), labels, 0.2, seed)
    train, val, _, _ = _split(train, labels[train], 0.1, seed)
    rng, streams = np.random.default_rng(seed), {}
    notes = {"image_shape": [image_size, image_size, 3]}
    for part, chosen in {"train": train, "val": val, "test": test}.items():
        if sizes.get(part) and len(chosen) > sizes[part]:
            chosen = rng.choice(chosen, size=sizes[part], replace=False)
        chosen, notes[f"num_{part}"] = np.sort(chosen), len(chosen)
        streams[part] = ImageFolderStream(
            [files[i] for i in chosen],
            labels[chosen],
            batch_size,
            image_size,
            shuffle=part == "train",
            seed=seed,
        )
    return Splits(
        f"folder:{path}",
        f"image folder {path} (streamed with a Keras PyDataset and Pillow)",
        class_names=class_names,
        notes=notes,
        train=streams["train"],
        validation=streams["val"],
        test=streams["test"],
    )


def _cache_path(files, mode_key):
    """Where the decoded arrays of an image folder are cached, keyed by its content."""
    import hashlib

    digest = hashlib.sha1(mode_key.encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    root = Path(os.environ.get("WORKBOOK_CACHE", Path.home() / ".cache" / "workbook"))
    return root / f"images-{digest.hexdigest()[:20]}.npz"


def _decode(file):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _read_folder(path, image_size=None):
    """All images of a class-folder tree as arrays, decoded once and then cached.

    Decoding runs in a thread pool (Pillow releases the GIL while it decodes) with a
    progress bar; the arrays are cached (``WORKBOOK_CACHE``, default
    ~/.cache/workbook) under a key of every file's path, size and time, so a
    second run of 60,000 images loads in about a second.
    """
    from concurrent.futures import ThreadPoolExecutor

    import keras

    files, labels, class_names = scan_image_folder(path)
    cache = _cache_path(files, f"size={image_size}")
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as archive:
            return (
                archive["images"],
                archive["labels"],
                class_names,
                int(archive["skipped"]),
            )
    progress = keras.utils.Progbar(len(files), unit_name="image")
    print(f"reading {len(files)} images under {path} (cached afterwards)")
    images = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for index, image in enumerate(pool.map(_decode, files, chunksize=64)):
            images.append(image)
            if index % 1000 == 999 or index == len(files) - 1:
                progress.update(index + 1)
    skipped = [file for file, image in zip(files, images) if image is None]
    kept = np.asarray(
        [label for label, image in zip(labels, images) if image is not None], "int64"
    )
    images = [image for image in images if image is not None]
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

    def convert(image):
        image = image.convert(mode)
        return np.asarray(
            image if image.size == image_size else image.resize(image_size)
        )

    arrays = _scale(np.stack([convert(image) for image in images]))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(".tmp.npz")
        np.savez(temporary, images=arrays, labels=kept, skipped=len(skipped))
        os.replace(temporary, cache)
    except OSError as error:
        print(f"note: could not cache the decoded images ({error.strerror})")
    return arrays, kept, class_names, len(skipped)


def _read_images(name, seed, image_size):
    """(x_train, y_train, x_test, y_test, class_names, source, embedded, notes)."""
    if name == "digits":
        x_train, y_train, x_test, y_test, class_names = _load_digits(seed)
        return (
            x_train,
            y_train,
            x_test,
            y_test,
            class_names,
            "scikit-learn load_digits (embedded, 8x8)",
            True,
            {},
        )
    if name in TFDS_IMAGE_SETS:
        x_train, y_train, class_names = _tfds_arrays(name, "train")
        x_test, y_test, _ = _tfds_arrays(name, "test")
        return (
            _scale(x_train),
            y_train.astype("int64"),
            _scale(x_test),
            y_test.astype("int64"),
            class_names,  # the dataset's own names ("airplane", ...; "0".."9")
            f"tensorflow-datasets {name}",
            False,
            {},
        )
    if name.startswith("npz:"):
        return (*_read_npz(name[4:]), f"npz file {name[4:]}", False, {})
    if name.startswith("folder:"):
        images, labels, class_names, skipped = _read_folder(name[7:], image_size)
        x_train, x_test, y_train, y_test = _split(images, labels, 0.2, seed)
        return (
            x_train,
            y_train,
            x_test,
            y_test,
            class_names,
            f"image folder {name[7:]}",
            False,
            {"skipped_files": skipped},
        )
    raise WorkbookError(
        f"unknown dataset {name!r}. Use digits (embedded), "
        f"{', '.join(TFDS_IMAGE_SETS)} (tensorflow-datasets), npz:PATH or "
        "folder:PATH."
    )


def _whole(name, seed, image_size):
    """A dataset used whole: a folder's every image, else its test split."""
    if name.startswith("folder:"):
        images, labels, class_names, _ = _read_folder(name[7:], image_size)
        return images, labels, class_names, f"image folder {name[7:]}"
    _, _, x_test, y_test, class_names, source, _, _ = _read_images(
        name, seed, image_size
    )
    return x_test, y_test, class_names, f"{source} (test split)"


def load_images(name, seed=0, val_fraction=0.1, image_size=None, test_dataset=None):
    """Load an image classification set by its ``--dataset`` name.

    With ``test_dataset`` (``--test-dataset``), every image of ``name`` trains
    (validation carved from it) and the test split is the whole of
    ``test_dataset``, which must have the same classes and image size.
    """
    x_train, y_train, x_test, y_test, class_names, source, embedded, notes = (
        _read_images(name, seed, image_size)
    )
    if test_dataset is not None:
        if name.startswith("folder:"):
            x_train, y_train = (
                np.concatenate([x_train, x_test]),
                np.concatenate([y_train, y_test]),
            )
        x_test, y_test, test_classes, test_source = _whole(
            test_dataset,
            seed,
            image_size or (x_train.shape[1] if name.startswith("folder:") else None),
        )
        if test_classes != class_names or x_test.shape[1:] != x_train.shape[1:]:
            raise WorkbookError(
                f"--test-dataset {test_dataset} does not match --dataset {name}: "
                f"classes {test_classes} of images {x_test.shape[1:]} against "
                f"{class_names} of {x_train.shape[1:]}. Give a test set with the "
                "same class folders and image size (or pass --image-size)."
            )
        source += f"; test: {test_source}"
        notes["test_dataset"] = test_dataset
    x_train, x_val, y_train, y_val = _split(x_train, y_train, val_fraction, seed)
    check_arrays(name, x_train=x_train, x_val=x_val, x_test=x_test)
    check_classes(name, y_train, class_names)
    return Splits(
        name,
        source,
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        task="classification",
        class_names=class_names,
        embedded=embedded,
        notes=notes,
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


# Segmentation (lab 6): generated scenes, and folders of images + class-index masks
SCENE_CLASSES = ["background", "border", "disc", "square", "triangle"]
MASK_MODES = ("L", "P", "I", "I;16")  # one class index per pixel
MAX_MASK_CLASSES = 64  # inferred from the masks when a folder has no classes.txt


def smooth_noise(rng, count, size, cells, channels):
    """Low-frequency texture: a coarse random grid, bilinearly upsampled."""
    grid = rng.random((count, cells + 1, cells + 1, channels))
    position = np.linspace(0, cells, size)
    low = np.minimum(position.astype(int), cells - 1)
    weight = (position - low)[:, None]
    grid = grid[:, low] * (1 - weight[..., None]) + grid[:, low + 1] * weight[..., None]
    return grid[:, :, low] * (1 - weight) + grid[:, :, low + 1] * weight


def shape_mask(kind, size, rng):
    """A randomly placed, sized and turned disc, square or triangle (bool HxW)."""
    radius = rng.uniform(0.12, 0.24) * size
    center = rng.uniform(radius, size - radius, 2)[:, None, None]
    rows, columns = np.mgrid[0:size, 0:size] + 0.5 - center
    angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
    # Distances along three directions 120 degrees apart (two for the square).
    along = [rows * np.cos(a) - columns * np.sin(a) for a in angles]
    if kind == "disc":
        return rows**2 + columns**2 <= radius**2
    if kind == "square":
        turned = rows * np.sin(angles[0]) + columns * np.cos(angles[0])
        return np.maximum(np.abs(along[0]), np.abs(turned)) <= 0.85 * radius
    return np.all([distance >= -0.6 * radius for distance in along], axis=0)


def make_scenes(count, size, seed, shapes=(3, 5)):
    """Non-overlapping shapes on textured, noisy backgrounds, with trimap-like masks.

    A shape's class is its outline, not its colour (colours are random), so a
    pixel's class needs context; "border" marks the pixels on both sides of an
    outline, like the Pets trimap's border, and needs the full resolution.
    """
    rng = np.random.default_rng(seed)
    images = 0.25 + 0.5 * smooth_noise(rng, count, size, 4, 3)
    images += 0.15 * (smooth_noise(rng, count, size, size // 4, 3) - 0.5)
    masks = np.zeros((count, size, size), "uint8")
    for image, mask in zip(images, masks):
        wanted = rng.integers(shapes[0], shapes[1] + 1)
        for _ in range(40):  # tries: shapes must not overlap
            label = rng.integers(2, len(SCENE_CLASSES))
            inside = shape_mask(SCENE_CLASSES[label], size, rng)
            if wanted == 0 or mask[inside].any():
                continue
            wanted -= 1
            texture = 0.2 * smooth_noise(rng, 1, size, 3, 1)[0] - 0.1
            image[inside] = rng.uniform(0.0, 1.0, 3) + texture[inside]
            mask[inside] = label
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    masks[windows.max(axis=(-2, -1)) != windows.min(axis=(-2, -1))] = 1  # border
    images += rng.normal(0.0, 0.05, images.shape)
    return np.clip(images, 0.0, 1.0).astype("float32"), masks


def read_mask_folder(path, size):
    """PATH/images/NAME.* with PATH/masks/NAME.png (class indices), resized.

    Optional PATH/classes.txt names the classes, one a line, index 0 first; without
    it they are 0..(largest mask value). Unreadable pairs are skipped and counted;
    a missing, colour, mis-sized or out-of-range mask stops, naming the file.
    """
    from PIL import Image

    root = Path(path)
    names_file = root / "classes.txt"
    names = names_file.read_text().split("\n") if names_file.is_file() else []
    names = [name.strip() for name in names if name.strip()]
    files, masks = (
        sorted(f for f in (root / sub).glob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        for sub in ("images", "masks")
    )
    masks = {file.stem: file for file in masks}
    missing = [file.name for file in files if file.stem not in masks]
    if missing or not files:
        raise WorkbookError(
            f"{root}: {len(missing)} of {len(files)} images in images/ have no mask "
            f"in masks/ (e.g. {', '.join(missing[:3]) or 'no images at all'}). Put "
            "each image in PATH/images/ and its mask, a one-channel PNG of class "
            "indices with the same name, in PATH/masks/."
        )
    limit, images, labels, skipped = len(names) or MAX_MASK_CLASSES, [], [], 0
    for file in files:
        try:
            with Image.open(file) as image, Image.open(masks[file.stem]) as mask:
                image, mask = image.convert("RGB"), mask.copy()
        except (OSError, ValueError):
            skipped += 1
            continue
        values = np.asarray(mask) if mask.mode in MASK_MODES else None
        problem = (
            f"is a {mask.mode} image, not one class index per pixel"
            if values is None
            else f"is {mask.size} pixels but its image is {image.size} (width, height)"
            if mask.size != image.size
            else f"holds the class index {values.max()}, but there are {limit} classes"
            if values.max() >= limit
            else None
        )
        if problem:
            raise WorkbookError(
                f"the mask {masks[file.stem]} {problem}. Masks are one-channel PNGs "
                f"of class indices 0, 1, ... (at most {MAX_MASK_CLASSES} without "
                "classes.txt) with the size of their image; fix or remove that pair."
            )
        labels.append(np.asarray(mask.resize((size, size), Image.Resampling.NEAREST)))
        images.append(np.asarray(image.resize((size, size)), "float32") / 255.0)
    if skipped:
        print(f"warning: skipped {skipped} unreadable image or mask file(s) in {root}")
    if not images:
        raise WorkbookError(f"none of the {len(files)} images under {root} is readable")
    labels = np.stack(labels).astype("uint8")
    names = names or [f"class {index}" for index in range(int(labels.max()) + 1)]
    return np.stack(images), labels, names
