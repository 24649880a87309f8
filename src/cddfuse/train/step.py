"""One optimisation step of CDDFuse training (:class:`TrainStep`, the part of
:class:`~cddfuse.train.trainer.Trainer` that touches gradients): the network's forward pass per phase,
gradient accumulation over chunks of the batch, the decomposition loss at the batch-mean correlations,
per-part gradient averaging (data parallel), clipping and optimiser steps, and the per-part
learning-rate schedules.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from .._malloc import use_malloc_preset
from ..models.cddfuse import residual_image
from . import config as C
from .losses import LossWeights, cc, phase1_loss, phase2_loss

if TYPE_CHECKING:
    from ..models import CDDFuse
    from .distributed import DistContext

__all__ = ["TrainStep", "tune_glibc_malloc"]


def _cpu_activation_budget() -> int:
    """Bytes of activations a CPU chunk may hold: min(8 GB, physical memory / 3)."""
    cap = 8 * 1024 ** 3
    try:
        return min(cap, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 3)
    except (ValueError, OSError, AttributeError):
        return cap


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the process (glibc): no ``mmap`` per large tensor, no trimming.

    CPU training allocates and frees hundreds of tensors of tens of MB per step. glibc serves each
    from a fresh ``mmap`` and returns it on free, so every step page-faults (and the kernel zeroes)
    gigabytes: 15-40 % of a step on a 2-core machine. With ``M_MMAP_MAX = 0`` and the largest
    ``M_TRIM_THRESHOLD`` the heap is reused instead. No effect (returns False) off glibc.
    """
    return use_malloc_preset("training")


def _cc_pair(base: Tensor, detail: Tensor, k: int) -> Tensor:
    """``(cc_base, cc_detail)`` (float64) between the two sources of a chunk's stacked features."""
    return torch.stack((cc(base[k:], base[:k]), cc(detail[k:], detail[:k]))).double()


def _constant(value: Tensor) -> Callable[[Tensor], Tensor]:
    """A ``cc_reduce`` that ignores a chunk's own correlations and gives ``value`` (the batch means)."""
    return lambda _local: value


