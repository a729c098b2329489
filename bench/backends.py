"""Each lab's default model on each Keras backend: speed and result, one run each.

    python -m bench.backends                          # every tracked lab, 3 epochs
    python -m bench.backends --labs lab1_cnn,lab2_rnn --epochs 5
    python -m bench.backends --labs lab1_cnn --backends torch,jax --keep runs/bench

For every (lab, backend) pair the lab's own command runs in a fresh process,

    KERAS_BACKEND=<backend> python -m labs.<lab> --epochs N --out DIR

with the lab's defaults otherwise (model, data, seed 0, batch size, threads), and
the bench reads DIR/history.json and DIR/metrics.json: seconds per epoch (the
median of epochs 2..N; epoch 1 also holds tracing and compilation, given apart),
the validation figure of the last epoch, the run's training seconds, and the
process's wall and CPU seconds. "/ fastest" divides a backend's seconds per
epoch by the fastest backend's for the same lab. The backends take turns (the
order rotates from lab to lab) so that load from other processes falls on all.
A run that fails or times out gets its row, with the last line it printed.
One run per pair: on a shared machine
the load (printed with every row) moves single figures by 10-30 %.

What each backend compiles, with Keras's default ``jit_compile="auto"``
(keras/src/trainers/trainer.py): TensorFlow runs the train step as a
``tf.function`` graph, with XLA off on a CPU-only machine (``jit_compile=True``
turns XLA on); JAX runs it under ``jax.jit`` (XLA) whenever every layer supports
it; PyTorch runs eagerly (``jit_compile=True`` means ``torch.compile``, which
bench/README.md, section 4, measured slower here). The workbook's fixes to
Keras's torch backend (common/speedups.py) are on for torch, as in the labs.

Measured figures: bench/README.md, section 8.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m bench.backends"
BACKENDS = ("torch", "tensorflow", "jax")
VALIDATION_KEYS = ("val_accuracy", "val_loss")  # the first present is reported


def lab_modules(tracked_only=True):
    """Lab modules on the runner (``LAB = experiment.Lab(`` in labs/labN_*.py), in
    order; by default only those git tracks (a lab still being written is left
    out unless named with --labs)."""
    paths = (ROOT / "labs").glob("lab[0-9]*_*.py")
    if tracked_only:
        listed = subprocess.run(
            ["git", "ls-files", "labs/"], cwd=ROOT, capture_output=True, text=True
        )
        paths = [ROOT / line for line in listed.stdout.split()]
    names = [
        path.stem
        for path in paths
        if re.fullmatch(r"lab\d+_\w+\.py", path.name)
        and path.is_file()
        and re.search(r"^LAB = experiment\.Lab\(", path.read_text(), re.MULTILINE)
    ]
    return sorted(names, key=lambda name: int(re.match(r"lab(\d+)", name).group(1)))


def child_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_lab(lab, backend, out, arguments, timeout):
    """One lab command in a fresh process; returns what it took and left."""
    command = [sys.executable, "-m", f"labs.{lab}", *arguments, "--out", str(out)]
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    cpu, start = child_seconds(), time.perf_counter()
    try:
        child = subprocess.run(
            command,
            cwd=ROOT,
            env=environment,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        code, output = child.returncode, child.stdout + child.stderr
    except subprocess.TimeoutExpired as error:
        code = "timeout"
        output = (error.stdout or b"").decode(errors="replace") if error.stdout else ""
    return dict(
        code=code,
        output=output,
        wall=time.perf_counter() - start,
        cpu=child_seconds() - cpu,
        load=os.getloadavg()[0],
    )


def read_json(path, default):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def figures(run, out):
    """Seconds per epoch, the last validation figure and the lab's own numbers."""
    history = read_json(out / "history.json", [])
    metrics = read_json(out / "metrics.json", {})
    seconds = [row["epoch_seconds"] for row in history if "epoch_seconds" in row]
    last = history[-1] if history else {}
    key = next((key for key in VALIDATION_KEYS if key in last), None)
    return dict(
        run,
        epochs=len(history),
        first_epoch=seconds[0] if seconds else None,
        epoch_seconds=statistics.median(seconds[1:] or seconds) if seconds else None,
        validation=(key, last[key]) if key else None,
        train_seconds=metrics.get("train_seconds"),
        status=metrics.get("status"),
    )


def failure(run):
    """The last informative line a failed run printed."""
    lines = [line.strip() for line in run["output"].splitlines() if line.strip()]
    if run["code"] == "timeout":
        return "timed out"
    return (lines[-1] if lines else f"exit {run['code']}")[:160]


def versions():
    names = ("keras", "torch", "tensorflow", "jax", "jaxlib")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


def machine_line():
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU used, "
        f"load average {load} (1/5/15 min, at the end); Python "
        f"{platform.python_version()}, {versions()}"
    )


