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
# # Lab 0: first steps: an MLP fitting cos(x), and convolution as a Sobel filter
#
# Two small experiments with the lab's own code (`labs/lab0_basics.py`):
#
# 1. **cosine**: a three-layer fully connected network learns cos(x) from points of
#    one interval. Half the test points lie inside that interval, half just outside:
#    the network *interpolates*, it does not *extrapolate*.
# 2. **sobel**: a convolution slides a small kernel over an image. The fixed Sobel
#    kernels find edges in two real photographs; then one trainable 3x3 convolution,
#    randomly initialised, is fitted to (image, Sobel output) pairs until its kernel
#    *is* the Sobel kernel.
#
# The same lab runs from a shell: `python -m labs.lab0_basics` (README, "Running a
# lab"). This notebook calls the same functions, so what you change here is what the
# command runs.

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
NEEDS = ["keras"]  # pip names (requirements.txt pins them)

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
# `FULL = False` is a small run: 20 epochs, a few seconds each task, enough for the
# cosine lesson and for the kernel to move halfway to Sobel. `FULL = True` is the
# lab's full setting (up to 100 epochs, EarlyStopping), the one the README's
# results table measures.

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--epochs", "20"]

# %%
import inspect
import time
from pprint import pprint

import matplotlib.pyplot as plt
from IPython.display import Image, display

from common import experiment
from labs import lab0_basics as lab

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
# ## Part 1: an MLP learns cos(x)
# ### The data
# `load_data` returns the lab's `Splits`: training and validation points inside the
# interval, test points half inside and half in the bands just outside it.

# %%
args = experiment.parse_args(lab.LAB, ["--task", "cosine", *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))

inside = (splits.x_test[:, 0] >= args.interval[0]) & (
    splits.x_test[:, 0] <= args.interval[1]
)
plt.figure(figsize=(8, 3))
plt.plot(splits.x_train[:, 0], splits.y_train[:, 0], ".", ms=3, label="training")
plt.plot(
    splits.x_test[~inside, 0],
    splits.y_test[~inside, 0],
    ".",
    ms=3,
    label="test outside",
)
plt.xlabel("x (radians)")
plt.ylabel("cos(x)")
plt.title("Training points inside the interval; half the test points outside")
plt.legend()
plt.show()

# %% [markdown]
# ### The model
# The lab's builder, and the model it makes. Change `units` or `activation` here to
# see the parameter count change; for a run, pass `--activation relu` below.

# %%
print(inspect.getsource(lab.build_cosine_mlp))
model = lab.LAB.build(args, splits)
model.summary()

# %% [markdown]
# ### Train, evaluate, plot
# `experiment.run` is exactly what the command runs: it trains with Keras `fit`
# (EarlyStopping on the validation loss), evaluates on the test set, and writes a run
# folder of plots and metrics.

# %%
cosine_run = new_run_folder("cosine")
metrics = experiment.run(
    lab.LAB, ["--task", "cosine", *SMALL, "--out", str(cosine_run)]
)

# %% [markdown]
# The learning curves, then the network's output after several epochs: inside the
# green interval it follows cos(x); outside it does not (tanh flattens, relu goes on
# in a straight line). The lower panel is the error on a log scale.

# %%
show_plot(cosine_run, "learning_curves")
show_plot(cosine_run, "cosine_fit")
print(
    f"test MSE inside the interval {metrics['test_mse_inside']:.2e}, "
    f"outside {metrics['test_mse_outside']:.3f}"
)

# %% [markdown]
# **Try:** `"--activation", "relu"` (or gelu, sigmoid) in the `experiment.run` line,
# or `"--compare"` to train all four activations on the same data and seed.

# %% [markdown]
# ## Part 2: a trainable 3x3 convolution becomes the Sobel filter
# The data are grey tiles of scikit-learn's two photographs; the targets are the
# fixed Sobel filter's output on them. The model is a single convolution.

# %%
args = experiment.parse_args(lab.LAB, ["--task", "sobel", *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))
print(inspect.getsource(lab.build_learned_sobel))
model = lab.LAB.build(args, splits)
model.summary()

# %%
sobel_run = new_run_folder("sobel")
metrics = experiment.run(lab.LAB, ["--task", "sobel", *SMALL, "--out", str(sobel_run)])

# %% [markdown]
# The fixed Sobel filter on both photographs (and the learned kernel on the first),
# then the learned kernel at several epochs next to the Sobel kernel, and its
# distance to it after every epoch. In the small setting it is on its way; with
# `FULL = True` it arrives.

# %%
show_plot(sobel_run, "sobel_filters")
show_plot(sobel_run, "learned_kernels")
print(
    f"kernel distance to Sobel: {metrics['initial_kernel_error']:.3f} at random "
    f"initialisation, {metrics['kernel_error']:.3g} after training"
)
