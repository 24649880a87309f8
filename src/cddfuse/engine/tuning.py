"""Per-machine tuning of the engine's speed, cached per CPU, thread count and PyTorch version.

The engine's results are fixed by the image, the weights and the computation plan: the tile side
(:data:`~cddfuse.engine.planning.CPU_SPEED_TILE` on CPU, or smaller when a memory budget needs
it), the op backend (oneDNN with fused post-ops where PyTorch has it) and the compute precision.
None of those is tuned, so that one process, ``--shard K/N`` jobs and ``torchrun`` ranks with any
thread counts write byte-identical files. What is tuned is the one choice that changes only the
speed:

* ``workers``: tiles in flight, each on its own thread with a share of the intra-op threads
  (every tile does the same arithmetic whichever thread runs it, and the attention statistics are
  summed in tile order).

:func:`tune` times the candidates (1, the thread count, and up to 4) on a short probe (a random
paper-size network on a 256x384 pair: 6 tiles) and stores the fastest in a JSON cache, one entry
per :func:`machine_key` (processor model and flags, thread count, PyTorch version). With one
thread there is nothing to measure. :func:`settings` returns the cached entry, tuning first when
there is none and auto-tuning is on (``$CDDFUSE_TUNE`` not ``0``); the cache lives in
``$CDDFUSE_CACHE`` (a folder), else ``$XDG_CACHE_HOME/cddfuse`` or ``~/.cache/cddfuse``. Delete the
file to re-tune; a corrupt or unreadable cache is ignored with a
:class:`~cddfuse.errors.CDDFuseWarning`.

Processes that start together (``torchrun`` ranks, a job array on one machine) do not all tune at
once: tuning holds an exclusive lock on ``tuning.json.lock`` beside the cache, and a process that
finds it held waits for the entry (at most ``$CDDFUSE_TUNE_WAIT`` seconds, default
:data:`WAIT_SECONDS`), then reads it; after that wait it goes on with the built-in settings and a
warning (the files it writes are the same).

Example (with auto-tuning off the built-in defaults are used):
    >>> import os
    >>> os.environ["CDDFUSE_TUNE"] = "0"
    >>> s = settings(tune_if_missing=False)
    >>> s.workers is None or s.workers >= 1
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

from .._fileutil import atomic_path, cache_dir
from ..errors import CDDFuseWarning
from ..models.cddfuse import CDDFuse, CDDFuseConfig
from .cpu import cpu_key
from .engine import tiled_fuse
from .planning import CPU_SPEED_TILE, MAX_WORKERS

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, each process tunes for itself
    fcntl = None  # type: ignore[assignment]

__all__ = ["EngineSettings", "machine_key", "cache_path", "load_cache", "cached_settings", "settings", "tune",
           "DEFAULT_SETTINGS", "PROBE_SIZE", "WAIT_SECONDS"]

#: Size of the probe pair (rows, columns): 2x3 tiles of the CPU tile side, a few seconds per candidate.
PROBE_SIZE = (256, 384)
#: A candidate must beat the current choice by this fraction to replace it (timing noise).
_MARGIN = 0.05
#: Version 1 caches also chose the tile side and the op backend; they are ignored (and replaced).
_VERSION = 2
#: How long a process waits for another one's tuning before going on with the built-in settings.
WAIT_SECONDS = 300.0


@dataclass(frozen=True)
class EngineSettings:
    """The engine's speed choice on CPU (see the module docstring)."""

    workers: int | None = None  # None: planning.default_workers
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
    return cache_dir() / "tuning.json"


def load_cache(path: Path | None = None) -> dict[str, Any]:
    """The cache's entries by machine key; ``{}`` when missing or of an older version, and (with a
    warning) when corrupt."""
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
        if isinstance(data, dict) and data.get("version") == 1 and isinstance(data.get("machines"), dict):
            return {}  # an older cddfuse's cache: tuned choices that are now fixed; replaced on the next tuning
        if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("machines"), dict):
            raise ValueError("not a cddfuse tuning cache")
        return dict(data["machines"])
    except ValueError as e:
        warnings.warn(f"ignoring the tuning cache {path} ({e}); delete it or run `cddfuse tune` to rewrite it",
                      CDDFuseWarning, stacklevel=2)
        return {}


