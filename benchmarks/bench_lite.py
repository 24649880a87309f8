"""CDDFuse-lite against the exact CDDFuse, measured in the same run: size, speed, throughput, memory.

What it measures (CPU, ``--threads`` torch threads, default 2), each line with the CPU time other
processes used meanwhile ("others %", percent of one core: the machine may be shared):

* **params and FLOPs** (``torch.utils.flop_counter``: 2 FLOPs per multiply-add, convolutions and matrix
  products) at 640x480; the exact network is counted at 160x120 and scaled by the pixels (every layer's
  cost is proportional to the pixel count);
* **in-process ms per pair**: ``Fuser.fuse_luminance`` (the network as the pipeline runs it) at 640x480
  for both networks and at 2048x2048 for lite (the exact one too with ``--full``: about two minutes),
  and ``Fuser.fuse`` on decoded arrays (luminance, network, normalisation, colour) for lite, gray and
  colour pairs; the speed-up is exact / lite at 640x480, same threads, same process;
* **folder throughput**: :func:`cddfuse.fusion.fuse_folders` on ``--pairs`` real pairs resized to 640x480
  (RoadScene: infrared gray, visible colour; PNG decode and encode included), in-process, and the whole
  ``cddfuse fuse DIR DIR -o OUT --method lite`` command (Python start and model load included);
* **video**: ``cddfuse fuse IR.mp4 VIS.mp4 -o out.mp4 --method lite`` on ``--frames`` frames of 640x480
  (H.264 clips made from a real RoadScene pair with a moving crop window): the frames/s the command
  reports (reading, fusing, encoding) and frames / wall time of the whole command;
* **ONNX Runtime**: the exported lite graph on 640x480 and 2048x2048 (exact at 640x480 with ``--full``),
  and the pipeline, folder and video rows again with ``backend="onnx"`` (``--backend onnx``);
* **peak memory** (RSS high-water mark of a fresh ``cddfuse fuse`` process) with lite at 640x480,
  2048x2048 and 4096x4096 (gray pairs), exact at 640x480.

Weights: the bundled ones (``--lite-weights PATH`` / ``--exact-weights PATH`` otherwise). Without lite
weights a seeded random CDDFuse-lite of the default size is used and the output says so: speed and
memory do not depend on the weights' values.

Usage: CDDFUSE_SHARED=/path/to/shared python benchmarks/bench_lite.py [--quick] [--full] [--threads 2]
       [--json out.json]

``--quick`` (about a minute): fewer repeats, 8 folder pairs, 40 video frames, no 4096x4096. The default
run takes about 3-4 minutes on a quiet 2-core machine, ``--full`` about 6 more.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from _harness import ROOT, SHARED, Load, cpu_name, loadavg, median_ms, run_cddfuse, src_env, utc_now

sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from cddfuse.fusion import Fuser, fuse_folders  # noqa: E402
from cddfuse.io.color import split_luminance  # noqa: E402

ROAD = SHARED / "data" / "test" / "RoadScene"
SIZE = (480, 640)  # h, w


# ----------------------------------------------------------------------------- helpers

def real_pair(size: tuple[int, int], name: str = "FLIR_00977") -> tuple[np.ndarray, np.ndarray]:
    """A RoadScene pair resized to ``size`` (h, w): infrared gray uint8, visible RGB uint8."""
    h, w = size
    ir = cv2.imread(str(ROAD / "ir" / f"{name}.jpg"), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(ROAD / "vi" / f"{name}.jpg"), cv2.IMREAD_COLOR)
    ir = cv2.resize(ir, (w, h), interpolation=cv2.INTER_CUBIC)
    vi = cv2.resize(vi, (w, h), interpolation=cv2.INTER_CUBIC)[..., ::-1]
    return np.ascontiguousarray(ir), np.ascontiguousarray(vi)


def flops(model: torch.nn.Module, call: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and frames, no 4096x4096 (about a minute)")
    ap.add_argument("--full", action="store_true", help="also the exact network at 2048x2048 and with ONNX Runtime")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lite-weights", default=None)
    ap.add_argument("--exact-weights", default=None)
    ap.add_argument("--pairs", type=int, default=None, help="folder pairs (default 32, --quick 8)")
    ap.add_argument("--frames", type=int, default=None, help="video frames (default 150, --quick 40)")
    ap.add_argument("--json", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("CDDFUSE_TUNE", "0")  # the exact engine's built-in settings (no 10 s probe)
    repeats = 5 if args.quick else 20
    n_pairs = args.pairs or (8 if args.quick else 32)
    n_frames = args.frames or (40 if args.quick else 150)
    results: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str]] = []  # (measure, exact, lite, others %)
    started = time.perf_counter()
    load0 = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lite-"))

    lite_weights = args.lite_weights
    lite_note = ""
    if lite_weights is None:
        from cddfuse.errors import CDDFuseError
        from cddfuse.models.pretrained import lite_pretrained_path

        try:
            lite_weights = str(lite_pretrained_path("ivf"))
            lite_note = "bundled IVF lite weights"
        except CDDFuseError:
            from cddfuse.models.lite import create_lite
            from cddfuse.models.weights import save_lite_weights

            torch.manual_seed(0)
            lite_weights = str(save_lite_weights(create_lite(), tmp / "lite_random.safetensors", task="ivf",
                                                 residual="vis", provenance={"purpose": "benchmark: speed only"}))
            lite_note = "seeded random lite weights of the default size (no bundled ones yet; speed only)"
    else:
        lite_note = Path(lite_weights).name
    lite = Fuser(weights=lite_weights, method="lite", device="cpu")
    exact = Fuser(weights=args.exact_weights, method="cddfuse", device="cpu")
    results["weights"] = {"lite": lite_note, "exact": args.exact_weights or "bundled IVF weights"}

    # ---- size
    assert lite.model is not None and exact.model is not None
    p_lite = sum(p.numel() for p in lite.model.parameters())
    p_exact = sum(p.numel() for p in exact.model.parameters())
    h, w = SIZE
    z = torch.zeros(1, 1, h, w)
    f_lite = flops(lite.model, lambda: lite.model(z, z))  # type: ignore[misc]
    zs = torch.zeros(1, 1, h // 4, w // 4)
    assert exact.residual is not None
    f_exact = 16 * flops(exact.model, lambda: exact.model(zs, zs, residual=exact.residual))  # type: ignore[misc]
    results.update(params={"exact": p_exact, "lite": p_lite}, gflop_640x480={"exact": f_exact / 1e9,
                                                                             "lite": f_lite / 1e9})
    rows.append(("parameters", f"{p_exact:,}", f"{p_lite:,}", ""))
    rows.append(("GFLOP per 640x480 pair (convolutions and matrix products)", f"{f_exact / 1e9:,.0f}",
                 f"{f_lite / 1e9:.2f}", ""))

    # ---- in-process speed
    ir, vi = real_pair(SIZE)
    ya, yb = split_luminance(ir).y, split_luminance(vi).y
    exact.fuse_luminance(ya[:64, :64].copy(), yb[:64, :64].copy())  # oneDNN set-up, outside the timing
    ms_exact, oth = median_ms(lambda: exact.fuse_luminance(ya, yb), 1 if not args.full else 2, warmup=0)
    ms_lite, oth2 = median_ms(lambda: lite.fuse_luminance(ya, yb), repeats, warmup=3)
    results["ms_640x480_network"] = {"exact": ms_exact, "lite": ms_lite, "speedup": ms_exact / ms_lite}
    rows.append(("network ms per 640x480 pair (`Fuser.fuse_luminance`)", f"{ms_exact:,.0f}", f"{ms_lite:.1f}",
                 f"{oth:.0f} / {oth2:.0f}"))
    rows.append(("speed-up at 640x480 (exact / lite)", "", f"**{ms_exact / ms_lite:,.0f}x**", ""))
    ms_gray, oth = median_ms(lambda: lite.fuse(ir, yb), repeats, warmup=2)
    ms_color, oth2 = median_ms(lambda: lite.fuse(ir, vi), repeats, warmup=2)
    results["ms_640x480_pipeline"] = {"lite_gray": ms_gray, "lite_colour": ms_color}
    rows.append(("pipeline ms per 640x480 pair, gray (`Fuser.fuse` on arrays)", "",
                 f"{ms_gray:.1f} (**{1e3 / ms_gray:.1f} pairs/s**)", f"{oth:.0f}"))
    rows.append(("pipeline ms per 640x480 pair, colour visible", "",
                 f"{ms_color:.1f} (**{1e3 / ms_color:.1f} pairs/s**)", f"{oth2:.0f}"))
    big = real_pair((2048, 2048))
    ba, bb = split_luminance(big[0]).y, split_luminance(big[1]).y
    ms_big, oth = median_ms(lambda: lite.fuse_luminance(ba, bb), 2 if args.quick else 5, warmup=1)
    ms_big_exact = float("nan")
    if args.full:
        ms_big_exact, _ = median_ms(lambda: exact.fuse_luminance(ba, bb), 1, warmup=0)
    results["ms_2048_network"] = {"exact": ms_big_exact, "lite": ms_big}
    rows.append(("network ms per 2048x2048 pair", f"{ms_big_exact:,.0f}" if args.full else "(--full)",
                 f"{ms_big:.0f}", f"{oth:.0f}"))

    # ---- ONNX Runtime
    try:
        from cddfuse.engine.onnx import OnnxFuser

        runner = OnnxFuser(lite.model, residual=None, threads=args.threads)
        onnx_ms, oth = median_ms(lambda: runner.fuse_luminance(ya, yb), repeats, warmup=2)
        onnx_big, _ = median_ms(lambda: runner.fuse_luminance(ba, bb), 2 if args.quick else 3, warmup=1)
        onnx_exact = float("nan")
        if args.full:
            exact_runner = OnnxFuser(exact.model, residual=exact.residual, threads=args.threads)
            onnx_exact, _ = median_ms(lambda: exact_runner.fuse_luminance(ya, yb), 1, warmup=0)
        results["onnxruntime_ms"] = {"lite_640x480": onnx_ms, "lite_2048": onnx_big, "exact_640x480": onnx_exact}
        rows.append(("ONNX Runtime ms per 640x480 pair", f"{onnx_exact:,.0f}" if args.full else "(--full)",
                     f"{onnx_ms:.1f}", f"{oth:.0f}"))
        rows.append(("ONNX Runtime ms per 2048x2048 pair", "", f"{onnx_big:.0f}", ""))
        class OnnxThreads(Fuser):  # the pipeline around the network stage of the session above (--threads)
            def fuse_luminance(self, ya: np.ndarray, yb: np.ndarray, *, cancel: Any = None) -> np.ndarray:
                return runner.fuse_luminance(np.asarray(ya, np.float32), np.asarray(yb, np.float32))

        lite_onnx = OnnxThreads(weights=lite_weights, method="lite", device="cpu", backend="onnx")
        ms_og, oth = median_ms(lambda: lite_onnx.fuse(ir, yb), repeats, warmup=2)
        ms_oc, oth2 = median_ms(lambda: lite_onnx.fuse(ir, vi), repeats, warmup=2)
        results["ms_640x480_pipeline"].update(lite_onnx_gray=ms_og, lite_onnx_colour=ms_oc)
        rows.append(("pipeline ms per 640x480 pair, gray, `backend=\"onnx\"`", "",
                     f"{ms_og:.1f} (**{1e3 / ms_og:.1f} pairs/s**)", f"{oth:.0f}"))
        rows.append(("pipeline ms per 640x480 pair, colour visible, `backend=\"onnx\"`", "",
                     f"{ms_oc:.1f} (**{1e3 / ms_oc:.1f} pairs/s**)", f"{oth2:.0f}"))
    except ImportError:
        lite_onnx = None
        rows.append(("ONNX Runtime", "", "not installed (pip install cddfuse[onnx])", ""))

    # ---- folder throughput (in-process, then the whole command)
    names = sorted(p.stem for p in (ROAD / "ir").glob("*.jpg"))
    for side in ("ir", "vi"):
        (tmp / side).mkdir()
    for i in range(n_pairs):
        a, b = real_pair(SIZE, names[i % len(names)])
        cv2.imwrite(str(tmp / "ir" / f"{i:03d}.png"), a)
        cv2.imwrite(str(tmp / "vi" / f"{i:03d}.png"), b[..., ::-1])
    with Load() as load:
        report = fuse_folders(lite, tmp / "ir", tmp / "vi", tmp / "out_inproc")
    assert report.ok and len(report.done) == n_pairs
    results["folder_pairs_per_s"] = {"in_process": n_pairs / load.wall}
    rows.append((f"folder, in-process (`fuse_folders`, {n_pairs} PNG pairs 640x480, decode + encode)", "",
                 f"**{n_pairs / load.wall:.1f} pairs/s**", f"{load.others:.0f}"))
    if lite_onnx is not None:
        with Load() as load:
            report = fuse_folders(lite_onnx, tmp / "ir", tmp / "vi", tmp / "out_onnx")
        assert report.ok and len(report.done) == n_pairs
        results["folder_pairs_per_s"]["in_process_onnx"] = n_pairs / load.wall
        rows.append(("folder, in-process, `backend=\"onnx\"`", "", f"**{n_pairs / load.wall:.1f} pairs/s**",
                     f"{load.others:.0f}"))
    env = src_env(OMP_NUM_THREADS=str(args.threads))
    wall, peak, oth, _, _ = run_cddfuse(["fuse", str(tmp / "ir"), str(tmp / "vi"), "-o", str(tmp / "out_cmd"),
                                    "--method", "lite", "--weights", lite_weights, "-q"], env)
    results["folder_pairs_per_s"]["command"] = n_pairs / wall
    rows.append((f"folder, `cddfuse fuse DIR DIR -o OUT --method lite` (start to exit, {n_pairs} pairs)", "",
                 f"{n_pairs / wall:.1f} pairs/s ({wall:.1f} s)", f"{oth:.0f}"))

    # ---- video
    try:
        from cddfuse.io.video import VideoWriter

        src_ir, src_vi = real_pair((600, 800), "FLIR_00977")
        for name, img in (("ir", src_ir), ("vi", src_vi)):
            with VideoWriter(tmp / f"{name}.mp4", Fraction(25)) as out:
                for i in range(n_frames):
                    y, x = (i % 60) * 2, (i % 80) * 2
                    out.write(np.ascontiguousarray(img[y:y + SIZE[0], x:x + SIZE[1]]))
        wall, peak_v, oth, err, _ = run_cddfuse(["fuse", str(tmp / "ir.mp4"), str(tmp / "vi.mp4"), "-o",
                                            str(tmp / "fused.mp4"), "--method", "lite", "--weights", lite_weights],
                                           env)
        reported = re.search(r"\(([\d.]+) frames/s\)", err)
        fps = float(reported.group(1)) if reported else float("nan")
        results["video_frames_per_s"] = {"reported": fps, "start_to_exit": n_frames / wall, "peak_mib": peak_v}
        rows.append((f"video, `cddfuse fuse IR.mp4 VIS.mp4 -o out.mp4 --method lite` ({n_frames} frames 640x480, "
                     "H.264 in and out)", "", f"**{fps:.1f} frames/s** (whole command: {n_frames / wall:.1f})",
                     f"{oth:.0f}"))
        if lite_onnx is not None:
            wall, _, oth, err, _ = run_cddfuse(["fuse", str(tmp / "ir.mp4"), str(tmp / "vi.mp4"), "-o",
                                           str(tmp / "fused_onnx.mp4"), "--method", "lite", "--weights",
                                           lite_weights, "--backend", "onnx"], env)
            reported = re.search(r"\(([\d.]+) frames/s\)", err)
            fps = float(reported.group(1)) if reported else float("nan")
            results["video_frames_per_s"].update(reported_onnx=fps, start_to_exit_onnx=n_frames / wall)
            rows.append(("video, the same with `--backend onnx`", "",
                         f"**{fps:.1f} frames/s** (whole command: {n_frames / wall:.1f})", f"{oth:.0f}"))
    except ImportError:
        rows.append(("video", "", "PyAV not installed (pip install cddfuse[video])", ""))

    # ---- peak memory of fresh processes
    peaks: dict[str, float] = {}
    sizes = [(480, 640), (2048, 2048)] + ([] if args.quick else [(4096, 4096)])
    for hh, ww in sizes:
        a, b = real_pair((hh, ww), "FLIR_00211")
        cv2.imwrite(str(tmp / f"m_ir_{hh}.png"), a)
        cv2.imwrite(str(tmp / f"m_vi_{hh}.png"), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY))
    wall, peak, oth, _, _ = run_cddfuse(["fuse", str(tmp / "m_ir_480.png"), str(tmp / "m_vi_480.png"), "-o",
                                    str(tmp / "m_exact.png"), "-q"] +
                                   (["--weights", args.exact_weights] if args.exact_weights else []), env)
    peaks["exact_640x480"] = peak
    rows.append(("peak RSS, `cddfuse fuse` a 640x480 gray pair (fresh process; wall start to exit)",
                 f"{peak:.0f} MiB ({wall:.1f} s)", "", f"{oth:.0f}"))
    for hh, ww in sizes:
        wall, peak, oth, _, _ = run_cddfuse(["fuse", str(tmp / f"m_ir_{hh}.png"), str(tmp / f"m_vi_{hh}.png"), "-o",
                                        str(tmp / f"m_{hh}.png"), "--method", "lite", "--weights", lite_weights,
                                        "-q"], env)
        peaks[f"lite_{ww}x{hh}"] = peak
        rows.append((f"peak RSS, `cddfuse fuse --method lite` a {ww}x{hh} gray pair", "",
                     f"{peak:.0f} MiB ({wall:.1f} s)", f"{oth:.0f}"))
    results["peak_rss_mib"] = peaks

    # ---- report
    load1 = loadavg()
    when = utc_now()
    results["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                          "loadavg_before": load0, "loadavg_after": load1, "date": when,
                          "torch": torch.__version__, "python": platform.python_version()}
    print(f"### {when}: CDDFuse-lite against CDDFuse\n")
    print(f"* **Machine:** {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads; torch "
          f"{torch.__version__}, Python {platform.python_version()}")
    print(f"* **Load:** 1-minute load average {load0[0]:.1f} before, {load1[0]:.1f} after; \"others %\" = CPU used "
          "by other processes during the measurement, in % of one core")
    print(f"* **Weights:** lite: {lite_note}; exact: {results['weights']['exact']}")
    print(f"* **Command:** `python benchmarks/bench_lite.py{' --quick' if args.quick else ''}"
          f"{' --full' if args.full else ''}` ({time.perf_counter() - started:.0f} s)\n")
    print("| measure | CDDFuse (exact) | CDDFuse-lite | others % |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
