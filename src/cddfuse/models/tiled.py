"""Fast and exact tiled CDDFuse inference with bounded memory.

:func:`tiled_fuse` returns what ``model(a, b, residual)`` returns (to float rounding, <= 1e-4), but
runs the network tile by tile: every layer is per pixel, a 3x3 convolution (a one-pixel halo) or a
channel attention whose statistics are sums over all pixels, so the network is run in passes
separated by its attention layers, each pass reading its input with the halo it needs and adding
each tile's share to the next attention's statistics (see :mod:`cddfuse.models._fast`). It is not
an approximation with blended overlaps: the result does not depend on the tile size.

Memory is then bounded by the tile size, plus the full-resolution feature maps kept between
passes; those go to unlinked temporary files when they would not fit the memory budget, so image
size is limited by disk space only (pass ``out=`` an ``np.memmap`` to write the result to disk too).

:func:`fast_fuse` is the same engine used for speed (one tile, or a few when that is faster).

Example:
    >>> import torch
    >>> from cddfuse.models import CDDFuse, CDDFuseConfig
    >>> from cddfuse.models.tiled import tiled_fuse
    >>> net = CDDFuse(CDDFuseConfig(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1)).eval()
    >>> a, b = torch.rand(1, 1, 37, 53), torch.rand(1, 1, 37, 53)
    >>> full = net(a, b)
    >>> tiled = tiled_fuse(net, a, b, tile=16)
    >>> bool((full - tiled).abs().max() < 1e-4)
    True
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._malloc import can_trim, resident_memory, set_malloc_options, trim
from ._fast import Engine, FastWeights, MapPool, MemStore, Region, RT, make_ops, n_passes

__all__ = [
    "tiled_fuse",
    "fast_fuse",
    "plan_tiles",
    "auto_tile",
    "choose_tile",
    "precision_context",
    "CPU_SPEED_TILE",
    "default_workers",
    "estimate_memory",
    "parse_memory",
    "available_memory",
    "DiskStore",
    "MemoryGuard",
    "resident_memory",
    "tune_malloc",
]

ArrayLike = Union[Tensor, np.ndarray]

#: Smallest tile :func:`auto_tile` picks (smaller tiles waste time on halos).
MIN_TILE = 64


# ----------------------------------------------------------------------------- planning
def plan_tiles(h: int, w: int, tile: Optional[int]) -> List[Region]:
    """Cut an ``h x w`` image into tiles of at most ``tile x tile`` pixels, as equal as possible.

    Returns ``(y0, y1, x0, x1)`` half-open regions, row by row; ``tile=None`` gives one tile.
    """
    if h < 1 or w < 1:
        raise ValueError(f"empty image {h}x{w}")
    if tile is None:
        return [(0, h, 0, w)]
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    ny, nx = math.ceil(h / tile), math.ceil(w / tile)
    ys = [round(i * h / ny) for i in range(ny + 1)]
    xs = [round(j * w / nx) for j in range(nx + 1)]
    return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(ny) for j in range(nx)]


def _config_of(model: Any) -> Any:
    return model.config


def feature_map_bytes(h: int, w: int, config: Any, pairs: int = 1, itemsize: int = 4) -> int:
    """Bytes of the full-resolution maps kept between passes at the worst moment.

    That is the branch pass: the shallow features of both sources (2B x C) being read while the
    summed base features and the fused detail features (B x C each) are written.
    """
    return (2 * pairs + 2 * pairs) * config.dim * h * w * itemsize


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


def tile_work_bytes(tile_h: int, tile_w: int, config: Any, pairs: int = 1, itemsize: int = 4) -> int:
    """Estimated transient memory of one tile (with its halo) in the heaviest pass."""
    halo = 2 * (config.encoder_inn_layers + config.fuse_inn_layers) + 1
    area = (tile_h + 2 * halo) * (tile_w + 2 * halo)
    return int(_WORK_PER_PIXEL_CHANNEL * area * config.dim * 2 * pairs * itemsize)


def estimate_memory(h: int, w: int, tile: Optional[int], config: Any, pairs: int = 1, itemsize: int = 4,
                    on_disk: bool = False, workers: Optional[int] = None) -> int:
    """Estimated peak memory (bytes, whole process) of :func:`tiled_fuse` on an ``h x w`` pair."""
    th, tw = (h, w) if tile is None else (min(h, tile), min(w, tile))
    n = 1 if tile is None else (workers or default_workers(len(plan_tiles(h, w, tile))))
    io = 3 * pairs * h * w * 4  # the two sources and the output, float32
    maps = 0 if on_disk else feature_map_bytes(h, w, config, pairs, itemsize)
    return _BASE_BYTES + io + maps + n * tile_work_bytes(th, tw, config, pairs, itemsize)


def auto_tile(h: int, w: int, memory_budget_bytes: Optional[int], config: Any = None, pairs: int = 1,
              itemsize: int = 4) -> Tuple[Optional[int], bool]:
    """Choose ``(tile, on_disk)`` for an ``h x w`` pair within ``memory_budget_bytes``.

    ``tile=None`` (whole image in one tile) when it fits; otherwise the largest tile (a multiple of
    32, at least :data:`MIN_TILE`) that fits with the feature maps in memory, else with them on
    disk. ``memory_budget_bytes=None`` means 80% of the memory available now (:func:`available_memory`).
    """
    from .cddfuse import CDDFuseConfig

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


#: Tile side used on CPU even when the whole image fits in memory: a tile's activations then stay
#: in the L2/L3 caches and memory is reused instead of freshly mapped, which is faster than one
#: whole-image tile (see benchmarks/RESULTS.md). Tiling is exact, so this changes speed only.
CPU_SPEED_TILE = 128


def choose_tile(h: int, w: int, *, device: Union[str, torch.device] = "cpu", tile: Optional[int] = None,
                memory_budget: Optional[int] = None, config: Any = None, pairs: int = 1,
                itemsize: int = 4) -> Tuple[Optional[int], bool]:
    """``(tile, on_disk)`` for fusing an ``h x w`` pair: the caller's ``tile`` if given, else the
    largest that fits ``memory_budget`` (:func:`auto_tile`), on CPU at most :data:`CPU_SPEED_TILE`."""
    from .cddfuse import CDDFuseConfig

    cfg = config or CDDFuseConfig()
    if tile is not None:
        on_disk = memory_budget is not None and estimate_memory(h, w, tile, cfg, pairs, itemsize) > memory_budget
        return tile, on_disk
    t, on_disk = auto_tile(h, w, memory_budget, cfg, pairs, itemsize)
    if torch.device(device).type == "cpu":
        t = CPU_SPEED_TILE if t is None else min(t, CPU_SPEED_TILE)
    if t is not None and t >= max(h, w):
        t = None
    return t, on_disk


@contextlib.contextmanager
def precision_context(precision: str, device: Union[str, torch.device]) -> Iterator[None]:
    """On CUDA: ``fp32`` is true float32 (TF32 off for convolutions and matrix products),
    ``tf32`` turns TF32 on, ``bf16`` adds bfloat16 autocast. Elsewhere a no-op (bf16 on CPU is a
    bfloat16 ``dtype`` for :func:`tiled_fuse` instead)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


