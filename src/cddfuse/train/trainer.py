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
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._fileutil import atomic_write_bytes
from .._malloc import set_malloc_options
from ..errors import CDDFuseError, CheckpointError, UsageError
from ..models import CDDFuse, CDDFuseConfig
from ..models.cddfuse import residual_image
from . import config as C
from .data import ResumableDistributedSampler, build_dataset, load_val_pairs
from .distributed import DistContext, init_distributed
from .losses import LossWeights, cc, phase1_loss, phase2_loss

__all__ = ["Trainer", "TrainResult", "train", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "cddfuse-train-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_SLEEP_ENV = "CDDFUSE_TRAIN_STEP_SLEEP"  # test hook: seconds to sleep after every step


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "complete" | "stopped"
    global_step: int
    epoch: int
    weights: Optional[Path]
    checkpoint: Path


def model_config_from(cfg: Dict[str, Any]) -> CDDFuseConfig:
    return CDDFuseConfig.from_dict({k: v for k, v in cfg["model"].items() if k != "init"})


def load_checkpoint(path: os.PathLike | str) -> Dict[str, Any]:
    """Read a training checkpoint (``last.pt``) written by :class:`Trainer`."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise UsageError(f"{p}: no training checkpoint here (expected RUN_DIR or RUN_DIR/checkpoints/last.pt)")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise CheckpointError(f"{p}: not a readable training checkpoint ({e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a cddfuse training checkpoint")
    ck["_path"] = str(p)
    return ck


def _rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _cpu_activation_budget() -> int:
    """Bytes of activations a CPU chunk may hold: min(8 GB, physical memory / 3)."""
    cap = 8 * 1024 ** 3
    try:
        return min(cap, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 3)
    except (ValueError, OSError, AttributeError):
        return cap


def hardware_description(device: torch.device) -> str:
    """E.g. ``"AMD EPYC 9B14, 2 CPU cores"`` or ``"NVIDIA H100 80GB HBM3"`` (for weight metadata)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "")
    except OSError:
        pass
    import platform

    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the process (glibc): no ``mmap`` per large tensor, no trimming.

    CPU training allocates and frees hundreds of tensors of tens of MB per step. glibc serves each
    from a fresh ``mmap`` and returns it on free, so every step page-faults (and the kernel zeroes)
    gigabytes: 15-40 % of a step on a 2-core machine. With ``M_MMAP_MAX = 0`` and the largest
    ``M_TRIM_THRESHOLD`` the heap is reused instead. No effect (returns False) off glibc.
    """
    return set_malloc_options(mmap_max=0, trim_threshold=2**31 - 1)


def _cc_pair(base: Tensor, detail: Tensor, k: int) -> Tensor:
    """``(cc_base, cc_detail)`` (float64) between the two sources of a chunk's stacked features."""
    return torch.stack((cc(base[k:], base[:k]), cc(detail[k:], detail[:k]))).double()


