"""Lab 1 on real MNIST against its peer, the keras-io "Simple MNIST convnet".

    python -m bench.mnist_peer                      # the peer and Lab 1's defaults
    python -m bench.mnist_peer --candidate "--arch baseline --epochs 6"

The peer is keras-io's examples/vision/mnist_convnet.py written from its
description: Conv2D(32, 3x3, relu), MaxPooling2D(2), Conv2D(64, 3x3, relu),
MaxPooling2D(2), Flatten, Dropout(0.5), Dense(10, softmax); Adam, categorical
cross-entropy, batch 128, 15 epochs, ``validation_split=0.1``. Lab 1 runs as a
student runs it,

    python -m labs.lab1_cnn --dataset folder:TRAIN --test-dataset folder:TEST \\
        --out DIR <candidate flags>

(EarlyStopping, evaluation, plots and model saving included), once per
``--candidate``; by default once with no flags at all, so that its mnist recipe
(chosen from the 28x28 grey images: the plain CNN, one-cycle rate, label
smoothing) is what is measured. Both train on the same 8,000 real MNIST digits
(7,200 train, 800 validation) and are tested on the same 2,000 others: a seeded
sample of the
PNG folders .data/mnist/{train,test}/<digit>/ written as symbolic links under
.data/mnist-8k/{train,test}/<digit>/ (made on the first run). Every run is a
fresh process on the same machine with the same Keras (the workbook's torch
fixes on, common/speedups.py) and the same decoded-image cache, warmed before
timing; "wall s" is the whole process (start, loading, training, evaluation),
"CPU s" its CPU time, which a machine shared with other jobs disturbs less.
One run each: single figures move with the load, printed with every row.

Measured figures and the winning flags: bench/README.md, "Lab 1 vs keras-io".
"""

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m bench.mnist_peer"
SOURCE = ROOT / ".data" / "mnist"
SAMPLE = ROOT / ".data" / "mnist-8k"
CANDIDATES = ("",)  # Lab 1's own defaults (its mnist recipe)
PEER = dict(batch_size=128, epochs=15, validation_split=0.1)  # keras-io's values
TARGET = 0.990  # test accuracy Lab 1 must reach


# ----------------------------------------------------------------------------
# The data: a seeded sample of the real MNIST PNG folders, as symbolic links
# ----------------------------------------------------------------------------
def image_files(folder):
    return sorted(
        path
        for path in Path(folder).glob("*/*.png")
        if path.parent.name.isdigit() and (path.is_file())
    )


def write_sample(source, target, count, seed):
    """``count`` files of ``source``'s class folders, linked under ``target``."""
    import numpy as np

    files = image_files(source)
    if len(files) < count:
        raise SystemExit(
            f"{source} holds {len(files)} PNG digits in class folders, fewer than "
            f"the {count} to sample. Put real MNIST there as <digit>/*.png."
        )
    chosen = np.random.default_rng(seed).choice(len(files), count, replace=False)
    temporary = target.with_name(target.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    for index in sorted(chosen):
        file = files[index]
        link = temporary / file.parent.name / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(file, link.parent))
    shutil.rmtree(target, ignore_errors=True)
    temporary.rename(target)


def prepare_sample(args):
    """The two class-folder trees, reused when they hold the counts asked for."""
    for part, count, seed in (
        ("train", args.train, args.seed),
        ("test", args.test, args.seed + 1),
    ):
        target = args.sample / part
        if len(image_files(target)) != count:
            print(f"writing {count} {part} digits under {target}", flush=True)
            write_sample(args.source / part, target, count, seed)
    return args.sample / "train", args.sample / "test"


def warm_cache(*folders):
    """Decode the folders once (common.data's cache), so that no run pays it."""
    from common.data import _read_folder

    for folder in folders:  # the peer reads them as they are; Lab 1 reads
        for size in (None, 28):  # its --test-dataset at the training size
            _read_folder(str(folder), size)


