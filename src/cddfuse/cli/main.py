"""Entry point of the ``cddfuse`` command.

Each subcommand lives in its own module ``cddfuse.cli.<name>`` exposing
``register(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func(args) -> int``.
Errors derived from :class:`cddfuse.errors.CDDFuseError` are printed as one line
(``cddfuse: error: ...``) with their exit code (2 usage, 1 failure), never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import warnings
from typing import Any, Callable, NoReturn

from .. import __version__
from ..errors import CDDFuseError, CDDFuseWarning

SUBCOMMANDS = ("fuse", "align", "eval", "bench", "prepare", "train", "distill", "serve", "export", "tune")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        # `kill` then cleans up like Ctrl-C: temporary files removed, finished outputs kept.
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
    except KeyboardInterrupt:
        print(f"cddfuse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
