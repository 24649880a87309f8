"""Multi-modal registration of a pair: the transform that maps the first image onto the second.

Infrared and visible intensities are not related by any function (hot dark clothes, cold bright sky),
CT, PET, SPECT and MRI even less, but their *edges* mostly coincide, with either polarity. The
similarity used throughout is therefore the agreement of local edge orientations, polarity-blind:
each image becomes the complex field ``z = w * exp(2i * theta)`` (``theta`` the gradient
direction, the double angle making ``theta`` and ``theta + pi`` equal; ``w`` in [0, 1] the gradient
magnitude, clipped at its 90th percentile so that a few strong edges do not dominate), and two
fields agree by ``Re sum(za * conj(zb)) / (|za| |zb|)`` -- 1 for identical edge maps, about 0 for
unrelated ones (a weighted mean of ``cos(2 * dtheta)``). Cross-correlations of these fields over
all translations are products of FFTs.

Steps of :func:`estimate_matrix`:

1. *Global search* at coarse scale (second image at 128 px on its long side): every rotation in
   -6..6 degrees (1 degree steps) and scale 0.86..1.14 (2% steps) around the size ratio of the two
   images, each with an exhaustive translation search (up to 20% of the size) by FFT correlation.
   The best few distinct candidates go on.
2. *Local refinement*, coarse to fine (160, 320 and 640 px): the first image is warped with the
   current estimate, cut into overlapping blocks, and each block's shift is found by FFT
   correlation within a few pixels (sub-pixel by a parabola through the peak). Distinct peaks
   give point matches; OpenCV's RANSAC fits (``findHomography``, ``estimateAffine2D``,
   ``estimateAffinePartial2D``) turn them into the next estimate of the chosen model.
3. *Confidence*: from the final level's matches -- the fraction that the fitted transform explains
   (RANSAC inliers) and their number; unrelated images give few blocks with a distinct peak and
   fewer that agree on one transform. The candidate with the highest confidence goes on.
4. *Dense refinement* (:func:`refine_dense`, at 320 and 640 px): the correlation of the two fields
   over every pixel they share, maximised over the model's parameters by SciPy's L-BFGS-B with an
   analytic gradient. Block fits weigh a few dozen matches equally and drop the rest; the dense
   objective uses all the structure, which makes the estimate repeat itself about three times as
   closely when the same pair is misaligned in different ways (``benchmarks/RESULTS.md``).
5. *Final confidence* (:func:`_final_confidence`): the block confidence of step 3, raised or lowered by up to 0.15
   by the *sharpness* of the dense optimum -- how much higher the correlation is at the refined transform than
   at the same transform moved 3 px (of the 640 px level) in any of 8 directions. Edges coincide only at the
   true alignment, so a true alignment sits on a sharp peak; unrelated images and transforms that match only
   coarse structure sit on a flat or shallow one. A second measure, the same sharpness for the mutual
   information of the intensities (:func:`mi_sharpness`), raises it by up to 0.15 more (CT-MRI pairs whose
   few blocks leave the block confidence low). Last, the dense refinement is restarted 3 px away in two
   opposite directions (:func:`restart_shift`): where it does not come back (parallax: the scene has several
   optima, one per depth; or too little structure), the estimate is not reproducible and the confidence is
   lowered by up to 0.6.

Coordinates are pixel centres: pixel ``(x, y)`` covers ``[x - 0.5, x + 0.5]``; resampling by a
factor ``s`` maps ``x`` to ``s * (x + 0.5) - 0.5``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import fft as sfft
from scipy.optimize import minimize

from ..options import AlignModel

__all__ = ["RawEstimate", "estimate_matrix", "border_mask", "orientation_field", "block_matches", "refine_dense",
           "mi_sharpness", "restart_shift", "MIN_MATCHES", "RESTART_LOW"]

#: Fewest point matches each model needs to be fitted (and a few more than the minimum, for RANSAC).
MIN_MATCHES: dict[str, int] = {"translation": 3, "similarity": 4, "affine": 5, "homography": 8}

_SIGMA = 1.0  # Gaussian smoothing (pixels of the working level) before the gradients
_SEARCH_SIDE = 128  # long side of the second image in the global search
_ANGLES = np.arange(-6.0, 6.01, 1.0)
_SCALES = np.arange(0.86, 1.141, 0.02)
_MAX_SHIFT = 0.2  # translation searched, as a fraction of the size
_CANDIDATES = 3
# (long side of the second image, search radius in px, block side in px, iterations)
_SCHEDULE = ((160, 8, 32, 3), (320, 4, 48, 3), (640, 3, 64, 2))
_DENSE_SIDES = (320, 640)  # long side of the second image at each level of the dense refinement
_DENSE_BLUR = 1.0  # Gaussian smoothing of both fields before the dense refinement (px of the level)
_NULL_SHIFT = 3  # px (finest dense level): the shift of the null transforms that the optimum is compared with
_SHARP_MID, _SHARP_HIGH, _SHARP_BONUS = 0.025, 0.040, 0.15  # see _final_confidence
_RESTART = 3.0  # px of the finest dense level: how far restart_shift moves the corners before restarting
_BLOCK_TOL = 0.1  # a level's block fits stop early once one moves the corners by less (px of the level)
_RESTART_ITER = 15  # the restarts stop after this many iterations of the dense refinement ...
_RESTART_TOL = 0.1  # ... or when one moves the frame's edge by less than this (px of the level)
# the directions the corners are moved in (top-left, top-right, bottom-right, bottom-left): no model's null direction
_RESTART_PATTERN = np.array([[0.6, 0.8], [-0.8, 0.6], [0.8, 0.6], [0.6, -0.8]], np.float64)
_MI_BINS = 32  # grey levels of mi_sharpness
_MI_LOW, _MI_HIGH, _MI_BONUS = 0.002, 0.006, 0.15  # see _final_confidence
RESTART_LOW, _RESTART_HIGH, _RESTART_PENALTY = 3.0, 4.0, 0.6  # see _final_confidence
_DENSE_TOL = 0.02  # the dense refinement stops when an iteration moves the frame's edge by less (px of the level)
# p -> D(p) = I + [[p0, p1, p2], [p3, p4, p5], [p6, p7, 0]]: the parameters each model lets the dense refinement move
_DENSE_BASIS: dict[str, np.ndarray] = {
    "translation": np.eye(8)[:, [2, 5]],
    "similarity": np.array([[1, 0, 0, 0, 1, 0, 0, 0], [0, -1, 0, 1, 0, 0, 0, 0],
                            [0, 0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0]], np.float64).T,
    "affine": np.eye(8)[:, :6],
    "homography": np.eye(8),
}


@dataclass
class RawEstimate:
    """What :func:`estimate_matrix` found.

    Attributes:
        matrix: ``(3, 3)`` float64: first-image pixel ``(x, y, 1)`` -> second-image pixel (up to scale).
        blocks: number of blocks with a distinct correlation peak at the finest level.
        inliers: how many of them the fitted transform explains (RANSAC inliers).
        confidence: in [0, 1]: ``block_confidence`` raised or lowered by the ``sharpness`` of the dense optimum
            (:func:`_final_confidence`).
        block_confidence: ``inliers / blocks``, scaled down linearly when fewer than ``4 * MIN_MATCHES[model]``
            inliers support the transform (measured on the block fits, before the dense refinement).
        correlation: the dense refinement's edge-field correlation at ``matrix`` (finest level), in [-1, 1].
        sharpness: ``correlation`` minus the highest correlation at ``matrix`` moved by 3 px in any of 8 directions.
        mi_sharpness: the same for the normalised mutual information of the intensities (:func:`mi_sharpness`).
        restart: how far the dense refinement ends from ``matrix`` when restarted 3 px away from it, in pixels of the
            second image (:func:`restart_shift`).
    """

    matrix: np.ndarray
    blocks: int
    inliers: int
    confidence: float
    block_confidence: float = 0.0
    correlation: float = 0.0
    sharpness: float = 0.0
    mi_sharpness: float = 0.0
    restart: float = 0.0


def border_mask(img: np.ndarray, erode: int = 2) -> np.ndarray:
    """``uint8`` mask, 0 on the black frame that warping leaves around an image, 1 elsewhere.

    A frame is the exactly black region touching the border *when the content it surrounds is a
    polygon* (a warped rectangle: its convex hull has at most 8 corners and fills it); the mask is then
    shrunk by ``erode`` pixels. Black backgrounds around rounded content (a head on a CT or MRI slice)
    are not a frame: their edge against the content is real structure, and the mask is all ones.

    >>> img = np.zeros((40, 50), np.float32); img[5:35, 8:45] = 0.5    # a rectangle on black: a frame
    >>> m = border_mask(img, erode=0); int(m.sum()), int(m[20, 8]), int(m[20, 7])
    (1110, 1, 0)
    >>> disc = np.zeros((160, 160), np.float32); cv2.circle(disc, (80, 80), 60, 0.5, -1) is not None
    True
    >>> int(border_mask(disc).min())                                     # a round object on black: no frame
    1
    """
    h, w = img.shape
    ones = np.ones((h, w), np.uint8)
    zero = (img <= 1e-6).astype(np.uint8)
    if not zero.any():
        return ones
    _, labels = cv2.connectedComponents(zero, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    if not edge.size:
        return ones
    valid: np.ndarray = (~np.isin(labels, edge)).astype(np.uint8)
    contours, _ = cv2.findContours(valid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return ones
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    corners = cv2.approxPolyDP(hull, 2.0 + 0.005 * max(h, w), True)
    if len(corners) > 8 or valid.sum() < 0.97 * cv2.contourArea(hull):
        return ones
    if erode > 0:
        valid = cv2.erode(valid, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return valid


def _fill_frame(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``img`` with the pixels outside ``valid`` set to their nearest valid pixel's value, so that the frame's
    edge is no structure.

    >>> img = np.zeros((3, 5), np.float32); img[:, 2:] = [0.2, 0.4, 0.6]
    >>> [round(float(v), 3) for v in _fill_frame(img, (img > 0).astype(np.uint8))[0]]
    [0.2, 0.2, 0.2, 0.4, 0.6]
    """
    if valid.all() or not valid.any():
        return img
    # labels: every valid (zero in the source) pixel its own; every other pixel its nearest valid pixel's
    _, labels = cv2.distanceTransformWithLabels((valid == 0).astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(valid)
    lookup = np.zeros(labels.max() + 1, np.float32)
    lookup[labels[ys, xs]] = img[ys, xs]
    return lookup[labels]


def orientation_field(img: np.ndarray, valid: np.ndarray, sigma: float = _SIGMA) -> np.ndarray:
    """The complex double-angle edge field ``w * exp(2i * theta)`` of a float32 ``(H, W)`` image, 0 outside
    ``valid``; ``|value|`` in [0, 1].

    >>> img = np.zeros((16, 16), np.float32); img[:, 8:] = 1.0       # a vertical edge
    >>> z = orientation_field(img, np.ones((16, 16), np.uint8))
    >>> round(float(z[8, 8].real), 3), round(float(abs(z[8, 8].imag)), 3)   # theta = 0 -> +1
    (1.0, 0.0)
    >>> z2 = orientation_field(1.0 - img, np.ones((16, 16), np.uint8))     # opposite polarity: same field
    >>> bool(np.allclose(z, z2, atol=1e-6))
    True
    """
    g = cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    m2 = gx * gx + gy * gy
    m = np.sqrt(m2)
    inside = valid > 0
    values = m[inside]
    k = float(np.percentile(values, 90)) if values.size else 0.0
    if k <= 1e-9:
        return np.zeros(img.shape, np.complex64)
    w = np.minimum(m / k, 1.0) * inside
    z = ((gx + 1j * gy) ** 2) / (m2 + 1e-20) * w
    return z.astype(np.complex64)


def _scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Pixel-centre coordinates of an image resampled by ``(sx, sy)``."""
    return np.array([[sx, 0, 0.5 * (sx - 1)], [0, sy, 0.5 * (sy - 1)], [0, 0, 1.0]])


def _resized(img: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``img`` resampled by ``factor`` (area when shrinking), and the matrix of that change of coordinates."""
    h, w = img.shape
    if abs(factor - 1.0) < 1e-3:
        return img, np.eye(3)
    nw, nh = max(8, round(w * factor)), max(8, round(h * factor))
    out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return out, _scale_matrix(nw / w, nh / h)


def _similarity(angle_deg: float, scale: float, centre_a: tuple[float, float],
                centre_b: tuple[float, float]) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t) * scale, np.sin(t) * scale
    return (np.array([[1, 0, centre_b[0]], [0, 1, centre_b[1]], [0, 0, 1.0]])
            @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
            @ np.array([[1, 0, -centre_a[0]], [0, 1, -centre_a[1]], [0, 0, 1.0]]))


