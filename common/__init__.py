"""Shared pieces of the workbook: used by two or more labs.

Importing this package sets the workbook's defaults before Keras is imported:
the PyTorch backend (a user's own ``KERAS_BACKEND`` wins), quiet TensorFlow logs,
matplotlib's file-only Agg backend, and OpenMP threads that sleep instead of
spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``, read when torch loads): on
a 2-core machine shared with other jobs, spinning threads made Lab 1 5-10x slower
(bench/README.md, "Threads"); with a free core it measured the same as spinning.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
