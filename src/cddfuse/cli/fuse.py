"""``cddfuse fuse``: fuse one pair of files, or two folders of pairs matched by file stem."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CDDFuseError, UsageError
from ..options import (
    ALIGN_CHOICES,
    BACKENDS,
    CHROMA_MODES,
    COLOR_MODES,
    DEFAULT_MAX_PIXELS,
    METHODS,
    NORMALIZE_MODES,
    PRECISIONS,
    RESIDUAL_CHOICES,
    TASKS,
)
from ._args import finite_float

if TYPE_CHECKING:
    from ..fusion import Fuser

HELP = "fuse an infrared/functional image with a visible/MRI image (files or folders)"

DESCRIPTION = """\
Fuse IR (infrared, or the functional image: CT, PET, SPECT) with VIS (visible, or MRI).

IR and VIS are two image files, or two folders whose images are paired by file stem
(01.png with 01.jpg); then -o is a folder. --example NAME fuses one of the sample pairs
shipped with the package instead (tno, roadscene, mri-pet; no IR and VIS then).
Folder mode shows a progress bar, skips outputs that already exist (rerun after an
interruption to finish; --overwrite to redo), writes every file atomically, keeps going
when a pair fails and exits 1 if any did.

Colour: when one source is colour, its luminance is fused and its chroma put back (colour
output); --color gray writes the gray result. Output format follows the extension of -o
(PNG, JPEG, BMP, TIFF; .npy for float32 before quantisation)."""

EPILOG = """\
examples:
  cddfuse fuse --example tno -o fused.png
  cddfuse fuse ir.png vis.png -o fused.png --weights CDDFuse_IVF.pth
  cddfuse fuse CT.png MRI.png -o fused.png --weights CDDFuse_MIF.pth
  cddfuse fuse data/ir data/vi -o out/ --weights model.safetensors --device cuda
  cddfuse fuse ir.png vis.png -o base.png --method max
  cddfuse fuse ir.mp4 vis.mp4 -o fused.mp4 --method lite     (CDDFuse-lite: real time on a CPU)

exit codes: 0 success, 1 a failure (bad file, a pair failed), 2 usage error, 130 interrupted."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("fuse", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ir", metavar="IR", nargs="?",
                   help="infrared / functional image (IR, CT, PET, SPECT), or a folder of them")
    p.add_argument("vis", metavar="VIS", nargs="?", help="visible / MRI image, or a folder of them")
    from ..data import names as sample_names

    p.add_argument("--example", choices=sample_names(), default=None, metavar="NAME",
                   help=f"fuse a sample pair shipped with the package instead of IR and VIS: "
                        f"{', '.join(sample_names())} (--task defaults to the sample's task)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (pair mode) or folder (folder mode)")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="ivf: infrared-visible, mif: medical (default: what the weights were made for, else ivf)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="weights: a cddfuse .safetensors or the authors' CDDFuse_IVF.pth / CDDFuse_MIF.pth, or "
                        "authors-ivf / authors-mif (those files, downloaded once and verified); with --method lite, "
                        "CDDFuse-lite weights (default: the bundled weights of --task for the method)")
    p.add_argument("--method", choices=METHODS, default="cddfuse",
                   help="cddfuse (default: the exact network); lite: CDDFuse-lite, the distilled real-time "
                        "student (same pipeline, a network with a thousandth of the operations); or the baselines "
                        "mean=(A+B)/2 and max=max(A,B)")
    p.add_argument("--residual", choices=RESIDUAL_CHOICES, default="auto",
                   help="image added before the decoder's sigmoid: vis=the visible image, sum=A+B, none; "
                        "auto = what the weights were trained for (authors' MIF weights: none; IVF weights: vis, "
                        "or sum on medical pairs)")
    p.add_argument("--normalize", choices=NORMALIZE_MODES, default="minmax",
                   help="minmax: stretch the fused luminance to the full range (the authors' protocol, default); none")
    p.add_argument("--color", choices=COLOR_MODES, default="auto",
                   help="auto: colour output when a source is colour (default); gray")
    p.add_argument("--chroma", choices=CHROMA_MODES, default="auto",
                   help="colour output: saturation keeps each pixel's hue and saturation where the fused "
                        "luminance differs from the colour source's; ycbcr puts its Cb/Cr back unchanged (the "
                        "authors' scripts); auto (default): saturation for --task ivf, ycbcr for --task mif")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, default), cpu, cuda, cuda:N")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="bits per channel of PNG/TIFF output")
    p.add_argument("--resize", action="store_true",
                   help="if the sources differ in size, resample VIS to the size of IR (default: error)")
    p.add_argument("--align", choices=ALIGN_CHOICES, default="none",
                   help="none (default: the sources are registered), or align IR to VIS first with this model "
                        "and fuse in the frame of VIS (sizes may differ; pixels IR does not cover show VIS alone; "
                        "a pair that cannot be aligned confidently fails)")
    p.add_argument("--align-min-confidence", type=finite_float(0, 1), default=0.5, metavar="C",
                   help="with --align: refuse pairs whose alignment confidence is below C (default 0.5)")
    p.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images with more pixels, read from the header before decoding (default "
                        f"{DEFAULT_MAX_PIXELS:,}; protects against decompression bombs)")
    p.add_argument("--ext", default=".png", help="output extension in folder mode (default .png)")
    p.add_argument("--overwrite", action="store_true", help="folder mode: redo outputs that already exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    perf = p.add_argument_group("performance (the results do not change)")
    perf.add_argument("--tile", type=_positive_int, default=None, metavar="N",
                      help="run the network in tiles of at most N x N pixels (exact: same result as whole-image "
                           "inference; bounds memory). Default: automatic (cache-sized tiles on CPU; smaller tiles "
                           "and disk-backed feature maps when an image would not fit --max-memory). "
                           "--method cddfuse only")
    perf.add_argument("--max-memory", default=None, metavar="SIZE",
                      help="memory budget per pair, e.g. 3G or 512M (default: 3G, or 80%% of the free memory if less; "
                           "at least 512M); larger "
                           "images are fused tile by tile within it. --method cddfuse only (lite bounds its own "
                           "memory)")
    perf.add_argument("--precision", choices=PRECISIONS, default="fp32",
                      help="fp32 (default); tf32: TF32 tensor cores (CUDA); bf16: bfloat16 (faster on GPUs, "
                           "outputs differ by up to ~1e-2)")
    perf.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                      help="folder mode: fuse up to N consecutive pairs of the same size as one batch "
                           "(default: 8 on CUDA, where one pair does not fill the GPU; 1 on CPU)")
    perf.add_argument("--backend", choices=BACKENDS, default="torch",
                      help="torch (default) or onnx: ONNX Runtime (needs pip install cddfuse[onnx]; whole images)")
    from .fuse_sharded import add_shard_arguments
    from .fuse_video import add_video_arguments

    add_shard_arguments(p)
    add_video_arguments(p)
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


