"""Lab 4: the two phases change what they should, runs reuse weights, bad inputs fail.

Every run here is tiny (16 training images, 32x32, 1 epoch per phase).
"""

import json

import keras
import numpy as np
import pytest

from common import cli, transfer
from common.gradients import value_and_input_gradients
from common.runs import load_model
from labs import lab4_finetune as lab

TINY = ["--quick", "--train-images", "16", "--batch-size", "16", "--epochs", "2"]


def snapshot(model):
    """Every model variable by path (the dropout seed state left out)."""
    return {
        variable.path: keras.ops.convert_to_numpy(variable).copy()
        for variable in model.weights
        if "seed_generator" not in variable.path
    }


def changed(before, after):
    return {path for path in before if not np.array_equal(before[path], after[path])}


class Spy:
    """Records the models a run builds and their weights at the phase boundary."""

    def __init__(self, monkeypatch):
        self.built, self.initial, self.after_phase1, self.unfrozen = [], [], None, None
        build, unfreeze = transfer.build_transfer_model, transfer.unfreeze_top

        def spy_build(*args, **kwargs):
            model, base, notice = build(*args, **kwargs)
            self.built.append((model, base))
            self.initial.append(snapshot(model))
            return model, base, notice

        def spy_unfreeze(base, count, unit="layers"):
            self.after_phase1 = snapshot(self.built[-1][0])
            self.unfrozen = unfreeze(base, count, unit)
            return self.unfrozen

        monkeypatch.setattr(transfer, "build_transfer_model", spy_build)
        monkeypatch.setattr(transfer, "unfreeze_top", spy_unfreeze)


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab4") / "finetune"
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = Spy(monkeypatch)
        metrics = lab.main(
            [
                *TINY,
                "--mode",
                "finetune",
                "--weights",
                "none",
                "--unfreeze",
                "1",
                "--fine-tune-lr",
                "3e-5",
                "--out",
                str(out),
            ]
        )
    model, base = spy.built[-1]
    return {
        "out": out,
        "metrics": metrics,
        "spy": spy,
        "model": model,
        "base": base,
        "final": snapshot(model),
    }


@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "pictures"
    for label, name in enumerate(("cat", "dog", "fox")):
        (root / name).mkdir(parents=True)
        for index in range(6):
            pixels = rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
            pixels[..., label] = 255
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


# ---------------------------------------------------------------- two phases
def test_phase1_leaves_the_backbone_unchanged_and_trains_the_head(finetune_run):
    spy = finetune_run["spy"]
    moved = changed(spy.initial[-1], spy.after_phase1)
    assert moved == {"predictions/kernel", "predictions/bias"}


