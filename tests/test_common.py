"""Unit tests of common/: cli, run directory, callbacks (hand-driven), data, fit."""

import argparse
import json
import sys
import time

import keras
import numpy as np
import pytest

from common import cli, data, plots, speedups, training  # noqa: F401
from common.callbacks import HistoryRecorder, early_stopping
from common.runs import Run, _prepare_directory, seed_everything
from common.training import fit


# --- cli ---------------------------------------------------------------------
@pytest.mark.parametrize("text", ["0", "-3", "abc", "1.5"])
def test_positive_int_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.positive_int(text)


@pytest.mark.parametrize("text", ["0", "-1e-3", "nan", "inf", "x"])
def test_positive_float_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.positive_float(text)


def test_run_turns_errors_into_exit_codes(capsys):
    def fails(argv):
        raise cli.WorkbookError("the data is missing. Use --dataset digits.")

    def crashes(argv):
        raise RuntimeError("boom")

    def interrupted(argv):
        raise cli.RunInterrupted("stopped")

    assert cli.run(fails, []) == 1
    err = capsys.readouterr().err
    assert "error: the data is missing. Use --dataset digits." in err
    assert "Traceback" not in err
    assert cli.run(crashes, []) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        cli.run(crashes, ["--debug"])
    assert cli.run(interrupted, []) == 130
    assert cli.run(lambda argv: {"ok": 1}, []) == 0


# --- run directory -----------------------------------------------------------
def _args(out, **extra):
    parser = cli.make_parser("labx", "test", {"a": None}, "a", "digits", "help")
    args = parser.parse_args(["--out", str(out)] if out else [])
    for key, value in extra.items():
        setattr(args, key, value)
    return args


def test_run_create_writes_config_and_refuses_nonempty(tmp_path):
    out = tmp_path / "run"
    run = Run.create("labx", _args(out), ["--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    for key in (
        "lab",
        "arch",
        "dataset",
        "command",
        "args",
        "backend",
        "versions",
        "seed",
        "host",
        "started",
    ):
        assert key in config
    assert config["backend"] == keras.backend.backend()
    # the runner installs them (torch, tested Keras); config.json says which
    assert config["keras_fixes"] == ("installed" if speedups.installed() else "off")
    assert config["command"] == f"python -m labs.labx --out {out}"
    assert (out / "plots").is_dir()
    run.write_metrics({"status": "completed", "loss": float("nan"), "x": np.float32(2)})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"status": "completed", "loss": None, "x": 2.0}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    with pytest.raises(cli.WorkbookError, match="already holds files"):
        Run.create("labx", _args(out), [])
    assert json.loads((out / "config.json").read_text()) == config


def test_default_run_directory_is_timestamped_and_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _prepare_directory(None, "labx", "a", "npz:/x/y.npz")
    second = _prepare_directory(None, "labx", "a", "npz:/x/y.npz")
    assert first.parent.resolve() == tmp_path / "runs" / "labx"
    assert first != second and first.name.endswith("-a-npz-x-y.npz")


def test_unwritable_out_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(cli.WorkbookError, match="cannot write the run directory"):
        _prepare_directory(blocker / "run", "labx", "a", "digits")
    with pytest.raises(cli.WorkbookError, match="is a file"):
        _prepare_directory(blocker, "labx", "a", "digits")


# --- callbacks, driven by hand ------------------------------------------------
def test_history_recorder_writes_every_epoch_and_resets(tmp_path):
    (tmp_path / "plots").mkdir()
    recorder = HistoryRecorder(tmp_path, title="t")
    recorder.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    recorder.on_train_begin()
    for epoch, loss in enumerate([1.0, 0.5]):
        recorder.on_epoch_begin(epoch)
        recorder.on_epoch_end(epoch, logs={"loss": loss, "val_loss": loss + 0.1})
        rows = (tmp_path / "history.csv").read_text().strip().splitlines()
        assert len(rows) == epoch + 2
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["val_loss"] == pytest.approx(0.6)
    assert "epoch_seconds" in history[0]
    recorder.on_train_end()
    assert (tmp_path / "plots" / "learning_curves.png").stat().st_size > 1000
    recorder.on_train_begin()
    assert recorder.rows == []


def test_history_recorder_continues_initial_rows(tmp_path):
    recorder = HistoryRecorder(tmp_path, initial_rows=[{"epoch": 1, "loss": 2.0}])
    recorder.on_train_begin()
    recorder.on_epoch_begin(0)
    recorder.on_epoch_end(0, logs={"loss": 1.0})
    assert [row["epoch"] for row in recorder.rows] == [1, 2]


