"""The CDDFuse training loop: two phases, per-part optimisers, checkpoints that survive, data parallelism.

Recipe (the authors' ``train.py``, as configured by :mod:`cddfuse.train.config`):

* Epochs ``0 .. phase1.epochs-1`` (Phase I): encoder + decoder reconstruct each source (residual =
  the source itself), loss :func:`~cddfuse.train.losses.phase1_loss`. The remaining
  ``phase2.epochs`` (Phase II): the fusion layers join; loss :func:`~cddfuse.train.losses.phase2_loss`
  on the fused image (residual ``phase2.residual``).
* Each part (encoder, decoder, base_fuse, detail_fuse) has its own Adam and StepLR; a part's
  scheduler steps at the end of every epoch in which the part is trained (so the fusion layers'
  schedule starts in Phase II), then its learning rate is floored at ``sched.min_lr``. Gradients are
  clipped to ``optim.grad_clip`` (L2 norm) per part.
* Both sources go through the encoder (and in Phase I the decoder) as one batch: every layer is
  per-sample, so this equals two separate calls, at about half the overhead.

Resumption is exact: a checkpoint holds weights, optimiser and scheduler states, epoch, position in
the epoch, global step and RNG states; the data order is a permutation seeded by ``seed + epoch``
(:class:`~cddfuse.train.data.ResumableDistributedSampler`), so a resumed run continues with the same
batches and, on CPU, reaches bit-identical weights.

This module holds the set-up and the loop; the rest lives next to it, composed rather than inherited:
:mod:`~cddfuse.train.state` (the run's state: network, optimisers, position), :mod:`~cddfuse.train.step`
(one optimisation step), :mod:`~cddfuse.train.checkpoint` (checkpoint contents, atomic writing, RNG
state), :mod:`~cddfuse.train.validation` (held-out pairs), :mod:`~cddfuse.train.logs` (TensorBoard,
progress bar), :mod:`~cddfuse.train.control` (stop requests, ``--max-time``) and
:mod:`~cddfuse.train.export` (``final.safetensors``). Checkpoints and the export see the
:class:`~cddfuse.train.state.TrainState` only.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..errors import CDDFuseError, UsageError
from ..models import CDDFuse, CDDFuseConfig
from . import checkpoint as ckpt
from . import config as C
from . import logs
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from .control import BudgetExceeded, StopFlag, TimeBudget
from .datasets import ResumableDistributedSampler, build_dataset
from .distributed import DistContext, init_distributed
from .export import export_weights, hardware_description
from .losses import LossWeights
from .state import TrainState
from .step import TrainStep, tune_glibc_malloc
from .validation import Validator

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["Trainer", "TrainResult", "train", "load_checkpoint", "CHECKPOINT_FORMAT", "hardware_description",
           "tune_glibc_malloc"]


@dataclass
class TrainResult:
    """What a training run ended with: its folder, status, position, weights and last checkpoint."""

    run_dir: Path
    status: str  # "complete" | "stopped"
    global_step: int
    epoch: int
    weights: Path | None
    checkpoint: Path


def model_config_from(cfg: dict[str, Any]) -> CDDFuseConfig:
    return CDDFuseConfig.from_dict({k: v for k, v in cfg["model"].items() if k != "init"})


class Trainer:
    """One training run in ``run_dir``: set-up and the loop, around a :class:`~cddfuse.train.state.TrainState`
    (:attr:`state`: network, optimisers, position; what checkpoints hold) and a
    :class:`~cddfuse.train.step.TrainStep` (:attr:`stepper`: one optimisation step).

    Args:
        cfg: resolved configuration (:func:`cddfuse.train.config.validate`-d).
        run_dir: where ``checkpoints/``, ``tb/``, ``config.yaml``, ``state.json``, ``validation.jsonl``
            and ``final.safetensors`` go.
        resume: a checkpoint dict (:func:`load_checkpoint`) to continue from.
        max_time: wall-clock budget in seconds, counted from ``start_time``; the run stops with a
            checkpoint before it would be exceeded.
        start_time: ``time.monotonic()`` at the start of the command.
        dist: data-parallel context (single process when omitted).
        echo: where messages go (rank 0 only).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        run_dir: os.PathLike[str] | str,
        *,
        resume: dict[str, Any] | None = None,
        max_time: float | None = None,
        start_time: float | None = None,
        dist: DistContext | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        start_time = time.monotonic() if start_time is None else start_time
        self.cfg = C.validate(copy.deepcopy(cfg))
        self.run_dir = Path(run_dir)
        self.dist = dist or init_distributed(self.cfg["device"])
        self.device = self.dist.device
        self._echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.stop = StopFlag()
        self._warned: set[str] = set()
        self._bar: Any = None  # the progress bar (tqdm) while running

        tr = self.cfg["train"]
        if tr["threads"]:
            torch.set_num_threads(tr["threads"])
        if tr["cpu_malloc_tuning"] and self.device.type == "cpu":
            tune_glibc_malloc()
        self.use_bf16 = tr["precision"] == "bf16"
        if self.use_bf16 and self.device.type == "cpu":
            from ..engine.cpu import bf16_feature

            if bf16_feature() is None:
                raise UsageError("train.precision=bf16 on CPU needs AMX or AVX512-BF16, which this processor lacks "
                                 "(bfloat16 would be slower than fp32 here); use fp32, or a CUDA GPU")
        elif self.use_bf16 and self.device.type != "cuda":
            raise UsageError(f"train.precision=bf16 needs a CUDA GPU or a CPU with AMX/AVX512-BF16, not "
                             f"{self.device.type}; use fp32")
        gb = tr["batch_size"]
        if gb % self.dist.world_size:
            raise UsageError(
                f"train.batch_size={gb} (the global batch) must be divisible by the number of processes "
                f"({self.dist.world_size})"
            )
        self.local_batch = gb // self.dist.world_size
        self.weights = LossWeights(**self.cfg["loss"])

        # data
        self.dataset, data_desc = build_dataset(self.cfg, warn=self.warn)
        self.sampler = ResumableDistributedSampler(self.dataset, self.dist.world_size, self.dist.rank, self.cfg["seed"])
        # counted on the global batch, so that any number of ranks takes the same steps
        n = len(self.dataset)
        steps = n // gb if tr["drop_last"] else math.ceil(n / gb)
        if tr["max_steps_per_epoch"]:
            steps = min(steps, tr["max_steps_per_epoch"])
        if steps < 1:
            raise CDDFuseError(
                f"the training data hold {len(self.dataset)} samples, fewer than one batch of {gb}; "
                "lower train.batch_size (--batch-size) or add data"
            )

        # model, optimisers, schedulers (identical initialisation on every rank)
        torch.manual_seed(self.cfg["seed"])
        model = CDDFuse(model_config_from(self.cfg))
        if self.cfg["model"]["init"] and resume is None:
            self._load_init(model, self.cfg["model"]["init"])
        model.to(self.device).train()
        self.dist.broadcast_module(model)
        o, s = self.cfg["optim"], self.cfg["sched"]
        optimizers: dict[str, torch.optim.Optimizer] = {}
        schedulers: dict[str, torch.optim.lr_scheduler.StepLR] = {}
        for part in C.PARTS:
            opt = torch.optim.Adam(getattr(model, part).parameters(), lr=o["lr"], betas=tuple(o["betas"]),
                                   eps=o["eps"], weight_decay=o["weight_decay"])
            optimizers[part] = opt
            schedulers[part] = torch.optim.lr_scheduler.StepLR(opt, step_size=s["step_epochs"], gamma=s["gamma"])
        self.state = TrainState(self.cfg, data_desc, model, optimizers, schedulers, steps_per_epoch=steps,
                                global_batch=gb, dataset_len=n, world_size=self.dist.world_size)
        self.stepper = TrainStep(self.cfg, model, optimizers, schedulers, self.dist, self.weights,
                                 use_bf16=self.use_bf16, sample_hw=tuple(self.dataset[0][0].shape[-2:]))

        # time budget (first checkpoint estimate from the model size), validation, logging
        n_params = sum(p.numel() for p in model.parameters())
        self.budget = TimeBudget(start_time, max_time, checkpoint_s=1.0 + 12 * n_params / 200e6)
        self.validator = Validator(self.cfg, self.weights, self.device, self.run_dir, warn=self.warn)
        self.writer: SummaryWriter | None = None  # while running, on rank 0
        if resume is not None:
            ckpt.restore_checkpoint(self.state, resume, warn=self.warn)

    @property
    def model(self) -> CDDFuse:
        """The network being trained (:attr:`state`'s)."""
        return self.state.model

    @property
    def start_time(self) -> float:
        return self.budget.start_time

    @property
    def max_time(self) -> float | None:
        return self.budget.max_time

    # ----------------------------------------------------------------------------------- utils
    def echo(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        bar = self._bar
        if bar is not None and not bar.disable:
            bar.write(msg, file=sys.stderr)
        else:
            self._echo(msg)

    def warn(self, msg: str) -> None:
        if msg not in self._warned:
            self._warned.add(msg)
            self.echo(f"warning: {msg}")

    def _load_init(self, model: CDDFuse, path: str) -> None:
        from ..models.weights import load_weights

        init, info = load_weights(path)
        if init.config != model.config:
            raise UsageError(
                f"model.init {path} has sizes {init.config.to_dict()}, which differ from the config's model "
                "section; set the model sizes to match"
            )
        model.load_state_dict(init.state_dict())
        self.echo(f"initialised from {path}")

    def train_step(self, a: Tensor, b: Tensor, phase: int,
                   want_images: bool = False) -> tuple[dict[str, Tensor], list[Tensor] | None]:
        """One optimisation step on this rank's batch (:meth:`cddfuse.train.step.TrainStep.train_step`)."""
        return self.stepper.train_step(a, b, phase, want_images=want_images)

    # ------------------------------------------------------------------------------ state I/O
    def state_dict(self, status: str) -> dict[str, Any]:
        """The checkpoint contents (:func:`cddfuse.train.checkpoint.checkpoint_dict`)."""
        return ckpt.checkpoint_dict(self.state, status, self.budget.session_time())

    def save_checkpoint(self, status: str = "running", also: str | None = None) -> Path:
        """Write ``checkpoints/last.pt`` (and ``checkpoints/<also>``) atomically, and the weights to
        ``checkpoint.weights`` when set; rank 0 only (the other ranks just get the path)."""
        if not self.dist.is_main:
            return self.run_dir / "checkpoints" / "last.pt"
        t0 = time.monotonic()
        path = ckpt.write_checkpoint(self.state, self.run_dir, status, also, session_s=self.budget.session_time())
        self.budget.note_checkpoint(time.monotonic() - t0)
        weights = self.cfg["checkpoint"]["weights"]
        if weights:
            t0 = time.monotonic() - self.budget.last_checkpoint_s
            self._export(weights, status=status)
            self.budget.note_checkpoint(time.monotonic() - t0)  # the weights are part of what a checkpoint takes
        return path

    def export(self) -> Path:
        """Write ``final.safetensors`` (rank 0; :func:`cddfuse.train.export.export_weights`)."""
        return self._export(self.run_dir / "final.safetensors")

    def _export(self, dest: os.PathLike[str] | str, status: str = "complete") -> Path:
        if not self.dist.is_main:
            return Path(dest)
        return export_weights(self.state, dest, device=self.device, session_s=self.budget.session_time(),
                              status=status, warn=self.warn)

    def validate(self, phase: int) -> dict[str, float]:
        """Evaluate on the held-out pairs (rank 0) and log the means (:mod:`cddfuse.train.validation`)."""
        if not self.validator.enabled or not self.dist.is_main:
            return {}
        means = self.validator.evaluate(self.model, phase)
        self.budget.validation_s = self.validator.seconds
        self.validator.report(means, step=self.state.global_step, epoch=self.state.epoch, phase=phase,
                              writer=self.writer, echo=self.echo)
        return means

    # ------------------------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        """Train to the end (or to a stop request / the time budget); returns what happened."""
        if self.dist.is_main:
            self.writer = logs.start_run_dir(self.run_dir, C.dump_config(self.cfg),
                                             tensorboard=self.cfg["log"]["tensorboard"],
                                             global_step=self.state.global_step, warn=self.warn)
        self.stop.install()
        try:
            return self._run()
        finally:
            self.stop.uninstall()
            if self.writer is not None:
                self.writer.close()

    def _run(self) -> TrainResult:
        st = self.state
        if st.epoch >= st.total_epochs:
            self.echo(f"{self.run_dir}: training already complete ({st.global_step} steps)")
            w = self.export()
            return TrainResult(self.run_dir, "complete", st.global_step, st.epoch, w,
                               self.run_dir / "checkpoints" / "last.pt")
        self.echo(
            f"training {self.run_dir}: {len(self.dataset)} samples, {st.steps_per_epoch} steps/epoch x "
            f"{st.total_epochs} epochs (Phase I {st.phase1_epochs}, Phase II {self.cfg['phase2']['epochs']}), "
            f"global batch {st.global_batch} on {self.dist.world_size} process(es), device {self.device}"
            + (f"; resuming at step {st.global_step}" if st.global_step else "")
        )
        self.budget.note_startup(self.budget.session_time())
        show = self.cfg["log"]["progress"] and self.dist.is_main
        self._bar = logs.progress_bar(st.total_steps, st.global_step, show)
        try:
            while st.epoch < st.total_epochs:
                phase = st.phase_of(st.epoch)
                stopped = self._train_epoch(phase)
                if stopped is None:
                    stopped = self._next_epoch(phase)
                if stopped is not None:
                    return stopped
            if self.validator.enabled:
                self.validate(st.phase_of(st.total_epochs - 1))
            ck = self.save_checkpoint("complete")
            w = self.export()
            self.echo(f"done: {st.global_step} steps; weights {w} (use: cddfuse fuse --weights {w} ...)")
            return TrainResult(self.run_dir, "complete", st.global_step, st.epoch, w, ck)
        finally:
            self._bar.close()
            self._bar = None

    def _train_epoch(self, phase: int) -> TrainResult | None:
        """The remaining steps of the current epoch; a result when the run stops inside it."""
        st = self.state
        if st.step_in_epoch >= st.steps_per_epoch:
            return None
        self.dataset.set_epoch(st.epoch)
        self.sampler.set_position(st.epoch, st.step_in_epoch * self.local_batch)
        loader = DataLoader(
            self.dataset, batch_size=self.local_batch, sampler=self.sampler, num_workers=self.cfg["data"]["workers"],
            drop_last=self.cfg["train"]["drop_last"], pin_memory=self.device.type == "cuda",
        )
        it = iter(loader)
        img_every = self.cfg["log"]["image_every_steps"]
        t_prev = time.monotonic()
        while st.step_in_epoch < st.steps_per_epoch:
            if self._should_stop(extra_s=self._due_after_step()):
                return self._stop_now("stop requested" if self.stop.requested else "--max-time budget")
            # while no step has been timed, the budget cannot tell whether this one fits: it runs
            # under a timer, and a step that would overrun is undone (the state from before it is put
            # back) and the run stops with a checkpoint
            single = self.dist.world_size == 1
            before = copy.deepcopy(self.state_dict("running")) if self.budget.guards_step(single) else None
            try:
                with self.budget.first_step_guard(single):
                    try:
                        a, b = next(it)
                    except StopIteration:  # pragma: no cover - steps_per_epoch is computed from the sampler
                        break
                    a = a.to(self.device, non_blocking=True)
                    b = b.to(self.device, non_blocking=True)
                    want_img = bool(img_every) and (st.global_step + 1) % img_every == 0
                    parts, images = self.stepper.train_step(a, b, phase, want_images=want_img)
            except BudgetExceeded:
                if before is not None:
                    kept = st.train_time, st.sessions  # the snapshot counted this session already
                    ckpt.restore_checkpoint(self.state, before, warn=self.warn)
                    st.train_time, st.sessions = kept
                return self._stop_now("--max-time budget (the first step would not have ended in time)")
            if not bool(torch.isfinite(parts["total"])):
                raise CDDFuseError(
                    f"the loss became {float(parts['total'])} at step {st.global_step + 1} (phase "
                    f"{phase}); stopped without saving, the last checkpoint in {self.run_dir} is intact. "
                    "Lower optim.lr, or check the data for blank images"
                )
            st.step_in_epoch += 1
            st.global_step += 1
            now = time.monotonic()
            dt, t_prev = now - t_prev, now
            self.budget.note_step(dt)
            self._after_step(phase, parts, images, dt)
        return None

    def _after_step(self, phase: int, parts: dict[str, Tensor], images: list[Tensor] | None, dt: float) -> None:
        """Log the step (every ``log.every_steps``, losses averaged over ranks) and checkpoint when due."""
        st = self.state
        if st.global_step % self.cfg["log"]["every_steps"] == 0 or st.global_step == st.total_steps:
            vec = self.dist.all_reduce_mean(torch.stack([v.float() for v in parts.values()]))
            vals = dict(zip(parts.keys(), vec.tolist()))
            if self.writer is not None:
                lrs = {p: o.param_groups[0]["lr"] for p, o in st.optimizers.items()}
                logs.log_scalars(self.writer, st.global_step, phase, vals, lrs, dt, st.global_batch, st.epoch)
            rate = st.global_batch / self.budget.step_s if self.budget.step_s else 0.0
            logs.show_progress(self._bar, self.echo, vals, self.weights, phase=phase, epoch=st.epoch,
                               total_epochs=st.total_epochs, step=st.global_step, total_steps=st.total_steps,
                               rate=rate)
        if images is not None and self.writer is not None:
            logs.log_images(self.writer, st.global_step, phase, images)
        self._bar.update(1)
        every_ckpt = self.cfg["checkpoint"]["every_steps"]
        if every_ckpt and st.global_step % every_ckpt == 0 and st.step_in_epoch < st.steps_per_epoch:
            self.save_checkpoint()

    def _next_epoch(self, phase: int) -> TrainResult | None:
        """End the epoch (schedulers), move to the next, checkpoint and validate when due; a result
        when the run stops before the validation."""
        st = self.state
        self.stepper.end_epoch(phase)
        st.epoch += 1
        st.step_in_epoch = 0
        if st.epoch >= st.total_epochs:
            return None
        every_ckpt = self.cfg["checkpoint"]["every_steps"]
        if st.epoch == st.phase1_epochs and st.phase1_epochs > 0:  # the phase boundary
            self.save_checkpoint(also="phase1.pt")
        elif every_ckpt and st.global_step % every_ckpt == 0:
            self.save_checkpoint()
        if self.validator.enabled and st.epoch % self.cfg["val"]["every_epochs"] == 0:
            if self._should_stop(extra_s=self.budget.validation_s):
                return self._stop_now("stop requested" if self.stop.requested else "--max-time budget")
            self.validate(phase)
        return None

    def _due_after_step(self) -> float:
        """Seconds of the work that the next step brings due before the one after it can be asked about:
        a periodic or phase-boundary checkpoint, or, after the run's last step, the final validation
        and the export of the weights (the validation between epochs is asked about on its own)."""
        b, st = self.budget, self.state
        step, in_epoch, every = st.global_step + 1, st.step_in_epoch + 1, self.cfg["checkpoint"]["every_steps"]
        periodic = bool(every) and step % every == 0
        if in_epoch < st.steps_per_epoch:
            return b.checkpoint_s if periodic else 0.0
        if st.epoch + 1 >= st.total_epochs:  # the run's last step
            return (b.validation_s if self.validator.enabled else 0.0) + b.checkpoint_s
        e1 = st.phase1_epochs
        return b.checkpoint_s if periodic or (e1 > 0 and st.epoch + 1 == e1) else 0.0

    def _should_stop(self, extra_s: float = 0.0) -> bool:
        """A stop request or too little time left, on any rank."""
        return self.dist.any(self.stop.requested or self.budget.short(extra_s))

    def _stop_now(self, reason: str) -> TrainResult:
        ck = self.save_checkpoint("stopped")
        st = self.state
        self.echo(
            f"stopped at step {st.global_step}/{st.total_steps} (epoch {st.epoch}, "
            f"{st.step_in_epoch}/{st.steps_per_epoch} steps into it): {reason}. "
            f"Checkpoint {ck}. Continue with: cddfuse train --resume {self.run_dir}"
        )
        return TrainResult(self.run_dir, "stopped", st.global_step, st.epoch, None, ck)


def train(
    cfg: dict[str, Any],
    run_dir: os.PathLike[str] | str,
    *,
    resume: dict[str, Any] | None = None,
    max_time: float | None = None,
    start_time: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run (or continue) training; initialises and shuts down ``torch.distributed`` under torchrun."""
    dist = init_distributed(cfg.get("device", "auto"))
    finished = False
    try:
        t = Trainer(cfg, run_dir, resume=resume, max_time=max_time, start_time=start_time, dist=dist, echo=echo)
        result = t.run()
        finished = True
        return result
    finally:
        # after a normal end all ranks meet before the process group goes (rank 0 still writes the
        # final weights; tearing gloo down alone aborted a rank once in CI); after an error, not
        # (the other ranks may be gone)
        dist.shutdown(barrier=finished)
