"""Planning a run: tile size, where feature maps live, and tiles in flight, from a memory model.

The tiled engine's memory is bounded by the tile size plus the full-resolution feature maps kept
between passes; those go to unlinked temporary files (:class:`~cddfuse.engine.stores.DiskStore`)
when they would not fit the budget. :func:`estimate_memory` models a run's peak memory from
measured constants; :func:`auto_tile` picks the largest tile (and memory or disk) within a budget,
and :func:`choose_plan` the plan of a run: on CPU cache-sized tiles (:data:`CPU_SPEED_TILE`) even
when the whole image fits, whatever the budget allows, because the tile side sets the float
rounding and the files written must not depend on the memory free or the thread count. :func:`guard_limit` sets the
:class:`~cddfuse.engine.memory.MemoryGuard`'s threshold.

Example:
    >>> from cddfuse.models import CDDFuseConfig
    >>> auto_tile(480, 640, 64 * 2**30, CDDFuseConfig())  # fits whole: one tile, maps in memory
    (None, False)
    >>> auto_tile(4096, 4096, 3 * 2**30, CDDFuseConfig())[1]  # 8.6 GB of maps: on disk
    True
    >>> choose_tile(480, 640, device="cpu", memory_budget=64 * 2**30)  # on CPU: cache-sized tiles
    (128, False)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..models.cddfuse import CDDFuseConfig
from .geometry import plan_tiles
from .memory import available_memory

__all__ = [
    "MIN_TILE",
    "CPU_SPEED_TILE",
    "MAX_WORKERS",
    "default_workers",
    "feature_map_bytes",
    "tile_work_bytes",
    "estimate_memory",
    "auto_tile",
    "choose_tile",
    "choose_plan",
    "Plan",
    "guard_limit",
]

#: Smallest tile :func:`auto_tile` picks (smaller tiles waste time on halos).
MIN_TILE = 64

#: Tile side used on CPU even when the whole image fits in memory: a tile's activations then stay
#: in the L2/L3 caches and memory is reused instead of freshly mapped, which is faster than one
#: whole-image tile (see benchmarks/RESULTS.md). Tiling is exact, so this changes speed only.
CPU_SPEED_TILE = 128

#: Most tiles computed at the same time (:func:`default_workers`).
MAX_WORKERS = 4

#: Working memory per pixel of a tile's array and channel of ``dim``, per image of the encoder
#: batch, in units of ``itemsize``. Measured on CPU in the heaviest pass (the branch pass: Lite
#: Transformer and INN nodes on both sources) with tiles of 128 px whose buffers come from fresh
#: pages (after a trim, glibc's fragmented heap rarely reuses them within a tile): ~27.
_WORK_PER_PIXEL_CHANNEL = 30.0
#: Fixed cost: interpreter, torch, the model, oneDNN scratch and primitive caches (measured:
#: ~235 MiB after start-up plus ~250 MiB once running).
_BASE_BYTES = 520 * 2**20
#: Share of the available memory used when no budget is given.
_AVAILABLE_SHARE = 0.8


def default_workers(n_tiles: int) -> int:
    """Tiles to compute at the same time on CPU: ``$CDDFUSE_TILE_WORKERS`` if set, else one per
    intra-op thread up to :data:`MAX_WORKERS` (and at most one per tile)."""
    env = os.environ.get("CDDFUSE_TILE_WORKERS")
    n = int(env) if env else min(torch.get_num_threads(), MAX_WORKERS)
    return max(1, min(n, n_tiles))


def feature_map_bytes(h: int, w: int, config: CDDFuseConfig, pairs: int = 1, itemsize: int = 4) -> int:
    """Bytes of the full-resolution maps kept between passes at the worst moment.

    That is the branch pass: the shallow features of both sources (2B x C) being read while the
    summed base features and the fused detail features (B x C each) are written.
    """
    return (2 * pairs + 2 * pairs) * config.dim * h * w * itemsize


def tile_work_bytes(tile_h: int, tile_w: int, config: CDDFuseConfig, pairs: int = 1, itemsize: int = 4) -> int:
    """Estimated transient memory of one tile (with its halo) in the heaviest pass."""
    halo = 2 * (config.encoder_inn_layers + config.fuse_inn_layers) + 1
    area = (tile_h + 2 * halo) * (tile_w + 2 * halo)
    return int(_WORK_PER_PIXEL_CHANNEL * area * config.dim * 2 * pairs * itemsize)


def estimate_memory(h: int, w: int, tile: int | None, config: CDDFuseConfig, pairs: int = 1, itemsize: int = 4,
                    on_disk: bool = False, workers: int | None = None) -> int:
    """Estimated peak memory (bytes, whole process) of a tiled run on an ``h x w`` pair."""
    th, tw = (h, w) if tile is None else (min(h, tile), min(w, tile))
    n = 1 if tile is None else (workers or default_workers(len(plan_tiles(h, w, tile))))
    io = 3 * pairs * h * w * 4  # the two sources and the output, float32
    maps = 0 if on_disk else feature_map_bytes(h, w, config, pairs, itemsize)
    return _BASE_BYTES + io + maps + n * tile_work_bytes(th, tw, config, pairs, itemsize)


def auto_tile(h: int, w: int, memory_budget_bytes: int | None, config: CDDFuseConfig | None = None,
              pairs: int = 1, itemsize: int = 4) -> tuple[int | None, bool]:
    """Choose ``(tile, on_disk)`` for an ``h x w`` pair within ``memory_budget_bytes``.

    ``tile=None`` (whole image in one tile) when it fits; otherwise the largest tile (a multiple of
    32, at least :data:`MIN_TILE`) that fits with the feature maps in memory, else with them on
    disk. ``memory_budget_bytes=None`` means 80% of the memory available now
    (:func:`~cddfuse.engine.memory.available_memory`).
    """
    cfg = config or CDDFuseConfig()
    budget = memory_budget_bytes if memory_budget_bytes is not None else int(_AVAILABLE_SHARE * available_memory())
    if estimate_memory(h, w, None, cfg, pairs, itemsize) <= budget:
        return None, False
    for on_disk in (False, True):
        t = ((max(h, w) - 1) // 32) * 32
        while t >= MIN_TILE:
            if estimate_memory(h, w, t, cfg, pairs, itemsize, on_disk) <= budget:
                return t, on_disk
            t -= 32
    return MIN_TILE, True


@dataclass(frozen=True)
class Plan:
    """How :func:`~cddfuse.engine.engine.fuse_tensors` runs an image: tile side (``None``: one
    tile), feature maps on disk or in memory, and tiles in flight."""

    tile: int | None
    on_disk: bool
    workers: int


def choose_plan(h: int, w: int, *, device: str | torch.device = "cpu", tile: int | None = None,
                memory_budget: int | None = None, config: CDDFuseConfig | None = None, pairs: int = 1,
                itemsize: int = 4, workers: int | None = None) -> Plan:
    """The :class:`Plan` for fusing an ``h x w`` pair within ``memory_budget`` bytes (``None``: 80%
    of the memory available now), with at most ``workers`` tiles in flight (default
    :func:`default_workers`).

    * The caller's ``tile``: as given, maps on disk when they would not fit.
    * On CPU: :data:`CPU_SPEED_TILE` (one tile when the image is no larger), because the tile side
      is what sets the float rounding: maps go to disk and fewer tiles are in flight before the
      tile shrinks, so the result is the same whatever the memory available or the thread count,
      unless the budget is below what one tile of that side needs with its maps on disk (about
      0.9 GB plus 12 bytes per pixel for one pair).
    * Elsewhere (CUDA): the largest tile that fits (:func:`auto_tile`), ``None`` if the image fits whole.
    """
    cfg = config or CDDFuseConfig()
    budget = memory_budget if memory_budget is not None else int(_AVAILABLE_SHARE * available_memory())

    def fits(t: int | None, on_disk: bool, n: int) -> bool:
        return estimate_memory(h, w, t, cfg, pairs, itemsize, on_disk, n) <= budget

    def in_flight(t: int | None) -> int:
        n_tiles = 1 if t is None else len(plan_tiles(h, w, t))
        return max(1, min(workers if workers is not None else default_workers(n_tiles), n_tiles))

    if tile is not None:
        n = in_flight(tile)
        return Plan(tile, memory_budget is not None and not fits(tile, False, n), n)
    if torch.device(device).type != "cpu":
        t, on_disk = auto_tile(h, w, memory_budget, cfg, pairs, itemsize)
        t = None if t is not None and t >= max(h, w) else t
        return Plan(t, on_disk, in_flight(t))
    t = None if max(h, w) <= CPU_SPEED_TILE else CPU_SPEED_TILE
    most = in_flight(t)
    for n in range(most, 0, -1):  # fewer tiles in flight before a smaller tile: they do not change the result
        for on_disk in (False, True):
            if fits(t, on_disk, n):
                return Plan(t, on_disk, n)
    t, on_disk = auto_tile(h, w, budget, cfg, pairs, itemsize)  # a budget too small for CPU_SPEED_TILE tiles
    t = CPU_SPEED_TILE if t is None else min(t, CPU_SPEED_TILE)
    return Plan(t, on_disk, 1)


def choose_tile(h: int, w: int, *, device: str | torch.device = "cpu", tile: int | None = None,
                memory_budget: int | None = None, config: CDDFuseConfig | None = None, pairs: int = 1,
                itemsize: int = 4, workers: int | None = None) -> tuple[int | None, bool]:
    """``(tile, on_disk)`` of :func:`choose_plan`."""
    plan = choose_plan(h, w, device=device, tile=tile, memory_budget=memory_budget, config=config, pairs=pairs,
                       itemsize=itemsize, workers=workers)
    return plan.tile, plan.on_disk


def guard_limit(h: int, w: int, tile: int | None, config: CDDFuseConfig, pairs: int, itemsize: int, on_disk: bool,
                workers: int, budget: int | None) -> int:
    """Resident size above which :class:`~cddfuse.engine.memory.MemoryGuard` trims: the budget less
    what the tiles in flight may allocate before the next check (a budget below what the run needs
    makes it trim after every tile: slower, but as small as it gets); without a budget, twice the
    estimate (:func:`estimate_memory`: what the run needs plus as much again of free memory, which
    is faster to reuse than to hand back)."""
    th, tw = (h, w) if tile is None else (min(h, tile), min(w, tile))
    if budget is None:
        return 2 * estimate_memory(h, w, tile, config, pairs, itemsize, on_disk, workers)
    return max(budget - workers * tile_work_bytes(th, tw, config, pairs, itemsize), 0)
