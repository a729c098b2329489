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
# # Lab 7: autoencoder embeddings, and a random forest on 1,000 of them
#
# An autoencoder, trained only to reproduce its input through a narrow layer, learns
# a small code for each image without labels. The codes are then features for a
# classic classifier that sees few labels: a scikit-learn random forest on 1,000
# labelled training images, as the course set it. The same forest on the raw pixels
# and on a PCA of the same size says whether the learned embedding helps. The code
# is the lab's own (`labs/lab7_autoencoder.py`); from a shell:
# `python -m labs.lab7_autoencoder`.
#
# The default data are the embedded 8x8 digits; real MNIST comes through
# tensorflow-datasets (`--dataset mnist`) or a folder of PNGs.

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
# `FULL = False` is a small run: 10 epochs and forests of 50 trees (seconds on a
# CPU; the reconstructions are recognisable digits). `FULL = True` is the lab's full
# setting (at most 60 epochs, 200 trees; README results table).

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--epochs", "10", "--trees", "50"]
ARCH = "conv"  # conv or dense
EMBEDDING = "16"  # numbers per image in the code

# %%
import inspect
import time
from pprint import pprint

import matplotlib.pyplot as plt
from IPython.display import Image, display

from common import experiment
from labs import lab7_autoencoder as lab

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
# Images with labels; the autoencoder never sees the labels, the forest sees
# `--labelled` of them.

# %%
argv = ["--arch", ARCH, "--embedding-dim", EMBEDDING, *SMALL]
args = experiment.parse_args(lab.LAB, argv)
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))

figure, axes = plt.subplots(1, 10, figsize=(12, 1.8))
for axis, image, label in zip(axes, splits.x_train, splits.y_train):
    axis.imshow(image.squeeze(), cmap="gray_r")
    axis.set(xticks=[], yticks=[], title=splits.class_names[label])
figure.suptitle("Training images (the autoencoder does not see the labels)")
plt.show()

# %% [markdown]
# ## The model
# The convolutional autoencoder: two stride-2 convolutions down to the layer named
# `embedding`, and their mirror back up to the image.

# %%
print(inspect.getsource(lab.build_conv))
model = lab.LAB.build(args, splits)
model.summary()

# %% [markdown]
# ### Your turn: change the network
# A builder with the same signature, registered in `ARCHITECTURES`, is trained by
# the next cells with `ARCH = "mine"`. This one is the dense autoencoder with a
# wider hidden layer; the lab finds the code by its name, `embedding`.


# %%
def build_mine(input_shape, embedding_dim, noise=0.0, seed=0, width=32):
    model = lab.build_dense(input_shape, embedding_dim, noise, seed, 2 * width)
    model.name = "mine"
    return model


lab.ARCHITECTURES["mine"] = build_mine
mine = experiment.parse_args(lab.LAB, ["--arch", "mine", *SMALL])
print(f"mine: {lab.LAB.build(mine, splits).count_params():,} parameters")
# ARCH = "mine"  # uncomment to train your builder in the next cell

# %% [markdown]
# ## Train, evaluate, plot
# `experiment.run` is exactly what the command runs: the autoencoder through Keras
# `fit` (input as its own target, EarlyStopping on the validation reconstruction
# loss), then the forests on embeddings, raw pixels and PCA, and a run folder of
# plots and metrics (`runs/lab7_autoencoder/...`).

# %%
run_folder = new_run_folder(ARCH)
argv = ["--arch", ARCH, "--embedding-dim", EMBEDDING, *SMALL, "--out", str(run_folder)]
metrics = experiment.run(lab.LAB, argv)

# %% [markdown]
# Learning curves; test images and their reconstructions; a t-SNE map of the test
# embeddings coloured by the labels the autoencoder never saw; and the forest's
# confusion matrix.

# %%
plots = ("learning_curves", "reconstructions", "embedding_tsne", "confusion_matrix")
for name in plots:
    show_plot(run_folder, name)
for key, value in metrics.items():
    if key.endswith("accuracy"):
        print(f"{key:32s} {value:.4f}")

# %% [markdown]
# **Try:** `ARCH = "dense"`; `EMBEDDING = "32"`; `"--noise", "0.3"` in `argv` (a
# denoising autoencoder); `"--compare"` trains embedding sizes 8 to 128.
