"""The grading report (python -m labs.report) and its self-check, over fake runs.

The runs are written by hand in the run directory format (config.json,
metrics.json, history.csv, predictions.npz, plots/*.png, report.md), with real PNGs
from matplotlib, so these tests need no training. The browser test renders the page
in headless Debian chromium; it is skipped when chromium is missing, unless CI is
set.
"""

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from labs import report, rubric  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def save_png(path, title, seed=0):
    """A real, small line plot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(3, 2))
    epochs = list(range(1, 11))
    axis.plot(epochs, [1 / (e + seed) for e in epochs], "o-", label="train loss")
    axis.plot(
        epochs, [1.2 / (e + seed) + 0.05 for e in epochs], "s-", label="validation loss"
    )
    axis.set_title(title)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.legend(fontsize=6)
    figure.savefig(path, dpi=60)
    plt.close(figure)
    return path


def make_run(
    root,
    lab,
    arch,
    dataset,
    metrics,
    *,
    started="2026-11-24T02:00:00",
    plots=("learning_curves",),
    args=None,
    data=None,
    report_md=None,
    folder=None,
    predictions=None,
):
    """Write one run directory in the contract's layout; return its path.

    history.csv has ``metrics["epochs_run"]`` rows (10 without metrics) whose
    val_loss is lowest at ``metrics["best_epoch"]``, as EarlyStopping leaves it.
    """
    stamp = started.replace("-", "").replace(":", "").replace("T", "-")
    slug = re.sub(r"[^\w.-]", "_", dataset)
    folder = folder or root / lab / f"{stamp}-{arch}-{slug}"
    folder.mkdir(parents=True)
    all_args = {"arch": arch, "dataset": dataset, "seed": 0, "quick": False}
    all_args.update(args or {})
    config = {
        "lab": lab,
        "arch": arch,
        "dataset": dataset,
        "command": f"python -m labs.{lab} --arch {arch} --dataset {dataset}",
        "args": all_args,
        "backend": "torch",
        "seed": 0,
        "host": "test-host",
        "started": started,
        "data": data or {"name": dataset, "num_train": 8000},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    epochs = (metrics or {}).get("epochs_run") or 10
    best = (metrics or {}).get("best_epoch") or epochs
    with open(folder / "history.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "loss", "val_loss"])
        for epoch in range(1, epochs + 1):
            val = 1.1 / min(epoch, best) + 0.01 * max(0, epoch - best)
            writer.writerow([epoch, 1 / epoch, val])
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if predictions is not None:
        truth, predicted = predictions
        np.savez(folder / "predictions.npz", y_true=truth, y_pred=predicted)
    for index, name in enumerate(plots):
        save_png(folder / "plots" / f"{name}.png", f"{lab} {name}", seed=index)
    if report_md is not None:
        (folder / "report.md").write_text(report_md)
    return folder


def completed(**figures):
    return {
        "status": "completed",
        "best_epoch": 8,
        "stopped_epoch": None,
        "epochs_run": 10,
        "train_seconds": 95.5,
        "params": 123456,
        **figures,
    }


def predictions_with_accuracy(correct, total=200):
    truth = np.arange(total) % 10
    predicted = truth.copy()
    predicted[correct:] = (predicted[correct:] + 1) % 10
    return truth, predicted


@pytest.fixture
def runs_dir(tmp_path):
    """Seven runs: course and workbook bars passed and failed, a bar between two
    metrics, and a lab that no rule covers."""
    root = tmp_path / "runs"
    make_run(
        root,
        "lab1_cnn",
        "vgg",
        "mnist",
        completed(test_accuracy=0.995, macro_f1=0.995, test_loss=0.02),
        plots=("learning_curves", "confusion_matrix", "misclassified"),
        predictions=predictions_with_accuracy(199),
        report_md="# lab1_cnn\n\n```\npython -m labs.lab1_cnn\n```\n\n"
        "## Figures\n\n| metric | value |\n|---|---|\n"
        "| test_accuracy | 0.995 |\n\n- name: mnist\n\n"
        "![learning_curves](plots/learning_curves.png)\n",
    )
    make_run(
        root,
        "lab1_cnn",
        "resnet",
        "cifar10",
        completed(test_accuracy=0.7512, macro_f1=0.74),
        started="2026-11-24T03:00:00",
    )
    make_run(
        root,
        "lab1_cnn",
        "baseline",
        "digits",
        completed(test_accuracy=0.985),
        started="2026-11-24T04:00:00",
    )
    make_run(
        root,
        "lab2_rnn",
        "3",
        "weather",
        completed(mse=8.9, persistence_mse=8.45, baseline_mse=56.7),
        args={"cell": "lstm"},
    )
    make_run(root, "lab3_gan", "wgan-gp", "ring", completed(modes_covered=8))
    make_run(
        root,
        "lab4_finetune",
        "resnet50v2",
        "tf_flowers",
        completed(test_accuracy=0.951),
        args={"mode": "finetune"},
    )
    make_run(root, "lab9_extra", "mlp", "mnist", completed(test_accuracy=0.5))
    return root


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def by_lab_arch(rows):
    return {(row["lab"], row["arch"]): row for row in rows}


def grades_of(root, *extra):
    return read_csv(report.main([str(root), *extra])["csv"])


def test_page_lists_every_run_with_its_grade(runs_dir, capsys):
    result = report.main([str(runs_dir), "--student", "Ada Lovelace"])

    assert result["runs"] == 7
    assert result["index"] == runs_dir / "index.html"
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"report: {runs_dir / 'index.html'}"
    )
    page = result["index"].read_text()
    grades = re.findall(r'<tr class="run-row" data-grade="([^"]+)">', page)
    assert sorted(grades) == ["fail", "fail", "n/a", "pass", "pass", "pass", "pass"]
    assert result["grades"] == {"pass": 4, "fail": 2, "n/a": 1}
    assert "Ada Lovelace" in page.split("<h2>")[0]  # in the header
    assert "0.7512 &lt; 0.8" in page  # the failing run shows its value and bar
    assert "8.9 ≥ persistence_mse 8.45" in page  # a bar against another metric
    assert '<span class="badge pass">pass</span>' in page
    assert '<span class="badge fail">fail</span>' in page
    assert "3 · lstm" in page and "finetune" in page  # variants: arch, cell, mode
    assert "embedded data" not in page  # offline runs are graded like the rest


def test_grades_follow_rubric_lab_arch_and_dataset(runs_dir):
    rows = by_lab_arch(read_csv(report.main([str(runs_dir)])["csv"]))

    assert rows[("lab1_cnn", "vgg")]["grade"] == "pass"
    assert rows[("lab1_cnn", "vgg")]["rubric"] == "MNIST CNN"
    assert rows[("lab1_cnn", "vgg")]["bar"] == "test_accuracy >= 0.993"
    assert rows[("lab1_cnn", "resnet")]["grade"] == "fail"
    assert rows[("lab1_cnn", "resnet")]["rubric"] == "skip-connection CNN, CIFAR-10"
    assert rows[("lab1_cnn", "baseline")]["grade"] == "pass"  # digits: 0.985 >= 0.97
    assert rows[("lab1_cnn", "baseline")]["bar"] == "test_accuracy >= 0.97"
    assert rows[("lab2_rnn", "3 · lstm")]["grade"] == "fail"  # 8.9 > persistence
    assert rows[("lab2_rnn", "3 · lstm")]["bar"] == "mse < persistence_mse"
    assert rows[("lab3_gan", "wgan-gp")]["grade"] == "pass"
    assert rows[("lab4_finetune", "resnet50v2 · finetune")]["grade"] == "pass"
    assert rows[("lab9_extra", "mlp")]["grade"] == "n/a"
    assert rows[("lab1_cnn", "vgg")]["headline"] == "test_accuracy"
    assert rows[("lab2_rnn", "3 · lstm")]["headline"] == "mse"


# One fake run per offline command of every lab: (lab, arch, dataset, extra args,
# figures that meet the bar). Each must be graded pass, and fail when its first
# figure is made a hundred times worse: every lab, arch family and dataset the
# workbook ships has a bar.
OFFLINE = [
    (
        "lab0_basics",
        "cosine",
        "cosine",
        {},
        {"test_mse_inside": 3e-5, "test_mse_outside": 1.4},
    ),
    ("lab0_basics", "sobel", "sample_images", {}, {"kernel_error": 0.01}),
    ("lab1_cnn", "baseline", "digits", {}, {"test_accuracy": 0.99}),
    ("lab1_cnn", "resnet", "digits", {"augment": "basic"}, {"test_accuracy": 0.99}),
    ("lab1_cnn", "mlp", "digits", {}, {"test_accuracy": 0.97}),
    (
        "lab2_rnn",
        "3",
        "weather",
        {"cell": "lstm"},
        {"mse": 7.2, "persistence_mse": 8.45},
    ),
    ("lab2_rnn", "1", "weather", {"cell": "simple"}, {"mse": 8.2}),
    ("lab2_rnn", "3", "adding", {"cell": "gru"}, {"mse": 0.0003}),
    (
        "lab2_rnn",
        "3",
        "adding",
        {"cell": "simple"},
        {"mse": 0.15, "baseline_mse": 0.172},
    ),
    ("lab2_rnn", "3", "digits", {"cell": "lstm"}, {"test_accuracy": 0.92}),
    ("lab3_gan", "mlp", "ring", {}, {"modes_covered": 6}),
    ("lab3_gan", "wgan-gp", "ring", {}, {"modes_covered": 8}),
    ("lab3_gan", "dcgan", "digits", {}, {"frechet_distance": 12.8}),
    ("lab3_gan", "mlp", "digits", {}, {"frechet_distance": 38.8}),
    ("lab3_gan", "wgan-gp", "digits", {}, {"frechet_distance": 8.7}),
    (
        "lab4_finetune",
        "resnet50v2",
        "digits",
        {"mode": "finetune"},
        {"test_accuracy": 0.47},
    ),
    ("lab6_unet", "unet", "scenes", {}, {"mean_iou": 0.87, "pixel_accuracy": 0.96}),
    (
        "lab6_unet",
        "no-skip",
        "scenes",
        {},
        {"mean_iou": 0.68, "pixel_accuracy": 0.85, "majority_baseline": 0.65},
    ),
    ("lab5_text", "textcnn", "reviews", {}, {"test_accuracy": 0.99}),
    ("lab5_text", "bow", "reviews", {}, {"test_accuracy": 0.62}),
    ("lab5_text", "word2vec", "reviews", {}, {"test_accuracy": 0.6}),
    ("lab7_autoencoder", "conv", "digits", {}, {"test_accuracy": 0.955}),
    (
        "lab8_detection",
        "retinanet",
        "shapes",
        {},
        {"map50": 0.4, "mean_box_map50": 0.01},
    ),
    (
        "lab8_detection",
        "faster-rcnn",
        "shapes",
        {},
        {"map50": 0.3, "mean_box_map50": 0.01},
    ),
    ("lab7_autoencoder", "dense", "digits", {}, {"test_accuracy": 0.95}),
    (
        "lab9_studies",
        "models",
        "digits",
        {"compare": True},
        {"test_accuracy": 0.99, "best_variant": "resnet"},
    ),
    ("lab9_studies", "fc", "digits", {"study": "models"}, {"test_accuracy": 0.97}),
    ("lab9_studies", "kernels", "digits", {"compare": True}, {"test_accuracy": 0.99}),
    ("lab9_studies", "depth", "digits", {"compare": True}, {"test_accuracy": 0.97}),
    ("lab9_studies", "blocks", "digits", {"compare": True}, {"test_accuracy": 0.99}),
]


def worse(figures):
    first, value = next(iter(figures.items()))
    factor = 100 if "mse" in first or "error" in first or "distance" in first else 0.01
    return {**figures, first: value * factor}


@pytest.mark.parametrize("make_worse", [False, True], ids=["meets", "misses"])
def test_every_offline_lab_command_is_graded(tmp_path, make_worse):
    root = tmp_path / "runs"
    for index, (lab, arch, dataset, args, figures) in enumerate(OFFLINE):
        figures = worse(figures) if make_worse else figures
        make_run(
            root,
            lab,
            arch,
            dataset,
            completed(**figures),
            args=args,
            folder=root / lab / f"run{index}",
            plots=(),
        )
    rows = read_csv(report.main([str(root)])["csv"])

    assert len(rows) == len(OFFLINE)
    wanted = "fail" if make_worse else "pass"
    assert {row["folder"]: row["grade"] for row in rows} == {
        row["folder"]: wanted for row in rows
    }, [(row["folder"], row["grade_note"]) for row in rows if row["grade"] != wanted]


def test_every_rule_says_where_its_number_came_from():
    data = rubric.load()
    ids = [rule["id"] for rule in data["rules"]]

    assert len(ids) == len(set(ids))
    for rule in data["rules"]:
        assert rule["kind"] in ("course", "workbook"), rule["id"]
        assert len(rule.get("source", "")) > 20, rule["id"]
        if rule["kind"] == "workbook":
            measured = "README results" in rule["source"]
            assert measured or rule.get("provisional"), rule["id"]
            assert measured or "provisional" in rule["source"], rule["id"]
    assert set(data["labs"]) == {
        "lab0_basics",
        "lab1_cnn",
        "lab2_rnn",
        "lab3_gan",
        "lab4_finetune",
        "lab5_text",
        "lab6_unet",
        "lab7_autoencoder",
        "lab8_detection",
        "lab9_studies",
    }
    assert all(spec["columns"] for spec in data["labs"].values())


def test_quick_runs_are_labelled_and_unfinished_runs_incomplete(tmp_path):
    root = tmp_path / "runs"
    make_run(
        root,
        "lab1_cnn",
        "vgg",
        "mnist",
        completed(test_accuracy=0.6),
        args={"quick": True},
    )
    make_run(
        root,
        "lab1_cnn",
        "baseline",
        "digits",
        {**completed(test_accuracy=0.4), "status": "interrupted"},
    )
    make_run(root, "lab3_gan", "wgan-gp", "ring", {**completed(), "status": "diverged"})
    make_run(root, "lab6_unet", "unet", "scenes", None)  # no metrics.json
    make_run(
        root,
        "lab4_finetune",
        "resnet50v2",
        "tf_flowers",
        completed(test_accuracy=0.6),
        args={"mode": "scratch"},
    )
    rows = by_lab_arch(read_csv(report.main([str(root)])["csv"]))

    assert rows[("lab1_cnn", "vgg")]["grade"] == "quick"
    assert rows[("lab1_cnn", "vgg")]["grade_note"] == rubric.QUICK_LABEL
    assert rows[("lab1_cnn", "baseline")]["grade"] == "incomplete"
    assert "status interrupted" in rows[("lab1_cnn", "baseline")]["grade_note"]
    assert rows[("lab3_gan", "wgan-gp")]["grade"] == "incomplete"
    assert rows[("lab6_unet", "unet")]["grade"] == "incomplete"
    assert rows[("lab6_unet", "unet")]["status"] == "incomplete"
    assert rows[("lab4_finetune", "resnet50v2 · scratch")]["grade"] == "n/a"


def test_a_comparison_meets_its_best_variants_bar(tmp_path):
    """lab3 --compare on digits keeps --arch mlp in its config, but its figures
    are its best variant's (wgan-gp): the WGAN-GP bar (<= 12) grades it."""
    root = tmp_path / "runs"
    make_run(
        root,
        "lab3_gan",
        "mlp",
        "digits",
        completed(frechet_distance=30.0, best_variant="wgan-gp"),
        args={"compare": True},
    )
    row = read_csv(report.main([str(root)])["csv"])[0]

    assert row["rubric"] == "WGAN-GP on digits" and row["grade"] == "fail"
    assert "frechet_distance 30 > 12" in row["grade_note"]


