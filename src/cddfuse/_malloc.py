"""glibc ``malloc`` settings and queries shared by the fusion engine, the metrics and the trainer.

PyTorch and numpy allocate large temporaries with ``malloc``. By default glibc serves blocks above a
(moving) threshold with a fresh ``mmap``, gives them back on ``free`` and trims the heap when its
top is free, so a loop that allocates the same buffers again and again page-faults (and has the
kernel zero) every page of them each time. The settings below keep freed memory in the process for
reuse instead; :func:`trim` hands it back when wanted. Everything is a no-op off Linux/glibc.

The settings each part of the package uses are the named presets of :data:`MALLOC_PRESETS`, applied
with :func:`use_malloc_preset`; ``CDDFUSE_MALLOC_TUNING=0`` in the environment turns every preset off.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Literal

__all__ = ["set_malloc_options", "trim", "can_trim", "resident_memory", "MallocPreset", "MALLOC_PRESETS",
           "use_malloc_preset"]

#: Who tunes malloc: the fusion engine, the metrics, the trainer.
MallocPreset = Literal["engine", "metrics", "training"]

#: The ``mallopt`` settings of each preset (keywords of :func:`set_malloc_options`):
#:
#: - ``engine``: a fixed 32 MiB mmap threshold, no automatic trimming and 64 MiB of top pad: freed tile
#:   buffers are reused (the engine's ``MemoryGuard`` trims when the resident size passes its budget);
#: - ``metrics``: 32 MiB mmap threshold, up to 256 MiB of freed memory kept: whole-image temporaries
#:   of the metrics are reused instead of faulted in again on every call;
#: - ``training``: no ``mmap`` at all and no trimming: the hundreds of tensors a step allocates and
#:   frees are served from the heap again.
MALLOC_PRESETS: dict[MallocPreset, dict[str, int]] = {
    "engine": {"mmap_threshold": 32 * 2**20, "trim_threshold": 2**31 - 1, "top_pad": 64 * 2**20},
    "metrics": {"mmap_threshold": 32 * 2**20, "trim_threshold": 256 * 2**20},
    "training": {"mmap_max": 0, "trim_threshold": 2**31 - 1},
}

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

_libc: Any = None


def _glibc() -> Any:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else ``None``."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                lib = ctypes.CDLL(None)
                lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                _libc = lib
            except (OSError, AttributeError, TypeError):  # musl and others: no mallopt/malloc_trim
                pass
    return _libc or None


def set_malloc_options(*, trim_threshold: int | None = None, mmap_threshold: int | None = None,
                       mmap_max: int | None = None, top_pad: int | None = None) -> bool:
    """Set glibc ``mallopt`` parameters (the ``MALLOC_*_`` environment variables, at run time).

    Args:
        trim_threshold: free bytes at the heap's top before ``free`` gives them back (``M_TRIM_THRESHOLD``).
        mmap_threshold: blocks at least this large get their own ``mmap`` (``M_MMAP_THRESHOLD``,
            at most 32 MiB on 64-bit glibc; setting it also stops glibc from moving it).
        mmap_max: most blocks served by ``mmap`` at once (``M_MMAP_MAX``; 0: none).
        top_pad: extra bytes requested each time the heap grows (``M_TOP_PAD``).

    Returns:
        Whether every given setting was accepted (``False`` off glibc). Process-wide.
    """
    lib = _glibc()
    if lib is None:
        return False
    ok = True
    for param, value in ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_MMAP_MAX, mmap_max),
                         (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)):
        if value is not None:
            ok = bool(lib.mallopt(param, int(min(value, 2**31 - 1)))) and ok
    return ok


def use_malloc_preset(preset: MallocPreset, **overrides: int) -> bool:
    """Apply the settings of ``preset`` (:data:`MALLOC_PRESETS`), with ``overrides`` replacing some of
    them; process-wide. Returns whether they were applied: ``False`` off glibc, or when the environment
    sets ``CDDFUSE_MALLOC_TUNING=0``.

    >>> sorted(MALLOC_PRESETS["training"])
    ['mmap_max', 'trim_threshold']
    """
    if os.environ.get("CDDFUSE_MALLOC_TUNING", "1") == "0":
        return False
    return set_malloc_options(**{**MALLOC_PRESETS[preset], **overrides})


def can_trim() -> bool:
    """Whether :func:`trim` and :func:`resident_memory` work here (Linux with glibc)."""
    return _glibc() is not None and resident_memory() is not None


def trim() -> bool:
    """``malloc_trim(0)``: give the free pages of every heap back to the system. True if any were."""
    lib = _glibc()
    return bool(lib.malloc_trim(0)) if lib is not None else False


def resident_memory() -> int | None:
    """Resident memory of this process now, in bytes (``None`` where ``/proc`` is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
