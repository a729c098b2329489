"""The grading report (python -m labs.report) over fake run directories.

The runs are written by hand in the run directory format (config.json,
metrics.json, history.csv, plots/*.png, report.md), with real PNGs from
matplotlib, so these tests need no training. The browser test renders the page in
headless Debian chromium; it is skipped when chromium is missing, unless CI is set.
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
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from labs import report  # noqa: E402

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
    epochs=10,
):
    """Write one run directory in the contract's layout; return its path."""
    stamp = started.replace("-", "").replace(":", "").replace("T", "-")
    slug = re.sub(r"[^\w.-]", "_", dataset)
    folder = root / lab / f"{stamp}-{arch}-{slug}"
    folder.mkdir(parents=True)
    all_args = {
        "arch": arch,
        "dataset": dataset,
        "epochs": epochs,
        "seed": 0,
        "quick": False,
        **(args or {}),
    }
    config = {
        "lab": lab,
        "arch": arch,
        "dataset": dataset,
        "argv": ["--arch", arch, "--dataset", dataset],
        "command": f"python -m labs.{lab} --arch {arch} --dataset {dataset}",
        "args": all_args,
        "backend": "torch",
        "versions": {"keras": "3.15.1"},
        "seed": 0,
        "host": "test-host",
        "started": started,
        "data": data or {"name": dataset, "embedded": False, "num_train": 8000},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    with open(folder / "history.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "loss", "val_loss"])
        for epoch in range(1, epochs + 1):
            writer.writerow([epoch, 1 / epoch, 1.1 / epoch])
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    for index, name in enumerate(plots):
        save_png(folder / "plots" / f"{name}.png", f"{lab} {name}", seed=index)
    if report_md is not None:
        (folder / "report.md").write_text(report_md)
    return folder


def completed(**figures):
    return {
        "status": "completed",
        "best_epoch": 8,
        "stopped_epoch": 0,
        "epochs_run": 10,
        "train_seconds": 95.5,
        "params": 123456,
        **figures,
    }


@pytest.fixture
def runs_dir(tmp_path):
    """Seven runs covering pass, fail, embedded, n/a and a lab without a rubric."""
    root = tmp_path / "runs"
    make_run(
        root,
        "lab1_cnn",
        "vgg",
        "mnist",
        completed(test_accuracy=0.9951, macro_f1=0.995, test_loss=0.02),
        plots=("learning_curves", "confusion_matrix", "misclassified"),
        report_md="# lab1_cnn\n\n```\npython -m labs.lab1_cnn\n```\n\n"
        "## Figures\n\n| metric | value |\n|---|---|\n"
        "| test_accuracy | 0.9951 |\n\n- name: mnist\n\n"
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
        data={"name": "digits", "embedded": True, "num_train": 1200},
        started="2026-11-24T04:00:00",
    )
    make_run(
        root,
        "lab2_rnn",
        "3",
        "adding",
        completed(mse=0.0012),
        args={"cell": "gru"},
        data={"name": "adding", "generated": True},
    )
    make_run(root, "lab3_gan", "wgan-gp", "ring", completed(modes_covered=8))
    make_run(
        root,
        "lab4_finetune",
        "default",
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


def test_page_lists_every_run_with_its_grade(runs_dir, capsys):
    result = report.main([str(runs_dir), "--student", "Ada Lovelace"])

    assert result["runs"] == 7
    assert result["index"] == runs_dir / "index.html"
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"report: {runs_dir / 'index.html'}"
    )
    page = result["index"].read_text()
    grades = re.findall(r'<tr class="run-row" data-grade="([^"]+)">', page)
    assert sorted(grades) == sorted(
        ["pass", "fail", "embedded", "embedded", "embedded", "pass", "n/a"]
    )
    assert result["grades"] == {"pass": 2, "fail": 1, "embedded": 3, "n/a": 1}
    assert "Ada Lovelace" in page.split("<h2>")[0]  # in the header
    assert report.EMBEDDED_LABEL in page
    assert "0.7512 &lt; 0.8" in page  # the failing run shows its value and bar
    assert '<span class="badge pass">pass</span>' in page
    assert '<span class="badge fail">fail</span>' in page
    assert "3 · gru" in page and "finetune" in page  # variants: arch, cell, mode


def test_grades_follow_rubric_lab_arch_and_dataset(runs_dir):
    rows = by_lab_arch(read_csv(report.main([str(runs_dir)])["csv"]))

    assert rows[("lab1_cnn", "vgg")]["grade"] == "pass"
    assert rows[("lab1_cnn", "vgg")]["rubric"] == "MNIST CNN"
    assert rows[("lab1_cnn", "vgg")]["bar"] == "test_accuracy >= 0.993"
    assert rows[("lab1_cnn", "resnet")]["grade"] == "fail"
    assert rows[("lab1_cnn", "resnet")]["rubric"] == "skip-connection CNN, CIFAR-10"
    assert rows[("lab1_cnn", "baseline")]["grade"] == "embedded"
    assert rows[("lab1_cnn", "baseline")]["grade_note"] == report.EMBEDDED_LABEL
    assert rows[("lab2_rnn", "3 · gru")]["grade"] == "embedded"
    assert rows[("lab3_gan", "wgan-gp")]["grade"] == "embedded"
    assert rows[("lab4_finetune", "finetune")]["grade"] == "pass"
    assert rows[("lab4_finetune", "finetune")]["rubric"] == "ResNet50V2 transfer"
    assert rows[("lab9_extra", "mlp")]["grade"] == "n/a"


def test_quick_runs_and_unmatched_archs_are_not_graded(tmp_path):
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
        root, "lab1_cnn", "transfer", "folder:/data/dogs", completed(test_accuracy=0.91)
    )
    make_run(
        root,
        "lab4_finetune",
        "default",
        "tf_flowers",
        completed(test_accuracy=0.6),
        args={"mode": "scratch"},
    )
    rows = {row["arch"]: row for row in read_csv(report.main([str(root)])["csv"])}

    assert rows["vgg"]["grade"] == "n/a"
    assert rows["vgg"]["grade_note"] == report.QUICK_LABEL
    assert rows["transfer"]["grade"] == "fail"  # dog-breed folder, 0.91 < 0.93
    assert rows["transfer"]["bar"] == "test_accuracy >= 0.93"
    assert rows["scratch"]["grade"] == "n/a"  # no bar for training from scratch


def test_plots_are_embedded_and_page_is_self_contained(runs_dir):
    page = report.main([str(runs_dir)])["index"].read_text()

    pngs = sorted(runs_dir.rglob("plots/*.png"))
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(pngs) == 9
    first = runs_dir.glob("lab1_cnn/*-vgg-mnist/plots/learning_curves.png")
    assert base64.b64encode(next(first).read_bytes()).decode() in images
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no network
    assert "<link" not in page and 'src="plots/' not in page
    assert "<details><summary>config.json</summary>" in page


def test_summary_table_is_sortable(runs_dir):
    page = report.main([str(runs_dir)])["index"].read_text()

    assert '<table id="summary" class="grid sortable">' in page
    headers = re.findall(r'<th data-key="(\w+)"', page.split('id="rubric"')[0])
    assert headers[:6] == ["run", "lab", "arch", "dataset", "status", "grade"]
    assert {
        "test_accuracy",
        "macro_f1",
        "mse",
        "modes_covered",
        "train_seconds",
        "started",
    } <= set(headers)
    assert 'addEventListener("click"' in page and "sortBy(" in page
    # numeric cells carry a raw value to sort by, not the formatted text
    assert 'data-sort="0.9951" class="num">0.9951</td>' in page
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
    assert float(vgg["test_accuracy"]) == 0.9951
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
    assert baseline["grade"] == "fail"  # graded against MNIST CNN, but no figure
    assert "has no test_accuracy (status incomplete)" in baseline["grade_note"]
    assert baseline["epochs"] == "2"  # counted from history.csv
    assert "no metrics.json: the run did not finish" in page
    assert "metrics.json is not valid JSON" in page
    assert "metrics.json is not a JSON object" in page
    assert "config.json is not valid JSON" in page
    assert "no plots" in page
    lab3 = [row for row in rows if row["lab"] == "lab3_gan"]
    assert len(lab3) == 2  # lab from the folder name when config.json is broken


def test_custom_rubric_file(runs_dir, tmp_path):
    rubric = tmp_path / "rubric.json"
    rubric.write_text(
        json.dumps(
            {
                "rules": [
                    {
                        "title": "any mnist run",
                        "lab": "lab9_*",
                        "dataset": "mnist",
                        "metric": "test_accuracy",
                        "op": ">=",
                        "threshold": 0.4,
                    },
                    {
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
        read_csv(report.main([str(runs_dir), "--rubric", str(rubric)])["csv"])
    )

    assert rows[("lab9_extra", "mlp")]["grade"] == "pass"
    assert rows[("lab1_cnn", "resnet")]["grade"] == "fail"  # no test_loss
    assert rows[("lab1_cnn", "vgg")]["grade"] == "n/a"  # built-in bars replaced

    rubric.write_text(json.dumps([{"title": "x", "metric": "mse", "threshold": "low"}]))
    with pytest.raises(report.ReportError, match="numeric"):
        report.main([str(runs_dir), "--rubric", str(rubric)])


def test_missing_or_empty_runs_dir_is_a_clear_error(tmp_path, capsys):
    assert report.cli([str(tmp_path / "nowhere")]) == 1
    message = capsys.readouterr().err
    assert message.startswith("error: the runs directory")
    assert "does not exist" in message and "python -m labs.lab2_rnn" in message

    (tmp_path / "empty" / "lab1_cnn").mkdir(parents=True)
    assert report.cli([str(tmp_path / "empty")]) == 1
    assert "no runs found" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "index.html").exists()

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
    shot = tmp_path / "shot.png"

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

    # The DOM after the script ran, sorted by test accuracy, descending (#sort=-key).
    dom = chromium(
        binary, tmp_path, "--dump-dom", index.as_uri() + "#sort=-test_accuracy"
    ).stdout
    assert dom.count('class="run-row"') == 7
    assert 'aria-sort="descending"' in dom
    summary = dom.split('id="summary"')[1].split("</table>")[0]
    column = re.findall(r'<th data-key="(\w+)"', summary).index("test_accuracy")
    rows = re.findall(r'<tr class="run-row".*?</tr>', summary, flags=re.S)
    cells = [
        re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)[column] for row in rows
    ]
    accuracies = [float(cell) for cell in cells if cell]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] == 0.9951 and len(accuracies) == 5
    assert cells[5:] == ["", ""]  # runs without the metric sort last
