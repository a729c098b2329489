"""Lab 0: cos(x) with an MLP, the Sobel filter fixed and learned; bad input;
--quick of both tasks on TensorFlow and JAX (one subprocess per backend)."""

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from common import cli, experiment
from common.runs import load_model
from labs import lab0_basics
from tests.conftest import ROOT

RUN_FILES = (
    "config.json",
    "history.csv",
    "history.json",
    "metrics.json",
    "model.keras",
    "report.md",
    "snapshots.json",
    "plots/learning_curves.png",
)


def run(tmp_path, *flags, name="run"):
    out = tmp_path / name
    return out, lab0_basics.main([*flags, "--out", str(out)])


def refigure(task, model_path):
    """The run's test figure, recomputed from its saved model on the same --quick
    test split: test_mse_inside (cosine) or test_mse (sobel)."""
    args = experiment.parse_args(lab0_basics.LAB, ["--task", task, "--quick"])
    splits = experiment.load_splits(lab0_basics.LAB, args)
    predictions = load_model(model_path).predict(splits.x_test, verbose=0)
    errors = (predictions - splits.y_test) ** 2
    x = splits.x_test.reshape(len(errors), -1)[:, 0]
    inside = (x >= -math.pi) & (x <= math.pi) if task == "cosine" else np.isfinite(x)
    return float(errors[inside].mean())


def check_run(out, metrics, plots):
    for name in (*RUN_FILES, *(f"plots/{plot}.png" for plot in plots)):
        assert (out / name).is_file(), name
    for plot in plots:
        assert (out / "plots" / f"{plot}.png").stat().st_size > 20_000, plot
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] in experiment.FINISHED and saved["train_seconds"] > 0
    assert saved == json.loads(json.dumps(metrics))  # what main returned is saved
    return saved


# --- cosine ------------------------------------------------------------------------
def test_cosine_quick_run_writes_its_figures_and_reloads(tmp_path):
    out, metrics = run(tmp_path, "--quick")
    saved = check_run(out, metrics, ["cosine_fit"])
    assert saved["task"] == "cosine" and saved["params"] == 2 * 64 + 65 * 64 + 65
    assert 0 < saved["test_mse_inside"] < 10 and 0 < saved["test_mse_outside"] < 50
    snapshots = json.loads((out / "snapshots.json").read_text())
    assert [row["epoch"] for row in snapshots] == [0, 1, 2]
    assert all(len(row["value"]) == 400 for row in snapshots)
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "cosine" and config["dataset"] == "cosine"
    assert config["data"]["num_test"] == 128 and config["data"]["embedded"]
    recomputed = refigure("cosine", out / "model.keras")
    assert recomputed == pytest.approx(saved["test_mse_inside"], rel=1e-4)
    report = " ".join((out / "report.md").read_text().split())
    assert "test_mse_inside" in report and "plots/cosine_fit.png" in report


def test_cosine_interpolates_but_does_not_extrapolate(tmp_path):
    _, metrics = run(tmp_path, "--epochs", "6")
    assert metrics["test_mse_inside"] < 0.01
    assert metrics["test_mse_outside"] > 0.2
    assert metrics["test_mse_outside"] > 30 * metrics["test_mse_inside"]


def test_cosine_test_set_is_half_inside_half_just_outside():
    splits = lab0_basics.cosine_splits((0.0, 2.0), seed=3)
    x = splits.x_test[:, 0]
    inside = (x >= 0) & (x <= 2)
    assert inside.sum() == 1000 and len(x) == 2000
    assert x.min() >= -1.0 and x.max() <= 3.0  # bands as wide as half the interval
    assert (splits.x_train >= 0).all() and (splits.x_train <= 2).all()
    np.testing.assert_allclose(splits.y_test, np.cos(splits.x_test))
    again = lab0_basics.cosine_splits((0.0, 2.0), seed=3)
    np.testing.assert_array_equal(again.x_train, splits.x_train)


def test_compare_trains_one_variant_per_activation(tmp_path):
    out, metrics = run(tmp_path, "--compare", "--quick", "--epochs", "1")
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [row["variant"] for row in rows] == list(lab0_basics.ACTIVATIONS)
    assert metrics["best_variant"] in lab0_basics.ACTIVATIONS
    for activation in lab0_basics.ACTIVATIONS:
        assert (out / activation / "plots" / "cosine_fit.png").is_file()
        config = json.loads((out / activation / "config.json").read_text())
        assert config["args"]["activation"] == activation
    assert (out / "plots" / "comparison.png").is_file()


# --- sobel -------------------------------------------------------------------------
def test_sobel_quick_run_shrinks_the_kernel_distance_and_reloads(tmp_path):
    out, metrics = run(tmp_path, "--task", "sobel", "--quick")
    saved = check_run(out, metrics, ["sobel_filters", "learned_kernels"])
    assert saved["task"] == "sobel" and saved["params"] == 18
    assert saved["kernel_error"] < 0.95 * saved["initial_kernel_error"]
    snapshots = json.loads((out / "snapshots.json").read_text())
    assert [row["epoch"] for row in snapshots] == [0, 1, 2]
    model = load_model(out / "model.keras")
    np.testing.assert_allclose(
        np.linalg.norm(lab0_basics.kernel_of(model) - lab0_basics.SOBEL_KERNEL),
        saved["kernel_error"],
        rtol=1e-5,
    )
    recomputed = refigure("sobel", out / "model.keras")
    assert recomputed == pytest.approx(saved["test_mse"], rel=1e-4)


