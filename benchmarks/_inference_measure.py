"""The measurements of ``benchmarks/run_all.py``, each run in a fresh process (``run_all.py --child SPEC``):
:func:`child` takes a spec (what to run, at which size, with how many threads) and returns its numbers,
peak RSS included. Random-weight networks of the paper's size; inputs are a TNO pair resized to each size
when the shared data is present, else random images."""
from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as H
from _harness import SHARED


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


