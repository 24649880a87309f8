"""``cddfuse bench``: fuse a standard test set, evaluate it, compare with the paper
(logic in :mod:`cddfuse.bench.paper`)."""
from __future__ import annotations

import argparse
import sys

from ..options import BENCH_NORMALIZE_MODES, METHODS, PRECISIONS, TASKS
from ._output import write_output
from .eval import FORMATS
from .vifb import BENCH_EPILOG, add_bench_arguments, check_paper_only

_DESCRIPTION = """\
Fuse a test set with the CDDFuse authors' protocol (gray sources, min-max normalised output,
8-bit PNG), evaluate it with their metrics, and print the mean next to the paper's published
CDDFuse row for that set and the mean/max fusion baselines.

TESTSET_DIR is laid out like the authors' test_img/<set>: ir/ + vi/ (TNO, RoadScene; A = ir,
B = vi) or MRI/ + CT/, PET/ or SPECT/ (MRI_CT, MRI_PET, MRI_SPECT; A = CT/PET/SPECT, B = MRI).
"""

_EPILOG = """\
examples:
  cddfuse bench test_img/TNO --weights CDDFuse_IVF.pth
  cddfuse bench test_img/MRI_PET --weights CDDFuse_MIF.pth --format md
  cddfuse bench test_img/MRI_CT --method max
  cddfuse bench test_img/TNO --method lite
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="fuse a standard test set, evaluate it and compare with the paper's numbers",
        description=_DESCRIPTION,
        epilog=_EPILOG + BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("testset", metavar="TESTSET_DIR", help="test set folder (e.g. test_img/TNO)")
    p.add_argument("--weights", metavar="PATH",
                   help="CDDFuse checkpoint (.pth of the authors or .safetensors), authors-ivf / authors-mif (the "
                        "authors' published files, downloaded once and verified), or CDDFuse-lite weights with "
                        "--method lite; default: bundled weights")
    p.add_argument("--method", choices=METHODS, default="cddfuse",
                   help="the network (default), lite (CDDFuse-lite, the distilled real-time student) or a "
                        "baseline rule: mean = (A+B)/2, max = max(A, B)")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="which weights these are (picks the paper row; the residual mode is the one the weights "
                        "state); default: what the weights say, else the set's kind")
    p.add_argument("--normalize", choices=BENCH_NORMALIZE_MODES, default="auto",
                   help="auto (default): min-max for the network, none for the rules (as the published "
                        "baselines were made)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from the -o suffix .md/.csv/.json, else table)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the results to FILE instead of the screen")
    p.add_argument("--out-dir", metavar="DIR", help="keep the fused 8-bit PNGs in DIR")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N pairs (by name)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the network's arithmetic: fp32 (default, the paper's protocol), tf32 (CUDA) or bf16 "
                        "(CPUs with AMX or AVX512-BF16, or a GPU)")
    add_bench_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..bench.paper import format_bench, run_bench
    from ..metrics._memory import tune_malloc
    from ..metrics.report import choose_format

    if getattr(args, "protocol", "paper") == "vifb":
        from .vifb import run_bench as run_vifb

        return run_vifb(args)
    check_paper_only(args)
    tune_malloc()

    fmt = choose_format(args.format, args.output)
    if args.output:
        from pathlib import Path

        from .._fileutil import check_output

        root = Path(args.testset)
        folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        check_output(args.output, source_folders=folders)
    result = run_bench(args.testset, method=args.method, weights=args.weights, task=args.task,
                       out_dir=args.out_dir, limit=args.limit, normalize=args.normalize,
                       precision=args.precision)
    write_output(format_bench(result, fmt), args.output)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    if args.out_dir:
        print(f"fused images in {args.out_dir}", file=sys.stderr)
    return 0
