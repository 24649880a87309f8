"""What a run shows while it trains: TensorBoard scalars and image grids, and the progress bar (or log lines).

TensorBoard tags: ``loss_phase{1,2}/<part>`` (every loss term), ``lr/<part>``, ``perf/pairs_per_s``,
``perf/step_s``, ``progress/epoch``, ``images/phase1_a-reca-b-recb`` or ``images/phase2_a-b-fused``,
and ``val/<metric>`` (:mod:`cddfuse.train.validation`). All of it on rank 0 only.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from .._fileutil import atomic_write_bytes, remove_stale_temporaries

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from .losses import LossWeights

__all__ = ["start_run_dir", "open_writer", "log_scalars", "log_images", "progress_bar", "show_progress"]


def start_run_dir(run_dir: Path, config_text: str, *, tensorboard: bool, global_step: int,
                  warn: Callable[[str], None]) -> SummaryWriter | None:
    """Ready the run folder for a session (main process only): create it, remove the temporary files a
    killed earlier session left in it and in ``checkpoints/``, write ``config.yaml``, and open the
    TensorBoard writer when ``tensorboard`` (see :func:`open_writer`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_stale_temporaries(folder)
    atomic_write_bytes(run_dir / "config.yaml", config_text.encode())
    return open_writer(run_dir, global_step, warn) if tensorboard else None


def open_writer(run_dir: Path, global_step: int, warn: Callable[[str], None]) -> SummaryWriter | None:
    """A TensorBoard writer on ``run_dir/tb`` (events after ``global_step`` from an interrupted
    session are purged), or ``None`` with a warning when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # noqa: BLE001 - tensorboard missing or broken
        warn(f"TensorBoard logging off ({e}); install the 'train' extra: pip install 'cddfuse[train]'")
        return None
    return SummaryWriter(str(run_dir / "tb"), purge_step=global_step or None)


def log_scalars(writer: SummaryWriter, step: int, phase: int, parts: dict[str, float], lrs: dict[str, float],
                step_s: float, global_batch: int, epoch: int) -> None:
    """The loss parts, each part's learning rate, the speed and the epoch at ``step``."""
    for k, v in parts.items():
        writer.add_scalar(f"loss_phase{phase}/{k}", v, step)
    for p, lr in lrs.items():
        writer.add_scalar(f"lr/{p}", lr, step)
    if step_s > 0:
        writer.add_scalar("perf/pairs_per_s", global_batch / step_s, step)
        writer.add_scalar("perf/step_s", step_s, step)
    writer.add_scalar("progress/epoch", epoch, step)


def log_images(writer: SummaryWriter, step: int, phase: int, images: list[Tensor]) -> None:
    """One grid: rows = samples; columns = a, rec_a, b, rec_b (Phase I) or a, b, fused (Phase II)."""
    if not images:
        return
    rows = [torch.cat([t[i, 0] for t in images], dim=1) for i in range(images[0].shape[0])]
    grid = torch.cat(rows, dim=0).clamp(0, 1)[None]
    tag = "images/phase1_a-reca-b-recb" if phase == 1 else "images/phase2_a-b-fused"
    writer.add_image(tag, grid, step, dataformats="CHW")


def progress_bar(total: int, initial: int, show: bool) -> tqdm[Any]:
    """The step bar on stderr (disabled, not absent, when ``show`` is false or stderr is not a terminal:
    a log file then gets the plain lines of :func:`show_progress` instead of carriage returns)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not (show and sys.stderr.isatty()), unit="step",
                dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def show_progress(bar: tqdm[Any], echo: Callable[[str], None], vals: dict[str, float], weights: LossWeights, *,
                  phase: int, epoch: int, total_epochs: int, step: int, total_steps: int, rate: float) -> None:
    """A few loss terms and the speed in the bar's postfix, or as a log line when the bar is off."""
    if phase == 1:
        short = {"loss": vals["total"], "rec": vals["ssim_a"] * weights.recon_ssim + vals["mse_a"]
                 + vals["ssim_b"] * weights.recon_ssim + vals["mse_b"],
                 "grad": vals["grad_b"], "dec": vals["decomp"]}
    else:
        short = {"loss": vals["total"], "int": vals["intensity"], "grad": vals["gradient"], "dec": vals["decomp"]}
    desc = f"P{'I' if phase == 1 else 'II'} ep {epoch + 1}/{total_epochs}"
    if bar.disable:
        echo(f"{desc} step {step}/{total_steps} " + " ".join(f"{k} {v:.4g}" for k, v in short.items())
             + f" {rate:.2f} pairs/s")
        return
    bar.set_description(desc, refresh=False)
    bar.set_postfix({**{k: f"{v:.4g}" for k, v in short.items()}, "pairs/s": f"{rate:.2f}"}, refresh=False)
