"""Training data: paired folders -> luminance -> patches (the paper's) or whole images for random
crops, and the cache file that holds them (the datasets that feed the trainer are in
:mod:`cddfuse.train.datasets`).

* Pairs are matched by file stem (:func:`cddfuse.io.pairs.match_pairs`); folder ``a`` holds the
  infrared / functional images (IR, CT, PET, SPECT), ``b`` the visible / MRI images.
* Every image is read as luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` in [0, 1] (float32, 8- and
  16-bit files scaled by their maximum; gray files used as they are), like the authors' data preparation.
* ``patches`` mode (the paper): ``size x size`` windows at ``stride`` over each image (window origins
  ``0, stride, 2 stride, ... <= H - size``, the authors' ``Im2Patch``); a window is dropped when
  either source is low-contrast: ``(p90 - p10) / p90 < threshold`` over its pixels (linear
  percentiles; a window with ``p90 <= 0`` counts as low-contrast).
* ``random_crop`` mode (small data sets): the whole images are kept; each epoch draws
  ``crops_per_image`` crops per pair with optional flips, from a generator seeded by
  ``(seed, epoch, index)`` -- deterministic whatever the number of workers or ranks; a crop that is
  low-contrast in either source (the criterion above; e.g. black background) is drawn again, up to
  10 draws.
* A cache (``cddfuse prepare``) stores the patches, or the whole images for ``random_crop`` mode, in
  one HDF5 (``.h5``/``.hdf5``) or NumPy (``.npz``) file with a JSON description.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from .._fileutil import atomic_path
from ..errors import CDDFuseError, ImageReadError, UsageError
from ..io.pairs import match_pairs, short_list

__all__ = [
    "read_luminance",
    "find_pairs",
    "patch_origins",
    "is_low_contrast",
    "extract_patch_pairs",
    "load_image_pairs",
    "write_cache",
    "read_cache",
    "read_cache_meta",
    "describe",
    "PatchSet",
    "ImageSet",
    "CACHE_FORMAT",
]

CACHE_FORMAT = "cddfuse-train-cache"
CACHE_VERSION = 1
_LUMA = (0.299, 0.587, 0.114)  # R, G, B


def read_luminance(path: os.PathLike[str] | str) -> np.ndarray:
    """Read an image file as float32 luminance ``H x W`` in [0, 1].

    Gray files are scaled by their type's maximum (255 for 8-bit, 65535 for 16-bit); colour files
    (BGR or BGRA as OpenCV returns them; alpha ignored) become ``0.299 R + 0.587 G + 0.114 B``.
    Floating-point files are taken as [0, 1] and clipped.
    """
    import cv2

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such file")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{p}: not a readable image")
    if img.dtype == np.uint8 or img.dtype == np.uint16:
        int_type = np.uint8 if img.dtype == np.uint8 else np.uint16
        img = img.astype(np.float32) / np.float32(np.iinfo(int_type).max)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img.astype(np.float32), 0.0, 1.0)
    else:
        raise ImageReadError(f"{p}: unsupported pixel type {img.dtype} (use 8- or 16-bit images)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        if img.shape[2] not in (3, 4):
            raise ImageReadError(f"{p}: {img.shape[2]} channels; expected gray, BGR or BGRA")
        b, g, r = img[:, :, 0], img[:, :, 1], img[:, :, 2]
        img = np.float32(_LUMA[0]) * r + np.float32(_LUMA[1]) * g + np.float32(_LUMA[2]) * b
    if img.ndim != 2:
        raise ImageReadError(f"{p}: unexpected image shape {img.shape}")
    return np.ascontiguousarray(img, dtype=np.float32)



def find_pairs(dir_a: os.PathLike[str] | str, dir_b: os.PathLike[str] | str, unmatched: str = "error",
               warn: Callable[[str], None] | None = None) -> list[tuple[str, Path, Path]]:
    """Matched ``(stem, path_a, path_b)`` of two folders, with clear errors for bad data.

    Raises :class:`UsageError` for a missing folder, :class:`CDDFuseError` for an empty folder, no
    common stems, or (``unmatched="error"``) images without a partner -- naming them.
    """
    da, db = Path(dir_a), Path(dir_b)
    for d in (da, db):
        if not d.is_dir():
            raise UsageError(f"{d}: not a folder")
    try:
        listing = match_pairs(da, db)
    except ValueError as e:
        raise CDDFuseError(str(e)) from None
    n_a = len(listing.pairs) + len(listing.only_a)
    n_b = len(listing.pairs) + len(listing.only_b)
    for d, n in ((da, n_a), (db, n_b)):
        if n == 0:
            raise CDDFuseError(f"{d}: no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff) in this folder")
    if not listing.pairs:
        raise CDDFuseError(
            f"no image in {da} has a partner with the same file name (stem) in {db}; "
            f"e.g. {short_list(listing.only_a, 3)} vs {short_list(listing.only_b, 3)}"
        )
    lonely = listing.unmatched_message(da, db)
    if lonely:
        text = "unmatched images: " + lonely
        if unmatched == "error":
            raise CDDFuseError(text + " (pairs are matched by file name without extension; "
                               "rename them, or skip them with --skip-unmatched / data.unmatched=skip)")
        if warn is not None:
            warn(text + " -- skipped")
    return listing.pairs


def patch_origins(h: int, w: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the paper's patch grid: ``range(0, H - size + 1, stride)`` x the same for W."""
    return [(y, x) for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]


