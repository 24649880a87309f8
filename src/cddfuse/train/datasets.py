"""The datasets that feed the trainer, built from folders or a cache (:mod:`cddfuse.train.data`): fixed
patches (in memory, or read lazily from a large HDF5 cache), random crops with flips drawn anew every
epoch (deterministic whatever the number of workers or ranks), the resumable data-parallel sampler,
and the held-out validation pairs.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from ..errors import CDDFuseError, UsageError
from ..io.pairs import short_list
from .data import (
    ImageSet,
    PatchSet,
    _iter_pairs,
    describe,
    extract_patch_pairs,
    find_pairs,
    is_low_contrast,
    load_image_pairs,
    read_cache,
    read_cache_meta,
)

__all__ = [
    "PatchDataset",
    "LazyH5PatchDataset",
    "RandomCropDataset",
    "ResumableDistributedSampler",
    "TrainDataset",
    "build_dataset",
    "load_val_pairs",
    "LAZY_H5_BYTES",
]


class PatchDataset(Dataset[tuple[Tensor, Tensor]]):
    """Fixed patches: item ``i`` is ``(a_i, b_i)``, each a ``(1, S, S)`` float32 tensor."""

    def __init__(self, data: PatchSet) -> None:
        self.a = np.ascontiguousarray(data.a, dtype=np.float32)
        self.b = np.ascontiguousarray(data.b, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def set_epoch(self, epoch: int) -> None:  # same patches every epoch
        pass

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.a[i]), torch.from_numpy(self.b[i])


class LazyH5PatchDataset(Dataset[tuple[Tensor, Tensor]]):
    """Patches read from an HDF5 cache item by item (for caches larger than memory).

    Each process (DataLoader worker, rank) opens the file itself on first use.
    """

    def __init__(self, path: os.PathLike[str] | str, length: int) -> None:
        self.path, self.length = str(path), int(length)
        self._file = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        pass

    def _h5(self) -> Any:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "length": self.length, "_file": None, "_pid": None}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._h5()
        return (torch.from_numpy(np.asarray(f["a"][i], dtype=np.float32)),
                torch.from_numpy(np.asarray(f["b"][i], dtype=np.float32)))


#: HDF5 patch caches larger than this are read lazily instead of loaded into memory.
LAZY_H5_BYTES = 2 * 1024 ** 3


class RandomCropDataset(Dataset[tuple[Tensor, Tensor]]):
    """``crops_per_image`` random ``crop x crop`` windows (and flips) per pair and epoch.

    Item ``i`` of epoch ``e`` comes from pair ``i // crops_per_image``; its position and flips are
    drawn from ``numpy.random.default_rng((seed, e, i))``, so the data do not depend on worker
    processes, ranks or resumption. Call :meth:`set_epoch` before iterating an epoch.
    """

    #: positions drawn at most per item while a crop of either source is low-contrast
    MAX_DRAWS = 10

    def __init__(self, data: ImageSet, crop: int, crops_per_image: int = 1, flips: bool = True, seed: int = 0,
                 contrast_threshold: float = 0.0) -> None:
        self.a, self.b = data.a, data.b
        self.crop, self.k, self.flips, self.seed = crop, crops_per_image, flips, seed
        self.contrast_threshold = contrast_threshold
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.a) * self.k

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = i // self.k
        a, b = self.a[j], self.b[j]
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        h, w = a.shape
        for _ in range(self.MAX_DRAWS):
            # a crop where either source is (nearly) constant -- black background of medical images --
            # is drawn again, with the patch mode's criterion (the last draw is kept regardless)
            y = int(rng.integers(0, h - self.crop + 1))
            x = int(rng.integers(0, w - self.crop + 1))
            pa, pb = a[y:y + self.crop, x:x + self.crop], b[y:y + self.crop, x:x + self.crop]
            if self.contrast_threshold <= 0 or not (is_low_contrast(pa, self.contrast_threshold)
                                                    or is_low_contrast(pb, self.contrast_threshold)):
                break
        if self.flips:
            fh, fv = rng.integers(0, 2, size=2)
            if fh:
                pa, pb = pa[:, ::-1], pb[:, ::-1]
            if fv:
                pa, pb = pa[::-1], pb[::-1]
        return (torch.from_numpy(np.ascontiguousarray(pa)[None]),
                torch.from_numpy(np.ascontiguousarray(pb)[None]))


class ResumableDistributedSampler(DistributedSampler[int]):
    """:class:`~torch.utils.data.DistributedSampler` (shuffled, permutation seeded by ``seed + epoch``,
    rank ``r`` of ``W`` takes positions ``r, r + W, ...``) that can start inside an epoch.

    With a global batch ``B`` split as ``B / W`` per rank, global batch ``s`` of an epoch holds the
    permutation's entries ``s B ... (s+1) B - 1`` for every ``W`` dividing ``B`` -- the same samples
    as a single process. ``start`` skips the first ``start`` indices of this rank (resumption).
    """

    def __init__(self, dataset: Dataset[Any], num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.set_epoch(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


#: The training data sets :func:`build_dataset` returns (sized, with ``set_epoch``).
TrainDataset = Union[PatchDataset, LazyH5PatchDataset, RandomCropDataset]


def build_dataset(
    cfg: dict[str, Any],
    warn: Callable[[str], None] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> tuple[TrainDataset, dict[str, Any]]:
    """The training dataset described by ``cfg["data"]`` and its description."""
    d = cfg["data"]
    cache = d["cache"]
    if (cache is not None and Path(cache).suffix.lower() in (".h5", ".hdf5") and Path(cache).is_file()
            and Path(cache).stat().st_size > LAZY_H5_BYTES):
        meta = read_cache_meta(cache)
        if meta.get("mode") == "patches" and d["mode"] == "patches":
            desc = {k: v for k, v in meta.items() if k not in ("format", "version")}
            desc["cache"] = str(cache)
            return LazyH5PatchDataset(cache, meta["samples"]), desc
    if cache is not None:
        data, meta = read_cache(cache)
        desc = {k: v for k, v in meta.items() if k not in ("format", "version")}
        desc["cache"] = str(d["cache"])
        if data.info["mode"] != d["mode"]:
            raise UsageError(
                f"{d['cache']} holds {data.info['mode']} data but data.mode is {d['mode']}; "
                f"set --set data.mode={data.info['mode']} or prepare the cache again"
            )
        if isinstance(data, ImageSet):
            small = [s for s, im in zip(data.stems, data.a) if min(im.shape) < d["crop_size"]]
            if small:
                raise CDDFuseError(
                    f"{len(small)} images in {d['cache']} are smaller than data.crop_size={d['crop_size']}: "
                    f"{short_list(small, 8)}; lower data.crop_size"
                )
    else:
        pairs = find_pairs(d["a"], d["b"], d["unmatched"], warn=warn)
        src = {"a": str(d["a"]), "b": str(d["b"])}
        if d["mode"] == "patches":
            data = extract_patch_pairs(pairs, d["patch_size"], d["stride"], d["contrast_threshold"],
                                       d["small_images"], warn=warn, progress=progress)
        else:
            data = load_image_pairs(pairs, d["crop_size"], d["small_images"], warn=warn, progress=progress)
        desc = describe(data, src)
    if isinstance(data, PatchSet):
        ds: TrainDataset = PatchDataset(data)
    else:
        ds = RandomCropDataset(data, d["crop_size"], d["crops_per_image"], d["flips"], cfg["seed"],
                               d["contrast_threshold"])
        desc["crops_per_image"] = d["crops_per_image"]
        desc["flips"] = d["flips"]
        desc["samples"] = len(ds)
    return ds, desc


def load_val_pairs(dir_a: str, dir_b: str, max_pairs: int, max_size: int = 0,
                   warn: Callable[[str], None] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Up to ``max_pairs`` held-out pairs as luminance, centre-cropped to ``max_size`` (0: whole)."""
    pairs = find_pairs(dir_a, dir_b, unmatched="skip", warn=warn)[:max_pairs]
    out = []
    for stem, a, b in _iter_pairs(pairs):
        if max_size:
            h, w = a.shape
            y0, x0 = max(0, (h - max_size) // 2), max(0, (w - max_size) // 2)
            a, b = a[y0:y0 + max_size, x0:x0 + max_size], b[y0:y0 + max_size, x0:x0 + max_size]
        out.append((stem, np.ascontiguousarray(a), np.ascontiguousarray(b)))
    return out
