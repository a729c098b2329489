"""The grading report: one static HTML page over all runs, and a CSV for a gradebook.

```
python -m labs.report [RUNS_DIR] [--student NAME] [--csv PATH] [--html PATH]
                      [--rubric FILE]
```

Every folder below RUNS_DIR (default ``runs/``) that holds a ``config.json`` is a
run (see the run directory contract in common/runs.py). The report writes

- ``RUNS_DIR/index.html``: a summary table of all runs (sortable: click a column
  header), the course rubric with the best run against each bar, and per run its
  plots, metrics, config and report.md;
- ``RUNS_DIR/summary.csv``: the summary table, one row per run, for a gradebook.

The page is one self-contained file: plots are embedded as base64 data URIs (only a
file over 5 MB is linked relatively instead), so an instructor can mail it or
upload it to a course site without the run folders, and it needs no server, no
network and no framework; a few lines of inline JavaScript sort the table.

Rubric bars come from the original courses (``RUBRIC`` below; ``--rubric FILE``
loads an instructor's own JSON list of rules in the same format). Runs on the
embedded small datasets (digits, adding, ring, seasonal, generated data) and
``--quick`` smoke runs are labelled, not graded against full-dataset bars.

This module reads files only: it imports no lab, no Keras and no torch, so it
starts at once. The last line printed is ``report: <path to index.html>``; exit
code 1 with one paragraph when RUNS_DIR is missing or holds no runs, 2 on a usage
error.
"""

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path