def test_the_trainable_convolution_becomes_the_sobel_kernel(tmp_path):
    _, metrics = run(
        tmp_path, "--task", "sobel", "--epochs", "20", "--learning-rate", "0.1"
    )
    assert metrics["initial_kernel_error"] > 3.0
    assert metrics["kernel_error"] < 1.5
    assert metrics["test_mse"] < 0.01


def test_sobel_kernel_reproduces_the_targets_exactly():
    """The targets are the workbook's SobelEdges; a Conv2D holding SOBEL_KERNEL
    gives the same output, so the learned kernel can reach distance 0."""
    splits = lab0_basics.photograph_splits(seed=1)
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == 520
    model = lab0_basics.build_learned_sobel()
    model.get_layer("kernel").set_weights([lab0_basics.SOBEL_KERNEL])
    np.testing.assert_allclose(
        model.predict(splits.x_test, verbose=0), splits.y_test, atol=1e-5
    )


# --- the command line --------------------------------------------------------------
def test_task_is_another_name_for_arch_and_picks_its_data():
    args = experiment.parse_args(lab0_basics.LAB, ["--task", "sobel"])
    assert (args.arch, args.dataset) == ("sobel", "sample_images")
    args = experiment.parse_args(lab0_basics.LAB, ["--arch", "sobel"])
    assert (args.arch, args.dataset) == ("sobel", "sample_images")
    args = experiment.parse_args(lab0_basics.LAB, ["--interval", "-1", "2.5"])
    assert (args.arch, args.dataset, args.interval) == ("cosine", "cosine", [-1, 2.5])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "edges"], "invalid choice"),
        (["--interval", "2", "1"], "LOW < HIGH"),
        (["--interval", "0", "inf"], "LOW < HIGH"),
        (["--interval", "1"], "expected 2 arguments"),
        (["--activation", "sin"], "invalid choice"),
        (["--dataset", "mnist"], "uses its own data"),
        (["--task", "sobel", "--dataset", "cosine"], "uses its own data"),
        (["--test-dataset", "cosine"], "uses its own data"),
        (["--task", "sobel", "--compare"], "nothing to compare"),
    ],
)
def test_usage_errors_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as error:
        experiment.parse_args(lab0_basics.LAB, flags)
    assert error.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_a_non_empty_out_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.json").write_text('{"keep": true}')
    code = cli.run(lab0_basics.main, ["--task", "sobel", "--quick", "--out", str(out)])
    message = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "already holds files" in message and "Traceback" not in message
    assert json.loads((out / "metrics.json").read_text()) == {"keep": True}


def test_snapshots_append_on_resume_instead_of_starting_again(tmp_path):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    path = tmp_path / "snapshots.json"
    first = lab0_basics.snapshots(path, lambda model: model.get_weights()[0], [2])
    first.set_model(model)
    first.set_params({"epochs": 3})
    first.on_train_begin()
    for epoch in range(3):
        first.on_epoch_end(epoch)
    resumed = lab0_basics.snapshots(path, lambda model: model.get_weights()[0])
    resumed.set_model(model)
    resumed.set_params({"epochs": 5})
    resumed.on_train_begin()
    resumed.on_epoch_end(3)
    rows = json.loads(path.read_text())
    assert [row["epoch"] for row in rows] == [0, 2, 4]


# --- TensorFlow and JAX: both tasks in one subprocess per backend ------------------
BOTH_TASKS = textwrap.dedent(
    """
    import json, sys
    from labs import lab0_basics
    from tests.test_lab0_basics import refigure

    out, result = sys.argv[1], {}
    for task in ("cosine", "sobel"):
        argv = ["--task", task, "--quick", "--out", f"{out}/{task}"]
        result[task] = lab0_basics.main(argv)
        result[task]["recomputed"] = refigure(task, f"{out}/{task}/model.keras")
    print("RESULT " + json.dumps(result))
    """
)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_both_tasks_quick_on_another_backend(tmp_path, backend):
    result = subprocess.run(
        [sys.executable, "-c", BOTH_TASKS, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "oneDNN" not in output and "absl" not in output
    line = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    metrics = json.loads(line[-1][7:])
    cosine, sobel = metrics["cosine"], metrics["sobel"]
    assert (
        cosine["status"] in experiment.FINISHED
        and sobel["status"] in experiment.FINISHED
    )
    assert 0 < cosine["test_mse_inside"] < 10 and 0 < cosine["test_mse_outside"] < 50
    assert sobel["kernel_error"] < 0.95 * sobel["initial_kernel_error"]
    assert cosine["recomputed"] == pytest.approx(cosine["test_mse_inside"], rel=1e-4)
    assert sobel["recomputed"] == pytest.approx(sobel["test_mse"], rel=1e-4)
    config = json.loads((tmp_path / "sobel" / "config.json").read_text())
    assert config["backend"] == backend
