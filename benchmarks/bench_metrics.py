"""Benchmark: the twelve fusion metrics, direct implementation vs ``cddfuse.metrics``.

The *direct* implementation below is the straightforward way to code the CDDFuse authors'
definitions (the way their ``utils/Evaluator.py`` does it): 2-D ``scipy.signal.convolve2d`` with
the full Gaussian window for VIF and with the Sobel kernels for Qabf, ``scipy.ndimage.uniform_filter``
for SSIM, a contingency table from ``np.unique`` for MI, boolean-mask assignments, float32 input.
Both are run on the same pairs (the five reference pairs of ``shared/reference/metrics_set1``,
the first one the 768x576 TNO pair of the issue), their values are compared with each other and
with the authors' reference values, and the times and the speed-up are printed.

    .venv/bin/python benchmarks/bench_metrics.py [--repeat 20] [--threads N] [--tune-malloc] [--shared PATH]

``--tune-malloc`` first calls :func:`cddfuse.metrics.tune_malloc` (what ``cddfuse eval`` does):
glibc then keeps freed temporaries for reuse instead of faulting them in again on every call.

Results are recorded in benchmarks/METRICS_RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.signal import convolve2d

import _harness as H

NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE")


# ----------------------------------------------------------------------------- direct implementation
def d_en(f):
    levels = np.uint8(np.round(f)).ravel()
    h = np.bincount(levels, minlength=256) / levels.size
    return float(-np.sum(h * np.log2(h + (h == 0))))


def d_sd(f):
    return float(np.std(f))


def d_sf(f):
    return float(np.sqrt(np.mean((f[:, 1:] - f[:, :-1]) ** 2) + np.mean((f[1:, :] - f[:-1, :]) ** 2)))


def d_ag(f):
    gy, gx = np.gradient(f)
    return float(np.mean(np.sqrt((gx ** 2 + gy ** 2) / 2)))


def _d_mi(x, y):
    xv, xi = np.unique(x.ravel(), return_inverse=True)
    yv, yi = np.unique(y.ravel(), return_inverse=True)
    table = np.zeros((xv.size, yv.size))
    np.add.at(table, (xi.ravel(), yi.ravel()), 1)
    pxy = table / table.sum()
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    return float(np.sum(pxy[nz] * np.log(pxy[nz] / (px @ py)[nz])))


def d_mi(a, b, f):
    return _d_mi(f, a) + _d_mi(f, b)


def _d_corr(x, y):
    xc, yc = x - x.mean(), y - y.mean()
    return float(np.sum(xc * yc) / np.sqrt(np.sum(xc ** 2) * np.sum(yc ** 2)))


def d_scd(a, b, f):
    return _d_corr(a, f - b) + _d_corr(b, f - a)


def d_cc(a, b, f):
    return (_d_corr(a, f) + _d_corr(b, f)) / 2


def d_mse(a, b, f):
    return float((np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2)


def d_psnr(a, b, f):
    return float(10 * np.log10(np.max(f) ** 2 / d_mse(a, b, f)))


def _gauss_window(n):
    sd = n / 5.0
    m = (n - 1) / 2.0
    y, x = np.ogrid[-m:m + 1, -m:m + 1]
    h = np.exp(-(x * x + y * y) / (2 * sd * sd))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


def _d_vif_one(ref, dist):
    eps, sigma_nsq = 1e-10, 2.0
    num = den = 0.0
    for scale in range(1, 5):
        win = _gauss_window(2 ** (5 - scale) + 1)
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1 = convolve2d(ref, win, mode="valid")
        mu2 = convolve2d(dist, win, mode="valid")
        s1 = convolve2d(ref * ref, win, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, win, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        m = s1 < eps
        g[m] = 0
        sv[m] = s2[m]
        s1[m] = 0
        m = s2 < eps
        g[m] = 0
        sv[m] = 0
        m = g < 0
        sv[m] = s2[m]
        g[m] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    ratio = num / den
    return 1.0 if np.isnan(ratio) else float(ratio)


def d_vif(a, b, f):
    return _d_vif_one(a, f) + _d_vif_one(b, f)


def _d_sobel(img):
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)
    sx = convolve2d(img, kx, mode="same")
    sy = convolve2d(img, ky, mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    ang = np.zeros_like(img)
    nz = sx != 0
    ang[~nz] = math.pi / 2
    ang[nz] = np.arctan(sy[nz] / sx[nz])
    return g, ang


def _d_q(ga, aa, gf, af):
    grel = np.zeros_like(ga)
    m = ga > gf
    grel[m] = gf[m] / ga[m]
    m = ga == gf
    grel[m] = gf[m]
    m = ga < gf
    grel[m] = ga[m] / gf[m]
    arel = 1 - np.abs(aa - af) / (math.pi / 2)
    return 0.9994 / (1 + np.exp(-15 * (grel - 0.5))) * 0.9879 / (1 + np.exp(-22 * (arel - 0.8)))


def d_qabf(a, b, f):
    ga, aa = _d_sobel(a)
    gb, ab = _d_sobel(b)
    gf, af = _d_sobel(f)
    return float(np.sum(_d_q(ga, aa, gf, af) * ga + _d_q(gb, ab, gf, af) * gb) / np.sum(ga + gb))


def _d_ssim_one(x, y, r=2.0, w=7):
    ux, uy = ndimage.uniform_filter(x, w), ndimage.uniform_filter(y, w)
    uxx, uyy, uxy = (ndimage.uniform_filter(p, w) for p in (x * x, y * y, x * y))
    cn = w * w / (w * w - 1)
    vx, vy, vxy = cn * (uxx - ux * ux), cn * (uyy - uy * uy), cn * (uxy - ux * uy)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    p = (w - 1) // 2
    return float(s[p:-p, p:-p].mean(dtype=np.float64))


def d_ssim(a, b, f):
    return _d_ssim_one(f, a) + _d_ssim_one(f, b)


DIRECT: dict[str, Callable] = {
    "EN": lambda a, b, f: d_en(f), "SD": lambda a, b, f: d_sd(f), "SF": lambda a, b, f: d_sf(f),
    "AG": lambda a, b, f: d_ag(f), "MI": d_mi, "SCD": d_scd, "VIF": d_vif, "Qabf": d_qabf, "SSIM": d_ssim,
    "CC": d_cc, "PSNR": d_psnr, "MSE": d_mse,
}


def direct_metrics(a, b, f) -> dict[str, float]:
    a, b, f = (np.asarray(x, dtype=np.float32) for x in (a, b, f))  # the authors' float32 gray images
    return {n: DIRECT[n](a, b, f) for n in NAMES}


# ----------------------------------------------------------------------------- timing
def _per_metric(fn: Callable[[str], object], repeat: int) -> dict[str, float]:
    return {n: H.time_calls(lambda n=n: fn(n), repeat, warmup=0).median for n in NAMES}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="timed runs of the fast implementation per pair")
    ap.add_argument("--direct-repeat", type=int, default=3, help="timed runs of the direct implementation per pair")
    ap.add_argument("--threads", type=int, default=None, help="OpenCV threads (default: OpenCV's choice)")
    ap.add_argument("--tune-malloc", action="store_true", help="call cddfuse.metrics.tune_malloc() first")
    ap.add_argument("--shared", default=os.environ.get("CDDFUSE_SHARED")
                    or str(Path(__file__).resolve().parents[2] / "shared"))
    args = ap.parse_args(argv)

    import cv2

    from cddfuse.metrics import compute_metrics, tune_malloc
    from cddfuse.metrics.registry import METRICS

    tuned = tune_malloc() if args.tune_malloc else False
    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    ref_dir = Path(args.shared) / "reference"
    arrays = np.load(ref_dir / "metrics_set1.npz")
    cases = json.loads((ref_dir / "metrics_set1.json").read_text())

    load = H.loadavg()
    print(f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, "
          f"{os.cpu_count()} CPUs, OpenCV threads {cv2.getNumThreads()}, "
          f"malloc {'tuned' if tuned else 'default'}"
          + f", load average {load[0]:.2f}")
    print(f"fast: median of {args.repeat} runs after one warm-up (wall; 'fast cpu s': CPU time of all "
          f"threads); direct: median of {args.direct_repeat}\n")
    print(f"{'pair':34s} {'size':>9s} {'direct s':>9s} {'fast s':>8s} {'speed-up':>9s} {'fast cpu s':>11s} "
          f"{'max rel diff':>13s} {'vs authors':>11s}")
    first = None
    for case in cases:
        i = case["case"]
        a, b, f = (arrays[f"case{i}_{k}"] for k in "abf")
        t0 = time.perf_counter()
        fast_vals = compute_metrics(a, b, f)  # warm-up
        if first is None:
            cold = time.perf_counter() - t0
        direct_vals = direct_metrics(a, b, f)
        fast = H.time_calls(lambda a=a, b=b, f=f: compute_metrics(a, b, f), args.repeat, warmup=0)
        t_fast, t_cpu = fast.median, fast.cpu_median
        t_direct = H.time_calls(lambda a=a, b=b, f=f: direct_metrics(a, b, f), args.direct_repeat, warmup=0).median
        diff = max(abs(fast_vals[n] - direct_vals[n]) / abs(direct_vals[n]) for n in NAMES)
        vs_ref = max(abs(fast_vals[n] - case["metrics"][n]) / abs(case["metrics"][n]) for n in NAMES)
        label = f"{case['a'].split('/')[0]} {Path(case['a']).stem} ({case['rule']})"
        print(f"{label:34s} {a.shape[1]:>4d}x{a.shape[0]:<4d} {t_direct:9.3f} {t_fast:8.4f} "
              f"{t_direct / t_fast:8.1f}x {t_cpu:11.4f} {diff:13.1e} {vs_ref:11.1e}")
        if first is None:
            first = (label, a, b, f)

    print(f"(first call in this process, cold: {cold:.3f} s)")
    label, a, b, f = first
    fa, fb, ff = (x.astype(np.float64) for x in (a, b, f))
    a32, b32, f32 = (x.astype(np.float32) for x in (a, b, f))
    fast_t = _per_metric(lambda n: METRICS[n]._compute(fa, fb, ff), max(3, args.repeat // 2))
    direct_t = _per_metric(lambda n: DIRECT[n](a32, b32, f32), args.direct_repeat)
    print(f"\nper metric on {label}, {a.shape[1]}x{a.shape[0]} (ms; median):")
    print(f"{'metric':8s} {'direct':>9s} {'fast':>8s} {'speed-up':>9s}")
    for n in NAMES:
        print(f"{n:8s} {direct_t[n] * 1e3:9.1f} {fast_t[n] * 1e3:8.2f} {direct_t[n] / fast_t[n]:8.1f}x")
    td, tf = sum(direct_t.values()), sum(fast_t.values())
    print(f"{'sum':8s} {td * 1e3:9.1f} {tf * 1e3:8.2f} {td / tf:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