def _make_fuser(args: argparse.Namespace) -> Fuser:  # (imported inside: torch start-up)
    from ..fusion import Fuser

    fuser = Fuser(weights=args.weights, task=args.task, method=args.method, residual=args.residual,
                  normalize=args.normalize, color=args.color, chroma=args.chroma, device=args.device,
                  max_pixels=args.max_pixels,
                  tile=getattr(args, "tile", None), max_memory=getattr(args, "max_memory", None),
                  precision=getattr(args, "precision", "fp32"), backend=getattr(args, "backend", "torch"),
                  align=getattr(args, "align", "none"),
                  align_min_confidence=getattr(args, "align_min_confidence", 0.5))
    if fuser.method == "cddfuse" and fuser.device.type == "cpu" and fuser.backend == "torch":  # the exact engine
        from ..engine.tuning import settings

        quiet = getattr(args, "quiet", False)
        settings(notify=None if quiet else lambda line: print(f"cddfuse: {line}", file=sys.stderr))
    return fuser


def _sources(args: argparse.Namespace) -> tuple[Path, Path]:
    """IR and VIS, or the files of ``--example`` (whose task then becomes the default ``--task``)."""
    if args.example is not None:
        if args.ir is not None or args.vis is not None:
            raise UsageError("--example NAME replaces IR and VIS: give either the sample's name or two sources")
        from ..data import paths, task

        if args.task is None:
            args.task = task(args.example)
        ir, vis = paths(args.example)
        args.ir, args.vis = str(ir), str(vis)  # (the video check reads them)
        return ir, vis
    if args.ir is None or args.vis is None:
        raise UsageError("give two sources, IR and VIS (files or folders), or a sample pair with --example NAME")
    return Path(args.ir), Path(args.vis)


def run(args: argparse.Namespace) -> int:
    ir, vis = _sources(args)
    out = Path(args.output)
    for p, what in ((ir, "IR"), (vis, "VIS")):
        if not p.exists():
            raise CDDFuseError(f"{what} {p}: no such file or folder")
    from .fuse_video import is_video_job, run_video

    if is_video_job(args):  # a video file in or out (or two frame folders with --temporal ema)
        return run_video(args, _make_fuser)
    if ir.is_dir() != vis.is_dir():
        raise UsageError("IR and VIS must both be files or both be folders")
    if ir.is_dir():
        _check_max_memory(args)  # before the output folder is made
        return _run_folders(args, ir, vis, out)
    from .fuse_sharded import check_not_sharded

    check_not_sharded(args, "a single pair")
    from .._fileutil import check_output, check_writable_folder, remove_stale_temporaries
    from ..io.image import check_output_path, write_image

    if out.is_dir():
        out = out / (ir.stem + _extension(args.ext))
    check_output_path(out, args.bit_depth)
    check_output(out, sources=(("IR", ir), ("VIS", vis)))
    try:
        check_writable_folder(out.parent)
    except OSError as e:
        raise CDDFuseError(f"cannot write {out}: {e.strerror or e}") from None
    remove_stale_temporaries(out.parent, out.name)  # left beside it by a run that was killed
    result = _make_fuser(args).fuse(ir, vis, resize=args.resize)
    write_image(out, result, bit_depth=args.bit_depth)
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _check_max_memory(args: argparse.Namespace) -> None:
    from ..engine.memory import parse_memory

    try:
        parse_memory(getattr(args, "max_memory", None))
    except ValueError as e:
        raise UsageError.invalid("max_memory", args.max_memory, str(e)) from None


def _extension(ext: str) -> str:
    return ext if ext.startswith(".") else "." + ext


def _run_folders(args: argparse.Namespace, ir: Path, vis: Path, out: Path) -> int:
    from tqdm import tqdm

    from ..fusion.folder import fuse_folders
    from .fuse_sharded import ShardedRun

    job = ShardedRun.start(args)  # this process's share: --shard K/N, a torchrun rank's, or every pair
    report = fuse_folders(lambda: _make_fuser(args), ir, vis, out, ext=args.ext, bit_depth=args.bit_depth,
                          resize=args.resize, overwrite=args.overwrite, batch_size=args.batch_size,
                          progress=job.progress(not args.quiet and sys.stderr.isatty()),
                          log=job.log(lambda line: tqdm.write(line, file=sys.stderr)), select=job.select)
    return job.finish(report)  # the summary (combined over torchrun's ranks) and the exit code
