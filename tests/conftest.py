"""Test defaults (Keras on torch unless the caller chose a backend), and a helper
that runs a lab on another backend in a subprocess (a process has one backend)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see common/__init__.py

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("torch", "tensorflow", "jax")


def lab_subprocess(module, argv, backend, timeout=900, env=None):
    """Run ``python -m labs.<module> *argv`` with ``KERAS_BACKEND=backend``.

    Returns (returncode, stdout + stderr, metrics dict or {}); the metrics come
    from the folder named on the last ``run:`` line.
    """
    environment = {**os.environ, "KERAS_BACKEND": backend, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", f"labs.{module}", *map(str, argv)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    metrics = {}
    lines = [line for line in result.stdout.splitlines() if line.startswith("run: ")]
    if lines:
        path = Path(lines[-1][5:].strip())
        if not path.is_absolute():
            path = ROOT / path
        if (path / "metrics.json").is_file():
            metrics = json.loads((path / "metrics.json").read_text())
    return result.returncode, output, metrics


@pytest.fixture
def run_lab():
    """``run_lab(module, argv, backend)`` -> (returncode, output, metrics)."""
    return lab_subprocess


# Decoded image folders are cached (common.data); keep the tests' caches apart.
os.environ["WORKBOOK_CACHE"] = tempfile.mkdtemp(prefix="workbook-cache-")


def pytest_collection_modifyitems(config, items):
    """A test that runs a lab on another backend (the ``run_lab`` fixture, or a
    name that says so) belongs to the backend matrix: ``make test-backends``."""
    for item in items:
        named = "backend" in item.name and "active_backend" not in item.name
        if "run_lab" in getattr(item, "fixturenames", ()) or named:
            item.add_marker(pytest.mark.backends)
