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
# # Lab 9: architecture studies: what a choice of layers does, measured
#
# A study is a controlled comparison: the same data, seed and hyperparameters, one
# thing changed. **models**: fully connected vs CNN vs ResNet (accuracy, cost, the
# train-test gap); **kernels**: 3x3, 5x5, 7x7 and 1x1+3x3 on one parameter budget
# (receptive fields); **depth**: 2 to 16 layers with per-layer gradients recorded as
# it trains (fading in deep plain stacks; skips; clipping); **blocks**: residual
# block designs over seeds, to tell a difference from seed noise. Each study's
# report says from the numbers what it shows. The code is the lab's own
# (`labs/lab9_studies.py`); from a shell: `python -m labs.lab9_studies --study
# models`.

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
# `FULL = False` is a quick run of the whole study (2 epochs per variant on 256
# images: the mechanics only; its ranking means nothing). `FULL = True` is the
# lab's full setting (README results table).

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--quick"]
STUDY = "models"  # models, kernels, depth or blocks

# %%
import inspect
import time
from pprint import pprint

import matplotlib.pyplot as plt
from IPython.display import Image, Markdown, display

from common import experiment
from labs import lab9_studies as lab

# the lab's plotting module draws into files (Agg); figures here are shown inline:
# %matplotlib inline

RUNS = Path(os.environ.get("WORKBOOK_RUNS", "runs"))  # where run folders go


def new_run_folder(name):
    """A fresh run folder, as the command would make: runs/<lab>/notebook-<time>."""
    return RUNS / lab.LAB.name / f"notebook-{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def show_plot(run_folder, name):
    display(Image(filename=str(Path(run_folder) / "plots" / f"{name}.png")))


pprint(lab.HYPERPARAMETERS, sort_dicts=False)
for study, variants in lab.STUDIES.items():
    print(f"{study}: {', '.join(variants)}")

# %% [markdown]
# ## The data

# %%
args = experiment.parse_args(lab.LAB, ["--study", STUDY, *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))

figure, axes = plt.subplots(1, 10, figsize=(12, 1.8))
for axis, image, label in zip(axes, splits.x_train, splits.y_train):
    axis.imshow(image.squeeze(), cmap="gray_r")
    axis.set(xticks=[], yticks=[], title=splits.class_names[label])
figure.suptitle("The first training images and their labels")
plt.show()

# %% [markdown]
# ## The models
# Each variant is a builder `(x, num_classes, width)` that maps standardized images
# to class probabilities; `build_model` adds the input, the standardization and the
# optimizer. Two of the models study's variants:

# %%
for name in ("fc", "cnn"):
    print(inspect.getsource(lab.ARCHITECTURES[name]))
    variant = experiment.parse_args(lab.LAB, ["--arch", name, *SMALL])
    lab.LAB.build(variant, splits).summary()

# %% [markdown]
# ### Your turn: add a variant to the study
# A builder with the same signature, registered in `ARCHITECTURES`, trains alone
# with `--arch mine`; added to a study in `STUDIES` it joins the comparison.


# %%
def build_mine(x, num_classes, width):
    """The CNN with twice the filters."""
    return lab.build_cnn(x, num_classes, 2 * width)


lab.ARCHITECTURES["mine"] = build_mine
mine = experiment.parse_args(lab.LAB, ["--arch", "mine", *SMALL])
print(f"mine: {lab.LAB.build(mine, splits).count_params():,} parameters")
# lab.STUDIES["models"]["mine"] = build_mine  # uncomment: it joins the study below

# %% [markdown]
# ## Run the study
# `experiment.run` is exactly what the command runs: every variant trained on the
# same data and seed into its own sub-run, then the study's table, a comparison
# chart and the paragraph (`runs/lab9_studies/...`).

# %%
run_folder = new_run_folder(STUDY)
metrics = experiment.run(lab.LAB, ["--study", STUDY, *SMALL, "--out", str(run_folder)])

# %% [markdown]
# The comparison chart and the variants' learning curves (and for the depth study
# the gradient per layer), then the study's table and what it shows, as the run's
# report writes them.

# %%
for path in sorted((run_folder / "plots").glob("*.png")):
    show_plot(run_folder, path.stem)
report = (run_folder / "report.md").read_text()
for heading in (f"Study: {STUDY}", "What this shows"):
    if f"## {heading}" in report:
        section = report.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
        display(Markdown(f"#### {heading}\n{section}"))

# %% [markdown]
# **Try:** `STUDY = "depth"` (the gradient heat map shows the signal fading through
# a plain 16-layer stack and kept by skips); `STUDY = "kernels"`; `"--seeds", "3"`
# in the `experiment.run` line to tell a real difference from seed noise.