def test_early_stopping_restores_best_and_records_epochs():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    stopper = early_stopping(patience=2)
    stopper.set_model(model)
    stopper.on_train_begin()
    model.stop_training = False
    best_weights = None
    for epoch, val_loss in enumerate([1.0, 0.5, 0.7, 0.8, 0.9]):
        if epoch == 1:
            best_weights = [w.copy() for w in model.get_weights()]
        stopper.on_epoch_end(epoch, logs={"val_loss": val_loss})
        model.set_weights([w + 1.0 for w in model.get_weights()])
        if model.stop_training:
            break
    assert stopper.restore_best_weights
    assert (stopper.best_epoch, stopper.stopped_epoch) == (1, 3)
    stopper.on_train_end()
    for restored, saved in zip(model.get_weights(), best_weights):
        np.testing.assert_allclose(restored, saved)
    stopper.on_train_begin()
    assert stopper.stopped_epoch == 0 and stopper.best is None


# --- fit: completed, diverged, interrupted ------------------------------------
def _tiny_run(tmp_path):
    return Run.create("labx", _args(tmp_path / "run"), [])


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_fit_completes_and_reports(tmp_path):
    seed_everything(0)
    run = _tiny_run(tmp_path)
    x = np.random.rand(64, 3).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    result = fit(
        _tiny_model(),
        run,
        x,
        y,
        validation_data=(x, y),
        epochs=3,
        batch_size=16,
        patience=5,
    )
    assert result["status"] == "completed" and result["epochs_run"] == 3
    assert result["params"] == 4 and 1 <= result["best_epoch"] <= 3
    assert (run.path / "plots" / "learning_curves.png").exists()


def test_fit_diverged_keeps_history_and_says_why(tmp_path):
    run = _tiny_run(tmp_path)
    x = np.random.rand(32, 3).astype("float32")
    y = np.full((32, 1), np.nan, dtype="float32")
    with pytest.raises(cli.WorkbookError, match="lower --learning-rate"):
        fit(_tiny_model(), run, x, y, validation_data=(x, y), epochs=5, batch_size=8)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert (run.path / "history.csv").exists()


class _CtrlC(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_fit_interrupted_keeps_history_model_and_status(tmp_path):
    run = _tiny_run(tmp_path)
    x = np.random.rand(32, 3).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    with pytest.raises(cli.RunInterrupted):
        fit(
            _tiny_model(),
            run,
            x,
            y,
            validation_data=(x, y),
            epochs=10,
            batch_size=8,
            callbacks=[_CtrlC()],
        )
    assert (
        json.loads((run.path / "metrics.json").read_text())["status"] == "interrupted"
    )
    assert len(json.loads((run.path / "history.json").read_text())) == 2
    assert (run.path / "model.keras").exists()
    assert (run.path / "plots" / "learning_curves.png").exists()


# --- data --------------------------------------------------------------------
def test_digits_splits_are_disjoint_and_scaled():
    images = data.load_images("digits", seed=1)
    assert images.input_shape == (8, 8, 1) and images.num_classes == 10
    assert images.embedded
    total = len(images.x_train) + len(images.x_val) + len(images.x_test)
    assert total == 1797
    assert 0.0 <= images.x_train.min() and images.x_train.max() <= 1.0
    train = {row.tobytes() for row in images.x_train}
    test = {row.tobytes() for row in images.x_test}
    assert len(train & test) < 5  # digits has a few exact duplicate images
    quick = data.load_images("digits").take({"train": 100, "test": 30}, seed=0)
    assert (len(quick.x_train), len(quick.y_train), len(quick.x_test)) == (100, 100, 30)
    assert len(quick.x_val) == len(images.x_val) and quick.notes["quick_subset"]


def test_a_folder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "many", size=8, per_class=1500)
    first = data.load_images(f"folder:{root}")
    calls = []
    monkeypatch.setattr(data, "_decode", lambda file: calls.append(file))
    second = data.load_images(f"folder:{root}")
    assert calls == []  # no per-image Python work the second time
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert len(first.x_train) + len(first.x_val) + len(first.x_test) == 3000


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_loads_mnist_format(tmp_path):
    x = (np.random.rand(50, 28, 28) * 255).astype("uint8")
    y = np.arange(50) % 10
    name = _write_npz(
        tmp_path / "m.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20]
    )
    images = data.load_images(name)
    assert images.input_shape == (28, 28, 1) and images.x_train.max() <= 1.0
    assert len(images.x_train) + len(images.x_val) == 50


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_train": np.zeros((4, 8, 8))}, "lacks the arrays"),
        (
            {
                "x_train": np.zeros((4, 8, 8)),
                "y_train": np.zeros(3),
                "x_test": np.zeros((2, 8, 8)),
                "y_test": np.zeros(2),
            },
            "same, non-zero length",
        ),
        (
            {
                "x_train": np.zeros((4, 8)),
                "y_train": np.zeros(4),
                "x_test": np.zeros((2, 8)),
                "y_test": np.zeros(2),
            },
            "images must be",
        ),
    ],
)
def test_npz_malformed_is_a_clear_error(tmp_path, arrays, message):
    name = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(cli.WorkbookError, match=message):
        data.load_images(name)


