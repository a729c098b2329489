"""Runs that survive faults: Ctrl-C and --resume, determinism, atomic files."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest

from common import cli
from common.runs import atomic_write_json, load_model
from labs import lab1_cnn


def history_epochs(out):
    return [row["epoch"] for row in json.loads((out / "history.json").read_text())]


def test_sigint_keeps_the_run_and_resume_finishes_it_without_gaps(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "labs.lab1_cnn",
        "--epochs",
        "6",
        "--patience",
        "50",
        "--out",
        str(out),
    ]
    # Ctrl-C as in a terminal: a shell that starts CI in the background (`&`, no
    # job control) makes its children ignore SIGINT, and a child that inherits
    # SIG_IGN never sees the signal (measured: the run finished with exit 0).
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        rows = (
            (out / "history.csv").read_text().splitlines()
            if (out / "history.csv").exists()
            else []
        )
        if len(rows) >= 3:  # header + 2 epochs
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in " ".join(stderr.split())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert (out / "plots" / "learning_curves.png").is_file()
    assert (out / "model.keras").is_file()
    assert (out / "backup" / "training_metadata.json").is_file()
    done = json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"]
    assert done >= 1  # the checkpoint may trail the history by one epoch

    resumed = subprocess.run(
        [sys.executable, "-m", "labs.lab1_cnn", "--resume", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == f"run: {out}"
    assert f"resuming {out} after epoch {done}" in resumed.stdout
    assert history_epochs(out) == [1, 2, 3, 4, 5, 6]
    final = json.loads((out / "metrics.json").read_text())
    assert final["status"] == "completed" and final["epochs_run"] == 6
    assert json.loads((out / "config.json").read_text())["resumed"] == 1
    assert not (out / "backup").exists()


def test_resume_refuses_finished_or_foreign_runs(tmp_path, capsys):
    out = tmp_path / "done"
    lab1_cnn.main(["--quick", "--epochs", "1", "--out", str(out)])
    assert cli.run(lab1_cnn.main, ["--resume", str(out)]) == 1
    assert "already finished" in " ".join(capsys.readouterr().err.split())
    assert cli.run(lab1_cnn.main, ["--resume", str(tmp_path / "nothing")]) == 1
    assert "no readable config.json" in " ".join(capsys.readouterr().err.split())
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "lab": "lab9_other"}))
    assert cli.run(lab1_cnn.main, ["--resume", str(out)]) == 1
    assert "not lab1_cnn" in " ".join(capsys.readouterr().err.split())


def test_same_seed_gives_identical_history(tmp_path):
    histories = []
    for name in ("a", "b"):
        out = tmp_path / name
        lab1_cnn.main(["--quick", "--seed", "7", "--out", str(out)])
        rows = json.loads((out / "history.json").read_text())
        histories.append(
            [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]
        )
    assert histories[0] == histories[1]


def test_atomic_write_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"status": "completed", "test_accuracy": 0.9})

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_json(path, {"status": "interrupted"})
    assert json.loads(path.read_text())["status"] == "completed"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_disk_errors_become_a_clear_paragraph(capsys):
    def full_disk(argv):
        raise OSError(28, "No space left on device", "/runs/x/model.keras")

    assert cli.run(full_disk, []) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "No space left on device" in err and "/runs/x/model.keras" in err
    assert "Traceback" not in err


def _tiny_model_with_lambda():
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda x: x * 2, name="code_in_the_file")(inputs)
    return keras.Model(inputs, outputs)


def test_models_with_code_or_unknown_classes_are_refused(tmp_path):
    lambda_path = tmp_path / "lambda.keras"
    _tiny_model_with_lambda().save(lambda_path)
    with pytest.raises(cli.WorkbookError, match="refused to load"):
        load_model(lambda_path)

    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    good, evil = tmp_path / "good.keras", tmp_path / "evil.keras"
    plain.save(good)
    assert load_model(good).count_params() == 8
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(evil, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"Dense"', b'"EvilLayer"').replace(
                    b'"keras.layers"', b'"evil.module"'
                )
            target.writestr(item, data)
    with pytest.raises(cli.WorkbookError, match="refused to load"):
        load_model(evil)


def test_run_reopen_needs_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    lab1_cnn.main(["--quick", "--epochs", "1", "--out", str(out)])
    (out / "metrics.json").unlink()
    with pytest.raises(cli.WorkbookError, match="no checkpoint"):
        lab1_cnn.main(["--resume", str(out)])
    assert np.isfinite(json.loads((out / "history.json").read_text())[0]["loss"])
