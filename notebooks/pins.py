"""The notebooks' first cell, second half: the pinned packages a notebook needs,
installed on Colab when missing or different (requirements.txt holds the pins)."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_missing(needs, colab):
    """Install (on Colab) or name (elsewhere) the pins of ``needs`` not installed;
    returns them as ``name==version`` strings."""
    pins = dict(
        line.split("==")
        for line in Path("requirements.txt").read_text().split()
        if "==" in line
    )
    wanted = [f"{name}=={pins[name]}" for name in needs if version(name) != pins[name]]
    if wanted and colab:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *wanted], check=True
        )
    elif wanted:
        print("note: not the pinned versions:", *wanted, "(make setup builds .venv)")
    return wanted
