"""Training CDDFuse on your own image pairs: data preparation, losses, the two-phase trainer.

Submodules (imported lazily, so that ``import cddfuse.train`` stays cheap):

* :mod:`cddfuse.train.config` -- the recipe as a nested dict: defaults, YAML, overrides, validation;
* :mod:`cddfuse.train.data` -- luminance reading, the paper's patches, random crops, caches, sampler;
* :mod:`cddfuse.train.losses` -- correlation, decomposition, Phase-I and Phase-II losses;
* :mod:`cddfuse.train.trainer` -- :class:`~cddfuse.train.trainer.Trainer` and :func:`~cddfuse.train.trainer.train`:
  set-up and the loop, composed of its parts :mod:`~cddfuse.train.state` (the run's state:
  network, optimisers, position), :mod:`~cddfuse.train.step` (one optimisation step),
  :mod:`~cddfuse.train.checkpoint` (resumable checkpoints of the state, RNG state),
  :mod:`~cddfuse.train.validation` (held-out pairs), :mod:`~cddfuse.train.logs` (TensorBoard, progress),
  :mod:`~cddfuse.train.control` (stop requests, time budget) and :mod:`~cddfuse.train.export` (final weights);
* :mod:`cddfuse.train.distill` -- distilling CDDFuse-lite from a CDDFuse teacher, on the same machinery;
* :mod:`cddfuse.train.distributed` -- torchrun / torch.distributed helpers.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Trainer", "TrainResult", "train", "load_checkpoint", "load_config", "apply_overrides", "validate"]

_LAZY = {
    "Trainer": "trainer", "TrainResult": "trainer", "train": "trainer", "load_checkpoint": "trainer",
    "load_config": "config", "apply_overrides": "config", "validate": "config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
