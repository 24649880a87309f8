"""Exact tiled inference: tiled == whole-image, on odd sizes and tile sizes, in memory and on disk."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cddfuse._malloc import resident_memory
from cddfuse.engine import (
    MemoryGuard,
    auto_tile,
    estimate_memory,
    n_passes,
    parse_memory,
    plan_tiles,
    tiled_fuse,
)
from cddfuse.engine import engine as engine_module
from cddfuse.errors import CDDFuseWarning
from cddfuse.models import CDDFuseConfig

from .helpers import SHARED, make_random_model
from .helpers import need as _need

TINY = dict(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1, encoder_inn_layers=1)



_random_model = make_random_model  # reproducible random weights (tests/conftest.py)


@pytest.fixture(scope="module")
def tiny():
    return _random_model(0, **TINY)


def _pair(h, w, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


def _untiled(model, a, b, residual="vis"):
    with torch.inference_mode():
        return model(a, b, residual=residual)


@pytest.mark.slow
@pytest.mark.parametrize("tile", [16, 7, 5])
@pytest.mark.parametrize("residual", ["vis", "sum", "none"])
def test_tiled_equals_untiled_odd_size(tiny, tile, residual):
    a, b = _pair(37, 53)
    got = tiled_fuse(tiny, a, b, residual, tile=tile)
    assert got.shape == (1, 1, 37, 53)
    assert float((got - _untiled(tiny, a, b, residual)).abs().max()) <= 1e-4


@pytest.mark.slow
def test_tile_of_one_pixel_and_tiny_images(tiny):
    for h, w in [(5, 7), (1, 1), (1, 6), (2, 2)]:
        a, b = _pair(h, w, seed=h * 10 + w)
        ref = _untiled(tiny, a, b)
        for tile in (1, 2, 3):
            got = tiled_fuse(tiny, a, b, tile=tile)
            assert float((got - ref).abs().max()) <= 1e-4, (h, w, tile)


@pytest.mark.slow
def test_tile_worker_threads_give_the_same_result(tiny):
    a, b = _pair(41, 38, seed=21)
    one = tiled_fuse(tiny, a, b, tile=10, workers=1)
    two = tiled_fuse(tiny, a, b, tile=10, workers=2)
    # statistics are summed in tile order, so only the intra-op thread count may change rounding
    assert float((one - two).abs().max()) <= 1e-6
    assert float((two - _untiled(tiny, a, b)).abs().max()) <= 1e-4
    assert torch.get_num_threads() >= 1


def test_disk_store_batch_of_pairs(tiny, tmp_path):
    a, b = _pair(29, 31, n=2, seed=3)
    ref = _untiled(tiny, a, b)
    got = tiled_fuse(tiny, a, b, tile=11, store="disk", tmpdir=str(tmp_path))
    assert float((got - ref).abs().max()) <= 1e-4
    assert list(tmp_path.iterdir()) == []  # the stores are unlinked temporary files


@pytest.mark.parametrize("sizes", [dict(TINY, encoder_blocks=0, decoder_blocks=0),
                                   dict(TINY, encoder_blocks=2, decoder_blocks=2, fuse_inn_layers=0)])
@pytest.mark.slow
def test_other_network_sizes(sizes):
    model = _random_model(5, **sizes)
    a, b = _pair(23, 19, seed=5)
    for residual in ("vis", "none"):
        ref = _untiled(model, a, b, residual)
        got = tiled_fuse(model, a, b, residual, tile=8)
        assert float((got - ref).abs().max()) <= 1e-4


def test_numpy_inputs_and_memmap_output(tiny, tmp_path):
    a, b = _pair(40, 33, seed=7)
    ref = _untiled(tiny, a, b)[0, 0].numpy()
    an, bn = a[0, 0].numpy(), b[0, 0].numpy()
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(40, 33))
    got = tiled_fuse(tiny, an, bn, "vis", tile=12, out=out, store="disk", tmpdir=str(tmp_path))
    assert got is out
    assert float(np.abs(np.load(tmp_path / "out.npy") - ref).max()) <= 1e-4


def test_memory_budget_chooses_tiles(tiny):
    a, b = _pair(45, 50, seed=9)
    ref = _untiled(tiny, a, b)
    calls = []
    got = tiled_fuse(tiny, a, b, memory_budget=10**9 * 1000, progress=lambda i, n: calls.append((i, n)))
    assert float((got - ref).abs().max()) <= 1e-4
    assert calls and calls[-1][0] == calls[-1][1] - 1  # every pass reported


@pytest.mark.slow
def test_full_size_network_tiled(reference_model):
    """The paper-size network (authors' checkpoint format) on a 64x80 crop, tiles of 24 and 37."""
    g = torch.Generator().manual_seed(11)
    a, b = torch.rand(1, 1, 64, 80, generator=g), torch.rand(1, 1, 64, 80, generator=g)
    ref = _untiled(reference_model, a, b)
    for tile in (24, 37):
        got = tiled_fuse(reference_model, a, b, "vis", tile=tile)
        assert float((got - ref).abs().max()) <= 1e-4, tile


@pytest.fixture(scope="module")
def reference_model():
    from cddfuse.models.weights import load_weights

    model, _ = load_weights(_need(SHARED / "reference" / "official_format_seed1.pth"))
    return model


def test_plan_tiles_partitions_the_image():
    for h, w, t in [(37, 53, 16), (480, 640, 128), (5, 5, 10), (7, 3, 1)]:
        tiles = plan_tiles(h, w, t)
        cover = np.zeros((h, w), dtype=int)
        for y0, y1, x0, x1 in tiles:
            assert 0 < y1 - y0 <= t and 0 < x1 - x0 <= t
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()
    assert plan_tiles(10, 20, None) == [(0, 10, 0, 20)]
    with pytest.raises(ValueError, match="tile must be >= 1"):
        plan_tiles(10, 10, 0)


def test_auto_tile_and_memory_estimate():
    cfg = CDDFuseConfig()
    assert auto_tile(480, 640, 64 * 2**30, cfg) == (None, False)  # fits whole
    tile, on_disk = auto_tile(4096, 4096, 3 * 2**30, cfg)
    assert tile is not None and on_disk  # 4096^2 maps (8.6 GB) do not fit 3 GB
    assert estimate_memory(4096, 4096, tile, cfg, on_disk=True) <= 3 * 2**30
    tile2, on_disk2 = auto_tile(2048, 2048, 8 * 2**30, cfg)
    assert tile2 is not None and not on_disk2


def test_parse_memory():
    assert parse_memory("3G") == 3 * 2**30
    assert parse_memory("512M") == 512 * 2**20
    assert parse_memory("1.5GB") == int(1.5 * 2**30)
    assert parse_memory(1234) == 1234
    assert parse_memory(None) is None
    with pytest.raises(ValueError, match="as a size"):
        parse_memory("lots")


def _guard_or_skip() -> MemoryGuard:
    guard = MemoryGuard(0)
    if not guard.active:
        pytest.skip("the memory guard needs /proc and glibc's malloc_trim (Linux with glibc)")
    return guard


def test_memory_guard_returns_free_heap_memory():
    """Freed heap blocks below a live one stay resident until the guard trims them."""
    import ctypes

    guard = _guard_or_skip()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, n = 64 * 1024, 1024  # 64 MiB in blocks below glibc's mmap threshold: they come from the heap
    blocks = [libc.malloc(block) for _ in range(n)]
    pin = libc.malloc(block)  # keeps the freed blocks from being the heap's top (which free() trims itself)
    try:
        for p in blocks:
            ctypes.memset(p, 1, block)  # make the pages resident
        before = resident_memory()
        for p in blocks:
            libc.free(p)
        assert resident_memory() > before - 16 * 2**20  # free() kept (nearly) all of it
        guard()
        assert guard.trims == 1
        assert resident_memory() < before - 48 * 2**20  # the trim handed it back
    finally:
        libc.free(pin)


def test_memory_guard_trims_only_above_its_limit():
    _guard_or_skip()
    high = MemoryGuard(2**62)
    high()
    assert high.trims == 0
    low = MemoryGuard(1)
    low()
    low()
    assert low.trims == 2


def test_tiled_fuse_uses_the_guard_with_a_budget(tiny, monkeypatch):
    """A budget below the process's size makes every tile trim; the result stays exact."""
    _guard_or_skip()
    made = []

    class Recording(MemoryGuard):
        def __init__(self, limit: int) -> None:
            super().__init__(limit)
            made.append(self)

    monkeypatch.setattr(engine_module, "MemoryGuard", Recording)
    a, b = _pair(30, 34, seed=4)
    got = tiled_fuse(tiny, a, b, tile=16, memory_budget=2**20, workers=1)
    assert float((got - _untiled(tiny, a, b)).abs().max()) <= 1e-4
    assert len(made) == 1 and made[0].limit < 2**20  # the budget less room for the next tile
    assert made[0].trims == len(plan_tiles(30, 34, 16)) * n_passes(1, 1)  # after every tile of every pass
    made.clear()
    tiled_fuse(tiny, a, b, tile=16)  # no budget: the limit is twice the estimate (which includes the
    # fixed cost of PyTorch and oneDNN), not the resident size of this long-lived test process
    from cddfuse.engine.planning import _BASE_BYTES

    assert made[0].limit >= 2 * _BASE_BYTES


def test_map_pool_reuses_buffers_of_the_same_shape():
    from cddfuse.engine.stores import MapPool, MemoryStore

    pool = MapPool()
    first = MemoryStore(2, 6, 5, 3, torch.float32, torch.device("cpu"), pool=pool)
    first.write((0, 3, 0, 5), torch.ones(2, 3, 5, 3))
    storage = first.tensor.data_ptr()
    first.close()
    other = MemoryStore(1, 6, 5, 3, torch.float32, torch.device("cpu"), pool=pool)  # another shape: fresh
    other.write((0, 3, 0, 5), torch.ones(1, 3, 5, 3))
    assert other.tensor.data_ptr() != storage
    again = MemoryStore(2, 6, 5, 3, torch.float32, torch.device("cpu"), pool=pool)
    again.write((3, 6, 0, 5), torch.full((2, 3, 5, 3), 2.0))
    assert again.tensor.data_ptr() == storage  # the first map's buffer, reused
    assert float(again.read((3, 6, 0, 5)).tensor.min()) == 2.0


@pytest.mark.slow
def test_fuser_tile_option_matches_untiled(tmp_path):
    from cddfuse.fusion import Fuser
    from cddfuse.models.weights import save_weights

    path = tmp_path / "tiny.safetensors"
    save_weights(_random_model(2, **TINY), path, task="ivf", residual="vis")
    ya, yb = (x[0, 0].numpy() for x in _pair(33, 47, seed=13))
    whole = Fuser(weights=path, device="cpu", tile=None, backend="torch").fuse_luminance(ya, yb)
    with pytest.warns(CDDFuseWarning, match="tile=10 is very small"):
        tiled = Fuser(weights=path, device="cpu", tile=10).fuse_luminance(ya, yb)
    budget = Fuser(weights=path, device="cpu", max_memory="600M").fuse_luminance(ya, yb)
    assert whole.shape == (33, 47)
    assert float(np.abs(whole - tiled).max()) <= 1e-4
    assert float(np.abs(whole - budget).max()) <= 1e-4


@pytest.mark.slow
def test_cli_tile_and_memory_options(tmp_path):
    """`cddfuse fuse --tile/--max-memory` writes the same image as the default run."""
    import subprocess
    import sys

    import cv2

    from cddfuse.models.weights import save_weights

    weights = tmp_path / "tiny.safetensors"
    save_weights(_random_model(3, **TINY), weights, task="ivf", residual="vis")
    rng = np.random.default_rng(0)
    ir, vi = tmp_path / "ir.png", tmp_path / "vi.png"
    cv2.imwrite(str(ir), rng.integers(0, 256, (45, 61), dtype=np.uint8))
    cv2.imwrite(str(vi), rng.integers(0, 256, (45, 61, 3), dtype=np.uint8))
    outs = []
    for extra in ([], ["--tile", "16", "--max-memory", "2G"], ["--tile", "7"]):
        out = tmp_path / f"out{len(outs)}.npy"
        proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "-o", str(out),
                               "--weights", str(weights), "--device", "cpu", "-q", *extra],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outs.append(np.load(out))
    assert outs[0].shape == (45, 61, 3)
    assert float(np.abs(outs[0] - outs[1]).max()) <= 1e-4
    assert float(np.abs(outs[0] - outs[2]).max()) <= 1e-4
    proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "-o",
                           str(tmp_path / "x.png"), "--weights", str(weights), "--tile", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--tile" in proc.stderr
