"""Per-machine tuning (cddfuse.engine.tuning) and the CPU bf16 path (cddfuse.engine.ops.BF16Ops)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cddfuse.engine import cpu, tiled_fuse, tuning
from cddfuse.engine.engine import fuse_tensors
from cddfuse.errors import CDDFuseWarning

from .helpers import TINY_SIZES, make_random_model, shared_path

PROBE = (48, 64)
ROOT = Path(__file__).resolve().parents[1]


def _tune(**kw):
    """A fast probe: a small network on a small pair (the choices and the cache are what is tested)."""
    from cddfuse.models import CDDFuseConfig

    return real_tune(size=PROBE, config=CDDFuseConfig(**{**TINY_SIZES, "dim": 16}), **kw)


real_tune = tuning.tune


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CDDFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CDDFUSE_CPU_FLAGS", raising=False)
    monkeypatch.delenv("CDDFUSE_TUNE_WAIT", raising=False)
    return tmp_path / "cache" / "tuning.json"


@pytest.fixture
def two_threads():
    """Two intra-op threads: with one there is nothing to tune."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _write(cache, entries, version=2):
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"version": version, "machines": entries}))


def test_tune_writes_an_entry_that_is_then_reused(cache, monkeypatch, two_threads):
    result = _tune()
    assert result.source == "tuned" and result.workers in (1, 2)
    assert set(result.timings) == {"workers=1", "workers=2"} and all(t > 0 for t in result.timings.values())
    entry = json.loads(cache.read_text())["machines"][tuning.machine_key()]
    assert entry["workers"] == result.workers and "tile" not in entry and "ops" not in entry

    def no_tuning(*a, **k):
        raise AssertionError("tuned again although the cache has this machine")

    monkeypatch.setattr(tuning, "tune", no_tuning)
    again = tuning.settings(tune_if_missing=True)
    assert again.source == "cache" and again.workers == result.workers


def test_one_thread_has_nothing_to_measure(cache, monkeypatch):
    monkeypatch.setattr(tuning, "tiled_fuse", lambda *a, **k: pytest.fail("measured with one thread"))
    told = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = tuning.settings(tune_if_missing=True, notify=told.append)
    finally:
        torch.set_num_threads(before)
    assert (result.workers, result.timings, told) == (1, {}, [])  # and no "tuning ... 20 s" line
    entries = json.loads(cache.read_text())["machines"]
    assert [entry["workers"] for key, entry in entries.items() if "| 1 threads |" in key] == [1]


def test_first_use_tunes_once_when_auto_tuning_is_on(cache, monkeypatch, two_threads):
    monkeypatch.setenv("CDDFUSE_TUNE", "1")
    calls = []
    monkeypatch.setattr(tuning, "tune", lambda **k: calls.append(k) or _tune(**k))
    told = []
    first = tuning.settings(notify=told.append)
    second = tuning.settings(notify=told.append)
    assert calls == [{"store": False}] and len(told) == 1 and "tuning the engine" in told[0]
    assert first.source == "tuned" and second.source == "cache" and first.workers == second.workers


def test_auto_tuning_off_gives_the_defaults_and_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv("CDDFUSE_TUNE", "0")
    assert tuning.settings() == tuning.DEFAULT_SETTINGS
    assert not cache.exists()


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps({"version": 99, "machines": {}})])
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(cache, content):
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    with pytest.warns(CDDFuseWarning, match="ignoring the tuning cache"):
        assert tuning.settings(tune_if_missing=False) == tuning.DEFAULT_SETTINGS
    with pytest.warns(CDDFuseWarning):
        _tune()
    assert tuning.machine_key() in json.loads(cache.read_text())["machines"]


def test_an_older_cache_that_chose_tiles_is_ignored_quietly_and_replaced(cache, recwarn):
    """Version 1 entries chose the tile side and the op backend per thread count (the result then
    depended on the thread count); they are not read, and the next tuning rewrites the file."""
    _write(cache, {tuning.machine_key(): {"tile": 160, "workers": 1, "ops": "plain", "timings": {}}}, version=1)
    assert tuning.cached_settings() is None and not recwarn.list
    _tune()
    data = json.loads(cache.read_text())
    assert data["version"] == 2 and set(data["machines"][tuning.machine_key()]) == {"workers", "timings", "date"}


def test_a_malformed_entry_is_ignored_with_a_warning(cache):
    for entry in ({"tile": "big"}, {"workers": 0}, {"workers": True}, {"workers": "two"}):
        _write(cache, {tuning.machine_key(): entry})
        with pytest.warns(CDDFuseWarning, match="malformed"):
            assert tuning.cached_settings() is None


