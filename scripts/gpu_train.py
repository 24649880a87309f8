"""One model of the GPU run (started by ``scripts/gpu_train.sh``, which describes the whole run).

1. Calibrate: build the trainer as ``cddfuse train`` will (data, model, the shipped weights), time
   one validation on the held-out pairs (the starting weights' scores), warm up a few steps of each
   phase, wait for the other model's process (so that both time the shared GPU together), then time
   ten steps of each phase (data, step and the trainer's per-step synchronisation; the median step,
   robust to a stray pause) and one checkpoint. Out of GPU memory, it tries again with half the
   micro-batch (``train.micro_batch``: the same gradient, in chunks).
2. Plan by time: of the seconds left before ``--deadline``, less building the trainer again, the
   final validation, the last checkpoints and the exit, ``--p1-fraction`` (default a quarter) goes to
   Phase I and the rest to Phase II, at the measured speeds, with a safety margin; the steps become
   epochs of at most one pass over the data (at least 24 epochs, so that the StepLR period,
   ``sched.step_epochs`` = a sixth of them, halves the rate about five times as in the paper).
3. Train with ``cddfuse train`` (in this process, so CUDA and the imports are paid once; cuDNN's
   algorithm search on, TF32 matrix products unless ``--no-tf32``: PyTorch's convolutions use TF32
   by default already), with the
   plan as ``--set`` overrides, ``--max-time`` as a safety net and ``checkpoint.weights`` pointing
   at ``OUT/<task>.safetensors``: the latest weights are there after every checkpoint, the last
   ones after the end (or after a ``--max-time`` stop; the provenance says which).
4. Write ``WORK/<task>/summary.json`` (plan, measured speeds, validation before and after).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from cddfuse.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gpu.yaml"
BASE_BATCH, BASE_LR = 8, 1e-4  # the paper's batch and rate; other batches get lr * sqrt(batch / 8)
MAX_MICRO_BATCH = 8  # pairs per forward/backward chunk on the GPU (~26 GB of activations at 128x128)
TINY = {  # GPU_TRAIN_TINY: a network and crops small enough for a CPU test of the whole script
    "model.dim": 8, "model.num_heads": 2, "model.encoder_blocks": 1, "model.decoder_blocks": 1,
    "model.encoder_inn_layers": 1, "model.fuse_inn_layers": 1, "data.crop_size": 32,
    "val.max_pairs": 2, "val.max_size": 64,
}


def _set_tf32_matmul(torch: Any) -> None:
    """TF32 for float32 matrix products, with PyTorch's current API where it has one (from 2.9;
    mixing it with the legacy ``allow_tf32`` flags can raise errors there)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "tf32"
    else:  # pragma: no cover - PyTorch < 2.9
        matmul.allow_tf32 = True


def _tf32_matmul(torch: Any) -> bool:
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return bool(matmul.fp32_precision == "tf32")
    return bool(matmul.allow_tf32)  # pragma: no cover - PyTorch < 2.9


def shipped_weights(task: str) -> Path:
    return ROOT / "src" / "cddfuse" / "weights" / f"cddfuse_{task}.safetensors"


