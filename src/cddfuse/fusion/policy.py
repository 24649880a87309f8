"""The fusion policy shared by every caller (``Fuser``, folder fusion, ``cddfuse bench``): which
residual image the decoder adds, the baseline rules, and the min-max normalisation -- each written
once, numpy only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..options import CHROMA_MODES, RESIDUAL_CHOICES, ChromaMode, ResidualMode, check_choice

if TYPE_CHECKING:
    from ..models.weights import WeightsInfo

__all__ = ["resolve_residual", "resolve_chroma", "minmax_normalize", "fuse_rule", "stretch", "is_flat", "FLAT_RANGE"]


def resolve_residual(residual: str, task: str, info: WeightsInfo | None,
                     weights_task: str | None = None) -> ResidualMode:
    """The residual mode for ``residual="auto"``, as the authors' inference scripts choose it.

    Weights trained for infrared-visible fusion (residual ``vis``) use the visible image for IVF
    (``task="ivf"``) and the sum of both sources when applied to medical pairs (their
    ``test_MIF.py`` with IVF weights); weights that state another mode (their MIF weights: ``none``)
    keep it. ``weights_task`` says which kind of weights these are when the caller knows better than
    the file (``cddfuse bench --task``): then they are decoded as the authors decode such weights.

    Example:
        >>> resolve_residual("auto", "ivf", None), resolve_residual("auto", "mif", None)
        ('vis', 'sum')
        >>> resolve_residual("auto", "mif", None, weights_task="mif")
        'none'
    """
    check_choice("residual", residual, RESIDUAL_CHOICES)
    if residual != "auto":
        return residual  # type: ignore[return-value]
    declared = info.task if info is not None else None
    if weights_task is not None and weights_task != declared:
        return "none" if weights_task == "mif" else ("sum" if task == "mif" else "vis")
    trained = (info.residual if info is not None else None) or "vis"
    made_for_ivf = declared in (None, "ivf")
    if trained == "vis" and task == "mif" and made_for_ivf:
        return "sum"
    return trained


def resolve_chroma(chroma: str, task: str) -> ChromaMode:
    """The colour mode for ``chroma="auto"``: ``saturation`` for infrared-visible pairs (night scenes keep
    their colour where the infrared brightens them), ``ycbcr`` for medical pairs (a PET/SPECT colour map
    encodes values: its faint low end is not strengthened over bright MRI).

    Example:
        >>> resolve_chroma("auto", "ivf"), resolve_chroma("auto", "mif"), resolve_chroma("ycbcr", "ivf")
        ('saturation', 'ycbcr', 'ycbcr')
    """
    mode = check_choice("chroma", chroma, CHROMA_MODES)
    if mode != "auto":
        return mode
    return "ycbcr" if task == "mif" else "saturation"


def minmax_normalize(x: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` over the whole image in float32 -- the authors' arithmetic (their test
    scripts do it on the float32 network output); a constant image becomes zeros.

    Example:
        >>> minmax_normalize(np.array([[2.0, 4.0], [6.0, 10.0]]))
        array([[0.  , 0.25],
               [0.5 , 1.  ]], dtype=float32)
    """
    x = np.asarray(x, dtype=np.float32)
    lo, hi = x.min(), x.max()
    if not hi > lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


#: A fused luminance whose values span less than this (two 8-bit grey levels) is taken as flat: min-max
#: normalisation would stretch its rounding noise to the full range (two black sources came out as
#: grey noise, two white ones as black), so it is kept as computed instead.
FLAT_RANGE = 2.0 / 255.0


def is_flat(x: np.ndarray) -> bool:
    """True when the values of ``x`` span less than :data:`FLAT_RANGE`.

    Example:
        >>> is_flat(np.full((2, 2), 0.7)), is_flat(np.array([0.0, 0.5]))
        (True, False)
    """
    return bool(float(np.max(x)) - float(np.min(x)) < FLAT_RANGE)


def stretch(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """The ``--normalize minmax`` step of the pipeline: :func:`minmax_normalize`, except for a (nearly) flat
    ``x`` (:func:`is_flat`), which is returned clipped to [0, 1] as computed. Returns ``(image, flat)``.

    Example:
        >>> stretch(np.full((1, 2), 1.0))[0], stretch(np.array([[0.2, 0.6]]))[0]
        (array([[1., 1.]], dtype=float32), array([[0., 1.]], dtype=float32))
    """
    if is_flat(x):
        return np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0), True
    return minmax_normalize(x), False


def fuse_rule(method: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The baseline rules on two luminance images (float32 out): ``mean`` = (A + B) / 2, ``max`` = max(A, B).

    Example:
        >>> fuse_rule("mean", np.array([0.0, 1.0]), np.array([1.0, 1.0]))
        array([0.5, 1. ], dtype=float32)
    """
    a32, b32 = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if method == "mean":
        return (a32 + b32) / np.float32(2)
    if method == "max":
        return np.maximum(a32, b32)
    raise UsageError.invalid("method", method, "not a rule; choose mean or max")
