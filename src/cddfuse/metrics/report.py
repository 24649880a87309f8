"""Text output of metric results: aligned table, Markdown, CSV and JSON."""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..options import REPORT_FORMATS

__all__ = ["FORMATS", "format_rows", "format_number", "choose_format", "to_json"]

FORMATS = REPORT_FORMATS
_SUFFIX_FORMATS = {".md": "md", ".markdown": "md", ".csv": "csv", ".json": "json", ".txt": "table"}


def choose_format(fmt: str | None, output: str | None) -> str:
    """The explicit ``--format``, else the one the output file's suffix implies, else ``table``."""
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    if output:
        return _SUFFIX_FORMATS.get(Path(output).suffix.lower(), "table")
    return "table"


def format_number(v: float, decimals: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{decimals}f}"


def format_rows(header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, decimals: int = 4,
                separator_before: int | None = None) -> str:
    """Format a table whose first column is a label and the others numbers.

    ``table``: aligned plain text (``separator_before``: index of a row preceded by a rule);
    ``md``: Markdown, numbers right-aligned; ``csv``: full precision (shortest exact repr).
    """
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([r[0]] + [repr(float(x)) for x in r[1:]])
        return buf.getvalue()
    cells = [[str(r[0])] + [format_number(float(x), decimals) for x in r[1:]] for r in rows]
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines) + "\n"
    if fmt != "table":
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    widths = [max(len(str(header[i])), *(len(c[i]) for c in cells)) if cells else len(str(header[i]))
              for i in range(len(header))]
    def line(c: Sequence[str]) -> str:
        return "  ".join([c[0].ljust(widths[0])] + [c[i].rjust(widths[i]) for i in range(1, len(c))]).rstrip()
    out: list[str] = [line([str(h) for h in header])]
    for i, c in enumerate(cells):
        if separator_before is not None and i == separator_before:
            out.append("-" * len(out[0]))
        out.append(line(c))
    return "\n".join(out) + "\n"


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"
