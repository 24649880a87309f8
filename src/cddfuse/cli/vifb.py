"""The ``--protocol vifb`` parts of ``cddfuse eval`` and ``cddfuse bench`` (logic in :mod:`cddfuse.metrics.vifb`
and :mod:`cddfuse.bench.vifb`).

Not a subcommand: :mod:`.eval` and :mod:`.bench` add these options and hand over when
``--protocol vifb`` is given.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ._output import write_output

PROTOCOLS = ("paper", "vifb")

EVAL_EPILOG = """\
  cddfuse eval VIFB/ir VIFB/vi VIFB/fused/SeAFusion --protocol vifb   (VIFB's 13 metrics, colour as VIFB)
"""

BENCH_EPILOG = """\
  cddfuse bench VIFB_DIR --protocol vifb                      (CDDFuse's row in VIFB's table)
  cddfuse bench VIFB_DIR --protocol vifb --no-fusion --fused MyNet=results/vifb --format md
"""


def add_protocol_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper (default): the CDDFuse authors' metrics on gray images; vifb: the 13 metrics of "
                        "the VIFB benchmark, exactly as its MATLAB code (colour images per channel)")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    add_protocol_argument(p)
    g = p.add_argument_group("with --protocol vifb (TESTSET_DIR is a VIFB folder: ir/, vi/, fused/<METHOD>/)")
    g.add_argument("--fused", action="append", default=[], metavar="NAME=DIR",
                   help="add a folder of fused results as the method NAME (repeatable)")
    g.add_argument("--no-fusion", action="store_true",
                   help="fuse nothing: only the published methods and the --fused folders")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="evaluate N images at a time in separate processes (default 1)")


def _parse_added(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, folder = v.partition("=")
        if not sep or not name.strip() or not folder:
            raise UsageError(f"--fused {v}: expected NAME=DIR (e.g. --fused MyNet=results/vifb)")
        if name.strip() in out:
            raise UsageError(f"--fused: the name {name.strip()!r} is given twice")
        out[name.strip()] = folder
    return out


def run_eval(args: argparse.Namespace) -> int:
    """``cddfuse eval ... --protocol vifb``: a row per image and the mean, each metric's direction marked."""
    from ..metrics._memory import tune_malloc
    from ..metrics.report import choose_format
    from ..metrics.vifb import resolve_vifb_metrics
    from ..metrics.vifb.evaluate import evaluate_vifb_folders, format_vifb_evaluation

    tune_malloc()
    names = resolve_vifb_metrics(None if args.metrics in (None, "all") else args.metrics)
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    fmt = choose_format(args.format, args.output)
    result = evaluate_vifb_folders(args.dir_a, args.dir_b, args.dir_fused, names, workers=args.workers)
    if result.ignored:
        shown = ", ".join(result.ignored[:10]) + (" ..." if len(result.ignored) > 10 else "")
        print(f"note: {len(result.ignored)} fused image(s) without sources were skipped: {shown}", file=sys.stderr)
    write_output(format_vifb_evaluation(result, fmt), args.output)
    if args.output:
        print(f"wrote {args.output} ({len(result)} images)", file=sys.stderr)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """``cddfuse bench VIFB_DIR --protocol vifb``: VIFB's table with this run's method and the added folders."""
    from ..bench.vifb import run_vifb_bench
    from ..metrics._memory import tune_malloc
    from ..metrics.report import choose_format
    from ..metrics.vifb.evaluate import format_vifb_table

    tune_malloc()
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    added = _parse_added(args.fused)
    if args.no_fusion and args.weights:
        raise UsageError("--weights is not used with --no-fusion")
    fmt = choose_format(args.format, args.output)
    table = run_vifb_bench(args.testset, method=None if args.no_fusion else args.method, weights=args.weights,
                           task=args.task, added=added, out_dir=args.out_dir, limit=args.limit,
                           workers=args.workers, precision=args.precision)
    write_output(format_vifb_table(table, fmt), args.output)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    if args.out_dir and not args.no_fusion:
        print(f"fused images in {args.out_dir}", file=sys.stderr)
    return 0


def check_paper_only(args: argparse.Namespace) -> None:
    """Refuse the VIFB-only bench options under the paper protocol."""
    if args.fused or args.no_fusion:
        raise UsageError("--fused and --no-fusion need --protocol vifb")
