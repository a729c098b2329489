"""The runner: a lab hands over what is its own, the runner does the rest.

A lab module defines its hyperparameters, data loader, builders, registry,
evaluation and plots, and one :class:`Lab`::

    LAB = experiment.Lab(
        name="lab7_autoencoder",
        description="Lab 7: autoencoder embeddings and a random forest.",
        hyperparameters=HYPERPARAMETERS,   # epochs, batch_size, learning_rate, patience
        architectures=ARCHITECTURES,       # drives --arch and --compare
        default_arch="conv",
        datasets="digits (embedded, default), mnist (tfds), npz:PATH, folder:PATH",
        default_dataset="digits",
        load_data=load_data,               # (args) -> common.data.Splits
        build=build_model,                 # (args, splits) -> compiled keras.Model
        evaluate=evaluate,                 # (model, splits, run, args) -> flat dict
        headline=("test_accuracy", "max"), # what --compare ranks the variants by
        flags={"width": (cli.positive_int, "filters of the first layer")},
    )

    def main(argv=None):
        return experiment.run(LAB, argv)

The runner parses the shared flags, seeds, installs the torch speed fixes (and
says so), loads the data (``--quick`` subsamples it), creates the run directory,
calls Keras ``fit`` once through :func:`common.training.fit` (EarlyStopping with
the best weights restored, the history recorder, TerminateOnNaN, a checkpoint
for ``--resume``), evaluates, saves ``model.keras``, writes metrics.json and
report.md, and prints the ``run:`` line. It is not a trainer: a lab that needs
two fits (lab 4's phases) passes ``train=``; a GAN overrides ``train_step``.

``--compare`` trains one variant after another on the same data and seed (by
default one per architecture; ``variants=`` changes that), each into a complete
sub-run directory, then writes comparison.md/.json, plots/comparison.png, a
combined history and plots/learning_curves.png, metrics.json (the best variant's
figures, plus ``<variant>_<key>`` for every variant's) and the best model.

Optional parts a lab may hand over:

- ``flags``: its own numeric or text flags, ``{name: (type, help)}``; the default
  is ``hyperparameters[name]`` (None when absent), or a third item.
- ``defaults(args)``: values for the flags left at None, chosen per run (a
  comparison's variants each get their own arch's); the runner fills them in and
  records them in config.json as ``hyperparameters``. A ``--patience`` left at
  None turns early stopping off (the best epoch is still kept).
- ``snapshot(model, splits, args, epoch, logs, path)``: one picture of what the
  model makes. The runner adds ``--snapshot-every``, draws the picture before
  training (epoch 0, with the untrained model's validation figures, also kept in
  config.json as ``untrained``) and every N-th epoch into samples/epoch_NNN.png,
  and turns those into plots/progress.gif and plots/progress.png for the report.

A lab's ``conclude(results, run, args)`` may add sections to the comparison's
report.md and return extra flat figures for its metrics.json (lab 9 writes its
"what this shows" paragraph there). ``--resume`` continues an interrupted run, or
the unfinished variants of an interrupted comparison.
"""

import argparse
import copy
import csv
import io
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common import cli
from common.cli import WorkbookError
from common.runs import Run, atomic_write_text, seed_everything

FINISHED = ("completed", "early_stopped")
DISTRIBUTE_MODES = ("none", "data-parallel")


@dataclass
class Lab:
    """What a lab owns; see the module docstring."""

    name: str
    description: str
    hyperparameters: dict
    architectures: dict
    default_arch: str
    datasets: str
    default_dataset: str
    load_data: Callable
    build: Callable
    evaluate: Callable
    add_arguments: Callable = None
    check_arguments: Callable = None
    headline: tuple = ("test_accuracy", "max")
    flags: dict = None
    defaults: Callable = None
    snapshot: Callable = None
    prepare: Callable = None
    train: Callable = None
    fit_kwargs: Callable = None
    variants: Callable = None
    summary: Callable = None
    conclude: Callable = None
    title: Callable = None
    quick_sizes: dict = field(
        default_factory=lambda: {"train": 256, "val": 64, "test": 128}
    )
    quick_epochs: int = 2
    threads: int = None
    monitor: str = "val_loss"
    always_compare: bool = False