# Bars from the original courses. "lab" is the module name; "arch" and "dataset"
# are glob patterns (any of them may match; a missing key matches anything); "arch"
# is compared with the run's --arch, --mode and --cell. lab5_text, lab6_unet and
# lab7_autoencoder are not in the workbook yet: their module names are provisional.
RUBRIC = [
    {
        "id": "mnist-mlp",
        "title": "MNIST MLP",
        "lab": "lab1_cnn",
        "arch": ["mlp"],
        "dataset": ["mnist"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.98,
    },
    {
        "id": "mnist-cnn",
        "title": "MNIST CNN",
        "lab": "lab1_cnn",
        "arch": ["baseline", "vgg", "resnet"],
        "dataset": ["mnist"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.993,
    },
    {
        "id": "cifar10-cnn",
        "title": "CIFAR-10 CNN",
        "lab": "lab1_cnn",
        "arch": ["baseline", "vgg"],
        "dataset": ["cifar10"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.88,
    },
    {
        "id": "cifar10-skip",
        "title": "skip-connection CNN, CIFAR-10",
        "lab": "lab1_cnn",
        "arch": ["resnet"],
        "dataset": ["cifar10"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.80,
    },
    {
        "id": "resnet50v2-transfer",
        "title": "ResNet50V2 transfer",
        "lab": "lab4_finetune",
        "arch": ["head", "finetune"],
        "dataset": ["tf_flowers", "folder:*"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.93,
    },
    {
        "id": "lab1-transfer",
        "title": "ResNet50V2 transfer (lab 1)",
        "lab": "lab1_cnn",
        "arch": ["transfer"],
        "dataset": ["tf_flowers", "folder:*"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.93,
    },
    {
        "id": "autoencoder-rf",
        "title": "autoencoder + random forest",
        "lab": "lab7_autoencoder",
        "dataset": ["mnist", "fashion_mnist"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.90,
    },
    {
        "id": "textcnn-imdb",
        "title": "TextCNN, IMDB",
        "lab": "lab5_text",
        "arch": ["textcnn"],
        "dataset": ["imdb_reviews"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.87,
    },
    {
        "id": "imdb-embedding-mlp",
        "title": "IMDB embeddings + MLP",
        "lab": "lab5_text",
        "arch": ["embedding*", "mlp"],
        "dataset": ["imdb_reviews"],
        "metric": "test_accuracy",
        "op": ">=",
        "threshold": 0.86,
    },
    {
        "id": "unet-pixel",
        "title": "UNet segmentation",
        "lab": "lab6_unet",
        "arch": ["unet"],
        "dataset": ["oxford_iiit_pet"],
        "metric": "pixel_accuracy",
        "op": ">=",
        "threshold": 0.88,
    },
]

EMBEDDED_DATASETS = {"digits", "adding", "ring", "seasonal", "generated"}
EMBEDDED_LABEL = "embedded data — not graded against full-dataset bar"
QUICK_LABEL = "--quick smoke run on a tiny subset — not graded"
STATUSES = ("completed", "early_stopped", "interrupted", "diverged")
BOOKKEEPING = (
    "status",
    "best_epoch",
    "stopped_epoch",
    "epochs_run",
    "train_seconds",
    "params",
)
# The metrics shown as table columns, in this order, when any run has them.
KEY_METRICS = (
    "test_accuracy",
    "pixel_accuracy",
    "macro_f1",
    "test_loss",
    "mse",
    "test_mse",
    "fid",
    "frechet_distance",
    "modes_covered",
    "high_quality_share",
    "inference_ms_per_image",
)
MAX_METRIC_COLUMNS = 5
EMBED_LIMIT_BYTES = 5 * 1024 * 1024
IMAGE_TYPES = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}


class ReportError(Exception):
    """A problem the user can fix; the message says what went wrong and what to do."""


@dataclass
class Grade:
    result: str  # pass | fail | embedded | n/a
    reason: str
    rule: dict | None = None
    value: float | None = None


@dataclass
class RunRecord:
    path: Path
    name: str  # the run folder relative to RUNS_DIR
    config: dict
    metrics: dict
    status: str
    lab: str
    variant: str
    dataset: str
    history_rows: int
    plots: list
    report_md: str | None
    problems: list = field(default_factory=list)
    grade: Grade | None = None
    number: int = 0


# ---------------------------------------------------------------- reading runs
def _read_json(path):
    """(dict, None) or (None, what is wrong with the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError) as error:
        return None, f"unreadable ({getattr(error, 'strerror', None) or error})"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON (line {error.lineno}: {error.msg})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, None


def _count_history(path):
    try:
        with open(path / "history.csv", newline="", encoding="utf-8") as file:
            return sum(1 for _ in csv.DictReader(file))
    except (OSError, csv.Error, UnicodeDecodeError):
        pass
    rows, _ = _read_json(path / "history.json")
    if isinstance(rows, dict):
        rows = rows.get("rows") or rows.get("history") or []
        return len(rows) if isinstance(rows, list) else 0
    return 0


def find_run_folders(root):
    """Every folder below ``root`` holding a config.json (hidden folders skipped)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if "config.json" in files:
            found.append(Path(folder))
    return found


def variant_of(config):
    """The run's architecture, plus its --cell or --mode where the lab has one."""
    args = config.get("args") if isinstance(config.get("args"), dict) else {}
    parts = []
    arch = config.get("arch", args.get("arch"))
    if arch not in (None, "", "default"):
        parts.append(str(arch))
    for key in ("cell", "mode"):
        value = args.get(key, config.get(key))
        if value not in (None, "") and str(value) not in parts:
            parts.append(str(value))
    return parts


def _plot_files(path):
    folder = path / "plots"
    if not folder.is_dir():
        return []
    files = [
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_TYPES and p.is_file()
    ]
    first = {"learning_curves": 0, "confusion_matrix": 1}
    return sorted(files, key=lambda p: (first.get(p.stem, 2), p.name))


def load_run(path, root):
    name = path.relative_to(root).as_posix() if path != root else path.name
    problems = []
    config, error = _read_json(path / "config.json")
    if config is None:
        problems.append(f"config.json is {error}")
        config = {}
    metrics, error = _read_json(path / "metrics.json")
    if metrics is None:
        if error == "missing":
            status = "incomplete"
            problems.append(
                "no metrics.json: the run did not finish (interrupted, "
                "crashed or still running)"
            )
        else:
            status = "unknown"
            problems.append(f"metrics.json is {error}")
        metrics = {}
    else:
        status = str(metrics.get("status") or "unknown")
    parts = Path(name).parts
    lab = str(config.get("lab") or (parts[0] if len(parts) > 1 else "unknown"))
    args = config.get("args") if isinstance(config.get("args"), dict) else {}
    dataset = str(config.get("dataset") or args.get("dataset") or "unknown")
    report_md = None
    try:
        report_md = (path / "report.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        pass
    return RunRecord(
        path=path,
        name=name,
        config=config,
        metrics=metrics,
        status=status,
        lab=lab,
        variant=" · ".join(variant_of(config)) or "—",
        dataset=dataset,
        history_rows=_count_history(path),
        plots=_plot_files(path),
        report_md=report_md,
        problems=problems,
    )


# -------------------------------------------------------------------- grading
def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _as_list(value):
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _matches(value, patterns):
    return any(fnmatchcase(value.lower(), str(p).lower()) for p in patterns)


def is_embedded(run):
    data = run.config.get("data")
    data = data if isinstance(data, dict) else {}
    if data.get("embedded") or data.get("generated"):
        return True
    names = {run.dataset.lower(), str(data.get("name", "")).lower()}
    return bool(names & EMBEDDED_DATASETS) or run.dataset.startswith("generated")


def rule_applies(rule, run):
    labs = _as_list(rule.get("lab"))
    if labs is not None and not _matches(run.lab, labs):
        return False
    archs = _as_list(rule.get("arch"))
    variants = variant_of(run.config)
    if archs is not None and not any(_matches(v, archs) for v in variants):
        return False
    datasets = _as_list(rule.get("dataset"))
    return datasets is None or _matches(run.dataset, datasets)


def _bar(rule):
    return f"{rule['metric']} {rule.get('op', '>=')} {rule['threshold']:g}"


def grade_run(run, rules):
    args = run.config.get("args") if isinstance(run.config.get("args"), dict) else {}
    if is_embedded(run):
        return Grade("embedded", EMBEDDED_LABEL)
    if args.get("quick"):
        return Grade("n/a", QUICK_LABEL)
    rule = next((r for r in rules if rule_applies(r, run)), None)
    if rule is None:
        return Grade("n/a", "no rubric bar for this lab, architecture and dataset")
    value = _number(run.metrics.get(rule["metric"]))
    if value is None or math.isnan(value):
        return Grade(
            "fail",
            f"{rule['title']}: needs {_bar(rule)}, but metrics.json "
            f"has no {rule['metric']} (status {run.status})",
            rule,
        )
    if rule.get("op", ">=") == "<=":
        passed = value <= rule["threshold"]
    else:
        passed = value >= rule["threshold"]
    verdict = "meets" if passed else "misses"
    return Grade(
        "pass" if passed else "fail",
        f"{rule['title']}: {rule['metric']} {value:.4g} {verdict} the bar "
        f"{rule.get('op', '>=')} {rule['threshold']:g}",
        rule,
        value,
    )


def load_rubric(path):
    """An instructor's rubric: a JSON list of rules (or {"rules": [...]})."""
    data = None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(
            f"cannot read the rubric {path}: {error}. Give a JSON file holding a list "
            'of rules such as {"title": "MNIST CNN", "lab": "lab1_cnn", "arch": '
            '["vgg"], "dataset": ["mnist"], "metric": "test_accuracy", "op": ">=", '
            '"threshold": 0.993}, or leave out --rubric for the built-in one.'
        ) from error
    rules = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(rules, list):
        raise ReportError(
            f"the rubric {path} must hold a list of rules (or "
            '{"rules": [...]}); leave out --rubric for the built-in one.'
        )
    for index, rule in enumerate(rules):
        if (
            not isinstance(rule, dict)
            or "metric" not in rule
            or _number(rule.get("threshold")) is None
            or rule.get("op", ">=") not in (">=", "<=")
        ):
            raise ReportError(
                f'rule {index + 1} of the rubric {path} needs a "metric", a numeric '
                '"threshold" and optionally "op" (">=" or "<="); fix that rule.'
            )
        rule.setdefault("title", rule.get("id") or f"rule {index + 1}")
        rule.setdefault("id", f"rule-{index + 1}")
    return rules


# ----------------------------------------------------------------- formatting
def _esc(value):
    return html.escape(str(value), quote=True)


def _fmt_number(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if value is None:
        return "—"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _fmt_seconds(seconds):
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _fmt_params(params):
    if params is None:
        return ""
    if params >= 1e6:
        return f"{params / 1e6:.2f} M"
    if params >= 1e3:
        return f"{params / 1e3:.1f} k"
    return str(int(params))


def _started(run):
    text = str(run.config.get("started") or "")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        match = re.match(r"(\d{8}-\d{6})", run.path.name)
        if match:
            return datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
    return None


def _key(name):
    return re.sub(r"\W", "_", name)


def _inline_markdown(text):
    text = _esc(text)
    text = re.sub(
        r"!\[([^\]]*)\]\(([^)]*)\)",
        r'<span class="imgref">[plot \2 — shown above]</span>',
        text,
    )
    text = re.sub(r"\[([^\]]+)\]\(([^)]*)\)", r"\1 (\2)", text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def markdown_to_html(text):
    """Just enough Markdown for report.md: headings, code, lists, tables, text."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            block, i = [], i + 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre>{_esc(chr(10).join(block))}</pre>")
        elif re.match(r"#{1,6} ", line):
            level = min(6, len(line) - len(line.lstrip("#")) + 3)
            out.append(
                f"<h{level}>{_inline_markdown(line.lstrip('#').strip())}</h{level}>"
            )
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            i -= 1
            body = "".join(
                "<tr>"
                + "".join(f"<{tag}>{_inline_markdown(c)}</{tag}>" for c in row)
                + "</tr>"
                for tag, row in (
                    ("th" if n == 0 else "td", row) for n, row in enumerate(rows)
                )
            )
            out.append(f'<table class="md">{body}</table>')
        elif re.match(r"\s*[-*] ", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                items.append(f"<li>{_inline_markdown(lines[i].strip()[2:])}</li>")
                i += 1
            i -= 1
            out.append(f"<ul>{''.join(items)}</ul>")
        elif line.strip():
            block = [line]
            while (
                i + 1 < len(lines)
                and lines[i + 1].strip()
                and not re.match(r"(```|#{1,6} |\||\s*[-*] )", lines[i + 1])
            ):
                i += 1
                block.append(lines[i])
            out.append(f"<p>{_inline_markdown(' '.join(block))}</p>")
        i += 1
    return "\n".join(out)


# ------------------------------------------------------------------ the page
STYLE = """
:root { --pass: #15803d; --pass-bg: #dcfce7; --fail: #b91c1c; --fail-bg: #fee2e2;
  --emb: #1e4f8a; --emb-bg: #e0ecfa; --na: #57606a; --na-bg: #eef0f2;
  --warn: #9a5b00; --warn-bg: #fff1d6; --line: #d8dee4; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1f2328; margin: 0; background: #f6f8fa; }
main { max-width: 1400px; margin: 0 auto; padding: 18px 20px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; }
.meta, .small { color: #57606a; font-size: 12.5px; }
.counts span { margin-right: 6px; }
table { border-collapse: collapse; background: #fff; }
table.grid { width: 100%; border: 1px solid var(--line); font-size: 12.5px; }
.grid th, .grid td { padding: 4px 7px; border-bottom: 1px solid var(--line);
  text-align: left; vertical-align: top; white-space: nowrap; }
.grid th { background: #eaeef2; vertical-align: bottom; white-space: normal; }
.scroll { overflow-x: auto; }
.sortable th { cursor: pointer; user-select: none; }
.sortable th:hover { background: #dde3e9; }
.sortable th[aria-sort=ascending]::after { content: " \\25B2"; font-size: 10px; }
.sortable th[aria-sort=descending]::after { content: " \\25BC"; font-size: 10px; }
.grid tbody tr:nth-child(even) { background: #f9fafb; }
.grid tbody tr:hover { background: #f1f6fd; }
.grid td.num, .grid th.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid td.wrap { white-space: normal; min-width: 180px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px;
  font-size: 12px; font-weight: 600; white-space: nowrap; }
.pass { color: var(--pass); background: var(--pass-bg); }
.fail { color: var(--fail); background: var(--fail-bg); }
.embedded { color: var(--emb); background: var(--emb-bg); }
.na { color: var(--na); background: var(--na-bg); }
.warn { color: var(--warn); background: var(--warn-bg); }
td.grade { white-space: normal; min-width: 175px; }
td.grade .detail { display: block; font-size: 11.5px; color: #57606a; }
a { color: #0b5cad; text-decoration: none; } a:hover { text-decoration: underline; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 10px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
section.run { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 16px; margin: 16px 0; }
section.run h3 { margin: 0 0 4px; font-size: 16px; }
section.run h3 .badge { margin-left: 6px; vertical-align: 2px; }
.problems { margin: 6px 0; padding: 6px 10px 6px 26px; border-radius: 6px; }
.columns { display: grid; grid-template-columns: 250px 1fr; gap: 16px;
  margin-top: 8px; align-items: start; }
table.kv { font-size: 12.5px; width: 100%; }
.kv td { padding: 2px 6px; border-bottom: 1px solid #eef0f2; }
.kv td:last-child { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
.plots figure { margin: 0; border: 1px solid var(--line); border-radius: 6px;
  padding: 4px; background: #fff; }
.plots img { display: block; height: 230px; width: auto; max-width: 100%;
  cursor: zoom-in; }
.plots img.zoom { height: auto; max-width: min(1300px, 90vw); cursor: zoom-out; }
.plots figcaption { font-size: 11.5px; color: #57606a; text-align: center; }
details { margin-top: 8px; } summary { cursor: pointer; color: #0b5cad; }
.md h4, .md h5, .md h6 { margin: 10px 0 4px; }
table.md td, table.md th { border: 1px solid var(--line); padding: 2px 8px; }
.imgref { color: #57606a; font-style: italic; }
"""

SCRIPT = """
(function () {
  function key(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    return raw;
  }
  function sortBy(table, index, ascending) {
    var th = table.tHead.rows[0].cells[index];
    var numeric = th.classList.contains("num");
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index]), y = key(b.cells[index]);
      if (x === "" || y === "") return (x === "") - (y === "");
      var order = numeric ? parseFloat(x) - parseFloat(y)
                          : x.localeCompare(y, undefined, {numeric: true});
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
      other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    if (table.id === "summary") {
      try {
        history.replaceState(null, "", "#sort=" + (ascending ? "" : "-")
                             + th.getAttribute("data-key"));
      } catch (e) { /* some browsers refuse this on file:// pages */ }
    }
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.title = "click to sort";
      th.addEventListener("click", function () {
        sortBy(table, i, th.getAttribute("aria-sort") !== "ascending");
      });
    });
  });
  var wanted = /^#sort=(-?)(\\w+)$/.exec(location.hash);
  var summary = document.getElementById("summary");
  if (wanted && summary) {
    Array.prototype.forEach.call(summary.tHead.rows[0].cells, function (th, i) {
      if (th.getAttribute("data-key") === wanted[2]) sortBy(summary, i, !wanted[1]);
    });
  }
  document.addEventListener("click", function (event) {
    if (event.target.matches(".plots img")) event.target.classList.toggle("zoom");
  });
})();
"""


def _badge(text, css):
    return f'<span class="badge {css}">{_esc(text)}</span>'


def _grade_css(result):
    return {"pass": "pass", "fail": "fail", "embedded": "embedded"}.get(result, "na")


def _status_css(status):
    if status in ("completed", "early_stopped"):
        return "pass"
    if status == "diverged":
        return "fail"
    return "warn" if status in ("interrupted", "incomplete") else "na"


def _grade_text(grade):
    return "embedded data" if grade.result == "embedded" else grade.result


def _grade_detail(grade):
    if grade.result in ("pass", "fail") and grade.value is not None:
        op = "≥" if grade.rule.get("op", ">=") == ">=" else "≤"
        sign = op if grade.result == "pass" else {"≥": "<", "≤": ">"}[op]
        return f"{grade.value:.4g} {sign} {grade.rule['threshold']:g}"
    if grade.result == "fail":
        return f"no {grade.rule['metric']}"
    if grade.result == "embedded":
        return "not graded against full\u2011dataset bar"
    return "--quick run" if grade.reason == QUICK_LABEL else ""


def metric_columns(runs):
    present = {
        key
        for run in runs
        for key, value in run.metrics.items()
        if _number(value) is not None
    }
    return [key for key in KEY_METRICS if key in present][:MAX_METRIC_COLUMNS]


def summary_rows(runs, columns, student):
    """One dict per run: the CSV rows (and the source of the HTML table)."""
    rows = []
    for run in runs:
        started = _started(run)
        grade = run.grade
        row = {
            "student": student or "",
            "run": run.number,
            "lab": run.lab,
            "arch": run.variant,
            "dataset": run.dataset,
            "status": run.status,
            "grade": grade.result,
            "rubric": grade.rule["title"] if grade.rule else "",
            "bar": _bar(grade.rule) if grade.rule else "",
            "grade_note": grade.reason,
        }
        for key in columns:
            row[key] = run.metrics.get(key, "")
        row.update(
            {
                "params": run.metrics.get("params", ""),
                "epochs": run.metrics.get("epochs_run", run.history_rows or ""),
                "train_seconds": run.metrics.get("train_seconds", ""),
                "started": started.isoformat(sep=" ") if started else "",
                "folder": run.name,
                "command": run.config.get("command", ""),
            }
        )
        rows.append(row)
    return rows


def _summary_table(runs, columns):
    headers = [
        ("run", "#", True),
        ("lab", "lab", False),
        ("arch", "arch", False),
        ("dataset", "dataset", False),
        ("status", "status", False),
        ("grade", "grade", False),
    ]
    headers += [(_key(c), c.replace("_", " "), True) for c in columns]
    headers += [
        ("params", "params", True),
        ("epochs", "epochs", True),
        ("train_seconds", "train time", True),
        ("started", "date", False),
    ]
    head = "".join(
        f'<th data-key="{k}"{" class=num" if num else ""}>{_esc(label)}</th>'
        for k, label, num in headers
    )
    body = []
    for run in runs:
        grade, started = run.grade, _started(run)
        order = {"pass": 0, "fail": 1, "embedded": 2}.get(grade.result, 3)
        status = _badge(run.status.replace("_", " "), _status_css(run.status))
        grade_html = (
            _badge(_grade_text(grade), _grade_css(grade.result))
            + f'<span class="detail">{_esc(_grade_detail(grade))}</span>'
        )
        cells = [
            _td(f'<a href="#run-{run.number}">{run.number}</a>', run.number, "num"),
            _td(_esc(run.lab)),
            _td(_esc(run.variant)),
            _td(_esc(_short(run.dataset)), title=run.dataset),
            _td(status, run.status),
            _td(grade_html, order, "grade", grade.reason),
        ]
        for column in columns:
            value = _number(run.metrics.get(column))
            text = "" if value is None else _fmt_number(value)
            cells.append(_td(text, value, "num"))
        params = _number(run.metrics.get("params"))
        epochs = _number(run.metrics.get("epochs_run")) or run.history_rows or None
        seconds = _number(run.metrics.get("train_seconds"))
        cells += [
            _td(_fmt_params(params), params, "num"),
            _td("" if epochs is None else str(int(epochs)), epochs, "num"),
            _td(_fmt_seconds(seconds), seconds, "num"),
            _td(
                started.strftime("%Y-%m-%d %H:%M") if started else "",
                started.isoformat() if started else "",
            ),
        ]
        body.append(
            f'<tr class="run-row" data-grade="{grade.result}">'
            + "".join(cells)
            + "</tr>"
        )
    return (
        f'<div class="scroll"><table id="summary" class="grid sortable"><thead>'
        f"<tr>{head}</tr></thead><tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def _td(content, sort=None, css=None, title=None):
    """A table cell; ``sort`` is the value the page's script sorts by."""
    if isinstance(sort, float) and math.isnan(sort):
        sort = None
    attributes = "" if sort is None else f' data-sort="{_esc(sort)}"'
    attributes += f' class="{css}"' if css else ""
    attributes += f' title="{_esc(title)}"' if title else ""
    return f"<td{attributes}>{content}</td>"


def _short(text, limit=28):
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _rubric_table(runs, rules):
    rows = []
    for rule in rules:
        graded = [r for r in runs if r.grade.rule is rule]
        valued = [r for r in graded if r.grade.value is not None]
        reverse = rule.get("op", ">=") == ">="
        best = sorted(valued, key=lambda r: r.grade.value, reverse=reverse)[:1]
        if not graded:
            result, detail = _badge("no run", "na"), ""
        else:
            top = (best or graded)[0]
            result = _badge(top.grade.result, _grade_css(top.grade.result))
            value = f"{top.grade.value:.4g}" if best else "no value"
            detail = (
                f'<a href="#run-{top.number}">#{top.number}</a> {value} '
                f'<span class="small">({len(graded)} graded run'
                f"{'s' if len(graded) != 1 else ''})</span>"
            )
        scope = " · ".join(
            "/".join(map(str, _as_list(rule[k])))
            for k in ("lab", "arch", "dataset")
            if rule.get(k)
        )
        rows.append(
            f"<tr><td>{_esc(rule['title'])}</td><td>{_esc(scope)}</td>"
            f"<td>{_esc(_bar(rule))}</td><td>{result}</td>"
            f"<td>{detail}</td></tr>"
        )
    return (
        '<table id="rubric" class="grid"><thead><tr><th>course bar</th><th>'
        "applies to (lab · arch · dataset)</th><th>metric</th><th>result</th>"
        "<th>best run</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _image_tag(path, html_dir):
    mime = IMAGE_TYPES[path.suffix.lower()]
    try:
        size = path.stat().st_size
        if size <= EMBED_LIMIT_BYTES:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            return f'<img src="data:{mime};base64,{data}" alt="{_esc(path.stem)}">'
    except OSError:
        return f'<span class="small">{_esc(path.name)}: unreadable</span>'
    relative = Path(os.path.relpath(path, html_dir)).as_posix()
    return f'<img src="{_esc(relative)}" alt="{_esc(path.stem)}" loading="lazy">'


def _run_section(run, html_dir):
    grade = run.grade
    started = _started(run)
    meta = [f"folder <code>{_esc(run.name)}</code>"]
    if started:
        meta.append(f"started {started.strftime('%Y-%m-%d %H:%M')}")
    if run.config.get("backend"):
        meta.append(f"backend {_esc(run.config['backend'])}")
    if run.config.get("machine") or run.config.get("host"):
        meta.append(_esc(run.config.get("machine") or run.config.get("host")))
    heading = (
        f'<a href="#run-{run.number}">#{run.number}</a> {_esc(run.lab)} · '
        f"{_esc(run.variant)} · {_esc(run.dataset)}"
        + _badge(run.status.replace("_", " "), _status_css(run.status))
        + _badge(_grade_text(grade), _grade_css(grade.result))
    )
    parts = [
        f'<section class="run" id="run-{run.number}">',
        f"<h3>{heading}</h3>",
        f'<div class="meta">{" · ".join(meta)}</div>',
        f'<div class="small">grade: {_esc(grade.reason)}</div>',
    ]
    if run.config.get("command"):
        parts.append(f"<pre>{_esc(run.config['command'])}</pre>")
    if run.problems:
        parts.append(
            '<ul class="problems warn">'
            + "".join(f"<li>{_esc(p)}</li>" for p in run.problems)
            + "</ul>"
        )
    metrics = "".join(
        f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt_number(v))}</td></tr>"
        for k, v in run.metrics.items()
    )
    if run.history_rows:
        metrics += f"<tr><td>history rows</td><td>{run.history_rows}</td></tr>"
    figures = (
        "".join(
            f"<figure>{_image_tag(p, html_dir)}<figcaption>{_esc(p.name)}</figcaption>"
            "</figure>"
            for p in run.plots
        )
        or '<span class="small">no plots</span>'
    )
    parts.append(
        f'<div class="columns"><table class="kv">{metrics}</table>'
        f'<div class="plots">{figures}</div></div>'
    )
    if run.config:
        config = json.dumps(run.config, indent=2, ensure_ascii=False, default=str)
        parts.append(
            f"<details><summary>config.json</summary><pre>{_esc(config)}"
            "</pre></details>"
        )
    if run.report_md:
        parts.append(
            '<details><summary>report.md</summary><div class="md">'
            f"{markdown_to_html(run.report_md)}</div></details>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def render_page(runs, rules, columns, runs_dir, html_dir, student):
    counts = {}
    for run in runs:
        counts[run.grade.result] = counts.get(run.grade.result, 0) + 1
    count_badges = " ".join(
        _badge(f"{counts[result]} {label}", _grade_css(result))
        for result, label in (
            ("pass", "pass"),
            ("fail", "fail"),
            ("embedded", "embedded data"),
            ("n/a", "n/a"),
        )
        if counts.get(result)
    )
    title = "Grading report" + (f" — {student}" if student else "")
    student_line = (
        (f'<div class="student">Student: <strong>{_esc(student)}</strong></div>')
        if student
        else ""
    )
    generated = datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{STYLE}</style></head>
<body><main>
<h1>{_esc(title)}</h1>
{student_line}
<div class="meta">{len(runs)} run{"s" if len(runs) != 1 else ""} in
<code>{_esc(runs_dir)}</code> · generated {generated} by
<code>python -m labs.report</code></div>
<p class="counts">{count_badges}</p>
<h2>Runs</h2>
{_summary_table(runs, columns)}
<p class="small">Click a column header to sort. Grades compare the run's test metric
with the bar from the original course; <span class="badge embedded">embedded
data</span> runs (digits, adding, ring, seasonal or generated data) and
<code>--quick</code> smoke runs are not graded against full-dataset bars.</p>
<h2>Rubric</h2>
{_rubric_table(runs, rules)}
<h2>Run details</h2>
{"".join(_run_section(run, html_dir) for run in runs)}
</main>
<script>{SCRIPT}</script>
</body></html>
"""


# ------------------------------------------------------------------- writing
def _atomic_write(path, text, newline=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline=newline) as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _csv_text(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m labs.report",
        description="Write one static HTML grading page (and a CSV) over all runs "
        "below RUNS_DIR.",
    )
    parser.add_argument(
        "runs_dir",
        nargs="?",
        default="runs",
        metavar="RUNS_DIR",
        help="folder holding the run directories (default: runs)",
    )
    parser.add_argument(
        "--student",
        default=None,
        metavar="NAME",
        help="student name, shown in the page header and the CSV",
    )
    parser.add_argument(
        "--csv",
        default=None,
        metavar="PATH",
        help="summary CSV for a gradebook (default: RUNS_DIR/summary.csv)",
    )
    parser.add_argument(
        "--html",
        default=None,
        metavar="PATH",
        help="the page to write (default: RUNS_DIR/index.html)",
    )
    parser.add_argument(
        "--rubric",
        default=None,
        metavar="FILE",
        help="JSON list of rubric rules replacing the built-in bars",
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Write the page and the CSV; return {"index", "csv", "runs", "grades"}."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    runs_dir = Path(args.runs_dir)
    example = "python -m labs.lab2_rnn --arch 3"
    if not runs_dir.is_dir():
        what = "is not a folder" if runs_dir.exists() else "does not exist"
        raise ReportError(
            f"the runs directory {runs_dir} {what}. Labs write their runs under "
            f"runs/ in the folder they are started from (e.g. `{example}`): run a "
            "lab first, or pass the folder that holds the runs: "
            "`python -m labs.report PATH`."
        )
    rules = load_rubric(args.rubric) if args.rubric else RUBRIC
    runs = [load_run(folder, runs_dir) for folder in find_run_folders(runs_dir)]
    if not runs:
        raise ReportError(
            f"no runs found in {runs_dir}: a run is a folder holding a config.json, "
            f"written by a lab (e.g. `{example}` writes "
            "runs/lab2_rnn/<time>-3-adding/). Run a lab first, or pass the folder "
            "that holds the runs."
        )
    runs.sort(key=lambda r: (r.lab, (_started(r) or datetime.min).isoformat(), r.name))
    for number, run in enumerate(runs, start=1):
        run.number = number
        run.grade = grade_run(run, rules)
    html_path = Path(args.html) if args.html else runs_dir / "index.html"
    csv_path = Path(args.csv) if args.csv else runs_dir / "summary.csv"
    columns = metric_columns(runs)
    page = render_page(runs, rules, columns, runs_dir, html_path.parent, args.student)
    rows = summary_rows(runs, columns, args.student)
    for path, text in ((html_path, page), (csv_path, _csv_text(rows))):
        try:
            _atomic_write(path, text)
        except OSError as error:
            raise ReportError(
                f"cannot write {path}: {error.strerror or error}. Pass --html PATH "
                "and --csv PATH in a folder you can write to."
            ) from error
    grades = {}
    for run in runs:
        grades[run.grade.result] = grades.get(run.grade.result, 0) + 1
    summary = ", ".join(f"{n} {g}" for g, n in sorted(grades.items()))
    print(f"{len(runs)} runs ({summary})")
    print(f"csv: {csv_path}")
    print(f"report: {html_path}")
    return {"index": html_path, "csv": csv_path, "runs": len(runs), "grades": grades}


def cli(argv=None):
    """main() with the exit-code contract: 0 ok, 1 one-paragraph error, 2 usage."""
    try:
        main(argv)
    except ReportError as error:
        message = textwrap.fill(" ".join(str(error).split()), width=88)
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
