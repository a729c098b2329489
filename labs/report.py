"""The grading report: one static HTML page over all runs, a CSV for a gradebook,
and a self-check for students.

```
python -m labs.report [RUNS_DIR] [--student NAME] [--csv PATH] [--html PATH]
                      [--rubric FILE]
python -m labs.report --check [RUNS_DIR] [--require LABS] [--rubric FILE]
```

Every folder below RUNS_DIR (default ``runs/``) that holds a ``config.json`` is a
run (see the run directory contract in common/runs.py); a run inside another run's
folder is a variant of that ``--compare`` run. The report writes

- ``RUNS_DIR/index.html``: a lab-by-lab summary (runs, best run against its bar),
  per lab a sortable table of its runs with the lab's own metric columns and a
  thumbnail strip of each run's plots, the rubric with where each bar came from,
  and per run its plots, metrics, the checks of its metrics.json, config and
  report.md;
- ``RUNS_DIR/summary.csv``: one row per run, for a gradebook.

The page is one self-contained file: plots are embedded as base64 data URIs (only a
file over 5 MB is linked relatively instead), so an instructor can mail it or
upload it without the run folders; it needs no server and no network, and a few
lines of inline JavaScript sort the tables and fill the thumbnails.

Grading (labs/rubric.py, bars in labs/rubric.json, ``--rubric FILE`` replaces
them): the first rule matching a run's lab, architecture and dataset grades it pass
or fail; ``--quick`` runs are labelled and never graded, interrupted or diverged
runs are graded incomplete. The report recomputes what the run directory allows
(the test accuracy from predictions.npz, mAP from detections.npz, the best epoch
from history.csv, a comparison's figures from its variants) and flags a
metrics.json that disagrees.

``--check`` prints, per lab, the best run against its bar (pass / fail / missing)
and exits 1 if a required lab is missing or not passing, so a student knows before
submitting. This module reads files only: it imports no lab and no Keras, so it
starts at once (only a report holding a lab 8 run imports common.detection, and
Keras with it, to recompute the mAP). The last line printed is ``report: <path to
index.html>``; exit code 1 with one paragraph when RUNS_DIR is missing or holds no
runs, 2 on a usage error.
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
from pathlib import Path

from labs import rubric
from labs.rubric import Grade, number

STATUSES = ("completed", "early_stopped", "interrupted", "diverged")
EMBED_LIMIT_BYTES = 5 * 1024 * 1024
IMAGE_TYPES = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}
TOLERANCE = 1e-6  # a recomputed figure agrees when within this of metrics.json
GRADE_LABELS = {
    "pass": "pass",
    "fail": "fail",
    "flagged": "flagged",
    "incomplete": "incomplete",
    "n/a": "no bar",
    "variant": "variant",
    "quick": "--quick",
}
EXAMPLE = "python -m labs.lab2_rnn --arch 3"


class ReportError(Exception):
    """A problem the user can fix; the message says what went wrong and what to do."""


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
    parent: "RunRecord | None" = None
    children: list = field(default_factory=list)
    evidence: list = field(default_factory=list)  # (agrees: bool, sentence)

    @property
    def quick(self):
        args = self.config.get("args")
        return bool(isinstance(args, dict) and args.get("quick"))

    @property
    def is_comparison(self):
        args = self.config.get("args")
        compare = isinstance(args, dict) and args.get("compare")
        return bool(compare or self.children or "best_variant" in self.metrics)


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


def read_history(path):
    """history.csv's rows as dicts of numbers (None where a cell is not one)."""
    try:
        with open(path / "history.csv", newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except (OSError, csv.Error, UnicodeDecodeError):
        rows, _ = _read_json(path / "history.json")
        rows = rows if isinstance(rows, list) else []
    parsed = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        values = {}
        for key, value in row.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                values[key] = None
        parsed.append(values)
    return parsed


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
        history_rows=len(read_history(path)),
        plots=_plot_files(path),
        report_md=report_md,
        problems=problems,
    )


def load_runs(runs_dir):
    """Every run below ``runs_dir``, sorted, numbered, variants linked to their
    comparison (a run folder inside another run's folder)."""
    runs = [load_run(folder, runs_dir) for folder in find_run_folders(runs_dir)]
    by_path = {run.path: run for run in runs}
    for run in runs:
        for ancestor in run.path.parents:
            if ancestor in by_path:
                run.parent = by_path[ancestor]
                break
    top = [run for run in runs if run.parent is None]
    top.sort(key=lambda r: (r.lab, (_started(r) or datetime.min).isoformat(), r.name))
    ordered = []

    def add(run):
        ordered.append(run)
        children = sorted(
            (r for r in runs if r.parent is run),
            key=lambda r: ((_started(r) or datetime.min).isoformat(), r.name),
        )
        run.children = children
        for child in children:
            add(child)

    for run in top:
        add(run)
    for number_, run in enumerate(ordered, start=1):
        run.number = number_
    return ordered


