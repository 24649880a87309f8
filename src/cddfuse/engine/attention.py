"""Channel attention statistics, accumulated over tiles.

The channel attention of CDDFuse's Restormer and Lite Transformer blocks only needs, per channel,
the L2 norm of q and k over all pixels and the Gram matrix ``q^T k``: ``F.normalize`` is applied
to the Gram matrix instead of the data, and ``softmax(...) @ v`` followed by ``project_out`` is
one ``C x C`` matrix ``M`` per image (:meth:`AttentionStats.matrix`), applied together with the
residual add. Those statistics are sums over pixels, so each tile adds its share
(:meth:`AttentionStats.partial`, :meth:`AttentionStats.add_partial`) and the attention is exact
however the image is cut. Sums are kept in float64 and added in tile order, so the result does not
depend on which thread computed which tile.

Example (one tile or two give the same sums):
    >>> import torch
    >>> from cddfuse.engine.geometry import RegionTensor
    >>> qk = torch.rand(1, 4, 6, 2 * 3)  # (B, h, w, 2C): q | k of a 4x6 image, C = 3
    >>> whole, halves = AttentionStats(1, 3, torch.device("cpu")), AttentionStats(1, 3, torch.device("cpu"))
    >>> whole.add_partial(AttentionStats.partial(RegionTensor(qk.clone(), 0, 0), (0, 4, 0, 6)))
    >>> for tile in [(0, 4, 0, 3), (0, 4, 3, 6)]:
    ...     halves.add_partial(AttentionStats.partial(RegionTensor(qk.clone(), 0, 0), tile))
    >>> torch.allclose(whole.gram, halves.gram) and torch.allclose(whole.sq, halves.sq)
    True
"""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import Region, RegionTensor
from .packing import AttentionWeights

__all__ = ["AttentionStats", "TileSums"]

TileSums = tuple[Tensor, Tensor]  # (gram (B, C, C), squared norms (B, 2C)) of one tile, float64


class AttentionStats:
    """Sums over pixels of one channel attention: ``|q_c|^2``, ``|k_c|^2`` and ``q^T k`` (float64)."""

    def __init__(self, batch: int, dim: int, device: torch.device) -> None:
        self.dim = dim
        self.sq = torch.zeros(batch, 2 * dim, dtype=torch.float64, device=device)
        self.gram = torch.zeros(batch, dim, dim, dtype=torch.float64, device=device)

    @staticmethod
    def partial(qk: RegionTensor, tile: Region) -> TileSums:
        """``(gram, sq)`` of the ``tile`` pixels of a q|k array ``(B, h, w, 2C)`` (overwrites it).

        The rest of the array (halo and scratch) is set to zero rather than cropped away: zeros add
        nothing to the sums, and the array stays one contiguous matrix (no copy).
        """
        t = qk.tensor
        if not t.is_contiguous():
            t = t.contiguous()
        qk.view(tile)  # checks that the tile is valid
        y0, y1 = tile[0] - qk.ay, tile[1] - qk.ay
        x0, x1 = tile[2] - qk.ax, tile[3] - qk.ax
        t[:, :y0].zero_()
        t[:, y1:].zero_()
        t[:, y0:y1, :x0].zero_()
        t[:, y0:y1, x1:].zero_()
        x = t.view(t.shape[0], -1, t.shape[-1])
        c = x.shape[-1] // 2
        gram = torch.bmm(x[:, :, :c].transpose(1, 2), x[:, :, c:]).double()
        return gram, x.square_().sum(1).double()

    def add_partial(self, sums: TileSums) -> None:
        """Add one tile's sums (from :meth:`partial`)."""
        self.gram += sums[0]
        self.sq += sums[1]

    def matrix(self, weights: AttentionWeights, dtype: torch.dtype) -> Tensor:
        """``M`` (B, C, C) such that ``project_out(softmax(...) @ v) = v @ M`` pixel-wise."""
        c, heads = self.dim, weights.heads
        d = c // heads
        eps = 1e-12  # F.normalize
        qn = self.sq[:, :c].sqrt().clamp_min(eps)
        kn = self.sq[:, c:].sqrt().clamp_min(eps)
        a = self.gram / (qn[:, :, None] * kn[:, None, :])
        blocks = torch.stack([a[:, i * d:(i + 1) * d, i * d:(i + 1) * d] for i in range(heads)], 1)
        blocks = (blocks * weights.temperature.double().view(1, heads, 1, 1)).softmax(-1)  # (B, heads, d, d)
        block_diagonal = torch.zeros_like(a)
        for i in range(heads):
            block_diagonal[:, i * d:(i + 1) * d, i * d:(i + 1) * d] = blocks[:, i]
        m = torch.matmul(weights.proj.double(), block_diagonal)  # (B, C, C): y = (Wp Bd) v
        return m.transpose(1, 2).to(dtype).contiguous()
