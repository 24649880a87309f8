"""``cddfuse tune``: measure the engine's speed choices on this CPU and cache them."""
from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ._args import whole

HELP = "measure how many tiles the engine should compute at once on this CPU, and cache it"

DESCRIPTION = """\
The engine's speed on a CPU depends on how many tiles it computes at the same time, each on its
own thread, which never changes the result (the tile side and the op backend, which set the float
rounding, are fixed, so that results do not depend on the thread count or the process layout).
`cddfuse fuse` measures it once per machine and thread count on first use (with one thread there
is nothing to measure); this command measures it again (about 20 s on two cores) and rewrites
this machine's entry in the cache (CDDFUSE_CACHE, else ~/.cache/cddfuse/tuning.json). Processes
started together wait for one another's tuning instead of all measuring at once (at most
CDDFUSE_TUNE_WAIT seconds, default 300). Delete the file to forget every machine; CDDFUSE_TUNE=0
turns tuning off (the built-in default is used: one tile per thread, up to 4)."""


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 256x384, got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"the probe must be at least 16x16, got {text!r}")
    if h > MAX_PROBE or w > MAX_PROBE:
        raise argparse.ArgumentTypeError(f"the probe may be at most {MAX_PROBE}x{MAX_PROBE} (a few tiles are "
                                         f"enough to compare), got {text!r}")
    return h, w


#: The largest probe side: a few tiles are enough.
MAX_PROBE = 2048


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("tune", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--show", action="store_true", help="print this machine's cached settings and the cache path; "
                                                       "measure nothing")
    p.add_argument("--size", type=_size, default=None, metavar="HxW",
                   help="size of the probe pair (default 256x384; larger is slower and steadier)")
    p.add_argument("--repeats", type=whole(1, 100), default=1, help="timings per candidate, best kept (default 1)")
    p.add_argument("--threads", type=whole(1, 4096), default=None,
                   help="intra-op threads to tune for (default: PyTorch's)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from ..engine import tuning

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    print(f"machine: {tuning.machine_key()}")
    print(f"cache:   {tuning.cache_path()}")
    if args.show:
        found = tuning.cached_settings()
        if found is None:
            print("no settings cached for this machine (the built-in defaults apply until it is tuned)")
        else:
            print(f"cached:  workers={found.workers}")
        return 0
    result = tuning.tune(size=args.size or tuning.PROBE_SIZE, repeats=args.repeats,
                         log=lambda line: print(f"  {line}", file=sys.stderr))
    print(f"chosen:  workers={result.workers}" + ("" if result.timings else " (one thread: nothing to measure)"))
    return 0
