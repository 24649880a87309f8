"""cddfuse: CDDFuse multi-modality image fusion (Zhao et al., CVPR 2023), exact to the paper,
fast and practical.

Main entry points (imported lazily, so ``import cddfuse`` and the CLI start quickly):

- :class:`cddfuse.fusion.Fuser` / :func:`cddfuse.fusion.fuse` — fuse files, arrays or PIL images, with
  :class:`cddfuse.fusion.FusionOptions` (the pipeline's stages are in :mod:`cddfuse.fusion.stages`);
- :func:`cddfuse.fusion.fuse_folders` — fuse two folders of pairs (resumable, atomic);
- :class:`cddfuse.models.CDDFuse`, :class:`cddfuse.models.CDDFuseConfig` — the torch module;
- :func:`cddfuse.models.weights.load_weights` / :func:`~cddfuse.models.weights.save_weights`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy imports below give, for type checkers and IDEs
    from .fusion import FolderReport, Fuser, FusionOptions, fuse, fuse_folders
    from .models import CDDFuse, CDDFuseConfig
    from .models.weights import load_weights, save_weights

__version__ = "0.1.0"

__all__ = ["Fuser", "FusionOptions", "fuse", "fuse_folders", "FolderReport", "CDDFuse", "CDDFuseConfig", "load_weights",
           "save_weights", "__version__"]

_LAZY = {
    "Fuser": "cddfuse.fusion",
    "FusionOptions": "cddfuse.fusion",
    "fuse": "cddfuse.fusion",
    "fuse_folders": "cddfuse.fusion",
    "FolderReport": "cddfuse.fusion",
    "CDDFuse": "cddfuse.models",
    "CDDFuseConfig": "cddfuse.models",
    "load_weights": "cddfuse.models.weights",
    "save_weights": "cddfuse.models.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cddfuse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