def _normalised(h: np.ndarray) -> np.ndarray:
    return h / h[2, 2]


def _global_search(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, ratio: float,
                   model: AlignModel) -> list[np.ndarray]:
    """Candidate full-resolution matrices (best first) from the exhaustive coarse search."""
    as_, vas, sa, bs, vbs, sb, _ = _level(a, va, b, vb, np.diag([ratio, ratio, 1.0]), _SEARCH_SIDE)
    h, w = bs.shape
    zb = orientation_field(bs, vbs)
    mx, my = int(_MAX_SHIFT * w), int(_MAX_SHIFT * h)
    ph, pw = cv2.getOptimalDFTSize(h + my + 1), cv2.getOptimalDFTSize(w + mx + 1)
    fzb = sfft.fft2(zb, (ph, pw))
    nb = float(np.sqrt((np.abs(zb) ** 2).sum()))
    centre_a = ((as_.shape[1] - 1) / 2, (as_.shape[0] - 1) / 2)
    centre_b = ((w - 1) / 2, (h - 1) / 2)
    angles, scales = (_ANGLES, _SCALES) if model != "translation" else (np.zeros(1), np.ones(1))
    found: list[tuple[float, float, float, np.ndarray]] = []
    for angle in angles:
        for scale in scales:
            m = _similarity(float(angle), float(scale), centre_a, centre_b)
            wa = cv2.warpAffine(as_, m[:2], (w, h), flags=cv2.INTER_LINEAR)
            wv = cv2.warpAffine(vas, m[:2], (w, h), flags=cv2.INTER_NEAREST)
            za = orientation_field(wa, wv)
            na = float(np.sqrt((np.abs(za) ** 2).sum()))
            if na == 0 or nb == 0:
                continue
            corr = sfft.ifft2(np.conj(sfft.fft2(za, (ph, pw))) * fzb).real
            window = np.roll(corr, (my, mx), axis=(0, 1))[: 2 * my + 1, : 2 * mx + 1]
            iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
            shift = np.array([[1, 0, ix - mx], [0, 1, iy - my], [0, 0, 1.0]])
            found.append((float(window[iy, ix]) / (na * nb), float(ix - mx), float(iy - my),
                          _normalised(np.linalg.inv(sb) @ shift @ m @ sa)))
    found.sort(key=lambda r: -r[0])
    picked: list[tuple[float, float, float, np.ndarray]] = []
    for r in found:  # distinct translations only
        if all(abs(r[1] - q[1]) + abs(r[2] - q[2]) > 3 for q in picked):
            picked.append(r)
        if len(picked) == _CANDIDATES:
            break
    return [r[3] for r in picked]