def test_phase2_changes_exactly_the_unfrozen_layers(finetune_run):
    spy, base = finetune_run["spy"], finetune_run["base"]
    assert spy.unfrozen == [
        "conv5_block3_1_conv",
        "conv5_block3_2_conv",
        "conv5_block3_3_conv",
    ]
    intended = {
        variable.path
        for name in spy.unfrozen
        for variable in base.get_layer(name).weights
    }
    intended |= {"predictions/kernel", "predictions/bias"}
    assert changed(spy.after_phase1, finetune_run["final"]) == intended
    statistics = [
        path
        for path in spy.after_phase1
        if path.endswith(("moving_mean", "moving_variance"))
    ]
    batchnorms = [
        layer
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(statistics) == 2 * len(batchnorms) == 2 * 49
    for path in statistics:
        np.testing.assert_array_equal(
            spy.after_phase1[path], finetune_run["final"][path]
        )


def test_history_spans_both_phases_with_the_asked_learning_rates(finetune_run):
    out = finetune_run["out"]
    rows = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[0]["learning_rate"] == pytest.approx(1e-3)
    assert rows[1]["learning_rate"] == pytest.approx(3e-5)
    assert finetune_run["model"].optimizer.learning_rate.numpy() == pytest.approx(3e-5)
    csv_lines = (out / "history.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 3
    metrics = finetune_run["metrics"]
    assert metrics["fine_tuning_starts_epoch"] == 2 and metrics["epochs_run"] == 2
    phases = json.loads((out / "parameters.json").read_text())
    assert [phase["phase"] for phase in phases] == [
        "1: head (frozen base)",
        "2: fine-tune",
    ]
    assert phases[0]["trainable"] == 2048 * 10 + 10
    assert phases[1]["trainable"] > phases[0]["trainable"]
    assert phases[1]["total"] == phases[0]["total"]


def test_finetune_run_directory(finetune_run):
    out, metrics = finetune_run["out"], finetune_run["metrics"]
    for name in (
        "config.json",
        "history.csv",
        "history.json",
        "metrics.json",
        "model.keras",
        "base.weights.h5",
        "parameters.json",
        "report.md",
        "classification_report.txt",
        "plots/learning_curves.png",
        "plots/confusion_matrix.png",
        "plots/gradcam.png",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] in ("completed", "early_stopped")
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and saved["mode"] == "finetune"
    assert saved["params"] == finetune_run["model"].count_params()
    assert metrics["unfrozen_layers"] == 3
    report = (out / "report.md").read_text()
    assert "| phase | trainable params" in report and "2: fine-tune" in report
    assert "RANDOM" in report
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["mode"] == "finetune" and config["data"]["num_train"] == 16
    reloaded = load_model(out / "model.keras")
    assert reloaded.count_params() == saved["params"]
    images = np.random.default_rng(1).random((4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0),
        finetune_run["model"].predict(images, verbose=0),
        atol=1e-5,
    )


# ------------------------------------------------- reuse, modes and datasets
def test_base_weights_of_one_run_load_into_another(
    finetune_run, image_folder, tmp_path, monkeypatch
):
    """--weights PATH from a finetune run, on another dataset (3 classes, RGB):
    the head-mode run starts from, and keeps, the fine-tuned backbone."""
    spy = Spy(monkeypatch)
    weights = finetune_run["out"] / "base.weights.h5"
    metrics = lab.main(
        [
            *TINY,
            "--mode",
            "head",
            "--weights",
            str(weights),
            "--dataset",
            f"folder:{image_folder}",
            "--image-size",
            "32",
            "--out",
            str(tmp_path / "reuse"),
        ]
    )
    trained = {
        variable.path: keras.ops.convert_to_numpy(variable)
        for variable in finetune_run["base"].weights
    }
    _, base = spy.built[-1]
    assert len(trained) == len(base.weights)
    for variable in base.weights:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), trained[variable.path]
        )
    assert metrics["mode"] == "head" and metrics["skipped_files"] == 1
    config = json.loads((tmp_path / "reuse" / "config.json").read_text())
    assert str(weights) in config["weights_notice"]
    assert config["data"]["num_classes"] == 3
    assert (tmp_path / "reuse" / "plots" / "gradcam.png").is_file()


def test_scratch_trains_the_backbone_and_its_batchnorm(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    metrics = lab.main(
        [
            *TINY,
            "--mode",
            "scratch",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "scratch"),
        ]
    )
    model, _ = spy.built[-1]
    moved = changed(spy.initial[-1], snapshot(model))
    assert "conv1_conv/kernel" in moved and "post_bn/moving_mean" in moved
    assert metrics["mode"] == "scratch" and metrics["epochs_run"] == 1
    assert spy.unfrozen is None
    assert "not used" in (tmp_path / "scratch" / "report.md").read_text()


def test_tf_flowers_streams_through_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=16):
        metrics = lab.main(
            [
                "--quick",
                "--dataset",
                "tf_flowers",
                "--mode",
                "head",
                "--weights",
                "none",
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--batch-size",
                "8",
                "--out",
                str(tmp_path / "f"),
            ]
        )
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    assert config["data"]["num_classes"] == 5
    assert config["data"]["image_shape"] == [32, 32, 3]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (tmp_path / "f" / "plots" / "confusion_matrix.png").is_file()