# ------------------------------------------------------------- tamper evidence
def test_metrics_that_agree_with_the_run_files_pass(runs_dir):
    page = report.main([str(runs_dir)])["index"].read_text()
    section = page.split('id="run-1"')[1].split("</section>")[0]

    assert "test_accuracy 0.9950 recomputed from predictions.npz (200 test " in section
    assert "best_epoch 8 agrees with history.csv" in section
    assert "disagrees" not in section


def test_a_tampered_accuracy_is_flagged(tmp_path):
    root = tmp_path / "runs"
    make_run(
        root,
        "lab1_cnn",
        "baseline",
        "digits",
        completed(test_accuracy=0.99),
        predictions=predictions_with_accuracy(180),
    )  # really 0.90
    row = read_csv(report.main([str(root)])["csv"])[0]

    assert row["grade"] == "flagged"
    assert "predictions.npz gives 0.9000" in row["grade_note"]
    assert "DISAGREES" in row["evidence"]


def test_a_tampered_best_epoch_or_epoch_count_is_flagged(tmp_path):
    root = tmp_path / "runs"
    run = make_run(
        root, "lab1_cnn", "baseline", "digits", completed(test_accuracy=0.99)
    )
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "best_epoch": 3}))
    row = read_csv(report.main([str(root)])["csv"])[0]
    assert row["grade"] == "flagged"
    assert "lower val_loss later, 0.1375 at epoch 8" in row["grade_note"]

    (run / "metrics.json").write_text(json.dumps({**metrics, "epochs_run": 30}))
    row = read_csv(report.main([str(root)])["csv"])[0]
    assert row["grade"] == "flagged"
    assert "history.csv has 10 epochs" in row["grade_note"]