class _StopFlag:
    """SIGTERM / first Ctrl-C ask for a clean stop at the next step (with a checkpoint)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\ncddfuse train: {signal.Signals(signum).name} received; stopping after this step "
              "with a checkpoint (Ctrl-C again to abort now)", file=sys.stderr, flush=True)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class Trainer:
    """One training run in ``run_dir``.

    Args:
        cfg: resolved configuration (:func:`cddfuse.train.config.validate`-d).
        run_dir: where ``checkpoints/``, ``tb/``, ``config.yaml``, ``state.json`` and
            ``final.safetensors`` go.
        resume: a checkpoint dict (:func:`load_checkpoint`) to continue from.
        max_time: wall-clock budget in seconds, counted from ``start_time``; the run stops with a
            checkpoint before it would be exceeded.
        start_time: ``time.monotonic()`` at the start of the command.
        dist: data-parallel context (single process when omitted).
        echo: where messages go (rank 0 only).
    """

    def __init__(
        self,
        cfg: Dict[str, Any],
        run_dir: os.PathLike | str,
        *,
        resume: Optional[Dict[str, Any]] = None,
        max_time: Optional[float] = None,
        start_time: Optional[float] = None,
        dist: Optional[DistContext] = None,
        echo: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.cfg = C.validate(copy.deepcopy(cfg))
        self.run_dir = Path(run_dir)
        self.dist = dist or init_distributed(self.cfg["device"])
        self.device = self.dist.device
        self._echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.start_time = time.monotonic() if start_time is None else start_time
        self.max_time = max_time
        self.stop = _StopFlag()
        self._warned: set = set()
        self._step_sleep = float(os.environ.get(_STEP_SLEEP_ENV, "0") or 0)

        tr = self.cfg["train"]
        if tr["threads"]:
            torch.set_num_threads(tr["threads"])
        if tr["cpu_malloc_tuning"] and self.device.type == "cpu":
            tune_glibc_malloc()
        self.use_bf16 = tr["precision"] == "bf16"
        if self.use_bf16 and self.device.type != "cuda":
            raise UsageError("train.precision=bf16 (autocast) needs a CUDA device; use fp32 on CPU")
        gb = tr["batch_size"]
        if gb % self.dist.world_size:
            raise UsageError(
                f"train.batch_size={gb} (the global batch) must be divisible by the number of processes "
                f"({self.dist.world_size})"
            )
        self.global_batch = gb
        self.local_batch = gb // self.dist.world_size
        self.e1 = self.cfg["phase1"]["epochs"]
        self.total_epochs = self.e1 + self.cfg["phase2"]["epochs"]
        self.weights = LossWeights(**self.cfg["loss"])

        # data
        self.dataset, self.data_desc = build_dataset(self.cfg, warn=self.warn)
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
        self.steps_per_epoch = steps
        self.sample_hw = tuple(self.dataset[0][0].shape[-2:])
        self.total_steps = steps * self.total_epochs

        # model, optimisers, schedulers (identical initialisation on every rank)
        torch.manual_seed(self.cfg["seed"])
        self.model = CDDFuse(model_config_from(self.cfg))
        if self.cfg["model"]["init"] and resume is None:
            self._load_init(self.cfg["model"]["init"])
        self.model.to(self.device).train()
        self.dist.broadcast_module(self.model)
        o, s = self.cfg["optim"], self.cfg["sched"]
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.schedulers: Dict[str, torch.optim.lr_scheduler.StepLR] = {}
        for part in C.PARTS:
            opt = torch.optim.Adam(getattr(self.model, part).parameters(), lr=o["lr"], betas=tuple(o["betas"]),
                                   eps=o["eps"], weight_decay=o["weight_decay"])
            self.optimizers[part] = opt
            self.schedulers[part] = torch.optim.lr_scheduler.StepLR(opt, step_size=s["step_epochs"], gamma=s["gamma"])

        # position
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.train_time = 0.0  # seconds spent in earlier sessions of this run
        self.sessions = 0
        if resume is not None:
            self._restore(resume)

        self.writer = None
        self.val_pairs: Optional[list] = None
        self._step_est: Optional[float] = None
        self._ckpt_est = 1.0 + 12 * sum(p.numel() for p in self.model.parameters()) / 200e6
        self._val_est = 0.0

    # ----------------------------------------------------------------------------------- utils
    def echo(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        bar = getattr(self, "_bar", None)
        if bar is not None and not bar.disable:
            bar.write(msg, file=sys.stderr)
        else:
            self._echo(msg)

    def warn(self, msg: str) -> None:
        if msg not in self._warned:
            self._warned.add(msg)
            self.echo(f"warning: {msg}")

    def phase_of(self, epoch: int) -> int:
        return 1 if epoch < self.e1 else 2

    def parts_of(self, phase: int) -> List[str]:
        return list(self.cfg[f"phase{phase}"]["parts"])

    def _load_init(self, path: str) -> None:
        from ..models.weights import load_weights

        init, info = load_weights(path)
        if init.config != self.model.config:
            raise UsageError(
                f"model.init {path} has sizes {init.config.to_dict()}, which differ from the config's model "
                "section; set the model sizes to match"
            )
        self.model.load_state_dict(init.state_dict())
        self.echo(f"initialised from {path}")

    # ------------------------------------------------------------------------------ state I/O
    def state_dict(self, status: str) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "status": status,
            "config": copy.deepcopy(self.cfg),
            "data": copy.deepcopy(self.data_desc),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "phase": self.phase_of(min(self.epoch, self.total_epochs - 1)),
            "steps_per_epoch": self.steps_per_epoch,
            "data_order": {
                "sampler": "DistributedSampler(shuffle, seed + epoch, interleaved ranks)",
                "seed": self.cfg["seed"],
                "epoch": self.epoch,
                "samples_done_in_epoch": self.step_in_epoch * self.global_batch,
                "dataset_len": len(self.dataset),
            },
            "world_size": self.dist.world_size,
            "rng": _rng_state(),
            "train_time_s": self.train_time + self._session_time(),
            "sessions": self.sessions + 1,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": str(torch.__version__),
        }

    def _restore(self, ck: Dict[str, Any]) -> None:
        old = ck["data"]
        new = self.data_desc
        for key in ("samples", "stems_sha1", "mode"):
            if old.get(key) != new.get(key):
                raise CDDFuseError(
                    f"the training data differ from the checkpoint's ({key}: {old.get(key)!r} then, "
                    f"{new.get(key)!r} now); resume needs the same data"
                )
        if ck["steps_per_epoch"] != self.steps_per_epoch:
            raise CDDFuseError(
                f"steps per epoch changed ({ck['steps_per_epoch']} -> {self.steps_per_epoch}); resume with the "
                "same batch size and data"
            )
        if ck.get("world_size", 1) != self.dist.world_size:
            self.warn(f"resuming a {ck.get('world_size', 1)}-process run with {self.dist.world_size} processes: "
                      "same batches, but not bit-identical")
        self.model.load_state_dict(ck["model"])
        self.model.to(self.device)
        for k, o in self.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(ck["schedulers"][k])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.train_time = float(ck.get("train_time_s", 0.0))
        self.sessions = int(ck.get("sessions", 1))
        _set_rng_state(ck["rng"])

    def _session_time(self) -> float:
        return time.monotonic() - self.start_time

    def save_checkpoint(self, status: str = "running", also: Optional[str] = None) -> Path:
        """Write ``checkpoints/last.pt`` (and ``checkpoints/<also>``) atomically; rank 0 only."""
        dest = self.run_dir / "checkpoints" / "last.pt"
        if not self.dist.is_main:
            return dest
        t0 = time.monotonic()
        buf = io.BytesIO()
        torch.save(self.state_dict(status), buf)
        data = buf.getvalue()
        atomic_write_bytes(dest, data)
        if also:
            atomic_write_bytes(dest.parent / also, data)
        self._write_state(status)
        self._ckpt_est = max(0.5 * self._ckpt_est, time.monotonic() - t0)
        return dest

    def _write_state(self, status: str) -> None:
        st = {
            "status": status, "global_step": self.global_step, "total_steps": self.total_steps,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "total_epochs": self.total_epochs,
            "phase": self.phase_of(min(self.epoch, self.total_epochs - 1)),
            "train_time_s": round(self.train_time + self._session_time(), 3),
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_bytes(self.run_dir / "state.json", (json.dumps(st, indent=2) + "\n").encode())

    # ---------------------------------------------------------------------------- one step
    def micro_batch(self, n: int) -> int:
        """Pairs per forward/backward chunk for a local batch of ``n`` pairs.

        ``auto``: the whole batch on CUDA; on CPU as many pairs as fit in an activation budget of
        min(8 GB, RAM / 3), estimated from the network sizes and the sample size (the paper's network
        keeps ~1.6 GB per 128x128 image), at least one.
        """
        mb = self.cfg["train"]["micro_batch"]
        if mb == "auto":
            if self.device.type != "cpu":
                return n
            return max(1, min(n, _cpu_activation_budget() // self._bytes_per_pair()))
        return max(1, min(int(mb), n))

    def _bytes_per_pair(self) -> int:
        c = self.model.config
        h, w = getattr(self, "sample_hw", (128, 128))
        maps = 35 * (c.encoder_blocks + c.decoder_blocks) + 100  # feature maps kept for backward, per image
        return max(1, 2 * 4 * h * w * c.dim * maps)

    def _forward(self, a: Tensor, b: Tensor, phase: int):
        """Network outputs for one chunk: ``(base, detail, out)`` (out = both reconstructions or the fusion)."""
        model = self.model
        n = a.shape[0]
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            x = torch.cat((a, b), dim=0)  # both sources through the shared encoder as one batch
            base, detail, _ = model.encode(x)
            if phase == 1:
                out = model.decode(base, detail, x)  # residual = each source itself
            else:
                fb, fd = model.fuse_features(base[:n], base[n:], detail[:n], detail[n:])
                out = model.decode(fb, fd, residual_image(a, b, self.cfg["phase2"]["residual"]))
        if self.use_bf16:
            base, detail, out = base.float(), detail.float(), out.float()
        return base, detail, out

    @torch.no_grad()
    def _chunks_cc_sum(self, a: Tensor, b: Tensor, chunks) -> Tensor:
        """Sum over ``chunks`` of ``pairs x (cc_base, cc_detail)``, from a gradient-free encoder pass."""
        total = torch.zeros(2, dtype=torch.float64, device=a.device)
        for s, e in chunks:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                base, detail, _ = self.model.encode(torch.cat((a[s:e], b[s:e]), dim=0))
            total += _cc_pair(base.float(), detail.float(), e - s) * (e - s)
        return total

    def train_step(self, a: Tensor, b: Tensor, phase: int, want_images: bool = False):
        """One optimisation step on this rank's batch ``(a, b)``; returns (detached loss parts, images or None).

        The batch is processed in chunks of :meth:`micro_batch` pairs (gradient accumulation), which
        keeps the activations small on CPU (the paper's batch of 8 128x128 pairs needs ~26 GB at
        once). Every loss term is a batch mean, so each chunk's loss is weighted by its share of the
        batch. The decomposition loss, a non-linear function of the batch-mean correlations, is
        evaluated at the batch (and, data-parallel, global) means, with each chunk's own gradient
        (see :func:`cddfuse.train.losses._global_cc`): the correlations of all chunks but the last
        come from a gradient-free encoder pass, the last chunk is processed first and contributes
        its own. The result is the full-batch gradient.
        """
        model = self.model
        parts = self.parts_of(phase)
        for p in C.PARTS:
            self.optimizers[p].zero_grad(set_to_none=True)
        n = a.shape[0]
        mb = self.micro_batch(n)
        chunks = [(s, min(s + mb, n)) for s in range(0, n, mb)]
        several = len(chunks) > 1
        if several:
            others = self._chunks_cc_sum(a, b, chunks[:-1])
            chunks = chunks[-1:] + chunks[:-1]  # the last chunk first: its forward completes the means
        totals: Dict[str, Tensor] = {}
        images = None
        for i, (s, e) in enumerate(chunks):
            ca, cb = a[s:e], b[s:e]
            k = e - s
            base, detail, out = self._forward(ca, cb, phase)
            if several and i == 0:
                mine = _cc_pair(base.detach().float(), detail.detach().float(), k) * k
                glob = self.dist.all_reduce_mean(((others + mine) / n).float())
                cc_reduce = lambda _local: glob  # noqa: E731
            elif not several:
                cc_reduce = self.dist.all_reduce_mean if self.dist.enabled else None
            fa, fbb = (base[:k], detail[:k]), (base[k:], detail[k:])
            if phase == 1:
                losses = phase1_loss(ca, cb, fa, fbb, out[:k], out[k:], self.weights, cc_reduce=cc_reduce)
            else:
                losses = phase2_loss(ca, cb, fa, fbb, out, self.weights, cc_reduce=cc_reduce)
            share = k / n
            (losses["total"] * share if several else losses["total"]).backward()
            for key, v in losses.items():
                totals[key] = totals.get(key, 0.0) + v.detach() * share
            if want_images and s == 0:
                j = min(4, k)
                images = [ca[:j], out[:j], cb[:j], out[k:k + j]] if phase == 1 else [ca[:j], cb[:j], out[:j]]
                images = [t.detach().float().cpu() for t in images]
            del base, detail, out, losses
        clip = self.cfg["optim"]["grad_clip"]
        for p in parts:
            params = list(getattr(model, p).parameters())
            self.dist.average_gradients(params)
            if clip:
                torch.nn.utils.clip_grad_norm_(params, max_norm=clip, norm_type=2)
            self.optimizers[p].step()
        return totals, images

    def _end_epoch(self, phase: int) -> None:
        floor = self.cfg["sched"]["min_lr"]
        for p in self.parts_of(phase):
            self.schedulers[p].step()
            for g in self.optimizers[p].param_groups:
                if g["lr"] <= floor:
                    g["lr"] = floor

    # ------------------------------------------------------------------------------ logging
    def _open_writer(self) -> None:
        if not (self.dist.is_main and self.cfg["log"]["tensorboard"]):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # noqa: BLE001 - tensorboard missing or broken
            self.warn(f"TensorBoard logging off ({e}); install the 'train' extra: pip install 'cddfuse[train]'")
            return
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.global_step or None)

    def _log_scalars(self, parts: Dict[str, float], phase: int, step_s: float) -> None:
        if self.writer is None:
            return
        for k, v in parts.items():
            self.writer.add_scalar(f"loss_phase{phase}/{k}", v, self.global_step)
        for p, o in self.optimizers.items():
            self.writer.add_scalar(f"lr/{p}", o.param_groups[0]["lr"], self.global_step)
        if step_s > 0:
            self.writer.add_scalar("perf/pairs_per_s", self.global_batch / step_s, self.global_step)
            self.writer.add_scalar("perf/step_s", step_s, self.global_step)
        self.writer.add_scalar("progress/epoch", self.epoch, self.global_step)

    def _log_images(self, images: List[Tensor], phase: int) -> None:
        if self.writer is None or not images:
            return
        # rows = samples; columns = a, rec_a, b, rec_b (Phase I) or a, b, fused (Phase II)
        rows = [torch.cat([t[i, 0] for t in images], dim=1) for i in range(images[0].shape[0])]
        grid = torch.cat(rows, dim=0).clamp(0, 1)[None]
        tag = "images/phase1_a-reca-b-recb" if phase == 1 else "images/phase2_a-b-fused"
        self.writer.add_image(tag, grid, self.global_step, dataformats="CHW")

    # --------------------------------------------------------------------------- validation
    def validate(self, phase: int) -> Dict[str, float]:
        v = self.cfg["val"]
        if v["a"] is None or not self.dist.is_main:
            return {}
        if self.val_pairs is None:
            self.val_pairs = load_val_pairs(v["a"], v["b"], v["max_pairs"], v["max_size"], warn=self.warn)
        t0 = time.monotonic()
        model = self.model
        model.eval()
        results: Dict[str, List[float]] = {}
        metric_fn = None
        if phase == 2 and v["metrics"]:
            try:
                from ..metrics import compute_metrics as metric_fn  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - the metrics module may not exist yet
                self.warn(f"validation metrics unavailable ({e}); logging the fusion loss only")
        try:
            with torch.no_grad():
                for _stem, a_np, b_np in self.val_pairs:
                    a = torch.from_numpy(a_np)[None, None].to(self.device)
                    b = torch.from_numpy(b_np)[None, None].to(self.device)
                    if phase == 1:
                        for name, x in (("a", a), ("b", b)):
                            mse = torch.mean((model.reconstruct(x) - x) ** 2).item()
                            results.setdefault(f"recon_psnr_{name}", []).append(10 * math.log10(1.0 / max(mse, 1e-12)))
                        continue
                    f = model(a, b, residual=self.cfg["phase2"]["residual"])
                    base_a, det_a, _ = model.encode(a)
                    base_b, det_b, _ = model.encode(b)
                    lp = phase2_loss(a, b, (base_a, det_a), (base_b, det_b), f, self.weights)
                    results.setdefault("fusion_loss", []).append(float(lp["fusion"]))
                    if metric_fn is not None:
                        # as the authors evaluate: min-max normalised output and 8-bit images
                        lo, hi = f.min(), f.max()
                        f255 = np.round(((f - lo) / (hi - lo + 1e-12) * 255.0)[0, 0].cpu().numpy().astype(np.float64))
                        try:
                            vals = metric_fn(np.round(a_np.astype(np.float64) * 255.0),
                                             np.round(b_np.astype(np.float64) * 255.0), f255, names=list(v["metrics"]))
                        except Exception as e:  # noqa: BLE001
                            self.warn(f"validation metrics failed ({type(e).__name__}: {e}); skipping them")
                            metric_fn = None
                            continue
                        for k, val in dict(vals).items():
                            results.setdefault(k, []).append(float(val))
        finally:
            model.train()
        means = {k: float(np.mean(x)) for k, x in results.items()}
        if self.writer is not None:
            for k, x in means.items():
                self.writer.add_scalar(f"val/{k}", x, self.global_step)
        self._val_est = time.monotonic() - t0
        if means:
            self.echo(f"validation after epoch {self.epoch}: " + ", ".join(f"{k} {x:.4g}" for k, x in means.items()))
            # one JSON line per validation (run_dir/validation.jsonl), for scripts that compare runs;
            # after a resume a line may repeat for the same step: readers keep the last one
            rec = {"step": self.global_step, "epoch": self.epoch, "phase": phase, **means}
            with open(self.run_dir / "validation.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
        return means

    # ------------------------------------------------------------------------------- control
    def _should_stop(self, extra_s: float = 0.0) -> bool:
        stop = self.stop.requested
        if self.max_time is not None and not stop:
            remaining = self.max_time - self._session_time()
            need = 1.25 * (self._step_est or 0.0) + 1.5 * self._ckpt_est + extra_s + 1.0
            stop = remaining < need
        return self.dist.any(stop)

    def _stop_now(self, reason: str) -> TrainResult:
        ck = self.save_checkpoint("stopped")
        self.echo(
            f"stopped at step {self.global_step}/{self.total_steps} (epoch {self.epoch}, "
            f"{self.step_in_epoch}/{self.steps_per_epoch} steps into it): {reason}. "
            f"Checkpoint {ck}. Continue with: cddfuse train --resume {self.run_dir}"
        )
        return TrainResult(self.run_dir, "stopped", self.global_step, self.epoch, None, ck)

    def export(self) -> Path:
        from .. import __version__
        from ..models.weights import save_weights

        dest = self.run_dir / "final.safetensors"
        if not self.dist.is_main:
            return dest
        if self.cfg["phase2"]["epochs"] == 0:
            self.warn("Phase II was skipped (phase2.epochs = 0): the fusion layers are untrained, the exported "
                      "model only reconstructs")
        prov = {
            "made_by": f"cddfuse {__version__} train",
            "recipe": self.cfg.get("name") or "",
            "training_config": self.cfg,
            "data": self.data_desc,
            "steps": self.global_step,
            "epochs": self.epoch,
            "phase1_epochs": self.e1,
            "phase2_epochs": self.cfg["phase2"]["epochs"],
            "global_batch": self.global_batch,
            "processes": self.dist.world_size,
            "device": str(self.device),
            "hardware": hardware_description(self.device),
            "train_time_s": round(self.train_time + self._session_time(), 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": str(torch.__version__),
        }
        save_weights(self.model, dest, task=self.cfg["task"], residual=self.cfg["phase2"]["residual"],
                     normalize="minmax", provenance=prov)
        return dest

    def _write_run_files(self) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.run_dir / "config.yaml", C.dump_config(self.cfg).encode())

    def run(self) -> TrainResult:
        """Train to the end (or to a stop request / the time budget); returns what happened."""
        self._write_run_files()
        self._open_writer()
        self.stop.install()
        try:
            return self._run()
        finally:
            self.stop.uninstall()
            if self.writer is not None:
                self.writer.close()

    def _progress(self):
        from tqdm import tqdm

        show = self.cfg["log"]["progress"] and self.dist.is_main
        return tqdm(total=self.total_steps, initial=self.global_step, disable=not show, unit="step",
                    dynamic_ncols=True, mininterval=1.0, file=sys.stderr)

    def _run(self) -> TrainResult:
        if self.epoch >= self.total_epochs:
            self.echo(f"{self.run_dir}: training already complete ({self.global_step} steps)")
            w = self.export()
            return TrainResult(self.run_dir, "complete", self.global_step, self.epoch, w,
                               self.run_dir / "checkpoints" / "last.pt")
        self.echo(
            f"training {self.run_dir}: {len(self.dataset)} samples, {self.steps_per_epoch} steps/epoch x "
            f"{self.total_epochs} epochs (Phase I {self.e1}, Phase II {self.cfg['phase2']['epochs']}), global batch "
            f"{self.global_batch} on {self.dist.world_size} process(es), device {self.device}"
            + (f"; resuming at step {self.global_step}" if self.global_step else "")
        )
        every_ckpt = self.cfg["checkpoint"]["every_steps"]
        log_every = self.cfg["log"]["every_steps"]
        img_every = self.cfg["log"]["image_every_steps"]
        bar = self._bar = self._progress()
        try:
            while self.epoch < self.total_epochs:
                phase = self.phase_of(self.epoch)
                if self.step_in_epoch < self.steps_per_epoch:
                    self.dataset.set_epoch(self.epoch)  # type: ignore[attr-defined]
                    self.sampler.set_position(self.epoch, self.step_in_epoch * self.local_batch)
                    loader = DataLoader(
                        self.dataset, batch_size=self.local_batch, sampler=self.sampler,
                        num_workers=self.cfg["data"]["workers"], drop_last=self.cfg["train"]["drop_last"],
                        pin_memory=self.device.type == "cuda",
                    )
                    it = iter(loader)
                    t_prev = time.monotonic()
                    while self.step_in_epoch < self.steps_per_epoch:
                        if self._should_stop():
                            reason = "stop requested" if self.stop.requested else "--max-time budget"
                            return self._stop_now(reason)
                        try:
                            a, b = next(it)
                        except StopIteration:  # pragma: no cover - steps_per_epoch is computed from the sampler
                            break
                        a = a.to(self.device, non_blocking=True)
                        b = b.to(self.device, non_blocking=True)
                        want_img = bool(img_every) and (self.global_step + 1) % img_every == 0
                        parts, images = self.train_step(a, b, phase, want_images=want_img)
                        if not bool(torch.isfinite(parts["total"])):
                            raise CDDFuseError(
                                f"the loss became {float(parts['total'])} at step {self.global_step + 1} (phase "
                                f"{phase}); stopped without saving, the last checkpoint in {self.run_dir} is intact. "
                                "Lower optim.lr, or check the data for blank images"
                            )
                        self.step_in_epoch += 1
                        self.global_step += 1
                        if self._step_sleep:
                            time.sleep(self._step_sleep)
                        now = time.monotonic()
                        dt, t_prev = now - t_prev, now
                        self._step_est = dt if self._step_est is None else 0.7 * self._step_est + 0.3 * dt
                        if self.global_step % log_every == 0 or self.global_step == self.total_steps:
                            vec = self.dist.all_reduce_mean(torch.stack([v.float() for v in parts.values()]))
                            vals = dict(zip(parts.keys(), vec.tolist()))
                            self._log_scalars(vals, phase, dt)
                            self._show(bar, phase, vals)
                        if images is not None:
                            self._log_images(images, phase)
                        bar.update(1)
                        if every_ckpt and self.global_step % every_ckpt == 0 and self.step_in_epoch < self.steps_per_epoch:
                            self.save_checkpoint()
                    del it, loader
                # end of epoch
                self._end_epoch(phase)
                self.epoch += 1
                self.step_in_epoch = 0
                boundary = self.epoch == self.e1 and 0 < self.e1 < self.total_epochs
                if self.epoch >= self.total_epochs:
                    break
                need_val = self.cfg["val"]["a"] is not None and self.epoch % self.cfg["val"]["every_epochs"] == 0
                if boundary:
                    self.save_checkpoint(also="phase1.pt")
                elif every_ckpt and self.global_step % every_ckpt == 0:
                    self.save_checkpoint()
                if need_val:
                    if self._should_stop(extra_s=self._val_est):
                        return self._stop_now("--max-time budget" if not self.stop.requested else "stop requested")
                    self.validate(phase)
            # done
            if self.cfg["val"]["a"] is not None:
                self.validate(self.phase_of(self.total_epochs - 1))
            ck = self.save_checkpoint("complete")
            w = self.export()
            self.echo(f"done: {self.global_step} steps; weights {w} (use: cddfuse fuse --weights {w} ...)")
            return TrainResult(self.run_dir, "complete", self.global_step, self.epoch, w, ck)
        finally:
            bar.close()
            self._bar = None

    def _show(self, bar, phase: int, vals: Dict[str, float]) -> None:
        if phase == 1:
            short = {"loss": vals["total"], "rec": vals["ssim_a"] * self.weights.recon_ssim + vals["mse_a"]
                     + vals["ssim_b"] * self.weights.recon_ssim + vals["mse_b"],
                     "grad": vals["grad_b"], "dec": vals["decomp"]}
        else:
            short = {"loss": vals["total"], "int": vals["intensity"], "grad": vals["gradient"], "dec": vals["decomp"]}
        rate = self.global_batch / self._step_est if self._step_est else 0.0
        desc = f"P{'I' if phase == 1 else 'II'} ep {self.epoch + 1}/{self.total_epochs}"
        if bar.disable:
            self.echo(f"{desc} step {self.global_step}/{self.total_steps} "
                      + " ".join(f"{k} {v:.4g}" for k, v in short.items()) + f" {rate:.2f} pairs/s")
            return
        bar.set_description(desc, refresh=False)
        bar.set_postfix({**{k: f"{v:.4g}" for k, v in short.items()}, "pairs/s": f"{rate:.2f}"}, refresh=False)


def train(
    cfg: Dict[str, Any],
    run_dir: os.PathLike | str,
    *,
    resume: Optional[Dict[str, Any]] = None,
    max_time: Optional[float] = None,
    start_time: Optional[float] = None,
    echo: Optional[Callable[[str], None]] = None,
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
