"""Throughput of `cddfuse serve` against the command line, on the same 640x480 pairs.

Starts a real server (`cddfuse serve`, bundled IVF weights, CPU) in a subprocess, waits for
/api/health, sends N pairs one after the other with httpx (what a client would do), and compares
with `cddfuse fuse` folder mode on the same N pairs (model load excluded from neither: both timings
start once the model is loaded -- the server's start-up is before the first request, folder mode's
is measured separately and subtracted). Prints pairs per minute for both.

With ``--robustness`` it measures instead how long clients can hold the server (real server,
bundled IVF weights, CPU, loopback):

* slow bodies: 4 sockets send headers with ``Content-Length: 1000000`` and then one byte every 5 s;
  the seconds until the server closes each, and the status and latency of the fusions (a 64x48 pair)
  sent meanwhile;
* slow headers: 4 sockets send a request line and then a header byte a second; seconds until closed;
* a vanished client: a 4000x4000 pair (TNO 01 tiled), the client closes its socket 5 s after the
  upload; seconds until ``/api/health`` shows ``busy`` 0, and the next small fusion's status;
* SIGTERM and SIGINT while a 4000x4000 fusion runs: seconds until the port is closed and until the
  process has exited, and its exit code.

Usage::

    python benchmarks/bench_serve.py --pairs 5
    python benchmarks/bench_serve.py --robustness
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


def start_server(*extra: str) -> tuple[subprocess.Popen, int]:
    import httpx

    port = free_port()
    server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--device", "cpu", *extra],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return server, port
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not start")


def _held_until_closed(port: int, first: bytes, step: bytes, interval: float, limit: float) -> tuple[float, str]:
    """Open a socket, send ``first``, then ``step`` every ``interval`` s; seconds until the server closes it
    (or ``limit``), and the status line it sent, if any."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.monotonic()
        s.sendall(first)
        s.settimeout(interval)
        status = "none"
        while time.monotonic() - t0 < limit:
            try:
                data = s.recv(65536)
                if not data:
                    break
                if status == "none":
                    status = data.split(b"\r\n")[0].decode(errors="replace")
            except socket.timeout:
                try:
                    s.sendall(step)
                except OSError:
                    break
            except OSError:
                break
        return time.monotonic() - t0, status


def make_large_pair(folder: Path, side: int = 4000) -> tuple[Path, Path]:
    """TNO pair 01, tiled (mirrored) to side x side: a real pair, large enough that fusion takes minutes."""
    paths = []
    for sub in ("ir", "vi"):
        img = cv2.imread(str(SHARED / "data" / "test" / "TNO" / sub / "01.png"), cv2.IMREAD_GRAYSCALE)
        reps = (-(-side // img.shape[0]), -(-side // img.shape[1]))
        import numpy as np

        tiled = np.block([[img if (i + j) % 2 == 0 else img[:, ::-1] for j in range(reps[1])]
                          for i in range(reps[0])])[:side, :side]
        path = folder / f"large_{sub}.png"
        cv2.imwrite(str(path), tiled)
        paths.append(path)
    return paths[0], paths[1]


def _multipart(a: Path, b: Path) -> tuple[bytes, str]:
    import httpx

    req = httpx.Request("POST", "http://x/api/fuse", files={"a": (a.name, a.read_bytes(), "image/png"),
                                                            "b": (b.name, b.read_bytes(), "image/png")})
    return req.read(), req.headers["content-type"]


def _start_large_upload(port: int, body: bytes, kind: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST /api/fuse HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
              .encode() + body)
    return s


def _wait_busy(url: str, want: int, limit: float) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if httpx.get(url + "/api/health", timeout=10).json()["busy"] == want:
            return time.monotonic() - t0
        time.sleep(0.05)
    return float("inf")


def robustness() -> int:
    import threading

    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_pairs(root, 1)
        name = sorted((root / "ir").iterdir())[0].name
        for sub in ("ir", "vi"):
            img = cv2.imread(str(root / sub / name), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(root / f"small_{sub}.png"), cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA))
        small = {"a": (root / "small_ir.png").read_bytes(), "b": (root / "small_vi.png").read_bytes()}
        large_a, large_b = make_large_pair(root)
        body, kind = _multipart(large_a, large_b)
        print(f"large pair: 4000x4000, multipart body {len(body) / 2**20:.1f} MiB")

        server, port = start_server()
        url = f"http://127.0.0.1:{port}"
        try:
            # slow bodies and slow headers, with fusions meanwhile
            held: list[tuple[str, float, str]] = []
            slow_body = (b"POST /api/fuse HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=z\r\n"
                         b"Content-Length: 1000000\r\n\r\n")
            jobs = [("body", slow_body, b"x", 5.0) for _ in range(4)]
            jobs += [("headers", b"POST /api/fuse HTTP/1.1\r\n", b"X", 1.0) for _ in range(4)]

            def hold(kind: str, first: bytes, step: bytes, interval: float) -> None:
                seconds, status = _held_until_closed(port, first, step, interval, 120)
                held.append((kind, seconds, status))

            threads = [threading.Thread(target=hold, args=job) for job in jobs]
            for t in threads:
                t.start()
            fusions = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 20:
                t1 = time.monotonic()
                r = httpx.post(url + "/api/fuse", files={k: (k + ".png", v, "image/png") for k, v in small.items()},
                               timeout=120)
                fusions.append((r.status_code, time.monotonic() - t1))
                time.sleep(1)
            for t in threads:
                t.join()
            for what in ("body", "headers"):
                times = [s for k, s, _ in held if k == what]
                statuses = sorted({st for k, _, st in held if k == what})
                print(f"slow {what}: 4 sockets held {min(times):.1f}-{max(times):.1f} s, then closed (answer: "
                      f"{', '.join(statuses)})")
            print(f"fusions meanwhile: {len(fusions)}, statuses {sorted({c for c, _ in fusions})}, "
                  f"{min(s for _, s in fusions):.1f}-{max(s for _, s in fusions):.1f} s each")

            # a vanished client
            s = _start_large_upload(port, body, kind)
            print(f"large pair admitted after {_wait_busy(url, 1, 300):.1f} s")
            time.sleep(5)
            s.close()
            gone = time.monotonic()
            dropped = _wait_busy(url, 0, 600)
            r = httpx.post(url + "/api/fuse", files={k: (k + ".png", v, "image/png") for k, v in small.items()},
                           timeout=300)
            print(f"vanished client: busy back to 0 {dropped:.1f} s after the client closed its socket; the next "
                  f"fusion: {r.status_code} {time.monotonic() - gone - dropped:.1f} s later")
        finally:
            server.terminate()
            server.wait(timeout=120)

        # SIGTERM / SIGINT with work running
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            server, port = start_server()
            url = f"http://127.0.0.1:{port}"
            s = _start_large_upload(port, body, kind)
            _wait_busy(url, 1, 300)
            time.sleep(5)
            t0 = time.monotonic()
            server.send_signal(sig)
            closed = float("inf")
            while server.poll() is None and time.monotonic() - t0 < 300:
                if closed == float("inf"):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    except OSError:
                        closed = time.monotonic() - t0
                time.sleep(0.02)
            if server.poll() is None:
                server.kill()
            code = server.wait()
            s.close()
            print(f"{signal.Signals(sig).name} 5 s into a 4000x4000 fusion: port closed after {closed:.1f} s, process "
                  f"exited after {time.monotonic() - t0:.1f} s with code {code}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--robustness", action="store_true", help="measure slow/vanished clients and shutdown instead")
    args = ap.parse_args()
    if args.robustness:
        return robustness()
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
