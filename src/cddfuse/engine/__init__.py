"""The inference runtime of CDDFuse: an optimised engine that runs the network exactly, tile by tile.

The engine computes exactly the function of :class:`cddfuse.models.cddfuse.CDDFuse` (same
weights, same maths; only the floating-point rounding differs), organised for speed and bounded
memory. :func:`fuse_tensors` is the entry point (it chooses tiles, store, precision and, on CUDA,
whole image or tiles); :func:`tiled_fuse` is the exact tiled function underneath. The ONNX export
and ONNX Runtime backend are in :mod:`cddfuse.engine.onnx`.

How it differs from the eager module
------------------------------------
* **Layout.** Activations are ``(B, H, W, C)`` ("channels last"), so every 1x1 convolution is one
  matrix product over pixels and LayerNorm over channels is one fused ``F.layer_norm`` kernel.
  3x3 convolutions see the same memory as an NCHW tensor in ``channels_last`` format.
* **oneDNN with fused post-ops on CPU.** Matrix products and convolutions call oneDNN directly
  (faster than the BLAS path on AMD processors), with ReLU6, GELU, the gate's product and the
  residual adds fused into them (:class:`~cddfuse.engine.ops.FusedOps`; :class:`~cddfuse.engine.ops.Ops`
  is the plain PyTorch version).
* **Fewer FLOPs, same function.** The Lite Transformer's ``qkv1`` (1x1, no bias) followed by
  ``qkv2`` (3x3, zero padding) is linear with nothing between, so the two are composed into one
  3x3 convolution C -> 3C: 110,592 instead of 344,064 multiply-adds per pixel (zero padding
  commutes with a bias-free 1x1 convolution, so borders are exact too).
* **Attention without the reshapes.** The channel attention only needs, per channel, the L2 norm
  of q and k over all pixels and the Gram matrix ``q^T k``; ``F.normalize`` is applied to the
  Gram matrix instead of the data, and ``softmax(...) @ v`` followed by ``project_out`` is one
  ``C x C`` matrix ``M`` per image, applied together with the residual add.
* **Only what is needed.** The pass that gathers an attention's statistics computes q and k
  only; the pass that applies it computes v only. The two sources run as one batch; rho and eta
  of an invertible node share one matrix product and one depthwise convolution.

Exact tiling
------------
Every layer is per pixel, a 3x3 convolution (a one-pixel halo), or a channel attention whose
statistics are sums over all pixels. The network is therefore cut at its attention layers into
*passes*; each pass walks over the tiles of the image, reads its input with the halo it needs,
applies the layers up to the next attention, writes its result for the tile (no halo) to a
full-resolution store and adds the tile's contribution to the next attention's statistics.
Memory is then bounded by the tile size, plus the full-resolution feature maps kept between
passes; those go to unlinked temporary files when they would not fit the memory budget, so image
size is limited by disk space only.

Every tile of a pass is computed in an array of the same size (the largest tile plus its halo,
shifted inwards at the image borders), so oneDNN reuses one primitive per layer and no crop is
ever copied; each array carries its *valid region*, which shrinks by one pixel on interior sides
per 3x3 convolution (:mod:`cddfuse.engine.geometry`). With one tile covering the image the same
code is the fast whole-image path.

Modules: :mod:`~cddfuse.engine.geometry` (regions, tile arrays), :mod:`~cddfuse.engine.ops`
(primitive op backends, CUDA precision), :mod:`~cddfuse.engine.packing` (weights from the module),
:mod:`~cddfuse.engine.attention` (attention statistics over tiles), :mod:`~cddfuse.engine.blocks`
(the network's blocks on tile arrays), :mod:`~cddfuse.engine.stores` (feature maps between passes
and the sources of a pass), :mod:`~cddfuse.engine.memory` (available memory, malloc, the guard),
:mod:`~cddfuse.engine.planning` (tile choice and the memory model), :mod:`~cddfuse.engine.engine`
(the pass runner and the entry points), :mod:`~cddfuse.engine.pointwise` (GELU and the sigmoid
with thread-independent rounding), :mod:`~cddfuse.engine.tuning` (the cached speed choice, above
the engine), :mod:`~cddfuse.engine.onnx` (ONNX export and runtime).

Example (tiled equals whole-image, to float rounding):
    >>> import torch
    >>> from cddfuse.engine import fuse_tensors, tiled_fuse
    >>> from cddfuse.models import CDDFuse, CDDFuseConfig
    >>> _ = torch.manual_seed(0)
    >>> model = CDDFuse(CDDFuseConfig(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1)).eval()
    >>> a, b = torch.rand(1, 1, 40, 50), torch.rand(1, 1, 40, 50)
    >>> with torch.inference_mode():
    ...     whole = model(a, b, residual="vis")
    >>> tiled = tiled_fuse(model, a, b, "vis", tile=16)
    >>> torch.allclose(tiled, whole, atol=1e-5)
    True
    >>> fused = fuse_tensors(model, a, b, "vis", device="cpu", max_memory="2G")
    >>> fused.shape, torch.allclose(fused, whole, atol=1e-5)
    (torch.Size([1, 1, 40, 50]), True)
"""
from .attention import AttentionStats
from .engine import Engine, FusionCancelled, fuse_tensors, n_passes, tiled_fuse
from .geometry import Region, RegionTensor, TileGeometry, plan_tiles
from .memory import DEFAULT_BUDGET, MemoryGuard, available_memory, default_budget, parse_memory, tune_malloc
from .onnx import OnnxFuser, export_onnx, onnx_available
from .ops import PRECISIONS, FusedOps, Ops, fused_ops_available, make_ops, precision_context
from .packing import FastWeights
from .planning import (
    CPU_SPEED_TILE,
    MAX_WORKERS,
    Plan,
    auto_tile,
    choose_plan,
    choose_tile,
    default_workers,
    estimate_memory,
)
from .stores import DiskStore, FeatureStore, MapPool, MemoryStore

__all__ = [
    # entry points
    "fuse_tensors",
    "tiled_fuse",
    "FusionCancelled",
    "PRECISIONS",
    "precision_context",
    # planning and memory
    "plan_tiles",
    "auto_tile",
    "choose_tile",
    "choose_plan",
    "Plan",
    "estimate_memory",
    "default_workers",
    "CPU_SPEED_TILE",
    "MAX_WORKERS",
    "available_memory",
    "default_budget",
    "DEFAULT_BUDGET",
    "parse_memory",
    "tune_malloc",
    "MemoryGuard",
    # the engine's parts
    "Engine",
    "n_passes",
    "FastWeights",
    "Ops",
    "FusedOps",
    "make_ops",
    "fused_ops_available",
    "Region",
    "RegionTensor",
    "TileGeometry",
    "AttentionStats",
    "FeatureStore",
    "MemoryStore",
    "DiskStore",
    "MapPool",
    # ONNX
    "export_onnx",
    "OnnxFuser",
    "onnx_available",
]
