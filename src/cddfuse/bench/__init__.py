"""Benchmarks: fuse a standard test set with a method, evaluate it and put it next to published numbers
(``cddfuse bench``).

* :mod:`cddfuse.bench.paper` -- the CDDFuse paper's protocol: a set laid out like the authors'
  ``test_img/<set>``, their gray conversion, min-max normalisation and 8-bit PNG, their metrics
  (:mod:`cddfuse.metrics`), compared with the paper's rows (:func:`run_bench`, :func:`format_bench`);
* :mod:`cddfuse.bench.vifb` -- the VIFB benchmark's protocol: colour results ranked in VIFB's table
  with its thirteen metrics (:mod:`cddfuse.metrics.vifb`; :func:`run_vifb_bench`).

The metrics themselves are a library that knows nothing of fusion; this package is where the two meet.
The names below are imported lazily, so ``import cddfuse.bench`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy imports below give, for type checkers and IDEs
    from .paper import BenchResult, BenchSet, detect_testset, format_bench, fuse_to_uint8, run_bench
    from .vifb import fuse_vifb_pairs, run_vifb_bench

__all__ = ["BenchSet", "BenchResult", "detect_testset", "fuse_to_uint8", "run_bench", "format_bench",
           "run_vifb_bench", "fuse_vifb_pairs"]

_LAZY = {
    "BenchSet": "paper", "BenchResult": "paper", "detect_testset": "paper", "fuse_to_uint8": "paper",
    "run_bench": "paper", "format_bench": "paper", "run_vifb_bench": "vifb", "fuse_vifb_pairs": "vifb",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
