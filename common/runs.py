"""The run directory: one folder per run, never overwritten, written atomically.

```
config.json   every argument, backend, package versions, seed, host, start time
history.csv   one row per epoch, written as it goes   (common.callbacks)
history.json  the same rows, plus epoch time and learning rate
metrics.json  flat final figures, with status
model.keras   the best model
plots/*.png   learning_curves.png always, and the lab's own
report.md     a short human summary with the plots embedded
```
"""

import contextlib
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common.cli import WorkbookError, first_line

RUNS_ROOT = Path("runs")
BACKUP = "backup"  # keras.callbacks.BackupAndRestore's folder inside a run
PACKAGES = ("keras", "torch", "numpy", "tensorflow", "sklearn", "keras_tuner")


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _json_safe(value):
    """Numbers that JSON can hold: numpy scalars to Python, NaN and inf to None."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path, data):
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def package_versions():
    """Versions of the packages already imported (importing TF just to ask is slow)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "unknown")
    return versions


def keras_fixes():
    """Whether common.speedups's fixes to Keras's torch backend are in place."""
    speedups = sys.modules.get("common.speedups")
    return "installed" if speedups is not None and speedups.installed() else "off"


def _slug(text):
    keep = "".join(c if c.isalnum() or c in "_." else "-" for c in str(text))
    return "-".join(part for part in keep.split("-") if part)[:40] or "data"


def _prepare_directory(out, lab, arch, dataset):
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise WorkbookError(
                f"--out {out} is a file, not a folder. Give a new or empty folder."
            )
        if path.exists() and any(path.iterdir()):
            raise WorkbookError(
                f"--out {out} already holds files, and a run never overwrites "
                "another. Choose a new folder, or leave out --out to get a fresh "
                f"timestamped folder under {RUNS_ROOT / lab}/."
            )
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = RUNS_ROOT / lab / f"{stamp}-{_slug(arch)}-{_slug(dataset)}"
        path, number = base, 1
        while path.exists():
            number += 1
            path = base.with_name(f"{base.name}-{number}")
    try:
        (path / "plots").mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise WorkbookError(
            f"cannot write the run directory {path}: {error.strerror or error}. "
            "Pass --out with a folder you can write to (and check the disk has space)."
        ) from error
    return path


