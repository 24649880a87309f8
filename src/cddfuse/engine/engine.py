"""The engine: CDDFuse pass by pass over tiles, and the entry points that plan and run it.

The network is cut at its attention layers into *passes* (:func:`n_passes`); each pass walks over
the tiles of the image, reads its input with the halo it needs (:mod:`cddfuse.engine.stores`),
applies the layers up to the next attention (:mod:`cddfuse.engine.blocks`), writes its result for
the tile to a full-resolution store and adds the tile's share to the next attention's statistics
(:mod:`cddfuse.engine.attention`). The result does not depend on the tile size (no blended
overlaps); with one tile covering the image the same code is the fast whole-image path.

* :class:`Engine` runs the passes over a given list of tiles.
* :func:`tiled_fuse` is the exact tiled function: ``model(a, b, residual)`` (to float rounding,
  <= 1e-4) for the tile and store the caller chooses (or :func:`~cddfuse.engine.planning.auto_tile`
  does), on tensors or ``(H, W)`` arrays (``out=`` an ``np.memmap`` writes the result to disk).
* :func:`fuse_tensors` is the entry that owns every decision: tile and store
  (:func:`~cddfuse.engine.planning.choose_tile`), precision, and on CUDA the whole image through
  the module first, tile by tile when that runs out of memory.

Example (tiled equals whole-image):
    >>> import torch
    >>> from cddfuse.models import CDDFuse, CDDFuseConfig
    >>> _ = torch.manual_seed(0)
    >>> model = CDDFuse(CDDFuseConfig(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1)).eval()
    >>> a, b = torch.rand(1, 1, 37, 53), torch.rand(1, 1, 37, 53)
    >>> with torch.inference_mode():
    ...     whole = model(a, b)
    >>> tiled = tiled_fuse(model, a, b, tile=16)  # 12 tiles of at most 16x16 pixels
    >>> torch.allclose(tiled, whole, atol=1e-5)
    True
    >>> torch.allclose(fuse_tensors(model, a, b, device="cpu"), whole, atol=1e-5)
    True
"""
from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, Union, cast

import numpy as np
import torch
from torch import Tensor

from ..models.cddfuse import CDDFuse
from .attention import AttentionStats, TileSums
from .blocks import Blocks
from .geometry import Region, RegionTensor, TileGeometry, plan_tiles
from .memory import MemoryGuard, default_budget, parse_memory, tune_malloc
from .ops import PRECISIONS, Ops, fused_ops_available, make_ops, precision_context
from .packing import FastWeights, RestormerBlockWeights
from .planning import auto_tile, choose_plan, default_workers, estimate_memory, guard_limit
from .pointwise import sigmoid_
from .stores import (
    DiskStore,
    FeatureSource,
    FeatureStore,
    FusionSource,
    ImageSource,
    MapPool,
    MemoryStore,
    StoreFactory,
    StoreSource,
)

__all__ = ["Engine", "n_passes", "tiled_fuse", "fuse_tensors", "FusionCancelled"]


class FusionCancelled(Exception):
    """Raised between two tiles when the caller's ``cancel`` event is set (the work is abandoned)."""


def _after_tile(guard: MemoryGuard | None, cancel: threading.Event | None) -> Callable[[], None] | None:
    """The engine's per-tile hook: the memory guard (when active), then the cancellation check."""
    hooks = [h for h in (guard if guard is not None and guard.active else None,) if h is not None]
    if cancel is None:
        return hooks[0] if hooks else None

    def hook() -> None:
        for h in hooks:
            h()
        if cancel.is_set():
            raise FusionCancelled("cancelled")

    return hook

ArrayLike = Union[Tensor, np.ndarray]
_T = TypeVar("_T")


def n_passes(enc_blocks: int, dec_blocks: int) -> int:
    """Passes over the image: the first attention's statistics and one per encoder block, the
    branch (base/detail) pass, then the same for the decoder (its last pass writes the output)."""
    return 3 + enc_blocks + dec_blocks