def _fit(p: np.ndarray, q: np.ndarray, model: AlignModel, threshold: float) -> tuple[np.ndarray | None, int]:
    """Robust fit of ``model`` to matches ``p -> q`` (``(N, 2)`` float32); the matrix and the inlier count."""
    if len(p) < MIN_MATCHES[model]:
        return None, 0
    if model == "translation":
        d = (q - p).astype(np.float64)
        inl = np.hypot(*(d - np.median(d, 0)).T) < threshold
        t = d[inl].mean(0)
        return np.array([[1, 0, t[0]], [0, 1, t[1]], [0, 0, 1.0]]), int(inl.sum())
    if model == "homography":
        m, inl = cv2.findHomography(p, q, cv2.RANSAC, threshold, maxIters=1000, confidence=0.999)
    elif model == "affine":
        m, inl = cv2.estimateAffine2D(p, q, method=cv2.RANSAC, ransacReprojThreshold=threshold, maxIters=1000,
                                      refineIters=10)
    else:
        m, inl = cv2.estimateAffinePartial2D(p, q, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                             maxIters=1000, refineIters=10)
    if m is None or not np.all(np.isfinite(m)):
        return None, 0
    if m.shape[0] == 2:
        m = np.vstack([m, [0, 0, 1]])
    return m.astype(np.float64), int(np.count_nonzero(inl))


def _parabola(cm: float, c0: float, cp: float) -> float:
    d = cm - 2 * c0 + cp
    return 0.0 if d >= 0 else 0.5 * (cm - cp) / d