def is_low_contrast(patch: np.ndarray, threshold: float = 0.1, lower: float = 10, upper: float = 90) -> bool:
    """``(p_upper - p_lower) / p_upper < threshold`` (linear percentiles); ``p_upper <= 0`` is low contrast."""
    lo, hi = np.percentile(patch, [lower, upper])
    if hi <= 0:
        return True
    return bool((hi - lo) / hi < threshold)


def _read_pair(item: tuple[str, Path, Path]) -> tuple[str, np.ndarray, np.ndarray]:
    stem, pa, pb = item
    a, b = read_luminance(pa), read_luminance(pb)
    if a.shape != b.shape:
        raise CDDFuseError(
            f"pair {stem!r}: the two images differ in size ({pa.name} {a.shape[1]}x{a.shape[0]}, "
            f"{pb.name} {b.shape[1]}x{b.shape[0]}); register and crop them to the same size first"
        )
    return stem, a, b


def _iter_pairs(pairs: Sequence[tuple[str, Path, Path]],
                workers: int = 0) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Decode pairs in order (in ``workers`` processes when > 0)."""
    if workers <= 0 or len(pairs) < 2:
        for item in pairs:
            yield _read_pair(item)
        return
    import multiprocessing as mp

    with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
        yield from pool.imap(_read_pair, pairs, chunksize=4)


def _check_small(small: list[str], total: int, what: str, policy: str, warn: Callable[[str], None] | None) -> None:
    if not small:
        return
    text = f"{len(small)} of {total} image pairs are smaller than the {what}: {short_list(small, 8)}"
    if policy == "error" or len(small) == total:
        raise CDDFuseError(
            text + "; use a smaller --patch-size / --crop-size, or leave them out with --skip-small "
            "(data.small_images=skip)"
        )
    if warn is not None:
        warn(text + " -- skipped")


@dataclass
class PatchSet:
    """Patches of both sources: ``a``, ``b`` ``(N, 1, S, S)`` float32, ``origin`` ``(N, 3)`` (pair, y, x)."""

    a: np.ndarray
    b: np.ndarray
    origin: np.ndarray
    stems: list[str]
    info: dict[str, Any]


def extract_patch_pairs(
    pairs: Sequence[tuple[str, Path, Path]],
    size: int = 128,
    stride: int = 200,
    threshold: float = 0.1,
    small_images: str = "error",
    workers: int = 0,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> PatchSet:
    """The paper's preprocessing of ``pairs`` (see the module docstring)."""
    a_list: list[np.ndarray] = []
    b_list: list[np.ndarray] = []
    origin: list[tuple[int, int, int]] = []
    stems: list[str] = []
    small: list[str] = []
    dropped = 0
    it: Iterable[tuple[str, np.ndarray, np.ndarray]] = _iter_pairs(pairs, workers)
    if progress is not None:
        it = progress(it)
    for stem, a, b in it:
        h, w = a.shape
        if h < size or w < size:
            small.append(f"{stem} ({w}x{h})")
            continue
        idx = len(stems)
        stems.append(stem)
        for y, x in patch_origins(h, w, size, stride):
            pa, pb = a[y:y + size, x:x + size], b[y:y + size, x:x + size]
            if is_low_contrast(pa, threshold) or is_low_contrast(pb, threshold):
                dropped += 1
                continue
            a_list.append(pa.copy())
            b_list.append(pb.copy())
            origin.append((idx, y, x))
    _check_small(small, len(pairs), f"{size}x{size} patch", small_images, warn)
    if not a_list:
        raise CDDFuseError(
            f"no {size}x{size} patch of the {len(stems)} pairs passed the contrast filter "
            f"((p90 - p10) / p90 >= {threshold} in both sources); lower --contrast-threshold or check the images"
        )
    info = {
        "mode": "patches", "patch_size": size, "stride": stride, "contrast_threshold": threshold,
        "pairs": len(stems), "samples": len(a_list), "dropped_low_contrast": dropped,
        "skipped_small": len(small),
    }
    return PatchSet(np.stack(a_list)[:, None], np.stack(b_list)[:, None], np.asarray(origin, dtype=np.int32), stems,
                    info)


