"""Write docs/pypi.md, the package's long description on the package index, from README.md.

The index shows the description without the repository, so relative links and images would
break there. This copy keeps everything else of the README: a relative image is left out (its
caption, an italic line right after it, too), a relative link becomes its text followed by the
path in the source tree. tests/test_docs.py checks that docs/pypi.md is current.

Usage: python scripts/pypi_readme.py [--stdout]
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)")
_IMAGE_LINE = re.compile(r"^\s*!\[[^\]]*\]\(([^)\s]+)\)\s*$")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
HEADER = "<!-- made from README.md by scripts/pypi_readme.py; edit the README, not this file -->\n"


def convert(text: str) -> str:
    """README text -> the index's description (relative images dropped, relative links made plain)."""
    out: list[str] = []
    drop_caption = False
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code:
            m = _IMAGE_LINE.match(line)
            if m and not _URL.match(m.group(1)):
                drop_caption = True
                continue
            if drop_caption and (not line.strip() or (line.startswith("*") and line.rstrip().endswith("*"))):
                if line.strip():
                    drop_caption = False
                continue
            drop_caption = False

            def plain(m: re.Match[str]) -> str:
                text, target = m.group(1), m.group(2)
                if _URL.match(target):
                    return m.group(0)
                path = target.split("#", 1)[0]
                return f"`{path}`" if text.strip("`") == path else f"{text} (`{path}`)"

            line = _LINK.sub(plain, line)
        out.append(line)
    return HEADER + "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    made = convert((ROOT / "README.md").read_text(encoding="utf-8"))
    if "--stdout" in argv:
        sys.stdout.write(made)
    else:
        (ROOT / "docs" / "pypi.md").write_text(made, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