# ----------------------------------------------------------------------------
# The peer: keras-io's Simple MNIST convnet (run in a child process)
# ----------------------------------------------------------------------------
def peer(train, test, seed):
    """Train and test the keras-io convnet; print one RESULT line of JSON."""
    import common  # noqa: F401 - the workbook's environment defaults
    from common import speedups
    from common.data import _read_folder
    from common.runs import seed_everything

    speedups.install()
    import keras
    import numpy as np
    from keras import layers

    seed_everything(seed)
    x_train, y_train, _, _ = _read_folder(str(train))
    x_test, y_test, _, _ = _read_folder(str(test))
    order = np.random.default_rng(seed).permutation(len(x_train))  # folders are
    x_train, y_train = x_train[order], y_train[order]  # sorted by class
    num_classes, input_shape = 10, x_train.shape[1:]
    y_train = keras.utils.to_categorical(y_train, num_classes)
    y_test = keras.utils.to_categorical(y_test, num_classes)

    model = keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )
    model.compile(
        loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"]
    )
    start = time.perf_counter()
    model.fit(x_train, y_train, verbose=2, **PEER)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    result = dict(
        test_accuracy=float(accuracy),
        train_seconds=round(seconds, 2),
        epochs_run=PEER["epochs"],
        params=int(model.count_params()),
    )
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------
# Runs: each a fresh process, timed from outside
# ----------------------------------------------------------------------------
def child_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command, timeout):
    cpu, start = child_seconds(), time.perf_counter()
    child = subprocess.run(
        command, cwd=ROOT, text=True, capture_output=True, timeout=timeout
    )
    return dict(
        code=child.returncode,
        output=child.stdout + child.stderr,
        wall=time.perf_counter() - start,
        cpu=child_seconds() - cpu,
        load=os.getloadavg()[0],
    )


def run_peer(train, test, args):
    command = [sys.executable, "-m", "bench.mnist_peer", "--peer", str(train)]
    command += [str(test), "--seed", str(args.seed)]
    run = timed(command, args.timeout)
    lines = [line for line in run["output"].splitlines() if line.startswith("RESULT ")]
    run.update(json.loads(lines[-1][7:]) if lines else {})
    shown = (
        f"bench.mnist_peer's keras-io convnet: batch {PEER['batch_size']}, "
        f"{PEER['epochs']} epochs, validation_split {PEER['validation_split']}"
    )
    return dict(run, name="keras-io Simple MNIST convnet", command=shown)


def run_lab1(train, test, flags, args, scratch, index):
    out = scratch / f"lab1-{index}"
    data = ["--dataset", f"folder:{train}", "--test-dataset", f"folder:{test}"]
    command = [sys.executable, "-m", "labs.lab1_cnn", *data, *shlex.split(flags)]
    run = timed([*command, "--out", str(out)], args.timeout)
    try:
        run.update(json.loads((out / "metrics.json").read_text()))
    except (OSError, ValueError):
        pass
    shown = f"python -m labs.lab1_cnn --dataset folder:{train} "
    shown += f"--test-dataset folder:{test} {flags}"
    name = f"Lab 1 {flags}" if flags else "Lab 1 (its mnist recipe)"
    return dict(run, name=name, flags=flags or "(no flags)", command=shown.strip())


