"""No-reference metrics: computed on the fused image alone (EN, SD, SF, AG).

All functions take a gray image on the 0-255 scale (any real dtype; computed in float64) and
return a Python float.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import as_image, as_uint8_if_exact, histogram_u8

__all__ = ["entropy", "standard_deviation", "spatial_frequency", "average_gradient"]


def _entropy(f: np.ndarray) -> float:
    counts = None
    levels = as_uint8_if_exact(f)  # 8-bit images: no rounding needed
    if levels is not None:
        counts = histogram_u8(levels)
    if counts is None:
        # the authors take np.uint8(np.round(F)); values outside 0..255 are clipped here instead of
        # wrapping around (they cannot occur for images read from 8-bit files)
        counts = np.bincount(np.clip(np.round(f), 0, 255).astype(np.uint8).ravel(), minlength=256)
    p = counts / f.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p))) + 0.0  # + 0.0: no -0.0 for a constant image


def _standard_deviation(f: np.ndarray) -> float:
    return float(np.std(f))


def _mean_square(d: np.ndarray) -> float:
    return float(np.einsum("ij,ij->", d, d)) / d.size


def _spatial_frequency(f: np.ndarray) -> float:
    rf2 = _mean_square(f[:, 1:] - f[:, :-1])
    cf2 = _mean_square(f[1:, :] - f[:-1, :])
    return float(np.sqrt(rf2 + cf2))


def _average_gradient(f: np.ndarray) -> float:
    gx = np.empty_like(f)
    gy = np.empty_like(f)
    np.subtract(f[:, 2:], f[:, :-2], out=gx[:, 1:-1])
    gx[:, 1:-1] *= 0.5
    gx[:, 0] = f[:, 1] - f[:, 0]
    gx[:, -1] = f[:, -1] - f[:, -2]
    np.subtract(f[2:, :], f[:-2, :], out=gy[1:-1, :])
    gy[1:-1, :] *= 0.5
    gy[0, :] = f[1, :] - f[0, :]
    gy[-1, :] = f[-1, :] - f[-2, :]
    np.square(gx, out=gx)
    np.square(gy, out=gy)
    gx += gy
    gx *= 0.5
    np.sqrt(gx, out=gx)
    return float(np.mean(gx))


def entropy(f: Any) -> float:
    """EN - Shannon entropy of the fused image, in bits.

    Definition:
        ``EN = -sum_l p_l * log2(p_l)`` over the 256-bin histogram ``p`` of ``round(F)``
        (empty bins contribute 0).

    Range and direction: ``[0, 8]``; higher is better (more information).

    Reference: J. W. Roberts, J. van Aardt, F. Ahmed, "Assessment of image fusion procedures using
    entropy, image quality, and multispectral classification", J. Appl. Remote Sens. 2(1), 2008.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import entropy
        >>> entropy(np.tile(np.arange(256.0), (4, 1)))  # every gray level equally often
        8.0
        >>> entropy(np.full((8, 8), 17.0))
        0.0
    """
    return _entropy(as_image(f, "fused image"))


def standard_deviation(f: Any) -> float:
    """SD - population standard deviation of the fused image (contrast).

    Definition: ``SD = sqrt(mean((F - mean(F))**2))``.

    Range and direction: ``[0, 127.5]`` on the 0-255 scale; higher is better (more contrast).

    Reference: J. Ma, Y. Ma, C. Li, "Infrared and visible image fusion methods and applications:
    A survey", Information Fusion 45:153-178, 2019 (section on evaluation metrics).

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import standard_deviation
        >>> standard_deviation(np.array([[0.0, 255.0], [0.0, 255.0]]))
        127.5
    """
    return _standard_deviation(as_image(f, "fused image"))


def spatial_frequency(f: Any) -> float:
    """SF - spatial frequency of the fused image (amount of fine detail).

    Definition: ``SF = sqrt(RF**2 + CF**2)`` with ``RF**2 = mean((F[i, j+1] - F[i, j])**2)``
    (horizontal neighbours) and ``CF**2 = mean((F[i+1, j] - F[i, j])**2)`` (vertical neighbours),
    each mean over the differences that exist.

    Range and direction: ``[0, 255*sqrt(2)]``; higher is better.

    Reference: A. M. Eskicioglu, P. S. Fisher, "Image quality measures and their performance",
    IEEE Trans. Communications 43(12):2959-2965, 1995.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import spatial_frequency
        >>> spatial_frequency(np.array([[0.0, 3.0], [4.0, 7.0]]))  # sqrt(3**2 + 4**2)
        5.0
    """
    return _spatial_frequency(as_image(f, "fused image", min_size=2))


def average_gradient(f: Any) -> float:
    """AG - average gradient of the fused image (sharpness).

    Definition: ``AG = mean(sqrt((Gx**2 + Gy**2) / 2))`` where ``Gx``, ``Gy`` are central
    differences ``(F[i, j+1] - F[i, j-1]) / 2`` inside the image and one-sided differences on the
    first and last column/row (``numpy.gradient`` with unit spacing).

    Range and direction: ``[0, 255]``; higher is better.

    Reference: G. Cui, H. Feng, Z. Xu, Q. Li, Y. Chen, "Detail preserved fusion of visible and
    infrared images using regional saliency extraction and multi-scale image decomposition",
    Optics Communications 341:199-209, 2015.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import average_gradient
        >>> ramp = np.tile(np.arange(0.0, 40.0, 4.0), (5, 1))  # slope 4 along x, flat along y
        >>> round(average_gradient(ramp), 4)  # 4 / sqrt(2)
        2.8284
    """
    return _average_gradient(as_image(f, "fused image", min_size=2))
