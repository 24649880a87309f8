"""Per-machine tuning of the engine's speed choices, cached per CPU and PyTorch version.

Three choices decide how fast the engine runs on a CPU and none of them changes the result
(tiling is exact; the two op backends compute the same function to float rounding):

* ``tile``: the tile side used on CPU when the image would fit whole (cache-sized tiles are
  faster; the best size depends on the cache hierarchy),
* ``workers``: tiles in flight, each on its own thread with a share of the intra-op threads,
* ``ops``: the float32 backend of the 1x1 convolutions and convolutions: ``"fused"`` (oneDNN
  with post-ops, faster on the AMD EPYC this was first tuned on) or ``"plain"`` (PyTorch's BLAS
  path).

:func:`tune` measures them on a short probe (a random paper-size network on a 256x384 pair, and
for each other tile side a pair of 2x3 such tiles; about 20 seconds on two cores) and stores the
winner in a JSON cache, one entry per :func:`machine_key` (processor model and flags, thread
count, PyTorch version).
:func:`settings` returns the cached entry, tuning first when there is none and auto-tuning is on
(``$CDDFUSE_TUNE`` not ``0``); the cache lives in ``$CDDFUSE_CACHE`` (a folder), else
``$XDG_CACHE_HOME/cddfuse`` or ``~/.cache/cddfuse``. Delete the file to re-tune; a corrupt or
unreadable cache is ignored with a :class:`~cddfuse.errors.CDDFuseWarning`.

Example (with auto-tuning off the built-in defaults are used):
    >>> import os
    >>> os.environ["CDDFUSE_TUNE"] = "0"
    >>> s = settings(tune_if_missing=False)
    >>> s.tile >= 32 and s.ops in ("fused", "plain", "auto")
    True
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._fileutil import atomic_path
from ..errors import CDDFuseWarning
from ..models.cddfuse import CDDFuseConfig
from .cpu import cpu_key
from .planning import CPU_SPEED_TILE

__all__ = ["EngineSettings", "machine_key", "cache_path", "load_cache", "cached_settings", "settings", "tune",
           "DEFAULT_SETTINGS", "PROBE_SIZE"]

#: Size of the probe pair (rows, columns): larger than every candidate tile, small enough for seconds.
PROBE_SIZE = (256, 384)
#: A candidate must beat the current choice by this fraction to replace it (timing noise).
_MARGIN = 0.05
_VERSION = 1


@dataclass(frozen=True)
class EngineSettings:
    """The engine's speed choices on CPU (see the module docstring)."""

    tile: int = CPU_SPEED_TILE
    workers: int | None = None  # None: planning.default_workers
    ops: str = "auto"  # "auto" | "fused" | "plain"
    source: str = "default"  # "default" | "cache" | "tuned"
    timings: dict[str, float] = field(default_factory=dict, compare=False)


DEFAULT_SETTINGS = EngineSettings()


def machine_key() -> str:
    """What the best settings depend on: the CPU (:func:`~cddfuse.engine.cpu.cpu_key`), the
    intra-op thread count and the PyTorch version."""
    return f"{cpu_key()} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def cache_path() -> Path:
    """The tuning cache file: ``$CDDFUSE_CACHE/tuning.json``, else under the user's cache folder
    (:func:`cddfuse._fileutil.cache_dir`)."""
    from .._fileutil import cache_dir

    return cache_dir() / "tuning.json"


def load_cache(path: Path | None = None) -> dict[str, Any]:
    """The cache's entries by machine key; ``{}`` when missing, and (with a warning) when corrupt."""
    path = path or cache_path()
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a pipe would block the read forever
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > MAX_CACHE_BYTES:
            raise OSError(errno.EFBIG, f"{st.st_size:,} bytes is more than a tuning cache holds")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        warnings.warn(f"ignoring the tuning cache {path}: {reason}", CDDFuseWarning, stacklevel=2)
        return {}
    try:
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("machines"), dict):
            raise ValueError("not a cddfuse tuning cache")
        return dict(data["machines"])
    except ValueError as e:
        warnings.warn(f"ignoring the tuning cache {path} ({e}); delete it or run `cddfuse tune` to rewrite it",
                      CDDFuseWarning, stacklevel=2)
        return {}


def _from_entry(entry: Any) -> EngineSettings | None:
    try:
        tile, workers, ops = int(entry["tile"]), entry["workers"], str(entry["ops"])
        if tile < 32 or ops not in ("fused", "plain", "auto") or not (workers is None or int(workers) >= 1):
            return None
        return EngineSettings(tile, None if workers is None else int(workers), ops, "cache",
                              {k: float(v) for k, v in dict(entry.get("timings", {})).items()})
    except (KeyError, TypeError, ValueError):
        return None


def cached_settings(path: Path | None = None) -> EngineSettings | None:
    """This machine's cached settings, or ``None`` (none yet, or an unusable entry: with a warning)."""
    entries = load_cache(path)
    key = machine_key()
    if key not in entries:
        return None
    found = _from_entry(entries[key])
    if found is None:
        warnings.warn(f"ignoring this machine's entry in the tuning cache {path or cache_path()} (malformed)",
                      CDDFuseWarning, stacklevel=2)
    return found


