"""The documentation's promises: every example in the README and the docs site runs as written.

Each Markdown page (README.md, MODEL_CARD.md, docs/**/*.md) is run like a tutorial, in a fresh
temporary folder, its code blocks in order:

- ```python blocks run in one namespace per page; a block written as a doctest (``>>>`` lines)
  is checked like one (its shown output must match);
- ```bash / ```console blocks: every command must be a ``cddfuse ...`` command (also written as
  ``.venv/bin/cddfuse``, or after ``bash scripts/setup.sh &&``, which the test environment has
  already done); each runs through the command line's ``main`` and must exit 0;
- a block right after ``<!-- norun: reason -->`` is not run (it needs a GPU, a cluster, the
  network, the user's own data, or it is the test suite itself); every other bash block must
  pass the rule above, so an example cannot silently stop being runnable.

Blocks in other languages (``text``, ``json``, unmarked) show output and are not run. Also checked:
the README's length, relative links and images resolve to files, and the package index's
long description (docs/pypi.md) is the README without the links that only work in the repository.
"""
from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 250


def doc_pages() -> list[Path]:
    """The Markdown pages whose examples must run (the README, the model card, the docs site's pages)."""
    pages = [README, ROOT / "MODEL_CARD.md"]
    for p in sorted(DOCS.rglob("*.md")):
        rel = p.relative_to(DOCS)
        if rel.parts[0] in ("_build", "model_card") or rel.name == "pypi.md":
            continue  # build output; the model card's generated score tables; the README's variant
        pages.append(p)
    return pages


# Pages whose examples run the full-size network several times (tens of seconds on two cores).
SLOW_PAGES = {"README.md", "fusion.md", "folders.md", "video.md", "alignment.md", "export.md",
              "performance.md", "training.md", "weights.md", "server.md", "metrics.md", "index.md",
              "metric_protocols.md"}


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    norun: str | None  # the reason given in a <!-- norun: ... --> comment right before the block


_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)[^\n]*$")
_NORUN = re.compile(r"<!--\s*norun:\s*(.+?)\s*-->")


def code_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with their language and norun marker."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = _NORUN.search(lines[k]) if k >= 0 else None
        blocks.append(Block(lang, "\n".join(lines[i + 1:j]), i + 1, marker.group(1) if marker else None))
        i = j + 1
    return blocks


_SETUP_PREFIX = re.compile(r"^bash scripts/setup\.sh\s*&&\s*")


def shell_commands(block: Block) -> list[list[str]]:
    """The commands of a bash/console block as argument lists (prompts, comments, output removed)."""
    logical: list[str] = []
    pending = ""
    for raw in block.code.splitlines():
        line = raw.rstrip()
        if block.lang == "console" and not pending:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    commands = []
    for line in logical:
        line = _SETUP_PREFIX.sub("", line.strip())
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] in (".venv/bin/cddfuse", "cddfuse"):
            commands.append(argv[1:])
        else:
            raise AssertionError(
                f"line {block.line}: {line!r} is not a cddfuse command: make it one, or mark the block "
                "with <!-- norun: reason --> if it cannot run in the test suite")
    return commands


def run_cli(argv: list[str]) -> int:
    from cddfuse.cli.main import main

    return main(argv)


