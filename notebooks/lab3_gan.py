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
# # Lab 3: generative adversarial networks: vanilla GAN, DCGAN, WGAN-GP
#
# How a GAN is trained by Keras's own `fit`: one `keras.Model` holds a generator and
# a discriminator (a critic for WGAN-GP), each updated by its own optimizer, and
# overrides `train_step`. The code is the lab's own (`labs/lab3_gan.py`); from a
# shell the same run is `python -m labs.lab3_gan`.
#
# On the *ring* (8 Gaussians on a circle, generated) mode collapse is seen rather
# than read about: a vanilla GAN often covers only some of the 8 modes, WGAN-GP
# covers all of them (README results table). On images (embedded 8x8 digits at
# 16x16, or MNIST and CIFAR-10 through tensorflow-datasets) the quality is a Frechet
# distance in the features of a small classifier trained by the lab (not the
# Inception FID).

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
# `FULL = False` is a quick run (seconds: 2 epochs on 1,024 points; the samples are
# one blob that covers no mode yet). `FULL = True` is the lab's full setting (README
# results table: about half a minute of training for mlp, two minutes for wgan-gp,
# on 2 CPU cores).

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--quick"]
ARCH = "mlp"  # mlp (vanilla GAN), dcgan (needs images), wgan-gp
DATASET = "ring"  # ring (points), digits (images); dcgan needs digits

# %%
import inspect
import time

import keras
import matplotlib.pyplot as plt
from IPython.display import Image, display

from common import experiment
from labs import lab3_gan as lab

# the lab's plotting module draws into files (Agg); figures here are shown inline:
# %matplotlib inline

RUNS = Path(os.environ.get("WORKBOOK_RUNS", "runs"))  # where run folders go


def new_run_folder(name):
    """A fresh run folder, as the command would make: runs/<lab>/notebook-<time>."""
    return RUNS / lab.LAB.name / f"notebook-{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def show_plot(run_folder, name):
    display(Image(filename=str(Path(run_folder) / "plots" / f"{name}.png")))


print("architectures:", list(lab.ARCHITECTURES))

# %% [markdown]
# ## The data
# The ring: points drawn around 8 centres on a circle. A generator that covers
# every mode puts samples near all 8.

# %%
args = experiment.parse_args(lab.LAB, ["--arch", ARCH, "--dataset", DATASET, *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))
if splits.x_train.ndim == 2:  # points
    plt.figure(figsize=(4, 4))
    plt.scatter(*splits.x_train[:1000].T, s=2)
    plt.gca().set_aspect("equal")
    plt.title("1,000 training points")
else:  # images
    figure, axes = plt.subplots(1, 10, figsize=(12, 1.6))
    for axis, image in zip(axes, splits.x_train):
        axis.imshow(image.squeeze(), cmap="gray")
        axis.set(xticks=[], yticks=[])
plt.show()

# %% [markdown]
# ## The networks
# `ARCHITECTURES` names each GAN's loss; its two networks are built with the
# functional API by the builders below (dense ones for mlp, and for wgan-gp on the
# ring; convolutional ones for dcgan, and for wgan-gp on images, whose critic has no
# BatchNorm). The lab's `build` puts them into one GAN model that `fit` trains.

# %%
print(lab.ARCHITECTURES)
kind = "mlp" if ARCH == "mlp" or splits.x_train.ndim == 2 else "dcgan"
for part in ("generator", "discriminator"):
    print(inspect.getsource(getattr(lab, f"build_{kind}_{part}")))

# %% [markdown]
# ## Train, evaluate, plot
# `experiment.run` is exactly what the command runs: `fit` on the GAN, sample
# quality on the validation split every epoch (the best epoch is kept), the test
# split once at the end, and a run folder of plots and metrics.

# %%
run_folder = new_run_folder(ARCH)
argv = ["--arch", ARCH, "--dataset", DATASET, *SMALL, "--out", str(run_folder)]
metrics = experiment.run(lab.LAB, argv)

# %% [markdown]
# The trained generator, saved by the run as `generator.keras` (a plain functional
# model: noise in, a sample out):

# %%
generator = keras.saving.load_model(run_folder / "generator.keras")
generator.summary()

# %% [markdown]
# The run's plots: learning curves (losses and the quality measure), samples as
# training goes on, and the final samples against the data.

# %%
for path in sorted((run_folder / "plots").glob("*.png")):
    print(path.name)
    show_plot(run_folder, path.stem)

# %% [markdown]
# **Try:** `ARCH = "wgan-gp"` on the ring (all 8 modes in the full setting); `ARCH =
# "dcgan"` with `DATASET = "digits"`; `"--compare"` in `argv` trains every
# architecture on the same data and seed.
