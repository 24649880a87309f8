"""``cddfuse export``: write the network as an ONNX file, then check the file with ONNX Runtime against torch."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CDDFuseError, UsageError
from ..options import NETWORK_METHODS, RESIDUAL_CHOICES, TASKS, check_choice

HELP = "export the network to ONNX (dynamic batch, height and width) and check it with ONNX Runtime"

DESCRIPTION = """\
Write CDDFuse (the bundled weights of --task, or --weights) as an ONNX file for ONNX Runtime,
TensorRT, RKNN and other runtimes. The graph takes two float32 inputs `a` (infrared /
functional) and `b` (visible / MRI) of shape (N, 1, H, W) with values in [0, 1] -- the
luminance of each source -- and returns `fused` (N, 1, H, W), the network output after its
sigmoid, before min-max normalisation. N, H and W are dynamic. The residual mode is fixed in the
file (--residual; auto = what the weights were made for, as `cddfuse fuse` chooses it).
--method lite exports CDDFuse-lite instead (same inputs and output; its output is the fused
luminance before min-max normalisation, with its teacher's residual built in).

After writing, the file is run with ONNX Runtime on two input sizes and compared with the torch
model; the file is kept only if the largest difference is at most 1e-4 (the result is printed).
Needs the onnx extra: pip install "cddfuse[onnx]"."""

EPILOG = """\
examples:
  cddfuse export -o cddfuse_ivf.onnx
  cddfuse export -o cddfuse_mif.onnx --task mif
  cddfuse export -o theirs.onnx --weights CDDFuse_IVF.pth --residual vis
  cddfuse export -o cddfuse_lite_ivf.onnx --method lite

exit codes: 0 written and checked, 1 a failure (no onnx extra, bad weights, check failed), 2 usage error."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="ivf or mif: which bundled weights, and the residual choice of auto "
                        "(default: what the weights were made for, else ivf)")
    p.add_argument("--method", choices=NETWORK_METHODS, default="cddfuse",
                   help="cddfuse (default: the exact network) or lite (CDDFuse-lite)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="a cddfuse .safetensors or the authors' CDDFuse_IVF.pth / CDDFuse_MIF.pth, or authors-ivf / "
                        "authors-mif (those files, downloaded once and verified); lite weights with --method lite "
                        "(default: the bundled weights of --task for the method)")
    p.add_argument("--residual", choices=RESIDUAL_CHOICES, default="auto",
                   help="image added before the decoder's sigmoid, fixed in the graph: vis, sum (A+B), none; "
                        "auto = what the weights were trained for (as in cddfuse fuse)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        raise UsageError.invalid("output", str(out), "an ONNX file name must end in .onnx")
    if out.is_dir():
        raise UsageError.invalid("output", str(out), "is a folder; give a file name ending in .onnx")
    from .._fileutil import check_output

    check_output(out, sources=(("weights", args.weights),) if args.weights else ())
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise CDDFuseError("export needs the onnx extra: pip install \"cddfuse[onnx]\"") from None
    from .. import __version__
    from .._fileutil import atomic_path, check_writable_folder, remove_stale_temporaries
    from ..engine.onnx import CHECK_TOLERANCE, OPSET, check_onnx, export_onnx
    from ..fusion import Fuser

    method = check_choice("method", getattr(args, "method", "cddfuse"), NETWORK_METHODS)
    fuser = Fuser(weights=args.weights, task=args.task, method=method, residual=args.residual,
                  device="cpu")  # weights first
    try:
        check_writable_folder(out.parent)
    except OSError as e:
        raise CDDFuseError(f"cannot write {out}: {e.strerror or e}") from None
    remove_stale_temporaries(out.parent, out.name)  # left by an export that was killed
    assert fuser.model is not None  # a network method
    lite = method == "lite"
    kind = "CDDFuse-lite" if lite else "cddfuse"
    source = (Path(args.weights).name if args.weights
              else f"bundled {fuser.task} {kind} weights of cddfuse {__version__}")
    if lite:
        teacher = fuser.info.residual if fuser.info is not None else None
        residual = f"built in ({teacher})" if teacher else "built in"
    else:
        residual = str(fuser.residual)
    metadata = {
        "cddfuse.version": __version__, "cddfuse.task": fuser.task, "cddfuse.residual": residual,
        "cddfuse.method": method, "cddfuse.chroma": fuser.chroma, "cddfuse.weights": source,
        "cddfuse.inputs": "a: infrared/functional, b: visible/MRI; float32 (N, 1, H, W) luminance in [0, 1]",
        "cddfuse.output": ("fused: float32 (N, 1, H, W), the fused luminance before min-max normalisation" if lite
                           else "fused: float32 (N, 1, H, W) in (0, 1), after the sigmoid, before min-max "
                                "normalisation"),
    }
    with atomic_path(out) as tmp:
        export_onnx(fuser.model, tmp, residual=fuser.residual, metadata=metadata)
        checks = check_onnx(tmp, fuser.model, residual=fuser.residual)
        report = ", ".join(f"{'x'.join(map(str, c.shape))}: max |diff| {c.max_abs_diff:.1e}" for c in checks)
        if not all(c.passed() for c in checks):
            raise CDDFuseError(f"the exported graph does not match the torch model ({report}; tolerance "
                               f"{CHECK_TOLERANCE:.0e}); {out} was not written")
    if not args.quiet:
        size_mb = out.stat().st_size / 1e6
        print(f"wrote {out} ({size_mb:.1f} MB, opset {OPSET}; {kind}, task {fuser.task}, residual {residual}; "
              f"inputs a, b and output fused: float32 (N, 1, H, W), N/H/W dynamic)")
        print(f"checked with ONNX Runtime {onnxruntime.__version__} against torch {_torch_version()}: {report} "
              f"(tolerance {CHECK_TOLERANCE:.0e}): passed")
    return 0


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


if __name__ == "__main__":  # pragma: no cover
    from .main import main

    sys.exit(main(["export", *sys.argv[1:]]))
