"""Training losses: the authors' values on the reference tensors, and the formulas' properties."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cddfuse.train import losses as L

from .helpers import shared_path as _shared


@pytest.fixture(scope="module")
def reference_losses():
    """Our loss terms on ``loss_vis`` / ``loss_ir`` with the seed-1 checkpoint, and the authors' values."""
    from cddfuse.models.weights import load_weights

    ref = json.loads(_shared("reference", "parity_seed1.json").read_text())["losses"]
    d = np.load(_shared("reference", "parity_seed1.npz"))
    vis = torch.from_numpy(d["loss_vis"])
    ir = torch.from_numpy(d["loss_ir"])
    model, _ = load_weights(_shared("reference", "official_format_seed1.pth"))
    model.train()
    with torch.no_grad():
        bv, dv, _ = model.encode(vis)
        bi, di, _ = model.encode(ir)
        rec_v = model.decode(bv, dv, vis)  # Phase I: residual = the source itself
        rec_i = model.decode(bi, di, ir)
        fb, fd = model.fuse_features(bi, bv, di, dv)
        fused = model.decode(fb, fd, vis)  # Phase II: residual = visible
        p1 = L.phase1_loss(ir, vis, (bi, di), (bv, dv), rec_i, rec_v)
        p2 = L.phase2_loss(ir, vis, (bi, di), (bv, dv), fused)
        total, intensity, gradient = L.fusion_loss(ir, vis, fused)
    ours = {
        "cc_base": p1["cc_base"],
        "cc_detail": p1["cc_detail"],
        "decomp": p1["decomp"],
        "mse_vis_recon": p1["mse_b"],
        "ssim_loss_vis_recon_kornia": p1["ssim_b"],
        "grad_l1_vis_recon_kornia_spatialgradient": p1["grad_b"],
        "fusion_total": total,
        "fusion_intensity": intensity,
        "fusion_gradient": gradient,
    }
    return {k: float(v) for k, v in ours.items()}, ref, p1, p2


NAMES = ["cc_base", "cc_detail", "decomp", "mse_vis_recon", "ssim_loss_vis_recon_kornia",
         "grad_l1_vis_recon_kornia_spatialgradient", "fusion_total", "fusion_intensity", "fusion_gradient"]


@pytest.mark.parametrize("name", NAMES)
def test_loss_matches_authors(reference_losses, name):
    ours, ref, _, _ = reference_losses
    assert abs(ours[name] - ref[name]) <= 1e-5 * max(1.0, abs(ref[name])), (name, ours[name], ref[name])


def test_phase_totals_combine_the_parts(reference_losses):
    _, _, p1, p2 = reference_losses
    w = L.LossWeights()
    expect1 = (5 * p1["ssim_a"] + p1["mse_a"]) + (5 * p1["ssim_b"] + p1["mse_b"]) + 5 * p1["grad_b"] + 2 * p1["decomp"]
    assert torch.allclose(p1["total"], expect1)
    expect2 = p2["intensity"] + 10 * p2["gradient"] + 2 * p2["decomp"]
    assert torch.allclose(p2["total"], expect2)
    assert w.decomp == 2 and w.fusion_gradient == 10 and w.recon_ssim == 5 and w.recon_gradient == 5
    # the decomposition term is the same in both phases (same encoder features)
    assert torch.equal(p1["decomp"], p2["decomp"])


