"""Data pipeline throughput against the model's training throughput.

    python -m bench.data_pipeline                 # ~1-2 min on a 2-core CPU
    python -m bench.data_pipeline --repeats 5 --threads 2

Images per second for every way the workbook gets images into a model, next to
the images per second the Lab 1 baseline CNN trains at (Keras ``fit``, the labs'
path) on the same image size:

- loading, paid once per run (``common.data.load_images``): a keras.datasets-style
  ``npz:PATH`` file, a ``folder:PATH`` of PNG files (a first run decodes every
  file with Pillow in a thread pool; later runs read the decoded-array cache,
  here in a temporary ``WORKBOOK_CACHE``: both are timed), and ``mnist`` from
  tensorflow-datasets *under tfds.testing.mock_data* (random examples generated
  by tfds, so no real download or JPEG/PNG decoding: this measures tfds and
  tf.data themselves; labelled "mock");
- feeding, paid every epoch: the batches Keras's ``fit`` draws from numpy arrays
  (its array adapter and torch DataLoader, shuffled, batch 64), a torch
  DataLoader over a TensorDataset, and a tf.data stream from tfds (mock);
- training: Keras ``fit`` of the Lab 1 baseline CNN on 28x28x1 and 8x8x1 images,
  batch 64, steady state (median time between step ends).

The last column divides each rate by the training rate at the same image size:
above 1 means the pipeline outruns the model. The synthetic files are written to
a temporary folder and removed. Figures are medians of ``--repeats`` timings;
load-average and thread settings are printed with the table.

Measured before the labs moved onto the shared runner and before the folder
cache (2-core CPU shared with other jobs, load ~2, 1 torch thread),
``python -m bench.data_pipeline``, images/s: npz load 267,624; folder (PNG) load
5,790; Keras's batches from arrays 190,343; torch DataLoader 132,762; tfds mnist
MOCK load 1,669 and tf.data stream 803; Lab 1 baseline CNN training at 28x28x1: 119
(at 8x8x1: 972). Every source outruns training at the same image size (6.7x for
the slowest, the mock tf.data stream); the full table is in bench/README.md.
"""

import argparse
import contextlib
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # as common/__init__.py does
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.train_step import BenchRun, Clock, instrument  # noqa: E402
from common import speedups, training  # noqa: E402
from common.data import Splits, load_images, load_tfds  # noqa: E402
from common.runs import seed_everything  # noqa: E402

COMMAND = "python -m bench.data_pipeline"
BATCH_SIZE = 64  # Lab 1's batch size


def median_rate(work, count, repeats):
    """Median images/s of ``work()`` handling ``count`` images, after a warm-up."""
    work()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def write_npz(path, num_train, num_test, side, rng):
    np.savez(
        path,
        x_train=rng.integers(0, 256, (num_train, side, side), dtype="uint8"),
        y_train=rng.integers(0, 10, num_train),
        x_test=rng.integers(0, 256, (num_test, side, side), dtype="uint8"),
        y_test=rng.integers(0, 10, num_test),
    )


def write_folder(path, per_class, side, rng):
    from PIL import Image

    for label in range(10):
        folder = path / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (side, side), dtype="uint8")
            Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")


def keras_feed(x, y):
    """One epoch of the batches Keras's fit draws from arrays on torch."""
    from keras.src.backend.torch.trainer import TorchEpochIterator

    iterator = TorchEpochIterator(x=x, y=y, batch_size=BATCH_SIZE, shuffle=True)

    def work():
        for _ in iterator:
            pass

    return work


def torch_feed(x, y):
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)

    def work():
        for _ in loader:
            pass

    return work


