"""The kernels on TensorFlow and JAX: their whole test files, in a subprocess each
(a process has one Keras backend; the in-process suite runs them on torch)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

KERNEL_TESTS = sorted(str(path) for path in (ROOT / "tests").glob("test_kernels_*.py"))


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_every_kernel_test_passes_on(backend):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_TESTS],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