def number(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows, args, argv):
    """The markdown table: one row per (lab, backend), ratios within each lab."""

    def trained(row):  # every epoch ran (the run may have failed after training)
        return row.get("epoch_seconds") and row.get("epochs", 0) >= args.epochs

    fastest = {}
    for row in rows:
        if trained(row):
            lab = row["lab"]
            fastest[lab] = min(
                fastest.get(lab, row["epoch_seconds"]), row["epoch_seconds"]
            )
    lines = [
        f"Each lab's default model for {args.epochs} epochs on each Keras backend, "
        "one run each, every run a fresh process "
        f"(`KERAS_BACKEND=... python -m labs.LAB {' '.join(args.lab_arguments)}`)",
        f"command: {' '.join([COMMAND, *argv]).strip()}",
        machine_line(),
        "",
        "| lab | backend | s/epoch (median, epochs 2-N) | / fastest | epoch 1 s "
        "(with compile) | final validation | training s | wall s | CPU s | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not trained(row):
            lines.append(
                f"| {row['lab']} | {row['backend']} | failed: {failure(row)} |"
                + " |" * 6
                + f" {row['load']:.1f} |"
            )
            continue
        ratio = row["epoch_seconds"] / fastest[row["lab"]]
        key, value = row["validation"] or ("-", None)
        shown = "-" if value is None else format(value, ".4g")
        if row["code"] != 0:  # e.g. the evaluation after training ran out of time
            shown += f" (then {failure(row)})"
        mark = "**" if ratio == 1.0 else ""
        lines.append(
            f"| {row['lab']} | {row['backend']} | {mark}{number(row['epoch_seconds'])}"
            f"{mark} | {ratio:.2f}x | {number(row['first_epoch'])} | "
            f"{key} {shown} | {number(row['train_seconds'], 1)} | "
            f"{number(row['wall'], 0)} | {number(row['cpu'], 0)} | {row['load']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--labs",
        default="all",
        help="comma-separated lab modules, or 'all' (every lab on the runner that "
        "git tracks)",
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run (2+: epoch 1 compiles)"
    )
    parser.add_argument(
        "--timeout", type=int, default=600, help="seconds allowed per run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="pass --quick to every lab (tiny data, at most 2 epochs): a smoke "
        "test of the bench, not a measurement",
    )
    parser.add_argument(
        "--keep", metavar="DIR", default=None, help="keep the run directories here"
    )
    parser.add_argument(
        "--save", metavar="PATH", default=None, help="also write the table here"
    )
    args = parser.parse_args(argv)
    known = lab_modules(tracked_only=False)
    if args.labs == "all":
        args.lab_list = lab_modules()
    else:
        args.lab_list = [name.strip() for name in args.labs.split(",") if name.strip()]
    unknown = [name for name in args.lab_list if name not in known]
    if unknown:
        parser.error(f"unknown lab(s) {unknown}; choose from {', '.join(known)}")
    args.backend_list = [name.strip() for name in args.backends.split(",") if name]
    wrong = [name for name in args.backend_list if name not in BACKENDS]
    if wrong or not args.backend_list:
        parser.error(f"unknown backend(s) {wrong}; choose from {', '.join(BACKENDS)}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 1 holds the compilation)")
    if args.timeout < 1:
        parser.error("--timeout must be at least 1")
    args.lab_arguments = ["--epochs", str(args.epochs)] + ["--quick"] * args.quick
    return args


def in_order(rows, args):
    """Rows by lab, then backend, as the command line lists them."""
    return sorted(
        rows,
        key=lambda row: (
            args.lab_list.index(row["lab"]),
            args.backend_list.index(row["backend"]),
        ),
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="bench_backends_"))
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for index, lab in enumerate(args.lab_list):
            shift = index % len(args.backend_list)
            order = args.backend_list[shift:] + args.backend_list[:shift]
            for backend in order:
                out = scratch / f"{lab}-{backend}"
                if out.exists():
                    shutil.rmtree(out)
                run = run_lab(lab, backend, out, args.lab_arguments, args.timeout)
                row = dict(lab=lab, backend=backend, **figures(run, out))
                rows.append(row)
                state = (
                    f"{number(row['epoch_seconds'])} s/epoch, {row['validation']}"
                    if run["code"] == 0
                    else f"failed: {failure(run)}"
                )
                print(
                    f"{lab} on {backend}: {state}, {run['wall']:.0f} s wall, "
                    f"{run['cpu']:.0f} s CPU, load {run['load']:.1f}",
                    flush=True,
                )
                if args.save:  # the table so far: a stopped run keeps its rows
                    Path(args.save).write_text(table(in_order(rows, args), args, argv))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    text = table(in_order(rows, args), args, argv)
    print()
    print(text)
    if args.save:
        Path(args.save).write_text(text)
    return rows


if __name__ == "__main__":
    main()
