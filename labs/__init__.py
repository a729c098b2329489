"""The labs: one module per lab, each run as ``python -m labs.<module>``."""

import common  # noqa: F401  (sets KERAS_BACKEND=torch before any lab imports keras)
