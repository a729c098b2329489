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
# # Lab 6: semantic segmentation with a U-Net, and what its skip connections do
#
# Segmentation is classification of every pixel. The U-Net's encoder (convolutions
# and pooling) trades resolution for context, its decoder upsamples back to full
# size, and the skip connections hand the decoder the encoder's fine detail (`--arch
# no-skip` removes them: outlines and the thin border class suffer). Augmentation
# moves image and mask together. Pixel accuracy is measured against the
# majority-class baseline, and mean IoU is the stricter measure. The code is the
# lab's own (`labs/lab6_unet.py`); from a shell: `python -m labs.lab6_unet`.
#
# The default data are generated scenes (discs, squares and triangles with a border
# class on textured backgrounds); Oxford-IIIT Pets come through tensorflow-datasets
# (`--dataset oxford_iiit_pet`) and your own images and masks from a folder.

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
# `FULL = False` is a quick run (2 epochs on 32 scenes: the mechanics only, the
# predicted masks are still noise). `FULL = True` is the lab's full setting (README
# results table; a U-Net on 1,500 scenes is slow on a CPU).

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--quick"]
ARCH = "unet"  # unet or no-skip

# %%
import inspect
import time
from pprint import pprint

import matplotlib.pyplot as plt
from IPython.display import Image, display

from common import experiment
from labs import lab6_unet as lab

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
# Each example is an image and a mask holding one class index per pixel.

# %%
from matplotlib.patches import Patch

args = experiment.parse_args(lab.LAB, ["--arch", ARCH, *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))
print("classes:", splits.class_names)
print("training pixel shares:", splits.notes["train_pixel_shares"])

figure, axes = plt.subplots(2, 6, figsize=(12, 5))
for column in range(6):
    axes[0, column].imshow(splits.x_train[column])
    axes[1, column].imshow(
        splits.y_train[column], cmap="tab10", vmin=0, vmax=9, interpolation="nearest"
    )
    for axis in axes[:, column]:
        axis.set(xticks=[], yticks=[])
axes[0, 0].set_ylabel("image")
axes[1, 0].set_ylabel("mask (class colours)")
colors = plt.get_cmap("tab10").colors
patches = [Patch(color=colors[i], label=n) for i, n in enumerate(splits.class_names)]
figure.legend(handles=patches, loc="lower center", ncol=len(patches), title="class")
figure.suptitle("Training scenes and their masks")
plt.show()

# %% [markdown]
# ## The model
# The U-Net builder: encoder blocks with pooling, a bottleneck, decoder blocks with
# upsampling, each concatenated with the encoder's output at its resolution; one
# logit per class and pixel.

# %%
print(inspect.getsource(lab.build_unet))
model = lab.LAB.build(args, splits)
model.summary()

# %% [markdown]
# ### Your turn: change the network
# A builder with the same signature, registered in `ARCHITECTURES`, is trained by
# every later cell with `ARCH = "mine"`. This one is a shallower, wider U-Net (two
# poolings instead of four); compare its parameter count with the one above.


# %%
def build_mine(shape, classes, normalization, depth=4, width=8):
    return lab.build_unet(shape, classes, normalization, 2, 2 * width, name="mine")


lab.ARCHITECTURES["mine"] = build_mine
mine = experiment.parse_args(lab.LAB, ["--arch", "mine", *SMALL])
print(f"mine: {lab.LAB.build(mine, splits).count_params():,} parameters")
# ARCH = "mine"  # uncomment to train your builder in the next cell

# %% [markdown]
# ## Train, evaluate, plot
# `experiment.run` is exactly what the command runs: Keras `fit` on augmented pairs
# with EarlyStopping on the validation loss, one evaluation on the test set, and a
# run folder of plots and metrics (`runs/lab6_unet/...`).

# %%
run_folder = new_run_folder(ARCH)
metrics = experiment.run(lab.LAB, ["--arch", ARCH, *SMALL, "--out", str(run_folder)])

# %% [markdown]
# Learning curves; augmented training pairs (image and mask moved alike); the
# worst, best and random test images with their true and predicted masks; and the
# test IoU of every class.

# %%
for name in ("learning_curves", "augmentation", "segmentation_examples", "class_iou"):
    show_plot(run_folder, name)
print(
    f"pixel accuracy {metrics['pixel_accuracy']:.3f} (majority-class baseline "
    f"{metrics['majority_baseline']:.3f}), mean IoU {metrics['mean_iou']:.3f}"
)

# %% [markdown]
# **Try:** `ARCH = "no-skip"`, or `"--compare"` in the `experiment.run` line (U-Net
# vs no-skip on the same data and seed); `"--augment", "none"`.
