"""The grading rubric: bars as data (labs/rubric.json), and how a run meets them.

The rubric file holds two things (its "about" field says the same):

- ``labs``: per lab module, a title, the metric columns of the grading page (the
  first one a run has is its headline figure) and whether ``--check`` requires a
  passing run of it;
- ``rules``: the bars. The first rule whose ``lab``, ``arch`` and ``dataset``
  patterns match a run grades it, and the run passes when every one of its
  ``checks`` holds. A check compares a metric with a number (``threshold``) or with
  another metric of the same run (``than``: "mse < persistence_mse"). Every rule
  says where its numbers came from (``source``); ``kind`` is ``course`` (a bar of
  the original course, on a real dataset) or ``workbook`` (measured on the offline
  data with the committed code, set below the measured mean minus spread);
  ``provisional`` marks one not yet backed by the README's results table.

``--rubric FILE`` replaces the whole file. An older rubric, a JSON list of rules with
one ``metric``/``op``/``threshold`` each, still loads. Nothing here imports Keras.
"""

import json
import math
import operator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

DEFAULT_PATH = Path(__file__).with_name("rubric.json")
OPERATORS = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
FAILED_SIGN = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
# What a grade can be, best first (``--check`` and the lab summary pick the best).
RESULTS = ("pass", "fail", "flagged", "incomplete", "n/a", "variant", "quick")
QUICK_LABEL = "--quick smoke run on a tiny subset: labelled, never graded"
UNFINISHED = ("interrupted", "diverged", "incomplete", "unknown")


class RubricError(Exception):
    """A rubric file that cannot be used; the message says what to fix."""


@dataclass
class Grade:
    result: str  # one of RESULTS
    reason: str
    rule: dict | None = None
    value: float | None = None  # the first check's figure
    checks: list = field(default_factory=list)  # (check, value, limit, passed)


def number(value):
    """A finite or non-finite float, or None for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def as_list(value):
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def matches(value, patterns):
    return any(fnmatchcase(str(value).lower(), str(p).lower()) for p in patterns)


# -------------------------------------------------------------------- loading
def _fix(message, path):
    where = f"the rubric {path}" if path else "the rubric"
    return RubricError(
        f"{where}: {message} See labs/rubric.json for the format, or leave out "
        "--rubric for the built-in one."
    )


def _checks_of(rule, index, path):
    checks = rule.get("checks")
    if checks is None and "metric" in rule:  # the older one-bar form
        checks = [{k: rule[k] for k in ("metric", "op", "threshold") if k in rule}]
    if not isinstance(checks, list) or not checks:
        raise _fix(f'rule {index + 1} has no "checks" (a list of bars).', path)
    for check in checks:
        if (
            not isinstance(check, dict)
            or not isinstance(check.get("metric"), str)
            or check.get("op", ">=") not in OPERATORS
            or (number(check.get("threshold")) is None)
            == (not isinstance(check.get("than"), str))
        ):
            raise _fix(
                f'rule {index + 1} has a check that is not {{"metric": NAME, "op": '
                '">=" | ">" | "<=" | "<", and a numeric "threshold" or "than": '
                "ANOTHER_METRIC}; fix that rule.",
                path,
            )
        check.setdefault("op", ">=")
    return checks


def parse(data, path=None):
    """The rubric from its JSON data: {"labs": {...}, "rules": [...]}, or a list."""
    labs = data.get("labs", {}) if isinstance(data, dict) else {}
    rules = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(rules, list) or not isinstance(labs, dict):
        raise _fix('it must hold {"labs": {...}, "rules": [...]} (or a list).', path)
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise _fix(f"rule {index + 1} is not a JSON object.", path)
        rule["checks"] = _checks_of(rule, index, path)
        rule.setdefault("id", f"rule-{index + 1}")
        rule.setdefault("title", rule["id"])
        rule.setdefault("kind", "course")
    for name, spec in labs.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("columns", []), list):
            raise _fix(f'lab {name} must be {{"title", "columns": [...]}}.', path)
    return {"labs": labs, "rules": rules}


def load(path=None):
    """The rubric from ``path`` (default labs/rubric.json)."""
    source = Path(path) if path else DEFAULT_PATH
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise _fix(
            f"cannot be read ({getattr(error, 'strerror', None) or error}).", source
        ) from error
    return parse(data, source)


# -------------------------------------------------------------------- grading
def rule_applies(rule, lab, variants, dataset):
    """Whether ``rule`` covers a run of ``lab`` with these variant names (arch,
    cell, mode, best variant) on ``dataset``; a missing key matches anything."""
    labs = as_list(rule.get("lab"))
    if labs is not None and not matches(lab, labs):
        return False
    archs = as_list(rule.get("arch"))
    if archs is not None and not any(matches(v, archs) for v in variants):
        return False
    datasets = as_list(rule.get("dataset"))
    return datasets is None or matches(dataset, datasets)


def bar_text(rule):
    return " and ".join(
        f"{c['metric']} {c['op']} {c.get('than') or format(c['threshold'], 'g')}"
        for c in rule["checks"]
    )


def evaluate_check(check, metrics):
    """(value, limit, passed): passed is None when a figure is missing."""
    value = number(metrics.get(check["metric"]))
    limit = number(metrics.get(check["than"])) if "than" in check else None
    if "than" not in check:
        limit = float(check["threshold"])
    if value is None or limit is None or math.isnan(value) or math.isnan(limit):
        return value, limit, None
    return value, limit, bool(OPERATORS[check["op"]](value, limit))


def grade(metrics, status, quick, rule):
    """The grade of one run's metrics under ``rule`` (None: no bar covers it)."""
    if quick:
        return Grade("quick", QUICK_LABEL)
    if status in UNFINISHED:
        return Grade(
            "incomplete",
            f"status {status}: an unfinished run is not graded; run it to the end",
            rule,
        )
    if rule is None:
        return Grade("n/a", "no rubric bar for this lab, architecture and dataset")
    checks, parts = [], []
    for check in rule["checks"]:
        value, limit, passed = evaluate_check(check, metrics)
        checks.append((check, value, limit, passed))
        if passed is None:
            missing = check["metric"] if value is None else check.get("than")
            parts.append(f"metrics.json has no {missing}")
        else:
            sign = check["op"] if passed else FAILED_SIGN[check["op"]]
            against = (
                f"{check['than']} {limit:.4g}" if "than" in check else f"{limit:g}"
            )
            parts.append(f"{check['metric']} {value:.4g} {sign} {against}")
    passed = all(p for *_, p in checks)
    return Grade(
        "pass" if passed else "fail",
        f"{rule['title']}: " + "; ".join(parts),
        rule,
        checks[0][1],
        checks,
    )


def better(first, second):
    """Whether grade ``first`` beats ``second`` (pass over fail over the rest;
    between two graded runs of one rule, the better first figure)."""
    rank = RESULTS.index
    if rank(first.result) != rank(second.result):
        return rank(first.result) < rank(second.result)
    if first.value is None or second.value is None or first.rule is not second.rule:
        return second.value is None and first.value is not None
    op = first.rule["checks"][0]["op"]
    return (
        first.value > second.value if op.startswith(">") else first.value < second.value
    )
