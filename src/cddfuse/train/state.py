"""The state of a training run: what a checkpoint saves and restores (:mod:`~cddfuse.train.checkpoint`) and
what the exported weights describe (:mod:`~cddfuse.train.export`).

:class:`TrainState` is a small object of its own, not the trainer: the checkpoint and export code see
the resolved config, the data description, the network with its optimisers and schedulers, the run's
fixed sizes and its position, and nothing of the loop, the data loader, logging or the time budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..models import CDDFuse

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """A training run's state (the trainer owns one and changes its position as it goes).

    Attributes:
        cfg: the resolved configuration (:func:`cddfuse.train.config.validate`-d).
        data_desc: what the training data are (:func:`cddfuse.train.datasets.build_dataset`); a resume
            must find the same.
        model: the network being trained.
        optimizers: one Adam per part (encoder, decoder, base_fuse, detail_fuse).
        schedulers: one StepLR per part.
        steps_per_epoch: optimisation steps per epoch (counted on the global batch, so any number of
            processes takes the same steps).
        global_batch: pairs per step, all processes together.
        dataset_len: training samples.
        world_size: processes training together.
        epoch: the current epoch (``0 ..``; :attr:`total_epochs` when the run is complete).
        step_in_epoch: steps done in the current epoch.
        global_step: steps done in the whole run.
        train_time: seconds spent training in the earlier sessions of the run.
        sessions: earlier sessions (the first run and each resume are one each).
    """

    cfg: dict[str, Any]
    data_desc: dict[str, Any]
    model: CDDFuse
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.StepLR]
    steps_per_epoch: int
    global_batch: int
    dataset_len: int
    world_size: int = 1
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    train_time: float = 0.0
    sessions: int = 0

    @property
    def phase1_epochs(self) -> int:
        """Epochs of Phase I (``phase1.epochs``)."""
        return int(self.cfg["phase1"]["epochs"])

    @property
    def total_epochs(self) -> int:
        """Epochs of both phases."""
        return self.phase1_epochs + int(self.cfg["phase2"]["epochs"])

    @property
    def total_steps(self) -> int:
        """Optimisation steps of the whole run."""
        return self.steps_per_epoch * self.total_epochs

    def phase_of(self, epoch: int) -> int:
        """The phase (1 or 2) that ``epoch`` belongs to."""
        return 1 if epoch < self.phase1_epochs else 2

    @property
    def phase(self) -> int:
        """The phase of the current epoch (of the last epoch once the run is complete)."""
        return self.phase_of(min(self.epoch, self.total_epochs - 1))
