"""Lab 2 (SimpleRNN vs LSTM vs GRU): smoke runs, comparison, data and bad input.

Every run here is ``--quick`` (256 training sequences, at most 2 epochs) with
short sequences, so each takes a few seconds on 2 CPU cores.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import cli, experiment
from common.text import pre_pad
from labs import lab2_rnn

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = (
    "config.json",
    "history.csv",
    "history.json",
    "metrics.json",
    "model.keras",
    "report.md",
    "plots/learning_curves.png",
)
RECURRENT_CLASSES = {"simple": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}
OPTIMIZERS = {"1": "Adam", "2": "RMSprop", "3": "Adam"}


def read_json(path):
    return json.loads(Path(path).read_text())


def assert_run_directory(path, extra=()):
    for name in (*RUN_FILES, *extra):
        assert (path / name).is_file(), f"{name} missing from {path}"
    metrics = read_json(path / "metrics.json")
    assert metrics["status"] in ("completed", "early_stopped")
    assert 1 <= metrics["epochs_run"] <= 2
    assert metrics["params"] > 0
    assert metrics["train_seconds"] > 0
    assert metrics["inference_ms_per_sample"] > 0
    with open(path / "history.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == metrics["epochs_run"]
    return metrics


def load_model(path):
    import keras

    return keras.saving.load_model(path / "model.keras")


@pytest.mark.parametrize("cell", list(RECURRENT_CLASSES))
@pytest.mark.parametrize("arch", ["1", "2", "3"])
def test_every_arch_and_cell_trains_on_adding(tmp_path, arch, cell):
    out = tmp_path / "run"
    metrics = lab2_rnn.main(
        [
            "--dataset",
            "adding",
            "--arch",
            arch,
            "--cell",
            cell,
            "--quick",
            "--seq-len",
            "10",
            "--out",
            str(out),
        ]
    )
    assert_run_directory(out, extra=("plots/predictions.png",))
    written = read_json(out / "metrics.json")
    assert written["mse"] == pytest.approx(metrics["mse"])
    assert 0.0 < written["mse"] < 5.0
    assert 0.05 < written["baseline_mse"] < 0.4  # 1/6 on average; 128 test sequences
    model = load_model(out)
    recurrent = [
        layer
        for layer in model.layers
        if type(layer).__name__ in RECURRENT_CLASSES.values()
    ]
    assert {type(layer).__name__ for layer in recurrent} == {RECURRENT_CLASSES[cell]}
    assert len(recurrent) == (2 if arch == "3" else 1)
    assert type(model.optimizer).__name__ == OPTIMIZERS[arch]
    assert model.layers[-1].units == 1
    assert model.layers[-1].get_config()["activation"] == "linear"
    assert model.count_params() == written["params"]
    config = read_json(out / "config.json")
    assert config["args"]["cell"] == cell and config["arch"] == arch


def test_compare_writes_one_sub_run_per_cell_and_the_comparison(tmp_path):
    out = tmp_path / "compare"
    metrics = lab2_rnn.main(
        [
            "--dataset",
            "adding",
            "--compare",
            "--quick",
            "--seq-len",
            "8",
            "--out",
            str(out),
        ]
    )
    for name in (
        "comparison.md",
        "comparison.json",
        "history.csv",
        "history.json",
        "metrics.json",
        "model.keras",
        "report.md",
        "plots/learning_curves.png",
        "plots/comparison.png",
    ):
        assert (out / name).is_file(), name
    table = read_json(out / "comparison.json")
    assert [row["variant"] for row in table["rows"]] == list(RECURRENT_CLASSES)
    assert all(row["mse"] > 0 and row["params"] > 0 for row in table["rows"])
    params = [row["params"] for row in table["rows"]]
    assert params[0] < params[2] < params[1]  # SimpleRNN < GRU < LSTM weights
    with open(out / "history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {row["variant"] for row in rows} == set(RECURRENT_CLASSES)
    assert metrics["best_variant"] in RECURRENT_CLASSES
    assert metrics["mse"] == min(metrics[f"{cell}_mse"] for cell in RECURRENT_CLASSES)
    markdown = (out / "comparison.md").read_text()
    assert "| simple |" in markdown and "| gru |" in markdown
    for cell in RECURRENT_CLASSES:
        assert_run_directory(out / cell, extra=("plots/predictions.png",))
        config = read_json(out / cell / "config.json")
        assert config["args"]["cell"] == cell
        assert "--compare" not in config["argv"]
        assert config["argv"][-2:] == ["--cell", cell]


def test_same_seed_gives_the_same_result(tmp_path):
    argv = [
        "--dataset",
        "adding",
        "--quick",
        "--arch",
        "1",
        "--seq-len",
        "6",
        "--seed",
        "3",
    ]
    first = lab2_rnn.main([*argv, "--out", str(tmp_path / "a")])
    second = lab2_rnn.main([*argv, "--out", str(tmp_path / "b")])
    assert first["mse"] == pytest.approx(second["mse"], rel=1e-5)


def test_digits_are_read_row_by_row_with_a_softmax_head(tmp_path):
    out = tmp_path / "digits"
    lab2_rnn.main(
        ["--dataset", "digits", "--cell", "gru", "--quick", "--out", str(out)]
    )
    metrics = assert_run_directory(
        out, extra=("plots/confusion_matrix.png", "classification_report.txt")
    )
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert 0.0 <= metrics["macro_f1"] <= 1.0
    model = load_model(out)
    assert tuple(model.input_shape) == (None, 8, 8)
    assert model.layers[-1].units == 10
    assert model.layers[-1].get_config()["activation"] == "softmax"


def test_weather_forecast_is_the_default_and_shows_its_baselines(tmp_path):
    out = tmp_path / "weather"
    lab2_rnn.main(["--cell", "lstm", "--quick", "--out", str(out)])
    metrics = assert_run_directory(out, extra=("plots/predictions.png",))
    config = read_json(out / "config.json")
    assert config["dataset"] == "weather" and config["arch"] == "3"
    assert metrics["mse"] > 0
    # persistence is a strong baseline for daily temperatures, the mean a weak one
    assert 4.0 < metrics["persistence_mse"] < 15.0 < metrics["baseline_mse"]
    assert 4.0 < metrics["ridge_mse"] < metrics["baseline_mse"]


def test_weather_windows_are_the_next_day_and_splits_are_consecutive():
    series = np.arange(40, dtype="float64").reshape(20, 2)
    x, rows = lab2_rnn.windows(series, 4)
    assert x.shape == (16, 4, 2)
    np.testing.assert_array_equal(x[3, :, 0], [6, 8, 10, 12])
    assert rows[3] == 7
    splits = lab2_rnn.load_weather(14)
    sizes = (len(splits.y_train), len(splits.y_val), len(splits.y_test))
    assert sizes == (1461 - 14 - 545, 180, 365)
    scale = splits.notes["target_scale"]
    # the last input day of the first test window is the day before its target
    last_input = splits.x_test[1, -1, 0] * scale[1] + scale[0]
    assert last_input == pytest.approx(splits.y_test[0] * scale[1] + scale[0])


def test_adding_targets_are_the_sum_of_the_marked_values():
    data = lab2_rnn.load_adding(10, 30, seed=1)
    values, markers = data.x_train[..., 0], data.x_train[..., 1]
    np.testing.assert_array_equal(markers.sum(axis=1), 2)
    np.testing.assert_allclose((values * markers).sum(axis=1), data.y_train, rtol=1e-6)


def test_pre_pad_moves_padding_to_the_front():
    ids = np.array([[5, 6, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0]])
    np.testing.assert_array_equal(
        pre_pad(ids), [[0, 0, 5, 6], [1, 2, 3, 4], [0, 0, 0, 0]]
    )


def test_imdb_reviews_under_tfds_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "imdb"
    with tfds.testing.mock_data(num_examples=16):
        lab2_rnn.main(
            [
                "--dataset",
                "imdb_reviews",
                "--arch",
                "1",
                "--quick",
                "--seq-len",
                "16",
                "--vocabulary-size",
                "200",
                "--out",
                str(out),
            ]
        )
    metrics = assert_run_directory(out, extra=("plots/confusion_matrix.png",))
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    model = load_model(out)
    assert model.get_layer("embedding").get_config()["mask_zero"] is False
    assert model.layers[-1].get_config()["activation"] == "sigmoid"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "4"], "invalid choice: '4'"),
        (["--seq-len", "0"], "must be at least 1"),
        (["--cell", "transformer"], "invalid choice: 'transformer'"),
        (["--epochs", "0"], "must be at least 1"),
        (["--dataset", "cifar10"], "unknown --dataset 'cifar10'"),
        (["--compare", "--cell", "lstm"], "leave out --cell"),
        (["--dataset", "digits", "--seq-len", "20"], "always read as 8 rows"),
    ],
)
def test_bad_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        experiment.parse_args(lab2_rnn.LAB, argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_too_short_adding_sequence_is_a_clear_runtime_error(tmp_path, capsys):
    code = cli.run(
        lab2_rnn.main,
        [
            "--dataset",
            "adding",
            "--seq-len",
            "1",
            "--quick",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    error = capsys.readouterr().err
    assert code == 1
    assert "at least 2 steps" in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_command_line_exit_code_for_a_bad_arch():
    result = subprocess.run(
        [sys.executable, "-m", "labs.lab2_rnn", "--arch", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "invalid choice: '4'" in result.stderr