def shipped_residual(task: str) -> str:
    """The residual mode recorded in the shipped weights of ``task`` (safetensors metadata)."""
    from safetensors import safe_open

    with safe_open(str(shipped_weights(task)), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("task") != task or not meta.get("residual"):
        raise SystemExit(f"gpu_train: {shipped_weights(task)} has task {meta.get('task')!r}, residual "
                         f"{meta.get('residual')!r}; expected task {task!r} and a residual mode")
    return meta["residual"]


def scaled_lr(batch: int) -> float:
    """The paper's rate (1e-4 at batch 8) scaled by the square root of the batch ratio (Adam)."""
    return BASE_LR * math.sqrt(batch / BASE_BATCH)


@dataclass
class Calibration:
    """What the calibration measured."""

    phase1_steps_per_s: float
    phase2_steps_per_s: float
    setup_s: float  # building the trainer (data, model, initial weights): `cddfuse train` does it again
    checkpoint_s: float  # one checkpoint, with the weights export
    validation_s: float  # one validation on the held-out pairs (0 without them)


@dataclass
class Plan:
    """Step counts and intervals for `cddfuse train`, from the time left and the calibration."""

    steps_per_epoch: int
    phase1_epochs: int
    phase2_epochs: int
    step_epochs: int
    checkpoint_every: int
    log_every: int
    image_every: int
    max_time_s: float  # --max-time: the safety net
    expected_s: float  # planned duration of `cddfuse train`, start to exit

    @property
    def phase1_steps(self) -> int:
        return self.phase1_epochs * self.steps_per_epoch

    @property
    def phase2_steps(self) -> int:
        return self.phase2_epochs * self.steps_per_epoch

    def overrides(self) -> list[str]:
        e = self.phase1_epochs + self.phase2_epochs
        return [f"train.max_steps_per_epoch={self.steps_per_epoch}", f"phase1.epochs={self.phase1_epochs}",
                f"phase2.epochs={self.phase2_epochs}", f"sched.step_epochs={self.step_epochs}",
                f"checkpoint.every_steps={self.checkpoint_every}", f"log.every_steps={self.log_every}",
                f"log.image_every_steps={self.image_every}", f"val.every_epochs={e}"]


def make_plan(time_left_s: float, cal: Calibration, data_steps_per_epoch: int, *, p1_fraction: float = 0.25,
              safety: float = 0.92, min_epochs: int = 24, lr_periods: int = 6, checkpoint_interval_s: float = 30.0,
              log_interval_s: float = 5.0, exit_s: float = 3.0, max_steps: int | None = None) -> Plan:
    """Split ``time_left_s`` seconds (from now until the run must have exited) into Phase I and II steps.

    Reserved first: building the trainer again (1.2 x ``setup_s``), the final validation (1.3 x),
    the phase-boundary, final and periodic checkpoints and the exit. Of the rest, ``safety`` x
    ``p1_fraction`` goes to Phase I and ``safety`` x (1 - ``p1_fraction``) to Phase II at the
    measured speeds. An epoch is at most one pass over the data and short enough for ``min_epochs``
    epochs; the StepLR period is ``1 / lr_periods`` of the epochs (the paper: 120 epochs, period 20).
    Each phase gets at least one epoch. ``--max-time`` is the time left less the exit, the final
    validation and a checkpoint, so that a run slower than measured still stops with its weights.
    ``max_steps`` caps the steps of both phases together (shared in the same proportion): a run
    whose length does not depend on the machine's speed, once the time suffices (the CPU test).
    """
    if not 0 <= p1_fraction < 1:
        raise ValueError(f"p1_fraction must be in [0, 1), got {p1_fraction}")
    r1, r2 = cal.phase1_steps_per_s, cal.phase2_steps_per_s
    end_s = 1.3 * cal.validation_s + 2 * cal.checkpoint_s + exit_s
    setup_s = 1.2 * cal.setup_s
    avail = time_left_s - setup_s - end_s
    if avail <= 0:
        raise ValueError(f"no time to train: {time_left_s:.1f} s left, {setup_s + end_s:.1f} s needed around it")
    ck_interval = min(checkpoint_interval_s, max(1.0, avail / 6))
    n_ck = math.floor(avail / ck_interval) + 1  # periodic ones and the phase boundary
    train_s = max(0.0, avail - n_ck * cal.checkpoint_s) * safety
    s1 = max(1, math.floor(p1_fraction * train_s * r1)) if p1_fraction > 0 else 0
    s2 = max(1, math.floor((1 - p1_fraction) * train_s * r2))
    if max_steps is not None and s1 + s2 > max_steps:
        scale = max_steps / (s1 + s2)
        s1, s2 = (max(1, math.floor(s1 * scale)) if s1 else 0), max(1, math.floor(s2 * scale))
    per_epoch = max(1, min(data_steps_per_epoch, (s1 + s2) // min_epochs))
    e1 = max(1, round(s1 / per_epoch)) if s1 else 0  # (rounding: off by at most 1/48 of the steps)
    e2 = max(1, round(s2 / per_epoch))
    total = (e1 + e2) * per_epoch
    expected = (setup_s + e1 * per_epoch / r1 + e2 * per_epoch / r2 + n_ck * cal.checkpoint_s + end_s)
    return Plan(
        steps_per_epoch=per_epoch, phase1_epochs=e1, phase2_epochs=e2,
        step_epochs=max(1, math.ceil((e1 + e2) / lr_periods)),
        checkpoint_every=max(1, round(ck_interval * r2)), log_every=max(1, round(log_interval_s * r2)),
        image_every=max(1, total // 4),
        max_time_s=time_left_s - exit_s - 1.3 * cal.validation_s - cal.checkpoint_s,
        expected_s=expected,
    )


def base_overrides(a: argparse.Namespace, residual: str, threads: int, weights_out: Path) -> list[str]:
    """The run's settings other than the plan (task, data, init, residual, batch, rate, device)."""
    d = a.data
    batch = a.batch or (2 if a.tiny else BASE_BATCH)
    lr = a.lr or scaled_lr(batch)
    o = {
        "name": f"gpu_{a.task}", "task": a.task, "device": a.device, "seed": a.seed,
        "data.a": str(d / "train" / "a"), "data.b": str(d / "train" / "b"),
        "val.a": str(d / "val" / "a"), "val.b": str(d / "val" / "b"),
        "phase2.residual": residual, "train.batch_size": batch, "optim.lr": lr, "train.threads": threads,
        "checkpoint.weights": str(weights_out),
        "train.precision": "bf16" if a.bf16 else "fp32",
    }
    if batch > MAX_MICRO_BATCH and a.device.startswith("cuda"):
        o["train.micro_batch"] = MAX_MICRO_BATCH  # same gradient, bounded memory (two processes share the GPU)
    if a.tiny:
        o.update(TINY)
    elif a.init == "shipped":
        o["model.init"] = str(shipped_weights(a.task))
    return [f"{k}={json.dumps(v)}" for k, v in o.items()]


def resolve(overrides: list[str]) -> dict[str, Any]:
    """The configuration ``cddfuse train --config configs/gpu.yaml --set ...`` resolves."""
    from cddfuse.train import config as C

    cfg = C.load_config(CONFIG)
    C.apply_overrides(cfg, overrides)
    return C.validate(cfg)


def wait_for_peers(folder: Path, name: str, peers: int, timeout_s: float) -> float:
    """Mark ``name`` (``ROUND.TASK``) ready in ``folder`` and wait (at most ``timeout_s``) until ``peers``
    processes are ready for the same round; returns the seconds waited."""
    t0 = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ready").touch()
    round_ = name.split(".")[0]
    while len(list(folder.glob(f"{round_}.*.ready"))) < peers and time.monotonic() - t0 < timeout_s:
        time.sleep(0.05)
    return time.monotonic() - t0


def calibrate(cfg: dict[str, Any], run_dir: Path, *, warmup: int, steps: int, log: Callable[[str], None],
              barrier: Callable[[str], None]) -> tuple[Calibration, dict[str, float], int, int]:
    """Measure speeds with a throw-away trainer; returns (calibration, validation means of the starting
    weights, data steps per epoch, peak GPU memory in bytes).

    First one validation (of the starting weights: the baseline), then a few steps of each phase to
    warm up (CUDA kernels, cuDNN's algorithm search); then ``barrier`` waits for the processes that
    share the device, so that all of them time their steps together; then one checkpoint."""
    import torch

    from cddfuse.train.trainer import Trainer

    t0 = time.monotonic()
    trainer = Trainer(cfg, run_dir, echo=log)
    setup_s = time.monotonic() - t0
    log(f"trainer built in {setup_s:.1f} s: {len(trainer.dataset)} training samples, {trainer.state.steps_per_epoch} "
        f"steps per epoch at batch {trainer.state.global_batch}, device {trainer.device}")
    try:
        cal, baseline, peak = _measure(trainer, setup_s, warmup, steps, log, barrier)
        return cal, baseline, trainer.state.steps_per_epoch, peak
    finally:
        del trainer  # free the GPU memory for the real run
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _measure(t: Trainer, setup_s: float, warmup: int, steps: int, log: Callable[[str], None],
             barrier: Callable[[str], None]) -> tuple[Calibration, dict[str, float], int]:
    import torch
    from torch.utils.data import default_collate

    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    rng = torch.Generator().manual_seed(0)

    def run_steps(phase: int, n: int) -> list[float]:
        """Seconds of each of ``n`` steps (data, step and the per-step synchronisation, as the trainer does)."""
        times = []
        sync()
        for _ in range(n):
            t1 = time.monotonic()
            idx = torch.randint(len(t.dataset), (t.local_batch,), generator=rng).tolist()
            a, b = default_collate([t.dataset[j] for j in idx])
            parts, _ = t.train_step(a.to(t.device, non_blocking=True), b.to(t.device, non_blocking=True), phase)
            float(parts["total"])  # the trainer checks every loss: one synchronisation per step
            times.append(time.monotonic() - t1)
        return times

    baseline: dict[str, float] = {}
    val_s = 0.0
    if t.validator.enabled:
        t1 = time.monotonic()
        baseline = t.validator.evaluate(t.model, 2)
        val_s = time.monotonic() - t1
        log(f"validation of the starting weights ({val_s:.1f} s): "
            + ", ".join(f"{k} {v:.4g}" for k, v in baseline.items()))
    warm_s = sum(run_steps(1, warmup)) + sum(run_steps(2, warmup))
    barrier("warm")
    rates = [1 / statistics.median(run_steps(phase, steps)) for phase in (1, 2)]  # robust to a stray pause
    t1 = time.monotonic()
    t.save_checkpoint()
    ck_s = time.monotonic() - t1
    peak = torch.cuda.max_memory_allocated(t.device) if t.device.type == "cuda" else 0
    cal = Calibration(rates[0], rates[1], setup_s, ck_s, val_s)
    log(f"calibration: warm-up {warm_s:.1f} s, Phase I {rates[0]:.2f} steps/s, Phase II {rates[1]:.2f} steps/s, "
        f"checkpoint {ck_s:.2f} s" + (f", peak GPU memory {peak / 2**30:.1f} GiB" if peak else ""))
    return cal, baseline, peak


def _measured_rates(tb_dir: Path, phase1_steps: int) -> dict[str, float]:
    """Steps per second of each phase during the run, from the step times logged to TensorBoard
    (``perf/step_s``, sampled every ``log.every_steps``); empty when they cannot be read."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        acc.Reload()
        events = acc.Scalars("perf/step_s")
    except Exception:  # noqa: BLE001 - no TensorBoard, no events: the rates are a nicety
        return {}
    out = {}
    for name, sel in (("phase1", [e.value for e in events if e.step <= phase1_steps]),
                      ("phase2", [e.value for e in events if e.step > phase1_steps])):
        if sel:
            out[name] = round(len(sel) / sum(sel), 3)
    return out


def _last_validation(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "validation.jsonl"
    if not p.is_file():
        return {}
    lines = p.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[-1]) if lines else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("ivf", "mif"), required=True)
    ap.add_argument("--data", type=Path, required=True, help="the task's split: train/{a,b} and val/{a,b}")
    ap.add_argument("--work", type=Path, required=True, help="run folders go to WORK/<task>/")
    ap.add_argument("--out", type=Path, required=True, help="OUT/<task>.safetensors: the latest weights")
    ap.add_argument("--deadline", type=float, required=True, help="Unix time by which this process must have exited")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--init", choices=("shipped", "scratch"), default="shipped",
                    help="start from the shipped weights (fine-tune) or from a random initialisation")
    ap.add_argument("--batch", type=int, help="global batch (default 8; 2 with --tiny)")
    ap.add_argument("--lr", type=float, help="learning rate (default 1e-4 x sqrt(batch / 8))")
    ap.add_argument("--p1-fraction", type=float, default=0.25, help="share of the training time for Phase I")
    ap.add_argument("--safety", type=float, help="share of the planned training time filled with steps, for what the "
                    "calibration misses (default 0.92; 0.5 with --tiny: CPU timings on a shared machine vary more)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peers", type=int, default=1, help="processes sharing the device (calibrated together)")
    ap.add_argument("--barrier", type=Path, help="folder where the peers meet before calibrating")
    ap.add_argument("--no-tf32", dest="tf32", action="store_false", help="keep float32 matrix products in full fp32")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (train.precision=bf16)")
    ap.add_argument("--tiny", action="store_true", help="tiny network, 32x32 crops, batch 2 (CPU test of the script)")
    ap.add_argument("--max-steps", type=int, help="at most this many steps in both phases together, however much time "
                    "is left (the CPU test of the script: a run that does not race its budget on a busy machine)")
    a = ap.parse_args(argv)
    t_start = time.time()
    tag = f"[gpu_train {a.task}]"

    def log(msg: str) -> None:
        print(f"{tag} {time.time() - t_start:6.1f}s {msg}", file=sys.stderr, flush=True)

    import torch

    from cddfuse.cli.main import main as cli

    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            log("no CUDA device; stopping (set GPU_TRAIN_DEVICE=cpu for a CPU run)")
            return 1
        torch.backends.cudnn.benchmark = True  # fixed 128x128 crops: pick the fastest convolution kernels once
        if a.tf32:  # convolutions use TF32 already (PyTorch's default)
            _set_tf32_matmul(torch)
    threads = max(1, (os.cpu_count() or 1) // max(1, a.peers))
    residual = shipped_residual(a.task)
    work = a.work / a.task
    weights_out = a.out / f"{a.task}.safetensors"
    base = base_overrides(a, residual, threads, weights_out)
    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    log(f"device {device_name}, torch {torch.__version__}, TF32 matmul "
        f"{_tf32_matmul(torch)}, init {'none (tiny)' if a.tiny else a.init}, residual {residual} "
        f"(shipped weights' metadata), {threads} CPU threads, {a.deadline - time.time():.0f} s to the deadline")

    def barrier(round_: str) -> None:
        if a.barrier is not None and a.peers > 1:
            waited = wait_for_peers(a.barrier, f"{round_}.{a.task}", a.peers,
                                    timeout_s=min(60.0, (a.deadline - time.time()) / 4))
            log(f"waited {waited:.1f} s for the other process")

    calib_only = ["phase1.epochs=1", "phase2.epochs=1", "log.tensorboard=false",
                  f"checkpoint.weights={json.dumps(str(work / 'calib' / 'weights.safetensors'))}"]
    while True:
        cal_cfg = resolve(base + calib_only)
        try:
            cal, baseline, data_spe, peak = calibrate(cal_cfg, work / "calib", warmup=1 if a.tiny else 3,
                                                      steps=5 if a.tiny else 10, log=log, barrier=barrier)
            break
        except torch.cuda.OutOfMemoryError:
            mb = cal_cfg["train"]["micro_batch"]
            mb = (cal_cfg["train"]["batch_size"] if mb == "auto" else int(mb)) // 2
            if mb < 1:
                raise
            log(f"out of GPU memory; again with train.micro_batch={mb} (the same gradient, in chunks)")
        gc.collect()
        torch.cuda.empty_cache()
        base.append(f"train.micro_batch={mb}")
    try:
        plan = make_plan(a.deadline - time.time(), cal, data_spe, p1_fraction=a.p1_fraction,
                         safety=a.safety or (0.5 if a.tiny else 0.92),
                         checkpoint_interval_s=30.0 if not a.tiny else 5.0, log_interval_s=5.0 if not a.tiny else 2.0,
                         max_steps=a.max_steps)
    except ValueError as e:
        log(f"no training: {e}")
        return 1
    log(f"plan: Phase I {plan.phase1_steps} steps ({plan.phase1_epochs} epochs of {plan.steps_per_epoch}), Phase II "
        f"{plan.phase2_steps} steps ({plan.phase2_epochs} epochs), rate halved every {plan.step_epochs} epochs, "
        f"checkpoint every {plan.checkpoint_every} steps; exit expected in {plan.expected_s:.0f} s, --max-time "
        f"{plan.max_time_s:.0f} s")
    run_dir = work / "run"
    argv_train = ["train", "--config", str(CONFIG), "--run-dir", str(run_dir), "--max-time", f"{plan.max_time_s:.1f}s"]
    for o in base + plan.overrides():
        argv_train += ["--set", o]
    t_train = time.time()
    try:
        rc = cli(argv_train)
    except Exception:  # noqa: BLE001 - e.g. out of GPU memory: the last checkpoint's weights are in OUT
        import traceback

        traceback.print_exc()
        rc = 1
    train_wall = time.time() - t_train

    state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").is_file() else {}
    prov: dict[str, Any] = {}
    if weights_out.is_file():
        from cddfuse.models.weights import load_weights

        prov = load_weights(weights_out)[1].provenance
    steps = int(state.get("global_step", 0))
    summary = {
        "task": a.task, "exit_code": rc, "status": prov.get("status", "none"), "device": device_name,
        "torch": str(torch.__version__), "tf32_matmul": _tf32_matmul(torch),
        "init": "none (tiny)" if a.tiny else a.init, "residual": residual,
        "batch": cal_cfg["train"]["batch_size"], "lr": cal_cfg["optim"]["lr"], "peers": a.peers,
        "calibration": asdict(cal), "peak_gpu_memory_gib": round(peak / 2**30, 2),
        "plan": {**asdict(plan), "phase1_steps": plan.phase1_steps, "phase2_steps": plan.phase2_steps},
        "steps": steps, "phase2_steps": prov.get("phase2_steps", 0), "total_steps": state.get("total_steps"),
        "train_time_s": state.get("train_time_s"), "train_wall_s": round(train_wall, 1),
        "steps_per_s": _measured_rates(run_dir / "tb", plan.phase1_steps),  # while training, per phase
        "validation_start": baseline, "validation_end": _last_validation(run_dir),
        "weights": str(weights_out) if weights_out.is_file() else None,
        "seconds_before_deadline": round(a.deadline - time.time(), 1),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"finished: exit code {rc}, status {summary['status']}, {steps} steps ({summary['phase2_steps']} in Phase II), "
        f"steps/s while training {summary['steps_per_s']}, {summary['seconds_before_deadline']} s before the deadline")
    return rc if summary["status"] == "complete" else (rc or 1)


if __name__ == "__main__":
    sys.exit(main())
