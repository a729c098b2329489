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
# # Lab 5: text classification and word order
#
# Text becomes token ids in the input pipeline (`common/text.py`), so every model is
# plain Keras on every backend: **TextCNN** (convolutions over 3, 4 and 5 words,
# max-over-time pooling), a **BiGRU with additive attention** (which shows the words
# that decided), a keras-hub **Transformer** encoder, **word2vec** (skip-gram with
# negative sampling), frozen pretrained vectors under an MLP, and a **bag of words**
# (scikit-learn logistic regression) that shows what word order buys. The code is
# the lab's own (`labs/lab5_text.py`); from a shell: `python -m labs.lab5_text`.
#
# The default data are generated reviews in which word order decides the label
# ("not good", "good but dull", "although dull, superb"); real IMDB reviews come
# through tensorflow-datasets (`--dataset imdb_reviews`) or the aclImdb folder
# (`--dataset folder:PATH`).

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
# `FULL = False` is a small run: 3 epochs (well under a minute on a CPU; enough for
# TextCNN to classify nearly every test review). `FULL = True` trains until
# EarlyStopping stops it (at most 10 epochs; README results table).

# %%
FULL = False  # True: the lab's full setting (README results table)
SMALL = [] if FULL else ["--epochs", "3"]
ARCH = "textcnn"  # textcnn, bigru-attention, transformer, embeddings-mlp, word2vec, bow

# %%
import inspect
import time
from pprint import pprint

from IPython.display import Image, Markdown, display

from common import experiment
from labs import lab5_text as lab

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
# Each review is text with a label; the lab turns it into a fixed number of token
# ids (padding in front), with a vocabulary adapted on the training texts only.

# %%
args = experiment.parse_args(lab.LAB, ["--arch", ARCH, *SMALL])
splits = experiment.load_splits(lab.LAB, args)
print(experiment.describe_data(splits))
print("classes:", splits.class_names, "| vocabulary:", len(splits.vocabulary), "words")
for review, label in zip(splits.texts["train"][:5], splits.y_train[:5]):
    print(f"{splits.class_names[label]:>9}: {review}")
ids = splits.x_train[0]
print("\nthe first review as token ids:", ids)
print("and back to words:", " ".join(splits.vocabulary[i] for i in ids if i > 0))

# %% [markdown]
# ## The model
# TextCNN, as Kim (2014) wrote it: an embedding, one convolution per window width,
# the maximum of each filter over the review, dropout and a softmax.

# %%
print(inspect.getsource(lab.build_textcnn))
model = lab.LAB.build(args, splits)
model.summary()

# %% [markdown]
# ### Your turn
# Every builder is a function `(args, splits)` in `ARCHITECTURES`. The BiGRU with
# attention, for comparison (set `ARCH = "bigru-attention"` in the Settings cell and
# run the notebook again to train it and see its attention plot):

# %%
print(inspect.getsource(lab.build_bigru_attention))
other = experiment.parse_args(lab.LAB, ["--arch", "bigru-attention", *SMALL])
lab.LAB.build(other, splits).summary()

# %% [markdown]
# ## Train, evaluate, plot
# `experiment.run` is exactly what the command runs: Keras `fit` with EarlyStopping
# on the validation loss, one evaluation on the test set, and a run folder of plots
# and metrics (`runs/lab5_text/...`).

# %%
run_folder = new_run_folder(ARCH)
metrics = experiment.run(lab.LAB, ["--arch", ARCH, *SMALL, "--out", str(run_folder)])

# %% [markdown]
# The run's plots (learning curves and the confusion matrix; attention for the
# BiGRU and the Transformer; a map of word vectors for word2vec), then the test
# reviews it got wrong, most confident first, from the run's report.

# %%
for path in sorted((run_folder / "plots").glob("*.png")):
    show_plot(run_folder, path.stem)
report = (run_folder / "report.md").read_text()
if "## Misclassified" in report:
    mistakes = report.split("## Misclassified", 1)[1].split("\n## ", 1)[0]
    display(Markdown("#### Misclassified" + mistakes))

# %% [markdown]
# **Try:** `ARCH = "bow"` (no word order: "not good" and "good" look alike to it);
# `"--compare"` in the `experiment.run` line trains every classifier on the same
# data and seed; `ARCH = "word2vec"` learns word vectors and shows their neighbours.
