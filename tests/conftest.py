"""Shared test fixtures; the helper functions and constants are in :mod:`tests.helpers`.

Reference vectors and real images live in ``../shared`` (next to the repository; override with
the environment variable ``CDDFUSE_SHARED``). Without them, tests that need them are skipped
with a reason, except under CI (environment variable ``CI`` set), where that is a failure.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from .helpers import (
    REFERENCE,
    TEST_DATA,
    TINY_SIZES,
    Cli,
    make_random_model,
    need,
    snapshot,
)

# The engine's per-machine tuning (cddfuse.engine.tuning) would otherwise run a ~10 s probe at the
# first fusion and write to the user's cache: tests use the built-in settings and a private cache
# (tests/test_tuning.py exercises tuning itself). Subprocesses inherit both.
os.environ.setdefault("CDDFUSE_TUNE", "0")
if "CDDFUSE_CACHE" not in os.environ:
    import tempfile

    os.environ["CDDFUSE_CACHE"] = tempfile.mkdtemp(prefix="cddfuse-test-cache-")

# pytest-xdist's worker processes ignore SIGINT, and a child process that starts with SIGINT ignored keeps
# ignoring it (Python then installs no KeyboardInterrupt handler): the tests that stop a child with SIGINT
# would wait for it forever. With the default handler here, children start with SIGINT's default action.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return need(REFERENCE)


@pytest.fixture(scope="session")
def test_data() -> Path:
    return need(TEST_DATA)


@pytest.fixture(scope="session")
def seed1_checkpoint(reference_dir: Path) -> Path:
    return need(reference_dir / "official_format_seed1.pth")


@pytest.fixture(scope="session")
def seed1_model(seed1_checkpoint: Path):
    """The authors' seed-1 checkpoint loaded into :class:`CDDFuse` (eval mode, CPU). Do not modify it."""
    from cddfuse.models.weights import load_weights

    model, _ = load_weights(seed1_checkpoint)
    return model


@pytest.fixture(scope="session")
def parity(reference_dir: Path) -> Iterator[Any]:
    """The authors' intermediate tensors on two crops (``parity_seed1.npz``; keys in reference/README.md)."""
    with np.load(need(reference_dir / "parity_seed1.npz")) as data:
        yield data


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device this machine has (the CPU, and CUDA where a GPU exists), one test each."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny random model saved as cddfuse safetensors (task ivf, residual vis)."""
    from cddfuse.models.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "tiny_ivf.safetensors"
    save_weights(make_random_model(0, **TINY_SIZES), path, task="ivf", residual="vis",
                 provenance={"purpose": "test fixture: random weights"})
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Fuse with one thread, so that results compare bit for bit with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cddfuse`` in-process, checking the user-visible contract (:class:`tests.helpers.Cli`)."""
    return Cli(capsys)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two small 8-bit sources (gray 20x24 and colour 20x24x3) in ``tmp_path/src``; the test fails if
    either is changed."""
    from cddfuse.io.image import write_image

    rng = np.random.default_rng(7)
    src = tmp_path / "src"
    ir = write_image(src / "ir.png", rng.random((20, 24)))
    vi = write_image(src / "vi.png", rng.random((20, 24, 3)))
    before = snapshot(src)
    yield ir, vi
    assert {k: v for k, v in snapshot(src).items() if k in before} == before, "a source was changed"