@dataclass
class ImageSet:
    """Whole luminance images of both sources (``random_crop`` mode)."""

    a: list[np.ndarray]
    b: list[np.ndarray]
    stems: list[str]
    info: dict[str, Any]


def load_image_pairs(
    pairs: Sequence[tuple[str, Path, Path]],
    crop_size: int = 128,
    small_images: str = "error",
    workers: int = 0,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> ImageSet:
    """Decode whole pairs for ``random_crop`` mode, checking that each is at least ``crop_size``."""
    a_list, b_list, stems, small = [], [], [], []
    it: Iterable[tuple[str, np.ndarray, np.ndarray]] = _iter_pairs(pairs, workers)
    if progress is not None:
        it = progress(it)
    for stem, a, b in it:
        if a.shape[0] < crop_size or a.shape[1] < crop_size:
            small.append(f"{stem} ({a.shape[1]}x{a.shape[0]})")
            continue
        a_list.append(a)
        b_list.append(b)
        stems.append(stem)
    _check_small(small, len(pairs), f"{crop_size}x{crop_size} crop", small_images, warn)
    info = {"mode": "random_crop", "crop_size": crop_size, "pairs": len(stems), "skipped_small": len(small)}
    return ImageSet(a_list, b_list, stems, info)


def _stems_digest(stems: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(stems).encode("utf-8")).hexdigest()[:16]


def describe(data: Any, sources: dict[str, Any]) -> dict[str, Any]:
    """JSON-able description of a prepared data set (stored in caches, checkpoints and weights)."""
    d = dict(data.info)
    d.update(sources)
    d["stems_sha1"] = _stems_digest(data.stems)
    return d


def write_cache(path: os.PathLike[str] | str, data: Any, description: dict[str, Any]) -> Path:
    """Write a :class:`PatchSet` or :class:`ImageSet` to ``path`` (``.h5``/``.hdf5`` or ``.npz``), atomically."""
    dest = Path(path)
    ext = dest.suffix.lower()
    meta = dict(description, format=CACHE_FORMAT, version=CACHE_VERSION,
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta_json = json.dumps(meta, sort_keys=True)
    stems_json = json.dumps(list(data.stems))
    if ext in (".h5", ".hdf5"):
        import h5py

        with atomic_path(dest) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["meta"] = meta_json
            f.attrs["stems"] = stems_json
            if isinstance(data, PatchSet):
                s = data.a.shape[-1]
                f.create_dataset("a", data=data.a, chunks=(1, 1, s, s))
                f.create_dataset("b", data=data.b, chunks=(1, 1, s, s))
                f.create_dataset("origin", data=data.origin)
            else:
                ga, gb = f.create_group("images_a"), f.create_group("images_b")
                for i, (ia, ib) in enumerate(zip(data.a, data.b)):
                    ga.create_dataset(str(i), data=ia)
                    gb.create_dataset(str(i), data=ib)
    elif ext == ".npz":
        arrays: dict[str, np.ndarray] = {"meta": np.array(meta_json), "stems": np.array(stems_json)}
        if isinstance(data, PatchSet):
            arrays.update(a=data.a, b=data.b, origin=data.origin)
        else:
            for i, (ia, ib) in enumerate(zip(data.a, data.b)):
                arrays[f"image_a_{i}"] = ia
                arrays[f"image_b_{i}"] = ib
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
            # cast: mypy would also match **arrays against savez's `allow_pickle: bool` (no key here is so named)
            np.savez(fh, **cast("dict[str, Any]", arrays))
    else:
        raise UsageError(f"{dest}: cache file must end in .h5, .hdf5 or .npz")
    return dest


def read_cache(path: os.PathLike[str] | str) -> tuple[Any, dict[str, Any]]:
    """Load a cache written by :func:`write_cache` -> (:class:`PatchSet` or :class:`ImageSet`, description)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: cache file not found (make it with `cddfuse prepare`)")
    ext = p.suffix.lower()
    try:
        if ext in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as f:
                meta = json.loads(f.attrs["meta"])
                stems = json.loads(f.attrs["stems"])
                if meta.get("mode") == "patches":
                    data: Any = PatchSet(f["a"][...], f["b"][...], f["origin"][...], stems, {})
                else:
                    n = len(f["images_a"])
                    data = ImageSet([f["images_a"][str(i)][...] for i in range(n)],
                                    [f["images_b"][str(i)][...] for i in range(n)], stems, {})
        elif ext == ".npz":
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                stems = json.loads(str(z["stems"]))
                if meta.get("mode") == "patches":
                    data = PatchSet(z["a"], z["b"], z["origin"], stems, {})
                else:
                    n = meta["pairs"]
                    data = ImageSet([z[f"image_a_{i}"] for i in range(n)], [z[f"image_b_{i}"] for i in range(n)],
                                    stems, {})
        else:
            raise UsageError(f"{p}: cache file must end in .h5, .hdf5 or .npz")
    except (OSError, KeyError, ValueError) as e:
        raise CDDFuseError(f"{p}: not a readable cddfuse training cache ({e})") from None
    if meta.get("format") != CACHE_FORMAT:
        raise CDDFuseError(f"{p}: not a cddfuse training cache (made by `cddfuse prepare`)")
    data.info = {k: meta[k] for k in meta if k not in ("format", "version", "created")}
    return data, meta


def read_cache_meta(path: os.PathLike[str] | str) -> dict[str, Any]:
    """The JSON description of a cache, without loading its data."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: cache file not found (make it with `cddfuse prepare`)")
    try:
        if p.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as f:
                meta = json.loads(f.attrs["meta"])
        else:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError) as e:
        raise CDDFuseError(f"{p}: not a readable cddfuse training cache ({e})") from None
    if meta.get("format") != CACHE_FORMAT:
        raise CDDFuseError(f"{p}: not a cddfuse training cache (made by `cddfuse prepare`)")
    return meta
