"""End-to-end training on real pairs with a tiny model: a few-step run, schedules, exported weights,
resume rules, --max-time, SIGKILL + --resume bit-identity, and 2-rank data parallelism (gloo)."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cddfuse.cli.main import main as cli

from .helpers import link_pairs, patched_cli, subprocess_env

TINY_CONFIG = {
    "task": "ivf",
    "seed": 0,
    "device": "cpu",
    "model": {"dim": 8, "num_heads": 2, "encoder_blocks": 1, "decoder_blocks": 1, "encoder_inn_layers": 1},
    "data": {"patch_size": 32, "stride": 100, "workers": 0},
    "train": {"batch_size": 4, "max_steps_per_epoch": 3, "threads": 1},
    "phase1": {"epochs": 2},
    "phase2": {"epochs": 2},
    "sched": {"step_epochs": 1, "gamma": 0.5, "min_lr": 2e-5},
    "checkpoint": {"every_steps": 1},
    "log": {"every_steps": 1, "image_every_steps": 2, "progress": False},
}
TOTAL_STEPS = 12



@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    a, b = link_pairs(root / "train", 0, 4)
    va, vb = link_pairs(root / "val", 100, 2)
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CONFIG))
    assert cli(["prepare", str(a), str(b), "-o", str(root / "cache.h5"), "--patch-size", "32", "--stride", "100",
                "-q"]) == 0
    return {"root": root, "a": a, "b": b, "va": va, "vb": vb, "cfg": cfg, "cache": root / "cache.h5"}


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


@pytest.mark.slow
def test_few_step_run_on_real_pairs(workdir, capsys):
    from cddfuse.models.weights import load_weights
    from cddfuse.train.trainer import load_checkpoint

    run = workdir["root"] / "run_folders"
    rc = cli(["train", "--config", str(workdir["cfg"]), "--a", str(workdir["a"]), "--b", str(workdir["b"]),
              "--val-a", str(workdir["va"]), "--val-b", str(workdir["vb"]), "--set", "val.max_size=64",
              "--set", "val.max_pairs=1", "--workers", "1", "--run-dir", str(run)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "done: 12 steps" in err and "validation after epoch 1: recon_psnr_a" in err
    st = _state(run)
    assert st["status"] == "complete" and st["global_step"] == TOTAL_STEPS
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "phase1.pt").exists()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["dim"] == 8

    # exported weights: loadable, with metadata
    model, info = load_weights(run / "final.safetensors")
    assert info.task == "ivf" and info.residual == "vis" and info.config.dim == 8
    prov = info.provenance
    assert prov["steps"] == TOTAL_STEPS and prov["data"]["pairs"] == 4 and prov["data"]["mode"] == "patches"
    assert prov["training_config"]["phase1"]["epochs"] == 2 and prov["train_time_s"] > 0
    x = torch.rand(1, 1, 24, 40)
    assert torch.isfinite(model(x, x)).all()

    # per-part schedules: encoder/decoder stepped 4 times, fusion layers only in Phase II (2), floor 2e-5
    ck = load_checkpoint(run)
    lr = {k: o["param_groups"][0]["lr"] for k, o in ck["optimizers"].items()}
    assert lr["encoder"] == lr["decoder"] == pytest.approx(2e-5)  # 1e-4, 5e-5, 2.5e-5, floor, floor
    assert lr["base_fuse"] == lr["detail_fuse"] == pytest.approx(2.5e-5)  # 1e-4, 5e-5, 2.5e-5
    assert ck["schedulers"]["encoder"]["last_epoch"] == 4 and ck["schedulers"]["base_fuse"]["last_epoch"] == 2
    assert ck["config"]["data"]["a"] == str(workdir["a"])

    # directly usable by `cddfuse fuse --weights`
    stem = sorted(workdir["va"].iterdir())[0].name
    out = workdir["root"] / "fused.png"
    assert cli(["fuse", str(workdir["va"] / stem), str(workdir["vb"] / stem), "-o", str(out),
                "--weights", str(run / "final.safetensors"), "--device", "cpu"]) == 0
    assert out.exists()


def test_existing_run_and_resume_rules(workdir, capsys, monkeypatch):
    run = workdir["root"] / "run_rules"
    base = ["train", "--config", str(workdir["cfg"]), "--data", str(workdir["cache"]), "--run-dir", str(run),
            "--no-tensorboard", "--set", "phase2.epochs=0", "--set", "phase1.epochs=1"]
    assert cli(base) == 0
    capsys.readouterr()
    assert cli(base) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli(["train", "--resume", str(run), "--set", "optim.lr=1.0"]) == 2
    assert "cannot change optim.lr" in capsys.readouterr().err
    assert cli(["train", "--resume", str(run), "--set", "data.workers=1"]) == 0
    assert "already complete" in capsys.readouterr().err
    # precision is autocast only (fp32 weights, Adam state and losses): a resume may switch it
    monkeypatch.setenv("CDDFUSE_CPU_FLAGS", "avx512f avx512_bf16 amx_bf16")  # a CPU that has bf16
    assert cli(["train", "--resume", str(run), "--set", "train.precision=bf16"]) == 0
    assert "already complete" in capsys.readouterr().err
    assert cli(["train", "--resume", str(workdir["root"] / "nothing")]) == 2
    assert cli(["train", "--config", str(workdir["cfg"]), "--data", str(workdir["cache"]),
                "--set", "optim.momentum=0.9"]) == 2
    assert "unknown config key 'optim.momentum'" in capsys.readouterr().err


class _VirtualTime:
    """The training modules' clock, made deterministic: an optimisation step takes ``step_s`` seconds,
    every checkpoint file ``write_s``; nothing else takes time, however busy the machine."""

    def __init__(self, monkeypatch, *, step_s: float, write_s: float) -> None:
        import cddfuse.train.checkpoint as ckpt_mod
        from cddfuse.train.step import TrainStep

        self.now = 1000.0
        for mod in ("cddfuse.cli.main", "cddfuse.cli.train", "cddfuse.train.trainer", "cddfuse.train.control",
                    "cddfuse.train.checkpoint", "cddfuse.train.export"):
            monkeypatch.setattr(f"{mod}.time", self)
        write, step = ckpt_mod.atomic_write_bytes, TrainStep.train_step

        def slow_write(*args, **kwargs):
            self.now += write_s
            return write(*args, **kwargs)

        def slow_step(*args, **kwargs):
            out = step(*args, **kwargs)
            self.now += step_s
            return out

        monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", slow_write)
        monkeypatch.setattr(TrainStep, "train_step", slow_step)
        # the first-step guard's timer runs in real seconds, which mean nothing on this clock
        monkeypatch.setattr("cddfuse.train.control.signal", _NoTimerSignal())

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str):
        return getattr(time, name)


class _NoTimerSignal:
    """The signal module without ``setitimer`` (so the first-step guard stays off)."""

    def __getattr__(self, name: str):
        if name == "setitimer":
            raise AttributeError(name)
        return getattr(signal, name)


@pytest.mark.slow
def test_a_first_step_longer_than_the_budget_is_undone_and_the_run_stops(workdir, monkeypatch, capsys):
    """Before any step is timed the budget cannot know that the first one will not fit: it runs under a
    timer, is cut short when only the checkpoint and the exit are left, its changes are undone, and the
    run stops with a checkpoint of the state before it (resuming then gives the uninterrupted weights)."""
    from cddfuse.train.step import TrainStep

    reference = workdir["root"] / "run_ref_guard"
    common = ["--data", str(workdir["cache"]), "--no-tensorboard", "--set", "log.image_every_steps=0",
              "--set", "checkpoint.every_steps=0"]
    assert cli(["train", "--config", str(workdir["cfg"]), "--run-dir", str(reference)] + common) == 0
    step, finished = TrainStep.train_step, []

    def endless_step(self, *args, **kwargs):  # the real step (it changes the weights), then a very long wait
        out = step(self, *args, **kwargs)
        time.sleep(60)
        finished.append(True)
        return out

    monkeypatch.setattr(TrainStep, "train_step", endless_step)
    run = workdir["root"] / "run_guard"
    assert cli(["train", "--config", str(workdir["cfg"]), "--run-dir", str(run), "--max-time", "4"] + common) == 0
    assert "the first step would not have ended in time" in capsys.readouterr().err
    assert not finished  # cut short, not waited for
    st = _state(run)
    assert st["status"] == "stopped" and st["global_step"] == 0
    monkeypatch.undo()
    assert cli(["train", "--resume", str(run)]) == 0
    assert _state(run)["status"] == "complete"
    w0, w1 = _weights(reference / "final.safetensors"), _weights(run / "final.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


@pytest.mark.slow
def test_max_time_stops_before_the_limit_and_resumes(workdir, monkeypatch, capsys):
    """--max-time counts the step it would start, the checkpoint that step brings due (here the phase
    boundary's, three files) and the stop's own checkpoint: the run ends before the limit."""
    reference = workdir["root"] / "run_ref_inproc"
    common = ["--data", str(workdir["cache"]), "--no-tensorboard", "--set", "log.image_every_steps=0",
              "--set", "checkpoint.every_steps=0"]
    assert cli(["train", "--config", str(workdir["cfg"]), "--run-dir", str(reference)] + common) == 0
    run = workdir["root"] / "run_maxtime"
    clock = _VirtualTime(monkeypatch, step_s=0.5, write_s=1.0)
    assert cli(["train", "--config", str(workdir["cfg"]), "--run-dir", str(run), "--max-time", "6"] + common) == 0
    assert clock.now - 1000.0 <= 6.0, (clock.now, _state(run))
    assert "--max-time budget" in capsys.readouterr().err
    st = _state(run)
    # 5 steps (2.5 s) and the stop's checkpoint (2 files, 2 s): step 6 would bring the phase boundary's
    # checkpoint (3 files) due before the stop's, 8 s in all
    assert st["status"] == "stopped" and st["global_step"] == 5
    monkeypatch.undo()
    assert cli(["train", "--resume", str(run)]) == 0
    assert _state(run)["status"] == "complete"
    w0, w1 = _weights(reference / "final.safetensors"), _weights(run / "final.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


@pytest.mark.slow
def test_checkpoint_weights_follow_the_run(workdir, monkeypatch, capsys):
    """checkpoint.weights: the latest weights after every checkpoint, also when --max-time stops the run
    (no final.safetensors then), with the run's status and Phase-II steps in the provenance."""
    from cddfuse.models.weights import load_weights
    from cddfuse.train.trainer import load_checkpoint

    run, latest = workdir["root"] / "run_weights", workdir["root"] / "out" / "latest.safetensors"
    common = ["--data", str(workdir["cache"]), "--no-tensorboard", "--set", "log.image_every_steps=0",
              "--set", f"checkpoint.weights={latest}"]
    _VirtualTime(monkeypatch, step_s=0.4, write_s=0.0)  # (steps of 0.4 s whatever the machine's load)
    assert cli(["train", "--config", str(workdir["cfg"]), "--run-dir", str(run), "--max-time", "5"] + common) == 0
    assert "--max-time budget" in capsys.readouterr().err
    st = _state(run)
    assert st["status"] == "stopped" and 0 < st["global_step"] < TOTAL_STEPS
    assert not (run / "final.safetensors").exists()
    _, info = load_weights(latest)
    prov = info.provenance
    assert prov["status"] == "stopped" and prov["steps"] == st["global_step"] and prov["total_steps"] == TOTAL_STEPS
    assert prov["phase2_steps"] == max(0, st["global_step"] - 6)  # Phase I: 2 epochs of 3 steps
    ck = load_checkpoint(run)
    w = _weights(latest)
    assert all(torch.equal(w[k], ck["model"][k]) for k in w)

    monkeypatch.undo()
    assert cli(["train", "--resume", str(run)]) == 0
    _, info = load_weights(latest)
    assert info.provenance["status"] == "complete" and info.provenance["steps"] == TOTAL_STEPS
    assert info.provenance["phase2_steps"] == 6 and info.task == "ivf" and info.residual == "vis"
    final, w = _weights(run / "final.safetensors"), _weights(latest)
    assert all(torch.equal(final[k], w[k]) for k in final)


def _train_cmd(cfg: Path, cache: Path, run: Path, *extra: str):
    return [sys.executable, "-m", "cddfuse.cli.main", "train", "--config", str(cfg), "--data", str(cache),
            "--run-dir", str(run), "--no-tensorboard", "--set", "log.image_every_steps=0", *extra]


# `cddfuse train` in a subprocess that, once the checkpoint after step 4 is written, says so on stdout and
# waits there (inside Phase I): the SIGKILL lands at a known step, however busy the machine.
_PAUSE_AFTER_STEP_4 = """
import time
from cddfuse.train.trainer import Trainer

save = Trainer.save_checkpoint

def paused(self, *args, **kwargs):
    path = save(self, *args, **kwargs)
    if self.state.global_step == 4:
        print("checkpoint after step 4 written", flush=True)
        time.sleep(3600)
    return path

Trainer.save_checkpoint = paused
"""


@pytest.mark.slow
def test_sigkill_mid_phase_then_resume_is_bit_identical(workdir):
    cfg, cache, root = workdir["cfg"], workdir["cache"], workdir["root"]
    ref = root / "run_kill_ref"
    subprocess.run(_train_cmd(cfg, cache, ref), check=True, env=subprocess_env(), capture_output=True, timeout=300)
    run = root / "run_killed"
    proc = subprocess.Popen(patched_cli(_PAUSE_AFTER_STEP_4, *_train_cmd(cfg, cache, run)[3:]),
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "checkpoint after step 4 written", "the run ended early"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    st = _state(run)
    assert st["status"] == "running" and st["global_step"] == 4 and st["phase"] == 1
    assert not (run / "final.safetensors").exists()
    subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "train", "--resume", str(run)], check=True,
                   env=subprocess_env(), capture_output=True, timeout=300)
    w_ref, w_run = _weights(ref / "final.safetensors"), _weights(run / "final.safetensors")
    assert w_ref.keys() == w_run.keys()
    assert all(torch.equal(w_ref[k], w_run[k]) for k in w_ref), "resumed weights differ from the uninterrupted run"


