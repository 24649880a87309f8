"""Bundled (pretrained) weights: metadata kept apart from the architecture.

Weights ship inside the package under ``cddfuse/weights/``. A task whose file is not shipped
yet raises a clear error instead of ever falling back to random weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CDDFuseError
from .cddfuse import CDDFuse
from .lite import CDDFuseLite
from .weights import WeightsInfo, load_lite_weights, load_weights

__all__ = ["PretrainedSpec", "PRETRAINED", "PRETRAINED_LITE", "pretrained_path", "lite_pretrained_path",
           "cddfuse_ivf", "cddfuse_mif", "cddfuse_lite"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class PretrainedSpec:
    """A shipped model: its task (``ivf`` or ``mif``), its file under the package's weights, a description."""

    task: str
    filename: str
    description: str


PRETRAINED: dict[str, PretrainedSpec] = {
    "ivf": PretrainedSpec("ivf", "cddfuse_ivf.safetensors", "infrared-visible fusion, trained on RoadScene"),
    "mif": PretrainedSpec("mif", "cddfuse_mif.safetensors",
                          "medical fusion (CT/PET/SPECT with MRI), trained on Harvard"),
}


#: The bundled CDDFuse-lite students (distilled from the bundled exact weights of the same task).
PRETRAINED_LITE: dict[str, PretrainedSpec] = {
    "ivf": PretrainedSpec("ivf", "cddfuse_lite_ivf.safetensors",
                          "CDDFuse-lite infrared-visible, distilled from the bundled IVF weights on RoadScene"),
    "mif": PretrainedSpec("mif", "cddfuse_lite_mif.safetensors",
                          "CDDFuse-lite medical, distilled from the bundled MIF weights on Harvard"),
}


def pretrained_path(task: str, method: str = "cddfuse") -> Path:
    """Path of the bundled weights for ``task`` (``method="lite"``: the CDDFuse-lite student's);
    :class:`CDDFuseError` if none are shipped."""
    if method == "lite":
        return lite_pretrained_path(task)
    if task not in PRETRAINED:
        raise CDDFuseError(f"unknown task {task!r}; choose one of {sorted(PRETRAINED)}")
    p = WEIGHTS_DIR / PRETRAINED[task].filename
    if not p.is_file():
        head = f"no bundled weights for task {task!r} in this installation; "
        files = "(for example the authors' CDDFuse_IVF.pth or CDDFuse_MIF.pth, or a model from 'cddfuse train')"
        raise CDDFuseError(head + f"pass weights=PATH {files}, or use method='mean' or 'max'",
                           cli=head + f"pass --weights PATH {files}, or use --method mean|max")
    return p


def lite_pretrained_path(task: str) -> Path:
    """Path of the bundled CDDFuse-lite weights for ``task``; :class:`CDDFuseError` (one line) if this
    installation has none -- never random weights."""
    if task not in PRETRAINED_LITE:
        raise CDDFuseError(f"unknown task {task!r}; choose one of {sorted(PRETRAINED_LITE)}")
    p = WEIGHTS_DIR / PRETRAINED_LITE[task].filename
    if not p.is_file():
        head = f"no bundled CDDFuse-lite weights for task {task!r} in this installation ({p.name} is missing); "
        raise CDDFuseError(head + "pass weights=PATH (lite weights from 'cddfuse distill'), or use method='cddfuse'",
                           cli=head + "pass --weights PATH (lite weights from 'cddfuse distill'), or use "
                                      "--method cddfuse")
    return p


def _load(task: str, device: str) -> tuple[CDDFuse, WeightsInfo]:
    return load_weights(pretrained_path(task), device=device)


def cddfuse_ivf(device: str = "cpu") -> CDDFuse:
    """CDDFuse with the bundled infrared-visible weights (eval mode)."""
    return _load("ivf", device)[0]


def cddfuse_mif(device: str = "cpu") -> CDDFuse:
    """CDDFuse with the bundled medical weights (eval mode)."""
    return _load("mif", device)[0]


def cddfuse_lite(task: str = "ivf", device: str = "cpu") -> CDDFuseLite:
    """CDDFuse-lite with the bundled weights of ``task`` (eval mode)."""
    return load_lite_weights(lite_pretrained_path(task), device=device)[0]