def _from_entry(entry: Any) -> EngineSettings | None:
    try:
        workers = entry["workers"]
        if isinstance(workers, bool) or not (workers is None or int(workers) >= 1):
            return None
        return EngineSettings(None if workers is None else int(workers), "cache",
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


def _wait_seconds() -> float:
    text = os.environ.get("CDDFUSE_TUNE_WAIT", "").strip()
    try:
        return max(0.0, float(text)) if text else WAIT_SECONDS
    except ValueError:
        warnings.warn(f"ignoring CDDFUSE_TUNE_WAIT={text!r}: expected a number of seconds; waiting "
                      f"{WAIT_SECONDS:.0f} s", CDDFuseWarning, stacklevel=3)
        return WAIT_SECONDS


@contextlib.contextmanager
def _lock(path: Path, timeout: float, waiting: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the exclusive tuning lock ``<cache>.lock`` (``flock``: released by the kernel if the
    holder dies, so a lock is never stale); yields False when it stayed held for ``timeout``
    seconds. Without ``fcntl``, or where the lock file cannot be created, yields True at once."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        if fcntl is None:
            raise OSError(errno.ENOSYS, "no fcntl")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield True
        return
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
            if not told and waiting is not None:
                waiting(f"another process is tuning the engine for this CPU; waiting for its result "
                        f"(at most {timeout:.0f} s, CDDFUSE_TUNE_WAIT)")
                told = True
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _auto_tune_enabled() -> bool:
    return os.environ.get("CDDFUSE_TUNE", "1").strip().lower() not in ("0", "no", "off", "false")


def settings(tune_if_missing: bool | None = None, notify: Callable[[str], None] | None = None) -> EngineSettings:
    """The engine's settings on this CPU: cached, else tuned now (``tune_if_missing``, default
    ``$CDDFUSE_TUNE`` != ``0``) and cached, else :data:`DEFAULT_SETTINGS`. ``notify`` is told
    before a tuning run starts, and when another process is tuning and this one waits for it."""
    found = cached_settings()
    if found is not None:
        return found
    if tune_if_missing is None:
        tune_if_missing = _auto_tune_enabled()
    if not tune_if_missing:
        return DEFAULT_SETTINGS
    path = cache_path()
    wait = _wait_seconds()
    with _lock(path, wait, notify) as held:
        if not held:
            warnings.warn(f"another process has been tuning the engine for {wait:.0f} s (lock "
                          f"{path.name}.lock in {path.parent}); going on with the built-in settings, which "
                          "give the same result, possibly slower (CDDFUSE_TUNE_WAIT=SECONDS waits longer, "
                          "CDDFUSE_TUNE=0 never tunes)", CDDFuseWarning, stacklevel=2)
            return DEFAULT_SETTINGS
        found = cached_settings()  # tuned by the process this one waited for
        if found is not None:
            return found
        if notify is not None and _candidates(torch.get_num_threads())[1]:
            notify("tuning the engine for this CPU, once (about 20 s; `cddfuse tune` redoes it)")
        result = tune(store=False)
        _store(result, path)
    return result


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _candidates(threads: int) -> tuple[int, list[int]]:
    """The starting choice of tiles in flight (one per thread, up to :data:`MAX_WORKERS`) and the others to time."""
    start = min(threads, MAX_WORKERS)
    return start, sorted({1, threads, start} - {start})


def tune(size: tuple[int, int] = PROBE_SIZE, repeats: int = 1, store: bool = True,
         path: Path | None = None, log: Callable[[str], None] | None = None,
         config: CDDFuseConfig | None = None) -> EngineSettings:
    """Time the numbers of tiles in flight on a probe pair and return (and by default cache) the fastest.

    Each candidate runs the engine on the probe with :data:`~cddfuse.engine.planning.CPU_SPEED_TILE`
    tiles ``repeats`` times (best kept) after one warm-up run, in seconds per megapixel, and
    replaces the current choice (one tile per thread, up to 4) only when faster by more than 5%.
    With one thread there is nothing to time. ``config``: the probe network's sizes (default: the
    paper's; a smaller one only makes sense in tests). With ``store``, the tuning lock (see the
    module docstring) is held while measuring, so that no other process's probe runs at the same time.
    """
    if not store:
        return _measure(size, repeats, log, config)
    path = path or cache_path()
    with _lock(path, _wait_seconds(), log):  # measure anyway after the wait: this run was asked for
        result = _measure(size, repeats, log, config)
        _store(result, path)
    return result


def _measure(size: tuple[int, int], repeats: int, log: Callable[[str], None] | None,
             config: CDDFuseConfig | None) -> EngineSettings:
    threads = torch.get_num_threads()
    workers, others = _candidates(threads)
    if not others:
        return EngineSettings(workers, "tuned", {})
    with _seeded(0):
        model = CDDFuse(config or CDDFuseConfig()).eval()
        a, b = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    timings: dict[str, float] = {}

    def run(n: int) -> float:
        """Seconds per megapixel with ``n`` tiles in flight."""
        best = float("inf")
        with torch.inference_mode():
            for _ in range(repeats):
                t = time.perf_counter()
                tiled_fuse(model, a, b, "vis", tile=CPU_SPEED_TILE, workers=n, store="memory")
                best = min(best, time.perf_counter() - t)
        per_mpix = best / (size[0] * size[1] / 1e6)
        timings[f"workers={n}"] = round(per_mpix, 4)
        if log is not None:
            log(f"workers={n}: {per_mpix:.2f} s per megapixel ({best:.2f} s)")
        return per_mpix

    with torch.inference_mode():  # warm-up: oneDNN primitives, allocator
        tiled_fuse(model, a, b, "vis", tile=CPU_SPEED_TILE, workers=workers, store="memory")
    best = run(workers)
    for n in others:
        t = run(n)
        if t < best * (1 - _MARGIN):
            best, workers = t, n
    return EngineSettings(workers, "tuned", timings)