def _losses_from_log(text: str):
    return [float(m.group(1)) for m in re.finditer(r"step \d+/\d+ loss ([0-9.eE+-]+)", text)]


@pytest.mark.slow
def test_two_ranks_follow_the_single_process_trajectory(workdir):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    cfg, cache, root = workdir["cfg"], workdir["cache"], workdir["root"]
    common = ["--batch-size", "8", "--set", "train.threads=1", "--set", "checkpoint.every_steps=0",
              "--set", "train.micro_batch=2"]  # 4 chunks vs 2 chunks per rank, with the pre-pass
    one = root / "run_1x8"
    p1 = subprocess.run(_train_cmd(cfg, cache, one, *common), env=subprocess_env(), capture_output=True, text=True,
                        timeout=300, check=True)
    two = root / "run_2x4"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "cddfuse.cli.main"]
    cmd += _train_cmd(cfg, cache, two, *common)[3:]
    p2 = subprocess.run(cmd, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "global batch 8 on 2 process(es)" in p2.stderr
    l1, l2 = _losses_from_log(p1.stderr), _losses_from_log(p2.stderr)
    assert len(l1) == len(l2) == TOTAL_STEPS
    assert l1 == pytest.approx(l2, rel=1e-4)
    w1, w2 = _weights(one / "final.safetensors"), _weights(two / "final.safetensors")
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < 1e-5, worst


@pytest.mark.parametrize("phase", [1, 2])
def test_micro_batches_give_the_full_batch_step(workdir, phase):
    """Gradient accumulation over chunks of 1 pair (with the decomposition loss at the batch-mean
    correlations) takes the same optimisation step as the whole batch at once."""
    from cddfuse.train import config as C
    from cddfuse.train.trainer import Trainer

    steps = {}
    for mb in (1, 3, 6):
        cfg = C.load_config(workdir["cfg"])
        C.apply_overrides(cfg, [f"data.cache={workdir['cache']}", f"train.micro_batch={mb}", "train.batch_size=6"])
        t = Trainer(cfg, workdir["root"] / f"unused_{mb}")
        g = torch.Generator().manual_seed(phase)
        a, b = torch.rand(6, 1, 32, 32, generator=g), torch.rand(6, 1, 32, 32, generator=g)
        parts, _ = t.train_step(a, b, phase)
        steps[mb] = (parts, {k: v.clone() for k, v in t.model.state_dict().items()})
    for mb in (1, 3):
        for k, v in steps[6][1].items():
            assert torch.allclose(v, steps[mb][1][k], rtol=0, atol=2e-6), (mb, k)
        for k, v in steps[6][0].items():
            assert torch.allclose(v, steps[mb][0][k], rtol=1e-5, atol=1e-6), (mb, k)


def test_lazy_hdf5_cache(workdir, monkeypatch):
    from cddfuse.train import config as C
    from cddfuse.train import datasets as DS

    cfg = C.load_config(workdir["cfg"])
    C.apply_overrides(cfg, [f"data.cache={workdir['cache']}"])
    eager, desc = DS.build_dataset(cfg)
    monkeypatch.setattr(DS, "LAZY_H5_BYTES", 0)
    lazy, desc_lazy = DS.build_dataset(cfg)
    assert isinstance(lazy, DS.LazyH5PatchDataset) and len(lazy) == len(eager) == desc["samples"]
    assert desc_lazy["stems_sha1"] == desc["stems_sha1"]
    for i in (0, len(eager) - 1):
        assert torch.equal(lazy[i][0], eager[i][0]) and torch.equal(lazy[i][1], eager[i][1])
    loader = torch.utils.data.DataLoader(lazy, batch_size=4, num_workers=2)
    first = next(iter(loader))
    assert torch.equal(first[0][1], eager[1][0])


@pytest.mark.slow
def test_random_crop_mode_medical_run(tmp_path, capsys):
    """Random-crop mode from a cache of whole images, medical task, residual `sum`."""
    from cddfuse.models.weights import load_weights

    a, b = link_pairs(tmp_path, 0, 3, "Harvard/MRI_PET", ("PET", "MRI"))
    cache = tmp_path / "crops.npz"
    assert cli(["prepare", str(a), str(b), "-o", str(cache), "--mode", "random-crop", "--crop-size", "48", "-q"]) == 0
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CONFIG))
    run = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--data", str(cache), "--run-dir", str(run), "--task", "mif",
            "--residual", "sum", "--set", "data.mode=random_crop", "--set", "data.crop_size=48",
            "--set", "data.crops_per_image=2", "--batch-size", "2", "--epochs", "1", "1", "--no-tensorboard"]
    assert cli(args + ["--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["phase2"]["residual"] == "sum" and printed["data"]["crops_per_image"] == 2
    assert cli(args) == 0
    _, info = load_weights(run / "final.safetensors")
    assert info.task == "mif" and info.residual == "sum"
    assert info.provenance["data"]["mode"] == "random_crop" and info.provenance["data"]["samples"] == 6
    assert info.provenance["steps"] == 6  # 3 steps (6 crops / batch 2) x 2 epochs
    assert cli(["train", "--config", str(cfg), "--data", str(cache), "--run-dir", str(tmp_path / "run2"),
                "--set", "data.mode=random_crop", "--set", "data.crop_size=300"]) == 1
    assert "smaller than data.crop_size=300" in capsys.readouterr().err
