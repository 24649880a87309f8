"""Tile geometry: regions of the image, arrays that cover them, and how valid regions shrink.

The engine computes every tile of a pass in an array of the same size (the largest tile plus its
halo, shifted inwards at the image borders), so oneDNN reuses one primitive per layer and no crop
is ever copied. A 3x3 convolution keeps the array size: it pads all four sides (zeros, or
reflection for the invertible nodes); on sides that are true image borders that padding is the
network's own, and on the other sides the outermost ring becomes invalid. Each array therefore
carries its *valid region* (:class:`RegionTensor`), which shrinks by one pixel on interior sides
per convolution (:meth:`TileGeometry.shrink`); only valid pixels are ever used (statistics,
stores, output), and a valid pixel only depends on valid pixels.

Example:
    >>> plan_tiles(5, 7, 4)
    [(0, 2, 0, 4), (0, 2, 4, 7), (2, 5, 0, 4), (2, 5, 4, 7)]
    >>> geometry = TileGeometry(5, 7, tile_h=3, tile_w=4)
    >>> geometry.array((2, 5, 4, 7), halo=1)  # the same size for every tile, shifted inwards
    (0, 5, 1, 7)
    >>> geometry.shrink((0, 5, 1, 7))  # after a 3x3 convolution: one pixel less inside the image
    (0, 5, 2, 7)
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

__all__ = ["Region", "intersect", "RegionTensor", "TileGeometry", "plan_tiles", "to_nhwc"]

Region = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, image coordinates


def intersect(a: Region, b: Region) -> Region:
    """The region common to ``a`` and ``b``."""
    return (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))


def _inside(a: Region, b: Region) -> bool:
    return b[0] <= a[0] <= a[1] <= b[1] and b[2] <= a[2] <= a[3] <= b[3]


def plan_tiles(h: int, w: int, tile: int | None) -> list[Region]:
    """Cut an ``h x w`` image into tiles of at most ``tile x tile`` pixels, as equal as possible.

    Returns ``(y0, y1, x0, x1)`` half-open regions, row by row; ``tile=None`` gives one tile.
    """
    if h < 1 or w < 1:
        raise ValueError(f"empty image {h}x{w}")
    if tile is None:
        return [(0, h, 0, w)]
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    ny, nx = math.ceil(h / tile), math.ceil(w / tile)
    ys = [round(i * h / ny) for i in range(ny + 1)]
    xs = [round(j * w / nx) for j in range(nx + 1)]
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(ny) for j in range(nx)]


class RegionTensor:
    """A ``(B, h, w, C)`` array covering image rows ``ay:ay+h``, columns ``ax:ax+w``, of which the
    ``valid`` region holds correct values (the rest is scratch from padding inside the image)."""

    __slots__ = ("tensor", "ay", "ax", "valid")

    def __init__(self, tensor: Tensor, ay: int, ax: int, valid: Region | None = None) -> None:
        self.tensor, self.ay, self.ax = tensor, ay, ax
        self.valid = valid if valid is not None else self.region

    @property
    def region(self) -> Region:
        """The image region the array covers."""
        return (self.ay, self.ay + self.tensor.shape[1], self.ax, self.ax + self.tensor.shape[2])

    def like(self, tensor: Tensor, valid: Region | None = None) -> RegionTensor:
        """Another array over the same region (valid region: this one's unless given)."""
        return RegionTensor(tensor, self.ay, self.ax, self.valid if valid is None else valid)

    def view(self, r: Region) -> Tensor:
        """The values of region ``r`` (which must be valid), as a view."""
        if not _inside(r, self.valid):
            raise AssertionError(f"internal error: region {r} is not inside the valid {self.valid}")
        return self.tensor[:, r[0] - self.ay: r[1] - self.ay, r[2] - self.ax: r[3] - self.ax]

    def sub(self, r: Region) -> RegionTensor:
        """The part of the array over region ``r`` (inside the array), as a view."""
        if not _inside(r, self.region):
            raise AssertionError(f"internal error: region {r} is not inside the array {self.region}")
        part = self.tensor[:, r[0] - self.ay: r[1] - self.ay, r[2] - self.ax: r[3] - self.ax]
        return RegionTensor(part, r[0], r[2], intersect(self.valid, r))


class TileGeometry:
    """Image size, tile arrays, and how padding and valid regions go."""

    def __init__(self, h: int, w: int, tile_h: int, tile_w: int) -> None:
        self.h, self.w = h, w
        self.tile_h, self.tile_w = tile_h, tile_w  # the largest tile
        # ReflectionPad2d(1) needs two pixels along each axis; CDDFuse replicates otherwise.
        self.reflect_mode = "reflect" if (h >= 2 and w >= 2) else "replicate"

    def array(self, tile: Region, halo: int) -> Region:
        """The array for ``tile`` with ``halo``: the same size for every tile, shifted inwards at
        the image borders, and containing the tile widened by the halo (clipped to the image)."""
        y0, y1, x0, x1 = tile
        size_y, size_x = self.tile_h + 2 * halo, self.tile_w + 2 * halo
        if size_y >= self.h:
            ay0, ay1 = 0, self.h
        else:
            ay0 = min(max(y0 - halo, 0), self.h - size_y)
            ay1 = ay0 + size_y
        if size_x >= self.w:
            ax0, ax1 = 0, self.w
        else:
            ax0 = min(max(x0 - halo, 0), self.w - size_x)
            ax1 = ax0 + size_x
        return (ay0, ay1, ax0, ax1)

    def shrink(self, v: Region) -> Region:
        """Valid region after a 3x3 convolution: one pixel less on sides inside the image."""
        y0, y1, x0, x1 = v
        out = (y0 if y0 == 0 else y0 + 1, y1 if y1 == self.h else y1 - 1,
               x0 if x0 == 0 else x0 + 1, x1 if x1 == self.w else x1 - 1)
        if out[1] <= out[0] or out[3] <= out[2]:
            raise AssertionError("internal error: a tile ran out of halo")
        return out

    def nchw(self, x: RegionTensor, pad: str) -> tuple[Tensor, int]:
        """``(input, conv padding)`` for a size-preserving 3x3 convolution of ``x``."""
        t = x.tensor.permute(0, 3, 1, 2)  # NCHW view with channels_last strides
        ay1, ax1 = x.ay + t.shape[2], x.ax + t.shape[3]
        if pad == "zeros" or not (x.ay == 0 or x.ax == 0 or ay1 == self.h or ax1 == self.w):
            return t, 1  # zero padding (inside the image the padded ring is scratch anyway)
        return F.pad(t, (1, 1, 1, 1), mode=self.reflect_mode), 0


def to_nhwc(out: Tensor) -> Tensor:
    """An NCHW convolution output (channels_last strides) as the ``(B, h, w, C)`` view."""
    return out.permute(0, 2, 3, 1)
