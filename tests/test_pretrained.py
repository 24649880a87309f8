"""The bundled weights: present in the package, self-describing, small, and fusing real pairs well."""
from __future__ import annotations

import numpy as np
import pytest

from cddfuse.models.pretrained import PRETRAINED, WEIGHTS_DIR, pretrained_path

from .helpers import shared_path

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


@pytest.mark.slow
@pytest.mark.parametrize("task,testset", [("ivf", "TNO"), ("ivf", "RoadScene"), ("mif", "MRI_PET")])
def test_bundled_weights_beat_the_mean_rule_on_a_real_pair(task, testset):
    """The first pair of a paper test set, fused and scored with the paper's protocol: the bundled
    weights beat the mean-rule baseline on at least 6 of the 8 metrics (the issue's bar for whole sets)."""
    if task not in SHIPPED:
        pytest.skip(f"no bundled {task} weights in this checkout yet")
    from cddfuse.bench.paper import run_bench

    root = shared_path("data", "test", testset)
    ours = run_bench(root, task=task, limit=1, progress=False).evaluation.mean
    mean_rule = run_bench(root, method="mean", limit=1, progress=False).evaluation.mean
    better = [m for m in ours if ours[m] >= mean_rule[m]]
    assert len(better) >= 6, f"ours {ours} vs mean rule {mean_rule}"


@pytest.mark.parametrize("task,testset,colour", [("ivf", "RoadScene", True), ("mif", "MRI_PET", True),
                                                 ("mif", "MRI_CT", False)])
@pytest.mark.slow
def test_bundled_weights_default_pipeline(task, testset, colour):
    """`Fuser(task=...)` with nothing else: full-size output in [0, 1], colour kept from a colour source,
    and the visible / MRI structure present (correlation with its luminance)."""
    if task not in SHIPPED:
        pytest.skip(f"no bundled {task} weights in this checkout yet")
    from cddfuse import Fuser
    from cddfuse.metrics.io import read_gray

    root = shared_path("data", "test", testset)
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    first, second = (dirs[0], dirs[1]) if dirs[1].name in ("MRI", "vi") else (dirs[1], dirs[0])
    pa = sorted(first.iterdir())[0]
    pb = next(p for p in second.iterdir() if p.stem == pa.stem)
    fused = Fuser(task=task, device="cpu").fuse(pa, pb)
    b = read_gray(pb)
    assert fused.shape == (b.shape + (3,) if colour else b.shape)
    assert np.isfinite(fused).all() and fused.min() >= 0.0 and fused.max() <= 1.0
    y = fused if fused.ndim == 2 else fused @ np.array([0.299, 0.587, 0.114], np.float32)
    assert float(np.corrcoef(y.ravel(), b.ravel())[0, 1]) > 0.5