# ----------------------------------------------------------------- command line
def make_parser(lab):
    """The shared flags, with the lab's hyperparameters as defaults, then its own."""
    hyper = lab.hyperparameters
    parser = argparse.ArgumentParser(
        prog=f"python -m labs.{lab.name}",
        description=lab.description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        default=lab.default_arch,
        choices=list(lab.architectures),
        help="model architecture",
    )
    parser.add_argument("--dataset", default=lab.default_dataset, help=lab.datasets)
    parser.add_argument(
        "--test-dataset",
        metavar="SPEC",
        default=None,
        help="a separate test set, in any form --dataset takes; --dataset then "
        "gives training and validation data only",
    )
    parser.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=hyper.get("epochs", 20),
        help="maximum number of epochs (EarlyStopping may stop sooner)",
    )
    parser.add_argument(
        "--batch-size", type=cli.positive_int, default=hyper.get("batch_size", 64)
    )
    parser.add_argument(
        "--learning-rate",
        type=cli.positive_float,
        default=hyper.get("learning_rate", 1e-3),
    )
    parser.add_argument(
        "--patience",
        type=cli.positive_int,
        default=hyper.get("patience", 5),
        help="EarlyStopping patience in epochs (on the validation set)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--out",
        default=None,
        help="write the run exactly into this new or empty folder "
        f"(default: runs/{lab.name}/<time>-<arch>-<dataset>/)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: a tiny subset and at most 2 epochs",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="train every variant (architecture) on the same data and seed, "
        "and write a comparison",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue an interrupted run (or comparison) from its last "
        "checkpoint, with the arguments in its config.json",
    )
    parser.add_argument(
        "--distribute",
        choices=DISTRIBUTE_MODES,
        default="none",
        help="data-parallel: split each batch across all devices with Keras's "
        "distribution API (JAX backend)",
    )
    parser.add_argument(
        "--threads",
        type=cli.positive_int,
        default=lab.threads,
        help="CPU threads for the backend's math (default: the backend's own)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback on errors"
    )
    for name, (kind, text, *default) in (lab.flags or {}).items():
        default = default[0] if default else hyper.get(name)
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=default, help=text)
    if lab.snapshot:
        parser.add_argument(
            "--snapshot-every",
            type=cli.positive_int,
            help="epochs between the pictures in samples/; None: a tenth of --epochs",
        )
    if lab.add_arguments:
        lab.add_arguments(parser)
    return parser


def parse_args(lab, argv):
    parser = make_parser(lab)
    args = parser.parse_args(argv)
    if lab.check_arguments:
        lab.check_arguments(args, parser)
    if lab.always_compare:
        args.compare = True
    if args.quick:  # (a lab whose epochs default per arch leaves them at None)
        args.epochs = min(args.epochs or lab.quick_epochs, lab.quick_epochs)
    return args


# ------------------------------------------------------------ backend set-up
def set_threads(threads):
    """The one thread setting: the backend's intra-op CPU threads."""
    if not threads:
        return
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started: keep its setting
            pass


def install_speedups():
    """Install common.speedups on the torch backend and say so; returns the state."""
    import keras

    if keras.backend.backend() != "torch":
        return "off (torch only)"
    from common import speedups

    reason = speedups.install()
    if reason:
        print(f"keras fixes: off ({reason})")
        return "off"
    print(
        "keras fixes: on (common/speedups.py: fused BatchNorm and RNNs, no layout "
        f"copies; {speedups.SWITCH}=0 turns them off)"
    )
    return "installed"


def set_distribution(mode):
    """``--distribute data-parallel``: Keras's DataParallel over every device."""
    if mode == "none":
        return None
    import keras

    if keras.backend.backend() != "jax":
        raise WorkbookError(
            f"--distribute {mode} uses Keras's distribution API, which runs on the "
            f"JAX backend only; this run uses {keras.backend.backend()}. Run with "
            "KERAS_BACKEND=jax (several GPUs, or on a CPU with XLA_FLAGS="
            "--xla_force_host_platform_device_count=2 to try it), or, on PyTorch, "
            "wrap training in torch DistributedDataParallel yourself (README, "
            "'Beyond one machine')."
        )
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )
    print(f"distribute: data-parallel over {len(devices)} devices: {devices}")
    return devices


