"""Data-parallel helpers on top of ``torch.distributed`` (launched by ``torchrun``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without
them training runs as a single process. The backend is NCCL on CUDA and gloo on CPU. Gradients are
averaged explicitly after each backward pass (one flattened all-reduce per part), which keeps the four
separately optimised parts of CDDFuse, and Phase I's unused fusion layers, simple to handle.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import UsageError

__all__ = ["DistContext", "init_distributed", "resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if name == "cuda":
            return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its device, and the backend (or None)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        """Mean of ``t`` over ranks (a new tensor; ``t`` itself when single-process)."""
        if not self.enabled:
            return t
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks (one flattened all-reduce)."""
        if not self.enabled:
            return
        grads: list[Tensor] = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        off = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.enabled:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self, barrier: bool = False) -> None:
        """Destroy the process group; with ``barrier``, first wait for every rank to get here."""
        if self.enabled and dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Initialise ``torch.distributed`` from torchrun's environment, or return a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, dev, backend)
