"""Every lab has a notebook; each notebook's .ipynb matches its py:percent source
(jupytext pairs; the .py is the source of truth), and runs headless from top to
bottom in its quick setting, with the model summary and the plots in its outputs.

The kernel is this interpreter (the venv's python), from a kernel spec written to
a temporary folder: nothing is registered with Jupyter, and a ``python3`` kernel
spec elsewhere on the machine cannot stand in for it.
"""

import json
import os
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LABS = sorted(path.stem for path in (ROOT / "labs").glob("lab[0-9]*_*.py"))
SOURCES = sorted(path.stem for path in NOTEBOOKS.glob("lab[0-9]*_*.py"))
CELL_TIMEOUT = 600  # seconds; a quick notebook takes well under a minute


def cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_lab_has_a_notebook_pair():
    assert LABS, "no lab modules found"
    for name in LABS:
        assert (NOTEBOOKS / f"{name}.py").is_file(), f"notebooks/{name}.py is missing"
        assert (NOTEBOOKS / f"{name}.ipynb").is_file(), (
            f"notebooks/{name}.ipynb is missing: run "
            f"`.venv/bin/jupytext --sync notebooks/{name}.py`"
        )
    orphans = {path.stem for path in NOTEBOOKS.glob("*.ipynb")} - set(SOURCES)
    assert not orphans, f"notebooks without a py:percent source: {sorted(orphans)}"


@pytest.mark.parametrize("name", SOURCES)
def test_notebook_pair_in_sync(name):
    """The .ipynb holds the .py's cells, in order, and no outputs (they are made
    by running it, not committed)."""
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    paired = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert cells(paired) == cells(source), (
        f"notebooks/{name}.ipynb differs from notebooks/{name}.py: run "
        f"`.venv/bin/jupytext --sync notebooks/{name}.py`"
    )
    formats = paired.metadata.get("jupytext", {}).get("formats", "")
    assert "py:percent" in formats, f"{name}.ipynb is not paired with py:percent"
    with_outputs = [
        index
        for index, cell in enumerate(paired.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count)
    ]
    assert not with_outputs, f"{name}.ipynb has outputs in cells {with_outputs}"


def test_setup_cell_outside_the_repository_says_what_to_do(tmp_path, monkeypatch):
    """Opened away from the repository (and not on Colab), the first cell stops with
    one paragraph naming the remedy, and changes neither directory nor backend."""
    setup = jupytext.read(NOTEBOOKS / "lab0_basics.py").cells[2].source
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "KERAS_BACKEND", "torch")
    with pytest.raises(RuntimeError, match="WORKBOOK_GIT") as error:
        exec(setup, {})
    assert "notebooks/ folder" in str(error.value)
    assert Path.cwd() == tmp_path


def test_setup_cell_on_colab_clones_the_workbook(tmp_path, monkeypatch):
    """On Colab (faked; the repository as WORKBOOK_GIT) the first cell clones the
    workbook and works from it; the pinned packages are here, so none installs."""
    setup = jupytext.read(NOTEBOOKS / "lab2_rnn.py").cells[2].source
    url = re.search(r"^WORKBOOK_GIT = .*$", setup, re.M)
    assert url, "the first cell no longer names WORKBOOK_GIT"
    setup = setup.replace(url.group(0), f"WORKBOOK_GIT = {str(ROOT)!r}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(os.environ, "KERAS_BACKEND", "torch")
    names = {}
    exec(setup, names)
    clone = tmp_path / "workbook"
    assert names["ROOT"] == clone and Path.cwd() == clone
    assert (clone / "labs" / "lab2_rnn.py").is_file() and str(clone) in sys.path
    assert names["WANTED"] == []


def venv_kernel(folder):
    """A KernelManager for this interpreter, from a kernel spec in ``folder``."""
    spec = folder / "kernels" / "workbook"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "workbook", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    specs = KernelSpecManager(
        kernel_dirs=[str(folder / "kernels")], ensure_native_kernel=False
    )
    return KernelManager(kernel_name="workbook", kernel_spec_manager=specs)


def outputs_of(notebook):
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ]


def text_of(output):
    return output.get("text", "") + output.get("data", {}).get("text/plain", "")


def execute(name, folder, backend=None):
    """Run every cell of notebooks/<name>.py in a fresh kernel, with the notebook's
    folder as the working directory (as Jupyter opens it) and runs written under
    ``folder``; ``backend`` replaces the first cell's choice. Any error cell
    raises. Returns the executed notebook."""
    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
    if backend:
        setup = notebook.cells[2]
        choice = 'os.environ["KERAS_BACKEND"] = "torch"'
        assert choice in setup.source, "the first code cell no longer sets the backend"
        setup.source = setup.source.replace(choice, choice.replace("torch", backend))
    environment = {**os.environ, "WORKBOOK_RUNS": str(folder / "runs")}
    environment.pop(
        "MPLBACKEND", None
    )  # the kernel's own inline backend, as in Jupyter
    environment.pop("KERAS_BACKEND", None)  # the notebook sets it
    client = NotebookClient(
        notebook,
        km=venv_kernel(folder),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute(env=environment)
    return notebook


def check_outputs(notebook, folder, backend="torch"):
    outputs = outputs_of(notebook)
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(text_of(output) for output in outputs)
    assert f"backend: {backend}" in text
    assert "Total params" in text, "no model.summary() in the outputs"
    assert "run: " in text, "the lab's run did not finish (no `run:` line)"
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert images, "no plot shown inline"
    runs = list((folder / "runs").glob("*/*/metrics.json"))
    assert runs, "no run folder with metrics.json under WORKBOOK_RUNS"
    config = json.loads((runs[0].parent / "config.json").read_text())
    assert config["backend"] == backend


@pytest.mark.parametrize("name", SOURCES)
def test_notebook_runs(name, tmp_path):
    """The notebook runs top to bottom in its small setting, with the model summary,
    the lab's run and its plots in the outputs; runs go to a temporary folder."""
    check_outputs(execute(name, tmp_path), tmp_path)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_notebook_on_other_backend(backend, tmp_path):
    """The first cell's other two backends work (one notebook; backend matrix)."""
    check_outputs(execute("lab2_rnn", tmp_path, backend), tmp_path, backend)
