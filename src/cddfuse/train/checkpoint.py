"""Resumable training checkpoints: what ``checkpoints/last.pt`` holds, how it is written and read back.

A checkpoint is one ``torch.save``-d dict (loadable with ``weights_only=True``):

* ``format`` / ``version`` (:data:`CHECKPOINT_FORMAT`, :data:`CHECKPOINT_VERSION`), ``status``
  (``running`` | ``stopped`` | ``complete``), the resolved ``config`` and the ``data`` description;
* ``model``, ``optimizers`` and ``schedulers`` (one per part) state dicts;
* the position: ``epoch``, ``step_in_epoch``, ``global_step``, ``phase``, ``steps_per_epoch`` and
  ``data_order`` (how the sampler orders the data, for people reading the file);
* ``rng``: the torch, numpy, Python (and CUDA) random states (:func:`rng_state`);
* bookkeeping: ``world_size``, ``train_time_s``, ``sessions``, ``saved``, ``torch``.

Files are written atomically (a crash leaves the previous checkpoint intact), by rank 0 only;
``state.json`` next to them is a small human-readable summary of the same position. The functions
here take the run's :class:`~cddfuse.train.state.TrainState`, not the trainer.
"""
from __future__ import annotations

import copy
import io
import json
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

import numpy as np
import torch

from .._fileutil import atomic_write_bytes
from ..errors import CDDFuseError, CheckpointError, UsageError

if TYPE_CHECKING:
    from .state import TrainState

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "load_checkpoint",
    "checkpoint_dict",
    "restore_checkpoint",
    "write_checkpoint",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "cddfuse-train-checkpoint"
CHECKPOINT_VERSION = 1


def load_checkpoint(path: os.PathLike[str] | str) -> dict[str, Any]:
    """Read a training checkpoint (``last.pt``, or a run directory holding one) written by the trainer."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise UsageError(f"{p}: no training checkpoint here (expected RUN_DIR or RUN_DIR/checkpoints/last.pt)")
    from ..models.weights import check_zip_bounds

    try:
        with open(p, "rb") as f:
            is_zip = f.read(4).startswith(b"PK\x03\x04")
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read: {e.strerror or e}") from None
    if is_zip:
        try:
            check_zip_bounds(p)
        except CheckpointError as e:
            raise CheckpointError(f"not a readable training checkpoint: {e}") from None
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        text = str(e)
        if "weights_only" in text or "Weights only" in text or type(e).__name__ == "UnpicklingError":
            # never PyTorch's advice to turn the check off: the file would run code
            raise CheckpointError(f"{p}: refused to load: the checkpoint holds more than tensors and plain values "
                                  "(code or other objects); nothing was run -- resume from a checkpoint that "
                                  "cddfuse wrote") from None
        first = (text.splitlines() or [type(e).__name__])[0].split(". ")[0][:200]
        raise CheckpointError(f"{p}: not a readable training checkpoint ({first})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a cddfuse training checkpoint")
    ck["_path"] = str(p)
    return ck


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The torch, numpy and Python random states (and CUDA's when in use), as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ----------------------------------------------------------------------------- write / restore
def checkpoint_dict(state: TrainState, status: str, session_s: float) -> dict[str, Any]:
    """Everything needed to continue the run exactly where ``state`` stands (see the module docstring);
    ``session_s``: seconds trained in this session so far."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "status": status,
        "config": copy.deepcopy(state.cfg),
        "data": copy.deepcopy(state.data_desc),
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizers": {k: o.state_dict() for k, o in state.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in state.schedulers.items()},
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "phase": state.phase,
        "steps_per_epoch": state.steps_per_epoch,
        "data_order": {
            "sampler": "DistributedSampler(shuffle, seed + epoch, interleaved ranks)",
            "seed": state.cfg["seed"],
            "epoch": state.epoch,
            "samples_done_in_epoch": state.step_in_epoch * state.global_batch,
            "dataset_len": state.dataset_len,
        },
        "world_size": state.world_size,
        "rng": rng_state(),
        "train_time_s": state.train_time + session_s,
        "sessions": state.sessions + 1,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": str(torch.__version__),
    }


def restore_checkpoint(state: TrainState, ck: dict[str, Any], warn: Callable[[str], None]) -> None:
    """Put the checkpoint ``ck`` back into ``state`` (built from the same config): weights, optimiser and
    scheduler states, position, RNG states. Refuses other data or another number of steps per epoch;
    ``warn`` says when the number of processes changed (same batches, not bit-identical)."""
    old, new = ck["data"], state.data_desc
    for key in ("samples", "stems_sha1", "mode"):
        if old.get(key) != new.get(key):
            raise CDDFuseError(
                f"the training data differ from the checkpoint's ({key}: {old.get(key)!r} then, "
                f"{new.get(key)!r} now); resume needs the same data"
            )
    if ck["steps_per_epoch"] != state.steps_per_epoch:
        raise CDDFuseError(
            f"steps per epoch changed ({ck['steps_per_epoch']} -> {state.steps_per_epoch}); resume with the "
            "same batch size and data"
        )
    if ck.get("world_size", 1) != state.world_size:
        warn(f"resuming a {ck.get('world_size', 1)}-process run with {state.world_size} processes: "
             "same batches, but not bit-identical")
    state.model.load_state_dict(ck["model"])  # copied into the parameters where they are (their device)
    for k, o in state.optimizers.items():
        o.load_state_dict(ck["optimizers"][k])
    for k, s in state.schedulers.items():
        s.load_state_dict(ck["schedulers"][k])
    state.epoch, state.step_in_epoch, state.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
    state.train_time = float(ck.get("train_time_s", 0.0))
    state.sessions = int(ck.get("sessions", 1))
    set_rng_state(ck["rng"])


def write_checkpoint(state: TrainState, run_dir: Path, status: str = "running", also: str | None = None, *,
                     session_s: float) -> Path:
    """Write ``run_dir/checkpoints/last.pt`` (and ``checkpoints/<also>``) and ``run_dir/state.json``,
    atomically; returns the path of ``last.pt``. ``session_s``: seconds trained in this session so far.
    Call it on one process (rank 0) only.

    Raises:
        CheckpointError: the files cannot be written (full disk, quota, permissions); the previous
            checkpoint is still there, whole.
    """
    dest = run_dir / "checkpoints" / "last.pt"
    buf = io.BytesIO()
    torch.save(checkpoint_dict(state, status, session_s), buf)
    data = buf.getvalue()
    try:
        atomic_write_bytes(dest, data)
        if also:
            atomic_write_bytes(dest.parent / also, data)
        _write_state_json(state, run_dir, status, session_s)
    except OSError as e:  # full disk, quota, permissions: the previous checkpoint is still there, whole
        raise CheckpointError(f"cannot write the checkpoint {dest}: {e.strerror or e}; the previous checkpoint is "
                              "kept -- free space and resume with --resume") from None
    return dest


def _write_state_json(state: TrainState, run_dir: Path, status: str, session_s: float) -> None:
    st = {
        "status": status, "global_step": state.global_step, "total_steps": state.total_steps,
        "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "total_epochs": state.total_epochs,
        "phase": state.phase,
        "train_time_s": round(state.train_time + session_s, 3),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_bytes(run_dir / "state.json", (json.dumps(st, indent=2) + "\n").encode())
