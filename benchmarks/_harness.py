"""What every benchmark script here shares: the machine, its load, timers, fresh processes, the report.

The scripts run as ``python benchmarks/<name>.py`` (this folder is first on ``sys.path``) and import it
as ``import _harness as H`` or ``from _harness import ...``. Linux first: ``/proc`` gives the CPU's
model and flags, the CPU time of the whole machine (to tell how much *other* processes used while a
measurement ran: the machine may be shared) and a process's peak resident memory; elsewhere those
read as unknown or zero.

* machine: :func:`cpu_model`, :func:`cpu_features` (AVX2, AVX-512, AVX512-BF16, AMX), :func:`cpu_name`,
  :func:`machine` (all of it with cores, torch threads, versions, memory, UTC date, load average);
* load: :func:`busy_now`, :func:`wait_quiet`, :class:`Load` (others' CPU % during a block);
* timing: :func:`time_calls` (median / best of N after warm-up, wall and CPU), :func:`median_ms`;
* fresh processes: :func:`run_command`, :func:`run_cddfuse` (peak RSS of the child alone),
  :func:`peak_rss_bytes`, :func:`src_env`;
* report: :func:`utc_now`, :func:`machine_lines`, :func:`append_section` (a Markdown section appended
  to a results file).
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))

#: The instruction-set features that decide the speed of a float32 / bfloat16 network, as /proc/cpuinfo names them.
WIDE_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


# ----------------------------------------------------------------------------- the machine

def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = value.split()
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """The processor's model name, e.g. ``AMD EPYC 9R14`` (``platform.processor()`` off Linux)."""
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def cpu_features() -> list[str]:
    """Which of :data:`WIDE_FEATURES` this processor has."""
    flags = set(_cpuinfo()[1])
    return [f for f in WIDE_FEATURES if f in flags]


def cpu_name() -> str:
    """Model and wide features in one, e.g. ``AMD EPYC 9R14 (avx2)``."""
    return f"{cpu_model()} ({', '.join(cpu_features())})"


def cores() -> int:
    """CPUs this process may run on (its affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_gib() -> float:
    """The machine's physical memory in GiB (NaN where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages (NaN where unknown)."""
    try:
        return os.getloadavg()
    except (OSError, AttributeError):
        return (float("nan"),) * 3


def utc_now() -> str:
    """The date and time in UTC, e.g. ``2026-12-06 14:30 UTC``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine(threads: int | None = None) -> dict[str, Any]:
    """Everything a number depends on: CPU model and features, cores, torch threads (``threads``, else
    torch's current count), torch and Python versions, memory, the UTC date and the load average now."""
    import torch

    return {"cpu": cpu_model(), "features": cpu_features(), "cores": cores(),
            "threads": threads if threads is not None else torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "memory_gib": round(memory_gib(), 1),
            "date": utc_now(), "loadavg": loadavg()}


def machine_lines(threads: int | None, load_before: tuple[float, ...], load_after: tuple[float, ...]) -> list[str]:
    """Markdown bullet lines for a results section: the machine and the load around the run."""
    m = machine(threads)
    return [f"* **Machine:** {cpu_name()}, {m['cores']} cores, {m['threads']} torch threads; torch {m['torch']}, "
            f"Python {m['python']}",
            f"* **Load:** 1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"]


# ----------------------------------------------------------------------------- the machine's load

def cpu_totals() -> tuple[int, int]:
    """``(all, idle)`` CPU time of the whole machine since boot, in clock ticks (``/proc/stat``; idle
    includes iowait)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    return sum(v), v[3] + v[4]


def busy_jiffies() -> int:
    """CPU time of the whole machine, not idle, in clock ticks."""
    total, idle = cpu_totals()
    return total - idle


def busy_now(interval: float = 1.0) -> float:
    """The fraction of the machine's CPU time that was busy over the next ``interval`` seconds (0 to 1)."""
    t0, i0 = cpu_totals()
    time.sleep(interval)
    t1, i1 = cpu_totals()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, limit: float = 0.1) -> float:
    """Wait until the CPU is (nearly) idle, at most ``max_wait`` seconds; returns the seconds waited."""
    t0 = time.time()
    while time.time() - t0 < max_wait:
        if busy_now(2.0) < limit:
            break
    return time.time() - t0


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Load:
    """CPU time that other processes used while the block ran, in percent of one core (``others``;
    this process and its waited-for children are not counted), and the block's wall seconds (``wall``)."""

    wall: float = 0.0
    others: float = 0.0

    def __enter__(self) -> Load:
        self._busy, self._own, self._t0 = busy_jiffies(), _own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        others = (busy_jiffies() - self._busy) / os.sysconf("SC_CLK_TCK") - (_own_cpu_s() - self._own)
        self.others = max(0.0, 100.0 * others / max(self.wall, 1e-9))


# ----------------------------------------------------------------------------- timing

@dataclass
class Timing:
    """Wall and CPU seconds of each timed call, and others' CPU % over all of them."""

    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    others: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpus)

    @property
    def cpu_best(self) -> float:
        return min(self.cpus)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1,
               sync: Callable[[], Any] | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (wall: ``perf_counter``, CPU:
    ``process_time``; ``sync``, e.g. ``torch.cuda.synchronize``, runs inside each timing). On a shared
    machine the best time is the run least disturbed by the others; the median is the typical one."""
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    timing = Timing()
    with Load() as load:
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            fn()
            if sync is not None:
                sync()
            timing.walls.append(time.perf_counter() - w)
            timing.cpus.append(time.process_time() - c)
    timing.others = load.others
    return timing


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """``(median ms, others %)`` of ``repeats`` calls after ``warmup`` calls."""
    t = time_calls(fn, repeats, warmup)
    return 1e3 * t.median, t.others


# ----------------------------------------------------------------------------- fresh processes

def src_env(**overrides: str) -> dict[str, str]:
    """This process's environment with the checkout's ``src`` first on ``PYTHONPATH``, and ``overrides``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.update(overrides)
    return env


def peak_rss_bytes() -> int:
    """This process's peak resident memory (``VmHWM``; ``ru_maxrss`` where there is no ``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Run(NamedTuple):
    """A finished command: wall seconds start to exit, its peak RSS in MiB (NaN where not measured),
    others' CPU % meanwhile, its stderr and stdout."""

    wall: float
    peak_mib: float
    others: float
    stderr: str
    stdout: str = ""


def run_command(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> Run:
    """Run ``cmd`` to the end (a failure ends the benchmark with its stderr's tail)."""
    with Load() as load:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return Run(load.wall, float("nan"), load.others, done.stderr, done.stdout)


# The child reports its own VmHWM as the last stderr line: getrusage's ru_maxrss of a child would carry the
# parent's peak across fork and exec.
_CDDFUSE_CHILD = ("import re, sys; from cddfuse.cli.main import main; rc = main(sys.argv[1:]); "
                  "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr); "
                  "sys.exit(rc)")


def run_cddfuse(args: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> Run:
    """``cddfuse *args`` in a fresh Python process: wall start to exit and the peak RSS of that process alone."""
    done = run_command([sys.executable, "-c", _CDDFUSE_CHILD, *args], env, timeout)
    lines = done.stderr.rstrip("\n").split("\n")
    return done._replace(peak_mib=int(lines[-1]) / 1024, stderr="\n".join(lines[:-1]) + "\n")


# ----------------------------------------------------------------------------- the report

def append_section(path: Path, text: str) -> None:
    """Append ``text`` (a Markdown section, from its heading on) to the results file ``path``, one blank
    line before it."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n" + text.rstrip("\n") + "\n")