def block_matches(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, zb: np.ndarray,
                  h_level: np.ndarray, radius: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Point matches between ``a`` warped by ``h_level`` and ``b``: every block (``side`` px, half overlapping)
    whose edge-field correlation has a distinct peak within ``radius`` px.

    Returns ``(p, q)``, ``(N, 2)`` float32: the block centres in ``a``'s coordinates and where they land in
    ``b`` (sub-pixel). ``zb`` is ``orientation_field(b, vb)``; ``va``/``vb`` are the valid masks.
    """
    h, w = b.shape
    wa = cv2.warpPerspective(a, h_level, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    wv = cv2.warpPerspective(va, h_level, (w, h), flags=cv2.INTER_NEAREST)
    both = ((wv > 0) & (vb > 0)).astype(np.uint8)
    za = orientation_field(wa, both)
    r, n, step = radius, side + 2 * radius, side // 2
    floor = 0.02 * side * side
    corners, blocks, windows, energies = [], [], [], []
    for y0 in range(r, h - side - r + 1, step):
        for x0 in range(r, w - side - r + 1, step):
            if both[y0:y0 + side, x0:x0 + side].mean() < 0.9:
                continue
            block = za[y0:y0 + side, x0:x0 + side]
            window = zb[y0 - r:y0 + side + r, x0 - r:x0 + side + r]
            ea = float((np.abs(block) ** 2).sum())
            eb = float((np.abs(window[r:-r, r:-r]) ** 2).sum())
            if ea < floor or eb < floor:
                continue
            corners.append((x0, y0))
            blocks.append(block)
            windows.append(window)
            energies.append(np.sqrt(ea * eb))
    p_list, q_list = [], []
    if corners:  # all blocks' correlations at once: one batched FFT per direction
        fa = sfft.fft2(np.array(blocks), (n, n))
        cs = sfft.ifft2(np.conj(fa) * sfft.fft2(np.array(windows))).real[:, : 2 * r + 1, : 2 * r + 1]
        cs /= np.array(energies)[:, None, None]
    for (x0, y0), c in zip(corners, cs if corners else []):
        iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
        if iy in (0, 2 * r) or ix in (0, 2 * r):
            continue  # the best shift is at the edge of the search: no local peak
        peak = float(c[iy, ix])
        others = c.copy()
        others[max(iy - 2, 0):iy + 3, max(ix - 2, 0):ix + 3] = -np.inf
        if peak < 0.1 or peak - float(others.max()) < 0.02:
            continue  # weak or ambiguous (repetitive structure)
        dx = ix - r + _parabola(c[iy, ix - 1], peak, c[iy, ix + 1])
        dy = iy - r + _parabola(c[iy - 1, ix], peak, c[iy + 1, ix])
        cx, cy = x0 + (side - 1) / 2, y0 + (side - 1) / 2
        p_list.append((cx, cy))
        q_list.append((cx + dx, cy + dy))
    if not p_list:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    q = np.array(q_list, np.float32)
    # the block centres, back in the first image's coordinates
    p = cv2.perspectiveTransform(np.array(p_list, np.float32)[None], np.linalg.inv(h_level))[0]
    return p.astype(np.float32), q


def _block_step(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, zb: np.ndarray, h_level: np.ndarray,
                model: AlignModel, radius: int, side: int) -> tuple[np.ndarray | None, int, int]:
    """One refinement step at one level: block matches of the warped first image against the second, then a
    robust fit. Returns (new level matrix or None, blocks with a distinct peak, inliers)."""
    p, q = block_matches(a, va, b, vb, zb, h_level, radius, side)
    if not len(p):
        return None, 0, 0
    m, inliers = _fit(p, q, model, max(1.0, radius / 3))
    return (None if m is None else _normalised(m)), len(p), inliers


def _confidence(blocks: int, inliers: int, model: AlignModel) -> float:
    if blocks == 0:
        return 0.0
    support = min(1.0, inliers / (4 * MIN_MATCHES[model]))
    return float(inliers / blocks * support)


def _corner_shift(m1: np.ndarray, m2: np.ndarray, w: int, h: int) -> float:
    """Largest distance between where ``m1`` and ``m2`` send the corners of a ``w`` x ``h`` frame."""
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64).T
    p, q = m1 @ c, m2 @ c
    return float(np.max(np.hypot(*(p[:2] / p[2] - q[:2] / q[2]))))


def _dense_field(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The orientation field of the dense refinement: :func:`orientation_field` smoothed by ``_DENSE_BLUR`` px (a
    smoother objective: fewer line-search steps)."""
    z = orientation_field(img, valid)
    if _DENSE_BLUR <= 0:
        return z
    zz = cv2.GaussianBlur(np.dstack([z.real, z.imag]), (0, 0), _DENSE_BLUR)
    return (zz[..., 0] + 1j * zz[..., 1]).astype(np.complex64)


def field_correlations(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray,
                       matrices: list[np.ndarray], stride: int = 2) -> np.ndarray:
    """The normalised correlation (in [-1, 1]) of the dense refinement's fields of ``b`` and of ``a`` warped by each
    of ``matrices`` (pixel of ``a`` -> pixel of ``b``, same level), over the pixels both cover (every ``stride``-th
    pixel of ``b`` in each direction); ``(len(matrices),)`` float64.

    >>> rng = np.random.default_rng(2)
    >>> b = cv2.GaussianBlur(rng.random((96, 128)).astype(np.float32), (0, 0), 2.0)
    >>> ones = np.ones(b.shape, np.uint8)
    >>> c = field_correlations(b, ones, 1 - b, ones, [np.eye(3), np.array([[1, 0, 4.0], [0, 1, 0], [0, 0, 1]])], 1)
    >>> round(float(c[0]), 3), bool(c[1] < 0.5)
    (1.0, True)
    """
    h, w = b.shape
    za, zb = _dense_field(a, va), _dense_field(b, vb)
    fa = np.dstack([za.real, za.imag])
    zbs, vbs = zb[::stride, ::stride], vb[::stride, ::stride] > 0
    out = np.zeros(len(matrices))
    for i, m in enumerate(matrices):
        # sample every stride-th pixel of b: the map from the strided grid to a's pixels
        k = np.linalg.inv(m) @ np.diag([stride, stride, 1.0])
        size = (zbs.shape[1], zbs.shape[0])
        wa = cv2.warpPerspective(fa, k, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        wv = cv2.warpPerspective(va, k, size, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        both = (wv > 0) & vbs
        ar, ai = wa[..., 0][both], wa[..., 1][both]
        br, bi = zbs.real[both], zbs.imag[both]
        saa, sbb = float(ar @ ar + ai @ ai), float(br @ br + bi @ bi)
        out[i] = float(ar @ br + ai @ bi) / np.sqrt(saa * sbb) if saa > 0 and sbb > 0 else 0.0
    return out


_Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _dense_problem(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, h_level: np.ndarray,
                   model: AlignModel, stride: int = 1) -> tuple[_Objective, Callable[[np.ndarray], np.ndarray], int]:
    """The objective of :func:`refine_dense`: ``(f, to_matrix, n)``. ``f(q)`` is minus the normalised correlation and
    its gradient for the ``n`` parameters ``q`` of ``model`` (0: the start); ``to_matrix(q)`` the matrix they give."""
    h, w = b.shape
    ha, wa = a.shape
    za, zb = _dense_field(a, va), _dense_field(b, vb)
    s = 2.0 / max(wa, ha)
    n = np.array([[s, 0, -s * (wa - 1) / 2], [0, s, -s * (ha - 1) / 2], [0, 0, 1.0]])
    n_inv = np.linalg.inv(n)
    re, im = np.ascontiguousarray(za.real), np.ascontiguousarray(za.imag)
    sobel = [cv2.Sobel(x, cv2.CV_32F, dx, 1 - dx, ksize=3) / 8 for dx in (1, 0) for x in (re, im)]
    field = np.dstack([re, im, sobel[0], sobel[1]])  # the first image's field and its x derivative
    field_dy = np.dstack([sobel[2], sobel[3]])  # ... and its y derivative
    k0 = np.linalg.inv(h_level)  # pixel of b -> pixel of a
    # the pixels of b that are compared
    ys, xs = np.mgrid[0:h:stride, 0:w:stride].astype(np.float32)
    # y: the points of a (normalised) that the start sends to them; D(p) then moves these
    y = n @ k0
    den = y[2, 0] * xs + y[2, 1] * ys + y[2, 2]
    y1 = ((y[0, 0] * xs + y[0, 1] * ys + y[0, 2]) / den).astype(np.float32)
    y2 = ((y[1, 0] * xs + y[1, 1] * ys + y[1, 2]) / den).astype(np.float32)
    zbr, zbi = np.ascontiguousarray(zb.real[::stride, ::stride]), np.ascontiguousarray(zb.imag[::stride, ::stride])
    inside_b = vb[::stride, ::stride] > 0
    basis = _DENSE_BASIS[model]

    def d_of(p: np.ndarray) -> np.ndarray:
        return np.array([[1 + p[0], p[1], p[2]], [p[3], 1 + p[4], p[5]], [p[6], p[7], 1.0]])

    def negative_correlation(q: np.ndarray) -> tuple[float, np.ndarray]:
        p = basis @ q
        # the pixel of a each compared pixel of b samples: n^-1 D(p) y
        dd = p[6] * y1 + p[7] * y2 + 1
        xn = ((1 + p[0]) * y1 + p[1] * y2 + p[2]) / dd
        yn = (p[3] * y1 + (1 + p[4]) * y2 + p[5]) / dd
        map_x = ((xn - n[0, 2]) / s).astype(np.float32)
        map_y = ((yn - n[1, 2]) / s).astype(np.float32)
        f1 = cv2.remap(field, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        f2 = cv2.remap(field_dy, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        both = ((cv2.remap(va, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0)
                & inside_b).astype(np.float32)
        ar, ai, br, bi = f1[..., 0] * both, f1[..., 1] * both, zbr * both, zbi * both
        sab = float(np.vdot(ar, br) + np.vdot(ai, bi))
        saa = float(np.vdot(ar, ar) + np.vdot(ai, ai))
        sbb = float(np.vdot(br, br) + np.vdot(bi, bi))
        if saa <= 0 or sbb <= 0:
            return 0.0, np.zeros_like(q)
        norm = np.sqrt(saa * sbb)
        c = sab / norm
        # d c / d (x', y') per pixel, x' the normalised point of a that the pixel samples
        gxr, gxi, gyr, gyi = f1[..., 2], f1[..., 3], f2[..., 0], f2[..., 1]
        ratio = c * np.sqrt(sbb / saa)
        ex = ((gxr * br + gxi * bi) - ratio * (gxr * ar + gxi * ai)) / (s * norm)
        ey = ((gyr * br + gyi * bi) - ratio * (gyr * ar + gyi * ai)) / (s * norm)
        # chain rule through x' = D(p) y (projective division by d = p6 y1 + p7 y2 + 1)
        ex, ey = ex / dd, ey / dd
        r = -(ex * xn + ey * yn)
        grad = np.array([np.vdot(ex, y1), np.vdot(ex, y2), ex.sum(), np.vdot(ey, y1), np.vdot(ey, y2), ey.sum(),
                         np.vdot(r, y1), np.vdot(r, y2)], np.float64)
        return -c, -(basis.T @ grad)

    def to_matrix(q: np.ndarray) -> np.ndarray:
        return _normalised(np.linalg.inv(n_inv @ d_of(basis @ q) @ n @ k0))

    return negative_correlation, to_matrix, basis.shape[1]


def refine_dense(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, h_level: np.ndarray,
                 model: AlignModel, max_iter: int = 40, stride: int = 1,
                 tol: float | None = None) -> tuple[np.ndarray, float]:
    """Refine ``h_level`` (pixel of ``a`` -> pixel of ``b``, same level) by maximising the normalised correlation
    of the two edge-orientation fields over every pixel the two images share.

    Both fields are smoothed by ``_DENSE_BLUR`` px (a smoother objective); the first image's field is warped (not
    recomputed) as the transform changes; the analytic gradient goes to SciPy's L-BFGS-B. ``stride`` > 1
    compares only every ``stride``-th pixel of ``b`` in each direction (faster; about as precise on large
    levels). The update composes ``D(p)``, a small ``model`` transform in the first image's coordinates
    normalised to [-1, 1], with the start; iterations stop when one moves the frame's edge by less than
    ``tol`` px (default ``_DENSE_TOL``). Returns the refined matrix and the correlation it reaches (in [-1, 1]).

    >>> rng = np.random.default_rng(1)
    >>> a = cv2.GaussianBlur(rng.random((96, 128)).astype(np.float32), (0, 0), 2.5)
    >>> t = np.array([[1.01, 0.01, 1.6], [-0.01, 0.99, -1.2], [0, 0, 1.0]])
    >>> b = cv2.warpPerspective(a, t, (128, 96), borderMode=cv2.BORDER_REFLECT)
    >>> ones = np.ones((96, 128), np.uint8)
    >>> m, c = refine_dense(a, ones, b, ones, np.eye(3), "affine")      # from the identity
    >>> _corner_shift(m, t, 128, 96) < 0.1, c > 0.95                       # corners within 0.1 px of t
    (True, True)
    """
    f, to_matrix, n_params = _dense_problem(a, va, b, vb, h_level, model, stride)
    h, w = b.shape
    last = [to_matrix(np.zeros(n_params))]
    stop = _DENSE_TOL if tol is None else tol

    def converged(intermediate_result: object) -> None:
        current = to_matrix(np.asarray(intermediate_result.x))  # type: ignore[attr-defined]
        if _corner_shift(current, last[0], w, h) < stop:
            raise StopIteration
        last[0] = current

    res = minimize(f, np.zeros(n_params), jac=True, method="L-BFGS-B", callback=converged,
                   options={"maxiter": max_iter})
    return to_matrix(res.x), float(-res.fun)


_Level = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]


def _level(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, matrix: np.ndarray, side_b: int) -> _Level:
    """Both images and masks at one level of the pyramid (the second at ``side_b`` px on its long side at most, the
    first at the same scale under ``matrix``): ``(a, va, sa, b, vb, sb, fb)``, ``sa``/``sb`` the changes of
    coordinates and ``fb`` the second image's factor."""
    fb = min(1.0, side_b / max(b.shape))
    scale = float(np.sqrt(abs(np.linalg.det(_normalised(matrix)[:2, :2]))))
    bs, sb = _resized(b, fb)
    vbs = cv2.resize(vb, bs.shape[::-1], interpolation=cv2.INTER_NEAREST)
    as_, sa = _resized(a, fb * scale)
    vas = cv2.resize(va, as_.shape[::-1], interpolation=cv2.INTER_NEAREST)
    return as_, vas, sa, bs, vbs, sb, fb


def _block_level(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, matrix: np.ndarray,
                 model: AlignModel, levels: list[tuple[int, int, int, int]], level: int) -> tuple[np.ndarray, int, int]:
    """The block fits of one level of ``levels`` (``_SCHEDULE``) from ``matrix``: the updated matrix, the blocks
    with a distinct peak and the inliers of the last fit."""
    side_b, radius, block, iterations = levels[level]
    as_, vas, sa, bs, vbs, sb, _ = _level(a, va, b, vb, matrix, side_b)
    zb = orientation_field(bs, vbs)
    # the coarsest level fits a similarity first when a finer level follows
    level_model: AlignModel = (
        "similarity" if level == 0 and len(levels) > 1 and model in ("affine", "homography") else model)
    blocks = inliers = 0
    for _ in range(iterations):
        h_level = _normalised(sb @ matrix @ np.linalg.inv(sa))
        fitted, blocks, inliers = _block_step(as_, vas, bs, vbs, zb, h_level, level_model, radius, block)
        if fitted is None:
            break
        matrix = _normalised(np.linalg.inv(sb) @ fitted @ sa)
        if _corner_shift(fitted, h_level, bs.shape[1], bs.shape[0]) < _BLOCK_TOL:
            break  # converged: another fit from here would land in the same place
    return matrix, blocks, inliers


def _sharpness(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, matrix: np.ndarray) -> tuple[float, float]:
    """The dense refinement's correlation at ``matrix`` (finest level) and how much higher it is than at the same
    transform moved by ``_NULL_SHIFT`` px (of that level) in any of 8 directions: ``(c, c - max(c_shifted))``.

    A true alignment sits on a sharp peak of the edge-field correlation (edges coincide only there); two unrelated
    images, or a transform that matches only coarse structure, give a flat or shallow one."""
    as_, vas, sa, bs, vbs, sb, _ = _level(a, va, b, vb, matrix, _DENSE_SIDES[-1])
    m = _normalised(sb @ matrix @ np.linalg.inv(sa))
    r = _NULL_SHIFT
    shifts = [(r, 0), (-r, 0), (0, r), (0, -r), (r, r), (-r, -r), (r, -r), (-r, r)]
    c = field_correlations(as_, vas, bs, vbs, [m] + [np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) @ m
                                                     for dx, dy in shifts])
    return float(c[0]), float(c[0] - c[1:].max())


def restart_shift(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, matrix: np.ndarray,
                  model: AlignModel) -> float:
    """How well the dense optimum is defined: the dense refinement (finest level) is restarted from ``matrix`` moved
    by ``_RESTART`` px (of that level) at the corners, in two opposite ways that ``model`` can express, and the largest
    corner distance between where it ends and ``matrix`` is returned, in full-resolution pixels of ``b``.

    A well-defined optimum brings both restarts back (a few tenths of a pixel); a flat one (little structure, or
    parts of the scene that want different transforms) leaves them where the start put them.

    >>> rng = np.random.default_rng(4)
    >>> b = cv2.GaussianBlur(rng.random((240, 320)).astype(np.float32), (0, 0), 2.0)
    >>> ones = np.ones(b.shape, np.uint8)
    >>> restart_shift(b, ones, b, ones, np.eye(3), "homography") < 0.3
    True
    """
    as_, vas, sa, bs, vbs, sb, fb = _level(a, va, b, vb, matrix, _DENSE_SIDES[-1])
    m = _normalised(sb @ matrix @ np.linalg.inv(sa))
    h, w = bs.shape
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    stride = 2 if max(h, w) > 400 else 1
    worst = 0.0
    for sign in (1.0, -1.0):
        dst = src + (sign * _RESTART * _RESTART_PATTERN).astype(np.float32)
        if model == "translation":
            move = np.array([[1, 0, sign * _RESTART], [0, 1, -sign * _RESTART], [0, 0, 1.0]])
        elif model == "homography":
            move = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
        else:
            fit = cv2.estimateAffinePartial2D if model == "similarity" else cv2.estimateAffine2D
            move = np.vstack([fit(src, dst, method=cv2.LMEDS)[0], [0, 0, 1.0]])
        moved = _corner_shift(move, np.eye(3), w, h)
        if moved > 1e-6:  # what the model keeps of the pattern, scaled to move the farthest corner by _RESTART px
            move = np.eye(3) + (move - np.eye(3)) * (_RESTART / moved)
        # where it ends matters to a few tenths of a pixel against thresholds of 3 px and more: a coarser stop
        # and fewer iterations than the estimate's own refinement halve the cost of the two restarts
        fitted, _ = refine_dense(as_, vas, bs, vbs, _normalised(move @ m), model, stride=stride,
                                 max_iter=_RESTART_ITER, tol=_RESTART_TOL)
        if not np.all(np.isfinite(fitted)):
            return float("inf")
        worst = max(worst, _corner_shift(fitted, m, w, h) / fb)
    return worst


def mi_sharpness(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, matrix: np.ndarray,
                 stride: int = 2) -> float:
    """A second, intensity-based measure of how distinct the optimum is: the normalised mutual information
    ``(H(A) + H(B)) / H(A, B)`` of the two images (``_MI_BINS`` grey levels) over the pixels they share at
    ``matrix`` (finest dense level, every ``stride``-th pixel of ``b``), minus its highest value at the same
    transform moved by ``_NULL_SHIFT`` px in any of 8 directions.

    >>> rng = np.random.default_rng(5)
    >>> b = cv2.GaussianBlur(rng.random((120, 160)).astype(np.float32), (0, 0), 2.0)
    >>> b = (b - b.min()) / (b.max() - b.min())
    >>> ones = np.ones(b.shape, np.uint8)
    >>> bool(mi_sharpness(1 - b, ones, b, ones, np.eye(3), 1) > 0.1)
    True
    """
    as_, vas, sa, bs, vbs, sb, _ = _level(a, va, b, vb, matrix, _DENSE_SIDES[-1])
    m = _normalised(sb @ matrix @ np.linalg.inv(sa))
    bins = _MI_BINS
    qb = np.minimum((np.clip(bs[::stride, ::stride], 0, 1) * bins).astype(np.int64), bins - 1)
    inside_b = vbs[::stride, ::stride] > 0
    size = (qb.shape[1], qb.shape[0])
    r = _NULL_SHIFT
    values = []
    for dx, dy in [(0, 0), (r, 0), (-r, 0), (0, r), (0, -r), (r, r), (-r, -r), (r, -r), (-r, r)]:
        k = np.linalg.inv(np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) @ m) @ np.diag([stride, stride, 1.0])
        wa = cv2.warpPerspective(as_, k, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        wv = cv2.warpPerspective(vas, k, size, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
        both = (wv > 0) & inside_b
        if both.sum() < 100:
            return 0.0
        qa = np.minimum((np.clip(wa[both], 0, 1) * bins).astype(np.int64), bins - 1)
        joint = np.bincount(qa * bins + qb[both], minlength=bins * bins).astype(np.float64)
        joint /= joint.sum()
        pa, pb = joint.reshape(bins, bins).sum(1), joint.reshape(bins, bins).sum(0)

        def entropy(p: np.ndarray) -> float:
            p = p[p > 0]
            return float(-(p * np.log(p)).sum())

        values.append((entropy(pa) + entropy(pb)) / max(entropy(joint), 1e-12))
    return float(values[0] - max(values[1:]))


def _final_confidence(block_confidence: float, sharpness: float, mi_sharp: float = 0.0, restart: float = 0.0) -> float:
    """The confidence of an estimate, clipped to [0, 1].

    Its block fits' confidence, then three terms measured at the final transform:

    - edge sharpness: up to ``+-_SHARP_BONUS``: ``+0.15`` at ``sharpness`` >= ``_SHARP_HIGH``, ``-0.15`` at
      ``2 * _SHARP_MID - _SHARP_HIGH`` or less, linear in between;
    - intensity sharpness (a second similarity measure): up to ``+_MI_BONUS``, from 0 at ``mi_sharp`` <= ``_MI_LOW``
      to the full bonus at ``_MI_HIGH``, linear in between;
    - restart consistency: down to ``-_RESTART_PENALTY`` when a restarted dense refinement ends ``restart`` px or more
      from the estimate: 0 up to ``RESTART_LOW``, the full penalty from ``_RESTART_HIGH``, linear in between.

    The constants were chosen on the calibration split of ``benchmarks/bench_align.py`` (training pairs, their own
    seed; ``benchmarks/RESULTS.md``): there, unrelated pairs reached a sharpness of at most 0.031 and an intensity
    sharpness of at most 0.0087 (with a block confidence of 0.31), 99% of the correct infrared-visible estimates
    restarted within 3.1 px.

    >>> [round(_final_confidence(0.40, s), 3) for s in (0.0, 0.025, 0.04, 0.1)]
    [0.25, 0.4, 0.55, 0.55]
    >>> round(_final_confidence(0.40, 0.025, mi_sharp=0.004), 3), round(_final_confidence(0.9, 0.1, restart=4.0), 3)
    (0.475, 0.45)
    """
    x = float(np.clip((sharpness - _SHARP_MID) / (_SHARP_HIGH - _SHARP_MID), -1.0, 1.0))
    mi = float(np.clip((mi_sharp - _MI_LOW) / (_MI_HIGH - _MI_LOW), 0.0, 1.0))
    rs = float(np.clip((restart - RESTART_LOW) / (_RESTART_HIGH - RESTART_LOW), 0.0, 1.0))
    return float(np.clip(block_confidence + _SHARP_BONUS * x + _MI_BONUS * mi - _RESTART_PENALTY * rs, 0.0, 1.0))


def _refined(a: np.ndarray, va: np.ndarray, b: np.ndarray, vb: np.ndarray, matrix: np.ndarray,
             model: AlignModel) -> np.ndarray:
    """``matrix`` after the dense refinement, coarse to fine (levels of ``_DENSE_SIDES``, at most full size)."""
    for side_b in _DENSE_SIDES:
        as_, vas, sa, bs, vbs, sb, fb = _level(a, va, b, vb, matrix, side_b)
        # every second pixel in each direction on large levels, and on a coarse level followed by a finer one
        stride = 2 if max(bs.shape) > (400 if fb == 1.0 else 200) else 1
        fitted, _ = refine_dense(as_, vas, bs, vbs, _normalised(sb @ matrix @ np.linalg.inv(sa)), model, stride=stride)
        if np.all(np.isfinite(fitted)):
            matrix = _normalised(np.linalg.inv(sb) @ fitted @ sa)
        if fb == 1.0:
            break
    return matrix


def estimate_matrix(a: np.ndarray, b: np.ndarray, model: AlignModel) -> RawEstimate:
    """Estimate the ``model`` transform from float32 luminance ``a`` ``(Ha, Wa)`` to ``b`` ``(Hb, Wb)`` in [0, 1].

    Sizes may differ: the search starts from the size ratio (``sqrt(area_b / area_a)``; 1 for a
    ``translation``) and covers scales 0.86..1.14 around it, rotations up to 6 degrees and translations
    up to 20% of the size.

    >>> rng = np.random.default_rng(0)
    >>> b = cv2.GaussianBlur(rng.random((120, 160)).astype(np.float32), (0, 0), 2)
    >>> b = (b - b.min()) / (b.max() - b.min())
    >>> shift = np.array([[1, 0, 5.0], [0, 1, -3.0], [0, 0, 1]])           # b(x + 5, y - 3) = a(x, y)
    >>> a = cv2.warpPerspective(b, np.linalg.inv(shift), (160, 120), borderMode=cv2.BORDER_REFLECT)
    >>> est = estimate_matrix(a, 1.0 - b, "translation")                    # inverted contrast too
    >>> np.round(est.matrix[:2, 2], 1).tolist()
    [5.0, -3.0]
    """
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    va, vb = border_mask(a), border_mask(b)
    a, b = _fill_frame(a, va), _fill_frame(b, vb)
    # the first guess of the scale: the size ratio (same field of view), except for a translation, which has none
    ratio = 1.0 if model == "translation" else float(np.sqrt(b.size / a.size))
    levels = [s for i, s in enumerate(_SCHEDULE) if i == 0 or _SCHEDULE[i - 1][0] < max(b.shape)]
    best: RawEstimate | None = None
    for candidate in _global_search(a, va, b, vb, ratio, model):
        matrix, blocks, inliers = candidate, 0, 0
        for level in range(len(levels)):
            matrix, blocks, inliers = _block_level(a, va, b, vb, matrix, model, levels, level)
        result = RawEstimate(matrix, blocks, inliers, _confidence(blocks, inliers, model))
        if best is None or result.confidence > best.confidence:
            best = result
        if best.confidence >= 0.6:
            break  # no need to try the other candidates
    if best is None:  # no structure at all (e.g. a constant image)
        return RawEstimate(np.diag([ratio, ratio, 1.0]), 0, 0, 0.0)
    best.block_confidence = best.confidence
    if best.blocks:  # the dense refinement, then how distinct its optimum is
        best.matrix = _refined(a, va, b, vb, best.matrix, model)
        best.correlation, best.sharpness = _sharpness(a, va, b, vb, best.matrix)
        best.mi_sharpness = mi_sharpness(a, va, b, vb, best.matrix)
        best.restart = restart_shift(a, va, b, vb, best.matrix, model)
        best.confidence = _final_confidence(best.block_confidence, best.sharpness, best.mi_sharpness, best.restart)
    return best