# ------------------------------------------------------ evidence: recomputation
def _agrees(recorded, recomputed):
    recorded = number(recorded)
    return recorded is not None and abs(recorded - recomputed) <= TOLERANCE


def _check_predictions(run, found):
    path = run.path / "predictions.npz"
    if not path.is_file() or "test_accuracy" not in run.metrics:
        return
    import numpy as np  # only here: the page needs no numpy otherwise

    try:
        with np.load(path, allow_pickle=False) as data:
            truth = np.asarray(data["y_true"]).reshape(-1)
            predicted = np.asarray(data["y_pred"]).reshape(-1)
    except (OSError, ValueError, KeyError) as error:
        found.append((False, f"predictions.npz cannot be read ({error})"))
        return
    if len(truth) == 0 or len(truth) != len(predicted):
        found.append((False, "predictions.npz holds no or mismatched predictions"))
        return
    accuracy = float(np.mean(truth == predicted))
    recorded = run.metrics["test_accuracy"]
    if _agrees(recorded, accuracy):
        found.append(
            (
                True,
                f"test_accuracy {accuracy:.4f} recomputed from predictions.npz "
                f"({len(truth)} test examples) agrees",
            )
        )
    else:
        found.append(
            (
                False,
                f"test_accuracy in metrics.json is {recorded}, but "
                f"predictions.npz gives {accuracy:.4f} ({len(truth)} test examples)",
            )
        )


def _check_detections(run, found):
    """mAP@0.5 recomputed from detections.npz with lab 8's own evaluation."""
    path = run.path / "detections.npz"
    if not path.is_file() or "map50" not in run.metrics:
        return
    import numpy as np

    try:  # Keras comes with it: imported only for a report holding detections
        from common.detection import evaluate_detections
    except ImportError as error:
        found.append((True, f"detections.npz present; mAP not recomputed ({error})"))
        return
    try:
        with np.load(path, allow_pickle=False) as data:
            predictions = [
                data[k] for k in ("pred_boxes", "pred_scores", "pred_classes")
            ]
            truths = [data[k] for k in ("true_boxes", "true_classes", "true_difficult")]
            count = len(data["class_names"])
        recomputed = float(evaluate_detections(predictions, truths, count)["map"])
    except (OSError, ValueError, KeyError, IndexError) as error:
        found.append((False, f"detections.npz cannot be read ({error})"))
        return
    recorded = run.metrics["map50"]
    if _agrees(recorded, recomputed):
        found.append(
            (True, f"map50 {recomputed:.4f} recomputed from detections.npz agrees")
        )
    else:
        found.append(
            (
                False,
                f"map50 in metrics.json is {recorded}, but detections.npz gives "
                f"{recomputed:.4f}",
            )
        )


def _check_history(run, found):
    """epochs_run and best_epoch against history.csv. EarlyStopping (restoring the
    best weights) picks the epoch after which no epoch had a lower val_loss."""
    rows = read_history(run.path)
    if not rows or run.is_comparison:
        return  # a comparison's history is its variants' combined
    epochs = number(run.metrics.get("epochs_run"))
    if epochs is not None and int(epochs) != len(rows):
        found.append(
            (
                False,
                f"epochs_run in metrics.json is {int(epochs)}, but "
                f"history.csv has {len(rows)} epochs",
            )
        )
    best = number(run.metrics.get("best_epoch"))
    losses = [row.get("val_loss") for row in rows]
    if best is None or any(loss is None for loss in losses):
        return
    best = int(best)
    if not 1 <= best <= len(rows):
        found.append(
            (
                False,
                f"best_epoch {best} is not an epoch of history.csv (1 to {len(rows)})",
            )
        )
        return
    later = losses[best:]
    if later and min(later) < losses[best - 1]:
        epoch = best + 1 + later.index(min(later))
        found.append(
            (
                False,
                f"best_epoch in metrics.json is {best} (val_loss "
                f"{losses[best - 1]:.4g}), but history.csv has a lower "
                f"val_loss later, {min(later):.4g} at epoch {epoch}",
            )
        )
    else:
        found.append(
            (
                True,
                f"best_epoch {best} agrees with history.csv "
                f"(no later epoch has a lower val_loss; {len(rows)} epochs)",
            )
        )