def tfds_stream():
    """One pass of a shuffled, batched tf.data stream of mock mnist as numpy."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    dataset = (
        load_tfds("mnist", "train")
        .map(lambda image, label: (tf.cast(image, tf.float32) / 255.0, label))
        .shuffle(1024)
        .batch(BATCH_SIZE)
        .prefetch(2)
    )

    def work():
        for _ in tfds.as_numpy(dataset):
            pass

    return work


def training_rate(x, y, repeats):
    """Images/s of the Lab 1 baseline (the lab's build_model) trained by
    common.training.fit."""
    from common.experiment import parse_args
    from labs import lab1_cnn

    seed_everything(0)
    lab_args = parse_args(lab1_cnn.LAB, ["--arch", "baseline"])
    classes = [str(label) for label in range(10)]
    splits = Splits("bench", "bench arrays", x, y, x, y, x, y, class_names=classes)
    model = lab1_cnn.build_model(lab_args, splits)
    scratch = Path(tempfile.mkdtemp(prefix="bench_pipeline_fit_"))
    try:
        run = BenchRun(scratch)
        steps = []
        for repeat in range(repeats + 1):
            clock = Clock()
            instrument(model, clock)
            with contextlib.redirect_stdout(io.StringIO()):
                training.fit(
                    model,
                    run,
                    x,
                    y,
                    epochs=1,
                    batch_size=BATCH_SIZE,
                    patience=5,
                    monitor="loss",
                    title="bench",
                    checkpoint=False,
                    callbacks=[clock],
                )
            if repeat:
                steps.append(clock.step_ms())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1000.0 * BATCH_SIZE / statistics.median(steps)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (training and feeding)",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=4096,
        help="training images in the npz file and the feeds",
    )
    parser.add_argument(
        "--folder-images",
        type=int,
        default=1000,
        help="PNG files in the folder (10 classes)",
    )
    parser.add_argument(
        "--mock-examples",
        type=int,
        default=2048,
        help="examples per split tfds.testing.mock_data makes",
    )
    parser.add_argument(
        "--no-tfds",
        action="store_true",
        help="skip the tfds rows (importing TensorFlow takes ~10 s)",
    )
    args = parser.parse_args(argv)
    for name in ("repeats", "threads", "images", "folder_images", "mock_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    speedups.install()  # as the runner does; WORKBOOK_KERAS_FIXES=0: as shipped
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    scratch = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    rows = []  # (source, what, image shape, images/s)
    try:
        npz = scratch / "mnist_like.npz"
        write_npz(npz, args.images, args.images // 4, 28, rng)
        total = args.images + args.images // 4
        rows.append(
            (
                "npz:PATH (uint8 28x28, synthetic)",
                "load_images: read, scale, split (once per run)",
                "28x28x1",
                median_rate(lambda: load_images(f"npz:{npz}"), total, args.repeats),
            )
        )
        folder = scratch / "folder"
        write_folder(folder, args.folder_images // 10, 28, rng)
        count = 10 * (args.folder_images // 10)
        cache = scratch / "cache"
        os.environ["WORKBOOK_CACHE"] = str(cache)  # not the user's own cache

        def decode_folder():
            shutil.rmtree(cache, ignore_errors=True)  # decode every file again
            load_images(f"folder:{folder}")

        quiet = contextlib.redirect_stdout(io.StringIO())  # the progress bar
        with quiet:
            decoded = median_rate(decode_folder, count, args.repeats)
            cached = median_rate(
                lambda: load_images(f"folder:{folder}"), count, args.repeats
            )
        rows.append(
            (
                "folder:PATH (PNG 28x28, synthetic)",
                "load_images: Pillow decode, split (first run)",
                "28x28x1",
                decoded,
            )
        )
        rows.append(
            (
                "folder:PATH, again",
                "load_images: the decoded-array cache, split (later runs)",
                "28x28x1",
                cached,
            )
        )
        data = load_images(f"npz:{npz}")
        x, y = data.x_train, data.y_train
        rows.append(
            (
                "numpy arrays",
                "Keras fit's batches (array adapter), 1 epoch",
                "28x28x1",
                median_rate(keras_feed(x, y), len(x), args.repeats),
            )
        )
        rows.append(
            (
                "torch tensors",
                "torch DataLoader(TensorDataset), 1 epoch",
                "28x28x1",
                median_rate(torch_feed(x, y), len(x), args.repeats),
            )
        )
        if not args.no_tfds:
            import tensorflow_datasets as tfds

            with tfds.testing.mock_data(num_examples=args.mock_examples):
                rows.append(
                    (
                        "tfds mnist (MOCK: tfds.testing.mock_data)",
                        "load_images: tfds -> numpy (once per run)",
                        "28x28x1",
                        median_rate(
                            lambda: load_images("mnist"),
                            2 * args.mock_examples,
                            args.repeats,
                        ),
                    )
                )
                rows.append(
                    (
                        "tfds mnist (MOCK: tfds.testing.mock_data)",
                        "tf.data stream: map, shuffle, batch, 1 epoch",
                        "28x28x1",
                        median_rate(tfds_stream(), args.mock_examples, args.repeats),
                    )
                )
        fit_28 = training_rate(x[:1024], y[:1024], args.repeats)
        digits = load_images("digits")
        fit_8 = training_rate(digits.x_train, digits.y_train, args.repeats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    training_rows = [
        (
            "Lab 1 baseline CNN",
            "Keras fit (labs' path), steady-state steps",
            "28x28x1",
            fit_28,
        ),
        (
            "Lab 1 baseline CNN, digits",
            "Keras fit (labs' path), steady-state steps",
            "8x8x1",
            fit_8,
        ),
    ]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print()
    print(
        f"Data pipeline vs training throughput, images/s, median of "
        f"{args.repeats} timings after a warm-up; batch {BATCH_SIZE}"
    )
    print(f"command: {' '.join([COMMAND, *argv]).strip()}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{args.threads}, load average {load} (1/5/15 min); keras "
        f"{keras.__version__}, torch {torch.__version__}, backend "
        f"{keras.backend.backend()}"
    )
    print()
    print("| source | what is timed | image | images/s | / Lab 1 training at 28x28x1 |")
    print("|---|---|---|---|---|")
    for source, what, shape, rate in rows + training_rows:
        print(f"| {source} | {what} | {shape} | {rate:,.0f} | {rate / fit_28:.1f}x |")
    print()
    print(
        "Training needs the images once per epoch; loading happens once per run. "
        "A ratio above 1 means the pipeline is faster than training."
    )
    return rows + training_rows


if __name__ == "__main__":
    main()
