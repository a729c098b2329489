"""The benches import, parse their flags, run in small settings, and compute
their figures right.

The benches themselves take minutes and are run by hand (bench/README.md); these
tests run each one's ``main`` on tiny settings (seconds: the figures mean nothing
there, the tables must come out) and check the parts that decide what a table
says: the torch twins compute what the Keras models compute, and the arithmetic
of the tables, on made-up inputs.
"""

import importlib
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tracked_benches():
    """Every bench module git tracks (a bench still being written joins when
    it is committed)."""
    listed = subprocess.run(
        ["git", "ls-files", "bench/*.py"], cwd=ROOT, capture_output=True, text=True
    )
    names = (Path(line).stem for line in listed.stdout.split())
    return sorted(name for name in names if name != "__init__")


BENCHES = tracked_benches()
# conftest sends a test whose name says "backend" to the backend matrix: these
# run on the default backend only, so bench.backends gets another id
IDS = {"backends": "framework_matrix"}
# (argv of main, a line its table must print), each a few seconds
SMOKE = {
    "augment": (
        ["--batches", "1", "--repeats", "1", "--keras-batches", "1"]
        + ["--keras-repeats", "1", "--threads", "1"],
        "| kernels.warp.RandomAffineWarp (ours)",
    ),
    "data_pipeline": (
        ["--repeats", "1", "--images", "128", "--folder-images", "10", "--no-tfds"],
        "| Lab 1 baseline CNN | Keras fit",
    ),
    "rnn_speed": (
        ["--steps", "1", "--repeats", "1", "--seq-len", "6", "--batch-size", "8"]
        + ["--units", "4"],
        "| GRU |",
    ),
    "train_step": (
        ["--models", "lab2_gru", "--repeats", "1", "--epochs", "2", "--no-shipped"],
        "| Lab 2 arch 3 GRU",
    ),
    "backends": (
        ["--labs", "lab2_rnn", "--backends", "torch", "--epochs", "2", "--quick"],
        "| lab2_rnn | torch | **",
    ),
}


def test_the_benches_are_found():
    assert {"augment", "backends", "train_step"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES, ids=lambda name: IDS.get(name, name))
def test_every_bench_imports_and_has_help(name, capsys):
    module = importlib.import_module(f"bench.{name}")
    with pytest.raises(SystemExit) as stop:
        module.parse_args(["--help"])
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(SMOKE), ids=lambda name: IDS.get(name, name))
def test_every_bench_runs_in_small_settings(name, capsys):
    argv, expected = SMOKE[name]
    importlib.import_module(f"bench.{name}").main(argv)
    printed = capsys.readouterr().out
    assert expected in printed, printed[-2000:]


@pytest.mark.parametrize("model", ["lab1_32px", "lab2_lstm", "lab2_gru"])
def test_the_torch_twin_computes_what_the_keras_model_computes(model):
    from bench import train_step

    args = train_step.parse_args(["--models", model])
    case = train_step.make_case(model, args)
    _, difference = train_step.checked_pair(case)
    assert difference <= 1e-5


def test_torch_cosine_decay_matches_keras():
    import keras
    import torch

    from bench.train_step import cosine_decay

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    schedule = cosine_decay(optimizer, decay_steps=10, alpha=0.1)
    keras_schedule = keras.optimizers.schedules.CosineDecay(1e-3, 10, alpha=0.1)
    for step in range(13):  # past the end too: it stays at alpha x the rate
        expected = float(keras.ops.convert_to_numpy(keras_schedule(step)))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-5)
        optimizer.step()
        schedule.step()


@pytest.mark.skipif("mnist_peer" not in BENCHES, reason="bench/mnist_peer.py untracked")
def test_mnist_sample_is_a_seeded_subset_linked_by_class(tmp_path):
    from bench.mnist_peer import image_files, write_sample

    source = tmp_path / "source"
    for digit in "012":
        (source / digit).mkdir(parents=True)
        for index in range(5):
            (source / digit / f"{digit}{index}.png").write_bytes(b"png")
    write_sample(source, tmp_path / "a", 6, seed=3)
    write_sample(source, tmp_path / "b", 6, seed=3)
    linked = image_files(tmp_path / "a")
    assert len(linked) == 6
    assert [p.relative_to(tmp_path / "a") for p in linked] == [
        p.relative_to(tmp_path / "b") for p in image_files(tmp_path / "b")
    ]
    for link in linked:
        assert link.is_symlink()
        target = link.resolve()
        assert target.parent.name == link.parent.name  # the class is kept
        assert target.is_relative_to(source.resolve())
    with pytest.raises(SystemExit):
        write_sample(source, tmp_path / "c", 16, seed=0)  # more than there are


def test_epoch_figures_skip_the_compiling_epoch(tmp_path):
    from bench.backends import figures

    history = [
        {"epoch": 1, "epoch_seconds": 9.0, "val_loss": 0.5, "val_accuracy": 0.8},
        {"epoch": 2, "epoch_seconds": 1.0, "val_loss": 0.4, "val_accuracy": 0.85},
        {"epoch": 3, "epoch_seconds": 3.0, "val_loss": 0.3, "val_accuracy": 0.9},
    ]
    (tmp_path / "history.json").write_text(json.dumps(history))
    (tmp_path / "metrics.json").write_text(json.dumps({"train_seconds": 14.2}))
    row = figures({"code": 0}, tmp_path)
    assert row["first_epoch"] == 9.0
    assert row["epoch_seconds"] == 2.0  # median of epochs 2 and 3 only
    assert row["validation"] == ("val_accuracy", 0.9)
    assert row["train_seconds"] == 14.2
    (tmp_path / "history.json").write_text(json.dumps([{"val_loss": 0.1}]))
    assert figures({}, tmp_path)["validation"] == ("val_loss", 0.1)


def test_speed_table_divides_by_the_fastest_of_each_lab():
    from bench.backends import parse_args, table

    args = parse_args(["--labs", "lab0_basics,lab1_cnn", "--epochs", "3"])

    def row(lab, backend, seconds, code=0, epochs=3):
        return dict(
            lab=lab,
            backend=backend,
            code=code,
            epochs=epochs,
            output="Error: something broke\n",
            epoch_seconds=seconds,
            first_epoch=seconds,
            validation=("val_loss", 0.25),
            train_seconds=10.0,
            wall=20.0,
            cpu=15.0,
            load=1.0,
        )

    rows = [
        row("lab0_basics", "torch", 2.0),
        row("lab0_basics", "jax", 1.0),
        row("lab1_cnn", "torch", 4.0),
        row("lab1_cnn", "tensorflow", None, code=1, epochs=0),
        row("lab1_cnn", "jax", 8.0, code="timeout"),  # timed out after training
    ]
    lines = table(rows, args, []).splitlines()
    cells = {
        (line.split("|")[1].strip(), line.split("|")[2].strip()): line.split("|")
        for line in lines
        if line.startswith("| lab")
    }
    assert cells[("lab0_basics", "torch")][4].strip() == "2.00x"
    assert cells[("lab0_basics", "jax")][4].strip() == "1.00x"
    assert cells[("lab1_cnn", "torch")][4].strip() == "1.00x"
    assert "failed: Error: something broke" in cells[("lab1_cnn", "tensorflow")][3]
    assert cells[("lab1_cnn", "jax")][4].strip() == "2.00x"
    assert "(then timed out)" in cells[("lab1_cnn", "jax")][6]
    assert any(line.startswith("machine:") for line in lines)