@dataclass
class TrainStep:
    """The optimisation step of CDDFuse training, composed into :class:`~cddfuse.train.trainer.Trainer`
    (which builds one from its parts) and usable on its own (the step benchmark does).

    It holds references, not copies: stepping changes ``model``, ``optimizers`` and ``schedulers`` in place.

    Attributes:
        cfg: the resolved configuration (``phase1/2.parts``, ``phase2.residual``, ``optim.grad_clip``,
            ``sched.min_lr``, ``train.micro_batch`` are read).
        model: the network.
        optimizers: one optimiser per part (:data:`cddfuse.train.config.PARTS`).
        schedulers: one learning-rate schedule per part (stepped by :meth:`end_epoch`).
        dist: the data-parallel context (gradients averaged over its processes; its device is used).
        weights: the loss weights.
        use_bf16: bfloat16 autocast for the forward passes.
        sample_hw: the training samples' ``(height, width)`` (sizes the CPU micro-batches).
    """

    cfg: dict[str, Any]
    model: CDDFuse
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.StepLR]
    dist: DistContext
    weights: LossWeights
    use_bf16: bool = False
    sample_hw: tuple[int, ...] = (128, 128)

    @property
    def device(self) -> torch.device:
        """Where the step runs (the data-parallel context's device)."""
        return self.dist.device

    def parts_of(self, phase: int) -> list[str]:
        """The parts trained in ``phase``."""
        return list(self.cfg[f"phase{phase}"]["parts"])

    def micro_batch(self, n: int) -> int:
        """Pairs per forward/backward chunk for a local batch of ``n`` pairs.

        ``auto``: the whole batch on CUDA; on CPU as many pairs as fit in an activation budget of
        min(8 GB, RAM / 3), estimated from the network sizes and the sample size (the paper's network
        keeps ~1.6 GB per 128x128 image), at least one.
        """
        mb = self.cfg["train"]["micro_batch"]
        if mb == "auto":
            if self.device.type != "cpu":
                return n
            return max(1, min(n, _cpu_activation_budget() // self._bytes_per_pair()))
        return max(1, min(int(mb), n))

    def _bytes_per_pair(self) -> int:
        c = self.model.config
        h, w = self.sample_hw
        maps = 35 * (c.encoder_blocks + c.decoder_blocks) + 100  # feature maps kept for backward, per image
        return max(1, 2 * 4 * h * w * c.dim * maps)

    def _forward(self, a: Tensor, b: Tensor, phase: int) -> tuple[Tensor, Tensor, Tensor]:
        """Network outputs for one chunk: ``(base, detail, out)`` (out = both reconstructions or the fusion)."""
        model = self.model
        n = a.shape[0]
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            x = torch.cat((a, b), dim=0)  # both sources through the shared encoder as one batch
            base, detail, _ = model.encode(x)
            if phase == 1:
                out = model.decode(base, detail, x)  # residual = each source itself
            else:
                fb, fd = model.fuse_features(base[:n], base[n:], detail[:n], detail[n:])
                out = model.decode(fb, fd, residual_image(a, b, self.cfg["phase2"]["residual"]))
        if self.use_bf16:
            base, detail, out = base.float(), detail.float(), out.float()
        return base, detail, out

    @torch.no_grad()
    def _chunks_cc_sum(self, a: Tensor, b: Tensor, chunks: list[tuple[int, int]]) -> Tensor:
        """Sum over ``chunks`` of ``pairs x (cc_base, cc_detail)``, from a gradient-free encoder pass."""
        total = torch.zeros(2, dtype=torch.float64, device=a.device)
        for s, e in chunks:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                base, detail, _ = self.model.encode(torch.cat((a[s:e], b[s:e]), dim=0))
            total += _cc_pair(base.float(), detail.float(), e - s) * (e - s)
        return total

    def train_step(self, a: Tensor, b: Tensor, phase: int,
                   want_images: bool = False) -> tuple[dict[str, Tensor], list[Tensor] | None]:
        """One optimisation step on this rank's batch ``(a, b)``; returns (detached loss parts, images or None).

        The batch is processed in chunks of :meth:`micro_batch` pairs (gradient accumulation), which
        keeps the activations small on CPU (the paper's batch of 8 128x128 pairs needs ~26 GB at
        once). Every loss term is a batch mean, so each chunk's loss is weighted by its share of the
        batch. The decomposition loss, a non-linear function of the batch-mean correlations, is
        evaluated at the batch (and, data-parallel, global) means, with each chunk's own gradient
        (see :func:`cddfuse.train.losses._global_cc`): the correlations of all chunks but the last
        come from a gradient-free encoder pass, the last chunk is processed first and contributes
        its own. The result is the full-batch gradient.
        """
        model = self.model
        parts = self.parts_of(phase)
        for p in C.PARTS:
            self.optimizers[p].zero_grad(set_to_none=True)
        n = a.shape[0]
        mb = self.micro_batch(n)
        chunks = [(s, min(s + mb, n)) for s in range(0, n, mb)]
        several = len(chunks) > 1
        if several:
            others = self._chunks_cc_sum(a, b, chunks[:-1])
            chunks = chunks[-1:] + chunks[:-1]  # the last chunk first: its forward completes the means
        totals: dict[str, Tensor] = {}
        images: list[Tensor] | None = None
        cc_reduce: Callable[[Tensor], Tensor] | None = None
        for i, (s, e) in enumerate(chunks):
            ca, cb = a[s:e], b[s:e]
            k = e - s
            base, detail, out = self._forward(ca, cb, phase)
            if several and i == 0:
                mine = _cc_pair(base.detach().float(), detail.detach().float(), k) * k
                glob = self.dist.all_reduce_mean(((others + mine) / n).float())
                cc_reduce = _constant(glob)
            elif not several:
                cc_reduce = self.dist.all_reduce_mean if self.dist.enabled else None
            fa, fbb = (base[:k], detail[:k]), (base[k:], detail[k:])
            if phase == 1:
                losses = phase1_loss(ca, cb, fa, fbb, out[:k], out[k:], self.weights, cc_reduce=cc_reduce)
            else:
                losses = phase2_loss(ca, cb, fa, fbb, out, self.weights, cc_reduce=cc_reduce)
            share = k / n
            (losses["total"] * share if several else losses["total"]).backward()  # type: ignore[no-untyped-call]
            for key, v in losses.items():
                totals[key] = totals.get(key, 0.0) + v.detach() * share
            if want_images and s == 0:
                j = min(4, k)
                images = [ca[:j], out[:j], cb[:j], out[k:k + j]] if phase == 1 else [ca[:j], cb[:j], out[:j]]
                images = [t.detach().float().cpu() for t in images]
            del base, detail, out, losses
        clip = self.cfg["optim"]["grad_clip"]
        for p in parts:
            params = list(getattr(model, p).parameters())
            self.dist.average_gradients(params)
            if clip:
                torch.nn.utils.clip_grad_norm_(params, max_norm=clip, norm_type=2)
            self.optimizers[p].step()
        return totals, images

    def end_epoch(self, phase: int) -> None:
        """Step the schedules of the parts trained in ``phase`` (at the end of an epoch), then floor each
        learning rate at ``sched.min_lr``."""
        floor = self.cfg["sched"]["min_lr"]
        for p in self.parts_of(phase):
            self.schedulers[p].step()
            for g in self.optimizers[p].param_groups:
                if g["lr"] <= floor:
                    g["lr"] = floor
