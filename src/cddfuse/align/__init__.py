"""Register a pair that is not pixel-aligned: ``estimate`` the transform from the first image (infrared,
CT, PET, SPECT) to the second (visible, MRI), then ``warp`` the first into the second's frame.

Fusion networks assume registered pairs; a thermal and a daylight camera side by side differ in field of
view, resolution, position and a little rotation. :func:`estimate` finds the ``translation``,
``similarity``, ``affine`` or ``homography`` (see :mod:`cddfuse.align.registration` for the method) and
says how sure it is: :attr:`Alignment.confidence` in [0, 1], and :attr:`Alignment.accepted` when it
reaches ``min_confidence`` (default :data:`DEFAULT_MIN_CONFIDENCE`, what ``cddfuse fuse --align``
requires). :meth:`Alignment.check` raises :class:`AlignmentError` for a refused one.

Example (a synthetic pair: the second image is the first, shifted, rotated and inverted):

    >>> import numpy as np, cv2
    >>> rng = np.random.default_rng(1)
    >>> b = cv2.GaussianBlur(rng.random((96, 128)).astype(np.float32), (0, 0), 2)
    >>> b = (b - b.min()) / (b.max() - b.min())
    >>> true = cv2.getRotationMatrix2D((60.0, 50.0), 3.0, 1.0)            # first -> second, 3 degrees
    >>> a = cv2.warpAffine(1 - b, true, (128, 96), flags=cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    >>> al = estimate(a, b, model="similarity")
    >>> bool(np.abs(al.matrix[:2] - true).max() < 0.3), al.accepted
    (True, True)
    >>> warp(a, al).shape                                                   # the second image's size
    (96, 128)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..errors import CDDFuseError, UsageError
from ..io.color import luminance
from ..io.image import check_array
from ..options import ALIGN_MODELS, AlignModel, check_choice
from .registration import RESTART_LOW, estimate_matrix

__all__ = ["Alignment", "AlignmentError", "estimate", "warp", "coverage", "DEFAULT_MIN_CONFIDENCE",
           "check_min_confidence"]

_BLACK = 0.02  # luminance of a black background
#: A pair is "medical slices" when at least this fraction of each image is black background touching the border (the
#: test sets: CT, PET, SPECT and MRI slices 48-91%; infrared and visible scenes at most 15%).
SLICE_BACKGROUND = 0.3

#: Confidence below which ``fuse --align`` refuses to fuse (and :attr:`Alignment.accepted` is False).
DEFAULT_MIN_CONFIDENCE = 0.5


class AlignmentError(CDDFuseError):
    """The pair could not be aligned with enough confidence: nothing was fused."""


def check_min_confidence(value: float) -> float:
    """``value`` if it is a number in [0, 1], else a :class:`~cddfuse.errors.UsageError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise UsageError.invalid("align_min_confidence", value, "must be a number in [0, 1]")
    return float(value)


@dataclass
class Alignment:
    """An estimated transform from the first image to the second.

    Attributes:
        matrix: ``(3, 3)`` float64, ``matrix[2, 2] == 1``: first-image pixel ``(x, y, 1)`` -> second-image
            pixel (homogeneous; pixel centres at integer coordinates).
        model: the model it was fitted with.
        confidence: in [0, 1]; the fraction of the blocks with a distinct match that agree with the
            transform, reduced when few blocks support it, then raised or lowered by up to 0.15 by how sharp
            the peak of the dense edge correlation is at the final transform, raised by up to 0.15 by how sharp
            the peak of the intensities' mutual information is there, and lowered by up to 0.6 when the dense
            refinement, restarted 3 px away, does not come back to it (within 3 px).
        accepted: ``confidence >= min_confidence``.
        valid_fraction: fraction of the second image's pixels that the warped first image covers.
        size_a, size_b: ``(width, height)`` of the first and second image.
        min_confidence: the threshold ``accepted`` was decided with.
        matches, inliers: blocks with a distinct correlation peak at the finest level, and how many of
            them agree with the transform.
        extra: diagnostics: ``block_confidence`` (the confidence before the terms measured at the final
            transform), ``correlation`` and ``sharpness`` of the dense optimum, ``mi_sharpness`` (the same for
            mutual information), ``restart`` (px: where the restarted dense refinement ends), and ``slices``
            (both images are medical slices on a black background; a refusal then advises registering the
            volumes before slicing).
    """

    matrix: np.ndarray
    model: AlignModel
    confidence: float
    accepted: bool
    valid_fraction: float
    size_a: tuple[int, int]
    size_b: tuple[int, int]
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    matches: int = 0
    inliers: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``matrix``, ``model``, ``confidence``, ``accepted``, ``valid_fraction`` (and sizes)."""
        return {"matrix": [[float(v) for v in row] for row in self.matrix], "model": self.model,
                "confidence": round(self.confidence, 4), "accepted": self.accepted,
                "valid_fraction": round(self.valid_fraction, 4), "min_confidence": self.min_confidence,
                "size_a": list(self.size_a), "size_b": list(self.size_b),
                "matches": self.matches, "inliers": self.inliers}

    def reason(self) -> str:
        """Why the alignment is refused, in words (empty when accepted)."""
        if self.accepted:
            return ""
        if self.matches == 0:
            why = "no shared structure found (no region of one image has a distinct match in the other)"
        elif self.extra.get("restart", 0.0) >= RESTART_LOW:
            why = (f"the estimate is not stable: refined again from 3 px away it ends {self.extra['restart']:.1f} px "
                   "away (parallax: near and far parts of the scene want different transforms; or too little "
                   "structure)")
        elif self.extra.get("block_confidence", 0.0) >= self.min_confidence:
            why = (f"the edges of the two images do not coincide sharply at the estimated transform (sharpness "
                   f"{self.extra.get('sharpness', 0.0):.3f}; a different scene with similar outlines, or too little "
                   "fine structure)")
        elif self.inliers < 4 * _min_matches(self.model):
            why = (f"too little shared structure: only {self.inliers} of {self.matches} matched regions agree on "
                   "one transform")
        else:
            why = (f"the matched regions disagree: {self.inliers} of {self.matches} agree on one {self.model} "
                   "(a different scene, parallax, or a transform the model cannot describe)")
        if self.extra.get("slices"):
            why += ("; these medical slices share too little structure for 2-D slice registration (typical of PET "
                    "and SPECT, which show function rather than anatomy): register the 3-D volumes before slicing "
                    "(e.g. with SimpleITK, ANTs or FSL), then fuse the registered slices without aligning them")
        return f"confidence {self.confidence:.2f} < {self.min_confidence:.2f}: {why}"

    def check(self) -> Alignment:
        """``self`` if accepted, else :class:`AlignmentError` with :meth:`reason`."""
        if not self.accepted:
            raise AlignmentError(f"alignment failed ({self.reason()}); check that the images show the same scene, "
                                 "or lower align_min_confidence",
                                 cli=f"alignment failed ({self.reason()}); check that the images show the same "
                                     "scene, or lower --align-min-confidence")
        return self


def _min_matches(model: str) -> int:
    from .registration import MIN_MATCHES

    return MIN_MATCHES[model]


def _as_luminance(img: np.ndarray, name: str) -> np.ndarray:
    """The luminance ``(H, W)`` float32 in [0, 1] of an image array, checked by the package's one rule for
    arrays (:func:`cddfuse.io.image.check_array`: floats outside [0, 1] are refused, not clipped)."""
    arr = check_array(np.asarray(img), name)
    if min(arr.shape[:2]) < 16:
        raise UsageError(f"{name}: expected an (H, W) or (H, W, 3) image of at least 16x16 pixels, got shape "
                         f"{arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535
    return luminance(arr) if arr.ndim == 3 else arr


def coverage(matrix: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int],
             content: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(Hb, Wb)``: the second-image pixels that the warped first image covers (with ``content``, an
    ``(Ha, Wa)`` mask of the first image's pixels that count, e.g. without its own black frame).

    >>> coverage(np.array([[1, 0, 2.0], [0, 1, 0], [0, 0, 1]]), (6, 2), (6, 2)).astype(int).tolist()
    [[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    """
    wb, hb = size_b
    wa, ha = size_a
    ones = np.ones((ha, wa), np.uint8) if content is None else (np.asarray(content) > 0).astype(np.uint8)
    inside = cv2.warpPerspective(ones, matrix, (wb, hb), flags=cv2.INTER_NEAREST, borderValue=0)
    return inside > 0


def estimate(a: np.ndarray, b: np.ndarray, model: AlignModel = "affine", *,
             min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> Alignment:
    """Estimate the transform that maps the first image ``a`` onto the second ``b``.

    Args:
        a: first image (infrared / CT / PET / SPECT): ``(H, W)`` or ``(H, W, 3)`` RGB, uint8, uint16 or
            float in [0, 1]; colour images are reduced to their luminance.
        b: second image (visible / MRI), same forms; its size may differ from ``a``'s (resolution, aspect).
        model: ``translation``, ``similarity`` (rotation + uniform scale + translation), ``affine``
            or ``homography``.
        min_confidence: threshold for :attr:`Alignment.accepted`.

    Covers rotations up to about 6 degrees, scales within about 14% of the size ratio of the two images,
    translations up to 20% of the size; beyond that, the confidence tells (it does not fail silently).
    """
    check_choice("model", model, ALIGN_MODELS)
    min_confidence = check_min_confidence(min_confidence)
    ya, yb = _as_luminance(a, "first image"), _as_luminance(b, "second image")
    raw = estimate_matrix(ya, yb, model)
    size_a, size_b = (ya.shape[1], ya.shape[0]), (yb.shape[1], yb.shape[0])
    matrix = raw.matrix / raw.matrix[2, 2]
    confidence = raw.confidence if np.all(np.isfinite(matrix)) and _plausible(matrix, size_a, size_b) else 0.0
    covered = float(coverage(matrix, size_a, size_b).mean()) if confidence > 0 else 0.0
    slices = min(_slice_background(ya), _slice_background(yb)) >= SLICE_BACKGROUND
    return Alignment(matrix=matrix, model=model, confidence=confidence, accepted=confidence >= min_confidence,
                     valid_fraction=covered, size_a=size_a, size_b=size_b, min_confidence=min_confidence,
                     matches=raw.blocks, inliers=raw.inliers,
                     extra={"slices": slices, "block_confidence": raw.block_confidence, "correlation": raw.correlation,
                            "sharpness": raw.sharpness, "mi_sharpness": raw.mi_sharpness,
                            "restart": raw.restart})


def _slice_background(y: np.ndarray) -> float:
    """Fraction of ``y`` (luminance in [0, 1]) that is black background connected to the image's border."""
    dark = (y <= _BLACK).astype(np.uint8)
    if not dark.any():
        return 0.0
    _, labels = cv2.connectedComponents(dark, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return float(np.isin(labels, edge[edge > 0]).mean())


def _plausible(matrix: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int]) -> bool:
    """The first image's corners land in front of the camera, in the same order, with a sane area."""
    wa, ha = size_a
    corners = np.array([[0, 0, 1], [wa - 1, 0, 1], [wa - 1, ha - 1, 1], [0, ha - 1, 1]], np.float64).T
    mapped = matrix @ corners
    if np.any(mapped[2] <= 1e-9):
        return False
    xy = (mapped[:2] / mapped[2]).T
    x, y = xy[:, 0], xy[:, 1]
    area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    expected = float(size_b[0] * size_b[1])
    return math.isfinite(area) and 0.25 * expected < area < 4 * expected


def warp(image: np.ndarray, alignment: Alignment, *, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The first image resampled into the second's frame (its size); uncovered pixels are 0.

    ``image`` is the first image in any form :func:`estimate` takes (its dtype and channels are kept).
    """
    arr = np.asarray(image)
    if (arr.shape[1], arr.shape[0]) != alignment.size_a:
        raise UsageError(f"the image is {arr.shape[1]}x{arr.shape[0]}, the alignment was estimated for a first image "
                         f"of {alignment.size_a[0]}x{alignment.size_a[1]}")
    wb, hb = alignment.size_b
    out = cv2.warpPerspective(arr, alignment.matrix, (wb, hb), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    return out.reshape((hb, wb) + arr.shape[2:])
