"""``cddfuse fuse``: fuse one pair of files, or two folders of pairs matched by file stem."""
from __future__ import annotations

import argparse
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
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
    perf = p.add_argument_group("performance (the results do not change)")
    perf.add_argument("--tile", type=_positive_int, default=None, metavar="N",
                      help="run the network in tiles of at most N x N pixels (exact: same result as whole-image "
                           "inference; bounds memory). Default: automatic (cache-sized tiles on CPU; smaller tiles "
                           "and disk-backed feature maps when an image would not fit --max-memory)")
    perf.add_argument("--max-memory", default=None, metavar="SIZE",
                      help="memory budget per pair, e.g. 3G or 512M (default: the memory available); larger "
                           "images are fused tile by tile within it")
    perf.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                      help="fp32 (default); tf32: TF32 tensor cores (CUDA); bf16: bfloat16 (faster on GPUs, "
                           "outputs differ by up to ~1e-2)")
    perf.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                      help="folder mode: fuse up to N consecutive pairs of the same size as one batch "
                           "(default: 8 on CUDA, where one pair does not fill the GPU; 1 on CPU)")
    perf.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                      help="torch (default) or onnx: ONNX Runtime (needs pip install cddfuse[onnx]; whole images)")
    p.set_defaults(func=run)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
                 normalize=args.normalize, color=args.color, device=args.device,
                 tile=getattr(args, "tile", None), max_memory=getattr(args, "max_memory", None),
                 precision=getattr(args, "precision", "fp32"), backend=getattr(args, "backend", "torch"))


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


_READ_AHEAD = 2  # pairs decoded ahead of the ones being fused
_CUDA_BATCH = 8  # default --batch-size on CUDA


def _run_folders(args: argparse.Namespace, ir: Path, vis: Path, out: Path) -> int:
    from ..io.image import read_image, write_image
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

    def report(stem: str, e: BaseException) -> None:
        failed.append(stem)
        if isinstance(e, CDDFuseError):
            tqdm.write(f"error: {stem}: {e}", file=sys.stderr)
        else:  # RuntimeError / MemoryError, e.g. out of memory on one huge pair
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            tqdm.write(f"error: {stem}: {msg}", file=sys.stderr)

    # Decoding (two reader threads, a few pairs ahead) and encoding + writing (one writer thread)
    # overlap with the fusion in this thread; torch, OpenCV and file I/O release the GIL.
    readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cddfuse-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cddfuse-write")
    ahead: "deque[Tuple[str, Path, Future, Future]]" = deque()
    writes: "deque[Tuple[str, Future]]" = deque()
    queue = iter(todo)
    bar = tqdm(total=len(todo), desc="fusing", unit="pair", disable=args.quiet or not todo, file=sys.stderr)

    def finish_writes(block: bool) -> None:
        nonlocal done
        while writes and (block or writes[0][1].done()):
            stem, fut = writes.popleft()
            try:
                fut.result()
                done += 1
            except (CDDFuseError, RuntimeError, MemoryError) as e:
                report(stem, e)
            bar.update(1)

    batch_size = args.batch_size or (_CUDA_BATCH if fuser is not None and fuser.device.type == "cuda" else 1)

    def read_more() -> None:
        while len(ahead) < _READ_AHEAD + batch_size - 1:
            item = next(queue, None)
            if item is None:
                return
            stem, pa, pb, dest = item
            ahead.append((stem, dest, readers.submit(read_image, pa, keep_integer=True),
                          readers.submit(read_image, pb, keep_integer=True)))

    def next_batch() -> List[Tuple[str, Path, Future, Future]]:
        """The next pair, and the pairs after it of the same size (up to batch_size)."""
        batch = [ahead.popleft()]
        while len(batch) < batch_size and ahead:
            fa, fb = batch[0][2], batch[0][3]
            ga, gb = ahead[0][2], ahead[0][3]
            if fa.exception() or fb.exception() or ga.exception() or gb.exception():
                break  # an unreadable pair is reported in its own turn
            if fa.result().shape[:2] != ga.result().shape[:2] or fb.result().shape[:2] != gb.result().shape[:2]:
                break
            batch.append(ahead.popleft())
        return batch

    def fuse_one(stem: str, dest: Path, fa: Future, fb: Future) -> None:
        try:
            img = fuser.fuse(fa.result(), fb.result(), resize=args.resize)
        except (CDDFuseError, RuntimeError, MemoryError) as e:
            report(stem, e)
            bar.update(1)
        else:
            writes.append((stem, writer.submit(write_image, dest, img, bit_depth=args.bit_depth)))

    try:
        read_more()
        while ahead:
            batch = next_batch()
            read_more()
            bar.set_postfix_str(batch[0][0] if len(batch) == 1 else f"{batch[0][0]} (+{len(batch) - 1})")
            imgs = None
            if len(batch) > 1:
                try:
                    imgs = fuser.fuse_batch([(fa.result(), fb.result()) for _, _, fa, fb in batch], resize=args.resize)
                except (CDDFuseError, RuntimeError, MemoryError):
                    imgs = None  # e.g. out of memory: fall back to one pair at a time
            if imgs is None:
                for stem, dest, fa, fb in batch:
                    fuse_one(stem, dest, fa, fb)
            else:
                for (stem, dest, _, _), img in zip(batch, imgs):
                    writes.append((stem, writer.submit(write_image, dest, img, bit_depth=args.bit_depth)))
            finish_writes(block=len(writes) > batch_size)  # at most one finished batch waits for its writes
        finish_writes(block=True)
    finally:
        for _, _, fa, fb in ahead:
            fa.cancel()
            fb.cancel()
        readers.shutdown(wait=True)
        writer.shutdown(wait=True)  # a write in progress completes (atomically) even on Ctrl-C
        bar.close()
    unmatched = len(listing.only_a) + len(listing.only_b)
    print(f"{done} fused, {skipped} already done (skipped), {len(failed)} failed, {unmatched} unmatched -> {out}",
          file=sys.stderr)
    if failed:
        print(f"failed pairs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