def make_comparison(root, best_accuracy=0.99, recorded=None):
    """Lab 9's models study: a parent run holding two variant sub-runs."""
    parent = root / "lab9_studies" / "20261124-020000-models-digits"
    recorded = best_accuracy if recorded is None else recorded
    make_run(
        root,
        "lab9_studies",
        "models",
        "digits",
        {
            **completed(test_accuracy=recorded, best_variant="cnn"),
            "cnn_test_accuracy": recorded,
            "fc_test_accuracy": 0.95,
        },
        args={"compare": True, "study": "models"},
        folder=parent,
    )
    make_run(
        root,
        "lab9_studies",
        "cnn",
        "digits",
        completed(test_accuracy=best_accuracy),
        folder=parent / "cnn",
    )
    make_run(
        root,
        "lab9_studies",
        "fc",
        "digits",
        completed(test_accuracy=0.95),
        folder=parent / "fc",
        started="2026-11-24T02:10:00",
    )
    return parent


def test_a_comparison_is_graded_by_its_best_variant_and_checked_against_it(
    tmp_path,
):
    root = tmp_path / "runs"
    make_comparison(root)
    rubric_file = tmp_path / "rubric.json"
    rubric_file.write_text(
        json.dumps(
            {
                "labs": {
                    "lab9_studies": {"title": "Lab 9", "columns": ["test_accuracy"]}
                },
                "rules": [
                    {
                        "lab": "lab9_studies",
                        "arch": ["models", "cnn"],
                        "dataset": "digits",
                        "metric": "test_accuracy",
                        "threshold": 0.985,
                    }
                ],
            }
        )
    )
    rows = read_csv(report.main([str(root), "--rubric", str(rubric_file)])["csv"])
    grades = {row["arch"]: (row["grade"], row["variant_of"]) for row in rows}

    assert grades == {
        "models": ("pass", ""),
        "cnn": ("pass", "1"),
        "fc": ("variant", "1"),
    }
    assert "3 figure(s) agree with the variants' own" in rows[0]["evidence"]

    shutil.rmtree(root)
    make_comparison(root, best_accuracy=0.97, recorded=0.99)  # edited parent
    rows = read_csv(report.main([str(root), "--rubric", str(rubric_file)])["csv"])
    assert rows[0]["grade"] == "flagged"
    assert "cnn_test_accuracy 0.99 vs cnn's 0.97" in rows[0]["grade_note"]
    assert rows[1]["grade"] == "fail"  # the variant's own 0.97 < 0.985


