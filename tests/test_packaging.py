"""Packaging contracts: one source of dependencies, the README quick start, CI."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(text):
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return sorted(line for line in lines if line)


def test_environment_yml_pip_section_matches_requirements():
    requirements = requirement_lines((ROOT / "requirements.txt").read_text())
    environment = (ROOT / "environment.yml").read_text()
    pip_section = environment.split("- pip:", 1)[1]
    pinned = sorted(re.findall(r"^\s+-\s+(\S+==\S+)\s*$", pip_section, re.M))
    assert pinned == requirements
    assert "conda-forge" in environment and "python=3.11" in environment


def test_requirements_are_pinned_and_torch_is_the_cpu_pin():
    requirements = requirement_lines((ROOT / "requirements.txt").read_text())
    assert all("==" in line for line in requirements), requirements
    assert "torch==2.13.0" in requirements
    names = {line.split("==")[0].lower() for line in requirements}
    assert {
        "keras",
        "tensorflow-cpu",
        "tensorflow-datasets",
        "keras-nlp",
        "keras-tuner",
        "scikit-learn",
        "matplotlib",
        "numpy",
        "pytest",
    } <= names


def quick_start_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:sh|bash|shell)?\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "Quick start holds exactly one fenced block"
    return [line for line in blocks[0].splitlines() if line.strip()]


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "python -m labs.lab2_rnn --arch 3" in makefile.replace("$(PY)", "python")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_every_lab_in_the_results_table_names_its_command_and_data():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if re.match(r"\| lab\d", line)]
    assert rows, "the results table has no rows"
    tracked = subprocess.run(
        ["git", "ls-files", "labs"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    labs = {Path(path).stem.split("_")[0] for path in tracked if "/lab" in path}
    labs.discard("labs")
    assert labs <= {row.split("|")[1].strip().split()[0] for row in rows}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert "python -m labs." in row or "python -m bench." in row, row
        assert any(char.isdigit() for char in cells[-1]), row  # a measured figure
