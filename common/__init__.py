"""Shared pieces of the workbook: used by two or more labs.

Importing this package sets the workbook's defaults before Keras is imported:
the PyTorch backend (a user's own ``KERAS_BACKEND`` wins), quiet TensorFlow logs,
matplotlib's file-only Agg backend, and OpenMP threads that sleep instead of
spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``, read when torch loads): on
a 2-core machine shared with other jobs, spinning threads made Lab 1 5-10x slower
(bench/README.md, "Threads"); with a free core it measured the same as spinning.

TensorFlow 2.21's C++ libraries print absl/oneDNN/cudart lines straight to the
process's stderr while they load, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. Whoever
imports TensorFlow first (Keras's TF backend, tensorflow-datasets, keras-hub), it
loads here with file descriptor 2 pointed at /dev/null; a Python error during the
import is still raised as usual.
"""

import contextlib
import importlib.machinery
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def stderr_silenced():
    """Point file descriptor 2 at /dev/null for the block (C++ log lines too)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietTensorFlow:
    """A meta-path finder that loads the ``tensorflow`` package quietly."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            with stderr_silenced():
                loader_exec(module)

        spec.loader.exec_module = exec_module
        return spec


if "tensorflow" not in sys.modules and not any(
    isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path
):
    sys.meta_path.insert(0, _QuietTensorFlow())
