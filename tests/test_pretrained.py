"""The bundled weights: present in the package, self-describing, small, and fusing real pairs well."""
from __future__ import annotations

import numpy as np
import pytest

from cddfuse.models.pretrained import PRETRAINED, WEIGHTS_DIR, pretrained_path

from .conftest import shared_path

SHIPPED = [t for t, spec in PRETRAINED.items() if (WEIGHTS_DIR / spec.filename).is_file()]
RESIDUALS = ("vis", "sum", "none")


@pytest.mark.parametrize("task", sorted(PRETRAINED))
def test_bundled_weights_are_shipped_and_self_describing(task):
    if task not in SHIPPED:
        pytest.skip(f"no bundled {task} weights in this checkout yet")
    from cddfuse.models.weights import load_weights

    path = pretrained_path(task)
    assert path.stat().st_size < 6 * 2 ** 20
    model, info = load_weights(path)
    assert info.task == task and info.residual in RESIDUALS and info.normalize == "minmax"
    assert info.source_format == "cddfuse"
    prov = info.provenance
    for key in ("training_config", "data", "steps", "train_time_s", "hardware", "recipe"):
        assert key in prov, f"{path.name}: metadata lacks {key!r}"
    assert prov["training_config"]["task"] == task and prov["steps"] > 0
    assert not model.training
    assert all(bool(np.isfinite(p.detach().numpy()).all()) for p in model.parameters())


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


@pytest.mark.parametrize("task,rel", [("ivf", ("TNO", "ir", "vi", "01.png")),
                                      ("mif", ("MRI_PET", "PET", "MRI", None))])
def test_bundled_weights_fuse_a_real_pair(task, rel):
    """Behaviour on a real test pair: the result carries both sources (correlated with each) and has
    more contrast than the mean rule, as a fusion should."""
    if task not in SHIPPED:
        pytest.skip(f"no bundled {task} weights in this checkout yet")
    from cddfuse import Fuser
    from cddfuse.metrics.io import read_gray

    root = shared_path("data", "test", rel[0])
    name = rel[3] or sorted(p.name for p in (root / rel[1]).iterdir())[0]
    a, b = read_gray(root / rel[1] / name), read_gray(root / rel[2] / name)
    fused = Fuser(task=task, device="cpu", color="gray").fuse(a / 255.0, b / 255.0)
    assert fused.shape == a.shape and np.isfinite(fused).all()
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    assert _corr(fused, a) > 0.3 and _corr(fused, b) > 0.3
    assert np.std(fused * 255.0) > np.std((a + b) / 2.0)