def run_python(code: str, namespace: dict, name: str) -> None:
    if re.search(r"^\s*>>> ", code, re.M):
        test = doctest.DocTestParser().get_doctest(code, namespace, name, name, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        out: list[str] = []
        runner.run(test, out=out.append, clear_globs=False)
        assert runner.failures == 0, "".join(out)
    else:
        exec(compile(code, name, "exec"), namespace)


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _page_params() -> list:
    return [pytest.param(p, id=_page_id(p), marks=[pytest.mark.slow] if p.name in SLOW_PAGES else [])
            for p in doc_pages()]


@pytest.mark.parametrize("page", _page_params())
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = code_blocks(page.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if b.norun is None and b.lang in ("python", "bash", "console", "sh", "shell")]
    if not runnable:
        pytest.skip(f"{_page_id(page)} has no runnable examples")
    pytest.importorskip("cddfuse.data", reason="the examples use the sample images of cddfuse.data")
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # examples run from a clone's root
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for b in runnable:
        where = f"{_page_id(page)}:{b.line}"
        if b.lang == "python":
            run_python(b.code, namespace, where)
        else:
            for argv in shell_commands(b):
                rc = run_cli(argv)
                assert rc == 0, f"{where}: cddfuse {shlex.join(argv)} exited {rc}"


def test_norun_blocks_are_few_and_give_a_reason() -> None:
    counts = {}
    for page in doc_pages():
        blocks = code_blocks(page.read_text(encoding="utf-8"))
        code = [b for b in blocks if b.lang in ("python", "bash", "console", "sh", "shell")]
        skipped = [b for b in code if b.norun is not None]
        counts[_page_id(page)] = (len(skipped), len(code))
        for b in skipped:
            assert len(b.norun or "") >= 10, f"{_page_id(page)}:{b.line}: say why the block cannot run"
    total_skipped = sum(s for s, _ in counts.values())
    total = sum(n for _, n in counts.values())
    assert total_skipped * 3 <= total, f"too many examples marked norun: {counts}"


def test_shell_examples_are_cddfuse_commands() -> None:
    """Every bash block not marked norun is made of cddfuse commands (checked without running them)."""
    for page in doc_pages():
        for b in code_blocks(page.read_text(encoding="utf-8")):
            if b.norun is None and b.lang in ("bash", "console", "sh", "shell"):
                try:
                    commands = shell_commands(b)
                except AssertionError as e:
                    raise AssertionError(f"{_page_id(page)}: {e}") from None
                assert commands, f"{_page_id(page)}:{b.line}: an empty shell block"


def test_block_parser_finds_markers_and_commands() -> None:
    text = ("intro\n\n<!-- norun: needs a GPU to be useful -->\n```bash\ncddfuse fuse a b -o c --device cuda\n```\n\n"
            "```console\n$ cddfuse fuse --example tno \\\n    -o f.png  # the pair\nwrote f.png\n```\n"
            "```bash\ncurl http://x\n```\n")
    blocks = code_blocks(text)
    assert [(b.lang, b.line, b.norun) for b in blocks] == [
        ("bash", 4, "needs a GPU to be useful"), ("console", 8, None), ("bash", 13, None)]
    assert shell_commands(blocks[1]) == [["fuse", "--example", "tno", "-o", "f.png"]]
    with pytest.raises(AssertionError, match="not a cddfuse command"):
        shell_commands(blocks[2])
    setup = Block("bash", "bash scripts/setup.sh && .venv/bin/cddfuse fuse --example tno -o fused.png", 1, None)
    assert shell_commands(setup) == [["fuse", "--example", "tno", "-o", "fused.png"]]


def test_doctest_blocks_compare_their_output() -> None:
    run_python(">>> 1 + 1\n2\n", {}, "ok")
    with pytest.raises(AssertionError, match="Expected"):
        run_python(">>> 1 + 1\n3\n", {}, "wrong")


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    text = "\n".join(lines)
    # the two commands, exactly as CI (.ci/run) and a new user run them
    assert "bash scripts/setup.sh && .venv/bin/cddfuse fuse --example tno -o fused.png" in text
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in text
    assert (ROOT / ".ci" / "run").read_text().count("bash scripts/setup.sh && .venv/bin/python -m pytest -q") == 1


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_SRC = re.compile(r"""<(?:img|a)\s[^>]*(?:src|href)=["']([^"']+)["']""")


def relative_links(text: str) -> list[str]:
    """Link and image targets of a Markdown text that point into the repository (not URLs or anchors)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code blocks are code
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = _LINK.findall(text) + _HTML_SRC.findall(text)
    return [t for t in targets if not re.match(r"^(?:[a-z][a-z0-9+.-]*:|#)", t)]


def test_link_checker_sees_relative_links() -> None:
    text = "[a](docs/x.md#y) ![b](img.png) [c](https://e.org) [d](#top) `[e](no.md)` <img src=\"p.png\">"
    assert relative_links(text) == ["docs/x.md#y", "img.png", "p.png"]


@pytest.mark.parametrize("page", [README, ROOT / "MODEL_CARD.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md",
                                  *[p for p in doc_pages() if p.is_relative_to(DOCS)]],
                         ids=_page_id)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{_page_id(page)}: links to missing files: {broken}"


def test_package_index_description_is_current() -> None:
    """docs/pypi.md (pyproject's readme) is the README with repository-only links made plain text."""
    script = ROOT / "scripts" / "pypi_readme.py"
    made = subprocess.run([sys.executable, str(script), "--stdout"], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    assert (DOCS / "pypi.md").read_text(encoding="utf-8") == made, "run: python scripts/pypi_readme.py"
    assert relative_links(made) == [], "the package index cannot show repository-relative links or images"
    assert "fuse --example tno" in made


def test_package_index_conversion() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("pypi_readme", ROOT / "scripts" / "pypi_readme.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = ("# t\n\n![pic](docs/a.png)\n\n*A caption.*\n\nSee [the guide](docs/guide/x.md#part), "
            "[LICENSE](LICENSE) and [site](https://e.org).\n\n```bash\n[kept](in/code.md)\n```\n")
    made = mod.convert(text)
    assert "pic" not in made and "A caption" not in made
    assert "See the guide (`docs/guide/x.md`), `LICENSE` and [site](https://e.org)." in made
    assert "[kept](in/code.md)" in made  # code is left alone
