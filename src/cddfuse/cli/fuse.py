"""``cddfuse fuse``: fuse one pair of files, or two folders of pairs matched by file stem."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Tuple

from ..errors import CDDFuseError, UsageError

HELP = "fuse an infrared/functional image with a visible/MRI image (files or folders)"

DESCRIPTION = """\
Fuse IR (infrared, or the functional image: CT, PET, SPECT) with VIS (visible, or MRI).

IR and VIS are two image files, or two folders whose images are paired by file stem
(01.png with 01.jpg); then -o is a folder. Folder mode shows a progress bar, skips outputs
that already exist (rerun after an interruption to finish; --overwrite to redo), writes every
file atomically, keeps going when a pair fails and exits 1 if any did.

Colour: when one source is colour, its luminance is fused and its chroma put back (colour
output); --color gray writes the gray result. Output format follows the extension of -o
(PNG, JPEG, BMP, TIFF; .npy for float32 before quantisation)."""

EPILOG = """\
examples:
  cddfuse fuse ir.png vis.png -o fused.png --weights CDDFuse_IVF.pth
  cddfuse fuse CT.png MRI.png -o fused.png --weights CDDFuse_MIF.pth
  cddfuse fuse data/ir data/vi -o out/ --weights model.safetensors --device cuda
  cddfuse fuse ir.png vis.png -o base.png --method max