def test_tf_flowers_offline_is_a_clear_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorflow_datasets")
    from common import data

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "network_reachable", lambda *a, **k: False)
    code = cli.run(
        lab.main, ["--quick", "--dataset", "tf_flowers", "--out", str(tmp_path / "run")]
    )
    message = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "--dataset digits" in message and "TFDS_DATA_DIR" in message
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ grad-CAM
def test_gradient_helper_and_layer_choice(finetune_run):
    values = keras.ops.convert_to_tensor(np.array([[1.0, -2.0, 3.0]], "float32"))
    value, (gradient,) = value_and_input_gradients(
        lambda x: keras.ops.sum(x * x), [values], create_graph=False
    )  # the helper grad-CAM differentiates with
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gradient), [[2.0, -4.0, 6.0]])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(value), 14.0)
    base = finetune_run["base"]
    assert lab.RESNET50V2_COUNTS == {
        "blocks": len(transfer.residual_blocks(base)),
        "layers": len(transfer.weighted_layers(base)),
    }
    # at 32x32 the last block outputs are 1x1: the heat map uses a 4x4 one
    assert lab.gradcam_layer(base) == "conv3_block3_out"
    images = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    maps = lab.gradcam(finetune_run["model"], base, images, [0, 3], "conv3_block3_out")
    assert maps.shape == (2, 4, 4)
    assert np.all((maps >= 0) & (maps <= 1))


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "arguments, words",
    [
        (["--mode", "bad"], "invalid choice"),
        (["--unfreeze", "-1"], "must be at least 0"),
        (["--unfreeze", "17"], "16 blocks"),
        (["--unfreeze", "0"], "--mode head"),
        (["--epochs", "2", "--head-epochs", "2"], "at least one fine-tuning epoch"),
        (["--image-size", "16"], "at least 32"),
        (["--resume", "runs/somewhere"], "cannot --resume"),
    ],
)
def test_usage_errors_exit_2(arguments, words, capsys):
    with pytest.raises(SystemExit) as error:
        lab.main(arguments)
    assert error.value.code == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["--weights", "missing.h5"], "no such file"),
        (["--dataset", "nowhere"], "unknown dataset"),
    ],
)
def test_runtime_errors_exit_1_before_any_run_directory(
    arguments, words, tmp_path, capsys
):
    code = cli.run(lab.main, [*arguments, "--out", str(tmp_path / "run")])
    assert code == 1 and words in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compare_runs_all_three_modes(tmp_path):
    out = tmp_path / "compare"
    metrics = lab.main([*TINY, "--compare", "--weights", "none", "--out", str(out)])
    for mode in lab.MODES:
        assert (out / mode / "metrics.json").is_file()
        config = json.loads((out / mode / "config.json").read_text())
        assert config["args"]["mode"] == mode and f"--mode {mode}" in config["command"]
        assert f"{mode}_test_accuracy" in metrics
    assert metrics["best_variant"] in lab.MODES
    assert (out / "plots" / "learning_curves.png").is_file()
    assert (out / "plots" / "comparison.png").is_file()
    assert json.loads((out / "config.json").read_text())["args"]["mode"] == "compare"
    rows = json.loads((out / "history.json").read_text())
    assert {row["variant"] for row in rows} == set(lab.MODES)
    assert all("val_loss" in row for row in rows)
    report = (out / "report.md").read_text()
    assert "What each mode trained" in report and "[head/](head/report.md)" in report


# ------------------------------------------------------------ other backends
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_quick_finetune_on_another_backend(run_lab, backend, tmp_path):
    """Both phases and the backend's grad-CAM gradient, in a subprocess."""
    out = tmp_path / backend
    code, output, metrics = run_lab(
        "lab4_finetune", [*TINY, "--weights", "none", "--out", out], backend
    )
    assert code == 0, output[-3000:]
    assert metrics["status"] in ("completed", "early_stopped")
    assert metrics["fine_tuning_starts_epoch"] == 2 and metrics["epochs_run"] == 2
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert json.loads((out / "config.json").read_text())["backend"] == backend
    assert (out / "plots" / "gradcam.png").stat().st_size > 5000
    for noise in ("absl", "oneDNN", "cuda", "Traceback"):
        assert noise not in output
