"""Entry point of the ``cddfuse`` command.

Each subcommand lives in its own module ``cddfuse.cli.<name>`` exposing
``register(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func(args) -> int``.
Errors derived from :class:`cddfuse.errors.CDDFuseError` are printed as one line
(``cddfuse: error: ...``) with their exit code (2 usage, 1 failure), never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, NoReturn

from .. import __version__
from ..errors import CDDFuseError, CDDFuseWarning

SUBCOMMANDS = ("fuse", "align", "eval", "bench", "prepare", "train", "distill", "serve", "export", "tune")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, as every other error (the usage is one ``--help`` away)."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cddfuse",
        description=(
            "CDDFuse multi-modality image fusion (Zhao et al., CVPR 2023): fuse infrared with visible "
            "images, or CT/PET/SPECT with MRI; evaluate fusion metrics; train your own model."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cddfuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:  # a subcommand module not written yet
            if e.name == f"{__package__}.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def process_start() -> float:
    """When this process started, as a :func:`time.monotonic` value (Linux: from ``/proc``; elsewhere,
    and if that fails: now). ``cddfuse train --max-time`` counts from there when it is the command
    being run, so that the interpreter's start and the imports count too."""
    now = time.monotonic()
    try:
        with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime: clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_s
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - age if 0 <= age < 3600 else now


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: this process's command line); returns the exit code."""
    started = process_start() if argv is None else time.monotonic()  # argv given: called from Python
    if threading.current_thread() is threading.main_thread():
        # `kill` then cleans up like Ctrl-C: temporary files removed, finished outputs kept.
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.started = started
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args.command)
        return _run(args)


def _one_line_warning(command: str) -> Callable[..., None]:
    def show(message: Warning, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = message.cli if isinstance(message, CDDFuseWarning) else str(message)
        print(f"cddfuse {command}: warning: {text}", file=sys.stderr)
    return show


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except CDDFuseError as e:
        print(f"cddfuse {args.command}: error: {e.cli_message()}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the machine's side (full disk, permissions) where no library code named it
        where = f" ({e.filename})" if e.filename else ""
        print(f"cddfuse {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"cddfuse {args.command}: error: out of memory; lower --max-memory (or free memory)", file=sys.stderr)
        return 1
    except RuntimeError as e:  # PyTorch reports a failed allocation as a RuntimeError, not a MemoryError
        if "allocate" not in str(e) and "out of memory" not in str(e):
            raise
        print(f"cddfuse {args.command}: error: out of memory ({' '.join(str(e).split())[:120]}); lower "
              "--max-memory (or free memory)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cddfuse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
