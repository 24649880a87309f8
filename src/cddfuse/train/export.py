"""The end of a run: ``final.safetensors``, the trained weights with the task, residual and provenance
(recipe, data, steps, hardware, time), loadable by ``cddfuse fuse --weights``."""
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


def export_weights(t: Trainer) -> Path:
    """Write ``run_dir/final.safetensors`` from ``t``'s model (rank 0 only); returns its path."""
    from .. import __version__
    from ..models.weights import save_weights

    dest = t.run_dir / "final.safetensors"
    if not t.dist.is_main:
        return dest
    if t.cfg["phase2"]["epochs"] == 0:
        t.warn("Phase II was skipped (phase2.epochs = 0): the fusion layers are untrained, the exported "
               "model only reconstructs")
    prov = {
        "made_by": f"cddfuse {__version__} train",
        "recipe": t.cfg.get("name") or "",
        "training_config": t.cfg,
        "data": t.data_desc,
        "steps": t.global_step,
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
