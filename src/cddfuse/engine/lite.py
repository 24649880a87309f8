"""Running CDDFuse-lite (:mod:`cddfuse.models.lite`): the module itself, in the chosen precision.

The exact engine of CDDFuse (passes cut at attention layers, tiles, disk-backed feature maps) is not
needed for the lite network: it is small, its low-resolution path works at a quarter of the resolution
and below, and its full-resolution part runs in strips of about a megapixel (exact: each strip carries
the halo its convolutions need), so memory stays a few tens of bytes per pixel whatever the image size.
The whole image goes through the module in one call; it is not cut into tiles, because the network's
context block averages over the whole image (tiles would change the result).

Precision: ``fp32`` (default), ``tf32`` (CUDA: TF32 tensor cores) and ``bf16`` (bfloat16 autocast:
CUDA, or a CPU with AMX or AVX512-BF16 -- the caller checks; elsewhere bfloat16 is slower than float32).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import Tensor, nn

from .._malloc import trim
from ..models.lite import STRIP_PIXELS

__all__ = ["run_lite", "lite_precision", "prepare_lite"]

_M = TypeVar("_M", bound=nn.Module)


def prepare_lite(model: _M) -> _M:
    """Lay the module's convolution weights out channels-last (NHWC), in place; returns it.

    oneDNN runs the thin full-resolution convolutions of the lite network (a handful of channels over
    every pixel) several times faster in NHWC than in NCHW on CPU (3x3, 5 -> 8 channels at 640x480:
    21.5 -> 4.9 ms, one AMD EPYC thread), and their outputs then stay NHWC. The function is the same; the
    sums are taken in another order (the output differs by a few 1e-7).
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def lite_precision(precision: str, device: torch.device) -> Iterator[None]:
    """``fp32``: true float32 (TF32 off on CUDA); ``tf32``: TF32 tensor cores (CUDA); ``bf16``: bfloat16
    autocast on CUDA or CPU."""
    from .ops import precision_context

    with precision_context(precision, device):
        if precision == "bf16" and device.type == "cpu":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield


#: torch threads for the lite network on CPU. Its ~100 small operations per call each end in a barrier of
#: the thread pool; when any other thread wants a core (the pipeline's decoding and encoding threads, or
#: another process) a waiting pool thread stalls every operation: a 60-frame 640x480 video with the
#: pipeline's own threads ran at 1.6 frames/s with 2 threads and 12.8 with 1 (2-core AMD EPYC), and a
#: 640x480 pair took 596 ms with 2 threads while another process kept a core busy, 42-48 ms with 1
#: (about 35 ms with 2 on a nearly idle machine).
LITE_CPU_THREADS = 1


def run_lite(model: nn.Module, a: Tensor, b: Tensor, *, precision: str = "fp32") -> Tensor:
    """CDDFuse-lite on ``(N, 1, H, W)`` float32 sources in [0, 1] -> ``(N, 1, H, W)`` float32 on the
    model's device (the un-normalised fused luminance, residual included). On CPU with
    :data:`LITE_CPU_THREADS` torch threads (the caller's setting is restored after)."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"expected two (N, 1, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    dev = next(model.parameters()).device
    threads = torch.get_num_threads()
    single = dev.type == "cpu" and threads > LITE_CPU_THREADS
    if single:
        torch.set_num_threads(LITE_CPU_THREADS)
    try:
        with torch.inference_mode(), lite_precision(precision, dev):
            out = model(a.to(dev), b.to(dev))
    finally:
        if single:
            torch.set_num_threads(threads)
    if dev.type == "cpu" and a.numel() > STRIP_PIXELS:
        # the strips' buffers were freed into malloc's heap, where they would stay resident while the
        # pipeline allocates its next full-size arrays: give them back (a 4096x4096 colour pair peaked
        # 140 MiB lower; milliseconds)
        trim()
    return out if out.dtype == torch.float32 else out.float()