def test_cc_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, 9, 7, generator=g)
    assert torch.allclose(L.cc(x, x), torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(L.cc(x, -x), torch.tensor(-1.0), atol=1e-6)
    assert torch.allclose(L.cc(x, 3 * x + 2), torch.tensor(1.0), atol=1e-6)
    # per-sample-and-channel Pearson correlation, averaged
    y = torch.rand(3, 4, 9, 7, generator=g)
    per = [np.corrcoef(x[n, c].flatten().numpy(), y[n, c].flatten().numpy())[0, 1] for n in range(3) for c in range(4)]
    assert abs(float(L.cc(x, y)) - float(np.mean(per))) < 1e-5
    # a constant channel: numerator 0, eps keeps it finite
    z = torch.zeros(1, 1, 4, 4)
    assert float(L.cc(z, z)) == 0.0
    with pytest.raises(ValueError, match="same"):
        L.cc(x, y[:, :2])


def test_decomposition_loss_formula():
    assert float(L.decomposition_loss(torch.tensor(0.5), torch.tensor(0.2))) == pytest.approx(0.25 / 1.21)


def test_sobel_magnitude_is_the_authors_zero_padded_sobel():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 6, 5, generator=g)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None]
    ky = torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])[None, None]
    expect = F.conv2d(x, kx, padding=1).abs() + F.conv2d(x, ky, padding=1).abs()
    assert torch.allclose(L.sobel_magnitude(x), expect)


def test_fusion_loss_is_symmetric_and_zero_gradient_term_for_max():
    g = torch.Generator().manual_seed(2)
    a, b, f = (torch.rand(2, 1, 16, 16, generator=g) for _ in range(3))
    t1, i1, g1 = L.fusion_loss(a, b, f)
    t2, i2, g2 = L.fusion_loss(b, a, f)
    assert torch.equal(t1, t2) and torch.equal(i1, i2) and torch.equal(g1, g2)
    assert torch.allclose(t1, i1 + 10 * g1)
    _, i0, _ = L.fusion_loss(a, b, torch.maximum(a, b))
    assert float(i0) == 0.0


def test_global_cc_straight_through():
    """Data parallel: the value is the global mean, the gradient is the local one."""
    w = torch.tensor(2.0, requires_grad=True)
    local = w * 0.25
    eff = L._global_cc(local, torch.tensor(0.7))
    assert float(eff.detach()) == pytest.approx(0.7)
    eff.backward()
    assert float(w.grad) == pytest.approx(0.25)


def test_cc_reduce_hook_gives_full_batch_gradient():
    """Averaging two half-batch gradients with the hook = the full-batch gradient of the decomposition loss."""
    g = torch.Generator().manual_seed(3)
    feats = [torch.rand(4, 3, 5, 5, generator=g) for _ in range(4)]  # base_a, detail_a, base_b, detail_b
    scale = torch.tensor(1.5, requires_grad=True)

    def loss_on(idx, cc_reduce=None):
        fa = (feats[0][idx] * scale, feats[1][idx] * scale ** 2)
        fb = (feats[2][idx], feats[3][idx] + scale)
        cb, cd, dec = L._decomp_terms(fa, fb, cc_reduce)
        return dec

    full = loss_on(slice(0, 4))
    (g_full,) = torch.autograd.grad(full, scale)
    halves = [slice(0, 2), slice(2, 4)]
    with torch.no_grad():
        locals_ = []
        for h in halves:
            fa = (feats[0][h] * scale, feats[1][h] * scale ** 2)
            fb = (feats[2][h], feats[3][h] + scale)
            locals_.append(torch.stack((L.cc(fb[0], fa[0]), L.cc(fb[1], fa[1]))))
        glob = (locals_[0] + locals_[1]) / 2
    grads = []
    for h in halves:
        dec = loss_on(h, cc_reduce=lambda t: glob)
        assert torch.allclose(dec, full.detach(), atol=1e-6)
        grads.append(torch.autograd.grad(dec, scale)[0])
    assert torch.allclose((grads[0] + grads[1]) / 2, g_full, atol=1e-6)


def test_cc_gradient_is_finite_for_constant_channels():
    """A blank crop (constant features) must not turn the backward pass into NaN."""
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    x[0, 1] = 0.25  # one constant channel
    y = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    y[1] = 0.0  # one constant sample
    x.requires_grad_(True)
    y.requires_grad_(True)
    L.decomposition_loss(L.cc(x, y), L.cc(y, x)).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert float(L.cc_per_channel(x, y).detach()[0, 1]) == 0.0