def test_npz_missing_or_unreadable(tmp_path):
    with pytest.raises(cli.WorkbookError, match="no .npz file"):
        data.load_images(f"npz:{tmp_path / 'none.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    with pytest.raises(cli.WorkbookError, match="cannot read"):
        data.load_images(f"npz:{tmp_path / 'junk.npz'}")


def make_image_folder(root, mode="L", size=28, per_class=6, classes=("a", "b")):
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = (rng.random((size, size, channels)) * 255).astype("uint8")
            Image.fromarray(pixels.squeeze()).save(root / name / f"{index}.png")
    return root


def test_folder_grayscale_skips_corrupt_files(tmp_path, capsys):
    root = make_image_folder(tmp_path / "imgs")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    (root / "b" / "notes.txt").write_text("ignored: not an image suffix")
    images = data.load_images(f"folder:{root}")
    assert images.input_shape == (28, 28, 1)
    assert images.class_names == ["a", "b"]
    assert images.notes["skipped_files"] == 1
    assert "skipped 1 unreadable" in capsys.readouterr().out
    assert len(images.x_train) + len(images.x_val) + len(images.x_test) == 12


def test_folder_rgb_and_resize(tmp_path):
    root = make_image_folder(tmp_path / "rgb", mode="RGB", size=20)
    images = data.load_images(f"folder:{root}", image_size=16)
    assert images.input_shape == (16, 16, 3)


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(cli.WorkbookError, match="holds no images"):
        data.load_images(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(cli.WorkbookError, match="no folder"):
        data.load_images(f"folder:{tmp_path / 'missing'}")
    root = tmp_path / "allbad"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(cli.WorkbookError, match="could be read"):
        data.load_images(f"folder:{root}")


def test_unknown_dataset_names_the_choices():
    with pytest.raises(cli.WorkbookError, match="digits"):
        data.load_images("imagenet22k")


def test_tfds_offline_fails_fast_with_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "network_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(cli.WorkbookError) as error:
        data.load_images("mnist")
    assert time.perf_counter() - start < 60
    message = str(error.value)
    assert "--dataset digits" in message and "TFDS_DATA_DIR" in message


def test_tfds_loads_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=16):
        images = data.load_images("mnist")
        text_train, _ = data.load_text("imdb_reviews")
    assert images.input_shape == (28, 28, 1) and images.source.startswith("tensorflow")
    assert len(images.x_train) + len(images.x_val) == 16
    assert isinstance(text_train[0][0], str) and set(text_train[1]) <= {0, 1}


def test_adding_problem_is_deterministic_with_known_baseline():
    x, y = data.make_adding(4000, 20, seed=3)
    again, _ = data.make_adding(4000, 20, seed=3)
    np.testing.assert_array_equal(x, again)
    assert x.shape == (4000, 20, 2) and y.shape == (4000,)
    assert np.all(x[:, :, 1].sum(axis=1) == 2)
    marked = (x[:, :, 0] * x[:, :, 1]).sum(axis=1)
    np.testing.assert_allclose(marked, y, rtol=1e-6)
    assert abs(np.var(y) - 1 / 6) < 0.01
    with pytest.raises(ValueError):
        data.make_adding(10, 1, seed=0)


def test_ring_points_sit_on_their_modes():
    points, modes = data.make_ring(1000, seed=0)
    centres = data.ring_modes()
    distance = np.linalg.norm(points - centres[modes], axis=1)
    assert points.shape == (1000, 2) and distance.max() < 0.2
    assert len(set(modes)) == 8


# --- plots ---------------------------------------------------------------------
def test_plots_write_png_files(tmp_path):
    rows = [
        {"epoch": 1, "loss": 1.0, "val_loss": 1.2, "accuracy": 0.5},
        {"epoch": 2, "loss": 0.5, "val_loss": 0.7, "accuracy": 0.8},
    ]
    paths = [
        plots.learning_curves(
            rows, tmp_path / "a.png", "t", best_epoch=2, boundaries=[(1, "phase 2")]
        ),
        plots.confusion_matrix(
            [0, 1, 1], [0, 1, 0], ["x", "y"], tmp_path / "b.png", "t"
        ),
        plots.image_grid(
            np.random.rand(5, 8, 8, 1), list("abcde"), tmp_path / "c.png", "t"
        ),
        plots.bar_chart(["p", "q"], {"mse": [0.1, 0.2]}, tmp_path / "d.png", "t"),
        plots.curves({"p": ([1, 2], [3, 4])}, tmp_path / "e.png", "t", "x", "y"),
    ]
    for path in paths:
        assert path.stat().st_size > 1000


def test_backend_default_is_torch_unless_set():
    import subprocess

    code = "import common, os; print(os.environ['KERAS_BACKEND'])"
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    assert out == "torch"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "KERAS_BACKEND": "jax"},
        check=True,
    ).stdout
    assert out.strip() == "jax"
