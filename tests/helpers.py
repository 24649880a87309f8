"""Helpers the tests import explicitly (``from .helpers import ...``); the fixtures are in ``conftest.py``.

Reference vectors and real images live in ``../shared`` (next to the repository; override with the
environment variable ``CDDFUSE_SHARED``). Without them, tests that need them are skipped with a reason,
except under CI (environment variable ``CI`` set), where that is a failure.
"""
from __future__ import annotations

import hashlib
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"
TEST_DATA = DATA / "test"

#: The sizes of a tiny CDDFuse (fast enough for end-to-end tests; never a shipped model).
TINY_SIZES = dict(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1, encoder_inn_layers=1)


# ----------------------------------------------------------------------------- shared data


def need(path: Path) -> Path:
    """Return ``path`` if it exists; otherwise skip (fail under CI) with a reason."""
    if not path.exists():
        msg = f"shared test data not found: {path} (set CDDFUSE_SHARED to the shared/ folder)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def shared_path(*parts: str) -> Path:
    """A path under the shared folder; skipped (failed under CI) when it is not there."""
    return need(SHARED.joinpath(*parts))


def link_pairs(dest: Path, start: int, count: int, dataset: str = "RoadScene",
               sides: tuple[str, str] = ("ir", "vi")) -> tuple[Path, Path]:
    """Symlink ``count`` training pairs from ``start`` on (in name order) of the shared ``data/train/<dataset>``
    (sub-folders ``sides``) into ``dest/<side>``; the shared data stay where they are. Returns the two folders."""
    src = shared_path("data", "train", *dataset.split("/"))
    a, b = dest / sides[0], dest / sides[1]
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    for f in sorted((src / sides[0]).iterdir())[start:start + count]:
        (a / f.name).symlink_to(f)
        (b / f.name).symlink_to(src / sides[1] / f.name)
    return a, b


# ----------------------------------------------------------------------------- models


def perturb_parameters(module: torch.nn.Module) -> torch.nn.Module:
    """Perturb (in place, from the global RNG) the parameters that start at constants -- LayerNorm
    weights and biases, attention temperatures and scales -- so that every parameter matters."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("body.weight", "temperature", "scale")):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("body.bias"):
                p.add_(0.1 * torch.randn_like(p))
    return module


def make_random_model(seed: int = 0, **sizes: int) -> torch.nn.Module:
    """A CDDFuse with reproducible non-trivial random weights (LayerNorm and temperatures perturbed)."""
    from cddfuse.models import CDDFuse, CDDFuseConfig

    torch.manual_seed(seed)
    return perturb_parameters(CDDFuse(CDDFuseConfig(**sizes))).eval()


# ----------------------------------------------------------------------------- files


def snapshot(*roots: Path) -> dict[str, str]:
    """Content hash of every file under ``roots`` (hidden files included)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` gray pixels, with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- the command line


class Cli:
    """Runs ``cddfuse`` in-process and checks the user-visible contract."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: object, rc: int, says: str | None = None) -> str:
        from cddfuse.cli.main import main

        self.capsys.readouterr()
        code = main([str(a) for a in args])
        err = self.capsys.readouterr().err
        assert "Traceback" not in err
        assert code == rc, err
        if rc != 0:
            lines = [line for line in err.splitlines() if line.strip()]
            assert lines, "an error must be reported"
            assert lines[-1].startswith(f"cddfuse {args[0]}: error: ") or lines[-1].startswith("failed pairs:") \
                or " fused, " in lines[-1], lines
            assert "[ WARN" not in err  # OpenCV's own warnings do not leak before ours
        if says is not None:
            assert says in err, err
        return err


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a child ``cddfuse``, with this checkout's ``src`` first on
    ``PYTHONPATH`` and ``overrides`` applied."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(overrides)
    return env


def patched_cli(patch: str, *args: str) -> list[str]:
    """The command that runs ``cddfuse *args`` in a fresh Python after executing ``patch`` there: the way a
    test changes a child process (pauses it at a step, kills it at a known point) with no hook in the
    package itself."""
    main = "\nimport sys as _sys\nfrom cddfuse.cli.main import main as _main\n_sys.exit(_main(_sys.argv[1:]))\n"
    return [sys.executable, "-c", patch + main, *args]