def _check_comparison(run, found):
    """A comparison's figures are its variants' own: its headline figures must
    equal its best variant's, and ``<variant>_<figure>`` each variant's."""
    if not run.children or not run.grade or not run.grade.rule:
        return
    metrics = [c["metric"] for c in run.grade.rule["checks"]]
    best = run.metrics.get("best_variant")
    disagree, compared = [], 0
    for child in run.children:
        name = child.path.name
        for metric in metrics:
            mine = child.metrics.get(metric)
            if number(mine) is None:
                continue
            keys = [f"{name}_{metric}"] + ([metric] if name == best else [])
            for key in keys:
                if key in run.metrics:
                    compared += 1
                    if not _agrees(run.metrics[key], float(mine)):
                        disagree.append(f"{key} {run.metrics[key]} vs {name}'s {mine}")
    if disagree:
        found.append(
            (
                False,
                "the comparison's metrics.json disagrees with its "
                "variants' own: " + "; ".join(disagree),
            )
        )
    elif compared:
        found.append(
            (True, f"{compared} figure(s) agree with the variants' own metrics.json")
        )


def gather_evidence(run):
    """[(agrees, sentence)]: what the run directory lets the report recompute."""
    found = []
    _check_predictions(run, found)
    _check_detections(run, found)
    _check_history(run, found)
    _check_comparison(run, found)
    return found


# -------------------------------------------------------------------- grading
def grade_run(run, rules):
    """The run's grade under the first matching rule, then its evidence: a
    metrics.json that disagrees with the run's own files is flagged."""
    tries = [variant_of(run.config)]
    best = run.metrics.get("best_variant")
    if best:  # a comparison carries its best variant's figures: its bar first
        best_child = next((c for c in run.children if c.path.name == best), None)
        child = variant_of(best_child.config) if best_child is not None else []
        tries.insert(0, [str(best), *child])
    rule = None
    for variants in tries:
        rule = next(
            (
                r
                for r in rules
                if rubric.rule_applies(r, run.lab, variants, run.dataset)
            ),
            None,
        )
        if rule is not None:
            break
    grade = rubric.grade(run.metrics, run.status, run.quick, rule)
    if grade.result == "n/a" and run.parent is not None:
        grade = Grade(
            "variant", f"a variant of comparison #{run.parent.number}, graded there"
        )
    run.grade = grade
    run.evidence = gather_evidence(run)
    disagreements = [text for agrees, text in run.evidence if not agrees]
    if disagreements and grade.result in ("pass", "fail"):
        run.grade = Grade(
            "flagged",
            "metrics.json disagrees with the run's own files: "
            + "; ".join(disagreements),
            grade.rule,
            grade.value,
            grade.checks,
        )
    return run.grade


def grade_runs(runs, rules):
    for run in runs:
        grade_run(run, rules)


def lab_specs(runs, the_rubric, required=None):
    """{lab: spec} for every lab in the rubric or among the runs; ``required``
    (names or numbers) replaces the rubric's own choice of required labs."""
    specs = {name: dict(spec) for name, spec in the_rubric["labs"].items()}
    for run in runs:
        specs.setdefault(run.lab, {"title": run.lab, "columns": [], "required": False})
    if required is not None:
        for spec in specs.values():
            spec["required"] = False
        for item in required:
            chosen = [name for name in specs if _names_lab(item, name)]
            if not chosen:
                raise ReportError(
                    f"--require names {item!r}, which is no lab of the rubric or the "
                    f"runs. Give lab names or numbers, e.g. --require 0,1,lab2_rnn; "
                    f"the labs are {', '.join(sorted(specs))}."
                )
            for name in chosen:
                specs[name]["required"] = True
    return dict(sorted(specs.items()))


def _names_lab(item, name):
    """Whether ``item`` of --require ("1", "lab1", "lab1_cnn") names lab ``name``."""
    number_ = re.match(r"lab(\d+)", name)
    if item.isdigit():
        return bool(number_) and int(item) == int(number_.group(1))
    return item == name or name.startswith(item + "_")


def lab_summary(runs):
    """(best run or None, result, sentence) for one lab's runs."""
    top = [run for run in runs if run.parent is None]
    best = None
    for run in runs:
        if best is None or rubric.better(run.grade, best.grade):
            best = run
    graded = [r for r in runs if r.grade.result in ("pass", "fail", "flagged")]
    if best is None or best.grade.result == "quick":
        quick = (
            f" (only {len(runs)} --quick run{'s' * (len(runs) != 1)})" if runs else ""
        )
        return None, "missing", "no run" + quick
    result = best.grade.result
    if result in ("n/a", "variant"):
        result = "no bar"
    count = f"{len(top)} run{'s' * (len(top) != 1)}"
    if len(runs) != len(top):
        variants = len(runs) - len(top)
        count += f" ({variants} variant{'s' * (variants != 1)})"
    word = {
        "pass": "best passes",
        "fail": "best fails",
        "flagged": "best is flagged",
        "incomplete": "none finished",
        "no bar": "no bar covers them",
    }[result]
    return best, result, f"{count}, {len(graded)} graded, {word}"


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
  --na: #57606a; --na-bg: #eef0f2; --quick: #1e4f8a; --quick-bg: #e0ecfa;
  --warn: #9a5b00; --warn-bg: #fff1d6; --line: #d8dee4; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1f2328; margin: 0; background: #f6f8fa; }