#: Most tiles computed at the same time (:func:`default_workers`).
MAX_WORKERS = 4


def default_workers(n_tiles: int) -> int:
    """Tiles to compute at the same time on CPU: ``$CDDFUSE_TILE_WORKERS`` if set, else one per
    intra-op thread up to :data:`MAX_WORKERS` (and at most one per tile)."""
    env = os.environ.get("CDDFUSE_TILE_WORKERS")
    n = int(env) if env else min(torch.get_num_threads(), MAX_WORKERS)
    return max(1, min(n, n_tiles))


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


def parse_memory(text: Union[str, int, None]) -> Optional[int]:
    """``"3G"``, ``"512M"``, ``"1.5GB"``, ``"2GiB"`` or a number of bytes -> bytes (``None`` stays ``None``)."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"cannot read memory size {text!r}; write e.g. 3G, 512M or a number of bytes")
    value = float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_")
    if value < 1:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value)


# ----------------------------------------------------------------------------- memory guard
def tune_malloc() -> bool:
    """Make glibc malloc keep and reuse the memory of freed tile buffers (process-wide).

    By default glibc maps buffers above a moving threshold afresh and trims the heap when its top
    is free, so each tile's buffers cost page faults and zeroing again (2.5 million minor faults
    for one 640x480 pair here). With a fixed 32 MiB mmap threshold, no automatic trimming and
    64 MiB of top pad, freed buffers are reused: faster (see the lever table in
    benchmarks/RESULTS.md). Memory then stays bounded by :class:`MemoryGuard`, which trims when
    the resident size passes its limit. :func:`tiled_fuse` calls this on CPU; set
    ``CDDFUSE_MALLOC_TUNING=0`` to leave malloc as it is. Returns whether the settings were
    applied (``False`` off glibc or when turned off).
    """
    if os.environ.get("CDDFUSE_MALLOC_TUNING", "1") == "0":
        return False
    return set_malloc_options(mmap_threshold=32 * 2**20, trim_threshold=2**31 - 1, top_pad=64 * 2**20)


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


def guard_limit(h: int, w: int, tile: Optional[int], config: Any, pairs: int, itemsize: int, on_disk: bool,
                workers: int, budget: Optional[int]) -> int:
    """Resident size above which :class:`MemoryGuard` trims: the budget less what the tiles in
    flight may allocate before the next check (a budget below what the run needs makes it trim
    after every tile: slower, but as small as it gets); without a budget, twice the estimate
    (:func:`estimate_memory`: what the run needs plus as much again of free memory, which is
    faster to reuse than to hand back)."""
    th, tw = (h, w) if tile is None else (min(h, tile), min(w, tile))
    if budget is None:
        return 2 * estimate_memory(h, w, tile, config, pairs, itemsize, on_disk, workers)
    return max(budget - workers * tile_work_bytes(th, tw, config, pairs, itemsize), 0)


# ----------------------------------------------------------------------------- disk store
class DiskStore:
    """A ``(B, H, W, C)`` feature map in an unlinked temporary file (row-major, native floats).

    Tiles are read and written with ``pread``/``pwrite`` one image row at a time, so the map never
    occupies the process's memory (the kernel's page cache may hold it while memory is free).
    """

    def __init__(self, batch: int, h: int, w: int, c: int, dtype: torch.dtype, device: torch.device,
                 directory: Optional[str] = None) -> None:
        self.shape = (batch, h, w, c)
        self.dtype, self.device = dtype, device
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.row = w * c * self.itemsize
        self._file = tempfile.TemporaryFile(prefix="cddfuse-tiles-", dir=directory)
        self._fd = self._file.fileno()
        os.ftruncate(self._fd, batch * h * self.row)

    def _offset(self, b: int, y: int, x: int) -> int:
        return (b * self.shape[1] + y) * self.row + x * self.shape[3] * self.itemsize

    def write(self, tile: Region, x: Tensor) -> None:
        y0, y1, x0, x1 = tile
        arr = x.detach().to("cpu").contiguous().numpy()
        full_rows = x0 == 0 and x1 == self.shape[2]
        for b in range(self.shape[0]):
            if full_rows:
                self._pwrite(arr[b], self._offset(b, y0, 0))
                continue
            for r in range(y1 - y0):
                self._pwrite(arr[b, r], self._offset(b, y0 + r, x0))

    def _pwrite(self, a: np.ndarray, offset: int) -> None:
        mv = memoryview(a).cast("B")
        while len(mv):
            n = os.pwrite(self._fd, mv, offset)
            mv, offset = mv[n:], offset + n

    def read(self, r: Region) -> RT:
        y0, y1, x0, x1 = r
        b_, _, w, c = self.shape
        buf = torch.empty((b_, y1 - y0, x1 - x0, c), dtype=self.dtype)
        arr = buf.numpy()
        full_rows = x0 == 0 and x1 == w
        for b in range(b_):
            if full_rows:
                self._pread(arr[b], self._offset(b, y0, 0))
                continue
            for i in range(y1 - y0):
                self._pread(arr[b, i], self._offset(b, y0 + i, x0))
        t = buf if self.device.type == "cpu" else buf.to(self.device, non_blocking=False)
        return RT(t, y0, x0)

    def _pread(self, a: np.ndarray, offset: int) -> None:
        mv = memoryview(a).cast("B")
        while len(mv):
            n = os.preadv(self._fd, [mv], offset)
            if n <= 0:
                raise OSError("short read from the tile store")
            mv, offset = mv[n:], offset + n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ----------------------------------------------------------------------------- the public entry
def _as_pairs(a: ArrayLike, b: ArrayLike) -> Tuple[str, int, int, int, int]:
    """Kind of input ('tensor' (B,C,H,W) or 'array' (H,W)), pairs, channels, H, W."""
    if isinstance(a, Tensor) != isinstance(b, Tensor):
        raise TypeError("a and b must both be tensors or both be numpy arrays")
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"the two sources must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if isinstance(a, Tensor):
        if a.dim() != 4:
            raise ValueError(f"expected tensors of shape (B, C, H, W), got {tuple(a.shape)}")
        return "tensor", a.shape[0], a.shape[1], a.shape[2], a.shape[3]
    if a.ndim != 2:
        raise ValueError(f"expected (H, W) arrays, got shape {a.shape}")
    return "array", 1, 1, a.shape[0], a.shape[1]


@torch.inference_mode()
def tiled_fuse(
    model: Any,
    a: ArrayLike,
    b: ArrayLike,
    residual: str = "vis",
    tile: Optional[int] = None,
    *,
    memory_budget: Union[int, str, None] = None,
    store: str = "auto",
    tmpdir: Optional[str] = None,
    out: Optional[ArrayLike] = None,
    dtype: Optional[torch.dtype] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    ops: str = "auto",
    workers: Optional[int] = None,
) -> ArrayLike:
    """Fuse ``a`` (IR/functional) and ``b`` (visible/MRI) tile by tile; exact (same as ``model(a, b, residual)``).

    Args:
        model: a :class:`~cddfuse.models.cddfuse.CDDFuse` (its device and dtype are used).
        a, b: tensors ``(B, 1, H, W)`` (any device), or numpy arrays ``(H, W)`` (also ``np.memmap``),
            float in [0, 1].
        residual: ``"vis"``, ``"sum"`` or ``"none"``, as for ``model.forward``.
        tile: tile side in pixels; ``None`` chooses one from ``memory_budget`` (:func:`auto_tile`).
        memory_budget: bytes or a string like ``"3G"``; ``None``: the memory available now. On CPU
            a :class:`MemoryGuard` also keeps the resident size under it (without a budget: under
            twice the estimate, :func:`estimate_memory`).
        store: where full-resolution feature maps between passes live: ``"memory"``, ``"disk"``
            (unlinked files in ``tmpdir``) or ``"auto"`` (disk only when they would not fit).
        tmpdir: folder for the disk store (default: ``$CDDFUSE_TMPDIR`` or the system temp folder).
        out: optional destination: a tensor ``(B, 1, H, W)``, or an ``(H, W)`` float32 array or
            ``np.memmap`` for array inputs.
        dtype: compute dtype (default: the model's).
        progress: ``callback(pass_index, n_passes)`` called before each pass.
        ops: primitive ops: ``"auto"`` (oneDNN with fused post-ops on CPU float32, plain PyTorch
            elsewhere), ``"fused"`` or ``"plain"``.
        workers: tiles computed at the same time on CPU, each on its own thread with a share of
            ``torch.get_num_threads()`` intra-op threads (default :func:`default_workers`: one per
            thread, up to :data:`MAX_WORKERS`; faster than splitting each operation between threads).

    Returns:
        ``(B, 1, H, W)`` tensor on the model's device for tensor inputs; ``(H, W)`` float32 array
        for array inputs (``out`` itself when given).
    """
    if residual not in ("vis", "sum", "none"):
        raise ValueError(f"unknown residual mode {residual!r}; choose one of ('vis', 'sum', 'none')")
    kind, pairs, cin, h, w = _as_pairs(a, b)
    cfg = _config_of(model)
    if cin != cfg.in_channels:
        raise ValueError(f"expected sources with {cfg.in_channels} channel(s), got {cin}")
    p0 = next(model.parameters())
    device, dt = p0.device, dtype or p0.dtype
    itemsize = torch.empty((), dtype=dt).element_size()
    budget = parse_memory(memory_budget)
    if store not in ("auto", "memory", "disk"):
        raise ValueError(f"store must be 'auto', 'memory' or 'disk', got {store!r}")
    if tile is None:
        tile, on_disk = auto_tile(h, w, budget, cfg, pairs, itemsize)
    else:
        on_disk = budget is not None and estimate_memory(h, w, tile, cfg, pairs, itemsize) > budget
    if store != "auto":
        on_disk = store == "disk"
    tiles = plan_tiles(h, w, tile)
    weights = FastWeights.from_model(model, dt)

    def to_dev(x: Any) -> Tensor:
        if isinstance(x, Tensor):
            return x.to(device=device, dtype=dt)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device=device, dtype=dt)

    if kind == "tensor":
        def crop(x: Any, r: Region) -> Tensor:  # (B, C, H, W) -> (B, h, w, C) on the device
            return to_dev(x[:, :, r[0]:r[1], r[2]:r[3]]).permute(0, 2, 3, 1)
    else:
        def crop(x: Any, r: Region) -> Tensor:  # (H, W) -> (1, h, w, 1)
            return to_dev(x[r[0]:r[1], r[2]:r[3]])[None, :, :, None]

    def read_images(r: Region) -> Tensor:
        return torch.cat((crop(a, r), crop(b, r)), 0).contiguous()

    res_fn: Optional[Callable[[Region], Tensor]]
    if residual == "vis":
        res_fn = lambda r: crop(b, r)  # noqa: E731
    elif residual == "sum":
        res_fn = lambda r: crop(a, r) + crop(b, r)  # noqa: E731
    else:
        res_fn = None

    cout = cfg.out_channels
    if kind == "tensor":
        if out is None:
            out = torch.empty((pairs, cout, h, w), dtype=dt, device=device)
        if tuple(out.shape) != (pairs, cout, h, w):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {(pairs, cout, h, w)}")

        def write_output(r: Region, t: Tensor) -> None:
            out[:, :, r[0]:r[1], r[2]:r[3]] = t.permute(0, 3, 1, 2).to(out.device, out.dtype)
    else:
        if out is None:
            out = np.empty((h, w), dtype=np.float32)
        if tuple(out.shape) != (h, w):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {(h, w)}")

        def write_output(r: Region, t: Tensor) -> None:
            out[r[0]:r[1], r[2]:r[3]] = t[0, :, :, 0].float().cpu().numpy()

    directory = tmpdir or os.environ.get("CDDFUSE_TMPDIR") or None

    spare_maps = MapPool()  # maps of finished passes, reused by the next ones

    def new_store(batch: int, hh: int, ww: int, c: int, sdt: torch.dtype, dev: torch.device) -> Any:
        if on_disk:
            return DiskStore(batch, hh, ww, c, sdt, dev, directory)
        return MemStore(batch, hh, ww, c, sdt, dev, pool=spare_maps)

    if workers is None:
        workers = default_workers(len(tiles))
    if device.type != "cpu":
        workers = 1
    guard: Optional[MemoryGuard] = None
    if device.type == "cpu":
        tune_malloc()
        guard = MemoryGuard(guard_limit(h, w, tile, cfg, pairs, itemsize, on_disk, workers, budget))
    engine = Engine(weights, h, w, pairs, dt, device, read_images, res_fn, new_store, write_output, tiles,
                    ops=make_ops(device, dt, ops), progress=progress, workers=workers,
                    after_tile=guard if guard is not None and guard.active else None)
    engine.run()
    if isinstance(out, np.memmap):
        out.flush()
    return out


def fast_fuse(model: Any, a: ArrayLike, b: ArrayLike, residual: str = "vis", **kwargs: Any) -> ArrayLike:
    """The optimised path with the fastest settings: :func:`tiled_fuse` with the tile that
    :func:`choose_tile` picks for the model's device (cache-sized tiles on CPU, the whole image
    elsewhere when it fits). Same arguments and result as :func:`tiled_fuse`.
    """
    if kwargs.get("tile") is None:
        kind, pairs, _, h, w = _as_pairs(a, b)
        p0 = next(model.parameters())
        itemsize = torch.empty((), dtype=kwargs.get("dtype") or p0.dtype).element_size()
        tile, on_disk = choose_tile(h, w, device=p0.device, memory_budget=parse_memory(kwargs.get("memory_budget")),
                                    config=model.config, pairs=pairs, itemsize=itemsize)
        kwargs["tile"] = tile
        if kwargs.get("store", "auto") == "auto":
            kwargs["store"] = "disk" if on_disk else "memory"
    return tiled_fuse(model, a, b, residual, **kwargs)
