"""``cddfuse align``: estimate the transform from the first image to the second, optionally write the warp."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import CDDFuseError, UsageError
from ..options import ALIGN_MODELS, DEFAULT_MAX_PIXELS
from ._args import finite_float

HELP = "estimate the transform that maps IR onto VIS (multi-modal registration); -o writes IR warped"

DESCRIPTION = """\
Estimate the transform (a 3x3 matrix) that maps pixel coordinates (x, y, 1) of IR (infrared, CT,
PET, SPECT) onto those of VIS (visible, MRI), and a confidence in [0, 1]. "accepted" says whether the
confidence passes the threshold that `cddfuse fuse --align` applies (--min-confidence). With -o, IR
warped into the frame of VIS (its size) is written; pixels it does not cover are black.

Covers rotations up to about 6 degrees, scales within about 14% of the size ratio of the two images
and translations up to 20% of the size. A refused alignment exits 1 (the JSON/text is still printed)."""

EPILOG = """\
examples:
  cddfuse align ir.png vis.png --model homography --format json
  cddfuse align ct.png mri.png --model affine -o ct_in_mri_frame.png

exit codes: 0 accepted, 1 refused or a failure (bad file), 2 usage error, 130 interrupted."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("align", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ir", metavar="IR", help="first image: infrared / functional (IR, CT, PET, SPECT)")
    p.add_argument("vis", metavar="VIS", help="second image: visible / MRI (defines the frame)")
    p.add_argument("-o", "--output", default=None, metavar="IR_ALIGNED",
                   help="write IR warped into the frame of VIS (same size as VIS)")
    p.add_argument("--model", choices=ALIGN_MODELS, default="affine",
                   help="translation, similarity (rotation + scale), affine (default) or homography")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output on stdout (default text)")
    p.add_argument("--min-confidence", type=finite_float(), default=None, metavar="C",
                   help="threshold for accepted (default 0.5, as fuse --align)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="bits per channel of a PNG/TIFF -o")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..align import DEFAULT_MIN_CONFIDENCE, check_min_confidence, estimate, warp
    from ..io.image import check_output_path, read_image, write_image

    threshold = DEFAULT_MIN_CONFIDENCE if args.min_confidence is None else args.min_confidence
    try:
        threshold = check_min_confidence(threshold)
    except UsageError:
        raise UsageError(f"--min-confidence {args.min_confidence}: must be a number in [0, 1]") from None
    ir, vis = Path(args.ir), Path(args.vis)
    for path, what in ((ir, "IR"), (vis, "VIS")):
        if not path.is_file():
            raise CDDFuseError(f"{what} {path}: no such file")
    out = Path(args.output) if args.output else None
    if out is not None:
        from .._fileutil import check_output

        check_output_path(out, args.bit_depth)
        check_output(out, sources=(("IR", ir), ("VIS", vis)))
    a = read_image(ir, max_pixels=DEFAULT_MAX_PIXELS)
    b = read_image(vis, max_pixels=DEFAULT_MAX_PIXELS)
    alignment = estimate(a, b, args.model, min_confidence=threshold)
    if args.format == "json":
        print(json.dumps(alignment.to_dict()))
    else:
        rows = "\n".join("  [" + ", ".join(f"{v: .6g}" for v in row) + "]" for row in alignment.matrix)
        print(f"model: {alignment.model}\nmatrix (IR pixel -> VIS pixel):\n{rows}\n"
              f"confidence: {alignment.confidence:.3f} ({'accepted' if alignment.accepted else 'refused'}, "
              f"threshold {threshold:.2f})\nvalid_fraction: {alignment.valid_fraction:.3f}")
    if not alignment.accepted:
        print(f"cddfuse align: error: alignment failed ({alignment.reason()})"
              + ("; nothing written" if out else ""), file=sys.stderr)
        return 1
    if out is not None:
        write_image(out, warp(a, alignment), bit_depth=args.bit_depth)
        print(f"wrote {out}", file=sys.stderr)
    return 0