def test_another_cpu_gets_its_own_entry(cache, monkeypatch):
    _tune()
    here = tuning.machine_key()
    # the same file read on a different processor: this one's flags with AMX toggled (the key names it)
    flags = set(cpu.cpu_flags()) ^ {"amx_bf16"}
    monkeypatch.setenv("CDDFUSE_CPU_FLAGS", " ".join(sorted(flags)))
    assert tuning.machine_key() != here
    assert tuning.cached_settings() is None
    _tune()
    assert set(json.loads(cache.read_text())["machines"]) == {here, tuning.machine_key()}


def test_tiles_in_flight_do_not_change_a_bit(cache):
    """Whatever the cache says, fusion computes the same bits (and the function of the module)."""
    model = make_random_model(3, **TINY_SIZES)
    a, b = torch.rand(1, 1, 70, 90), torch.rand(1, 1, 70, 90)
    with torch.inference_mode():
        whole = model(a, b, residual="vis")
    first = None
    for workers in (1, 2, 3):
        _write(cache, {tuning.machine_key(): {"workers": workers, "timings": {}}})
        assert tuning.settings().workers == workers
        fused = fuse_tensors(model, a, b, "vis", device="cpu", tile=32, workers=tuning.settings().workers)
        torch.testing.assert_close(fused, whole, atol=2e-6, rtol=0)
        first = fused if first is None else first
        assert torch.equal(fused, first), f"workers={workers}"


