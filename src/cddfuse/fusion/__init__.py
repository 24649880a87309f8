"""The fusion pipeline: sources -> luminance -> network -> normalisation -> colour.

- :mod:`~cddfuse.fusion.stages`: :class:`FusionOptions` and the pipeline's stages with typed results
  (:func:`~cddfuse.fusion.stages.prepare` -> :func:`~cddfuse.fusion.stages.align` -> the network ->
  :func:`~cddfuse.fusion.stages.normalise` -> :func:`~cddfuse.fusion.stages.colour`);
- :mod:`~cddfuse.fusion.fuser`: :class:`Fuser` -- one pair (or a batch of pairs) in memory, the stages
  composed around a loaded network;
- :mod:`~cddfuse.fusion.folder`: :func:`fuse_folders` -- two folders of pairs to an output folder;
- :mod:`~cddfuse.fusion.policy`: the residual choice, the baseline rules, min-max normalisation
  (numpy only; shared with ``cddfuse bench``).

Names are imported on first use, so that ``cddfuse.fusion.policy`` does not load torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .folder import FolderReport, fuse_folders
    from .fuser import Fuser, FusionResult, fuse, resolve_device
    from .policy import fuse_rule, minmax_normalize, resolve_residual
    from .stages import FusionOptions, PreparedPair, SourcePair

__all__ = ["Fuser", "FusionResult", "fuse", "resolve_device", "resolve_residual", "minmax_normalize", "fuse_rule",
           "fuse_folders", "FolderReport", "FusionOptions", "PreparedPair", "SourcePair"]

_WHERE = {
    "Fuser": "fuser", "FusionResult": "fuser", "fuse": "fuser", "resolve_device": "fuser",
    "resolve_residual": "policy", "minmax_normalize": "policy", "fuse_rule": "policy",
    "fuse_folders": "folder", "FolderReport": "folder",
    "FusionOptions": "stages", "PreparedPair": "stages", "SourcePair": "stages",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
