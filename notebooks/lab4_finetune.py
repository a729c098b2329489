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
# # Lab 4: transfer learning with ResNet50V2, then fine-tuning
#
# Reuse a pretrained backbone in two phases. **Phase 1 (head):** the ResNet50V2
# backbone is frozen and called with `training=False` (its BatchNorm layers stay in
# inference mode), and only a new head learns. **Phase 2 (fine-tune):** the top
# residual blocks become trainable, BatchNorm stays frozen, the model is recompiled
# with a 10x lower learning rate and training continues the same history. The code
# is the lab's own (`labs/lab4_finetune.py`); from a shell:
# `python -m labs.lab4_finetune`.
#
# Offline there are no ImageNet weights: the backbone is random, so this run shows
# the *mechanics* of transfer learning, not its result (the course reached 0.93 on
# tf_flowers with ImageNet weights: `--dataset tf_flowers --weights imagenet` where
# the network is there). The default data are the embedded 8x8 digits, upsampled
# to 32x32 RGB inside the model.

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
# `FULL = False` is a quick run (2 epochs on 64 images: one head epoch, one
# fine-tuning epoch; its accuracy means little). `FULL = True` is the lab's full
# setting (README results table).

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--quick"]
MODE = "finetune"  # scratch, head or finetune

# %%
import inspect
import json
import time
from pprint import pprint

import matplotlib.pyplot as plt
from IPython.display import Image, display

from common import experiment
from labs import lab4_finetune as lab

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

# %%
args = experiment.parse_args(lab.LAB, ["--mode", MODE, *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))

figure, axes = plt.subplots(1, 10, figsize=(12, 1.8))
for axis, image, label in zip(axes, splits.x_train, splits.y_train):
    axis.imshow(image.squeeze(), cmap="gray_r")
    axis.set(xticks=[], yticks=[], title=splits.class_names[label])
figure.suptitle("Training images (8x8; the model resizes them to 32x32 RGB)")
plt.show()

# %% [markdown]
# ## The model
# The lab's builder puts a new head on ResNet50V2 (`common/transfer.py`). The
# summary shows the backbone as one layer; for the head phase its 23.5 million
# weights are frozen (non-trainable) and only the head's are trained.

# %%
print(inspect.getsource(lab.build_resnet50v2))
model = lab.LAB.build(args, splits)
model.summary()

# %% [markdown]
# ## Train (both phases), evaluate, plot
# `experiment.run` is exactly what the command runs: phase 1, then phase 2 in the
# same history, one evaluation on the test set, and a run folder of plots and
# metrics (`runs/lab4_finetune/...`, with the backbone as `base.weights.h5`).

# %%
run_folder = new_run_folder(MODE)
metrics = experiment.run(lab.LAB, ["--mode", MODE, *SMALL, "--out", str(run_folder)])

# %% [markdown]
# Trainable weights and speed in each phase (written by the run), then the learning
# curves (the dashed line marks where fine-tuning starts), the confusion matrix,
# misclassified test images, and grad-CAM: where in each image the prediction
# looked.

# %%
for phase in json.loads((run_folder / "parameters.json").read_text()):
    print(
        f"{phase['phase']:24s} trainable {phase['trainable']:>10,} of "
        f"{phase['total']:,}, learning rate {phase['learning_rate']:g}"
    )
for name in ("learning_curves", "confusion_matrix", "misclassified", "gradcam"):
    show_plot(run_folder, name)
print(f"test accuracy {metrics['test_accuracy']:.4f}")

# %% [markdown]
# **Try:** `MODE = "head"` (phase 1 only) or `"scratch"` (every layer from random
# weights); `"--compare"` in the `experiment.run` line trains all three on the same
# data; `"--unfreeze", "4"` fine-tunes more blocks.