# ------------------------------------------------------------------ one process tunes, the others wait
def _hold_lock(cache):
    """Take the tuning lock as another process would (an flock on its own open file)."""
    import fcntl

    cache.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache.with_name("tuning.json.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_process_that_finds_tuning_under_way_waits_for_its_entry(cache, monkeypatch, two_threads):
    pytest.importorskip("fcntl")
    fd = _hold_lock(cache)
    monkeypatch.setattr(tuning, "tune", lambda **k: pytest.fail("tuned although another process was tuning"))

    def other_process_finishes():
        time.sleep(0.5)
        _write(cache, {tuning.machine_key(): {"workers": 1, "timings": {"workers=1": 1.0}}})
        os.close(fd)  # releases the lock

    finisher = threading.Thread(target=other_process_finishes)
    finisher.start()
    told = []
    try:
        found = tuning.settings(tune_if_missing=True, notify=told.append)
    finally:
        finisher.join()
    assert found.source == "cache" and found.workers == 1
    assert len(told) == 1 and "another process is tuning" in told[0]


def test_waiting_has_a_limit_then_the_built_in_settings_are_used(cache, monkeypatch, two_threads):
    pytest.importorskip("fcntl")
    fd = _hold_lock(cache)
    monkeypatch.setenv("CDDFUSE_TUNE_WAIT", "0.3")
    monkeypatch.setattr(tuning, "tune", lambda **k: pytest.fail("tuned although another process was tuning"))
    try:
        with pytest.warns(CDDFuseWarning, match=r"another process has been tuning the engine for 0 s .*same result"):
            assert tuning.settings(tune_if_missing=True) == tuning.DEFAULT_SETTINGS
    finally:
        os.close(fd)
    assert not cache.exists()


def test_a_dead_tuner_leaves_no_stale_lock(cache, two_threads):
    """The lock is an flock: closed (or killed) with its process, so the next process tunes."""
    pytest.importorskip("fcntl")
    os.close(_hold_lock(cache))
    assert cache.with_name("tuning.json.lock").exists()
    result = _tune()
    assert result.source == "tuned" and tuning.cached_settings().workers == result.workers


_RANK = """
import functools, os, sys, time
import torch
torch.set_num_threads(2)
from cddfuse.engine import tuning
from cddfuse.models import CDDFuseConfig
real = tuning.tune
def slow_small(**kw):
    print(f"rank {os.environ['RANK']} tunes", flush=True)
    time.sleep(1.0)  # long enough for the other rank to find the lock held
    return real(size=(48, 64), config=CDDFuseConfig(dim=16, num_heads=2, encoder_blocks=1, decoder_blocks=1,
                                                    encoder_inn_layers=1), **kw)
tuning.tune = slow_small
s = tuning.settings(tune_if_missing=True, notify=lambda line: print(f"rank {os.environ['RANK']}: {line}", flush=True))
print(f"rank {os.environ['RANK']} workers={s.workers} source={s.source}", flush=True)
"""


@pytest.mark.slow
def test_two_ranks_started_together_tune_once(cache, tmp_path):
    """Two processes with torchrun's variables and an empty cache: one tunes, the other waits for its entry."""
    env = dict(os.environ, WORLD_SIZE="2", CDDFUSE_CACHE=str(cache.parent), CDDFUSE_TUNE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    ranks = [subprocess.Popen([sys.executable, "-c", _RANK], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], [err[-2000:] for _, err in outs]
    lines = "".join(out for out, _ in outs).splitlines()
    tuned = [line for line in lines if line.endswith(" tunes")]
    waited = [line for line in lines if "another process is tuning" in line]
    assert len(tuned) == 1 and len(waited) == 1 and tuned[0].split()[1] != waited[0].split()[1]
    results = sorted(line.split(" ", 2)[2] for line in lines if " workers=" in line)
    workers = json.loads(cache.read_text())["machines"]
    assert len(workers) == 1 and results[0].startswith(f"workers={next(iter(workers.values()))['workers']}")
    assert [r.split()[1] for r in results] == ["source=cache", "source=tuned"]


@pytest.mark.slow
def test_cli_tune_writes_and_shows_the_cache(cache, capsys, two_threads):
    from cddfuse.cli.main import main

    assert main(["tune", "--size", "48x64"]) == 0
    out = capsys.readouterr().out
    assert "chosen:  workers=" in out and cache.exists()
    assert main(["tune", "--show"]) == 0
    assert "cached:  workers=" in capsys.readouterr().out


def test_cli_tune_rejects_a_bad_size(capsys):
    from cddfuse.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["tune", "--size", "big"])
    assert e.value.code == 2 and "expected HxW" in capsys.readouterr().err


# ------------------------------------------------------------------ bf16 on CPU
def test_cpu_flags_override_and_bf16_detection(monkeypatch):
    monkeypatch.setenv("CDDFUSE_CPU_FLAGS", "avx2 amx_tile amx_bf16 avx512_bf16")
    assert cpu.bf16_feature() == "amx_bf16"
    monkeypatch.setenv("CDDFUSE_CPU_FLAGS", "avx2 avx512f")
    assert cpu.bf16_feature() is None
    assert "baseline" not in cpu.cpu_key()


def _need_bf16() -> None:
    if cpu.bf16_feature() is None:
        pytest.skip(f"this CPU ({cpu.cpu_model()}) has neither AMX nor AVX512-BF16: bf16 is refused here")


def test_bf16_tiled_equals_untiled():
    """The mixed bf16 path is still exact under tiling: every pixel sees the same arithmetic."""
    _need_bf16()
    model = make_random_model(5, **TINY_SIZES)
    a, b = torch.rand(1, 1, 53, 67), torch.rand(1, 1, 53, 67)
    with torch.inference_mode():
        whole = tiled_fuse(model, a, b, "vis", tile=None, ops="bf16", workers=1)
        for tile, workers in [(16, 1), (24, 2)]:
            tiled = tiled_fuse(model, a, b, "vis", tile=tile, ops="bf16", workers=workers)
            # oneDNN picks kernels by matrix size, so float32 accumulation order can differ between a
            # tile and the whole image and flip a bfloat16 rounding now and then: equal to bf16 rounding
            torch.testing.assert_close(tiled, whole, atol=1e-3, rtol=0)
        fp32 = model(a, b, residual="vis")
    assert whole.dtype == torch.float32
    to_fp32 = float((whole - fp32).abs().max())
    assert 0 < to_fp32 < 0.02  # bfloat16 products: close to, not equal to, fp32
    assert float((tiled - whole).abs().mean()) < float((whole - fp32).abs().mean()) / 4


def test_bf16_on_a_real_pair_is_within_one_gray_level_of_fp32():
    _need_bf16()
    from cddfuse.fusion import Fuser
    from cddfuse.io.image import read_image

    folder = shared_path("data", "test", "TNO")
    ir = read_image(folder / "ir" / "01.png")[100:260, 150:390]
    vi = read_image(folder / "vi" / "01.png")[100:260, 150:390]
    fp32 = Fuser(task="ivf", device="cpu", color="gray").fuse(ir, vi)
    bf16 = Fuser(task="ivf", device="cpu", color="gray", precision="bf16").fuse(ir, vi)
    diff = np.abs(np.round(bf16 * 255) - np.round(fp32 * 255))
    assert np.all(np.isfinite(bf16)) and diff.max() <= 2
    assert (diff <= 1).mean() >= 0.999


def test_tuning_sits_above_the_engine():
    """One-way dependency: tuning imports the engine (its probe runs it); no engine module imports tuning,
    not even inside a function."""
    import ast

    import cddfuse.engine as package

    folder = Path(package.__file__).parent
    importers = []
    for path in sorted(folder.glob("*.py")):
        if path.name == "tuning.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if any(name.split(".")[-1] == "tuning" or ".tuning." in f"{name}." for name in names):
                importers.append(path.name)
    assert importers == []
    assert "from .engine import tiled_fuse" in (folder / "tuning.py").read_text(encoding="utf-8")
