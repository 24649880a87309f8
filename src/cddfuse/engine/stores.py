"""Full-resolution feature maps kept between passes, and the sources a pass reads its tiles from.

A pass writes its result tile by tile (no halo) to a :class:`FeatureStore`, and the next pass
reads each tile back with the halo it needs. Two stores implement the protocol:

* :class:`MemoryStore`: a tensor on the compute device. Maps of finished passes go back to a
  :class:`MapPool` shared by the stores of one run, so successive passes reuse one buffer instead
  of having the system map and zero fresh pages for each.
* :class:`DiskStore`: an unlinked temporary file read and written with ``pread``/``pwrite`` one
  image row at a time, so the map never occupies the process's memory (the kernel's page cache
  may hold it while memory is free) and image size is limited by disk space only.

A pass reads from a :class:`FeatureSource`: the images themselves (:class:`ImageSource`, which
applies the patch embedding), the previous pass's store (:class:`StoreSource`), or the two stores
of the branch pass combined by the fusion layers (:class:`FusionSource`).

Example:
    >>> import torch
    >>> store = DiskStore(1, 4, 5, 2, torch.float32, torch.device("cpu"))
    >>> store.write((0, 2, 0, 5), torch.zeros(1, 2, 5, 2))
    >>> store.write((2, 4, 0, 5), torch.ones(1, 2, 5, 2))
    >>> part = store.read((1, 3, 1, 4))  # rows 1-2 (one of zeros, one of ones), columns 1-3
    >>> part.tensor[0, :, :, 0].tolist(), part.region
    ([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], (1, 3, 1, 4))
    >>> store.close()
"""
from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Protocol

import numpy as np
import torch
from torch import Tensor

from .blocks import Blocks
from .geometry import Region, RegionTensor, TileGeometry
from .packing import FastWeights

__all__ = [
    "FeatureStore",
    "StoreFactory",
    "MapPool",
    "MemoryStore",
    "DiskStore",
    "FeatureSource",
    "ImageSource",
    "StoreSource",
    "FusionSource",
]


class FeatureStore(Protocol):
    """A full-resolution ``(B, H, W, C)`` feature map written and read tile by tile."""

    def write(self, tile: Region, x: Tensor) -> None:
        """Store the ``(B, th, tw, C)`` values of ``tile`` (tiles may come from several threads)."""

    def read(self, r: Region) -> RegionTensor:
        """The values of region ``r`` (all written) as an array on the compute device."""

    def close(self) -> None:
        """Release the map (the store is not read again)."""


#: ``(batch, H, W, C, dtype, device) -> store``: how the engine makes the store of a pass.
StoreFactory = Callable[[int, int, int, int, torch.dtype, torch.device], FeatureStore]


