"""Per-machine tuning (cddfuse.engine.tuning) and the CPU bf16 path (cddfuse.engine.ops.BF16Ops)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cddfuse.engine import cpu, tiled_fuse, tuning
from cddfuse.engine.engine import fuse_tensors
from cddfuse.errors import CDDFuseWarning

from .conftest import TINY_SIZES, make_random_model, shared_path

PROBE = (48, 64)


def _tune(**kw):
    """A fast probe: a small network on a small pair (the choices and the cache are what is tested)."""
    from cddfuse.models import CDDFuseConfig

    return real_tune(size=PROBE, config=CDDFuseConfig(**{**TINY_SIZES, "dim": 16}), **kw)


real_tune = tuning.tune


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CDDFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CDDFUSE_CPU_FLAGS", raising=False)
    return tmp_path / "cache" / "tuning.json"


def test_tune_writes_an_entry_that_is_then_reused(cache, monkeypatch):
    result = _tune()
    assert result.source == "tuned" and result.tile in (96, 128, 160, 192) and result.ops in ("fused", "plain")
    assert len(result.timings) >= 4 and all(t > 0 for t in result.timings.values())
    entry = json.loads(cache.read_text())["machines"][tuning.machine_key()]
    assert (entry["tile"], entry["workers"], entry["ops"]) == (result.tile, result.workers, result.ops)

    def no_tuning(*a, **k):
        raise AssertionError("tuned again although the cache has this machine")

    monkeypatch.setattr(tuning, "tune", no_tuning)
    again = tuning.settings(tune_if_missing=True)
    assert again.source == "cache" and (again.tile, again.workers, again.ops) == (result.tile, result.workers,
                                                                                  result.ops)


def test_first_use_tunes_once_when_auto_tuning_is_on(cache, monkeypatch):
    monkeypatch.setenv("CDDFUSE_TUNE", "1")
    calls = []
    monkeypatch.setattr(tuning, "tune", lambda **k: calls.append(1) or _tune())
    told = []
    first = tuning.settings(notify=told.append)
    second = tuning.settings(notify=told.append)
    assert calls == [1] and len(told) == 1 and "tuning the engine" in told[0]
    assert first.source == "tuned" and second.source == "cache"


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


def test_a_malformed_entry_is_ignored_with_a_warning(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"version": 1, "machines": {tuning.machine_key(): {"tile": "big"}}}))
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


def test_tuned_settings_do_not_change_the_result(cache):
    """Whatever the cache says (tile, tiles in flight, op backend), fusion computes the same function."""
    model = make_random_model(3, **TINY_SIZES)
    a, b = torch.rand(1, 1, 70, 90), torch.rand(1, 1, 70, 90)
    with torch.inference_mode():
        whole = model(a, b, residual="vis")
    cache.parent.mkdir(parents=True)
    for tile, workers, ops in [(32, 1, "plain"), (48, 2, "fused"), (160, 2, "fused")]:
        entry = {"tile": tile, "workers": workers, "ops": ops, "timings": {}}
        cache.write_text(json.dumps({"version": 1, "machines": {tuning.machine_key(): entry}}))
        assert tuning.settings().tile == tile
        fused = fuse_tensors(model, a, b, "vis", device="cpu")
        torch.testing.assert_close(fused, whole, atol=2e-6, rtol=0)


@pytest.mark.slow
def test_cli_tune_writes_and_shows_the_cache(cache, capsys):
    from cddfuse.cli.main import main

    assert main(["tune", "--size", "48x64"]) == 0
    out = capsys.readouterr().out
    assert "chosen:  tile=" in out and cache.exists()
    assert main(["tune", "--show"]) == 0
    assert "cached:  tile=" in capsys.readouterr().out


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
