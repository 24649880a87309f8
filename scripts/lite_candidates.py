"""Compare student designs for CDDFuse-lite: size, FLOPs, CPU time and a short distillation probe.

Candidates (all on luminance, ``forward(a, b) -> fused``):

* ``cnn``: a plain CNN at full resolution (3x3 convolutions, ReLU);
* ``unet``: a tiny U-Net of depthwise-separable blocks at 1/2 .. 1/8 resolution whose decoder
  returns to full resolution and predicts the fused image (with the sources at the last layer);
* ``coef``: the shipped design, :class:`cddfuse.models.lite.CDDFuseLite` (low-resolution coefficients
  alpha, beta, gamma applied at full resolution, plus a thin full-resolution detail path).

All end in ``sigmoid(A + B - 1 + ...)``, like the teacher's decoder (a sigmoid). Each is trained for
``--steps`` steps with the same loss, data and schedule as ``cddfuse distill``
(from the teacher cache that a distillation run fills) and scored on the held-out pairs against
the teacher (PSNR and SSIM after min-max normalisation of both).

    PYTHONPATH=src python scripts/lite_candidates.py --config configs/distill_ivf.yaml --steps 300 \
        --out docs/lite/candidates.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cddfuse.models.lite import CDDFuseLite, LiteConfig
from cddfuse.train import distill_config as DC
from cddfuse.train.distill import _minmax, distill_loss, fill_teacher_cache, sample_crops
from cddfuse.train.losses import ssim_loss


class PlainCNN(nn.Module):
    """``layers`` 3x3 convolutions of ``width`` channels at full resolution; residual over (A + B) / 2."""

    def __init__(self, width: int = 16, layers: int = 5) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        cin = 2
        for _ in range(layers - 1):
            mods += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
            cin = width
        mods.append(nn.Conv2d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.sigmoid(a + b - 1 + self.net(torch.cat([a, b], 1)))


class _Sep(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.pw(F.relu(self.dw(x))))


class TinyUNet(nn.Module):
    """Depthwise-separable U-Net: 1/2, 1/4, 1/8 resolution, decoder back to full resolution."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        c = [width, 2 * width, 4 * width]
        self.inp = nn.Conv2d(2, c[0], 3, 2, 1)
        self.d1, self.d2 = _Sep(c[0], c[1], 2), _Sep(c[1], c[2], 2)
        self.mid = _Sep(c[2], c[2])
        self.u2, self.u1 = _Sep(c[2] + c[1], c[1]), _Sep(c[1] + c[0], c[0])
        self.out = nn.Conv2d(c[0] + 2, 1, 3, padding=1)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        h, w = a.shape[-2:]
        x = torch.cat([a, b], 1)
        ph, pw = (-h) % 8, (-w) % 8
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate")
        e0 = F.relu(self.inp(xp))
        e1 = self.d1(e0)
        e2 = self.mid(self.d2(e1))
        y = self.u2(torch.cat([F.interpolate(e2, scale_factor=2.0, mode="bilinear"), e1], 1))
        y = self.u1(torch.cat([F.interpolate(y, scale_factor=2.0, mode="bilinear"), e0], 1))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear")[:, :, :h, :w]
        return torch.sigmoid(a + b - 1 + self.out(torch.cat([y, x], 1)))


def build(name: str, cfg: dict) -> nn.Module:
    if name == "cnn":
        return PlainCNN()
    if name == "unet":
        return TinyUNet()
    return CDDFuseLite(LiteConfig.from_dict(cfg["model"]))


def gflop(model: nn.Module, h: int = 480, w: int = 640) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    a = torch.rand(1, 1, h, w)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(a, a)
    return fc.get_total_flops() / 1e9


def ms_per_pair(model: nn.Module, h: int = 480, w: int = 640, reps: int = 10) -> float:
    a, b = torch.rand(1, 1, h, w), torch.rand(1, 1, h, w)
    with torch.inference_mode():
        for _ in range(2):
            model(a, b)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(a, b)
            times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def probe(model: nn.Module, cfg: dict, train: list, val: list, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["optim"]["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * k / steps))))
    model.train()
    for k in range(steps):
        a, b, t = sample_crops(train, k, 0, cfg["train"]["batch_size"], cfg["data"]["crop_size"], True)
        loss = distill_loss(a, b, t, model(a, b), cfg["loss"])["total"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    psnr, ssim = [], []
    with torch.no_grad():
        for tr in val:
            a, b, t = (torch.from_numpy(x)[None, None] for x in (tr.a, tr.b, tr.t))
            sn, tn = _minmax(model(a, b)), _minmax(t)
            psnr.append(10 * math.log10(1 / max(float(torch.mean((sn - tn) ** 2)), 1e-12)))
            ssim.append(1 - 2 * float(ssim_loss(sn, tn)))
    return {"val_psnr": sum(psnr) / len(psnr), "val_ssim": sum(ssim) / len(ssim)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--candidates", default="cnn,unet,coef")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cached-only", action="store_true", help="use only the pairs the teacher cache holds already")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DC.load_config(args.config)
    DC.apply_overrides(cfg, args.overrides)
    DC.validate(cfg)
    cache = Path(cfg["data"]["cache_dir"] or "runs/teacher_cache")
    if args.cached_only:  # what the cache holds already (a probe while it fills)
        from cddfuse.train.data import find_pairs
        from cddfuse.train.distill_cache import TeacherCache, resolve_teacher

        tc = TeacherCache(cache, resolve_teacher(cfg["teacher"], cfg["task"], cfg["residual"]))

        def held(a: str, b: str) -> list:
            items = [tc.read(tc.item_path(pa, pb)) for _, pa, pb in find_pairs(a, b)]
            return [x for x in items if x is not None]

        train, val = held(cfg["data"]["a"], cfg["data"]["b"]), held(cfg["val"]["a"], cfg["val"]["b"])
        print(f"cached: {len(train)} training, {len(val)} validation pairs")
    else:
        train, val, _ = fill_teacher_cache(cfg, cache, print)
    rows = []
    for name in args.candidates.split(","):
        model = build(name, cfg)
        row = {"candidate": name, "params": sum(p.numel() for p in model.parameters()),
               "gflop_640x480": round(gflop(model.eval()), 3), "ms_640x480": round(ms_per_pair(model), 1)}
        t0 = time.perf_counter()
        row.update({k: round(v, 3) for k, v in probe(model, cfg, train, val, args.steps).items()})
        row["probe_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"steps": args.steps, "config": args.config, "overrides": args.overrides,
                                        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