class MapPool:
    """Spare full-resolution maps shared by the stores of one run (thread-safe): successive passes
    reuse one buffer instead of having the system map and zero fresh pages for each."""

    def __init__(self) -> None:
        self._spare: list[Tensor] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A spare map of this shape, dtype and device, or a new (uninitialised) one."""
        with self._lock:
            for i, t in enumerate(self._spare):
                if tuple(t.shape) == shape and t.dtype == dtype and t.device == device:
                    return self._spare.pop(i)
        return torch.empty(shape, dtype=dtype, device=device)

    def give(self, t: Tensor) -> None:
        """Hand a map that is no longer used back for reuse."""
        if t.is_contiguous():
            with self._lock:
                self._spare.append(t)


class MemoryStore:
    """A full-resolution ``(B, H, W, C)`` feature map in memory (device tensor), taken from and
    given back to ``pool`` (a :class:`MapPool`) when one is given."""

    def __init__(self, batch: int, h: int, w: int, c: int, dtype: torch.dtype, device: torch.device,
                 pool: MapPool | None = None) -> None:
        self.shape = (batch, h, w, c)
        self.dtype, self.device = dtype, device
        self.tensor: Tensor | None = None
        self.pool = pool
        self._lock = threading.Lock()

    def _new(self) -> Tensor:
        if self.pool is not None:
            return self.pool.take(self.shape, self.dtype, self.device)
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)

    def write(self, tile: Region, x: Tensor) -> None:
        y0, y1, x0, x1 = tile
        if self.tensor is None:
            with self._lock:  # tiles may be written from several threads
                if self.tensor is None:
                    if (y0, y1, x0, x1) == (0, self.shape[1], 0, self.shape[2]):
                        self.tensor = x  # whole image in one tile: keep the tensor itself
                        return
                    self.tensor = self._new()
        self.tensor[:, y0:y1, x0:x1] = x

    def read(self, r: Region) -> RegionTensor:
        assert self.tensor is not None
        y0, y1, x0, x1 = r
        return RegionTensor(self.tensor[:, y0:y1, x0:x1].contiguous(), y0, x0)  # a view when r spans the width

    def close(self) -> None:
        t, self.tensor = self.tensor, None
        if t is not None and self.pool is not None and tuple(t.shape) == self.shape:
            self.pool.give(t)


class DiskStore:
    """A ``(B, H, W, C)`` feature map in an unlinked temporary file (row-major, native floats).

    Tiles are read and written with ``pread``/``pwrite`` one image row at a time, so the map never
    occupies the process's memory (the kernel's page cache may hold it while memory is free).
    """

    def __init__(self, batch: int, h: int, w: int, c: int, dtype: torch.dtype, device: torch.device,
                 directory: str | None = None) -> None:
        self.shape = (batch, h, w, c)
        self.dtype, self.device = dtype, device
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.row = w * c * self.itemsize
        self._file: IO[bytes] | None = tempfile.TemporaryFile(prefix="cddfuse-tiles-", dir=directory)
        self._fd = self._file.fileno()
        os.ftruncate(self._fd, batch * h * self.row)

    def _offset(self, b: int, y: int, x: int) -> int:
        return (b * self.shape[1] + y) * self.row + x * self.shape[3] * self.itemsize

    def write(self, tile: Region, x: Tensor) -> None:
        y0, y1, x0, x1 = tile
        arr = x.detach().to("cpu").contiguous().numpy()
        full_rows = x0 == 0 and x1 == self.shape[2]
        for b in range(self.shape[0]):
            if full_rows:
                self._pwrite(arr[b], self._offset(b, y0, 0))
                continue
            for r in range(y1 - y0):
                self._pwrite(arr[b, r], self._offset(b, y0 + r, x0))

    def _pwrite(self, a: np.ndarray, offset: int) -> None:
        mv = a.data.cast("B")
        while len(mv):
            n = os.pwrite(self._fd, mv, offset)
            mv, offset = mv[n:], offset + n

    def read(self, r: Region) -> RegionTensor:
        y0, y1, x0, x1 = r
        batch, _, w, c = self.shape
        buf = torch.empty((batch, y1 - y0, x1 - x0, c), dtype=self.dtype)
        arr = buf.numpy()
        full_rows = x0 == 0 and x1 == w
        for b in range(batch):
            if full_rows:
                self._pread(arr[b], self._offset(b, y0, 0))
                continue
            for i in range(y1 - y0):
                self._pread(arr[b, i], self._offset(b, y0 + i, x0))
        t = buf if self.device.type == "cpu" else buf.to(self.device, non_blocking=False)
        return RegionTensor(t, y0, x0)

    def _pread(self, a: np.ndarray, offset: int) -> None:
        mv = a.data.cast("B")
        while len(mv):
            n = os.preadv(self._fd, [mv], offset)
            if n <= 0:
                raise OSError("short read from the tile store")
            mv, offset = mv[n:], offset + n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ----------------------------------------------------------------------------- sources
class FeatureSource(Protocol):
    """Where a pass reads its input: ``read(tile, halo)`` gives the tile's array with ``halo``."""

    def read(self, tile: Region, halo: int) -> RegionTensor:
        """The input of ``tile``, valid on the tile widened by ``halo`` (clipped to the image)."""

    def close(self) -> None:
        """Release what the source holds (its stores)."""


class ImageSource:
    """The sources as one batch ``(2B, H, W, in)``; ``read`` gives X_0 = patch_embed(images)."""

    def __init__(self, blocks: Blocks, weights: FastWeights, read_images: Callable[[Region], Tensor]) -> None:
        self.blocks, self.weights, self.read_images = blocks, weights, read_images

    def read(self, tile: Region, halo: int) -> RegionTensor:
        r = self.blocks.geometry.array(tile, halo + 1)
        images = RegionTensor(self.read_images(r), r[0], r[2])
        return self.blocks.ops.conv(self.blocks.geometry, images, self.weights.pe)

    def close(self) -> None:
        pass


class StoreSource:
    """The map a previous pass wrote (closing the source closes the store)."""

    def __init__(self, geometry: TileGeometry, store: FeatureStore) -> None:
        self.geometry, self.store = geometry, store

    def read(self, tile: Region, halo: int) -> RegionTensor:
        return self.store.read(self.geometry.array(tile, halo))

    def close(self) -> None:
        self.store.close()


class FusionSource:
    """Y_0 = reduce_channel(cat(base_fuse(base_a + base_b), detail_fuse(...))) from two stores."""

    def __init__(self, blocks: Blocks, weights: FastWeights, matrix: Tensor, base_sum: FeatureStore,
                 fused_detail: FeatureStore) -> None:
        self.blocks, self.weights, self.matrix = blocks, weights, matrix
        self.base_sum, self.fused_detail = base_sum, fused_detail

    def read(self, tile: Region, halo: int) -> RegionTensor:
        r = self.blocks.geometry.array(tile, halo + 2)
        fused_base = self.blocks.lite_apply(self.weights.lt_fuse, self.matrix, self.base_sum.read(r))
        fused_detail = self.fused_detail.read(r)
        y = self.blocks.ops.linear(fused_base.tensor, self.weights.reduce_b)
        return fused_base.like(self.blocks.ops.linear(fused_detail.tensor, self.weights.reduce_d, add=y))

    def close(self) -> None:
        self.base_sum.close()
        self.fused_detail.close()
