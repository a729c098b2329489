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
# # Lab 8: object detection: RetinaNet (one stage) vs Faster R-CNN (two), by mAP
#
# How a detector turns a feature map into boxes. Both detectors share a small ResNet
# and anchors of 3 sizes x 3 shapes per cell. **RetinaNet** (keras-hub) is one
# stage: a feature pyramid, a focal-loss classifier and a box regressor on every
# anchor, then non-max suppression. **Faster R-CNN**, written in the lab, is two: a
# region proposal network scores anchors as object or not, the best proposals are
# cut out of the feature map with ROI-Align, and a second head classifies and
# refines each. Both are scored the Pascal VOC way: average precision per class at
# IoU 0.5 and their mean (mAP), against a detector that puts each class's mean box
# on every image. The code is the lab's own (`labs/lab8_detection.py`, with
# `common/detection.py`); from a shell: `python -m labs.lab8_detection`.
#
# The default data are generated shapes (circles, squares, triangles, crosses);
# Pascal VOC 2007 comes through tensorflow-datasets, and your own images from a
# folder in the Pascal VOC layout (`--dataset folder:PATH`).

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
NEEDS = ["keras", "keras-nlp"]  # pip names (requirements.txt pins them)

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
# `FULL = False` is a quick run (2 epochs on 64 images: the detector finds next to
# nothing yet, and its mAP is near 0). `FULL = True` is the lab's full setting
# (README results table).

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--quick"]
ARCH = "retinanet"  # retinanet or faster-rcnn

# %%
import inspect
import time
import warnings
from pprint import pprint

import matplotlib.pyplot as plt
from IPython.display import Image, display
from matplotlib.patches import Rectangle

from common import experiment
from labs import lab8_detection as lab

# the lab's plotting module draws into files (Agg); figures here are shown inline:
# %matplotlib inline

RUNS = Path(os.environ.get("WORKBOOK_RUNS", "runs"))  # where run folders go


def new_run_folder(name):
    """A fresh run folder, as the command would make: runs/<lab>/notebook-<time>."""
    return RUNS / lab.LAB.name / f"notebook-{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def show_plot(run_folder, name):
    display(Image(filename=str(Path(run_folder) / "plots" / f"{name}.png")))


# keras-hub loads tqdm's notebook progress bar, which asks for ipywidgets: not needed
warnings.filterwarnings("ignore", message="IProgress not found")
pprint(lab.HYPERPARAMETERS, sort_dicts=False)

# %% [markdown]
# ## The data
# Each image comes with its boxes (corners x1, y1, x2, y2 in pixels) and their
# classes.

# %%
args = experiment.parse_args(lab.LAB, ["--arch", ARCH, *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))
print("classes:", splits.class_names)

figure, axes = plt.subplots(1, 6, figsize=(13, 2.6))
boxes, labels = splits.y_train["boxes"], splits.y_train["labels"]
for index, axis in enumerate(axes):
    axis.imshow(splits.x_train[index] / max(1.0, splits.x_train[index].max()))
    for box, label in zip(boxes[index], labels[index]):
        if label < 0:  # padding: images hold different numbers of boxes
            continue
        x1, y1, x2, y2 = box
        axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="w"))
        name = splits.class_names[int(label)]
        axis.text(x1, y1, name, color="w", fontsize=7, va="bottom")
    axis.set(xticks=[], yticks=[])
figure.suptitle("Training images and their true boxes")
plt.show()

# %% [markdown]
# ## The model
# The lab's builder for the chosen detector (the anchor size is fitted to the
# training boxes first, as the lab's `build` does):

# %%
print(inspect.getsource(lab.ARCHITECTURES[ARCH]))
model = lab.LAB.build(args, splits)
model.summary()

# %% [markdown]
# ## Train, evaluate, plot
# `experiment.run` is exactly what the command runs: Keras `fit` with the validation
# mAP measured after every epoch, one evaluation on the test set, and a run folder
# of plots and metrics (`runs/lab8_detection/...`).

# %%
run_folder = new_run_folder(ARCH)
metrics = experiment.run(lab.LAB, ["--arch", ARCH, *SMALL, "--out", str(run_folder)])

# %% [markdown]
# Learning curves; the validation mAP after every epoch against the mean-box
# baseline; test images with the detections and the true boxes; and precision
# against recall for every class.

# %%
plots = ("learning_curves", "validation_map", "test_detections", "precision_recall")
for name in plots:
    show_plot(run_folder, name)
print(
    f"test mAP@0.5 {metrics['map50']:.4f} (mean-box baseline "
    f"{metrics['mean_box_map50']:.4f})"
)

# %% [markdown]
# **Try:** `ARCH = "faster-rcnn"`; `"--compare"` in the `experiment.run` line
# trains both on the same data and seed; `"--dataset", "folder:.data/raccoon"` (a
# Pascal VOC folder, if you have one).