# ------------------------------------------------------------------ one run
def load_splits(lab, args):
    if args.test_dataset is not None and args.test_dataset == args.dataset:
        raise WorkbookError(
            f"--test-dataset is the same as --dataset ({args.dataset}), so the test "
            "set would overlap the training data. Give a separate test set, or "
            "leave out --test-dataset (the test split is then held out of --dataset)."
        )
    from common.data import OFFLINE_DEFAULT

    # the remedy for an unreachable canonical set names this lab's offline data
    OFFLINE_DEFAULT["dataset"] = lab.default_dataset or "digits"
    try:
        splits = lab.load_data(args)
    finally:
        OFFLINE_DEFAULT["dataset"] = "digits"
    if args.quick and splits.x_train is not None and splits.train is None:
        splits.take(lab.quick_sizes, args.seed)
    return splits


def default_title(lab, args):
    if lab.title:
        return lab.title(args)
    return f"{lab.name} {args.arch} on {args.dataset}"


def train_and_evaluate(lab, args, splits, run):
    """Build, fit, evaluate, save and report one run; returns its metrics."""
    from common import training

    prepare(lab, args, splits, run)
    seed_everything(args.seed)
    model = lab.build(args, splits)
    print(f"model: {model.name}, {model.count_params():,} parameters")
    title = default_title(lab, args)
    if lab.train:
        result = lab.train(model, splits, run, args)
    else:
        extra = lab.fit_kwargs(args, splits, run) if lab.fit_kwargs else {}
        if splits.train is not None:
            x, y = splits.train, None
            validation = splits.validation
            batch_size = None
        else:
            x, y = splits.x_train, splits.y_train
            validation = (splits.x_val, splits.y_val)
            batch_size = args.batch_size
        if lab.snapshot:
            size = extra.get("validation_batch_size", batch_size)
            take = snapshots(lab, run, args, splits, validation, size)
            extra["callbacks"] = [*extra.get("callbacks", []), take]
        result = training.fit(
            model,
            run,
            x,
            y,
            validation_data=validation,
            epochs=args.epochs,
            batch_size=batch_size,
            patience=args.patience or args.epochs + 1,  # None: off
            monitor=lab.monitor,
            title=title,
            **extra,
        )
    figures = lab.evaluate(model, splits, run, args)
    if lab.snapshot:
        progress(run)
    metrics = {**result, **figures}
    run.write_metrics(metrics)
    run.save_model(model)
    run.write_report(title, metrics)
    print(summary_line(lab, args, metrics))
    return metrics


def prepare(lab, args, splits, run):
    """One run's set-up: the flags left at None from the lab's defaults (recorded in
    config.json), then the lab's own ``prepare``."""
    if lab.defaults:
        run.write_config(hyperparameters=fill_defaults(lab, args))
    if lab.prepare:
        lab.prepare(args, splits, run)


def fill_defaults(lab, args):
    """Set the flags left at None from ``lab.defaults(args)``; returns their values."""
    chosen = lab.defaults(args)
    for key, value in chosen.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return {key: getattr(args, key) for key in chosen}


