"""Distillation: train a CDDFuse-lite student (:mod:`cddfuse.models.lite`) from an exact CDDFuse teacher.

The teacher's fused luminance (before min-max normalisation, its residual included) is computed once
per training pair on the whole image and cached on disk (:mod:`cddfuse.train.distill_cache`). A step
then costs only the student: ``batch_size`` random crops (with flips) of ``(a, b, teacher)`` triplets,
and the loss

``l1 * L1(s, t) + gradient * L1(|grad s|, |grad t|) + ssim * SSIMloss(s, t)
+ fusion * (L_int(s) + fusion_gradient * L_grad(s))``

with ``|grad| = |Sobel_x| + |Sobel_y|`` and CDDFuse's own fusion loss (:func:`~cddfuse.train.losses.fusion_loss`).
AdamW with a linear warm-up and a cosine decay, gradient clipping.

Where the teacher is too expensive for every pair, ``data.teacher_every = k`` has it fuse every k-th
training pair only; ``train.fusion_batch_size`` crops of the other pairs then join each step with
CDDFuse's fusion loss alone (weight ``loss.fusion_only``), so that every pair still teaches the student.

The machinery is the trainer's: a YAML recipe with ``--set`` overrides, ``--max-time`` and SIGTERM /
Ctrl-C stopping cleanly with a checkpoint (:mod:`~cddfuse.train.control`), atomic checkpoints, TensorBoard,
validation on held-out pairs, data parallelism under torchrun, bf16 autocast where it is fast.

Resumption is exact: the crops of step ``k`` are drawn from a generator seeded by ``(seed, k)``, and a
checkpoint holds the weights, the optimiser and schedule states and the step, so a run killed at any
moment and resumed from its last checkpoint reaches the same weights as one that never stopped (on CPU:
bit-identical).
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._fileutil import atomic_write_bytes
from ..errors import CDDFuseError, CheckpointError, UsageError, first_line
from ..models.lite import CDDFuseLite
from . import distill_config as DC
from . import logs
from .control import StopFlag, TimeBudget
from .distill_cache import TeacherCache, Triplet, resolve_teacher
from .distributed import DistContext, init_distributed
from .export import hardware_description
from .losses import fusion_loss, sobel_magnitude, ssim_loss

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["DistillResult", "Distiller", "distill", "load_distill_checkpoint", "sample_crops", "distill_loss",
           "fill_teacher_cache", "DISTILL_CHECKPOINT_FORMAT"]

DISTILL_CHECKPOINT_FORMAT = "cddfuse-distill-checkpoint"

Echo = Callable[[str], None]


@dataclass
class DistillResult:
    """What a distillation run ended with: its folder, status, step count, weights and last checkpoint."""

    run_dir: Path
    status: str  # "complete" | "stopped"
    step: int
    weights: Path | None  # final.safetensors (complete runs)
    best: Path | None  # best.safetensors (by validation), when validation ran
    checkpoint: Path


def load_distill_checkpoint(path: os.PathLike[str] | str) -> dict[str, Any]:
    """Read ``checkpoints/last.pt`` of a distillation run (or the run directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise UsageError(f"{p}: no distillation checkpoint here (expected RUN_DIR or RUN_DIR/checkpoints/last.pt)")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise CheckpointError(f"{p}: not a readable checkpoint ({first_line(e)})") from None
    if not isinstance(ck, dict) or ck.get("format") != DISTILL_CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a cddfuse distillation checkpoint (a `cddfuse train` run? resume it "
                              "with cddfuse train --resume)")
    ck["_path"] = str(p)
    return ck


def sample_crops(triplets: list[Triplet], step: int, seed: int, batch: int, crop: int, flips: bool
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """The crops of ``step``: ``(a, b, t)``, each ``(batch, 1, crop, crop)`` float32.

    Drawn from ``numpy.random.default_rng([seed, step])``, so any step can be recomputed (resume, ranks).
    Pairs smaller than ``crop`` are padded by edge replication.
    """
    rng = np.random.default_rng([seed, step])
    out = np.empty((3, batch, 1, crop, crop), np.float32)
    for k in range(batch):
        tr = triplets[int(rng.integers(len(triplets)))]
        h, w = tr.a.shape
        y = int(rng.integers(max(h - crop, 0) + 1))
        x = int(rng.integers(max(w - crop, 0) + 1))
        fy, fx = (bool(rng.integers(2)), bool(rng.integers(2))) if flips else (False, False)
        for j, img in enumerate((tr.a, tr.b, tr.t)):
            c = img[y:y + crop, x:x + crop]
            if c.shape != (crop, crop):
                c = np.pad(c, ((0, crop - c.shape[0]), (0, crop - c.shape[1])), mode="edge")
            if fy:
                c = c[::-1]
            if fx:
                c = c[:, ::-1]
            out[j, k, 0] = c
    return torch.from_numpy(out[0]), torch.from_numpy(out[1]), torch.from_numpy(out[2])


def distill_loss(a: Tensor, b: Tensor, t: Tensor, s: Tensor, w: dict[str, float]) -> dict[str, Tensor]:
    """The loss terms (see the module docstring) and their weighted ``total``."""
    g = sobel_magnitude(torch.cat((s, t), dim=0))
    gs, gt = g.chunk(2, dim=0)
    parts = {"l1": F.l1_loss(s, t), "gradient": F.l1_loss(gs, gt)}
    if w["ssim"]:
        parts["ssim"] = ssim_loss(s, t)
    if w["fusion"]:
        parts["fusion"] = fusion_loss(a, b, s, gradient_weight=w["fusion_gradient"])[0]
    parts["total"] = sum((w[k] * v for k, v in parts.items()), torch.zeros((), device=s.device))
    return parts


def _minmax(x: Tensor) -> Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros_like(x)


def _spread(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` items spread over ``items``: every k-th, ``k = ceil(len / n)`` (all when ``n >= len``)."""
    return items[::max(1, math.ceil(len(items) / n))]


def fill_teacher_cache(cfg: dict[str, Any], cache_dir: Path, echo: Echo) -> tuple[list[Triplet], list[Triplet],
                                                                                  dict[str, Any]]:
    """Training and validation triplets (computing what the cache lacks) and the data description.

    With ``data.teacher_every > 1`` only every k-th training pair is fused by the teacher; the
    description then lists how many; :func:`load_fusion_only` reads the others."""
    from .data import _stems_digest, find_pairs

    spec = resolve_teacher(cfg["teacher"], cfg["task"], cfg["residual"])
    cache = TeacherCache(cache_dir, spec, log=echo)
    d = cfg["data"]
    pairs = find_pairs(d["a"], d["b"], d["unmatched"], warn=lambda m: echo(f"warning: {m}"))[::d["every"]]
    val_pairs: list[tuple[str, Path, Path]] = []
    if cfg["val"]["a"] is not None:
        val_pairs = _spread(find_pairs(cfg["val"]["a"], cfg["val"]["b"], "skip"), cfg["val"]["max_pairs"])
        overlap = {p[0] for p in val_pairs} & {p[0] for p in pairs}
        if overlap:
            echo(f"warning: {len(overlap)} validation pair(s) also in the training data (e.g. {sorted(overlap)[0]})")
    val = cache.fill(val_pairs, "validation pairs") if val_pairs else []
    train = cache.fill(pairs[::d["teacher_every"]], "training pairs")
    desc = {
        "a": d["a"], "b": d["b"], "every": d["every"], "teacher_every": d["teacher_every"], "pairs": len(train),
        "fusion_only_pairs": len(pairs) - len(train),
        "stems_sha1": _stems_digest([p[0] for p in pairs]),
        "val_pairs": len(val), "teacher": spec.to_dict(), "cache": str(cache.folder),
    }
    return train, val, desc


def load_fusion_only(cfg: dict[str, Any]) -> list[Triplet]:
    """The training pairs the teacher does not fuse (``data.teacher_every > 1``), with ``t = a`` (unused)."""
    from .data import find_pairs, read_luminance

    d = cfg["data"]
    pairs = find_pairs(d["a"], d["b"], d["unmatched"])[::d["every"]]
    out = []
    for i, (stem, pa, pb) in enumerate(pairs):
        if i % d["teacher_every"]:
            a, b = read_luminance(pa), read_luminance(pb)
            if a.shape != b.shape:
                raise CDDFuseError(f"{stem}: the two sources differ in size; distillation needs registered pairs")
            out.append(Triplet(stem, a, b, a))
    return out


class Distiller:
    """One distillation run in ``run_dir`` (see the module docstring).

    Args:
        cfg: the configuration (:func:`cddfuse.train.distill_config.validate`-d).
        run_dir: where ``checkpoints/``, ``tb/``, ``config.yaml``, ``state.json``, ``validation.jsonl``,
            ``best.safetensors`` and ``final.safetensors`` go.
        resume: a checkpoint (:func:`load_distill_checkpoint`) to continue from.
        max_time: wall-clock budget in seconds from ``start_time``.
        dist: data-parallel context (single process when omitted).
        echo: where messages go (rank 0 only).
    """

    def __init__(self, cfg: dict[str, Any], run_dir: os.PathLike[str] | str, *, resume: dict[str, Any] | None = None,
                 max_time: float | None = None, start_time: float | None = None, dist: DistContext | None = None,
                 echo: Echo | None = None) -> None:
        start_time = time.monotonic() if start_time is None else start_time
        self.cfg = DC.validate(cfg)
        self.run_dir = Path(run_dir)
        self.dist = dist or init_distributed(self.cfg["device"])
        self.device = self.dist.device
        self._echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.stop = StopFlag()
        tr = self.cfg["train"]
        if tr["threads"]:
            torch.set_num_threads(tr["threads"])
        self.use_bf16 = tr["precision"] == "bf16"
        if self.use_bf16 and self.device.type == "cpu":
            from ..engine.cpu import bf16_feature

            if bf16_feature() is None:
                raise UsageError("train.precision=bf16 on CPU needs AMX or AVX512-BF16, which this processor lacks "
                                 "(bfloat16 would be slower than fp32 here); use fp32, or a CUDA GPU")
        if tr["batch_size"] % self.dist.world_size:
            raise UsageError(f"train.batch_size={tr['batch_size']} (the global batch) must be divisible by the "
                             f"number of processes ({self.dist.world_size})")
        cache_dir = Path(self.cfg["data"]["cache_dir"] or self.run_dir.parent / "teacher_cache")
        if not self.dist.is_main:  # rank 0 fills the cache; the others then only read it
            self.dist.barrier()
        self.train_set, self.val_set, self.data_desc = fill_teacher_cache(self.cfg, cache_dir, self.echo)
        if self.dist.is_main:
            self.dist.barrier()
        if not self.train_set:
            raise CDDFuseError("no training pairs")
        fb = tr["fusion_batch_size"]
        if fb % self.dist.world_size:
            raise UsageError(f"train.fusion_batch_size={fb} must be divisible by the number of processes "
                             f"({self.dist.world_size})")
        self.fusion_set = load_fusion_only(self.cfg) if fb else []

        torch.manual_seed(self.cfg["seed"])
        self.model = CDDFuseLite(DC.lite_config(self.cfg)).to(self.device).train()
        self.dist.broadcast_module(self.model)
        o = self.cfg["optim"]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.budget = TimeBudget(start_time, max_time, checkpoint_s=1.0)
        self.writer: SummaryWriter | None = None
        self.step = 0
        self.train_time = 0.0
        self.sessions = 0
        self.best: dict[str, Any] | None = None  # {"step", "score", ...} of the best validation
        self.val_s = 0.0
        if resume is not None:
            self._restore(resume)

    def _lr_factor(self, step: int) -> float:
        o, total = self.cfg["optim"], self.cfg["train"]["steps"]
        if step < o["warmup_steps"]:
            return (step + 1) / (o["warmup_steps"] + 1)
        frac = (step - o["warmup_steps"]) / max(1, total - o["warmup_steps"])
        return o["min_lr_ratio"] + (1 - o["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    def echo(self, msg: str) -> None:
        if self.dist.is_main:
            self._echo(msg)

    # ---------------------------------------------------------------------------- state
    def _checkpoint(self, status: str) -> dict[str, Any]:
        return {
            "format": DISTILL_CHECKPOINT_FORMAT, "version": 1, "status": status, "config": self.cfg,
            "data": self.data_desc, "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "best": json.dumps(self.best), "world_size": self.dist.world_size,
            "train_time_s": self.train_time + self.budget.session_time(), "sessions": self.sessions + 1,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": str(torch.__version__),
        }

    def _restore(self, ck: dict[str, Any]) -> None:
        for key in ("pairs", "stems_sha1", "teacher", "every", "teacher_every"):
            if ck["data"].get(key) != self.data_desc.get(key):
                raise CDDFuseError(f"the training data or teacher differ from the checkpoint's ({key}: "
                                   f"{ck['data'].get(key)!r} then, {self.data_desc.get(key)!r} now); resume needs "
                                   "the same data and teacher")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step = int(ck["step"])
        self.best = json.loads(ck.get("best") or "null")
        self.train_time = float(ck.get("train_time_s", 0.0))
        self.sessions = int(ck.get("sessions", 1))

    def save_checkpoint(self, status: str = "running") -> Path:
        """``checkpoints/last.pt`` and ``state.json``, atomically (rank 0)."""
        dest = self.run_dir / "checkpoints" / "last.pt"
        if not self.dist.is_main:
            return dest
        t0 = time.monotonic()
        buf = io.BytesIO()
        torch.save(self._checkpoint(status), buf)
        try:
            atomic_write_bytes(dest, buf.getvalue())
            st = {"status": status, "step": self.step, "total_steps": self.cfg["train"]["steps"],
                  "best": self.best, "train_time_s": round(self.train_time + self.budget.session_time(), 1),
                  "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            atomic_write_bytes(self.run_dir / "state.json", (json.dumps(st, indent=2) + "\n").encode())
        except OSError as e:
            raise CheckpointError(f"cannot write the checkpoint {dest}: {e.strerror or e}; the previous one is kept "
                                  "-- free space and resume with --resume") from None
        self.budget.note_checkpoint(time.monotonic() - t0)
        return dest

    def provenance(self, status: str) -> dict[str, Any]:
        from .. import __version__

        return {
            "made_by": f"cddfuse {__version__} distill", "status": status, "recipe": self.cfg.get("name") or "",
            "teacher": self.data_desc["teacher"], "data": {k: v for k, v in self.data_desc.items() if k != "teacher"},
            "distill_config": self.cfg, "steps": self.step, "total_steps": self.cfg["train"]["steps"],
            "best_validation": self.best, "global_batch": self.cfg["train"]["batch_size"],
            "processes": self.dist.world_size, "device": str(self.device),
            "hardware": hardware_description(self.device),
            "train_time_s": round(self.train_time + self.budget.session_time(), 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": str(torch.__version__),
        }

    def export(self, dest: Path, status: str = "complete") -> Path:
        from ..models.weights import save_lite_weights

        return save_lite_weights(self.model, dest, task=self.cfg["task"],
                                 residual=self.data_desc["teacher"]["residual"], provenance=self.provenance(status))

    # ---------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Agreement with the teacher on the held-out pairs (whole images): ``l1_raw`` (before
        normalisation), and after min-max normalisation of both ``l1``, ``psnr`` (dB) and ``ssim``; the
        model with the best ``psnr`` is kept as ``best.safetensors``."""
        if not self.val_set or not self.dist.is_main:
            return {}
        from .losses import ssim_loss as _ssim_loss

        t0 = time.monotonic()
        self.model.eval()
        acc: dict[str, list[float]] = {}
        try:
            for tr in self.val_set:
                a = torch.from_numpy(tr.a)[None, None].to(self.device)
                b = torch.from_numpy(tr.b)[None, None].to(self.device)
                t = torch.from_numpy(tr.t)[None, None].to(self.device)
                s = self.model(a, b)
                sn, tn = _minmax(s), _minmax(t)
                mse = float(torch.mean((sn - tn) ** 2))
                vals = {"l1_raw": float(torch.mean((s - t).abs())), "l1": float(torch.mean((sn - tn).abs())),
                        "psnr": 10 * math.log10(1 / max(mse, 1e-12)), "ssim": 1 - 2 * float(_ssim_loss(sn, tn))}
                for k, v in vals.items():
                    acc.setdefault(k, []).append(v)
        finally:
            self.model.train()
        means = {k: float(np.mean(v)) for k, v in acc.items()}
        self.val_s = time.monotonic() - t0
        if self.writer is not None:
            for k, v in means.items():
                self.writer.add_scalar(f"val/{k}", v, self.step)
        self.echo(f"validation at step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items()))
        with open(self.run_dir / "validation.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": self.step, **means}) + "\n")
        if self.best is None or means["psnr"] > self.best["psnr"]:
            self.best = {"step": self.step, **means}
            self.export(self.run_dir / "best.safetensors", status="best")
        return means

    # ---------------------------------------------------------------------------- the loop
    def run(self) -> DistillResult:
        if self.dist.is_main:
            self.writer = logs.start_run_dir(self.run_dir, DC.dump_config(self.cfg),
                                             tensorboard=self.cfg["log"]["tensorboard"], global_step=self.step,
                                             warn=lambda m: self.echo(f"warning: {m}"))
        self.stop.install()
        try:
            return self._run()
        finally:
            self.stop.uninstall()
            if self.writer is not None:
                self.writer.close()

    def _run(self) -> DistillResult:
        cfg, total = self.cfg, self.cfg["train"]["steps"]
        n_params = sum(p.numel() for p in self.model.parameters())
        self.echo(f"distilling {self.run_dir}: CDDFuse-lite ({n_params:,} parameters) from "
                  f"{self.data_desc['teacher']['file']} on {len(self.train_set)} pairs"
                  + (f" (+{len(self.fusion_set)} with the fusion loss only)" if self.fusion_set else "")
                  + f", {total} steps of "
                  f"{cfg['train']['batch_size']} crops of {cfg['data']['crop_size']}, {self.dist.world_size} "
                  f"process(es), device {self.device}" + (f"; resuming at step {self.step}" if self.step else ""))
        bar = logs.progress_bar(total, self.step, cfg["log"]["progress"] and self.dist.is_main)
        w = cfg["loss"]
        t_prev = time.monotonic()
        try:
            while self.step < total:
                if self.dist.any(self.stop.requested or self.budget.short()):
                    ck = self.save_checkpoint("stopped")
                    self.echo(f"stopped at step {self.step}/{total}: "
                              f"{'stop requested' if self.stop.requested else '--max-time budget'}. Checkpoint {ck}. "
                              f"Continue with: cddfuse distill --resume {self.run_dir}")
                    return DistillResult(self.run_dir, "stopped", self.step, None, self._best_path(), ck)
                parts = self._train_step(w)
                self.step += 1
                now = time.monotonic()
                self.budget.note_step(now - t_prev)
                t_prev = now
                if not bool(torch.isfinite(parts["total"])):
                    raise CDDFuseError(f"the loss became {float(parts['total'])} at step {self.step}; stopped without "
                                       f"saving, the last checkpoint in {self.run_dir} is intact. Lower optim.lr")
                self._log(parts, bar)
                every = cfg["checkpoint"]["every_steps"]
                if self.val_set and (self.step % cfg["val"]["every_steps"] == 0) and self.step < total:
                    self.validate()
                if every and self.step % every == 0 and self.step < total:
                    self.save_checkpoint()
        finally:
            bar.close()
        if self.val_set:
            self.validate()
        ck = self.save_checkpoint("complete")
        final = self.run_dir / "final.safetensors"
        if self.dist.is_main:
            self.export(final)
        self.echo(f"done: {self.step} steps; weights {final}" + (
            f", best on validation {self._best_path()} (step {self.best['step']})" if self.best else "")
            + f" (use: cddfuse fuse --method lite --weights {final} ...)")
        return DistillResult(self.run_dir, "complete", self.step, final, self._best_path(), ck)

    def _best_path(self) -> Path | None:
        p = self.run_dir / "best.safetensors"
        return p if self.best is not None else None

    def _train_step(self, w: dict[str, float]) -> dict[str, Tensor]:
        cfg = self.cfg
        crop, flips, seed = cfg["data"]["crop_size"], cfg["data"]["flips"], cfg["seed"]
        a, b, t = sample_crops(self.train_set, self.step, seed, cfg["train"]["batch_size"], crop, flips)
        r, n = self.dist.rank, self.dist.world_size
        a, b, t = (x[r::n].to(self.device) for x in (a, b, t))
        fb = cfg["train"]["fusion_batch_size"]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            if fb:  # crops of the pairs without a teacher output: one forward pass with the others
                fa, fbb, _ = sample_crops(self.fusion_set, self.step, seed + 1_000_003, fb, crop, flips)
                fa, fbb = fa[r::n].to(self.device), fbb[r::n].to(self.device)
                k = a.shape[0]
                out = self.model(torch.cat([a, fa]), torch.cat([b, fbb]))
                s, fs = out[:k], out[k:]
            else:
                s = self.model(a, b)
        parts = distill_loss(a, b, t, s.float(), w)
        if fb:
            parts["fusion_only"] = fusion_loss(fa, fbb, fs.float(), gradient_weight=w["fusion_gradient"])[0]
            parts["total"] = parts["total"] + w["fusion_only"] * parts["fusion_only"]
        parts["total"].backward()  # type: ignore[no-untyped-call]
        params = list(self.model.parameters())
        self.dist.average_gradients(params)
        if cfg["optim"]["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(params, max_norm=cfg["optim"]["grad_clip"])
        self.optimizer.step()
        self.scheduler.step()
        return {k: v.detach() for k, v in parts.items()}

    def _log(self, parts: dict[str, Tensor], bar: Any) -> None:
        cfg = self.cfg
        if self.step % cfg["log"]["every_steps"] and self.step != cfg["train"]["steps"]:
            bar.update(1)
            return
        vec = self.dist.all_reduce_mean(torch.stack([v.float() for v in parts.values()]))
        vals = dict(zip(parts.keys(), vec.tolist()))
        lr = self.optimizer.param_groups[0]["lr"]
        rate = cfg["train"]["batch_size"] / self.budget.step_s if self.budget.step_s else 0.0
        if self.writer is not None:
            for k, v in vals.items():
                self.writer.add_scalar(f"loss/{k}", v, self.step)
            self.writer.add_scalar("lr", lr, self.step)
            self.writer.add_scalar("perf/crops_per_s", rate, self.step)
        text = " ".join(f"{k} {v:.4g}" for k, v in vals.items())
        if bar.disable:
            self.echo(f"step {self.step}/{cfg['train']['steps']} {text} lr {lr:.3g} {rate:.1f} crops/s")
        else:
            bar.set_postfix({k: f"{v:.4g}" for k, v in vals.items()}, refresh=False)
        bar.update(1)


def distill(cfg: dict[str, Any], run_dir: os.PathLike[str] | str, *, resume: dict[str, Any] | None = None,
            max_time: float | None = None, start_time: float | None = None, echo: Echo | None = None) -> DistillResult:
    """Run (or continue) a distillation; initialises and shuts down ``torch.distributed`` under torchrun."""
    dist = init_distributed(cfg.get("device", "auto"))
    finished = False
    try:
        result = Distiller(cfg, run_dir, resume=resume, max_time=max_time, start_time=start_time, dist=dist,
                           echo=echo).run()
        finished = True
        return result
    finally:
        dist.shutdown(barrier=finished)
