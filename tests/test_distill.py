"""``cddfuse distill`` end to end on real pairs with a tiny teacher: targets equal the teacher's fused
luminance, a run writes loadable lite weights with provenance, the cache is reused and repaired,
SIGKILL + --resume reaches bit-identical weights, --max-time stops cleanly, bad inputs are one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cddfuse.cli.main import main as cli

from .helpers import link_pairs, patched_cli, subprocess_env

STEPS = 8


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("distill")
    a, b = link_pairs(root / "train", 0, 3)
    va, vb = link_pairs(root / "val", 100, 2)
    return {"root": root, "a": a, "b": b, "va": va, "vb": vb, "teacher": tiny_weights, "cache": root / "cache"}


def _args(w: dict, run: Path, *extra: str) -> list[str]:
    return ["distill", "--a", str(w["a"]), "--b", str(w["b"]), "--val-a", str(w["va"]), "--val-b", str(w["vb"]),
            "--teacher", str(w["teacher"]), "--task", "ivf", "--cache-dir", str(w["cache"]), "--run-dir", str(run),
            "--steps", str(STEPS), "--batch-size", "2", "--threads", "1", "--checkpoint-every", "3", "--no-progress",
            "--no-tensorboard", "--set", "data.crop_size=48", "--set", "val.every_steps=4",
            "--set", "optim.warmup_steps=2", "--set", "model.width=4", "--set", "model.head_width=4", *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def reference_run(work):
    run = work["root"] / "ref"
    assert cli(_args(work, run)) == 0
    return run


@pytest.mark.slow
def test_run_writes_lite_weights_with_provenance(work, reference_run):
    from cddfuse.models.weights import load_lite_weights
    from cddfuse.train.distill_cache import file_sha256

    st = json.loads((reference_run / "state.json").read_text())
    assert st["status"] == "complete" and st["step"] == STEPS
    model, info = load_lite_weights(reference_run / "final.safetensors")
    assert info.architecture == "lite" and info.task == "ivf" and info.residual == "vis"
    prov = info.provenance
    assert prov["teacher"]["sha256"] == file_sha256(work["teacher"]) and prov["steps"] == STEPS
    assert prov["data"]["pairs"] == 3 and prov["data"]["val_pairs"] == 2 and prov["hardware"]
    assert info.config.width == 4 and info.config.head_width == 4
    lines = [json.loads(x) for x in (reference_run / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, STEPS]
    best = min(lines, key=lambda r: -r["psnr"])
    _, best_info = load_lite_weights(reference_run / "best.safetensors")
    assert best_info.provenance["steps"] == best["step"]
    # the student moved away from its initialisation (the mean rule) towards the teacher
    from cddfuse.models.lite import CDDFuseLite

    torch.manual_seed(0)
    init = CDDFuseLite(info.config).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_cache_targets_are_the_teachers_fused_luminance(work, reference_run):
    """Every cached target is what `Fuser(weights=teacher)` hands to min-max normalisation."""
    from cddfuse.fusion.fuser import Fuser
    from cddfuse.train.data import find_pairs
    from cddfuse.train.distill_cache import TeacherCache, resolve_teacher

    cache = TeacherCache(work["cache"], resolve_teacher(str(work["teacher"]), "ivf"))
    fuser = Fuser(weights=work["teacher"], task="ivf", device="cpu")
    pairs = find_pairs(work["a"], work["b"])
    for stem, pa, pb in pairs:
        tr = cache.read(cache.item_path(pa, pb))
        assert tr is not None and tr.stem == stem
        np.testing.assert_allclose(tr.t, fuser.fuse_luminance(tr.a, tr.b), rtol=0, atol=1e-6)
    assert cache.repaired == 0


def test_second_run_reuses_the_cache(work, reference_run, capsys):
    run = work["root"] / "again"
    assert cli(_args(work, run, "--steps", "2")) == 0
    err = capsys.readouterr().err
    assert "0 computed, 3 reused" in err and "0 computed, 2 reused" in err


@pytest.mark.slow
def test_damaged_cache_item_is_detected_and_recomputed(work, reference_run, capsys):
    from cddfuse.train.data import find_pairs
    from cddfuse.train.distill_cache import TeacherCache, resolve_teacher

    cache = TeacherCache(work["cache"], resolve_teacher(str(work["teacher"]), "ivf"))
    _, pa, pb = find_pairs(work["a"], work["b"])[1]
    item = cache.item_path(pa, pb)
    good = cache.read(item)
    assert good is not None
    data = bytearray(item.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the arrays
    item.write_bytes(bytes(data))
    run = work["root"] / "repaired"
    assert cli(_args(work, run, "--steps", "1")) == 0
    err = capsys.readouterr().err
    assert "is damaged" in err and "1 computed, 2 reused, 1 repaired" in err
    again = cache.read(item)
    assert again is not None and np.array_equal(again.t, good.t)


# `cddfuse distill` in a subprocess that SIGKILLs itself as it is about to start step 6 (step 5 done, the
# last checkpoint after step 3): the kill lands at a known step, however busy the machine.
_KILL_AFTER_STEP_5 = """
import os, signal
from cddfuse.train.distill import Distiller