class Engine:
    """Runs CDDFuse pass by pass over a list of tiles.

    Args:
        weights: :class:`~cddfuse.engine.packing.FastWeights` of the model.
        h, w: image size.
        pairs: number of image pairs ``B`` (the encoder runs on ``2B`` images).
        dtype, device: compute dtype and device.
        read_images: ``region -> (2B, h, w, in)`` tensor of the two sources (a first), on the device.
        residual: ``region -> (B, h, w, out)`` tensor added before the sigmoid, or ``None``.
        store: ``(batch, H, W, C, dtype, device) -> store`` (a :class:`~cddfuse.engine.stores.FeatureStore`).
        write_output: ``(tile, (B, th, tw, out) tensor) -> None``.
        tiles: the tiles (a partition of the image).
        ops: primitive ops (:func:`~cddfuse.engine.ops.make_ops`).
        progress: called with ``(pass_index, n_passes)`` before each pass.
        workers: tiles processed at the same time, each on its own thread, sharing the caller's
            intra-op threads between them (1: one tile at a time with all of them).
        after_tile: called (on the tile's thread) after each tile of each pass, e.g. to keep the
            process's memory in check (:class:`~cddfuse.engine.memory.MemoryGuard`).
    """

    def __init__(self, weights: FastWeights, h: int, w: int, pairs: int, dtype: torch.dtype, device: torch.device,
                 read_images: Callable[[Region], Tensor], residual: Callable[[Region], Tensor] | None,
                 store: StoreFactory, write_output: Callable[[Region, Tensor], None], tiles: Sequence[Region],
                 ops: Ops | None = None, progress: Callable[[int, int], None] | None = None,
                 workers: int = 1, after_tile: Callable[[], None] | None = None) -> None:
        self.tiles = list(tiles)
        self.after_tile = after_tile
        self.workers = max(1, int(workers))
        self._executor: ThreadPoolExecutor | None = None
        self._threads = torch.get_num_threads()
        tile_h = max(t[1] - t[0] for t in self.tiles)
        tile_w = max(t[3] - t[2] for t in self.tiles)
        self.weights, self.geometry = weights, TileGeometry(h, w, tile_h, tile_w)
        self.blocks = Blocks(self.geometry, ops or make_ops(device, dtype))
        self.pairs, self.dtype, self.device = pairs, dtype, device
        self.read_images, self.residual = read_images, residual
        self.new_store, self.write_output = store, write_output
        self.progress = progress
        self.n_passes = n_passes(len(weights.enc), len(weights.dec))
        self.pass_index = 0

    def _start_pass(self) -> None:
        if self.progress is not None:
            self.progress(self.pass_index, self.n_passes)
        self.pass_index += 1

    def _store(self, batch: int) -> FeatureStore:
        return self.new_store(batch, self.geometry.h, self.geometry.w, self.weights.dim, self.dtype, self.device)

    def _map(self, fn: Callable[[Region], _T]) -> list[_T]:
        """``[fn(tile) for tile in tiles]``, on ``workers`` threads when there are several; results
        come back in tile order, so sums do not depend on timing."""
        hook = self.after_tile

        def task(tile: Region) -> _T:
            result = fn(tile)
            if hook is not None:
                hook()
            return result

        if self.workers <= 1 or len(self.tiles) <= 1:
            return [task(t) for t in self.tiles]
        inference = torch.is_inference_mode_enabled()

        def run(tile: Region) -> _T:  # grad mode is per thread
            with torch.inference_mode(inference):
                return task(tile)

        return list(self._pool().map(run, self.tiles))

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            per_worker = max(1, self._threads // self.workers)
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="cddfuse-tile",
                                                initializer=torch.set_num_threads, initargs=(per_worker,))
        return self._executor

    def run(self) -> None:
        """Run every pass; the output goes to ``write_output`` tile by tile."""
        self._threads = torch.get_num_threads()
        try:
            self._run()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
                torch.set_num_threads(self._threads)  # the workers' setting is the default for new threads

    def _run(self) -> None:
        weights, geometry, blocks = self.weights, self.geometry, self.blocks
        # Encoder chain: X_0 = patch_embed(images) -> Restormer blocks -> S; then the Lite block's stats.
        images = ImageSource(blocks, weights, self.read_images)
        shallow, lite_stats = self._chain(images, weights.enc, 2 * self.pairs,
                                          tail_qk=lambda x: blocks.lite_qk(weights.lt_enc, x))
        assert lite_stats is not None
        m_lite = lite_stats.matrix(weights.lt_enc.attn, self.dtype)
        # Branch pass: base = LT(S) summed over the two sources (+ stats of the fusion LT);
        # detail = INN(S) summed, then the fusion INN.
        b = self.pairs
        base_sum, fused_detail = self._store(b), self._store(b)
        fuse_stats = AttentionStats(b, weights.dim, self.device)
        inn_halo = 2 * (len(weights.inn_enc) + len(weights.inn_fuse))

        def branch(tile: Region) -> TileSums:
            features = shallow.read(tile, max(3, inn_halo))
            lite_in = features.sub(geometry.array(tile, 3)) if inn_halo > 3 else features
            base = blocks.lite_apply(weights.lt_enc, m_lite, lite_in.like(lite_in.tensor.contiguous()))
            del lite_in
            summed_base = base.like(base.tensor[:b] + base.tensor[b:])
            del base
            base_sum.write(tile, summed_base.view(tile))
            part = AttentionStats.partial(blocks.lite_qk(weights.lt_fuse, summed_base), tile)
            del summed_base
            detail = features.sub(geometry.array(tile, inn_halo)) if inn_halo < 3 else features
            detail = detail.like(detail.tensor.contiguous())
            del features
            for node in weights.inn_enc:
                detail = blocks.inn_node(node, detail)
            detail = detail.like(detail.tensor[:b] + detail.tensor[b:])
            for node in weights.inn_fuse:
                detail = blocks.inn_node(node, detail)
            fused_detail.write(tile, detail.view(tile))
            return part

        self._start_pass()
        for part in self._map(branch):
            fuse_stats.add_partial(part)
        shallow.close()
        # Decoder chain: Y_0 from the fusion layers, Restormer blocks, output head.
        fusion = FusionSource(blocks, weights, fuse_stats.matrix(weights.lt_fuse.attn, self.dtype), base_sum,
                              fused_detail)
        self._chain(fusion, weights.dec, b, tail_qk=None)

    def _chain(self, src: FeatureSource, layers: list[RestormerBlockWeights], batch: int,
               tail_qk: Callable[[RegionTensor], RegionTensor] | None) -> tuple[FeatureSource, AttentionStats | None]:
        """Run Restormer blocks ``layers`` on ``src``. With ``tail_qk``: return (source of the result,
        statistics of the attention after it). Without: finish with the output head."""
        blocks, n = self.blocks, len(layers)

        def qk_of(i: int) -> Callable[[RegionTensor], RegionTensor]:
            if i < n:
                return lambda x: blocks.restormer_qk(layers[i], x)
            assert tail_qk is not None
            return tail_qk

        if n == 0 and tail_qk is None:
            self._final_pass(src, None, None)
            return src, None
        stats = AttentionStats(batch, self.weights.dim, self.device)  # statistics of the first attention
        qk0 = qk_of(0)
        first = src
        self._start_pass()
        for part in self._map(lambda tile: AttentionStats.partial(qk0(first.read(tile, 1)), tile)):
            stats.add_partial(part)
        for i in range(1, n + 1):
            m = stats.matrix(layers[i - 1].attn, self.dtype)
            if i == n and tail_qk is None:
                self._final_pass(src, layers[i - 1], m)
                return src, None
            dst = self._store(batch)
            stats = AttentionStats(batch, self.weights.dim, self.device)
            step = functools.partial(self._block_tile, layers[i - 1], m, src, dst, qk_of(i))
            self._start_pass()
            for part in self._map(step):
                stats.add_partial(part)
            src.close()
            src = StoreSource(self.geometry, dst)
        return src, stats

    def _block_tile(self, block: RestormerBlockWeights, m: Tensor, src: FeatureSource, dst: FeatureStore,
                    qk: Callable[[RegionTensor], RegionTensor], tile: Region) -> TileSums:
        """One tile of a Restormer block's pass: the block (attention matrix ``m``) on ``src``, the
        result to ``dst``, and the tile's share of the next attention's statistics (``qk``)."""
        y = self.blocks.restormer_apply(block, m, src.read(tile, 3))
        dst.write(tile, y.view(tile))
        return AttentionStats.partial(qk(y), tile)

    def _final_pass(self, src: FeatureSource, block: RestormerBlockWeights | None, m: Tensor | None) -> None:
        def step(tile: Region) -> None:
            y = src.read(tile, 2 + (2 if block is not None else 0))
            if block is not None:
                assert m is not None
                y = self.blocks.restormer_apply(block, m, y)
            o = self.blocks.head(self.weights, y)
            del y
            out = o.view(tile)
            if self.residual is not None:
                out = out + self.residual(tile)
            else:
                out = out.contiguous()
            sigmoid_(out)
            self.write_output(tile, out)

        self._start_pass()
        self._map(step)
        src.close()