def shown_path(path):
    """``path`` relative to the repository when it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def failure(run):
    lines = [line.strip() for line in run["output"].splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit {run['code']}")[:160]


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def table(rows, argv, train_count, test_count, sample):
    reference = rows[0]
    lines = [
        f"Lab 1 vs the keras-io Simple MNIST convnet on {train_count:,} real MNIST "
        f"training digits (10 % of them validate) and {test_count:,} test digits "
        f"({sample}), one run each, every run a fresh process",
        f"command: {shlex.join([*COMMAND.split(), *argv])}",
        machine_line(),
        "",
        "| run | test accuracy | epochs | params | training s | wall s | "
        "wall / keras-io | CPU s | CPU / keras-io | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["code"] != 0 or "test_accuracy" not in row:
            lines.append(
                f"| `{row['command']}` | failed: {failure(row)} |"
                + " |" * 7
                + f" {row['load']:.1f} |"
            )
            continue
        epochs = row.get("epochs_run", "-")
        lines.append(
            f"| `{row['command']}` | {row['test_accuracy']:.4f} | {epochs} | "
            f"{row.get('params', 0):,} | {row.get('train_seconds', 0):.1f} | "
            f"{row['wall']:.0f} | {row['wall'] / reference['wall']:.2f}x | "
            f"{row['cpu']:.0f} | {row['cpu'] / max(reference['cpu'], 1e-9):.2f}x | "
            f"{row['load']:.1f} |"
        )
    winners = [
        row
        for row in rows[1:]
        if row.get("test_accuracy", 0) >= max(TARGET, reference.get("test_accuracy", 1))
        and row["wall"] < reference["wall"]
    ]
    lines.append("")
    if winners:
        best = min(winners, key=lambda row: row["wall"])
        lines.append(
            f"Lab 1 wins with `{best['flags']}`: test accuracy "
            f"{best['test_accuracy']:.4f} (keras-io "
            f"{reference.get('test_accuracy', float('nan')):.4f}) in "
            f"{best['wall'] / reference['wall']:.2f}x the wall time."
        )
    else:
        lines.append(
            f"No Lab 1 candidate reached both test accuracy >= {TARGET} (and the "
            "peer's) and less wall time than the peer."
        )
    return "\n".join(lines) + "\n"


def machine_line():
    import keras
    import torch

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average "
        f"{load} (1/5/15 min, at the end); Python {platform.python_version()}, keras "
        f"{keras.__version__} (backend {keras.backend.backend()}), torch "
        f"{torch.__version__}"
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=None,
        metavar="FLAGS",
        help="Lab 1 flags to try, quoted; repeatable (default: "
        + " and ".join(f"'{flags}'" for flags in CANDIDATES)
        + ")",
    )
    parser.add_argument("--train", type=int, default=8000, help="training digits")
    parser.add_argument("--test", type=int, default=2000, help="test digits")
    parser.add_argument("--seed", type=int, default=0, help="sample and peer seed")
    parser.add_argument(
        "--source", type=Path, default=SOURCE, help="real MNIST class folders"
    )
    parser.add_argument(
        "--sample", type=Path, default=SAMPLE, help="where the sample is linked"
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run")
    parser.add_argument("--save", metavar="PATH", help="also write the table here")
    parser.add_argument(
        "--peer", nargs=2, metavar=("TRAIN", "TEST"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    for name in ("train", "test", "timeout"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    args.candidates = args.candidate or list(CANDIDATES)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.peer:
        return peer(*args.peer, args.seed)
    args.source, args.sample = args.source.resolve(), args.sample.resolve()
    os.chdir(ROOT)  # every run reads the folders by the same (relative) path
    train, test = (Path(shown_path(path)) for path in prepare_sample(args))
    warm_cache(train, test)
    scratch = Path(tempfile.mkdtemp(prefix="bench_mnist_peer_"))
    rows = []
    try:
        runs = [lambda: run_peer(train, test, args)]
        runs += [
            lambda index=index, flags=flags: run_lab1(
                train, test, flags, args, scratch, index
            )
            for index, flags in enumerate(args.candidates)
        ]
        for work in runs:
            row = work()
            rows.append(row)
            figure = row.get("test_accuracy")
            state = f"test accuracy {figure:.4f}" if figure else failure(row)
            print(
                f"{row['name']}: {state}, {row['wall']:.0f} s wall, "
                f"{row['cpu']:.0f} s CPU, load {row['load']:.1f}",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = table(rows, argv, args.train, args.test, shown_path(args.sample))
    print()
    print(text)
    if args.save:
        Path(args.save).write_text(text)
    return rows


if __name__ == "__main__":
    main()
