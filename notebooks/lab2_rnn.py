# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 2: recurrent networks: SimpleRNN vs LSTM vs GRU
#
# How a recurrent layer reads a sequence one step at a time, and why gated cells
# (LSTM, GRU) carry information over long spans where a plain SimpleRNN cannot. The
# code is the lab's own (`labs/lab2_rnn.py`); from a shell the same run is
# `python -m labs.lab2_rnn --arch 3`.
#
# The data are real: Seattle's daily weather of 2012-2015 (shipped in the
# `vega-datasets` package). A model reads the last 14 days (maximum and minimum
# temperature, precipitation, wind) and forecasts tomorrow's maximum temperature.
# The splits are consecutive in time: the last 365 days test, the 180 before them
# validate. Two baselines stand beside the model: repeating today's maximum
# (persistence) and always predicting the training mean.

# %% [markdown]
# ## Set up
# Run this cell first. It chooses the Keras backend (before Keras is imported:
# restart the kernel to switch) and makes the workbook importable: locally it finds
# the repository around this notebook; on Colab it clones `WORKBOOK_GIT` and
# installs the pinned packages Colab lacks.

# %%
import os
import subprocess
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"  # or "tensorflow" or "jax"
WORKBOOK_GIT = "https://github.com/OWNER/REPOSITORY.git"  # Colab: the workbook's URL
NEEDS = ["keras", "vega-datasets"]  # pip names (requirements.txt pins them)

COLAB = "google.colab" in sys.modules
ROOT = next((p for p in (Path.cwd(), Path.cwd().parent) if (p / "labs").is_dir()), None)
if ROOT is None and COLAB:
    quiet = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # fail, never ask
    clone = ["git", "clone", "-q", "--depth=1", WORKBOOK_GIT, "workbook"]
    subprocess.run(clone, env=quiet)
    ROOT = Path("workbook").resolve() if Path("workbook/labs").is_dir() else None
if ROOT is None:
    raise RuntimeError(
        "This notebook needs the workbook's labs/ and common/ folders. Open it from "
        "the notebooks/ folder of the repository, or on Colab set WORKBOOK_GIT in "
        "this cell to the repository's git URL and run the cell again."
    )
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))
from notebooks.pins import install_missing  # noqa: E402

WANTED = install_missing(NEEDS, COLAB)
print(f"workbook: {ROOT}, backend: {os.environ['KERAS_BACKEND']}")

# %% [markdown]
# ## Settings
# `FULL = False` is a small run: 15 epochs (seconds on a CPU; enough for the LSTM
# to pull ahead of persistence). `FULL = True` trains until EarlyStopping stops it
# (at most 80 epochs), as the command does (README results table).

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--epochs", "15"]
ARCH = "3"  # the course's architectures "1", "2", "3"
CELL = "lstm"  # simple (SimpleRNN), lstm or gru

# %%
import inspect
import time
from pprint import pprint

import matplotlib.pyplot as plt
from IPython.display import Image, display

from common import experiment
from labs import lab2_rnn as lab

# the lab's plotting module draws into files (Agg); figures here are shown inline:
# %matplotlib inline

RUNS = Path(os.environ.get("WORKBOOK_RUNS", "runs"))  # where run folders go


def new_run_folder(name):
    """A fresh run folder, as the command would make: runs/<lab>/notebook-<time>."""
    return RUNS / lab.LAB.name / f"notebook-{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def show_plot(run_folder, name):
    display(Image(filename=str(Path(run_folder) / "plots" / f"{name}.png")))


pprint(lab.HYPERPARAMETERS, sort_dicts=False)

# %% [markdown]
# ## The data
# Each sample is a window of 14 days; the target is the next day's maximum
# temperature (standardised for training; here back in degrees C).

# %%
args = experiment.parse_args(lab.LAB, ["--arch", ARCH, "--cell", CELL, *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))
print("one sample:", splits.x_train.shape[1:], "(days, features)")

offset, scale = splits.notes.get("target_scale", (0.0, 1.0))
start = 0
plt.figure(figsize=(11, 3))
for part in ("train", "val", "test"):
    target = offset + scale * getattr(splits, f"y_{part}")
    days = range(start, start + len(target))
    plt.plot(days, target, lw=0.8, label=f"{part} ({len(target)} windows)")
    start += len(target)
plt.xlabel("window (day order)")
plt.ylabel("next day's max (degrees C)")
plt.title("Targets of the three splits, consecutive in time")
plt.legend()
plt.show()

# %% [markdown]
# ## The model
# Each architecture is a function `(x, cell, units)`; `recurrent` makes the one
# layer `--cell` swaps. Architecture 3 stacks two recurrent layers:

# %%
print(inspect.getsource(lab.build_arch3))
model = lab.LAB.build(args, splits)
model.summary()

# %% [markdown]
# ### Your turn
# The same architecture with another cell is one flag away; compare the parameter
# counts (an LSTM has four sets of weights per layer, a GRU three, a SimpleRNN one).

# %%
for cell in ("simple", "gru"):
    other = experiment.parse_args(lab.LAB, ["--arch", ARCH, "--cell", cell, *SMALL])
    print(f"{cell}: {lab.LAB.build(other, splits).count_params():,} parameters")

# %% [markdown]
# ## Train, evaluate, plot
# `experiment.run` is exactly what the command runs: Keras `fit` with EarlyStopping
# on the validation loss (best weights restored), one evaluation on the test year,
# and a run folder of plots and metrics (`runs/lab2_rnn/...`).

# %%
run_folder = new_run_folder(f"arch{ARCH}-{CELL}")
argv = ["--arch", ARCH, "--cell", CELL, *SMALL, "--out", str(run_folder)]
metrics = experiment.run(lab.LAB, argv)

# %% [markdown]
# The learning curves, then the test year: observed maxima, persistence, and the
# model's forecasts.

# %%
show_plot(run_folder, "learning_curves")
show_plot(run_folder, "predictions")
for key in ("mse", "persistence_mse", "baseline_mse", "ridge_mse"):
    if key in metrics:
        print(f"{key:16s} {metrics[key]:8.3f} (degrees C squared)")

# %% [markdown]
# **Try:** `CELL = "simple"` (it only ties with persistence on this series); the
# long-memory lesson: `"--dataset", "adding", "--compare"` in `argv` trains all three
# cells on the adding problem (50 steps; the gated cells solve it, SimpleRNN does
# not).