def snapshots(lab, run, args, splits, validation, batch_size=None):
    """The callback that draws ``lab.snapshot`` into samples/epoch_NNN.png: before
    training (not again on resume) with the untrained model's validation figures,
    which config.json keeps as ``untrained``; every ``--snapshot-every`` epochs
    and at the end with the epoch's logs. ``validation`` is what ``fit`` gets: an
    (x, y) tuple or a streaming source."""
    from common.callbacks import Snapshots

    folder = run.path / "samples"
    data = validation if isinstance(validation, tuple) else (validation,)

    def take(model, epoch, logs):
        if epoch == 0:
            figures = model.evaluate(
                *data, batch_size=batch_size, verbose=0, return_dict=True
            )
            logs = {f"val_{key}": float(value) for key, value in figures.items()}
            run.write_config(untrained=logs)
        folder.mkdir(exist_ok=True)
        path = folder / f"epoch_{epoch:03d}.png"
        lab.snapshot(model, splits, args, epoch, logs, path)

    every = args.snapshot_every or max(1, args.epochs // 10)
    return Snapshots(take, every=every, start=not run.resumed)


def progress(run):
    """plots/progress.gif and progress.png from every snapshot (a resumed run's too)."""
    from common import plots

    frames = sorted((run.path / "samples").glob("epoch_*.png"))
    if frames:
        plots.progress(frames, run.plots / "progress.gif", run.plots / "progress.png")
        run.add_section("Progress", "![progress](plots/progress.gif)")


def summary_line(lab, args, metrics):
    if lab.summary:
        return lab.summary(metrics)
    key = headline(lab, args)[0]
    value = metrics.get(key)
    shown = f"{value:.4f}" if isinstance(value, float) else value
    return (
        f"{key.replace('_', ' ')} {shown}, {metrics.get('train_seconds', 0):.0f} s "
        f"training (status {metrics.get('status')})"
    )


def run(lab, argv=None):
    """Parse, set up and run one lab command; returns its metrics dict."""
    argv = cli.resume_argv(sys.argv[1:] if argv is None else list(argv), lab.name)
    args = parse_args(lab, argv)
    set_threads(args.threads)
    fixes = install_speedups()
    devices = set_distribution(args.distribute)
    seed_everything(args.seed)
    splits = load_splits(lab, args)
    if args.compare:
        parent = Run.create(lab.name, args, argv, requires_checkpoint=False)
    else:
        parent = Run.create(lab.name, args, argv)
    extra = {"data": splits.describe(), "keras_fixes": fixes}
    if devices:
        extra["devices"] = [str(device) for device in devices]
    parent.write_config(**extra)
    print(describe_data(splits))
    if args.compare:
        metrics = compare(lab, args, argv, splits, parent)
    else:
        metrics = train_and_evaluate(lab, args, splits, parent)
    parent.finish()
    return metrics


def describe_data(splits):
    sizes = splits.sizes()
    counts = ", ".join(
        f"{value} {part[4:]}" for part, value in sizes.items() if value is not None
    )
    return f"data: {splits.source}: {counts or 'streamed'}"


# ---------------------------------------------------------------- comparison
def variants_of(lab, args):
    if lab.variants:
        return lab.variants(args)
    return {arch: {"arch": arch} for arch in lab.architectures}


def variant_argv(argv, overrides):
    """The command line that reproduces one variant of a comparison on its own."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--compare",) or item.startswith("--out="):
            continue
        if item in ("--out", "--resume"):
            skip = True
            continue
        kept.append(item)
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        kept = [item for item in kept if not item.startswith(flag + "=")]
        while flag in kept:
            index = kept.index(flag)
            del kept[index : index + 2]
        if value is True:
            kept.append(flag)
        elif value not in (False, None):
            kept += [flag, str(value)]
    return kept


def read_json(path, default):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def compare(lab, args, argv, splits, parent):
    """Train every variant into its own sub-run; write the comparison."""
    results = {}
    variants = variants_of(lab, args)
    for variant, overrides in variants.items():
        sub_path = parent.path / variant
        finished = read_json(sub_path / "metrics.json", {})
        if finished.get("status") in FINISHED:
            print(f"\n=== {variant}: already finished, kept ===")
            results[variant] = finished
            continue
        print(f"\n=== {variant} ===")
        sub_args = copy.copy(args)
        for name, value in overrides.items():
            setattr(sub_args, name, value)
        sub_args.compare, sub_args.out = False, str(sub_path)
        sub_args.resume = None
        if (sub_path / "backup").is_dir():
            sub_args.resume = str(sub_path)
        elif sub_path.exists():
            shutil.rmtree(sub_path)  # started, but not one epoch was saved
        sub_run = Run.create(lab.name, sub_args, variant_argv(argv, overrides))
        sub_run.write_config(data=splits.describe(), variant=variant)
        try:
            results[variant] = train_and_evaluate(lab, sub_args, splits, sub_run)
        except cli.RunInterrupted:
            write_comparison(lab, args, parent, variants, results, interrupted=True)
            raise
        except WorkbookError as error:  # diverged: keep going with the others
            print(f"warning: {variant} failed: {cli.paragraph(error)}")
            results[variant] = read_json(sub_path / "metrics.json", {})
            results[variant].setdefault("status", "diverged")
    return write_comparison(lab, args, parent, variants, results)


def headline(lab, args):
    """(metric, "max" | "min"): ``lab.headline``, or what it returns for ``args``."""
    return lab.headline(args) if callable(lab.headline) else lab.headline


def best_variant(lab, args, results):
    key, direction = headline(lab, args)
    scored = {
        name: metrics[key]
        for name, metrics in results.items()
        if isinstance(metrics.get(key), (int, float))
        and metrics.get("status") in FINISHED
    }
    if not scored:
        return None
    choose = max if direction == "max" else min
    return choose(scored, key=scored.get)


def comparison_rows(lab, args, results):
    key = headline(lab, args)[0]
    columns = (key, "params", "train_seconds", "best_epoch", "epochs_run", "status")
    extra = ("macro_f1", "inference_ms_per_image", "inference_ms_per_sample")
    rows = []
    for name, metrics in results.items():
        row = {"variant": name, **{column: metrics.get(column) for column in columns}}
        row.update({column: metrics[column] for column in extra if column in metrics})
        rows.append(row)
    return rows


def markdown_table(rows):
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows
    ]
    return "\n".join(lines) + "\n"


def combined_history(parent, variants):
    histories = {
        name: read_json(parent.path / name / "history.json", []) for name in variants
    }
    rows = [
        {"variant": name, **row}
        for name, history in histories.items()
        for row in history
    ]
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or ["variant"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(parent.path / "history.csv", buffer.getvalue())
    parent.write_json("history.json", rows)
    return {name: history for name, history in histories.items() if history}


def write_comparison(lab, args, parent, variants, results, interrupted=False):
    from common import plots

    key, direction = headline(lab, args)
    title = f"{lab.name}: {' vs '.join(variants)} on {args.dataset}"
    rows = comparison_rows(lab, args, results)
    table = markdown_table(rows)
    best = best_variant(lab, args, results)
    parent.write_json(
        "comparison.json",
        {"dataset": args.dataset, "metric": key, "best": best, "rows": rows},
    )
    atomic_write_text(parent.path / "comparison.md", f"# {title}\n\n{table}")
    histories = combined_history(parent, variants)
    if histories:
        plots.variant_learning_curves(
            histories, parent.plots / "learning_curves.png", title, lab.monitor
        )
    scored = [row for row in rows if isinstance(row.get(key), (int, float))]
    if scored:
        plots.comparison_bars(
            scored, key, parent.plots / "comparison.png", title, best=best
        )
    statuses = [metrics.get("status") for metrics in results.values()]
    if interrupted or len(results) < len(variants):
        status = "interrupted"
    elif statuses and all(status == "diverged" for status in statuses):
        status = "diverged"
    else:
        status = "completed"
    metrics = {"status": status, "best_variant": best}
    if best:
        metrics.update(
            {k: v for k, v in results[best].items() if k != "status" and _flat(v)}
        )
        shutil.copyfile(parent.path / best / "model.keras", parent.path / "model.keras")
    metrics["train_seconds"] = round(
        sum(result.get("train_seconds") or 0.0 for result in results.values()), 2
    )
    for name, result in results.items():
        for figure, value in result.items():
            if _flat(value):
                metrics[f"{name}_{figure}"] = value
    if lab.conclude and not interrupted:  # the lab's reading of the comparison
        metrics.update(lab.conclude(results, parent, args) or {})
    parent.write_metrics(metrics)
    parent.add_section("Comparison (test set)", table)
    parent.add_section(
        "Sub-runs", "\n".join(f"- [{name}]({name}/report.md)" for name in results)
    )
    parent.write_report(title, {k: metrics[k] for k in ("status", "best_variant")})
    print(f"\n{table}")
    return metrics


def _flat(value):
    return value is None or isinstance(value, (int, float, str, bool, np.generic))
