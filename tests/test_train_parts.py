"""The trainer's parts on their own: model defaults in the config, checkpoint contents and RNG state,
validation through the inference engine, the time budget. Synthetic data and a tiny model (fast)."""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.models import CDDFuse, CDDFuseConfig
from cddfuse.train import checkpoint as ckpt
from cddfuse.train import config as C
from cddfuse.train.control import TimeBudget
from cddfuse.train.losses import LossWeights, phase2_loss
from cddfuse.train.state import TrainState
from cddfuse.train.validation import Validator, _fuse

from .helpers import TINY_SIZES

#: The keys of a checkpoint as written since version 1; older checkpoints hold exactly these.
CHECKPOINT_KEYS = {
    "format", "version", "status", "config", "data", "model", "optimizers", "schedulers", "epoch", "step_in_epoch",
    "global_step", "phase", "steps_per_epoch", "data_order", "world_size", "rng", "train_time_s", "sessions", "saved",
    "torch",
}


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _tiny_model(seed: int = 0) -> CDDFuse:
    torch.manual_seed(seed)
    return CDDFuse(CDDFuseConfig(**TINY_SIZES)).eval()


def _write_pairs(root: Path, n: int, size: tuple[int, int] = (48, 64)) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    da, db = root / "a", root / "b"
    da.mkdir(parents=True)
    db.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(da / f"p{i}.png"), (rng.random(size) * 200 + 30).astype(np.uint8))
        cv2.imwrite(str(db / f"p{i}.png"), (rng.random(size) * 200 + 30).astype(np.uint8))
    return da, db


