"""Shared test fixtures.

Reference vectors and real images live in ``../shared`` (next to the repository; override with
the environment variable ``CDDFUSE_SHARED``). Without them, tests that need them are skipped
with a reason, except under CI (environment variable ``CI`` set), where that is a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"
TEST_DATA = DATA / "test"

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


def make_random_model(seed: int = 0, **sizes):
    """A CDDFuse with reproducible non-trivial random weights (LayerNorm and temperatures perturbed)."""
    from cddfuse.models import CDDFuse, CDDFuseConfig

    torch.manual_seed(seed)
    model = CDDFuse(CDDFuseConfig(**sizes))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("body.weight", "temperature", "scale")):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("body.bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny random model saved as cddfuse safetensors (task ivf, residual vis)."""
    from cddfuse.models.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "tiny_ivf.safetensors"
    save_weights(make_random_model(0, **TINY_SIZES), path, task="ivf", residual="vis",
                 provenance={"purpose": "test fixture: random weights"})
    return path
