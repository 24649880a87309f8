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
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from .state import TrainState

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


def export_weights(state: TrainState, dest: os.PathLike[str] | str, *, device: torch.device, session_s: float,
                   status: str = "complete", warn: Callable[[str], None] | None = None) -> Path:
    """Write the model of the run ``state`` as cddfuse safetensors to ``dest``, atomically; returns the path.
    Call it on one process (rank 0) only.

    Args:
        state: the run.
        dest: where to write (the trainer's: ``run_dir/final.safetensors``, or ``checkpoint.weights``).
        device: where the run trains (recorded, with its hardware).
        session_s: seconds trained in this session so far (added to the earlier sessions' time).
        status: the run's state, recorded in the provenance with the steps done in each phase:
            ``complete`` (the end), ``running`` (a checkpoint) or ``stopped`` (``--max-time``, SIGTERM).
        warn: told when Phase II was skipped (the fusion layers are untrained).
    """
    from .. import __version__
    from ..models.weights import save_weights

    cfg = state.cfg
    if cfg["phase2"]["epochs"] == 0 and warn is not None:
        warn("Phase II was skipped (phase2.epochs = 0): the fusion layers are untrained, the exported "
             "model only reconstructs")
    phase1_steps = state.phase1_epochs * state.steps_per_epoch
    prov = {
        "made_by": f"cddfuse {__version__} train",
        "status": status,
        "recipe": cfg.get("name") or "",
        "training_config": cfg,
        "data": state.data_desc,
        "steps": state.global_step,
        "total_steps": state.total_steps,
        "phase2_steps": max(0, state.global_step - phase1_steps),  # optimisation steps of Phase II (fusion)
        "epochs": state.epoch,
        "phase1_epochs": state.phase1_epochs,
        "phase2_epochs": cfg["phase2"]["epochs"],
        "global_batch": state.global_batch,
        "processes": state.world_size,
        "device": str(device),
        "hardware": hardware_description(device),
        "train_time_s": round(state.train_time + session_s, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": str(torch.__version__),
    }
    dest = Path(dest)
    save_weights(state.model, dest, task=cfg["task"], residual=cfg["phase2"]["residual"],
                 normalize="minmax", provenance=prov)
    return dest