def _tiny_cfg(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    da, db = _write_pairs(tmp_path / "train", 2)
    cfg = C.default_config()
    C.merge(cfg, {"device": "cpu", "model": dict(TINY_SIZES), "data": {"a": str(da), "b": str(db), "patch_size": 32,
                                                                     "stride": 16},
                  "train": {"batch_size": 2, "max_steps_per_epoch": 2, "threads": 1},
                  "phase1": {"epochs": 1}, "phase2": {"epochs": 1},
                  "log": {"tensorboard": False, "progress": False}})
    C.merge(cfg, overrides)
    return C.validate(cfg)


# ------------------------------------------------------------------------------------ config
def test_model_defaults_are_cddfuse_config():
    sizes = {k: v for k, v in asdict(CDDFuseConfig()).items() if k not in ("in_channels", "out_channels")}
    assert C.DEFAULTS["model"] == {**sizes, "init": None}
    assert list(C.DEFAULTS["model"]) == [*sizes, "init"]  # the printed order
    printed = ("model: {dim: 64, num_heads: 8, encoder_blocks: 4, decoder_blocks: 4, ffn_expansion: 2.0,\n"
               "  base_ffn_expansion: 1.0, encoder_inn_layers: 3, fuse_inn_layers: 1, inn_expansion: 2.0,\n"
               "  init: null}\n")
    assert printed in C.dump_config(C.default_config())  # as printed when the section was written out
    cfg = C.default_config()
    with pytest.raises(UsageError, match="did you mean model.dim"):
        C.apply_overrides(cfg, ["model.dimm=32"])
    for bad, key in (("model.encoder_blocks=1.5", "model.encoder_blocks"),
                     ("model.inn_expansion=0", "model.inn_expansion")):
        cfg = C.default_config()
        C.merge(cfg, {"data": {"cache": "x.h5"}})
        C.apply_overrides(cfg, [bad])
        with pytest.raises(UsageError, match=key):
            C.validate(cfg)


# -------------------------------------------------------------------------------- checkpoint
def test_rng_state_roundtrip():
    st = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    ckpt.set_rng_state(st)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_checkpoint_keys_save_load_and_restore(tmp_path):
    from cddfuse.train.trainer import Trainer

    cfg = _tiny_cfg(tmp_path)
    t = Trainer(cfg, tmp_path / "run")
    g = torch.Generator().manual_seed(0)
    t.train_step(torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g), 1)
    t.state.epoch, t.state.step_in_epoch, t.state.global_step = 0, 1, 1
    assert set(t.state_dict("running")) == CHECKPOINT_KEYS
    path = t.save_checkpoint(also="extra.pt")
    assert path == tmp_path / "run" / "checkpoints" / "last.pt" and (path.parent / "extra.pt").is_file()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "running" and state["global_step"] == 1 and state["total_steps"] == t.state.total_steps
    ck = ckpt.load_checkpoint(tmp_path / "run")
    assert ck["format"] == ckpt.CHECKPOINT_FORMAT and ck["_path"] == str(path)
    r = Trainer(cfg, tmp_path / "run", resume=ck)
    assert (r.state.epoch, r.state.step_in_epoch, r.state.global_step, r.state.sessions) == (0, 1, 1, 1)
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, r.model.state_dict()[k]), k
    assert r.state.optimizers["encoder"].state_dict()["state"]  # Adam moments came back
    with pytest.raises(UsageError, match="no training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "elsewhere")


def _tiny_state(cfg: dict[str, Any], seed: int, **position: Any) -> TrainState:
    model = _tiny_model(seed).train()
    opts = {p: torch.optim.Adam(getattr(model, p).parameters(), lr=1e-3) for p in C.PARTS}
    scheds = {p: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for p, o in opts.items()}
    return TrainState(cfg, {"samples": 8, "stems_sha1": "x", "mode": "patches"}, model, opts, scheds,
                      steps_per_epoch=3, global_batch=2, dataset_len=8, **position)


def test_checkpoint_of_a_train_state_without_a_trainer(tmp_path):
    """Checkpoints need only the TrainState: written, read back and restored into a fresh state, the
    weights, optimiser moments, schedules and position come back; other data or sizes are refused."""
    cfg = C.validate(C.merge(C.default_config(), {"data": {"cache": "x.h5"}, "model": dict(TINY_SIZES),
                                                  "phase1": {"epochs": 1}, "phase2": {"epochs": 1}}))
    st = _tiny_state(cfg, 0, epoch=1, step_in_epoch=2, global_step=5, train_time=7.0, sessions=1)
    st.model(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)).mean().backward()
    for p in C.PARTS:
        st.optimizers[p].step()
        st.schedulers[p].step()
    path = ckpt.write_checkpoint(st, tmp_path, "stopped", also="extra.pt", session_s=3.0)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["global_step"] == 5 and state["phase"] == st.phase == 2 and state["train_time_s"] == 10.0
    ck = ckpt.load_checkpoint(tmp_path)
    assert ck["_path"] == str(path) and (path.parent / "extra.pt").is_file() and ck["sessions"] == 2
    fresh = _tiny_state(cfg, 1)
    warnings: list[str] = []
    ckpt.restore_checkpoint(fresh, ck, warn=warnings.append)
    assert (fresh.epoch, fresh.step_in_epoch, fresh.global_step, fresh.train_time, fresh.sessions) == (1, 2, 5, 10.0, 2)
    for k, v in st.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k]), k
    assert fresh.schedulers["encoder"].get_last_lr() == st.schedulers["encoder"].get_last_lr()
    assert fresh.optimizers["decoder"].state_dict()["state"] and not warnings
    ckpt.restore_checkpoint(_tiny_state(cfg, 1, world_size=2), ck, warn=warnings.append)
    assert warnings and "not bit-identical" in warnings[0]
    other = _tiny_state(cfg, 1)
    other.steps_per_epoch = 4
    with pytest.raises(CDDFuseError, match="steps per epoch changed"):
        ckpt.restore_checkpoint(other, ck, warn=warnings.append)
    other = _tiny_state(cfg, 1)
    other.data_desc = {**other.data_desc, "samples": 9}
    with pytest.raises(CDDFuseError, match="training data differ"):
        ckpt.restore_checkpoint(other, ck, warn=warnings.append)