# ----------------------------------------------------------------------------- entry points
def _as_pairs(a: ArrayLike, b: ArrayLike) -> tuple[str, int, int, int, int]:
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
    model: CDDFuse,
    a: ArrayLike,
    b: ArrayLike,
    residual: str = "vis",
    tile: int | None = None,
    *,
    memory_budget: int | str | None = None,
    store: str = "auto",
    tmpdir: str | None = None,
    out: ArrayLike | None = None,
    dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
    ops: str = "auto",
    workers: int | None = None,
    cancel: threading.Event | None = None,
) -> ArrayLike:
    """Fuse ``a`` (IR/functional) and ``b`` (visible/MRI) tile by tile; exact (same as ``model(a, b, residual)``).

    Args:
        model: a :class:`~cddfuse.models.cddfuse.CDDFuse` (its device and dtype are used).
        a, b: tensors ``(B, 1, H, W)`` (any device), or numpy arrays ``(H, W)`` (also ``np.memmap``),
            float in [0, 1].
        residual: ``"vis"``, ``"sum"`` or ``"none"``, as for ``model.forward``.
        tile: tile side in pixels; ``None`` chooses one from ``memory_budget``
            (:func:`~cddfuse.engine.planning.auto_tile`).
        memory_budget: bytes or a string like ``"3G"``; ``None``: the memory available now. On CPU
            a :class:`~cddfuse.engine.memory.MemoryGuard` also keeps the resident size under it
            (without a budget: under twice the estimate, :func:`~cddfuse.engine.planning.estimate_memory`).
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
            ``torch.get_num_threads()`` intra-op threads (default
            :func:`~cddfuse.engine.planning.default_workers`: one per thread, up to
            :data:`~cddfuse.engine.planning.MAX_WORKERS`; faster than splitting each operation
            between threads).
        cancel: when this event is set, :class:`FusionCancelled` is raised after the tile being
            computed (the result is then incomplete and not returned).

    Returns:
        ``(B, 1, H, W)`` tensor on the model's device for tensor inputs; ``(H, W)`` float32 array
        for array inputs (``out`` itself when given).
    """
    if residual not in ("vis", "sum", "none"):
        raise ValueError(f"unknown residual mode {residual!r}; choose one of ('vis', 'sum', 'none')")
    kind, pairs, cin, h, w = _as_pairs(a, b)
    cfg = model.config
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

    def to_device(x: ArrayLike) -> Tensor:
        if isinstance(x, Tensor):
            return x.to(device=device, dtype=dt)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device=device, dtype=dt)

    if kind == "tensor":
        def crop(x: ArrayLike, r: Region) -> Tensor:  # (B, C, H, W) -> (B, h, w, C) on the device
            return to_device(x[:, :, r[0]:r[1], r[2]:r[3]]).permute(0, 2, 3, 1)
    else:
        def crop(x: ArrayLike, r: Region) -> Tensor:  # (H, W) -> (1, h, w, 1)
            return to_device(x[r[0]:r[1], r[2]:r[3]])[None, :, :, None]

    def read_images(r: Region) -> Tensor:
        return torch.cat((crop(a, r), crop(b, r)), 0).contiguous()

    def visible(r: Region) -> Tensor:
        return crop(b, r)

    def source_sum(r: Region) -> Tensor:
        return crop(a, r) + crop(b, r)

    residual_of = {"vis": visible, "sum": source_sum, "none": None}[residual]

    cout = cfg.out_channels
    write_output: Callable[[Region, Tensor], None]
    result: ArrayLike
    if kind == "tensor":
        if out is not None and not isinstance(out, Tensor):
            raise TypeError(f"out must be a tensor for tensor inputs, got {type(out).__name__}")
        out_tensor = torch.empty((pairs, cout, h, w), dtype=dt, device=device) if out is None else out
        if tuple(out_tensor.shape) != (pairs, cout, h, w):
            raise ValueError(f"out has shape {tuple(out_tensor.shape)}, expected {(pairs, cout, h, w)}")

        def write_tensor(r: Region, t: Tensor) -> None:
            out_tensor[:, :, r[0]:r[1], r[2]:r[3]] = t.permute(0, 3, 1, 2).to(out_tensor.device, out_tensor.dtype)

        write_output, result = write_tensor, out_tensor
    else:
        out_array = np.empty((h, w), dtype=np.float32) if out is None else cast(np.ndarray, out)
        if tuple(out_array.shape) != (h, w):
            raise ValueError(f"out has shape {tuple(out_array.shape)}, expected {(h, w)}")

        def write_array(r: Region, t: Tensor) -> None:
            out_array[r[0]:r[1], r[2]:r[3]] = t[0, :, :, 0].float().cpu().numpy()

        write_output, result = write_array, out_array

    directory = tmpdir or os.environ.get("CDDFUSE_TMPDIR") or None
    spare_maps = MapPool()  # maps of finished passes, reused by the next ones

    def new_store(batch: int, hh: int, ww: int, c: int, store_dtype: torch.dtype, dev: torch.device) -> FeatureStore:
        if on_disk:
            return DiskStore(batch, hh, ww, c, store_dtype, dev, directory)
        return MemoryStore(batch, hh, ww, c, store_dtype, dev, pool=spare_maps)

    if workers is None:
        workers = default_workers(len(tiles))
    if device.type != "cpu":
        workers = 1
    guard: MemoryGuard | None = None
    if device.type == "cpu":
        tune_malloc()
        guard = MemoryGuard(guard_limit(h, w, tile, cfg, pairs, itemsize, on_disk, workers, budget))
    engine = Engine(weights, h, w, pairs, dt, device, read_images, residual_of, new_store, write_output, tiles,
                    ops=make_ops(device, dt, ops), progress=progress, workers=workers,
                    after_tile=_after_tile(guard, cancel))
    if cancel is not None and cancel.is_set():
        raise FusionCancelled("cancelled")
    engine.run()
    if isinstance(result, np.memmap):
        result.flush()
    return result


