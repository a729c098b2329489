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
# # Lab 1: convolutional networks, augmentation, model selection
#
# How a CNN is put together (convolution, BatchNorm, pooling, a classifier head),
# what preprocessing does when it is shown rather than hidden (a `Normalization`
# layer adapted on the training images; augmentation as layers active only in
# training), and how architectures compare on the same data. The code is the lab's
# own (`labs/lab1_cnn.py`); from a shell the same run is
# `python -m labs.lab1_cnn --arch baseline --augment basic`.
#
# The default data are scikit-learn's 1,797 real 8x8 handwritten digits (shipped
# with the package, so this runs offline). Real MNIST and CIFAR-10 come through
# tensorflow-datasets (`--dataset mnist`) or image folders (`--dataset folder:PATH`).

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
NEEDS = ["keras", "keras-tuner"]  # pip names (requirements.txt pins them)

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
# `FULL = False` is a small run: 6 epochs on the digits (seconds on a CPU; enough
# for the baseline to pass 95 %). `FULL = True` trains until EarlyStopping stops it
# (at most 30 epochs), as the command does. `ARCH` is one of the lab's
# architectures below.

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--epochs", "6"]
ARCH = "baseline"  # mlp, plain, baseline, vgg, resnet, alexnet, transfer
AUGMENT = "basic"  # none, basic, randaugment, mixup, cutmix

# %%
import inspect
import time
from pprint import pprint

import matplotlib.pyplot as plt
from IPython.display import Image, display

from common import experiment
from labs import lab1_cnn as lab

# the lab's plotting module draws into files (Agg); figures here are shown inline:
# %matplotlib inline

RUNS = Path(os.environ.get("WORKBOOK_RUNS", "runs"))  # where run folders go


def new_run_folder(name):
    """A fresh run folder, as the command would make: runs/<lab>/notebook-<time>."""
    return RUNS / lab.LAB.name / f"notebook-{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def show_plot(run_folder, name):
    display(Image(filename=str(Path(run_folder) / "plots" / f"{name}.png")))


pprint(lab.HYPERPARAMETERS, sort_dicts=False)
print("architectures:", list(lab.ARCHITECTURES))

# %% [markdown]
# ## The data
# The lab's loader returns `Splits`: train, validation and test, disjoint, images
# as float32 in [0, 1].

# %%
args = experiment.parse_args(lab.LAB, ["--arch", ARCH, "--augment", AUGMENT, *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))

figure, axes = plt.subplots(1, 10, figsize=(12, 1.8))
for axis, image, label in zip(axes, splits.x_train, splits.y_train):
    axis.imshow(image[..., 0], cmap="gray_r")
    axis.set(xticks=[], yticks=[], title=splits.class_names[label])
figure.suptitle("The first training images and their labels")
plt.show()

# %% [markdown]
# ## The model
# Every architecture is a function `(x, num_classes, width, dropout, activation)` in
# the registry `ARCHITECTURES`; `build_model` puts augmentation and a
# `Normalization` layer in front and compiles. Here is the baseline's code and the
# model it makes:

# %%
print(inspect.getsource(lab.build_baseline))
model = lab.LAB.build(args, splits)
model.summary()

# %% [markdown]
# ### Your turn: change a layer
# Write a builder with the same signature from the lab's pieces (`conv_bn`, `pool`,
# `pooled_head`) and register it; `ARCH = "mine"` then trains it below. This one
# adds a third stage of convolutions.


# %%
def build_mine(x, num_classes, width, dropout, activation):
    for stage, filters in enumerate((width, 2 * width, 4 * width), start=1):
        x = lab.conv_bn(x, filters, activation, f"stage{stage}a")
        x = lab.conv_bn(x, filters, activation, f"stage{stage}b")
        x = lab.pool(x, f"stage{stage}_pool")
    return lab.pooled_head(x, num_classes, dropout)


lab.ARCHITECTURES["mine"] = build_mine
mine = experiment.parse_args(lab.LAB, ["--arch", "mine", *SMALL])
lab.LAB.build(mine, splits).summary()
# ARCH = "mine"  # uncomment to train your builder in the next cell

# %% [markdown]
# ## Train, evaluate, plot
# `experiment.run` is exactly what the command runs: Keras `fit` with EarlyStopping
# on the validation loss (best weights restored), one evaluation on the test set,
# and a run folder of plots and metrics (`runs/lab1_cnn/...`).

# %%
run_folder = new_run_folder(ARCH)
argv = ["--arch", ARCH, "--augment", AUGMENT, *SMALL, "--out", str(run_folder)]
metrics = experiment.run(lab.LAB, argv)

# %% [markdown]
# Training and validation curves; augmented copies of training images (the warp is
# active in training only); the test confusion matrix; and test images the model
# got wrong.

# %%
for name in ("learning_curves", "augmentation", "confusion_matrix", "misclassified"):
    show_plot(run_folder, name)
print(f"test accuracy {metrics['test_accuracy']:.4f}")

# %% [markdown]
# **Try:** `ARCH = "resnet"` or `"mine"`; `"--activation", "gelu"` in `argv`;
# `AUGMENT = "randaugment"`; `"--compare"` in `argv` trains every architecture on
# the same data and seed; `"--search", "8"` runs a keras-tuner search on the
# validation set first, then retrains the best setting.
