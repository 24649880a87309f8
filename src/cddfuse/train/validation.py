"""Validation on held-out pairs (``val.a`` / ``val.b``), after every ``val.every_epochs`` epochs and at the end.

What is measured, as means over the pairs:

* Phase I: ``recon_psnr_a`` and ``recon_psnr_b``, the PSNR of each source's reconstruction;
* Phase II: ``fusion_loss`` (the Phase-II intensity + gradient loss of the fused image, weighted as in
  training) and the ``val.metrics`` of :func:`cddfuse.metrics.compute_metrics`, computed as the
  authors evaluate: min-max normalised fused image and 8-bit images.

Phase II fuses the pairs with the fast inference engine on CPU (:func:`_fuse`: the same function
as the module to float rounding, several times faster); on CUDA the module itself is run.

The means go to TensorBoard (``val/<name>``), to the log, and as one JSON line per validation to
``run_dir/validation.jsonl`` (``step``, ``epoch``, ``phase`` and the means); after a resume a line
may repeat for the same step, and readers keep the last one. Validation runs on rank 0 only.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from .datasets import load_val_pairs
from .losses import LossWeights, fusion_loss

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from ..models import CDDFuse

__all__ = ["Validator"]


def _fuse(model: CDDFuse, a: Tensor, b: Tensor, residual: str) -> Tensor:
    """``model(a, b, residual=residual)`` for ``(N, 1, H, W)`` tensors on the model's device.

    The one call into the inference engine (on CPU): exact tiling with cache-sized tiles, the
    feature maps in memory. The memory budget is what this process holds plus what is free, so the
    engine's memory guard does not trim the trainer's heap (kept for reuse between steps) after
    every tile; it only steps in when the machine runs short.
    """
    if a.device.type == "cuda":
        return model(a, b, residual=residual)
    from .._malloc import resident_memory
    from ..engine import available_memory, fuse_tensors

    budget = (resident_memory() or 0) + available_memory()
    return fuse_tensors(model, a, b, residual, max_memory=budget)


def _psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class Validator:
    """Evaluates a model on the held-out pairs of ``cfg["val"]`` and reports the means.

    Args:
        cfg: the resolved training configuration (``val``, ``phase2.residual`` are used).
        weights: the loss coefficients (for ``fusion_loss``).
        device: where the model lives.
        run_dir: where ``validation.jsonl`` goes.
        warn: called with a message when something is skipped (missing metrics, failing metrics).
    """

    def __init__(self, cfg: dict[str, Any], weights: LossWeights, device: torch.device, run_dir: Path,
                 warn: Callable[[str], None]) -> None:
        self.val = cfg["val"]
        self.residual: str = cfg["phase2"]["residual"]
        self.weights = weights
        self.device = device
        self.run_dir = run_dir
        self.warn = warn
        self.pairs: list[tuple[str, np.ndarray, np.ndarray]] | None = None  # loaded on first use
        self.seconds = 0.0  # duration of the last evaluation (for the --max-time budget)

    @property
    def enabled(self) -> bool:
        return self.val["a"] is not None

    def evaluate(self, model: CDDFuse, phase: int) -> dict[str, float]:
        """Mean of each measure over the held-out pairs, for a model in ``phase`` (1 or 2)."""
        v = self.val
        if self.pairs is None:
            self.pairs = load_val_pairs(v["a"], v["b"], v["max_pairs"], v["max_size"], warn=self.warn)
        t0 = time.monotonic()
        results: dict[str, list[float]] = {}
        metric_fn = self._metric_fn() if phase == 2 and v["metrics"] else None
        model.eval()
        try:
            with torch.no_grad():
                for _stem, a_np, b_np in self.pairs:
                    a = torch.from_numpy(a_np)[None, None].to(self.device)
                    b = torch.from_numpy(b_np)[None, None].to(self.device)
                    if phase == 1:
                        for name, x in (("a", a), ("b", b)):
                            mse = torch.mean((model.reconstruct(x) - x) ** 2).item()
                            results.setdefault(f"recon_psnr_{name}", []).append(_psnr(mse))
                        continue
                    f = _fuse(model, a, b, self.residual)
                    _, intensity, gradient = fusion_loss(a, b, f)
                    fusion = self.weights.fusion_intensity * intensity + self.weights.fusion_gradient * gradient
                    results.setdefault("fusion_loss", []).append(float(fusion))
                    if metric_fn is not None:
                        vals = self._metrics(metric_fn, a_np, b_np, f)
                        if vals is None:
                            metric_fn = None
                            continue
                        for k, val in vals.items():
                            results.setdefault(k, []).append(val)
        finally:
            model.train()
        self.seconds = time.monotonic() - t0
        return {k: float(np.mean(x)) for k, x in results.items()}

    def _metric_fn(self) -> Callable[..., Any] | None:
        try:
            from ..metrics import compute_metrics
        except Exception as e:  # noqa: BLE001 - the metrics module may be missing or broken
            self.warn(f"validation metrics unavailable ({e}); logging the fusion loss only")
            return None
        return compute_metrics

    def _metrics(self, metric_fn: Callable[..., Any], a_np: np.ndarray, b_np: np.ndarray,
                 f: Tensor) -> dict[str, float] | None:
        """The metrics of one pair as the authors evaluate (min-max normalised output, 8-bit images);
        ``None`` (with a warning) when they fail."""
        lo, hi = f.min(), f.max()
        f255 = np.round(((f - lo) / (hi - lo + 1e-12) * 255.0)[0, 0].cpu().numpy().astype(np.float64))
        try:
            vals = metric_fn(np.round(a_np.astype(np.float64) * 255.0), np.round(b_np.astype(np.float64) * 255.0),
                             f255, names=list(self.val["metrics"]))
        except Exception as e:  # noqa: BLE001
            self.warn(f"validation metrics failed ({type(e).__name__}: {e}); skipping them")
            return None
        return {k: float(val) for k, val in dict(vals).items()}

    def report(self, means: dict[str, float], *, step: int, epoch: int, phase: int, writer: SummaryWriter | None,
               echo: Callable[[str], None]) -> None:
        """Write ``means`` to TensorBoard, the log and ``validation.jsonl``."""
        if writer is not None:
            for k, x in means.items():
                writer.add_scalar(f"val/{k}", x, step)
        if not means:
            return
        echo(f"validation after epoch {epoch}: " + ", ".join(f"{k} {x:.4g}" for k, x in means.items()))
        rec = {"step": step, "epoch": epoch, "phase": phase, **means}
        with open(self.run_dir / "validation.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
