"""The end of a run: ``final.safetensors``, the trained weights with the task, residual and provenance
(recipe, data, steps, hardware, time), loadable by ``cddfuse fuse --weights``.

The same export, with the run's status (``running`` / ``stopped``) in the provenance, also writes the
``checkpoint.weights`` file at every checkpoint: the latest weights of a run that may not finish (a
``--max-time`` stop, a machine taken away) in a form ``cddfuse fuse`` reads, without the checkpoint.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["export_weights", "hardware_description"]


def hardware_description(device: torch.device) -> str:
    """E.g. ``"AMD EPYC 9B14, 2 CPU cores"`` or ``"NVIDIA H100 80GB HBM3"`` (for weight metadata)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def export_weights(t: Trainer, dest: os.PathLike[str] | str | None = None, status: str = "complete") -> Path:
    """Write ``t``'s model as cddfuse safetensors (rank 0 only), atomically; returns the path.

    Args:
        t: the trainer.
        dest: where to write (default ``run_dir/final.safetensors``).
        status: the run's state, recorded in the provenance with the steps done in each phase:
            ``complete`` (the end), ``running`` (a checkpoint) or ``stopped`` (``--max-time``, SIGTERM).
    """
    from .. import __version__
    from ..models.weights import save_weights

    dest = t.run_dir / "final.safetensors" if dest is None else Path(dest)
    if not t.dist.is_main:
        return dest
    if t.cfg["phase2"]["epochs"] == 0:
        t.warn("Phase II was skipped (phase2.epochs = 0): the fusion layers are untrained, the exported "
               "model only reconstructs")
    phase1_steps = t.e1 * t.steps_per_epoch
    prov = {
        "made_by": f"cddfuse {__version__} train",
        "status": status,
        "recipe": t.cfg.get("name") or "",
        "training_config": t.cfg,
        "data": t.data_desc,
        "steps": t.global_step,
        "total_steps": t.total_steps,
        "phase2_steps": max(0, t.global_step - phase1_steps),  # optimisation steps of Phase II (fusion)
        "epochs": t.epoch,
        "phase1_epochs": t.e1,
        "phase2_epochs": t.cfg["phase2"]["epochs"],
        "global_batch": t.global_batch,
        "processes": t.dist.world_size,
        "device": str(t.device),
        "hardware": hardware_description(t.device),
        "train_time_s": round(t.train_time + t.budget.session_time(), 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": str(torch.__version__),
    }
    save_weights(t.model, dest, task=t.cfg["task"], residual=t.cfg["phase2"]["residual"],
                 normalize="minmax", provenance=prov)
    return dest
