"""What this processor is and can do: its model name, its instruction-set flags, fast bfloat16.

The tuning cache (:mod:`cddfuse.engine.tuning`) is keyed by :func:`cpu_key`, and
``precision="bf16"`` on CPU needs :func:`bf16_feature`: AMX (``amx_bf16``, matrix tiles) or
AVX512-BF16 (``avx512_bf16``, bfloat16 dot products). Without either, oneDNN emulates bfloat16
and is slower than float32, so the engine refuses instead of running slowly.

``$CDDFUSE_CPU_FLAGS`` (space-separated) replaces the flags read from ``/proc/cpuinfo``, e.g. to
check the refusal on a machine that has AMX (``CDDFUSE_CPU_FLAGS="avx2 fma"``).

Example:
    >>> import os
    >>> os.environ["CDDFUSE_CPU_FLAGS"] = "sse2 avx2 avx512f avx512_bf16"
    >>> bf16_feature()
    'avx512_bf16'
    >>> os.environ["CDDFUSE_CPU_FLAGS"] = "sse2 avx2"
    >>> bf16_feature() is None
    True
    >>> del os.environ["CDDFUSE_CPU_FLAGS"]
"""
from __future__ import annotations

import functools
import os
import platform

__all__ = ["cpu_flags", "cpu_model", "bf16_feature", "BF16_FEATURES", "cpu_key"]

#: Processor features that make bfloat16 matrix products fast, best first.
BF16_FEATURES = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """``(model name, flags)`` from ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    model = ""
    flags: tuple[str, ...] = ()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = tuple(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_flags() -> frozenset[str]:
    """The processor's instruction-set flags (``$CDDFUSE_CPU_FLAGS`` if set)."""
    override = os.environ.get("CDDFUSE_CPU_FLAGS")
    if override is not None:
        return frozenset(override.split())
    return frozenset(_cpuinfo()[1])


def cpu_model() -> str:
    """The processor's model name, e.g. ``"AMD EPYC 9R14"`` (``platform.processor()`` off Linux)."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def bf16_feature() -> str | None:
    """The feature that makes bfloat16 fast here (one of :data:`BF16_FEATURES`), or ``None``."""
    flags = cpu_flags()
    return next((feature for feature in BF16_FEATURES if feature in flags), None)


def cpu_key() -> str:
    """What a measured speed depends on: processor model, the flags that matter, core count."""
    flags = cpu_flags()
    wide = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "sve", "asimd") if f in flags]
    return f"{cpu_model()} | {platform.machine()} | {'+'.join(wide) or 'baseline'} | {os.cpu_count()} cpus"
