"""What the commands write to stderr when it is a log file, not a terminal: no progress bars redrawn with
carriage returns (prepare, train, folder fusion, bench, eval), the plain lines instead."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cddfuse import data

TINY = {
    "task": "ivf", "seed": 0, "device": "cpu",
    "model": {"dim": 8, "num_heads": 2, "encoder_blocks": 1, "decoder_blocks": 1, "encoder_inn_layers": 1},
    "data": {"patch_size": 32, "stride": 64, "workers": 0},
    "train": {"batch_size": 2, "max_steps_per_epoch": 2, "threads": 1},
    "phase1": {"epochs": 1}, "phase2": {"epochs": 1},
    "checkpoint": {"every_steps": 0},
    "log": {"every_steps": 1, "image_every_steps": 0, "tensorboard": False},  # progress: the default (on)
}


def _run_logged(log: Path, *args: str) -> str:
    """Run ``cddfuse ARGS`` with stderr going to the file ``log``; returns what it wrote there."""
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", *args], stdout=subprocess.DEVNULL, stderr=f,
                           timeout=600, env=dict(os.environ, COLUMNS="100"))
    text = log.read_bytes().decode()  # (read_text() would turn carriage returns into newlines)
    assert r.returncode == 0, text[-3000:]
    return text


def _sample_folders(root: Path) -> tuple[Path, Path]:
    ir, vi = root / "ir", root / "vi"
    ir.mkdir(parents=True)
    vi.mkdir()
    for name in ("tno", "roadscene"):
        first, second = data.paths(name)
        (ir / f"{name}{first.suffix}").symlink_to(first)
        (vi / f"{name}{second.suffix}").symlink_to(second)
    return ir, vi


@pytest.mark.slow
def test_no_carriage_returns_in_log_files(tmp_path):
    ir, vi = _sample_folders(tmp_path / "set")
    cache, fused = tmp_path / "cache.h5", tmp_path / "fused"

    err = _run_logged(tmp_path / "prepare.log", "prepare", str(ir), str(vi), "-o", str(cache), "--patch-size", "32",
                      "--stride", "64")
    assert "\r" not in err and cache.is_file()

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    err = _run_logged(tmp_path / "train.log", "train", "--config", str(tmp_path / "tiny.yaml"), "--data", str(cache),
                      "--run-dir", str(tmp_path / "run"))
    assert "\r" not in err
    assert "PI ep 1/2 step 1/4 loss" in err and "PII ep 2/2 step 4/4 loss" in err  # the plain lines instead
    assert "done: 4 steps" in err

    err = _run_logged(tmp_path / "fuse.log", "fuse", str(ir), str(vi), "-o", str(fused), "--method", "max")
    assert "\r" not in err and sorted(p.name for p in fused.iterdir()) == ["roadscene.png", "tno.png"]

    err = _run_logged(tmp_path / "eval.log", "eval", str(ir), str(vi), str(fused), "--metrics", "EN,SD")
    assert "\r" not in err

    err = _run_logged(tmp_path / "bench.log", "bench", str(tmp_path / "set"), "--method", "max",
                      "--task", "ivf")
    assert "\r" not in err
