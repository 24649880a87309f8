"""``cddfuse prepare``: cut a paired data set into training patches, stored in one cache file."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from ._args import finite_float, whole

T = TypeVar("T")

HELP = "cut two folders of paired images into a training cache (the paper's patches, or images for random crops)"

DESCRIPTION = """\
Prepare training data for `cddfuse train`.

A holds the first sources (infrared, or the functional image: CT, PET, SPECT), B the second
(visible, or MRI); images are paired by file stem (01.png with 01.jpg), any modality names.
Every image is read as luminance Y = 0.299 R + 0.587 G + 0.114 B in [0, 1].

--mode patches (the paper): SIZE x SIZE windows at STRIDE over each image; a window is dropped
when either source is low-contrast, (p90 - p10) / p90 < THRESHOLD. --mode random-crop keeps the
whole images; `cddfuse train` then draws random crops (and flips) every epoch -- for small sets.

The cache is one HDF5 (.h5, .hdf5) or NumPy (.npz) file, written atomically."""

EPILOG = """\
examples:
  cddfuse prepare MSRS/train/ir MSRS/train/vi -o data/msrs_128_200.h5
  cddfuse prepare Harvard/MRI_CT/CT Harvard/MRI_CT/MRI -o data/ct_mri.h5 --patch-size 128 --stride 64
  cddfuse prepare my/thermal my/rgb -o data/mine.npz --mode random-crop --crop-size 96

exit codes: 0 success, 1 bad data (empty folder, unmatched names, images smaller than the patch), 2 usage error."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("prepare", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A_DIR", help="folder of first sources (infrared / CT / PET / SPECT)")
    p.add_argument("b", metavar="B_DIR", help="folder of second sources (visible / MRI)")
    p.add_argument("-o", "--output", required=True, metavar="CACHE", help="cache file to write (.h5, .hdf5 or .npz)")
    p.add_argument("--mode", choices=("patches", "random-crop"), default="patches",
                   help="patches: the paper's fixed patches (default); random-crop: keep whole images")
    p.add_argument("--patch-size", type=whole(1, 1 << 16), default=128, metavar="N",
                   help="patch side in pixels (default 128)")
    p.add_argument("--stride", type=whole(1, 1 << 16), default=200, metavar="N",
                   help="patch stride in pixels (default 200)")
    p.add_argument("--contrast-threshold", type=finite_float(0, 1), default=0.1, metavar="T",
                   help="drop patches with (p90 - p10) / p90 < T in either source (default 0.1; 0 keeps all)")
    p.add_argument("--crop-size", type=whole(1, 1 << 16), default=128, metavar="N",
                   help="random-crop mode: the crop side; smaller images are reported (default 128)")
    p.add_argument("--skip-unmatched", action="store_true",
                   help="leave out images without a partner (default: error listing them)")
    p.add_argument("--skip-small", action="store_true",
                   help="leave out pairs smaller than the patch / crop (default: error listing them)")
    p.add_argument("--workers", type=whole(0, 256), default=0, metavar="N",
                   help="decode images in N processes (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..errors import CDDFuseError, UsageError
    from ..train import data as D

    out = Path(args.output)
    if out.suffix.lower() not in (".h5", ".hdf5", ".npz"):
        raise UsageError(f"-o {out}: the cache file must end in .h5, .hdf5 or .npz")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; use --overwrite to replace it")
    if out.is_dir():
        raise CDDFuseError(f"{out} is a folder, not a cache file; give a file name such as {out / 'train.h5'}")
    from .._fileutil import check_output

    check_output(out, source_folders=(args.a, args.b))
    for name in ("patch_size", "stride", "crop_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.contrast_threshold < 0:
        raise UsageError("--contrast-threshold must be >= 0")

    def warn(msg: str) -> None:
        print(f"cddfuse prepare: warning: {msg}", file=sys.stderr)

    def progress(it: Iterable[T]) -> Iterable[T]:
        if args.quiet or not sys.stderr.isatty():  # no bar (carriage returns) in a log file
            return it
        from tqdm import tqdm

        return tqdm(it, total=len(pairs), unit="pair", desc="reading", file=sys.stderr, dynamic_ncols=True)

    pairs = D.find_pairs(args.a, args.b, "skip" if args.skip_unmatched else "error", warn=warn)
    small = "skip" if args.skip_small else "error"
    src = {"a": str(args.a), "b": str(args.b)}
    data: D.PatchSet | D.ImageSet
    if args.mode == "patches":
        data = D.extract_patch_pairs(pairs, args.patch_size, args.stride, args.contrast_threshold, small,
                                     workers=args.workers, warn=warn, progress=progress)
    else:
        data = D.load_image_pairs(pairs, args.crop_size, small, workers=args.workers, warn=warn, progress=progress)
    desc = D.describe(data, src)
    try:
        D.write_cache(out, data, desc)
    except OSError as e:  # full disk, permissions: the previous cache (if any) is untouched (atomic write)
        raise CDDFuseError(f"cannot write {out}: {e.strerror or e}") from None
    info = data.info
    if info["mode"] == "patches":
        print(f"{out}: {info['samples']} patches of {info['patch_size']}x{info['patch_size']} "
              f"from {info['pairs']} pairs (stride {info['stride']}; "
              f"{info['dropped_low_contrast']} low-contrast dropped"
              + (f"; {info['skipped_small']} small pairs skipped" if info["skipped_small"] else "") + ")")
    else:
        print(f"{out}: {info['pairs']} whole pairs for random {info['crop_size']}x{info['crop_size']} crops"
              + (f" ({info['skipped_small']} small pairs skipped)" if info["skipped_small"] else ""))
    print(f"train with: cddfuse train --data {out} --config configs/<recipe>.yaml")
    return 0
