"""Throughput of `cddfuse serve` against the command line, on the same 640x480 pairs.

Starts a real server (`cddfuse serve`, bundled IVF weights, CPU) in a subprocess, waits for
/api/health, sends N pairs one after the other with httpx (what a client would do), and compares
with `cddfuse fuse` folder mode on the same N pairs (model load excluded from neither: both timings
start once the model is loaded -- the server's start-up is before the first request, folder mode's
is measured separately and subtracted). Prints pairs per minute for both.

Usage::

    python benchmarks/bench_serve.py --pairs 5
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
CLI = [sys.executable, "-m", "cddfuse.cli.main"]


def make_pairs(folder: Path, n: int) -> None:
    names = sorted((SHARED / "data" / "test" / "TNO" / "ir").iterdir())[:n]
    for sub in ("ir", "vi"):
        (folder / sub).mkdir(parents=True)
        for p in names:
            img = cv2.imread(str(SHARED / "data" / "test" / "TNO" / sub / p.name), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(folder / sub / p.name), cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_pairs(root, args.pairs)
        names = sorted(p.name for p in (root / "ir").iterdir())

        port = free_port()
        server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--device", "cpu", "--queue", "1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            with httpx.Client(timeout=600) as client:
                def send(name: str) -> None:
                    files = {k: (name, (root / sub / name).read_bytes(), "image/png")
                             for k, sub in (("a", "ir"), ("b", "vi"))}
                    r = client.post(url + "/api/fuse", files=files)
                    assert r.status_code == 200, r.text

                send(names[0])  # warm-up (model already loaded; first oneDNN primitives)
                t0 = time.perf_counter()
                for name in names:
                    send(name)
                served = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=60)

        # folder mode: time the whole command, and a run with every output already done (start-up, model
        # load, listing) to subtract
        out = root / "out"
        subprocess.run([*CLI, "fuse", str(root / "ir"), str(root / "vi"), "-o", str(root / "warm"), "-q",
                        "--device", "cpu"], check=True)  # warm caches
        t0 = time.perf_counter()
        subprocess.run([*CLI, "fuse", str(root / "ir"), str(root / "vi"), "-o", str(out), "-q", "--device", "cpu"],
                       check=True)
        cli_total = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*CLI, "fuse", str(root / "ir"), str(root / "vi"), "-o", str(out), "-q", "--device", "cpu",
                        "--weights", str(ROOT / "src/cddfuse/weights/cddfuse_ivf.safetensors")], check=True)
        overhead = time.perf_counter() - t0  # every output exists: start-up and listing only
    cli = cli_total - overhead
    n = len(names)
    print(f"{n} pairs of 640x480 (TNO resized), CPU, bundled IVF weights")
    print(f"server (HTTP upload, fusion, PNG back): {served:.1f} s = {60 * n / served:.2f} pairs/min")
    print(f"cddfuse fuse folder mode: {cli_total:.1f} s incl. {overhead:.1f} s start-up "
          f"= {60 * n / cli:.2f} pairs/min after start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