#: A tuning cache holds a few hundred bytes per machine; a larger file is not one.
MAX_CACHE_BYTES = 1 << 20


def _store(result: EngineSettings, path: Path | None = None) -> None:
    path = path or cache_path()
    entries = load_cache(path)
    entry = asdict(result)
    entry.pop("source")
    entry["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entries[machine_key()] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps({"version": _VERSION, "machines": entries}, indent=1) + "\n",
                                 encoding="utf-8")
    except OSError as e:  # a read-only home must not stop fusion
        warnings.warn(f"could not write the tuning cache {path}: {e.strerror or e}; set CDDFUSE_CACHE to a "
                      "writable folder", CDDFuseWarning, stacklevel=2)


def _auto_tune_enabled() -> bool:
    return os.environ.get("CDDFUSE_TUNE", "1").strip().lower() not in ("0", "no", "off", "false")


def settings(tune_if_missing: bool | None = None, notify: Callable[[str], None] | None = None) -> EngineSettings:
    """The engine's settings on this CPU: cached, else tuned now (``tune_if_missing``, default
    ``$CDDFUSE_TUNE`` != ``0``) and cached, else :data:`DEFAULT_SETTINGS`. ``notify`` is told
    before a tuning run starts."""
    found = cached_settings()
    if found is not None:
        return found
    if tune_if_missing is None:
        tune_if_missing = _auto_tune_enabled()
    if not tune_if_missing:
        return DEFAULT_SETTINGS
    if notify is not None:
        notify("tuning the engine for this CPU, once (about 20 s; `cddfuse tune` redoes it)")
    return tune()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def tune(size: tuple[int, int] = PROBE_SIZE, repeats: int = 1, store: bool = True,
         path: Path | None = None, log: Callable[[str], None] | None = None,
         config: CDDFuseConfig | None = None) -> EngineSettings:
    """Measure the speed choices on a probe pair and return (and by default cache) the fastest.

    Coordinate descent from the defaults: the op backend, then tiles in flight, then the tile
    side; each candidate is timed ``repeats`` times (best kept) after one warm-up run, in seconds
    per megapixel, and replaces the current choice only when faster by more than 5%. ``config``: the probe network's
    sizes (default: the paper's; a smaller one only makes sense in tests).
    """
    from ..models.cddfuse import CDDFuse
    from .engine import tiled_fuse
    from .ops import fused_ops_available
    from .planning import default_workers

    with _seeded(0):
        model = CDDFuse(config or CDDFuseConfig()).eval()
        a, b = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    threads = torch.get_num_threads()
    timings: dict[str, float] = {}

    def run(tile: int, workers: int, ops: str) -> float:
        """Seconds per megapixel. Backend and workers are compared on the probe pair; a tile side
        ``t`` other than the default on a pair of 2x3 tiles of that side (as many tiles, so the same
        share of halo at the borders), so that sizes are compared per pixel, not per probe."""
        label = f"tile={tile} workers={workers} ops={ops}"
        if label not in timings:
            pa, pb = a, b
            if tile != CPU_SPEED_TILE:
                h, w = size[0] * tile // CPU_SPEED_TILE, size[1] * tile // CPU_SPEED_TILE
                pa, pb = a[..., :h, :w], b[..., :h, :w]
                if h > size[0] or w > size[1]:
                    with _seeded(1):
                        pa, pb = torch.rand(1, 1, h, w), torch.rand(1, 1, h, w)
            best = float("inf")
            with torch.inference_mode():
                for _ in range(repeats):
                    t = time.perf_counter()
                    tiled_fuse(model, pa, pb, "vis", tile=tile, workers=workers, ops=ops, store="memory")
                    best = min(best, time.perf_counter() - t)
            per_mpix = best / (pa.shape[-2] * pa.shape[-1] / 1e6)
            timings[label] = round(per_mpix, 4)
            if log is not None:
                log(f"{label}: {per_mpix:.2f} s per megapixel ({best:.2f} s)")
        return timings[label]

    ops = "fused" if fused_ops_available() else "plain"
    tile, workers = CPU_SPEED_TILE, default_workers(99)
    with torch.inference_mode():  # warm-up: oneDNN primitives, allocator
        tiled_fuse(model, a, b, "vis", tile=tile, workers=workers, ops=ops, store="memory")
    best = run(tile, workers, ops)
    candidates: list[tuple[str, list[Any]]] = [
        ("ops", ["plain"] if ops == "fused" else []),
        ("workers", sorted({1, threads, min(threads, 4)} - {workers})),
        ("tile", [96, 160]),
    ]
    for name, values in candidates:
        for value in values:
            trial = {"tile": tile, "workers": workers, "ops": ops, name: value}
            t = run(trial["tile"], trial["workers"], trial["ops"])
            if t < best * (1 - _MARGIN):
                best, tile, workers, ops = t, trial["tile"], trial["workers"], trial["ops"]
    result = EngineSettings(tile, workers, ops, "tuned", timings)
    if store:
        _store(result, path)
    return result
