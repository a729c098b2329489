"""The runner: one run, --compare (with --resume), --test-dataset, --distribute.

A tiny lab (three Gaussian blobs, a dense classifier) keeps these fast; the labs'
own tests run the same runner on real lessons.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from common import cli, experiment
from common.data import Splits
from common.training import evaluate_classifier


def load_blobs(args):
    rng = np.random.default_rng(args.seed)
    y = np.arange(300) % 3
    x = (rng.normal(size=(300, 4)) + 2.0 * y[:, None]).astype("float32")
    parts = np.split(np.arange(300), [200, 250])
    arrays = [array[index] for index in parts for array in (x, y)]
    return Splits("blobs", "three Gaussian blobs", *arrays, class_names=list("abc"))


def build_dense(args, splits):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(args.width, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs, name=f"dense_{args.arch}")
    model.compile(
        keras.optimizers.Adam(args.learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def evaluate(model, splits, run, args):
    figures, _, _ = evaluate_classifier(
        model, run, splits.x_test, splits.y_test, splits.class_names, "blobs"
    )
    return figures


class StopOnce(keras.callbacks.Callback):
    """Ctrl-C in the middle of the first fit of variant 'wide' (once)."""

    fired = False

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1 and not StopOnce.fired:
            StopOnce.fired = True
            raise KeyboardInterrupt


def interrupt_wide(args, splits, run):
    return {"callbacks": [StopOnce()]} if args.arch == "wide" else {}


def make_lab(**overrides):
    settings = dict(
        name="lab_blobs",
        description="test lab",
        hyperparameters={"epochs": 4, "batch_size": 32, "learning_rate": 0.01},
        architectures={"narrow": None, "wide": None, "deep": None},
        default_arch="narrow",
        datasets="blobs",
        default_dataset="blobs",
        load_data=load_blobs,
        build=build_dense,
        evaluate=evaluate,
        flags={"width": (int, "hidden units", 8)},
        variants=lambda args: {
            "narrow": {"arch": "narrow", "width": 4},
            "wide": {"arch": "wide", "width": 32},
            "deep": {"arch": "deep", "width": 16},
        },
    )
    settings.update(overrides)
    return experiment.Lab(**settings)


def read(path):
    return json.loads(path.read_text())


def test_one_run_writes_the_contract(tmp_path):
    out = tmp_path / "run"
    metrics = experiment.run(make_lab(), ["--out", str(out), "--seed", "2"])
    for name in (
        "config.json",
        "history.csv",
        "history.json",
        "metrics.json",
        "model.keras",
        "report.md",
        "plots/learning_curves.png",
        "predictions.npz",
    ):
        assert (out / name).is_file(), name
    saved = read(out / "metrics.json")
    assert saved["status"] in ("completed", "early_stopped")
    assert saved["test_accuracy"] == metrics["test_accuracy"] > 0.6
    config = read(out / "config.json")
    assert config["data"]["num_train"] == 200 and config["seed"] == 2


def test_compare_writes_sub_runs_table_and_flat_metrics(tmp_path):
    out = tmp_path / "compare"
    metrics = experiment.run(make_lab(), ["--compare", "--out", str(out)])
    rows = read(out / "comparison.json")["rows"]
    assert [row["variant"] for row in rows] == ["narrow", "wide", "deep"]
    for variant, width in (("narrow", 4), ("wide", 32), ("deep", 16)):
        sub = read(out / variant / "config.json")
        assert sub["args"]["width"] == width and "--compare" not in sub["argv"]
        assert sub["argv"][-4:] == ["--arch", variant, "--width", str(width)]
        assert (
            metrics[f"{variant}_test_accuracy"]
            == read(out / variant / "metrics.json")["test_accuracy"]
        )
    best = metrics["best_variant"]
    assert metrics["test_accuracy"] == max(
        metrics[f"{name}_test_accuracy"] for name in ("narrow", "wide", "deep")
    )
    assert metrics[f"{best}_test_accuracy"] == metrics["test_accuracy"]
    assert metrics["status"] == "completed"
    for name in (
        "comparison.md",
        "history.csv",
        "model.keras",
        "plots/comparison.png",
        "plots/learning_curves.png",
    ):
        assert (out / name).is_file(), name
    assert {row["variant"] for row in read(out / "history.json")} == {
        "narrow",
        "wide",
        "deep",
    }


def test_an_interrupted_comparison_resumes_its_unfinished_variants(tmp_path):
    out = tmp_path / "compare"
    lab = make_lab(fit_kwargs=interrupt_wide)
    StopOnce.fired = False
    code = cli.run(
        lambda argv: experiment.run(lab, argv),
        ["--compare", "--epochs", "3", "--patience", "9", "--out", str(out)],
    )
    assert code == 130
    assert read(out / "metrics.json")["status"] == "interrupted"
    assert read(out / "narrow" / "metrics.json")["status"] == "completed"
    assert read(out / "wide" / "metrics.json")["status"] == "interrupted"
    assert not (out / "deep").exists()
    narrow_before = (out / "narrow" / "history.json").read_text()
    metrics = experiment.run(lab, ["--resume", str(out)])
    assert metrics["status"] == "completed"
    assert (out / "narrow" / "history.json").read_text() == narrow_before  # kept
    epochs = [row["epoch"] for row in read(out / "wide" / "history.json")]
    assert epochs == [1, 2, 3]  # resumed after its checkpoint: no gap, no repeat
    assert read(out / "deep" / "metrics.json")["status"] == "completed"


def draw_points(model, splits, args, epoch, logs, path):
    """A lab's snapshot: the model's class scores on the test points as a picture."""
    from PIL import Image

    scores = model.predict(splits.x_test[:32], verbose=0)
    Image.fromarray((255 * scores).astype("uint8")).resize((48, 96)).save(path)
    assert epoch > 0 or set(logs) == {"val_loss", "val_accuracy"}


def test_lab_flags_per_run_defaults_and_snapshots(tmp_path):
    widths = {"narrow": 4, "wide": 32, "deep": 16}
    lab = make_lab(
        flags={"width": (int, "hidden units; None: per arch")},
        defaults=lambda args: {"width": widths[args.arch]},
        snapshot=draw_points,
        variants=None,
    )
    out = tmp_path / "compare"
    argv = ["--compare", "--epochs", "3", "--snapshot-every", "2", "--out", str(out)]
    experiment.run(lab, argv)
    assert read(out / "config.json")["args"]["width"] is None  # parent: untouched
    for arch, width in widths.items():
        config = read(out / arch / "config.json")
        assert config["hyperparameters"] == {"width": width}
        assert config["untrained"]["val_accuracy"] < 1.0  # before any training
        names = sorted(path.name for path in (out / arch / "samples").iterdir())
        assert names == ["epoch_000.png", "epoch_002.png", "epoch_003.png"]
        assert (out / arch / "plots" / "progress.png").is_file()
        assert "plots/progress.gif" in (out / arch / "report.md").read_text()
    widths["narrow"] = 0  # a flag given on the command line wins over defaults
    run = experiment.run(
        lab, ["--width", "5", "--epochs", "1", "--out", str(tmp_path / "one")]
    )
    assert run["params"] == 4 * 5 + 5 + 5 * 3 + 3


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_patience_left_at_none_turns_early_stopping_off(tmp_path):
    def build_frozen(args, splits):  # the validation loss never changes
        model = build_dense(args, splits)
        model.trainable = False
        return model

    hyperparameters = {"epochs": 6, "patience": None}
    lab = make_lab(hyperparameters=hyperparameters, build=build_frozen)
    off = experiment.run(lab, ["--out", str(tmp_path / "off")])
    on = experiment.run(lab, ["--patience", "1", "--out", str(tmp_path / "on")])
    assert (off["status"], off["epochs_run"]) == ("completed", 6)
    assert on["status"] == "early_stopped" and on["epochs_run"] < 6


def test_the_test_dataset_must_differ_from_the_training_one(tmp_path, capsys):
    code = cli.run(
        lambda argv: experiment.run(make_lab(), argv),
        ["--test-dataset", "blobs", "--out", str(tmp_path / "r")],
    )
    assert code == 1 and "overlap" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_distribute_on_torch_says_what_to_do(tmp_path, capsys):
    code = cli.run(
        lambda argv: experiment.run(make_lab(), argv),
        ["--distribute", "data-parallel", "--out", str(tmp_path / "r")],
    )
    message = " ".join(capsys.readouterr().err.split())
    assert (
        code == 1
        and "JAX backend only" in message
        and "DistributedDataParallel" in message
    )


def test_jax_data_parallel_splits_the_batch_and_keeps_the_loss_curve(run_lab, tmp_path):
    two_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    argv = ["--arch", "mlp", "--quick", "--seed", "1"]
    results = {}
    for mode in ("none", "data-parallel"):
        out = tmp_path / mode
        code, output, metrics = run_lab(
            "lab1_cnn",
            [*argv, "--distribute", mode, "--out", out],
            "jax",
            env=two_devices,
        )
        assert code == 0, output
        results[mode] = read(out / "history.json")
    config = read(tmp_path / "data-parallel" / "config.json")
    assert len(config["devices"]) == 2
    for single, parallel in zip(results["none"], results["data-parallel"]):
        assert parallel["loss"] == pytest.approx(single["loss"], rel=1e-4, abs=1e-5)
        assert parallel["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)


def test_jax_data_parallel_puts_half_of_each_batch_on_each_device():
    script = (
        "import keras, numpy as np\n"
        "devices = keras.distribution.list_devices()\n"
        "parallel = keras.distribution.DataParallel(devices=devices)\n"
        "layout = parallel.get_data_layout((8, 3))\n"
        "zeros = np.zeros((8, 3), 'float32')\n"
        "x = keras.distribution.distribute_tensor(zeros, layout)\n"
        "shapes = {shard.data.shape for shard in x.addressable_shards}\n"
        "print(len(devices), len(x.sharding.device_set), sorted(shapes))\n"
    )
    env = {
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        text=True,
        capture_output=True,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["2", "2"]
    assert "(4, 3)" in result.stdout
