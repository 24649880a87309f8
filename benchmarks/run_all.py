"""The whole CDDFuse inference benchmark in one command; writes benchmarks/RESULTS.md.

Usage::

    python benchmarks/run_all.py                 # everything (~30-40 min on 2 cores, incl. a 4096x4096 pair)
    python benchmarks/run_all.py --quick         # no 4096x4096 full-model run, no torch.compile (~15 min)
    python benchmarks/run_all.py --only latency  # one section: peak, latency, levers, layers, memory, train, throughput

What it measures (every measurement in a fresh subprocess, so peak RSS is per run):

* the machine's fp32 peaks: matrix product (``torch.mm``, 4096^3) and oneDNN 3x3 convolution;
* latency for one pair at 256x256, 640x480 and 768x576: the straightforward eager implementation
  (:mod:`cddfuse.models.reference`, the authors' layer-by-layer code, sources encoded one after the
  other), the module (:class:`cddfuse.models.CDDFuse`) and the optimised path
  (:func:`cddfuse.engine.tiled_fuse` with the tile :func:`~cddfuse.engine.choose_tile`
  picks), with the largest output difference to the straightforward path;
* the levers one by one at 640x480 (cumulative ladder), threads, torch.compile, ONNX Runtime;
* achieved GFLOP/s per layer type of the optimised path (torch profiler) against the peaks;
* peak RSS (VmHWM) at 640x480, 2048x2048 (3 GB and 1 GB budgets) and 4096x4096 (3 GB budget);
* folder-mode throughput on CPU (decode and write overlapped with fusion) against a serial loop;
* training: forward + backward of the module vs the straightforward implementation.

The machine is shared: before each measurement the runner waits (up to a limit) for the other
processes to go quiet, and records how busy the CPU was with other work while it ran
("others %" columns: 0 = undisturbed; 100 = another process kept one core busy throughout).
Random-weight networks of the paper's size are used (speed does not depend on the weights); the
inputs are a TNO pair resized to each size when the shared data is present, else random images.

This file runs the measurements and writes the report; the measurements themselves are in
``_inference_measure.py`` (each in a fresh process: ``run_all.py --child SPEC``), the report in
``_inference_report.py``, the tools every benchmark shares in ``_harness.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as H
from _inference_measure import child
from _inference_report import render

SIZES = [(256, 256), (480, 640), (576, 768)]  # (H, W)
LEVER_SIZE = (480, 640)
RSS_SIZES = ((2048, 2048), (4096, 4096))
MIB = 2 ** 20


# ============================================================================ parent side
def run_child(spec: dict[str, Any], args) -> dict[str, Any]:
    waited = H.wait_quiet(args.max_wait) if args.max_wait > 0 else 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, i0 = H.cpu_totals()
    w0 = time.perf_counter()
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec.get("threads", 2))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=args.child_timeout)
    wall = time.perf_counter() - w0
    t1, i1 = H.cpu_totals()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({spec}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    own = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    busy_total = ((t1 - t0) - (i1 - i0)) / ticks  # CPU-seconds used by everything
    res["others_pct"] = max(0.0, 100.0 * (busy_total - own) / max(1e-9, wall))  # in "cores x 100"
    res["others_pct"] = min(res["others_pct"], 100.0 * ncpu)
    res["waited_s"] = waited
    res["child_wall"] = wall
    res["child_maxrss"] = c1.ru_maxrss * 1024  # KiB on Linux: max over all children so far
    tag = spec.get("label", spec["kind"])
    best = min(res["times"]) if res.get("times") else res.get("wall", 0.0)
    print(f"  {tag}: {best:.2f} s, peak RSS {res.get('peak_rss', 0) / MIB:.0f} MiB, "
          f"others {res['others_pct']:.0f}%", file=sys.stderr, flush=True)
    return res


def macs_per_pixel(cfg, optimised: bool) -> float:
    """Multiply-adds per output pixel of a fused pair (both sources encoded)."""
    c = cfg.dim
    hid = int(c * cfg.ffn_expansion)
    rb = 3 * c * c + 3 * c * 9 + 2 * c * c // cfg.num_heads + c * c + c * 2 * hid + 2 * hid * 9 + hid * c
    bh = int(c * cfg.base_ffn_expansion)
    lite_qkv = 3 * c * c * 9 if optimised else c * 3 * c + 3 * c * 3 * c * 9
    lt = lite_qkv + 2 * c * c // cfg.num_heads + c * c + c * 2 * bh + 2 * bh * 2 * 9 + bh * c
    half = c // 2
    ih = int(half * cfg.inn_expansion)
    node = c * c + 3 * (half * ih + ih * 9 + ih * half)
    enc = cfg.in_channels * c * 9 + cfg.encoder_blocks * rb + lt + cfg.encoder_inn_layers * node
    dec = 2 * c * c + cfg.decoder_blocks * rb + c * (c // 2) * 9 + (c // 2) * cfg.out_channels * 9
    return 2 * enc + lt + cfg.fuse_inn_layers * node + dec


def machine() -> dict[str, str]:
    import torch

    cpu, features, mem = H.cpu_model(), H.cpu_features(), H.memory_gib()
    isa = "AVX-512" if "avx512f" in features else ("AVX2" if "avx2" in features else "?")
    cache = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cache = ", ".join(line.split(":", 1)[0].strip() + " " + line.split(":", 1)[1].strip()
                          for line in out.splitlines() if line.strip().startswith(("L2 cache", "L3 cache")))
    except OSError:
        pass
    import re

    cfg = torch.__config__.show()
    onednn = re.search(r"MKL-DNN v([0-9.]+)", cfg) or re.search(r"oneDNN v([0-9.]+)", cfg)
    blas = re.search(r"BLAS_INFO=(\w+)", cfg)
    return {
        "cpu": f"{cpu} ({isa}), {os.cpu_count()} cores" + (f"; {cache}" if cache else ""),
        "memory": f"{mem:.0f} GiB",
        "software": f"Python {platform.python_version()}, torch {torch.__version__} "
                    f"(oneDNN {onednn.group(1) if onednn else '?'}, BLAS {blas.group(1) if blas else '?'}), "
                    f"{platform.platform()}",
    }


def _maxdiff(p1: str, p2: str) -> float:
    import numpy as np

    return float(np.abs(np.load(p1) - np.load(p2)).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="skip the 4096x4096 full-model run and torch.compile")
    ap.add_argument("--only", action="append",
                    choices=("peak", "latency", "levers", "layers", "memory", "train", "throughput"),
                    help="run only these sections (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of the optimised path")
    ap.add_argument("--max-wait", type=float, default=300.0,
                    help="seconds to wait for a quiet CPU before each measurement (0: do not wait)")
    ap.add_argument("--child-timeout", type=float, default=3600.0)
    ap.add_argument("--out", default=str(H.HERE / "RESULTS.md"))
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny sizes: tests the harness
    args = ap.parse_args(argv)
    global SIZES, LEVER_SIZE, RSS_SIZES
    if args.smoke:
        SIZES, LEVER_SIZE, RSS_SIZES = [(32, 32), (48, 64), (40, 56)], (48, 64), ((64, 64), (128, 128))
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    sections = set(args.only or ("peak", "latency", "levers", "layers", "memory", "train", "throughput"))
    import torch  # noqa: F401  (versions for the report)

    from cddfuse.models import CDDFuseConfig

    cfg = CDDFuseConfig()
    macs_ref = macs_per_pixel(cfg, optimised=False)
    macs_opt = macs_per_pixel(cfg, optimised=True)
    tmp = tempfile.mkdtemp(prefix="cddfuse-bench-")
    th = args.threads
    R: dict[str, Any] = {"machine": machine(), "date": H.utc_now(),
                         "threads": th, "macs_ref": macs_ref, "macs_opt": macs_opt}
    started = time.time()
    raw_path = Path(args.out).with_suffix(".json")
    previous: dict[str, Any] = json.loads(raw_path.read_text()) if args.only and raw_path.exists() else {}
    if "peak" in sections:
        print("peak", file=sys.stderr)
        R["peak"] = run_child({"kind": "peak", "threads": th, "label": "peaks"}, args)
    if "latency" in sections:
        print("latency", file=sys.stderr)
        lat = []
        for (h, w) in SIZES:
            row: dict[str, Any] = {"size": (h, w)}
            ref_out = os.path.join(tmp, f"ref_{h}x{w}.npy")
            row["reference"] = run_child({"kind": "run", "variant": "reference", "size": (h, w), "threads": th,
                                          "save": ref_out, "label": f"reference {w}x{h}"}, args)
            mod_out = os.path.join(tmp, f"mod_{h}x{w}.npy")
            row["module"] = run_child({"kind": "run", "variant": "module", "size": (h, w), "threads": th,
                                       "save": mod_out, "label": f"module {w}x{h}"}, args)
            opt_out = os.path.join(tmp, f"opt_{h}x{w}.npy")
            row["optimised"] = run_child({"kind": "run", "variant": "engine", "size": (h, w), "threads": th,
                                          "reps": args.reps, "save": opt_out, "label": f"optimised {w}x{h}"}, args)
            row["diff_module"] = _maxdiff(ref_out, mod_out)
            row["diff_optimised"] = _maxdiff(ref_out, opt_out)
            lat.append(row)
        R["latency"] = lat
    if "levers" in sections:
        print("levers at 640x480", file=sys.stderr)
        s = LEVER_SIZE
        lev = []

        def lever(name, spec):
            spec = dict({"kind": "run", "size": s, "threads": th, "label": name}, **spec)
            out = os.path.join(tmp, f"lever_{len(lev)}.npy")
            spec["save"] = out
            lev.append((name, run_child(spec, args), out))

        lever("straightforward eager (authors' layer-by-layer code), torch.no_grad",
              {"variant": "reference", "no_grad": True})
        lever("+ torch.inference_mode", {"variant": "reference"})
        lever("+ module: LayerNorm as one fused op, no reshape copies around the attention, "
              "both sources as one batch (qkv1 and qkv2 as published)", {"variant": "module", "uncomposed": True})
        lever("+ channels-last layout (module)", {"variant": "module", "uncomposed": True, "channels_last": True})
        lever("+ composed Lite-attention convolution (module, NCHW): 3.1x fewer FLOPs in its dominant layer",
              {"variant": "module"})
        lever("+ engine, plain PyTorch ops, one whole-image tile (q/k and v only where needed, attention folded "
              "into project_out, rho/eta merged)", {"variant": "engine", "ops": "plain", "tile": None})
        lever("+ oneDNN primitives with fused post-ops (ReLU6, GELU, gate product, residual adds)",
              {"variant": "engine", "ops": "fused", "tile": None})
        lever(f"+ cache-sized tiles ({_speed_tile()} px; exact tiling, fixed-size tile arrays), one tile at a "
              "time with 2 intra-op threads", {"variant": "engine", "ops": "fused", "tile": "auto", "workers": 1,
                                               "reps": 2, "malloc_tuning": False})
        lever("+ two tiles at a time, one thread each",
              {"variant": "engine", "ops": "fused", "tile": "auto", "reps": args.reps, "malloc_tuning": False})
        lever("+ glibc malloc set to keep and reuse freed tile buffers (fixed 32 MiB mmap threshold, no "
              "automatic trim; fewer page faults) and full-size maps reused across passes (the default)",
              {"variant": "engine", "ops": "fused", "tile": "auto", "reps": args.reps})
        lever("  same with 1 thread in all", {"variant": "engine", "ops": "fused", "tile": "auto", "threads": 1})
        if not args.quick:
            lever("  alternative: torch.compile (inductor, CPU) on the module, channels-last",
                  {"variant": "module", "compile": True, "channels_last": True, "reps": 2})
        try:
            import onnxruntime  # noqa: F401

            lever("  alternative: ONNX Runtime (CPU EP, all graph optimisations) on the exported module",
                  {"variant": "onnx", "reps": 2})
        except ImportError:
            pass
        base = lev[0][2]
        R["levers"] = [(n, r, _maxdiff(base, o)) for n, r, o in lev]
    if "layers" in sections:
        print("per layer type", file=sys.stderr)
        R["layers"] = run_child({"kind": "run", "variant": "profile", "size": LEVER_SIZE, "threads": th,
                                 "label": "profile 640x480"}, args)
    if "train" in sections:
        print("training step", file=sys.stderr)
        R["train"] = {v: run_child({"kind": "train", "variant": v, "batch": 2, "crop": 96, "threads": th,
                                    "label": f"train {v}"}, args) for v in ("reference", "module")}
    if "memory" in sections:
        print("peak memory", file=sys.stderr)
        mem = []
        (h1, w1), (h2, w2) = LEVER_SIZE, RSS_SIZES[0]
        h3, w3 = RSS_SIZES[1]
        mem.append((f"{w1}x{h1}, optimised path (default tiles)", run_child(
            {"kind": "run", "variant": "engine", "size": LEVER_SIZE, "threads": th, "label": "rss 640x480"}, args)))
        lat_rows = R.get("latency") or previous.get("latency")  # the whole-image runs of the latency section
        mem.append((f"{w1}x{h1}, straightforward eager (whole image)", lat_rows[1]["reference"] if lat_rows else None))
        mem.append((f"{w1}x{h1}, module (whole image, eager)", lat_rows[1]["module"] if lat_rows else
                    run_child({"kind": "run", "variant": "module", "size": LEVER_SIZE,
                               "threads": th, "label": "rss module 640x480"}, args)))
        mem.append((f"{w2}x{h2}, --max-memory 3G", run_child(
            {"kind": "run", "variant": "engine", "size": RSS_SIZES[0], "threads": th, "budget": 3 * 2 ** 30,
             "numpy_out": True, "label": "rss 2048^2"}, args)))
        mem.append((f"{w2}x{h2}, --max-memory 1G", run_child(
            {"kind": "run", "variant": "engine", "size": RSS_SIZES[0], "threads": th, "budget": 2 ** 30,
             "numpy_out": True, "label": "rss 2048^2 1G"}, args)))
        if not args.quick:
            mem.append((f"{w3}x{h3}, --max-memory 3G", run_child(
                {"kind": "run", "variant": "engine", "size": RSS_SIZES[1], "threads": th, "budget": 3 * 2 ** 30,
                 "numpy_out": True, "label": "rss 4096^2"}, args)))
        R["memory"] = mem
    if "throughput" in sections:
        print("folder throughput", file=sys.stderr)
        R["throughput"] = run_child({"kind": "throughput", "threads": th, "pairs": 2 if args.smoke else 8,
                                     "label": "folder mode"}, args)
    R["total_min"] = (time.time() - started) / 60
    R["args"] = {"quick": bool(args.quick), "only": sorted(sections) if args.only else None}
    R["section_dates"] = {sec: R["date"] for sec in sections}
    raw = raw_path
    if previous:  # re-run sections: keep the others from the last run, say which is newer
        old = previous
        R = dict(old, **{k: v for k, v in R.items() if k in sections},
                 section_dates=dict(old.get("section_dates", {}), **R["section_dates"]))
        R["reruns"] = old.get("reruns", []) + [{"sections": sorted(sections), "date": R["section_dates"][min(sections)],
                                                 "quick": bool(args.quick)}]
    raw.write_text(json.dumps(R, indent=1, default=list) + "\n")
    Path(args.out).write_text(render(R, args))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _speed_tile() -> int:
    from cddfuse.engine import CPU_SPEED_TILE

    return CPU_SPEED_TILE


if __name__ == "__main__":
    sys.exit(main())