@torch.inference_mode()
def fuse_tensors(model: CDDFuse, a: Tensor, b: Tensor, residual: str = "vis", *,
                 device: str | torch.device | None = None, tile: int | None = None,
                 max_memory: int | str | None = None, precision: str = "fp32", workers: int | None = None,
                 cancel: threading.Event | None = None) -> Tensor:
    """Fuse ``(N, 1, H, W)`` float tensors in [0, 1] with ``model``, deciding how: the engine's one entry.

    * **Tile and store** (:func:`~cddfuse.engine.planning.choose_plan`): the caller's ``tile``; else
      on CPU :data:`~cddfuse.engine.planning.CPU_SPEED_TILE` whenever the budget allows it (feature
      maps on disk if they would not fit, fewer tiles in flight if those would not), so the
      result does not depend on the memory available, the thread count or ``workers``; on CUDA
      the largest tile that fits ``max_memory`` (without a budget: the GPU's free memory). The
      result depends on the tile side only by float rounding (exact tiling).
    * **CUDA**: without ``tile`` and ``max_memory`` the whole image goes through the module first,
      and tile by tile through the engine when that runs out of GPU memory.
    * **Precision**: ``"fp32"``, ``"tf32"`` (CUDA only) or ``"bf16"``: on CPU the mixed-precision
      :class:`~cddfuse.engine.ops.BF16Ops` (bfloat16 matrix products and dense convolutions,
      float32 activations and sums; the caller checks that the CPU has AMX or AVX512-BF16), on
      CUDA bfloat16 autocast (:func:`~cddfuse.engine.ops.precision_context`).

    Args:
        model: a :class:`~cddfuse.models.cddfuse.CDDFuse` on ``device``.
        a, b: the infrared/functional and visible/MRI images, ``(N, 1, H, W)`` (any device).
        residual: ``"vis"``, ``"sum"`` or ``"none"``.
        device: the model's device (default: where its parameters are).
        tile: tile side in pixels, or ``None`` to choose.
        max_memory: memory budget, bytes or ``"3G"``/``"512M"``; ``None``: on CPU
            :func:`~cddfuse.engine.memory.default_budget` (3 GiB, or 80% of the memory available if
            less), on CUDA the GPU's free memory.
        precision: one of :data:`~cddfuse.engine.ops.PRECISIONS`.
        workers: tiles in flight on CPU (``None``: :func:`~cddfuse.engine.planning.default_workers`;
            :func:`cddfuse.engine.tuning.settings` has this machine's fastest); fewer when the
            budget needs it. Does not change the result.
        cancel: an event checked between tiles; once it is set, :class:`FusionCancelled` is raised
            (the server sets it when a client goes away or the server stops).

    Returns:
        The network's output ``(N, 1, H, W)`` on ``device``, float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    _, pairs, _, h, w = _as_pairs(a, b)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    max_bytes = parse_memory(max_memory)
    cuda = dev.type == "cuda"
    with precision_context(precision, dev):
        if cancel is not None and cancel.is_set():
            raise FusionCancelled("cancelled")
        if cuda and tile is None and max_bytes is None:
            try:
                return model(a.to(dev), b.to(dev), residual=residual)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()  # retry below, tile by tile
        if max_bytes is None and not cuda:
            max_bytes = default_budget()  # bounded by default, whatever the image size
        budget = max_bytes
        if budget is None and cuda:
            budget = torch.cuda.mem_get_info(dev)[0]
        cpu = dev.type == "cpu"
        plan = choose_plan(h, w, device=dev, tile=tile, memory_budget=budget, config=model.config, pairs=pairs,
                           workers=workers if cpu else None)
        if precision == "bf16" and cpu and fused_ops_available():
            dtype, ops = None, "bf16"  # float32 activations, bfloat16 products (BF16Ops)
        elif precision == "bf16":
            dtype, ops = torch.bfloat16, "plain"
        else:
            dtype, ops = None, "auto"  # oneDNN where available: fixed, never tuned (it sets the rounding)
        fused = tiled_fuse(model, a, b, residual, tile=plan.tile, store="disk" if plan.on_disk else "memory",
                           dtype=dtype, ops=ops, memory_budget=max_bytes, workers=plan.workers if cpu else None,
                           cancel=cancel)
    assert isinstance(fused, Tensor)
    return fused if fused.dtype == torch.float32 else fused.float()