class Run:
    """A run directory being written. Create it with :meth:`Run.create`."""

    def __init__(self, path, lab, config, initial_rows=()):
        self.sections = []
        self.path = Path(path)
        self.lab = lab
        self.config = config
        self.plots = self.path / "plots"
        self.started = time.time()
        self.initial_rows = list(initial_rows)

    @property
    def resumed(self):
        return bool(self.config.get("resumed"))

    @classmethod
    def reopen(cls, lab, args, requires_checkpoint=True):
        """An interrupted run to continue: its history is trimmed to the checkpoint."""
        path = Path(args.resume)
        config = json.loads((path / "config.json").read_text())
        try:
            rows = json.loads((path / "history.json").read_text())
        except (OSError, ValueError):
            rows = []
        metadata = path / BACKUP / "training_metadata.json"
        if not requires_checkpoint:
            config["resumed"] = config.get("resumed", 0) + 1
            run = cls(path, lab, config)
            run.write_config()
            print(f"resuming {path}")
            return run
        if not metadata.exists():
            raise WorkbookError(
                f"--resume {path}: the run has no checkpoint ({metadata} is missing), "
                "so it cannot continue where it stopped. Start a new run instead."
            )
        epochs_done = json.loads(metadata.read_text()).get("epoch", 0)
        config["resumed"] = config.get("resumed", 0) + 1
        config["resumed_at_epoch"] = epochs_done
        run = cls(path, lab, config, initial_rows=rows[:epochs_done])
        run.write_config()
        print(f"resuming {path} after epoch {epochs_done}")
        return run

    @classmethod
    def create(cls, lab, args, argv, requires_checkpoint=True):
        """Make the folder (refusing a non-empty ``--out``) and write config.json."""
        import keras

        if getattr(args, "resume", None):
            return cls.reopen(lab, args, requires_checkpoint)
        arch = getattr(args, "arch", "default")
        path = _prepare_directory(args.out, lab, arch, args.dataset)
        config = {
            "lab": lab,
            "arch": str(arch),
            "dataset": args.dataset,
            "command": "python -m labs." + lab + " " + shlex.join(argv),
            "argv": list(argv),
            "args": vars(args),
            "backend": keras.backend.backend(),
            "keras_fixes": keras_fixes(),
            "versions": package_versions(),
            "seed": args.seed,
            "host": platform.node(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "started": datetime.now().isoformat(timespec="seconds"),
        }
        run = cls(path, lab, config)
        run.write_config()
        print(f"run directory: {path}")
        return run

    def write_config(self, **extra):
        """(Re)write config.json, adding ``extra`` keys such as the data summary."""
        self.config.update(extra)
        self.config["versions"] = package_versions()
        atomic_write_json(self.path / "config.json", self.config)

    def write_json(self, name, data):
        atomic_write_json(self.path / name, data)

    def write_metrics(self, metrics):
        atomic_write_json(self.path / "metrics.json", metrics)

    def save_model(self, model, name="model.keras"):
        """Save ``model`` as .keras through a temporary file and a rename."""
        target = self.path / name
        temporary = self.path / f".tmp-{name}"
        with _without_tensorflow():
            model.save(temporary)
        os.replace(temporary, target)
        return target

    def add_section(self, heading, markdown):
        """A section of report.md (a lab's table, a generated paragraph)."""
        self.sections.append((heading, markdown))

    def write_report(self, title, metrics, sections=()):
        """report.md: command, data, figures, and every plot embedded."""
        lines = [f"# {title}", "", "```", self.config["command"], "```", ""]
        data = self.config.get("data")
        if data:
            lines += ["## Data", ""]
            lines += [f"- {key}: {value}" for key, value in data.items()]
            lines.append("")
        lines += ["## Figures", "", "| metric | value |", "|---|---|"]
        for key, value in metrics.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"| {key} | {value} |")
        lines.append("")
        for heading, text in [*self.sections, *sections]:
            lines += [f"## {heading}", "", text.rstrip(), ""]
        plots = sorted(self.plots.glob("*.png"))
        if plots:
            lines += ["## Plots", ""]
            lines += [f"![{plot.stem}](plots/{plot.name})" for plot in plots]
            lines.append("")
        atomic_write_text(self.path / "report.md", "\n".join(lines))

    def load_model(self, name="model.keras"):
        return load_model(self.path / name)

    def finish(self):
        """The last line a lab prints."""
        print(f"run: {self.path}")


@contextlib.contextmanager
def _without_tensorflow():
    """Keras's serializer asks whether TensorFlow is importable (to recognise TF
    shapes and dtypes) and so imports it, 4-5 s, in a run that never used it. A
    process that has not imported TensorFlow holds no TF object: say it is absent."""
    from keras.src.utils import module_utils

    lazy = module_utils.tensorflow
    if "tensorflow" in sys.modules or lazy._available is not None:
        yield
        return
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = None


def seed_everything(seed):
    """Seed Python, NumPy, the backend and Keras's global SeedGenerator.

    ``keras.utils.set_random_seed`` does this too, but it imports TensorFlow just
    to seed it whenever TF is installed (about 5 s at every lab start). So it is
    called only when TF is already loaded (a tf.data lab); otherwise the same
    steps are taken without TF.
    """
    import random

    import keras
    import numpy as np

    if "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def load_model(path):
    """``keras.saving.load_model`` with safe_mode on, and a clear refusal.

    A .keras file that names a class this workbook does not register (a custom
    layer from elsewhere, or a Lambda holding code) is refused, never executed.
    """
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (TypeError, ValueError) as error:
        raise WorkbookError(
            f"refused to load {path}: it needs an object this workbook does not "
            f"register or would run code from the file ({first_line(error)}). "
            "Only models saved by the workbook's labs load; if you trust the file, "
            "load it yourself with keras.saving.load_model(path, safe_mode=False)."
        ) from error
    except OSError as error:
        raise WorkbookError(
            f"cannot read the model file {path} ({error}). Check the path."
        ) from error