# -------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("residual", ["vis", "sum", "none"])
def test_engine_fuse_matches_the_module(residual):
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 1, 37, 53, generator=g), torch.rand(1, 1, 37, 53, generator=g)
    threads = torch.get_num_threads()
    with torch.no_grad():
        want = model(a, b, residual=residual)
        got = _fuse(model, a, b, residual)
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5
    assert torch.get_num_threads() == threads


def test_validator_means_and_outputs(tmp_path):
    model = _tiny_model().train()
    cfg = C.default_config()
    C.merge(cfg, {"val": {"a": "unused", "b": "unused", "metrics": []}, "phase2": {"residual": "sum"}})
    weights = LossWeights()
    warnings: list[str] = []
    v = Validator(cfg, weights, torch.device("cpu"), tmp_path, warn=warnings.append)
    rng = np.random.default_rng(0)
    v.pairs = [(f"p{i}", rng.random((40, 56), dtype=np.float32), rng.random((40, 56), dtype=np.float32))
               for i in range(2)]
    means = v.evaluate(model, 2)
    assert model.training  # back in training mode
    assert list(means) == ["fusion_loss"] and v.seconds > 0
    # the fusion loss of the module's output, as computed before the engine was used
    losses = []
    with torch.no_grad():
        model.eval()
        for _stem, a_np, b_np in v.pairs:
            a, b = torch.from_numpy(a_np)[None, None], torch.from_numpy(b_np)[None, None]
            f = model(a, b, residual="sum")
            fa, fb = model.encode(a)[:2], model.encode(b)[:2]
            losses.append(float(phase2_loss(a, b, fa, fb, f, weights)["fusion"]))
    assert means["fusion_loss"] == pytest.approx(float(np.mean(losses)), rel=1e-6, abs=1e-6)
    assert set(v.evaluate(model, 1)) == {"recon_psnr_a", "recon_psnr_b"}

    logged: list[tuple[str, float, int]] = []

    class Writer:
        def add_scalar(self, tag: str, value: float, step: int) -> None:
            logged.append((tag, value, step))

    lines: list[str] = []
    v.report(means, step=7, epoch=2, phase=2, writer=Writer(), echo=lines.append)  # type: ignore[arg-type]
    assert logged == [("val/fusion_loss", means["fusion_loss"], 7)]
    assert lines == [f"validation after epoch 2: fusion_loss {means['fusion_loss']:.4g}"]
    rec = json.loads((tmp_path / "validation.jsonl").read_text().splitlines()[-1])
    assert rec == {"step": 7, "epoch": 2, "phase": 2, "fusion_loss": means["fusion_loss"]}
    assert not warnings


# ------------------------------------------------------------------------------- time budget
def test_time_budget():
    assert not TimeBudget(None, None, checkpoint_s=1.0).short(extra_s=1e9)
    b = TimeBudget(time.monotonic() - 10.0, 30.0, checkpoint_s=2.0)  # ~20 s left
    assert not b.short()  # 1.5 * 2 + 1 s needed
    b.note_step(4.0)
    assert b.step_s == 4.0 and not b.short()  # + 1.25 * 4
    b.note_step(8.0)
    assert b.step_s == pytest.approx(5.2) and not b.short() and b.short(extra_s=10.0)  # 10.5 s, 20.5 s
    b.note_checkpoint(0.5)
    assert b.checkpoint_s == 1.0  # an estimate halves at most per checkpoint


def test_time_budget_keeps_time_for_the_exit():
    b = TimeBudget(0.0, 30.0, checkpoint_s=1.0)
    b.session_time = lambda: 10.0  # type: ignore[method-assign]  # 20 s left, whatever the clock
    assert not b.short(extra_s=16.0)  # 1.5 * 1 + 16 + 1 s for the exit
    b.note_startup(30.0)  # a slow start (a busy machine): a slow exit, a fifth of it
    assert b.exit_s == 6.0 and b.short(extra_s=16.0)
    b.note_startup(2.0)
    assert b.exit_s == 1.0