main { max-width: 1400px; margin: 0 auto; padding: 18px 20px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; }
h3.lab { font-size: 15px; margin: 18px 0 6px; }
h3.lab .small { font-weight: normal; margin-left: 6px; }
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
.grid td.wrap { white-space: normal; min-width: 150px; }
.grid td.rule { min-width: 300px; max-width: 640px; }
.grid td.headline { background: #fff6cc; font-weight: 600; }
tr.sub td:nth-child(3) { padding-left: 18px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px;
  font-size: 12px; font-weight: 600; white-space: nowrap; }
.pass { color: var(--pass); background: var(--pass-bg); }
.fail, .flagged, .missing { color: var(--fail); background: var(--fail-bg); }
.quick { color: var(--quick); background: var(--quick-bg); }
.na { color: var(--na); background: var(--na-bg); }
.warn, .incomplete { color: var(--warn); background: var(--warn-bg); }
td.grade { white-space: normal; min-width: 150px; }
td .detail { display: block; font-size: 11.5px; color: #57606a; }
td.thumbs { white-space: normal; min-width: 140px; }
img.thumb { height: 34px; width: auto; max-width: 64px; margin: 0 2px 2px 0;
  border: 1px solid var(--line); border-radius: 3px; background: #fff;
  vertical-align: middle; }
a { color: #0b5cad; text-decoration: none; } a:hover { text-decoration: underline; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 10px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
section.run { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 16px; margin: 16px 0; }
section.run h3 { margin: 0 0 4px; font-size: 16px; overflow-wrap: anywhere; }
section.run h3 .badge { margin-left: 6px; vertical-align: 2px; }
.problems { margin: 6px 0; padding: 6px 10px 6px 26px; border-radius: 6px; }
ul.evidence { margin: 6px 0; padding-left: 0; list-style: none; font-size: 12.5px; }
ul.evidence li::before { content: "\\2713  "; color: var(--pass); font-weight: 700; }
ul.evidence li.disagrees { color: var(--fail); font-weight: 600; }
ul.evidence li.disagrees::before { content: "\\2717  "; color: var(--fail); }
.columns { display: grid; grid-template-columns: 250px 1fr; gap: 16px;
  margin-top: 8px; align-items: start; }
table.kv { font-size: 12.5px; width: 100%; }
.kv td { padding: 2px 6px; border-bottom: 1px solid #eef0f2;
  overflow-wrap: anywhere; }
.kv td:last-child { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
.plots figure { margin: 0; border: 1px solid var(--line); border-radius: 6px;
  padding: 4px; background: #fff; max-width: 100%; }
.plots img { display: block; height: 230px; width: auto; max-width: 100%;
  object-fit: contain; cursor: zoom-in; }
.plots img.zoom { height: auto; max-width: min(1300px, 90vw); cursor: zoom-out; }
.plots figcaption { font-size: 11.5px; color: #57606a; text-align: center; }
details { margin-top: 8px; } summary { cursor: pointer; color: #0b5cad; }
.md h4, .md h5, .md h6 { margin: 10px 0 4px; }
table.md td, table.md th { border: 1px solid var(--line); padding: 2px 8px; }
.imgref { color: #57606a; font-style: italic; }
@media (max-width: 700px) {
  main { padding: 10px 8px 40px; }
  h1 { font-size: 20px; }
  .columns { grid-template-columns: 1fr; }
  .plots img { height: auto; }
  .grid td.wrap { min-width: 160px; }
}
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
  }
  var tables = document.querySelectorAll("table.sortable");
  tables.forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.title = "click to sort";
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        sortBy(table, i, ascending);
        try {
          history.replaceState(null, "", "#sort=" + (ascending ? "" : "-")
                               + th.getAttribute("data-key"));
        } catch (e) { /* some browsers refuse this on file:// pages */ }
      });
    });
  });
  var wanted = /^#sort=(-?)(\\w+)$/.exec(location.hash);
  if (wanted) {
    tables.forEach(function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
        if (th.getAttribute("data-key") === wanted[2]) sortBy(table, i, !wanted[1]);
      });
    });
  }
  document.querySelectorAll("img[data-copy]").forEach(function (thumb) {
    var full = document.getElementById(thumb.getAttribute("data-copy"));
    if (full) thumb.src = full.src;
  });
  document.addEventListener("click", function (event) {
    if (event.target.matches(".plots img")) event.target.classList.toggle("zoom");
  });
})();
"""


def _badge(text, css):
    return f'<span class="badge {css}">{_esc(text)}</span>'


def _grade_css(result):
    return {"n/a": "na", "variant": "na", "no bar": "na"}.get(result, result)


def _status_css(status):
    if status in ("completed", "early_stopped"):
        return "pass"
    if status == "diverged":
        return "fail"
    return "warn" if status in ("interrupted", "incomplete") else "na"


def _grade_badge(grade):
    return _badge(
        GRADE_LABELS.get(grade.result, grade.result), _grade_css(grade.result)
    )


def _grade_detail(grade, pretty=True):
    """The figures against the bar, in a few characters (≥ and ≤ when pretty)."""
    signs = {">=": "≥", "<=": "≤"} if pretty else {}
    if grade.checks:
        parts = []
        for check, value, limit, passed in grade.checks:
            if passed is None:
                parts.append(
                    f"no {check['metric'] if value is None else check['than']}"
                )
                continue
            sign = check["op"] if passed else rubric.FAILED_SIGN[check["op"]]
            against = f"{limit:g}"
            if "than" in check:
                against = f"{check['than']} {limit:.4g}"
            parts.append(f"{value:.4g} {signs.get(sign, sign)} {against}")
        return "; ".join(parts)
    return {"quick": "not graded", "incomplete": "unfinished"}.get(grade.result, "")


def headline_of(run, columns):
    """(metric, value) of the run's headline: its rule's first metric, else the
    first of the lab's columns it has."""
    keys = [run.grade.rule["checks"][0]["metric"]] if run.grade.rule else []
    for key in keys + list(columns):
        value = number(run.metrics.get(key))
        if value is not None:
            return key, value
    return None, None


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


