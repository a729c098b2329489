"""The shared command line: argument parser, validation and the exit-code contract.

Every lab builds its parser with :func:`make_parser` and runs through :func:`run`:

- exit 0 on success, 2 on a usage error (argparse), 1 on a runtime error with one
  paragraph saying what went wrong and what to do (``--debug`` shows the traceback),
  130 when the user pressed Ctrl-C (the run keeps what it wrote so far).
"""

import argparse
import json
import sys
import traceback
from pathlib import Path


class WorkbookError(Exception):
    """An error a user can fix: the message says what went wrong and what to do."""

    exit_code = 1


class RunInterrupted(WorkbookError):
    """Training stopped by Ctrl-C; the run directory keeps its history and plots."""

    exit_code = 130


def _whole_number(text, minimum):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def first_line(error):
    """``Type: first line of the message``, short enough for a one-paragraph error."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def positive_int(text):
    """argparse type: a whole number >= 1."""
    return _whole_number(text, 1)


def non_negative_int(text):
    """argparse type: a whole number >= 0."""
    return _whole_number(text, 0)


def positive_float(text):
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction(text):
    """argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def make_parser(
    lab,
    description,
    architectures,
    default_arch,
    default_dataset,
    datasets_help,
    epochs=20,
    batch_size=64,
    learning_rate=1e-3,
    patience=5,
):
    """The parser every lab shares; a lab adds its own flags to what this returns."""
    parser = argparse.ArgumentParser(
        prog=f"python -m labs.{lab}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        default=default_arch,
        choices=list(architectures),
        help="model architecture",
    )
    parser.add_argument("--dataset", default=default_dataset, help=datasets_help)
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=epochs,
        help="maximum number of epochs (EarlyStopping may stop sooner)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=batch_size)
    parser.add_argument("--learning-rate", type=positive_float, default=learning_rate)
    parser.add_argument(
        "--patience",
        type=positive_int,
        default=patience,
        help="EarlyStopping patience in epochs (on the validation set)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--out",
        default=None,
        help="write the run exactly into this new or empty folder "
        "(default: runs/<lab>/<time>-<arch>-<dataset>/)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: tiny subset, at most 2 epochs"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue an interrupted run from its last checkpoint, with the same "
        "arguments and history (other flags are taken from its config.json)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback on errors"
    )
    return parser


def resume_argv(argv, lab):
    """With ``--resume RUN_DIR`` in argv: that run's own arguments, plus --resume.

    A resumed run must repeat the interrupted command exactly (same data split,
    model and seed), so its arguments come from the run's config.json.
    """
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--resume", default=None)
    finder.add_argument("--debug", action="store_true")
    known, _ = finder.parse_known_args(argv)
    if known.resume is None:
        return list(argv)
    directory = Path(known.resume)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise WorkbookError(
            f"--resume {directory}: no readable config.json there ({error}). Give "
            "the folder of an interrupted run, as printed on its 'run:' line."
        ) from error
    if config.get("lab") != lab:
        raise WorkbookError(
            f"--resume {directory} is a run of {config.get('lab')}, not {lab}. "
            f"Resume it with python -m labs.{config.get('lab')} --resume {directory}."
        )
    try:
        status = json.loads((directory / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        status = None
    if status in ("completed", "early_stopped"):
        raise WorkbookError(
            f"--resume {directory}: that run already finished (status {status}); "
            "there is nothing to resume. Start a new run instead."
        )
    original = list(config.get("argv", []))
    if "--resume" in original:
        index = original.index("--resume")
        del original[index : index + 2]
    extra = ["--debug"] if known.debug and "--debug" not in original else []
    return original + extra + ["--resume", str(directory)]


def paragraph(text):
    """A message as one paragraph on one line: the terminal wraps it, so a command
    or flag in it is never broken across lines (and tests compare it as it is)."""
    return " ".join(str(text).split())


def run(main, argv=None):
    """Call ``main(argv)`` and turn errors into the exit-code contract."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        main(argv)
    except WorkbookError as error:
        if debug:
            traceback.print_exc()
        print(f"\nerror: {paragraph(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        return 130
    except OSError as error:
        if debug:
            raise
        where = f" {error.filename}" if error.filename else ""
        message = (
            f"could not read or write{where}: {error.strerror or error}. Check that "
            "the disk has space and the folder is writable, then run again "
            "(an interrupted run can be continued with --resume RUN_DIR)."
        )
        print(f"\nerror: {paragraph(message)}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001  (last resort: no traceback for users)
        if debug:
            raise
        message = (
            f"unexpected {type(error).__name__}: {error}. This is probably a bug in "
            "the workbook, not in your command; rerun with --debug for the traceback "
            "and report it with the run's config.json."
        )
        print(f"\nerror: {paragraph(message)}", file=sys.stderr)
        return 1
    return 0
