"""Shared test fixtures.

Reference vectors and real images live in ``../shared`` (next to the repository; override with
the environment variable ``CDDFUSE_SHARED``). Without them, tests that need them are skipped
with a reason, except under CI (environment variable ``CI`` set), where that is a failure.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"
TEST_DATA = DATA / "test"

# The engine's per-machine tuning (cddfuse.engine.tuning) would otherwise run a ~10 s probe at the
# first fusion and write to the user's cache: tests use the built-in settings and a private cache
# (tests/test_tuning.py exercises tuning itself). Subprocesses inherit both.
os.environ.setdefault("CDDFUSE_TUNE", "0")
if "CDDFUSE_CACHE" not in os.environ:
    import tempfile

    os.environ["CDDFUSE_CACHE"] = tempfile.mkdtemp(prefix="cddfuse-test-cache-")

TINY_SIZES = dict(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1, encoder_inn_layers=1)


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


def make_random_model(seed: int = 0, **sizes):
    """A CDDFuse with reproducible non-trivial random weights (LayerNorm and temperatures perturbed)."""
    from cddfuse.models import CDDFuse, CDDFuseConfig

    torch.manual_seed(seed)
    return perturb_parameters(CDDFuse(CDDFuseConfig(**sizes))).eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny random model saved as cddfuse safetensors (task ivf, residual vis)."""
    from cddfuse.models.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "tiny_ivf.safetensors"
    save_weights(make_random_model(0, **TINY_SIZES), path, task="ivf", residual="vis",
                 provenance={"purpose": "test fixture: random weights"})
    return path