def _plot_id(run, index):
    return f"plot-{run.number}-{index}"


def _labs_table(by_lab, specs):
    rows = []
    for lab, spec in specs.items():
        runs = by_lab.get(lab, [])
        best, result, sentence = lab_summary(runs)
        title = spec.get("title") or lab
        link = f'<a href="#lab-{_key(lab)}">{_esc(title)}</a>' if runs else _esc(title)
        if best is None:
            best_cell, figure, bar = "", "", ""
        else:
            best_cell = (
                f'<a href="#run-{best.number}">#{best.number}</a> '
                f"{_esc(best.variant)} · {_esc(_short(best.dataset, 22))}"
            )
            metric, value = headline_of(best, spec.get("columns", []))
            figure = "" if metric is None else f"{_esc(metric)} {_fmt_number(value)}"
            bar = _esc(rubric.bar_text(best.grade.rule)) if best.grade.rule else ""
        required = "required" if spec.get("required") else "optional"
        rows.append(
            f'<tr data-result="{_esc(result)}"><td>{link}<span class="detail small">'
            f" {required}</span></td><td>{_badge(result, _grade_css(result))}</td>"
            f'<td class="wrap">{_esc(sentence)}</td><td>{best_cell}</td>'
            f"<td>{figure}</td><td>{bar}</td></tr>"
        )
    return (
        '<div class="scroll"><table id="labs" class="grid"><thead><tr><th>lab</th>'
        "<th>result</th><th>runs</th><th>best run</th><th>its figure</th>"
        "<th>bar</th></tr></thead><tbody>" + "\n".join(rows) + "</tbody></table></div>"
    )


def _lab_columns(runs, spec):
    present = {
        k for run in runs for k, v in run.metrics.items() if number(v) is not None
    }
    columns = [c for c in spec.get("columns", []) if c in present]
    for run in runs:  # a rule's metric the lab's spec does not list
        for check in run.grade.rule["checks"] if run.grade.rule else []:
            if check["metric"] in present and check["metric"] not in columns:
                columns.append(check["metric"])
    return columns


