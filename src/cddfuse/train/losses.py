"""The CDDFuse training losses (Zhao et al., CVPR 2023, Eq. 7-10), numerically as the authors compute them.

Conventions, checked against the values the authors' code gives on the reference tensors
(``shared/reference/parity_seed1.json`` -> ``losses``, matched to 1e-5 by ``tests/test_losses.py``):

* Sources are ``(B, 1, H, W)`` luminance in [0, 1]. ``a`` is the infrared / functional image
  (IR, CT, PET, SPECT), ``b`` the visible / MRI image (the authors' ``data_IR``, ``data_VIS``).
* ``cc_base`` = :func:`cc` of the **base** features of the two sources (the Lite-Transformer
  outputs of the encoder, the authors' ``feature_V_B`` vs ``feature_I_B``), ``cc_detail`` the same
  for the **detail** (INN) features. ``decomp = cc_detail**2 / (1.01 + cc_base)``.
* Phase I reconstructs each source from its own features with the source itself as the decoder's
  residual. ``ssim`` is kornia's ``SSIMLoss(11)`` = mean of ``(1 - SSIM) / 2`` (11x11 Gaussian window,
  sigma 1.5, ``max_val = 1``, same padding); ``mse`` is the mean squared error. The reference
  ``mse_vis_recon`` / ``ssim_loss_vis_recon_kornia`` are these two on the **visible** reconstruction
  (``b``); the total adds the same two terms for the infrared reconstruction (``a``).
* The Phase-I gradient term compares kornia ``SpatialGradient()`` (normalised 3x3 Sobel, both x and y
  components, replicate padding) of the **visible** source only with that of its reconstruction,
  as an L1 mean over all ``B x C x 2 x H x W`` values.
* Phase II: ``intensity = mean |max(a, b) - F|``; ``gradient = mean | max(|Sx a|+|Sy a|, |Sx b|+|Sy b|)
  - (|Sx F|+|Sy F|) |`` with the unnormalised 3x3 Sobel (``Sx = [[-1,0,1],[-2,0,2],[-1,0,1]]``,
  ``Sy = [[1,2,1],[0,0,0],[-1,-2,-1]]``) applied by ``conv2d`` with zero padding 1;
  ``fusion = intensity + 10 * gradient``. The fused image uses the visible image as residual
  (for IVF; medical recipes may choose ``sum`` or ``none``).

All functions are batch means, so with equal per-rank batch sizes the data-parallel average of the
per-rank gradients equals the full-batch gradient -- except for the decomposition loss, a non-linear
function of two batch means; data-parallel training passes ``cc_reduce`` so that every rank
evaluates it at the global batch means (see :func:`_global_cc`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cc",
    "decomposition_loss",
    "ssim_loss",
    "spatial_gradient_l1",
    "sobel_magnitude",
    "fusion_loss",
    "LossWeights",
    "phase1_loss",
    "phase2_loss",
]

_EPS32 = float(torch.finfo(torch.float32).eps)


def cc(x: Tensor, y: Tensor) -> Tensor:
    """Mean Pearson correlation of ``x`` and ``y`` ``(N, C, H, W)`` per sample and channel.

    ``cc = sum(x' y') / (eps + sqrt(sum x'^2) sqrt(sum y'^2))`` with ``x' = x - mean_hw(x)``,
    ``eps`` = float32 machine epsilon; clamped to [-1, 1] and averaged over ``N x C``.
    """
    return cc_per_channel(x, y).mean()


def cc_per_channel(x: Tensor, y: Tensor) -> Tensor:
    """The ``(N, C)`` correlations that :func:`cc` averages."""
    if x.shape != y.shape or x.dim() < 3:
        raise ValueError(
            f"cc needs two tensors of the same (N, C, ...) shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, c = x.shape[:2]
    x = x.reshape(n, c, -1)
    y = y.reshape(n, c, -1)
    x = x - x.mean(dim=-1, keepdim=True)
    y = y - y.mean(dim=-1, keepdim=True)
    num = (x * y).sum(dim=-1)
    # clamp_min: a constant channel (sum 0) would give sqrt'(0) * 0 = NaN in the backward pass;
    # any non-zero sum is unchanged, so values are exactly the authors'
    den = _EPS32 + x.pow(2).sum(dim=-1).clamp_min(1e-30).sqrt() * y.pow(2).sum(dim=-1).clamp_min(1e-30).sqrt()
    return (num / den).clamp(-1.0, 1.0)


def decomposition_loss(cc_detail: Tensor, cc_base: Tensor) -> Tensor:
    """``L_decomp = cc_detail**2 / (1.01 + cc_base)`` (Eq. 8 of the paper, the authors' constant 1.01).

    Small when detail features of the two sources are uncorrelated and base features correlated.
    """
    return cc_detail.pow(2) / (1.01 + cc_base)


def ssim_loss(x: Tensor, y: Tensor, window: int = 11) -> Tensor:
    """kornia ``SSIMLoss(window)``: mean of ``(1 - SSIM(x, y)) / 2`` with ``max_val = 1``."""
    import kornia

    return kornia.losses.ssim_loss(x, y, window, max_val=1.0, reduction="mean")


def spatial_gradient_l1(x: Tensor, y: Tensor) -> Tensor:
    """L1 mean between kornia ``SpatialGradient()`` (normalised Sobel, x and y) of ``x`` and of ``y``."""
    import kornia

    grad = kornia.filters.spatial_gradient
    return F.l1_loss(grad(x), grad(y))


_SOBEL_CACHE: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _sobel_kernels(dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (dtype, device)
    k = _SOBEL_CACHE.get(key)
    if k is None:
        k = torch.tensor(
            [[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]],
             [[[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]]],
            dtype=dtype, device=device,
        )
        _SOBEL_CACHE[key] = k
    return k


def sobel_magnitude(x: Tensor) -> Tensor:
    """``|Sobel_x * x| + |Sobel_y * x|`` with zero padding 1 (the authors' ``Sobelxy``), per channel."""
    n, c, h, w = x.shape
    g = F.conv2d(x.reshape(n * c, 1, h, w), _sobel_kernels(x.dtype, x.device), padding=1)
    return g.abs().sum(dim=1, keepdim=True).reshape(n, c, h, w)


def fusion_loss(a: Tensor, b: Tensor, fused: Tensor, gradient_weight: float = 10.0) -> tuple[Tensor, Tensor, Tensor]:
    """Phase-II fusion loss: ``(total, intensity, gradient)``.

    ``intensity = L1(max(a, b), fused)``, ``gradient = L1(max(|grad a|, |grad b|), |grad fused|)``
    with ``|grad| = |Sobel_x| + |Sobel_y|`` (:func:`sobel_magnitude`), ``total = intensity +
    gradient_weight * gradient``. Symmetric in ``a`` and ``b``.
    """
    intensity = F.l1_loss(torch.maximum(a, b), fused)
    # the three Sobel passes as one convolution over a stacked batch
    g = sobel_magnitude(torch.cat((a, b, fused), dim=0))
    ga, gb, gf = g.chunk(3, dim=0)
    gradient = F.l1_loss(torch.maximum(ga, gb), gf)
    return intensity + gradient_weight * gradient, intensity, gradient


@dataclass(frozen=True)
class LossWeights:
    """Loss coefficients (the paper's by default).

    Phase I: ``recon * (ssim * SSIMloss + mse * MSE)`` for each source, ``+ gradient * L1(grad)``
    of the visible source, ``+ decomp * L_decomp``. Phase II: ``intensity * L_int +
    fusion_gradient * L_grad + decomp * L_decomp``.
    """

    recon_ssim: float = 5.0
    recon_mse: float = 1.0
    recon_a: float = 1.0
    recon_b: float = 1.0
    recon_gradient: float = 5.0
    decomp: float = 2.0
    fusion_intensity: float = 1.0
    fusion_gradient: float = 10.0


def _decomp_terms(feats_a: tuple[Tensor, Tensor], feats_b: tuple[Tensor, Tensor],
                  cc_reduce: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
    cc_b = cc(feats_b[0], feats_a[0])
    cc_d = cc(feats_b[1], feats_a[1])
    if cc_reduce is not None:
        g = cc_reduce(torch.stack((cc_b.detach(), cc_d.detach())))
        cc_b, cc_d = _global_cc(cc_b, g[0]), _global_cc(cc_d, g[1])
    return cc_b, cc_d, decomposition_loss(cc_d, cc_b)


def _global_cc(local: Tensor, global_value: Tensor | None) -> Tensor:
    """Value of ``global_value`` with the gradient of ``local`` (straight-through).

    In data-parallel training every rank sees only its own part of the batch. The decomposition
    loss is non-linear in the batch mean of the correlation, so each rank evaluates it at the
    global (all-ranks) mean while back-propagating through its local mean; averaging the ranks'
    gradients then gives exactly the full-batch gradient.
    """
    if global_value is None:
        return local
    return local - local.detach() + global_value.detach()


def phase1_loss(
    a: Tensor,
    b: Tensor,
    feats_a: tuple[Tensor, Tensor],
    feats_b: tuple[Tensor, Tensor],
    rec_a: Tensor,
    rec_b: Tensor,
    w: LossWeights = LossWeights(),
    cc_reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Phase-I (reconstruction) loss and its parts.

    Args:
        a, b: the sources (infrared/functional, visible/MRI).
        feats_a, feats_b: ``(base, detail)`` encoder features of each source.
        rec_a, rec_b: reconstructions, decoded from each source's own features with the source
            itself as residual.
        w: coefficients.
        cc_reduce: data-parallel training only: maps this rank's ``(cc_base, cc_detail)`` (a
            detached 2-vector) to their mean over all ranks (see :func:`_global_cc`).

    Returns:
        dict with ``total`` (to back-propagate) and the parts ``cc_base``, ``cc_detail``,
        ``decomp``, ``ssim_a``, ``mse_a``, ``ssim_b``, ``mse_b``, ``grad_b``.
    """
    cc_b_eff, cc_d_eff, decomp = _decomp_terms(feats_a, feats_b, cc_reduce)
    ssim_a, mse_a = ssim_loss(a, rec_a), F.mse_loss(rec_a, a)
    ssim_b, mse_b = ssim_loss(b, rec_b), F.mse_loss(rec_b, b)
    grad_b = spatial_gradient_l1(b, rec_b)
    total = (
        w.recon_a * (w.recon_ssim * ssim_a + w.recon_mse * mse_a)
        + w.recon_b * (w.recon_ssim * ssim_b + w.recon_mse * mse_b)
        + w.recon_gradient * grad_b
        + w.decomp * decomp
    )
    return {
        "total": total, "cc_base": cc_b_eff, "cc_detail": cc_d_eff, "decomp": decomp,
        "ssim_a": ssim_a, "mse_a": mse_a, "ssim_b": ssim_b, "mse_b": mse_b, "grad_b": grad_b,
    }


def phase2_loss(
    a: Tensor,
    b: Tensor,
    feats_a: tuple[Tensor, Tensor],
    feats_b: tuple[Tensor, Tensor],
    fused: Tensor,
    w: LossWeights = LossWeights(),
    cc_reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Phase-II (fusion) loss and its parts: ``total``, ``intensity``, ``gradient``, ``fusion``,
    ``cc_base``, ``cc_detail``, ``decomp``. Arguments as in :func:`phase1_loss`; ``fused`` is the
    decoder output on the fused features."""
    cc_b_eff, cc_d_eff, decomp = _decomp_terms(feats_a, feats_b, cc_reduce)
    _, intensity, gradient = fusion_loss(a, b, fused)
    fusion = w.fusion_intensity * intensity + w.fusion_gradient * gradient
    total = fusion + w.decomp * decomp
    return {
        "total": total, "fusion": fusion, "intensity": intensity, "gradient": gradient,
        "cc_base": cc_b_eff, "cc_detail": cc_d_eff, "decomp": decomp,
    }
