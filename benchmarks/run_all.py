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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
SIZES = [(256, 256), (480, 640), (576, 768)]  # (H, W)
LEVER_SIZE = (480, 640)
RSS_SIZES = ((2048, 2048), (4096, 4096))
MIB = 2 ** 20


# ============================================================================ helpers (child side)
def _vmrss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _model(width: int = 64, seed: int = 0):
    import torch

    from cddfuse.models import CDDFuse, CDDFuseConfig

    torch.manual_seed(seed)
    cfg = CDDFuseConfig() if width == 64 else CDDFuseConfig(dim=width, num_heads=max(1, width // 8))
    model = CDDFuse(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("body.weight", "temperature", "scale")):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("body.bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _inputs(h: int, w: int):
    """A TNO pair resized to h x w (float32 [0,1]), else random images; numpy (H, W) each."""
    import numpy as np

    ir, vi = SHARED / "data/test/TNO/ir/01.png", SHARED / "data/test/TNO/vi/01.png"
    if ir.exists() and vi.exists():
        import cv2

        out = []
        for p in (ir, vi):
            im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            out.append(cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA if im.shape[0] > h else cv2.INTER_CUBIC)
                       .astype(np.float32) / 255.0)
        return out[0], out[1], "TNO 01 resized"
    rng = np.random.default_rng(0)
    return rng.random((h, w), dtype=np.float32), rng.random((h, w), dtype=np.float32), "random"


def _timeit(fn, reps: int) -> tuple[float, list[float]]:
    times = []
    out = None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(int(spec.get("threads", 2)))
    if spec.get("malloc_tuning") is False:
        os.environ["CDDFUSE_MALLOC_TUNING"] = "0"
    kind = spec["kind"]
    res: dict[str, Any] = {"spec": spec, "rss_start": _vmrss()}
    if kind == "peak":
        import torch.nn.functional as F

        with torch.inference_mode():
            a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
            a @ b
            _, ts = _timeit(lambda: a @ b, 3)
            res["mm_gflops"] = 2 * 4096 ** 3 / min(ts) / 1e9
            x = torch.randn(2, 64, 256, 256).contiguous(memory_format=torch.channels_last)
            wt = torch.randn(128, 64, 3, 3)
            F.conv2d(x, wt, padding=1)
            _, ts = _timeit(lambda: F.conv2d(x, wt, padding=1), 5)
            res["conv_gflops"] = 2 * 2 * 256 * 256 * 64 * 128 * 9 / min(ts) / 1e9
        return res
    if kind == "train":
        return _child_train(spec, res)
    if kind == "throughput":
        return _child_throughput(spec, res)
    h, w = spec["size"]
    model = _model(spec.get("width", 64))
    ya, yb, res["inputs"] = _inputs(h, w)
    ta, tb = torch.from_numpy(ya)[None, None], torch.from_numpy(yb)[None, None]
    variant = spec["variant"]
    reps = int(spec.get("reps", 1))
    tile = spec.get("tile", "auto")
    if variant == "reference":
        from cddfuse.models.reference import reference_from

        net = reference_from(model)
        ctx = torch.no_grad if spec.get("no_grad") else torch.inference_mode
        with ctx():
            out, ts = _timeit(lambda: net(ta, tb, "vis"), reps)
    elif variant == "module":
        net = model
        if spec.get("uncomposed"):
            _uncompose(net)
        if spec.get("channels_last"):
            net = net.to(memory_format=torch.channels_last)
            ta, tb = (t.contiguous(memory_format=torch.channels_last) for t in (ta, tb))
        if spec.get("compile"):
            t0 = time.perf_counter()
            net = torch.compile(net)
            with torch.inference_mode():
                net(ta, tb, "vis")
            res["compile_s"] = time.perf_counter() - t0
        with torch.inference_mode():
            out, ts = _timeit(lambda: net(ta, tb, "vis"), reps)
    elif variant == "engine":
        from cddfuse import engine

        if tile == "auto":
            t, on_disk = engine.choose_tile(h, w, device="cpu", config=model.config,
                                           memory_budget=spec.get("budget"))
        else:
            t, on_disk = tile, False
        res["tile"], res["on_disk"] = t, on_disk
        passes: list[float] = []
        kw = dict(tile=t, store="disk" if on_disk else "memory", ops=spec.get("ops", "auto"),
                  memory_budget=spec.get("budget"), workers=spec.get("workers"))
        if spec.get("numpy_out"):
            out_arr = np.empty((h, w), np.float32)
            out, ts = _timeit(lambda: engine.tiled_fuse(model, ya, yb, "vis", out=out_arr,
                                                       progress=lambda i, n: passes.append(time.perf_counter()),
                                                       **kw), reps)
            out = torch.from_numpy(out)[None, None]
        else:
            out, ts = _timeit(lambda: engine.tiled_fuse(model, ta, tb, "vis",
                                                       progress=lambda i, n: passes.append(time.perf_counter()),
                                                       **kw), reps)
        res["pass_starts"] = passes[-11:]
    elif variant == "onnx":
        from cddfuse.engine.onnx import OnnxFuser

        t0 = time.perf_counter()
        f = OnnxFuser(model, residual="vis", threads=int(spec.get("threads", 2)))
        res["export_s"] = time.perf_counter() - t0
        out, ts = _timeit(lambda: torch.from_numpy(f.run(ta.numpy(), tb.numpy())), reps)
    elif variant == "profile":
        return _child_profile(spec, res, model, ta, tb)
    else:
        raise ValueError(variant)
    res["times"] = ts
    res["peak_rss"] = H.peak_rss_bytes()
    res["minor_faults_per_run"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt / max(1, len(ts))
    if spec.get("save"):
        np.save(spec["save"], out[0, 0].float().numpy())
    return res


def _uncompose(model) -> None:
    """Undo the composed Lite-attention convolution (for the lever ladder): qkv2(qkv1(x)) again."""
    import importlib

    C = importlib.import_module("cddfuse.models.cddfuse")

    def forward(self, x):
        q, k, v = self.qkv2(self.qkv1(x)).chunk(3, dim=1)
        return self.proj(C._channel_attention(q, k, v, self.num_heads, self.scale))

    for m in model.modules():
        if isinstance(m, C.LiteAttention):
            m.forward = forward.__get__(m)


def _child_profile(spec, res, model, ta, tb):
    """Time per layer type of the optimised path, and GFLOP/s from the recorded shapes."""
    from torch.profiler import ProfilerActivity, profile

    from cddfuse import engine

    h, w = spec["size"]
    t, _ = engine.choose_tile(h, w, device="cpu", config=model.config)
    # one tile at a time (workers=1): the profiler attributes every op to its layer type
    engine.tiled_fuse(model, ta, tb, "vis", tile=t, workers=1)  # warm-up (oneDNN primitives)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        engine.tiled_fuse(model, ta, tb, "vis", tile=t, workers=1)
        wall = time.perf_counter() - t0
    conv_ops = {"mkldnn::_convolution_pointwise", "aten::mkldnn_convolution", "aten::convolution",
                "aten::_convolution", "aten::conv2d"}
    gemm_ops = {"mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::linear"}
    attn_ops = {"aten::bmm", "aten::baddbmm"}
    cats: dict[str, dict[str, float]] = {}

    def add(cat, sec, flops):
        c = cats.setdefault(cat, {"s": 0.0, "flop": 0.0})
        c["s"] += sec
        c["flop"] += flops

    for e in prof.events():
        name = e.name
        sec = e.self_cpu_time_total / 1e6
        parent = e.cpu_parent
        outer = parent is None or parent.name not in (conv_ops | gemm_ops | attn_ops)
        shapes = e.input_shapes or []
        flops = 0.0
        if name in conv_ops:
            x, wt = shapes[0], shapes[1]
            if len(shapes) > 2 and wt == x:  # _convolution_pointwise.binary(X, other, W, ...)
                wt = shapes[2]
            groups = max(1, x[1] // max(1, wt[1])) if len(wt) == 4 and len(x) == 4 else 1
            if outer and len(x) == 4 and len(wt) == 4:
                flops = 2.0 * x[0] * x[2] * x[3] * wt[0] * wt[1] * wt[2] * wt[3]
            cat = "3x3 conv, full (composed Lite qkv, patch embed, head)" if groups == 1 else \
                "3x3 conv, depthwise/grouped"
            add(cat, sec, flops)
        elif name in gemm_ops:
            if outer and len(shapes) >= 2 and len(shapes[0]) == 2 and len(shapes[1]) == 2:
                m, k = shapes[0]
                if name == "mkldnn::_linear_pointwise" and len(shapes) >= 3 and len(shapes[1]) == 2 \
                        and shapes[1][0] == m and len(shapes[2]) == 2:  # .binary(X, other, W)
                    n = shapes[2][0]
                elif name == "aten::addmm":
                    m, k = shapes[1]
                    n = shapes[2][1]
                elif name == "aten::mm":
                    n = shapes[1][1]
                else:
                    n = shapes[1][0]
                flops = 2.0 * m * k * n
            add("1x1 conv (matrix products)", sec, flops)
        elif name in attn_ops:
            if outer and len(shapes) >= 2:
                a_, b_ = (shapes[0], shapes[1]) if name == "aten::bmm" else (shapes[1], shapes[2])
                if len(a_) == 3 and len(b_) == 3:
                    flops = 2.0 * a_[0] * a_[1] * a_[2] * b_[2]
            add("attention statistics and C x C products", sec, flops)
        else:
            add("memory-bound (LayerNorm, GELU gate, exp, copies, adds, pads)", sec, 0.0)
    total = sum(c["s"] for c in cats.values())
    res["wall"] = wall
    res["categories"] = {k: {"s": v["s"] * wall / total, "flop": v["flop"]} for k, v in cats.items()}
    res["peak_rss"] = H.peak_rss_bytes()
    return res


def _child_throughput(spec, res):
    """Folder mode (`cddfuse fuse IR_DIR VIS_DIR -o OUT`, bundled IVF weights) on RoadScene pairs,
    against the same pairs decoded, fused and written one after the other."""
    import numpy as np

    from cddfuse.cli.main import main as cli_main
    from cddfuse.fusion import Fuser
    from cddfuse.io.image import read_image, write_image

    n = int(spec.get("pairs", 8))
    root = Path(tempfile.mkdtemp(prefix="cddfuse-throughput-"))
    ir_dir, vi_dir = root / "ir", root / "vi"
    ir_dir.mkdir()
    vi_dir.mkdir()
    src = SHARED / "data/test/RoadScene"
    names = sorted(p.name for p in (src / "ir").iterdir())[:n] if (src / "ir").is_dir() else []
    if names:
        for name in names:
            (ir_dir / name).symlink_to(src / "ir" / name)
            (vi_dir / name).symlink_to(src / "vi" / name)
        res["inputs"] = f"RoadScene, first {len(names)} pairs"
    else:  # no shared data: random 505x351 pairs
        rng = np.random.default_rng(0)
        names = [f"{i:02d}.png" for i in range(n)]
        for name in names:
            write_image(ir_dir / name, rng.random((351, 505), dtype=np.float32))
            write_image(vi_dir / name, rng.random((351, 505, 3), dtype=np.float32))
        res["inputs"] = f"{n} random 505x351 pairs"
    res["sizes"] = sorted({read_image(ir_dir / nm).shape[:2] for nm in names})
    t = time.perf_counter()
    rc = cli_main(["fuse", str(ir_dir), str(vi_dir), "-o", str(root / "out"), "--device", "cpu", "-q"])
    res["folder_s"] = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"folder mode exited {rc}")
    fuser = Fuser(device="cpu")
    dec = fus = enc = 0.0
    for name in names:
        t0 = time.perf_counter()
        a, b = read_image(ir_dir / name, keep_integer=True), read_image(vi_dir / name, keep_integer=True)
        t1 = time.perf_counter()
        img = fuser.fuse(a, b)
        t2 = time.perf_counter()
        write_image(root / f"serial_{name}", img)
        t3 = time.perf_counter()
        dec, fus, enc = dec + t1 - t0, fus + t2 - t1, enc + t3 - t2
    res.update(pairs=len(names), decode_s=dec, fuse_s=fus, encode_s=enc, times=[res["folder_s"]])
    res["peak_rss"] = H.peak_rss_bytes()
    return res


def _child_train(spec, res):
    """Forward + backward (sum of the output) of one batch, module vs straightforward."""
    import torch

    from cddfuse.models.reference import reference_from

    model = _model().train()
    net = model if spec["variant"] == "module" else reference_from(model).train()
    n, s = spec["batch"], spec["crop"]
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(n, 1, s, s, generator=g), torch.rand(n, 1, s, s, generator=g)

    def step():
        net.zero_grad(set_to_none=True)
        out = net(a, b, "vis")
        out.sum().backward()

    step()
    _, ts = _timeit(step, int(spec.get("reps", 2)))
    res["times"] = ts
    res["peak_rss"] = H.peak_rss_bytes()
    return res


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
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
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


# ============================================================================ report
def _disturbed(r: dict[str, Any]) -> str:
    p = r.get("others_pct", 0.0)
    return f"{p:.0f}%" + (" (disturbed)" if p >= 15 else "")


def render(R: dict[str, Any], args) -> str:
    L: list[str] = []
    m = R["machine"]
    quick = R.get("args", {}).get("quick", args.quick)
    only = R.get("args", {}).get("only")
    flags = (" --quick" if quick else "") + "".join(f" --only {sec}" for sec in (only or []))
    L += ["# CDDFuse inference benchmark", "",
          f"Generated by `python benchmarks/run_all.py{flags}` on {R['date']} "
          f"({R['total_min']:.0f} min); raw numbers in `{Path(args.out).with_suffix('.json').name}`.", ""]
    for rr in R.get("reruns", []):
        L += [f"Re-run later with `--only {' --only '.join(rr['sections'])}`{' --quick' if rr['quick'] else ''}: "
              f"{', '.join(rr['sections'])} ({rr['date']}); the other sections are from the run above.", ""]
    L += [
          f"* **Machine:** {m['cpu']}; {m['memory']} RAM", f"* **Software:** {m['software']}",
          f"* **Settings:** {R['threads']} threads, float32, batch of one pair, residual = visible image; "
          "paper-size network (dim 64, 4+4 Restormer blocks), random weights.",
          "* **Others %:** CPU time used by other processes while a measurement ran, in percent of one core "
          "(the machine is shared; >= 15% is marked *disturbed* and those times are upper bounds).",
          f"* **FLOPs:** the published network is {R['macs_ref'] / 1e6:.2f} M multiply-adds per output pixel "
          f"({2 * R['macs_ref'] * 480 * 640 / 1e12:.2f} TFLOP for 640x480); the optimised path computes the same "
          f"function with {R['macs_opt'] / 1e6:.2f} M (the Lite Transformer's 1x1 and 3x3 qkv convolutions "
          "composed into one).", ""]
    peak = R.get("peak")
    if peak:
        L += ["## Peaks", "",
              f"* fp32 matrix product (`torch.mm`, 4096^3, MKL): **{peak['mm_gflops']:.0f} GFLOP/s** "
              f"(others {_disturbed(peak)})",
              f"* fp32 3x3 convolution (oneDNN, channels-last, 64->128): **{peak['conv_gflops']:.0f} GFLOP/s**", "",
              f"Compute floor for 640x480 at the matrix-product peak: "
              f"{2 * R['macs_ref'] * 480 * 640 / peak['mm_gflops'] / 1e9:.1f} s for the published FLOPs.", ""]
    lat = R.get("latency")
    if lat:
        L += ["## Latency, one pair (CPU)", "",
              "| size | straightforward eager | module | optimised (first / best) | speed-up | effective GFLOP/s* | "
              "max abs diff to straightforward (module / optimised) | peak RSS straightforward / optimised "
              "| others % |",
              "|---|---|---|---|---|---|---|---|---|"]
        for row in lat:
            h, w = row["size"]
            r, mo, o = row["reference"], row["module"], row["optimised"]
            tr, tm, to = min(r["times"]), min(mo["times"]), min(o["times"])
            gf = 2 * R["macs_ref"] * h * w / to / 1e9
            L.append(f"| {w}x{h} | {tr:.2f} s | {tm:.2f} s | {o['times'][0]:.2f} / **{to:.2f} s** | {tr / to:.1f}x | "
                     f"{gf:.0f} | {row['diff_module']:.1e} / {row['diff_optimised']:.1e} | "
                     f"{r['peak_rss'] / MIB:.0f} / {o['peak_rss'] / MIB:.0f} MiB | "
                     f"{_disturbed(r)}, {_disturbed(mo)}, {_disturbed(o)} |")
        L += ["", "\\* published FLOPs (2 x multiply-adds) / time: directly comparable with the peaks above "
              "(the optimised path does fewer FLOPs, so this can exceed what it executes).",
              f"Optimised path tile: {lat[1]['optimised'].get('tile')} px (exact tiling; see "
              "`cddfuse.engine.CPU_SPEED_TILE`). 'first' includes one-time oneDNN primitive creation.", ""]
    lev = R.get("levers")
    if lev:
        L += ["## Levers, one at a time (640x480, cumulative unless marked alternative)", "",
              "| step | time | vs. first row | max abs diff to first row | peak RSS | minor page faults per run† "
              "| others % |",
              "|---|---|---|---|---|---|---|"]
        t0 = min(lev[0][1]["times"])
        for name, r, d in lev:
            t = min(r["times"])
            extra = f" (compile {r['compile_s']:.0f} s)" if "compile_s" in r else ""
            extra += f" (export {r['export_s']:.0f} s)" if "export_s" in r else ""
            faults = r.get("minor_faults_per_run")
            L.append(f"| {name}{extra} | {t:.2f} s | {t0 / t:.1f}x | {d:.1e} | {r['peak_rss'] / MIB:.0f} MiB | "
                     f"{'-' if faults is None else f'{faults / 1e6:.2f} M'} | {_disturbed(r)} |")
        L += ["", "† whole process (start-up, model, all timed runs) divided by the number of timed runs: each "
              "fault maps and zeroes a fresh 4 KiB page.", ""]
    lay = R.get("layers")
    if lay:
        peak_mm = R["peak"]["mm_gflops"] if R.get("peak") else float("nan")
        peak_cv = R["peak"]["conv_gflops"] if R.get("peak") else float("nan")
        L += ["## Where the time goes: optimised path, 640x480, per layer type", "",
              f"Wall time {lay['wall']:.2f} s under the profiler, tiles one at a time with {R['threads']} intra-op "
              f"threads (others {_disturbed(lay)}). FLOPs counted from the recorded shapes of the operations "
              "actually run (the optimised network's, incl. halo recomputation).", "",
              "| layer type | time | share | GFLOP | GFLOP/s | % of mm peak | % of conv peak |",
              "|---|---|---|---|---|---|---|"]
        cats = sorted(lay["categories"].items(), key=lambda kv: -kv[1]["s"])
        tot = sum(v["s"] for _, v in cats)
        for name, v in cats:
            gf = v["flop"] / 1e9
            rate = gf / v["s"] if v["s"] > 0 and gf > 0 else 0.0
            L.append(f"| {name} | {v['s']:.2f} s | {100 * v['s'] / tot:.0f}% | {gf:.0f} | "
                     + (f"{rate:.0f} | {100 * rate / peak_mm:.0f}% | {100 * rate / peak_cv:.0f}% |" if rate
                        else "- | - | - |"))
        allf = sum(v["flop"] for _, v in cats) / 1e9
        L += [f"| **all** | {tot:.2f} s | 100% | {allf:.0f} | {allf / tot:.0f} | {100 * allf / tot / peak_mm:.0f}% | "
              f"{100 * allf / tot / peak_cv:.0f}% |", ""]
    tr = R.get("train")
    if tr:
        a, b = min(tr["reference"]["times"]), min(tr["module"]["times"])
        L += ["## Training: forward + backward, batch of 2 pairs of 96x96", "",
              "| implementation | time per step | peak RSS | others % |", "|---|---|---|---|",
              f"| straightforward eager | {a:.2f} s | {tr['reference']['peak_rss'] / MIB:.0f} MiB | "
              f"{_disturbed(tr['reference'])} |",
              f"| module (fused LayerNorm, composed Lite convolution, one encoder batch) | {b:.2f} s ({a / b:.1f}x) | "
              f"{tr['module']['peak_rss'] / MIB:.0f} MiB | {_disturbed(tr['module'])} |",
              "", "Gradients of the module equal the straightforward implementation's (tests/test_fast.py).", ""]
    mem = R.get("memory")
    if mem:
        L += ["## Peak memory (RSS high-water mark of a fresh process)", "",
              "| case | peak RSS | time | tile | feature maps | others % |", "|---|---|---|---|---|---|"]
        for name, r in mem:
            if not r:
                continue
            t = min(r["times"]) if r.get("times") else float("nan")
            L.append(f"| {name} | **{r['peak_rss'] / MIB:.0f} MiB** | {t:.0f} s | {r.get('tile', '-')} | "
                     f"{'disk' if r.get('on_disk') else 'memory'} | {_disturbed(r)} |")
        L += ["", "Peak RSS includes the interpreter, torch and the model (~300 MiB at start-up) and the input and "
              "output images; feature maps on disk live in unlinked temporary files (page cache, not RSS). "
              "With a budget, `cddfuse.engine.MemoryGuard` hands freed heap memory back to the system "
              "whenever the resident size passes the budget less one tile's working memory, so a run sits "
              "just under a generous budget by design (freed memory is kept for reuse until then); the "
              "smaller budgets show what it actually needs.", ""]
    tp = R.get("throughput")
    if tp:
        serial = tp["decode_s"] + tp["fuse_s"] + tp["encode_s"]
        sizes = ", ".join(f"{w}x{h}" for h, w in tp["sizes"])
        L += ["## Folder mode throughput (CPU)", "",
              f"`cddfuse fuse IR_DIR VIS_DIR -o OUT --device cpu` (bundled IVF weights) on {tp['inputs']} "
              f"({sizes}), in a fresh process, against the same pairs decoded, fused and written one after the "
              "other with the same Fuser.", "",
              "| measurement | value |", "|---|---|",
              f"| folder mode, wall time incl. loading the model | {tp['folder_s']:.1f} s "
              f"(**{60 * tp['pairs'] / tp['folder_s']:.1f} pairs/min**) |",
              f"| one after the other: decode + fuse + write | {tp['decode_s']:.2f} + {tp['fuse_s']:.1f} + "
              f"{tp['encode_s']:.2f} = {serial:.1f} s |",
              f"| others % | {_disturbed(tp)} |", "",
              "Decoding and writing run on their own threads while the next pair is fused, so the folder "
              "run costs about the fusion time alone; the two cores are kept busy by the tiled engine "
              "(two tiles at a time, one thread each).", ""]
    L += ["## GPU", "", "| measurement | value |", "|---|---|",
          "| 640x480 latency, fp32 / tf32 / bf16 | not measured (no GPU in this session) |",
          "| pairs per second (batches of same-size pairs) | not measured (no GPU in this session) |",
          "| difference to CPU fp32 | not measured (no GPU in this session) |", ""]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