def test_a_tampered_detection_map_is_flagged(tmp_path):
    pytest.importorskip("common.detection")  # lab 8's own mAP evaluation
    root = tmp_path / "runs"
    bar = tmp_path / "bar.json"
    bar.write_text(json.dumps([{"lab": "lab8_*", "metric": "map50", "threshold": 0.3}]))
    box = np.array([[[2.0, 2.0, 12.0, 12.0]]], "float32")  # one image, one box
    for name, recorded in (("honest", 1.0), ("edited", 0.5)):
        run = make_run(
            root,
            "lab8_detection",
            "retinanet",
            "shapes",
            completed(map50=recorded),
            folder=root / name,
        )
        np.savez(
            run / "detections.npz",
            pred_boxes=box,
            pred_scores=np.array([[0.9]], "float32"),
            pred_classes=np.array([[0]], "int32"),
            true_boxes=box,
            true_classes=np.array([[0]], "int32"),
            true_difficult=np.array([[False]]),
            class_names=np.array(["square"]),
        )
    rows = {row["folder"]: row for row in grades_of(root, "--rubric", str(bar))}

    assert rows["honest"]["grade"] == "pass"
    assert (
        "map50 1.0000 recomputed from detections.npz agrees"
        in (rows["honest"]["evidence"])
    )
    assert rows["edited"]["grade"] == "flagged"
    assert "detections.npz gives 1.0000" in rows["edited"]["grade_note"]


