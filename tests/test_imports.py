"""Every module of the package imports without the optional extras.

``python -m pytest`` collects the docstring examples of every module under ``src/cddfuse``
(``--doctest-modules``, see ``[tool.pytest.ini_options]`` in pyproject.toml), which imports each
module at collection time. Modules that use an extra (``onnx``, ``train``, ``test``) must therefore
import it inside the functions that need it, never at module level; this test holds them to that.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cddfuse

#: Top-level packages of the optional extras in pyproject.toml (onnx; train; test; serve; video).
OPTIONAL = ("onnx", "onnxruntime", "tensorboard", "h5py", "skimage", "starlette", "uvicorn", "multipart",
            "python_multipart", "httpx", "selenium", "av")

_SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, json, sys, traceback

    blocked = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    failures = {}
    for name in sys.argv[2:]:
        try:
            importlib.import_module(name)
        except BaseException:
            failures[name] = traceback.format_exc(limit=-3)
    print(json.dumps(failures))
""")


def package_modules() -> list[str]:
    """Dotted names of every module file of the installed ``cddfuse`` (what doctest collection imports)."""
    root = Path(cddfuse.__file__).resolve().parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__main__":  # pytest's doctest collection skips these too
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_package_modules_are_found() -> None:
    names = package_modules()
    assert {"cddfuse", "cddfuse.models.cddfuse", "cddfuse.fusion.fuser", "cddfuse.cli.main"} <= set(names)


@pytest.mark.slow
def test_every_module_imports_without_optional_extras() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, ",".join(OPTIONAL), *package_modules()],
                          capture_output=True, text=True, timeout=300, check=False,
                          cwd=Path(cddfuse.__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "modules that need an optional extra at import time (import it inside the function):\n" + \
        "\n".join(f"{name}:\n{tb}" for name, tb in failures.items())
