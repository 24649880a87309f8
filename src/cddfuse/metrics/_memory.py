"""Keep freed memory for reuse (glibc): large temporaries stop costing page faults on every call."""
from __future__ import annotations

from .._malloc import use_malloc_preset

__all__ = ["tune_malloc"]

_done = False


def tune_malloc(trim_threshold: int | None = None, mmap_threshold: int | None = None) -> bool:
    """Ask glibc's ``malloc`` to keep freed memory in the process for reuse.

    The metrics work on whole-image temporaries (3.5 MB each for a 768x576 float64 image). By
    default glibc serves such blocks with ``mmap`` and gives them back to the system when they are
    freed, so every call faults all their pages in again; on virtual machines that costs more than
    the arithmetic (here up to half the time of :func:`~cddfuse.metrics.compute_metrics`). This
    raises the mmap threshold to ``mmap_threshold`` (default 32 MiB) and the trim threshold to
    ``trim_threshold`` (default 256 MiB)
    (the same as the environment variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``),
    so up to ``trim_threshold`` bytes of freed memory stay in the process.

    It changes a process-wide setting, so the metrics functions never call it themselves: the
    ``cddfuse eval`` and ``cddfuse bench`` commands do, and a script evaluating many images may.
    Does nothing (and returns False) where the C library is not glibc, or with ``CDDFUSE_MALLOC_TUNING=0``
    (the defaults are the ``metrics`` preset of ``cddfuse._malloc.MALLOC_PRESETS``).
    """
    global _done
    if not _done:
        given = {"mmap_threshold": mmap_threshold, "trim_threshold": trim_threshold}
        _done = use_malloc_preset("metrics", **{k: v for k, v in given.items() if v is not None})
    return _done