# ------------------------------------------------------------------- --check
def check(root, capsys, *extra):
    code = report.cli(["--check", str(root), *extra])
    return code, capsys.readouterr().out


def table_row(output, lab):
    return next(line.split() for line in output.splitlines() if line.startswith(lab))


def test_check_passes_when_every_required_lab_passes(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, "lab1_cnn", "baseline", "digits", completed(test_accuracy=0.96))
    make_run(
        root,
        "lab1_cnn",
        "baseline",
        "digits",
        completed(test_accuracy=0.99),
        started="2026-11-24T05:00:00",
    )
    make_run(root, "lab3_gan", "wgan-gp", "ring", completed(modes_covered=8))
    code, output = check(root, capsys, "--require", "1,lab3_gan")

    assert code == 0
    assert output.splitlines()[-1] == (
        "check: passed, every required lab has a passing run"
    )
    row = table_row(output, "lab1_cnn")
    assert row[:4] == ["lab1_cnn", "yes", "pass", "#2"]  # the better of the two
    assert "0.99" in row and ">=" in row and "0.97" in row
    assert table_row(output, "lab3_gan")[:3] == ["lab3_gan", "yes", "pass"]
    assert not (root / "index.html").exists()  # --check writes nothing


def test_check_fails_on_a_failing_or_missing_lab(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, "lab1_cnn", "baseline", "digits", completed(test_accuracy=0.90))
    make_run(
        root, "lab2_rnn", "3", "adding", completed(mse=0.001), args={"quick": True}
    )
    code, output = check(root, capsys, "--require", "0,1,2")

    assert code == 1
    assert table_row(output, "lab1_cnn")[:3] == ["lab1_cnn", "yes", "fail"]
    assert "0.9 < 0.97" in output
    assert table_row(output, "lab0_basics")[:3] == ["lab0_basics", "yes", "missing"]
    assert table_row(output, "lab2_rnn")[:3] == ["lab2_rnn", "yes", "missing"]
    assert "only 1 --quick run" in output
    assert output.splitlines()[-1] == (
        "check: FAILED, 3 required lab(s) missing or not passing: "
        "lab0_basics, lab1_cnn, lab2_rnn"
    )

    assert report.cli(["--check", str(root), "--require", "1,lab12"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: --require names 'lab12', which is no lab")
    assert "Traceback" not in error


def test_check_with_the_rubric_requires_every_lab(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, "lab1_cnn", "baseline", "digits", completed(test_accuracy=0.99))
    code, output = check(root, capsys)

    assert code == 1
    assert table_row(output, "lab1_cnn")[2] == "pass"
    lines = output.splitlines()[1:-1]
    missing = [line.split()[0] for line in lines if " missing " in line]
    assert len(missing) == 9 and "lab1_cnn" not in missing


def test_check_fails_on_a_tampered_run(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(
        root,
        "lab1_cnn",
        "baseline",
        "digits",
        completed(test_accuracy=0.99),
        predictions=predictions_with_accuracy(150),
    )
    code, output = check(root, capsys, "--require", "1")

    assert code == 1
    assert table_row(output, "lab1_cnn")[:3] == ["lab1_cnn", "yes", "flagged"]
    assert "predictions.npz gives 0.7500" in output


# --------------------------------------------------------- page and rubric file
def test_plots_are_embedded_once_and_thumbnails_copy_them(runs_dir):
    page = report.main([str(runs_dir)])["index"].read_text()

    pngs = sorted(runs_dir.rglob("plots/*.png"))
    images = re.findall(
        r'<img id="plot-[\d-]+" src="data:image/png;base64,([^"]+)"', page
    )
    assert len(images) == len(pngs) == 9
    first = runs_dir.glob("lab1_cnn/*-vgg-mnist/plots/learning_curves.png")
    assert base64.b64encode(next(first).read_bytes()).decode() in images
    thumbs = re.findall(r'<img class="thumb" data-copy="(plot-[\d-]+)"', page)
    assert len(thumbs) == 9 and all(f'id="{t}"' in page for t in thumbs)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no network
    assert "<link" not in page and 'src="plots/' not in page
    assert "<details><summary>config.json</summary>" in page


def test_labs_summary_and_per_lab_tables(runs_dir):
    page = report.main([str(runs_dir)])["index"].read_text()
    labs = page.split('id="labs"')[1].split("</table>")[0]

    results = dict(
        re.findall(r'<tr data-result="([^"]+)"><td>(?:<a[^>]*>)?([^<]+)', labs)[i][::-1]
        for i in range(11)
    )
    assert results["Lab 1 CNN"] == "pass" and results["Lab 2 RNN"] == "fail"
    assert results["Lab 5 text"] == "missing" and results["lab9_extra"] == "no bar"
    assert "3 runs, 3 graded, best passes" in labs
    lab1 = page.split('id="runs-lab1_cnn"')[1].split("</table>")[0]
    headers = re.findall(r'<th data-key="(\w+)"', lab1)
    assert headers[:5] == ["run", "grade", "arch", "dataset", "status"]
    assert headers[5:8] == ["test_accuracy", "macro_f1", "test_loss"]
    assert headers[-1] == "plots"
    assert 'data-sort="0.995" class="num headline">0.995</td>' in lab1
    lab2 = page.split('id="runs-lab2_rnn"')[1].split("</table>")[0]
    assert re.findall(r'<th data-key="(\w+)"', lab2)[5:8] == [
        "mse",
        "persistence_mse",
        "baseline_mse",
    ]
    assert 'addEventListener("click"' in page and "sortBy(" in page
    assert 'data-sort="95.5" class="num">1m 36s</td>' in page


def test_report_md_is_rendered_and_everything_is_escaped(tmp_path):
    root = tmp_path / "runs"
    make_run(
        root,
        "lab1_cnn",
        "vgg",
        "mnist",
        completed(test_accuracy=0.99, note="<script>alert(1)</script>"),
        report_md="# Title <b>x</b>\n\n## Figures\n\n| metric | value |\n"
        "|---|---|\n| test_accuracy | 0.99 |\n\n```\ncode <i>\n```\n"
        "- item `x`\n\n![curves](plots/learning_curves.png)\n",
    )
    page = report.main([str(root)])["index"].read_text()
    section = page.split('id="run-1"')[1]

    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert "<h4>Title &lt;b&gt;x&lt;/b&gt;</h4>" in section
    assert "<h5>Figures</h5>" in section
    assert "<tr><th>metric</th><th>value</th></tr>" in section
    assert "<tr><td>test_accuracy</td><td>0.99</td></tr>" in section
    assert "<pre>code &lt;i&gt;</pre>" in section
    assert "<li>item <code>x</code></li>" in section
    assert "plot plots/learning_curves.png — shown above" in section


def test_csv_export_for_a_gradebook(runs_dir, tmp_path):
    target = tmp_path / "grades" / "ada.csv"
    result = report.main([str(runs_dir), "--student", "Ada", "--csv", str(target)])
    rows = read_csv(target)

    assert result["csv"] == target
    assert not (runs_dir / "summary.csv").exists()
    assert len(rows) == 7
    assert list(rows[0])[:7] == [
        "student",
        "run",
        "lab",
        "arch",
        "dataset",
        "status",
        "grade",
    ]
    assert {row["student"] for row in rows} == {"Ada"}
    vgg = by_lab_arch(rows)[("lab1_cnn", "vgg")]
    assert float(vgg["test_accuracy"]) == 0.995
    assert float(vgg["headline_value"]) == 0.995
    assert float(vgg["train_seconds"]) == 95.5
    assert vgg["params"] == "123456"
    assert vgg["started"] == "2026-11-24 02:00:00"
    assert vgg["command"].startswith("python -m labs.lab1_cnn")


def test_broken_and_unfinished_runs_are_listed_not_fatal(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "lab1_cnn", "vgg", "mnist", completed(test_accuracy=0.995))
    interrupted = make_run(
        root,
        "lab1_cnn",
        "baseline",
        "mnist",
        None,
        started="2026-11-24T05:00:00",
        plots=(),
    )
    broken = make_run(root, "lab2_rnn", "1", "imdb_reviews", None)
    (broken / "metrics.json").write_text('{"status": "completed", "mse": 0.')
    listed = make_run(root, "lab3_gan", "mlp", "mnist", None)
    (listed / "metrics.json").write_text("[1, 2]")
    bad_config = make_run(root, "lab3_gan", "dcgan", "mnist", completed(fid=40.0))
    (bad_config / "config.json").write_text("{not json")
    (interrupted / "history.csv").write_text("epoch,loss\n1,0.5\n2,0.4\n")
    (root / "lab1_cnn" / "notes.txt").write_text("not a run")

    result = report.main([str(root)])
    rows = read_csv(result["csv"])
    page = result["index"].read_text()

    assert result["runs"] == 5
    statuses = sorted(row["status"] for row in rows)
    assert statuses == ["completed", "completed", "incomplete", "unknown", "unknown"]
    baseline = by_lab_arch(rows)[("lab1_cnn", "baseline")]
    assert baseline["grade"] == "incomplete"
    assert baseline["epochs"] == "2"  # counted from history.csv
    assert "no metrics.json: the run did not finish" in page
    assert "metrics.json is not valid JSON" in page
    assert "metrics.json is not a JSON object" in page
    assert "config.json is not valid JSON" in page
    assert "no plots" in page
    lab3 = [row for row in rows if row["lab"] == "lab3_gan"]
    assert len(lab3) == 2  # lab from the folder name when config.json is broken


def test_custom_rubric_file(runs_dir, tmp_path):
    rubric_file = tmp_path / "rubric.json"
    rubric_file.write_text(
        json.dumps(
            {
                "rules": [
                    {
                        "title": "any mnist run",
                        "lab": "lab9_*",
                        "dataset": "mnist",
                        "checks": [{"metric": "test_accuracy", "threshold": 0.4}],
                        "source": "an instructor's own bar",
                    },
                    {  # the older one-bar form
                        "title": "low cifar loss",
                        "lab": "lab1_cnn",
                        "dataset": ["cifar*"],
                        "metric": "test_loss",
                        "op": "<=",
                        "threshold": 0.5,
                    },
                ]
            }
        )
    )
    rows = by_lab_arch(
        read_csv(report.main([str(runs_dir), "--rubric", str(rubric_file)])["csv"])
    )

    assert rows[("lab9_extra", "mlp")]["grade"] == "pass"
    assert rows[("lab1_cnn", "resnet")]["grade"] == "fail"  # no test_loss
    assert "metrics.json has no test_loss" in rows[("lab1_cnn", "resnet")]["grade_note"]
    assert rows[("lab1_cnn", "vgg")]["grade"] == "n/a"  # built-in bars replaced

    rubric_file.write_text(
        json.dumps([{"title": "x", "metric": "mse", "threshold": "low"}])
    )
    with pytest.raises(report.ReportError, match="numeric"):
        report.main([str(runs_dir), "--rubric", str(rubric_file)])
    rubric_file.write_text("{not json")
    with pytest.raises(report.ReportError, match="cannot be read"):
        report.main([str(runs_dir), "--rubric", str(rubric_file)])


def test_missing_or_empty_runs_dir_is_a_clear_error(tmp_path, capsys):
    assert report.cli([str(tmp_path / "nowhere")]) == 1
    message = capsys.readouterr().err
    assert message.startswith("error: the runs directory")
    assert "does not exist" in message and "python -m labs.lab2_rnn" in message

    (tmp_path / "empty" / "lab1_cnn").mkdir(parents=True)
    assert report.cli([str(tmp_path / "empty")]) == 1
    assert "no runs found" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "index.html").exists()
    assert report.cli(["--check", str(tmp_path / "empty"), "--require", "1"]) == 1
    assert "lab1_cnn" in capsys.readouterr().out  # a student with no runs: missing

    with pytest.raises(SystemExit) as usage:
        report.main(["--no-such-option"])
    assert usage.value.code == 2


def test_command_line_exit_codes_and_no_heavy_imports(runs_dir, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = run("-m", "labs.report", str(runs_dir), "--student", "Ada")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        f"report: {runs_dir / 'index.html'}"
    )
    checked = run("-m", "labs.report", "--check", str(runs_dir), "--require", "1,3")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = run("-m", "labs.report", "--check", str(runs_dir), "--require", "2")
    assert checked.returncode == 1 and "check: FAILED" in checked.stdout
    missing = run("-m", "labs.report", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr and "error:" in missing.stderr
    assert run("-m", "labs.report", "--csv").returncode == 2
    heavy = run(
        "-c",
        "import sys, labs.report; print(sorted({'keras', 'torch', "
        "'tensorflow'} & set(sys.modules)))",
    )
    assert heavy.stdout.strip() == "[]"


# ------------------------------------------------------------- real browser
def chromium_or_skip():
    path = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium is not installed, and CI is set: the CI setup must "
                "install Debian's chromium (apt-get install -y chromium)"
            )
        pytest.skip(
            "chromium not installed (apt-get install -y chromium); "
            "this test fails instead of skipping when CI is set"
        )
    return path


def chromium(binary, tmp_path, *args):
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,2000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_page_renders_in_headless_chromium(runs_dir, tmp_path):
    from PIL import Image

    binary = chromium_or_skip()
    index = report.main([str(runs_dir), "--student", "Ada"])["index"].resolve()
    shot, phone = tmp_path / "shot.png", tmp_path / "phone.png"

    done = chromium(binary, tmp_path, f"--screenshot={shot}", index.as_uri())
    assert shot.exists(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200  # text, badges and plots, not a blank page
    white = sum(count for count, rgb in colours if min(rgb) >= 250)
    assert white < 0.9 * image.size[0] * image.size[1]
    green = sum(count for count, (r, g, b) in colours if g > r + 40 and g > b + 20)
    red = sum(count for count, (r, g, b) in colours if r > g + 60 and r > b + 60)
    assert green > 50 and red > 50  # pass and fail badges are coloured
    yellow = sum(
        count for count, (r, g, b) in colours if r > 240 and g > 230 and b < 215
    )
    assert yellow > 200  # the graded figures' highlighted cells

    chromium(
        binary,
        tmp_path,
        f"--screenshot={phone}",
        "--window-size=390,2000",
        index.as_uri(),
    )
    narrow = Image.open(phone).convert("RGB")
    assert narrow.size == (390, 2000)
    assert len(narrow.getcolors(maxcolors=1 << 20)) > 100

    # The DOM after the script ran, sorted by test accuracy, descending (#sort=-key).
    dom = chromium(
        binary, tmp_path, "--dump-dom", index.as_uri() + "#sort=-test_accuracy"
    ).stdout
    assert dom.count('class="run-row"') == 7
    thumbs = re.findall(r'<img class="thumb" data-copy="[^"]+"[^>]*>', dom)
    assert len(thumbs) == 9 and all('src="data:image/png;base64,' in t for t in thumbs)
    lab1 = dom.split('id="runs-lab1_cnn"')[1].split("</table>")[0]
    assert 'aria-sort="descending"' in lab1
    column = re.findall(r'<th data-key="(\w+)"', lab1).index("test_accuracy")
    rows = re.findall(r'<tr class="run-row".*?</tr>', lab1, flags=re.S)
    cells = [
        re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)[column] for row in rows
    ]
    assert [float(cell) for cell in cells] == [0.995, 0.985, 0.7512]
