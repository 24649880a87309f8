"""The GPU run's scripts (scripts/gpu_prepare.py, scripts/gpu_train.sh, scripts/gpu_train.py), on the CPU:
the time plan, the full-size settings, the data split, and the whole script end to end with a tiny
network and a step cap (a budget far longer than the run needs: it does not race the clock on a busy
machine), kornia installed from wheels without network as on the GPU machine."""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT, SHARED
from .helpers import shared_path as _shared

SCRIPTS = ROOT / "scripts"
BUDGET_S = 600  # generous: the run is bounded by MAX_STEPS, the budget only has to suffice
MAX_STEPS = 24


def _load(name: str):
    """A script of scripts/ as a module (they import each other as siblings)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # (dataclasses look their module up)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(SCRIPTS))


gt = _load("gpu_train")


def _cal(r1: float = 8.0, r2: float = 10.0, setup: float = 6.0, ck: float = 0.3, val: float = 4.0):
    return gt.Calibration(phase1_steps_per_s=r1, phase2_steps_per_s=r2, setup_s=setup, checkpoint_s=ck,
                          validation_s=val)


@pytest.mark.parametrize("time_left,spe", [(450.0, 20), (450.0, 85), (60.0, 343), (25.0, 81)])
def test_plan_fits_the_time_and_reaches_phase2(time_left, spe):
    cal = _cal()
    p = gt.make_plan(time_left, cal, spe)
    assert 1 <= p.steps_per_epoch <= spe and p.phase1_epochs >= 1 and p.phase2_epochs >= 1
    assert p.phase1_epochs + p.phase2_epochs >= min(24, (p.phase1_steps + p.phase2_steps) // p.steps_per_epoch)
    # the planned run ends before the time is up, and --max-time leaves the final validation and a checkpoint
    assert p.expected_s <= time_left and p.max_time_s <= time_left - cal.validation_s - cal.checkpoint_s
    # a quarter of the training time for Phase I (steps convert at each phase's speed)
    t1, t2 = p.phase1_steps / cal.phase1_steps_per_s, p.phase2_steps / cal.phase2_steps_per_s
    if p.phase1_steps + p.phase2_steps >= 240:
        assert t1 / (t1 + t2) == pytest.approx(0.25, abs=0.05)
    # StepLR: the rate halves about five times over the run (the paper: 120 epochs, period 20)
    e = p.phase1_epochs + p.phase2_epochs
    assert p.step_epochs == math.ceil(e / 6) and (e < 24 or 4 <= e / p.step_epochs <= 6)
    o = dict(x.split("=", 1) for x in p.overrides())
    assert int(o["phase2.epochs"]) == p.phase2_epochs and int(o["val.every_epochs"]) == e


def test_plan_uses_most_of_the_time_on_a_gpu_sized_budget():
    cal = _cal(r1=6.0, r2=7.5)
    p = gt.make_plan(480.0, cal, 85)
    assert 0.85 * 480 < p.expected_s <= 480
    assert p.phase2_steps > 2000 and p.phase1_steps > 500


def test_plan_without_phase1():
    p = gt.make_plan(300.0, _cal(), 20, p1_fraction=0.0)
    assert p.phase1_epochs == 0 and p.phase2_steps > 0 and "phase1.epochs=0" in p.overrides()


def test_plan_refuses_when_no_time_is_left():
    with pytest.raises(ValueError, match="no time to train"):
        gt.make_plan(8.0, _cal(), 20)


def test_plan_caps_the_steps():
    free = gt.make_plan(480.0, _cal(), 85)
    p = gt.make_plan(480.0, _cal(), 85, max_steps=48)
    assert free.phase1_steps + free.phase2_steps > 48 >= p.phase1_steps + p.phase2_steps >= 40
    assert p.phase1_epochs >= 1 and p.phase2_epochs >= 1 and p.phase2_steps > p.phase1_steps
    assert p.expected_s < free.expected_s and p.max_time_s == free.max_time_s


def _args(**kw) -> argparse.Namespace:
    d = dict(task="ivf", data=Path("/data/ivf"), device="cuda", seed=0, init="shipped", batch=None, lr=None,
             tiny=False, bf16=False)
    d.update(kw)
    return argparse.Namespace(**d)


@pytest.mark.parametrize("task", ["ivf", "mif"])
def test_full_size_settings_resolve_with_the_shipped_weights(task, tmp_path):
    from cddfuse.models.weights import load_weights
    from cddfuse.train.trainer import model_config_from

    residual = gt.shipped_residual(task)
    _, info = load_weights(gt.shipped_weights(task))
    assert residual == info.residual and info.task == task
    cfg = gt.resolve(gt.base_overrides(_args(task=task), residual, 8, tmp_path / f"{task}.safetensors"))
    assert cfg["task"] == task and cfg["phase2"]["residual"] == residual
    assert cfg["model"]["init"] == str(gt.shipped_weights(task)) and model_config_from(cfg) == info.config
    assert cfg["data"]["mode"] == "random_crop" and cfg["data"]["crop_size"] == 128 and cfg["data"]["flips"]
    assert cfg["train"]["batch_size"] == 8 and cfg["optim"]["lr"] == pytest.approx(1e-4)
    assert cfg["checkpoint"]["weights"] == str(tmp_path / f"{task}.safetensors")
    assert cfg["data"]["a"] == "/data/ivf/train/a" and cfg["val"]["b"] == "/data/ivf/val/b"
    big = gt.resolve(gt.base_overrides(_args(task=task, batch=16), residual, 8, tmp_path / "w.safetensors"))
    assert big["optim"]["lr"] == pytest.approx(1e-4 * 2 ** 0.5) and big["train"]["micro_batch"] == 8
    scratch = gt.resolve(gt.base_overrides(_args(task=task, init="scratch"), residual, 8, tmp_path / "w.safetensors"))
    assert scratch["model"]["init"] is None


@pytest.mark.slow
def test_split_is_the_one_the_shipped_weights_were_trained_on():
    """Same pairs as scripts/train_bundled.sh made: the training stems' digest matches the shipped weights'."""
    from cddfuse.models.weights import load_weights
    from cddfuse.train.data import _stems_digest

    split = _load("bundled_split")
    root = _shared("data", "train")
    for task, n_train, n_val in (("ivf", 163, 8), ("mif", 686, 36)):
        pairs = split.split_pairs(task, root)
        train = sorted(p.name_a.rsplit(".", 1)[0] for p in pairs if p.part == "train")
        assert len(train) == n_train and sum(p.part == "val" for p in pairs) == n_val
        _, info = load_weights(gt.shipped_weights(task))
        assert _stems_digest(train) == info.provenance["data"]["stems_sha1"]


def _prepare(dest: Path) -> None:
    """scripts/gpu_prepare.py into ``dest``, with wheels for this interpreter (PyPI); skipped without
    network unless CI is set (CI machines reach PyPI)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    cmd = [sys.executable, str(SCRIPTS / "gpu_prepare.py"), "--dest", str(dest), "--shared", str(SHARED),
           "--python-version", version]
    r = subprocess.run(cmd + ["--no-wheels"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(cmd + ["--no-data"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        prepared = [w for w in (ROOT / ".gpu" / "wheels").glob("*.whl")
                    if w.name.startswith("kornia-") or f"-{tag}-" in w.name]
        if len(prepared) == 2:  # kornia (pure Python) and kornia_rs for this interpreter, prepared earlier
            (dest / "wheels").mkdir(exist_ok=True)
            for w in prepared:
                shutil.copy(w, dest / "wheels")
            return
        msg = f"no network to download the wheels (and none prepared for {tag}): {r.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.slow
def test_whole_script_on_cpu(tmp_path):
    """bash scripts/gpu_train.sh with a tiny network on the CPU: wheels installed offline, both models
    trained through Phase II (MAX_STEPS steps at most) before the deadline, their weights and logs in OUT."""
    from safetensors import safe_open

    from cddfuse.models.weights import load_weights

    _shared("data", "train", "RoadScene")
    bundle, out, work = tmp_path / "bundle", tmp_path / "out", tmp_path / "work"
    _prepare(bundle)
    env = dict(os.environ, OUT=str(out), GPU_TRAIN_BUNDLE=str(bundle), GPU_TRAIN_WORK=str(work),
               GPU_TRAIN_PYTHON=sys.executable, GPU_TRAIN_DEVICE="cpu", GPU_TRAIN_TINY="1",
               GPU_TRAIN_BUDGET_S=str(BUDGET_S), GPU_TRAIN_MAX_STEPS=str(MAX_STEPS))
    r = subprocess.run(["bash", str(SCRIPTS / "gpu_train.sh")], env=env, capture_output=True, text=True,
                       timeout=BUDGET_S + 60)
    logs = {p.name: p.read_text() for p in out.glob("*.log")}
    assert r.returncode == 0, r.stderr[-3000:] + "".join(v[-2000:] for v in logs.values())
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_train.log", "ivf.log", "ivf.safetensors", "mif.log", "mif.safetensors", "runs.tar.gz",
                     "summary.json"]
    assert f"from {work / 'site' / 'kornia'}" in logs["gpu_train.log"]  # the wheels' kornia, not the venv's
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_codes"] == {"ivf": 0, "mif": 0} and summary["mode"] == "concurrent"
    for task in ("ivf", "mif"):
        path = out / f"{task}.safetensors"
        model, info = load_weights(path)
        with safe_open(str(gt.shipped_weights(task)), framework="pt") as f:
            shipped = f.metadata()
        assert info.task == task and info.residual == shipped["residual"]
        prov = info.provenance
        s = summary[task]
        assert prov["status"] == "complete" and prov["steps"] == prov["total_steps"] == s["steps"] <= MAX_STEPS
        assert prov["phase2_steps"] == s["plan"]["phase2_steps"] > 0 and prov["phase1_epochs"] >= 1
        assert prov["data"]["pairs"] == {"ivf": 163, "mif": 686}[task]
        assert "PII ep" in logs[f"{task}.log"] and "validation after epoch" in logs[f"{task}.log"]
        assert s["steps_per_s"].get("phase2", 0) > 0 and s["validation_end"]["phase"] == 2
        assert s["seconds_before_deadline"] > 0