exit codes: 0 success, 1 a failure (bad file, a pair failed), 2 usage error, 130 interrupted."""


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser("fuse", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ir", metavar="IR", help="infrared / functional image (IR, CT, PET, SPECT), or a folder of them")
    p.add_argument("vis", metavar="VIS", help="visible / MRI image, or a folder of them")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (pair mode) or folder (folder mode)")
    p.add_argument("--task", choices=("ivf", "mif"), default=None,
                   help="ivf: infrared-visible, mif: medical (default: what the weights were made for, else ivf)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="weights: a cddfuse .safetensors or the authors' CDDFuse_IVF.pth / CDDFuse_MIF.pth "
                        "(default: the bundled weights of --task)")
    p.add_argument("--method", choices=("cddfuse", "mean", "max"), default="cddfuse",
                   help="cddfuse (default), or the simple baselines mean=(A+B)/2 and max=max(A,B)")
    p.add_argument("--residual", choices=("auto", "vis", "sum", "none"), default="auto",
                   help="image added before the decoder's sigmoid: vis=the visible image, sum=A+B, none; "
                        "auto = what the weights were trained for (authors' MIF weights: none; IVF weights: vis, "
                        "or sum on medical pairs)")
    p.add_argument("--normalize", choices=("minmax", "none"), default="minmax",
                   help="minmax: stretch the fused luminance to the full range (the authors' protocol, default); none")
    p.add_argument("--color", choices=("auto", "gray"), default="auto",
                   help="auto: colour output when a source is colour (default); gray")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, default), cpu, cuda, cuda:N")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="bits per channel of PNG/TIFF output")
    p.add_argument("--resize", action="store_true",
                   help="if the sources differ in size, resample VIS to the size of IR (default: error)")
    p.add_argument("--ext", default=".png", help="output extension in folder mode (default .png)")
    p.add_argument("--overwrite", action="store_true", help="folder mode: redo outputs that already exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _check_output_ext(path: Path, bit_depth: int) -> None:
    from ..io.image import OUTPUT_EXTENSIONS

    ext = path.suffix.lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise UsageError(f"output {path}: unknown extension {ext or '(none)'}; use one of {', '.join(OUTPUT_EXTENSIONS)}")
    if bit_depth == 16 and ext not in (".png", ".tif", ".tiff", ".npy"):
        raise UsageError(f"output {path}: {ext} cannot hold 16-bit images; use .png or .tif, or --bit-depth 8")


def _make_fuser(args: argparse.Namespace):  # -> Fuser (import deferred: torch start-up)
    from ..fusion import Fuser

    if args.weights is not None and args.method != "cddfuse":
        raise UsageError(f"--weights is only used with --method cddfuse, not with --method {args.method}")
    return Fuser(weights=args.weights, task=args.task, method=args.method, residual=args.residual,
                 normalize=args.normalize, color=args.color, device=args.device)


def run(args: argparse.Namespace) -> int:
    ir, vis, out = Path(args.ir), Path(args.vis), Path(args.output)
    for p, what in ((ir, "IR"), (vis, "VIS")):
        if not p.exists():
            raise CDDFuseError(f"{what} {p}: no such file or folder")
    if ir.is_dir() != vis.is_dir():
        raise UsageError("IR and VIS must both be files or both be folders")
    if ir.is_dir():
        return _run_folders(args, ir, vis, out)
    if out.is_dir():
        out = out / (ir.stem + args.ext if args.ext.startswith(".") else f"{ir.stem}.{args.ext}")
    _check_output_ext(out, args.bit_depth)
    fuser = _make_fuser(args)
    from ..io.image import write_image

    result = fuser.fuse(ir, vis, resize=args.resize)
    write_image(out, result, bit_depth=args.bit_depth)
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _run_folders(args: argparse.Namespace, ir: Path, vis: Path, out: Path) -> int:
    from ..io.image import write_image
    from ..io.pairs import match_pairs

    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; in folder mode it must be a folder")
    ext = args.ext if args.ext.startswith(".") else "." + args.ext
    _check_output_ext(Path("x" + ext), args.bit_depth)
    try:
        listing = match_pairs(ir, vis)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if listing.only_a or listing.only_b:
        def names(xs: List[str]) -> str:
            return ", ".join(xs[:10]) + (f" ... (+{len(xs) - 10})" if len(xs) > 10 else "")
        if listing.only_a:
            print(f"warning: {len(listing.only_a)} image(s) in {ir} have no partner in {vis}: {names(listing.only_a)}",
                  file=sys.stderr)
        if listing.only_b:
            print(f"warning: {len(listing.only_b)} image(s) in {vis} have no partner in {ir}: {names(listing.only_b)}",
                  file=sys.stderr)
    if not listing.pairs:
        raise CDDFuseError(f"no pairs: no file stem appears in both {ir} and {vis}")
    out.mkdir(parents=True, exist_ok=True)
    from .._fileutil import TMP_MARK

    for stale in out.glob(f".*{TMP_MARK}"):  # left by a run that was killed (SIGKILL, power loss)
        stale.unlink(missing_ok=True)
    todo: List[Tuple[str, Path, Path, Path]] = []
    skipped = 0
    for stem, pa, pb in listing.pairs:
        dest = out / (stem + ext)
        if dest.exists() and not args.overwrite:
            skipped += 1
            continue
        todo.append((stem, pa, pb, dest))
    fuser = _make_fuser(args) if todo else None
    failed: List[str] = []
    done = 0
    from tqdm import tqdm

    bar = tqdm(todo, desc="fusing", unit="pair", disable=args.quiet or not todo, file=sys.stderr)
    for stem, pa, pb, dest in bar:
        bar.set_postfix_str(stem)
        try:
            img = fuser.fuse(pa, pb, resize=args.resize)
            write_image(dest, img, bit_depth=args.bit_depth)
            done += 1
        except CDDFuseError as e:
            failed.append(stem)
            tqdm.write(f"error: {stem}: {e}", file=sys.stderr)
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory on one huge pair
            failed.append(stem)
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            tqdm.write(f"error: {stem}: {msg}", file=sys.stderr)
    bar.close()
    unmatched = len(listing.only_a) + len(listing.only_b)
    print(f"{done} fused, {skipped} already done (skipped), {len(failed)} failed, {unmatched} unmatched -> {out}",
          file=sys.stderr)
    if failed:
        print(f"failed pairs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
