"""Shared pieces of the workbook: used by two or more labs.

Importing this package sets the workbook's defaults before Keras is imported:
the PyTorch backend (a user's own ``KERAS_BACKEND`` wins), quiet TensorFlow logs
and matplotlib's file-only Agg backend.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
