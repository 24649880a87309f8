"""``cddfuse eval``: fusion metrics of a folder of fused images (logic in :mod:`cddfuse.metrics.evaluate`)."""
from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ..options import REPORT_FORMATS
from ._output import write_output
from .vifb import EVAL_EPILOG, add_protocol_argument

_DESCRIPTION = """\
Compute fusion metrics of every fused image in FUSED_DIR against its two sources, exactly as the
CDDFuse authors' evaluation code does (their gray conversion; MI in nats; VIF and SSIM summed over
the two sources; SSIM with their data_range of 2). Images are paired by file stem (01.png with
01.jpg). Prints a row per image and the mean.

Metrics: EN SD SF AG MI SCD VIF Qabf SSIM CC PSNR MSE (MSE: lower is better, the rest: higher).
"""

_EPILOG = """\
examples:
  cddfuse eval test_img/TNO/ir test_img/TNO/vi results/TNO
  cddfuse eval MRI_CT/CT MRI_CT/MRI fused/ --metrics paper --format md -o table.md
"""


FORMATS = REPORT_FORMATS  # cddfuse.options: torch- and numpy-free, so the CLI starts fast


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="compute fusion metrics (EN, SD, SF, MI, SCD, VIF, Qabf, SSIM...) of a folder of fused images",
        description=_DESCRIPTION,
        epilog=_EPILOG + EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir_a", metavar="A_DIR", help="first sources: infrared, CT, PET or SPECT images")
    p.add_argument("dir_b", metavar="B_DIR", help="second sources: visible or MRI images")
    p.add_argument("dir_fused", metavar="FUSED_DIR", help="fused images, named like the sources")
    p.add_argument("--metrics", default="all", metavar="LIST",
                   help="comma-separated metric names, 'paper' for the paper's eight columns "
                        "(EN,SD,SF,MI,SCD,VIF,Qabf,SSIM) or 'all' (default)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from the -o suffix .md/.csv/.json, else table)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the results to FILE instead of the screen")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="evaluate N images at a time in separate processes (default 1)")
    add_protocol_argument(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..metrics._memory import tune_malloc
    from ..metrics.evaluate import evaluate_folders, format_evaluation
    from ..metrics.registry import resolve_metrics
    from ..metrics.report import choose_format

    if getattr(args, "protocol", "paper") == "vifb":
        from .vifb import run_eval as run_vifb

        return run_vifb(args)
    tune_malloc()  # this process only evaluates: keep freed temporaries for reuse

    names = resolve_metrics(args.metrics)
    if not 1 <= args.workers <= 256:
        raise UsageError(f"--workers must be between 1 and 256, got {args.workers}")
    fmt = choose_format(args.format, args.output)
    if args.output:
        from .._fileutil import check_output

        check_output(args.output, source_folders=(args.dir_a, args.dir_b, args.dir_fused))
    result = evaluate_folders(args.dir_a, args.dir_b, args.dir_fused, names, workers=args.workers)
    if result.ignored:
        shown = ", ".join(result.ignored[:10]) + (" ..." if len(result.ignored) > 10 else "")
        print(f"note: {len(result.ignored)} fused image(s) without sources were skipped: {shown}", file=sys.stderr)
    write_output(format_evaluation(result, fmt), args.output)
    if args.output:
        print(f"wrote {args.output} ({len(result)} images)", file=sys.stderr)
    return 0
