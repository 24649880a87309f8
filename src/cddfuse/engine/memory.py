"""Memory: how much the process may use, and keeping its resident size within that while it runs.

* :func:`available_memory` reads what is available now (``MemAvailable`` in ``/proc/meminfo``,
  or the cgroup limit when lower); :func:`parse_memory` reads budgets like ``"3G"``.
* :func:`tune_malloc` applies the engine's glibc malloc policy (through :mod:`cddfuse._malloc`,
  preset ``engine`` of the project's one place for malloc settings): keep freed tile buffers for reuse.
* :class:`MemoryGuard` hands freed heap memory back whenever the resident size passes a limit.

The model of how much memory a run needs, which the planner uses to choose tiles and stores, is in
:mod:`cddfuse.engine.planning`.
"""
from __future__ import annotations

import os
import threading

from .._malloc import can_trim, resident_memory, trim, use_malloc_preset
from ..options import parse_size

__all__ = ["available_memory", "parse_memory", "default_budget", "DEFAULT_BUDGET", "tune_malloc", "MemoryGuard"]


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable, or a cgroup limit if lower)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                txt = f.read().strip()
            if txt.isdigit() and int(txt) < 2**60:
                limit = int(txt)
                avail = limit if avail is None else min(avail, limit)
        except OSError:
            pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 * 2**30
    return int(avail)


#: The memory one fusion may use on CPU when the caller sets no budget: 3 GiB (or less, see
#: :func:`default_budget`). Without a default, a 2048x2048 pair took 10.6 GB -- enough for the OOM
#: killer on an 8 GB laptop or with two jobs at once; with 3 GiB it peaks at 2.5 GB, and a 640x480
#: pair (1.3 GB) is not affected at all.
DEFAULT_BUDGET = 3 * 2**30


def default_budget() -> int:
    """The CPU budget when none is given: :data:`DEFAULT_BUDGET`, or 80% of the memory available now
    if that is less. A larger budget is the caller's choice (``max_memory=``, ``--max-memory``)."""
    return min(DEFAULT_BUDGET, int(0.8 * available_memory()))


def parse_memory(text: str | int | None) -> int | None:
    """A memory budget in bytes (``None`` stays ``None``), in the size grammar of
    :func:`cddfuse.options.parse_size` (``"3G"``, ``"512M"``, ``"1.5GB"``, ``"2GiB"`` or bytes).

    Example:
        >>> parse_memory("1.5G"), parse_memory("512M"), parse_memory(1234), parse_memory(None)
        (1610612736, 536870912, 1234, None)
    """
    return None if text is None else parse_size(text)


def tune_malloc() -> bool:
    """Make glibc malloc keep and reuse the memory of freed tile buffers (process-wide).

    By default glibc maps buffers above a moving threshold afresh and trims the heap when its top
    is free, so each tile's buffers cost page faults and zeroing again (2.5 million minor faults
    for one 640x480 pair here). With a fixed 32 MiB mmap threshold, no automatic trimming and
    64 MiB of top pad, freed buffers are reused: faster (see the lever table in
    benchmarks/RESULTS.md). Memory then stays bounded by :class:`MemoryGuard`, which trims when
    the resident size passes its limit. :func:`~cddfuse.engine.engine.tiled_fuse` calls this on
    CPU; set ``CDDFUSE_MALLOC_TUNING=0`` to leave malloc as it is. Returns whether the settings
    were applied (``False`` off glibc or when turned off).
    """
    return use_malloc_preset("engine")


class MemoryGuard:
    """Keeps the process's resident memory near ``limit`` bytes while tiles are computed.

    Freed tile buffers stay in glibc malloc's heaps, fragmented and largely not reused: measured
    on a 1024x1024 pair (tiles of 128, two workers), 790 MB of the 1.06 GB resident was free heap
    memory (``mallinfo2``), and the peak grew with the number of tiles (4.8 GB for a 2048x2048
    pair with a 3 GB budget). Called after each tile, the guard reads the resident size
    (``/proc/self/statm``, microseconds) and only when it is above ``limit`` calls
    ``malloc_trim(0)``, which returns the free pages. Trimming after every tile
    would bound memory too but costs ~50% more time (the pages are faulted in and zeroed again);
    trimming at the limit costs almost nothing. A no-op where ``/proc`` or glibc are missing.

    Example:
        >>> guard = MemoryGuard(3 * 2**30)
        >>> guard()  # after a tile
        >>> guard.trims >= 0
        True
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.trims = 0
        self._active = can_trim()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether this platform lets the guard do anything."""
        return self._active

    def __call__(self) -> None:
        if not self._active:
            return
        rss = resident_memory()
        if rss is not None and rss > self.limit and self._lock.acquire(blocking=False):
            try:  # one thread trims; the others go on
                trim()
                self.trims += 1
            finally:
                self._lock.release()