def _runs_table(lab, runs, columns):
    headers = [
        ("run", "#", True),
        ("grade", "grade", False),
        ("arch", "arch", False),
        ("dataset", "dataset", False),
        ("status", "status", False),
    ]
    headers += [(_key(c), c.replace("_", " "), True) for c in columns]
    headers += [
        ("params", "params", True),
        ("epochs", "epochs", True),
        ("train_seconds", "train time", True),
        ("started", "date", False),
        ("plots", "plots", False),
    ]
    head = "".join(
        f'<th data-key="{k}"{" class=num" if num else ""}>{_esc(label)}</th>'
        for k, label, num in headers
    )
    body = []
    order = {result: index for index, result in enumerate(rubric.RESULTS)}
    for run in runs:
        grade, started = run.grade, _started(run)
        status = _badge(run.status.replace("_", " "), _status_css(run.status))
        grade_html = (
            _grade_badge(grade) + f'<span class="detail">{_esc(_grade_detail(grade))}'
            "</span>"
        )
        variant = _esc(run.variant)
        if run.parent is not None:
            variant = f"↳ {_esc(run.path.name)}"
        elif run.is_comparison:
            best = run.metrics.get("best_variant")
            variant += '<span class="detail small">--compare' + (
                f", best {_esc(best)}</span>" if best else "</span>"
            )
        graded = {c["metric"] for c in grade.rule["checks"]} if grade.rule else set()
        cells = [
            _td(f'<a href="#run-{run.number}">{run.number}</a>', run.number, "num"),
            _td(grade_html, order.get(grade.result, 9), "grade", grade.reason),
            _td(variant, title=run.variant),
            _td(_esc(_short(run.dataset)), title=run.dataset),
            _td(status, run.status),
        ]
        for column in columns:
            figure = number(run.metrics.get(column))
            text = "" if figure is None else _fmt_number(figure)
            css = "num headline" if column in graded and text else "num"
            cells.append(_td(text, figure, css))
        params = number(run.metrics.get("params"))
        epochs = number(run.metrics.get("epochs_run")) or run.history_rows or None
        seconds = number(run.metrics.get("train_seconds"))
        thumbs = "".join(
            f'<a href="#{_plot_id(run, i)}"><img class="thumb" data-copy="'
            f'{_plot_id(run, i)}" alt="{_esc(p.stem)}" title="{_esc(p.name)}"></a>'
            for i, p in enumerate(run.plots)
        )
        cells += [
            _td(_fmt_params(params), params, "num"),
            _td("" if epochs is None else str(int(epochs)), epochs, "num"),
            _td(_fmt_seconds(seconds), seconds, "num"),
            _td(
                started.strftime("%Y-%m-%d %H:%M") if started else "",
                started.isoformat() if started else "",
            ),
            _td(thumbs, len(run.plots), "thumbs"),
        ]
        css = "run-row sub" if run.parent is not None else "run-row"
        body.append(
            f'<tr class="{css}" data-grade="{grade.result}">' + "".join(cells) + "</tr>"
        )
    return (
        f'<div class="scroll"><table id="runs-{_key(lab)}" class="grid sortable runs">'
        f"<thead><tr>{head}</tr></thead><tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def _rubric_table(runs, rules):
    rows = []
    for rule in rules:
        graded = [r for r in runs if r.grade.rule is rule]
        best = None
        for run in graded:
            if best is None or rubric.better(run.grade, best.grade):
                best = run
        if best is None:
            result, detail = _badge("no run", "na"), ""
        else:
            result = _grade_badge(best.grade)
            value = (
                "no value" if best.grade.value is None else f"{best.grade.value:.4g}"
            )
            detail = (
                f'<a href="#run-{best.number}">#{best.number}</a> {value} '
                f'<span class="small">({len(graded)} run'
                f"{'s' if len(graded) != 1 else ''})</span>"
            )
        scope = " · ".join(
            "/".join(map(str, rubric.as_list(rule[k])))
            for k in ("lab", "arch", "dataset")
            if rule.get(k)
        )
        kind = rule.get("kind", "course") + (
            ", provisional" if rule.get("provisional") else ""
        )
        rows.append(
            f'<tr><td class="wrap rule"><strong>{_esc(rule["title"])}</strong> '
            f'<span class="small">({_esc(kind)})</span><span class="detail small">'
            f"{_esc(rule.get('source', ''))}</span></td>"
            f'<td class="wrap">{_esc(scope)}</td>'
            f'<td class="wrap">{_esc(rubric.bar_text(rule))}</td>'
            f"<td>{result}</td><td>{detail}</td></tr>"
        )
    return (
        '<div class="scroll"><table id="rubric" class="grid"><thead><tr>'
        "<th>bar, and where its number came from</th>"
        "<th>applies to (lab · arch · dataset)</th><th>check</th>"
        "<th>result</th><th>best run</th></tr>"
        "</thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


def _image_tag(path, html_dir, element_id):
    mime = IMAGE_TYPES[path.suffix.lower()]
    try:
        size = path.stat().st_size
        if size <= EMBED_LIMIT_BYTES:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            return (
                f'<img id="{element_id}" src="data:{mime};base64,{data}" '
                f'alt="{_esc(path.stem)}">'
            )
    except OSError:
        return f'<span class="small">{_esc(path.name)}: unreadable</span>'
    relative = Path(os.path.relpath(path, html_dir)).as_posix()
    return (
        f'<img id="{element_id}" src="{_esc(relative)}" alt="{_esc(path.stem)}" '
        'loading="lazy">'
    )


def _run_section(run, html_dir):
    grade = run.grade
    started = _started(run)
    meta = [f"folder <code>{_esc(run.name)}</code>"]
    if run.parent is not None:
        meta.append(
            f'variant of <a href="#run-{run.parent.number}">#{run.parent.number}</a>'
        )
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
        + _grade_badge(grade)
    )
    parts = [
        f'<section class="run" id="run-{run.number}">',
        f"<h3>{heading}</h3>",
        f'<div class="meta">{" · ".join(meta)}</div>',
        f'<div class="small">grade: {_esc(grade.reason)}</div>',
    ]
    if grade.rule and grade.rule.get("source"):
        parts.append(f'<div class="small">bar: {_esc(grade.rule["source"])}</div>')
    if run.config.get("command"):
        parts.append(f"<pre>{_esc(run.config['command'])}</pre>")
    if run.problems:
        parts.append(
            '<ul class="problems warn">'
            + "".join(f"<li>{_esc(p)}</li>" for p in run.problems)
            + "</ul>"
        )
    if run.evidence:
        parts.append(
            '<ul class="evidence">'
            + "".join(
                f'<li class="{"agrees" if ok else "disagrees"}">{_esc(text)}</li>'
                for ok, text in run.evidence
            )
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
            f"<figure>{_image_tag(p, html_dir, _plot_id(run, i))}"
            f"<figcaption>{_esc(p.name)}</figcaption></figure>"
            for i, p in enumerate(run.plots)
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


def group_by_lab(runs):
    by_lab = {}
    for run in runs:
        by_lab.setdefault(run.lab, []).append(run)
    return by_lab


def render_page(runs, the_rubric, specs, runs_dir, html_dir, student):
    counts = {}
    for run in runs:
        counts[run.grade.result] = counts.get(run.grade.result, 0) + 1
    count_badges = " ".join(
        _badge(f"{counts[result]} {GRADE_LABELS[result]}", _grade_css(result))
        for result in rubric.RESULTS
        if counts.get(result)
    )
    title = "Grading report" + (f" — {student}" if student else "")
    student_line = (
        (f'<div class="student">Student: <strong>{_esc(student)}</strong></div>')
        if student
        else ""
    )
    by_lab = group_by_lab(runs)
    sections = []
    for lab, spec in specs.items():
        if lab not in by_lab:
            continue
        _, result, sentence = lab_summary(by_lab[lab])
        columns = _lab_columns(by_lab[lab], spec)
        sections.append(
            f'<h3 class="lab" id="lab-{_key(lab)}">{_esc(spec.get("title") or lab)}'
            f" {_badge(result, _grade_css(result))}"
            f'<span class="small">{_esc(lab)}: {_esc(sentence)}</span></h3>'
            + _runs_table(lab, by_lab[lab], columns)
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
<h2>Labs</h2>
{_labs_table(by_lab, specs)}
<p class="small">Each lab's best run against its bar. A student checks the same
before submitting with <code>python -m labs.report --check RUNS_DIR</code>.</p>
<h2>Runs by lab</h2>
{"".join(sections)}
<p class="small">Click a column header to sort; a lab's first figure column is
its headline, and the highlighted cells are the figures a run's bar checks.
<code>--quick</code> smoke runs are labelled and never graded; interrupted or
diverged runs are graded incomplete; a run whose metrics.json disagrees with its
own predictions, history or variants is flagged.</p>
<h2>Rubric</h2>
{_rubric_table(runs, the_rubric["rules"])}
<h2>Run details</h2>
{"".join(_run_section(run, html_dir) for run in runs)}
</main>
<script>{SCRIPT}</script>
</body></html>
"""


# ---------------------------------------------------------- csv and --check
def summary_rows(runs, specs, student):
    """One dict per run: the CSV rows for a gradebook."""
    columns = []
    for lab, runs_of_lab in group_by_lab(runs).items():
        spec = specs.get(lab, {})
        columns += [c for c in _lab_columns(runs_of_lab, spec) if c not in columns]
    rows = []
    for run in runs:
        started = _started(run)
        grade = run.grade
        metric, value = headline_of(run, specs.get(run.lab, {}).get("columns", []))
        row = {
            "student": student or "",
            "run": run.number,
            "lab": run.lab,
            "arch": run.variant,
            "dataset": run.dataset,
            "status": run.status,
            "grade": grade.result,
            "rubric": grade.rule["title"] if grade.rule else "",
            "bar": rubric.bar_text(grade.rule) if grade.rule else "",
            "grade_note": grade.reason,
            "headline": metric or "",
            "headline_value": "" if value is None else value,
            "variant_of": run.parent.number if run.parent else "",
        }
        for key in columns:
            row[key] = run.metrics.get(key, "")
        row.update(
            {
                "params": run.metrics.get("params", ""),
                "epochs": run.metrics.get("epochs_run", run.history_rows or ""),
                "train_seconds": run.metrics.get("train_seconds", ""),
                "started": started.isoformat(sep=" ") if started else "",
                "evidence": "; ".join(
                    ("" if ok else "DISAGREES: ") + text for ok, text in run.evidence
                ),
                "folder": run.name,
                "command": run.config.get("command", ""),
            }
        )
        rows.append(row)
    return rows


def check_table(runs, specs):
    """(lines of the terminal table, labs that fail the check)."""
    by_lab = group_by_lab(runs)
    header = ("lab", "required", "result", "best run", "its figures vs the bar", "runs")
    rows, failing = [], []
    for lab, spec in specs.items():
        best, result, sentence = lab_summary(by_lab.get(lab, []))
        required = bool(spec.get("required"))
        if required and result != "pass":
            failing.append(lab)
        if not required and lab not in by_lab:
            continue
        figure, shown = "", ""
        if best is not None:
            shown = f"#{best.number} {best.variant} · {best.dataset}"
            figure = _grade_detail(best.grade, pretty=False) or f"status {best.status}"
        rows.append((lab, "yes" if required else "no", result, shown, figure, sentence))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines, failing


def run_check(runs, specs, runs_dir):
    lines, failing = check_table(runs, specs)
    print(f"self-check of {runs_dir}: each lab's best run against its bar")
    print("\n".join(lines))
    flagged = [r for r in runs if r.grade.result == "flagged"]
    for run in flagged:
        print(f"flagged: #{run.number} {run.name}: {run.grade.reason}")
    if failing:
        print(
            f"check: FAILED, {len(failing)} required lab(s) missing or not passing: "
            + ", ".join(failing)
        )
    else:
        print("check: passed, every required lab has a passing run")
    return 1 if failing else 0


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
    fields = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m labs.report",
        description="Write one static HTML grading page (and a CSV) over all runs "
        "below RUNS_DIR, or with --check print each lab's best run against its bar.",
    )
    parser.add_argument(
        "runs_dir",
        nargs="?",
        default="runs",
        metavar="RUNS_DIR",
        help="folder holding the run directories (default: runs)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="self-check: print per lab the best run against its bar (pass / fail "
        "/ missing) and exit 1 if a required lab is missing or not passing; "
        "writes nothing",
    )
    parser.add_argument(
        "--require",
        default=None,
        metavar="LABS",
        help="comma-separated labs that --check requires, by name or number "
        "(e.g. 0,1,lab2_rnn; default: the rubric's required labs)",
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
        help="a rubric file replacing labs/rubric.json (same format)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Write the page and the CSV; return {"index", "csv", "runs", "grades"}
    (with --check: print the table and return {"exit_code", "runs", "grades"})."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        what = "is not a folder" if runs_dir.exists() else "does not exist"
        raise ReportError(
            f"the runs directory {runs_dir} {what}. Labs write their runs under "
            f"runs/ in the folder they are started from (e.g. `{EXAMPLE}`): run a "
            "lab first, or pass the folder that holds the runs: "
            "`python -m labs.report PATH`."
        )
    try:
        the_rubric = rubric.load(args.rubric)
    except rubric.RubricError as error:
        raise ReportError(str(error)) from error
    runs = load_runs(runs_dir)
    if not runs and not args.check:
        raise ReportError(
            f"no runs found in {runs_dir}: a run is a folder holding a config.json, "
            f"written by a lab (e.g. `{EXAMPLE}` writes "
            "runs/lab2_rnn/<time>-3-weather/). Run a lab first, or pass the folder "
            "that holds the runs."
        )
    grade_runs(runs, the_rubric["rules"])
    required = None
    if args.require is not None:
        required = {item.strip() for item in args.require.split(",") if item.strip()}
    specs = lab_specs(runs, the_rubric, required)
    grades = {}
    for run in runs:
        grades[run.grade.result] = grades.get(run.grade.result, 0) + 1
    if args.check:
        code = run_check(runs, specs, runs_dir)
        return {"exit_code": code, "runs": len(runs), "grades": grades}
    html_path = Path(args.html) if args.html else runs_dir / "index.html"
    csv_path = Path(args.csv) if args.csv else runs_dir / "summary.csv"
    page = render_page(
        runs, the_rubric, specs, runs_dir, html_path.parent, args.student
    )
    rows = summary_rows(runs, specs, args.student)
    for path, text in ((html_path, page), (csv_path, _csv_text(rows))):
        try:
            _atomic_write(path, text)
        except OSError as error:
            raise ReportError(
                f"cannot write {path}: {error.strerror or error}. Pass --html PATH "
                "and --csv PATH in a folder you can write to."
            ) from error
    summary = ", ".join(f"{n} {g}" for g, n in sorted(grades.items()))
    print(f"{len(runs)} runs ({summary})")
    print(f"csv: {csv_path}")
    print(f"report: {html_path}")
    return {"index": html_path, "csv": csv_path, "runs": len(runs), "grades": grades}


def cli(argv=None):
    """main() with the exit-code contract: 0 ok (or --check passed), 1 a
    one-paragraph error (or --check failed), 2 usage."""
    try:
        result = main(argv)
    except ReportError as error:
        message = textwrap.fill(" ".join(str(error).split()), width=88)
        print(f"error: {message}", file=sys.stderr)
        return 1
    return result.get("exit_code", 0)


if __name__ == "__main__":
    sys.exit(cli())
