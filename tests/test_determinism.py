"""The files written do not depend on the thread count, the tiles in flight or the process layout.

Real pairs with the bundled weights: one process, ``--shard K/N`` jobs and different
``torch.set_num_threads`` values give the same float32 outputs bit for bit (so the same PNGs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import cddfuse
from cddfuse.engine import CPU_SPEED_TILE, choose_plan, estimate_memory
from cddfuse.engine.pointwise import gelu_, sigmoid_
from cddfuse.engine.tuning import machine_key
from cddfuse.models import CDDFuseConfig

SRC = Path(cddfuse.__file__).resolve().parents[1]  # the subprocesses run the code under test
#: (stem, set, pair, top, left, height, width): small crops of real pairs, each cut into 2 tiles of CPU_SPEED_TILE.
CROPS = [("tno", "TNO", "01", 100, 150, 136, 120), ("road", "RoadScene", "FLIR_00211", 40, 60, 120, 140),
         ("tno2", "TNO", "05", 60, 80, 132, 100)]


@pytest.fixture
def threads():
    """Restores the thread count the test changes."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def pairs(test_data, tmp_path) -> tuple[Path, Path]:
    """The CROPS as PNG files in tmp_path/ir and tmp_path/vi."""
    for stem, folder, pair, top, left, h, w in CROPS:
        for side in ("ir", "vi"):
            src = next((test_data / folder / side).glob(f"{pair}.*"), None)
            if src is None:
                pytest.skip(f"{folder}/{side}/{pair} is not in the shared test data")
            img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
            (tmp_path / side).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / side / f"{stem}.png"), img[top:top + h, left:left + w])
    return tmp_path / "ir", tmp_path / "vi"


def _old_cache(folder: Path) -> None:
    """A cache as earlier versions wrote it, whose tile side and op backend depended on the thread count
    (what made a 1-thread torchrun rank use 160-px tiles where a 2-thread process used 96)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = machine_key().rsplit(" threads |", 1)[0].rsplit("| ", 1)[0]
    machines = {f"{key}| {n} threads | torch {torch.__version__}": {"tile": tile, "workers": 1, "ops": ops}
                for n, tile, ops in [(1, 160, "plain"), (2, 96, "fused"), (3, 160, "fused"), (7, 96, "plain")]}
    (folder / "tuning.json").write_text(json.dumps({"version": 1, "machines": machines}))


def test_gelu_and_sigmoid_do_not_depend_on_how_threads_split_a_tensor(threads):
    x = (torch.randn(1, 64, 110, 97, generator=torch.Generator().manual_seed(0)) * 3).contiguous(
        memory_format=torch.channels_last)
    results = []
    for n in (1, 3, 7):
        threads(n)
        results.append((gelu_(x.clone()), sigmoid_(x.clone())))
    for gelu, sigmoid in results[1:]:
        assert torch.equal(gelu, results[0][0]) and torch.equal(sigmoid, results[0][1])
    torch.testing.assert_close(results[0][0], torch.nn.functional.gelu(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(results[0][1], torch.sigmoid(x), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_fused_pixels_do_not_depend_on_the_thread_count(pairs, threads, monkeypatch, tmp_path):
    """A real pair with the bundled weights, 1, 3 and 7 threads, a stale per-thread cache present: the
    same float32 output bit for bit (before: 3 and 7 threads rounded GELU and a batched product
    differently, and the cache gave each thread count its own tile side)."""
    from cddfuse.fusion import Fuser
    from cddfuse.io.image import read_image

    monkeypatch.setenv("CDDFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CDDFUSE_TUNE", "0")
    _old_cache(tmp_path / "cache")
    ir, vi = (read_image(folder / "tno.png") for folder in pairs)
    fuser = Fuser(task="ivf", device="cpu", color="gray")
    outputs = {}
    for n in (1, 3, 7):
        threads(n)
        outputs[n] = fuser.fuse_luminance(ir, vi)
    assert outputs[1].shape == ir.shape and outputs[1].dtype == np.float32
    for n in (3, 7):
        assert outputs[n].tobytes() == outputs[1].tobytes(), f"{n} threads: {np.abs(outputs[n] - outputs[1]).max()}"


@pytest.mark.parametrize("size", [(1448, 1448), (2048, 2048), (4096, 4096)])
def test_the_cpu_tile_does_not_depend_on_the_budget_or_the_threads(size, threads):
    """The tile side sets the rounding; on CPU it does not depend on the budget or the threads.

    It stays CPU_SPEED_TILE whatever the memory available,
    the thread count or the tiles in flight (maps go to disk, fewer tiles in flight); each plan fits
    its budget. (Before, a 1448x1448 pair got 128-px tiles with 1 thread and 64 with 2, at 3 GB.)"""
    cfg = CDDFuseConfig()
    h, w = size
    plans = {}
    for n in (1, 2, 4):
        threads(n)
        for budget in (1536 << 20, 2 << 30, 3 << 30, 64 << 30):
            plans[budget, n] = choose_plan(h, w, device="cpu", memory_budget=budget, config=cfg)
    assert {plan.tile for plan in plans.values()} == {CPU_SPEED_TILE}, plans
    for (budget, n), plan in plans.items():
        assert estimate_memory(h, w, plan.tile, cfg, 1, 4, plan.on_disk, plan.workers) <= budget
        assert 1 <= plan.workers <= n
    small = choose_plan(h, w, device="cpu", memory_budget=700 << 20, config=cfg)  # below one 128-px tile's need
    assert small.tile is not None and small.tile < CPU_SPEED_TILE and small.on_disk


def _fuse(ir: Path, vi: Path, out: Path, n_threads: int, cache: Path, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(n_threads), CDDFUSE_CACHE=str(cache), CDDFUSE_TUNE="0",
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "-o", str(out), "--ext", ".npy",
           "-q", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_one_process_and_shards_with_other_thread_counts_write_the_same_bytes(pairs, tmp_path):
    """`cddfuse fuse` on three real pairs: one process with 2 threads, and `--shard 0/2` with 1 thread
    plus `--shard 1/2` with 3 threads, with a stale per-thread cache present: byte-identical float32
    files (so byte-identical PNGs: quantisation is a fixed function of them)."""
    ir, vi = pairs
    _old_cache(tmp_path / "cache")
    _fuse(ir, vi, tmp_path / "one", 2, tmp_path / "cache")
    _fuse(ir, vi, tmp_path / "shards", 1, tmp_path / "cache", "--shard", "0/2")
    _fuse(ir, vi, tmp_path / "shards", 3, tmp_path / "cache", "--shard", "1/2")
    one = {p.name: p.read_bytes() for p in sorted((tmp_path / "one").iterdir())}
    shards = {p.name: p.read_bytes() for p in sorted((tmp_path / "shards").iterdir())}
    assert sorted(one) == ["road.npy", "tno.npy", "tno2.npy"]
    assert shards == one