step = Distiller._train_step

def killed(self, *args, **kwargs):
    if self.step == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)

Distiller._train_step = killed
"""


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(work, reference_run):
    run = work["root"] / "killed"
    proc = subprocess.run(patched_cli(_KILL_AFTER_STEP_5, *_args(work, run)), env=subprocess_env(),
                          capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    st = json.loads((run / "state.json").read_text())
    assert st["status"] == "running" and st["step"] == 3  # the checkpoint before the kill
    assert not (run / "final.safetensors").exists()
    proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "distill", "--resume", str(run)],
                          env=subprocess_env(), capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    ref, got = _weights(reference_run / "final.safetensors"), _weights(run / "final.safetensors")
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed weights differ from the uninterrupted run"


def test_max_time_stops_cleanly_and_resumes(work, capsys):
    run = work["root"] / "budget"
    assert cli(_args(work, run, "--max-time", "0.001")) == 0  # too short for any step: stops at once
    st = json.loads((run / "state.json").read_text())
    assert st["status"] == "stopped" and st["step"] == 0
    assert "Continue with: cddfuse distill --resume" in capsys.readouterr().err
    assert cli(["distill", "--resume", str(run), "--set", "train.steps=2"]) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 2


def test_existing_run_and_bad_settings_are_one_line_usage_errors(work, reference_run, capsys):
    assert cli(_args(work, reference_run)) == 2
    assert "already holds a distillation run" in capsys.readouterr().err
    assert cli(_args(work, work["root"] / "x", "--set", "model.widht=3")) == 2
    err = capsys.readouterr().err
    assert "did you mean model.width" in err and err.count("\n") == 1
    assert cli(["distill", "--resume", str(reference_run), "--set", "optim.lr=1"]) == 2
    assert "cannot change optim.lr when resuming" in capsys.readouterr().err


def test_lite_weights_are_refused_as_teacher(work, reference_run, capsys):
    args = _args(work, work["root"] / "lite_teacher")
    args[args.index("--teacher") + 1] = str(reference_run / "final.safetensors")
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert "is CDDFuse-lite weights; the teacher must be exact CDDFuse weights" in err and err.count("\n") == 1


def test_bf16_is_refused_on_a_cpu_without_it(work, capsys):
    from cddfuse.engine.cpu import bf16_feature

    if bf16_feature() is not None:
        pytest.skip(f"this CPU has {bf16_feature()}: bf16 is allowed here")
    assert cli(_args(work, work["root"] / "bf16", "--bf16", "--device", "cpu")) == 2
    err = capsys.readouterr().err
    assert "needs AMX or AVX512-BF16" in err and err.count("\n") == 1


def test_teacher_subset_with_fusion_only_pairs(work, reference_run, capsys):
    """data.teacher_every=2: the teacher fuses pairs 0 and 2 (cached already), pair 1 trains with the
    fusion loss only; both losses are logged and the weights say so."""
    from cddfuse.models.weights import load_lite_weights

    run = work["root"] / "hybrid"
    assert cli(_args(work, run, "--steps", "3", "--set", "data.teacher_every=2",
                     "--set", "train.fusion_batch_size=2", "--set", "log.every_steps=1")) == 0
    err = capsys.readouterr().err
    assert "teacher cache (training pairs): 2/2 ready (0 computed, 2 reused" in err
    assert "(+1 with the fusion loss only)" in err and "fusion_only" in err
    prov = load_lite_weights(run / "final.safetensors")[1].provenance
    assert prov["data"]["pairs"] == 2 and prov["data"]["fusion_only_pairs"] == 1
    assert cli(_args(work, work["root"] / "bad_hybrid", "--set", "train.fusion_batch_size=2")) == 2
    assert "needs data.teacher_every > 1" in capsys.readouterr().err
