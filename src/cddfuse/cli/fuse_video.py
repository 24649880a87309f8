"""``cddfuse fuse IR.mp4 VIS.mp4 -o fused.mp4``: video fusion, the command line side of
:mod:`cddfuse.fusion.video` (options, sources, the output video or frame folder, progress)."""
from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import CDDFuseError, UsageError
from ._args import finite_float

if TYPE_CHECKING:
    from ..fusion.video import TemporalMode

__all__ = ["add_video_arguments", "is_video_job", "run_video"]

TEMPORAL_CHOICES = ("auto", "ema", "frame")


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video (IR, VIS or -o a video file: .mp4 .m4v .mov .mkv .webm .avi; needs the video "
                             "extra)")
    g.add_argument("--temporal", choices=TEMPORAL_CHOICES, default="auto",
                   help="min-max normalisation of video frames: ema = over a range smoothed over time, so "
                        "brightness does not flicker (default for video); frame = each frame's own range. "
                        "--temporal ema with two folders fuses them as numbered frames of one sequence")
    g.add_argument("--smoothing", type=finite_float(1), default=None, metavar="FRAMES",
                   help="time constant of --temporal ema, in frames (default 10; 1 = per frame)")
    g.add_argument("--sync", choices=("exact", "shortest"), default="exact",
                   help="sources with different frame counts or rates: exact = an error (default); "
                        "shortest = pair frame by frame and stop at the shorter source")
    g.add_argument("--fps", default=None, metavar="RATE",
                   help="frame rate of the written video (e.g. 25 or 30000/1001); default: the IR video's, "
                        "or 25 for folders of frames")


def is_video_job(args: argparse.Namespace) -> bool:
    """Video mode: IR, VIS or -o is a video file (by extension), or two folders with ``--temporal ema``."""
    from ..io.video import is_video_path

    paths = (args.ir, args.vis, args.output)
    if any(is_video_path(p) and not Path(p).is_dir() for p in paths):
        return True
    return getattr(args, "temporal", "auto") == "ema" and Path(args.ir).is_dir() and Path(args.vis).is_dir()


def _parse_fps(text: str) -> Fraction:
    try:
        fps = Fraction(text)
    except (ValueError, ZeroDivisionError):
        fps = Fraction(0)
    if fps <= 0:
        raise UsageError.invalid("fps", text, "expected a positive frame rate, e.g. 25 or 30000/1001")
    return fps


def _rate(fps: Fraction | None) -> str:
    return "unknown" if fps is None else (f"{float(fps):g}" if fps.denominator == 1 else f"{float(fps):.3f}")


def run_video(args: argparse.Namespace, make_fuser: Callable[[argparse.Namespace], Any]) -> int:
    from tqdm import tqdm

    from .._fileutil import check_output, check_writable_folder, remove_stale_temporaries
    from ..fusion.folder import CUDA_BATCH_SIZE
    from ..fusion.video import DEFAULT_SMOOTHING, fuse_sequences
    from ..io.image import check_extension, write_image
    from ..io.video import WRITE_FORMATS, FrameFolderSource, VideoWriter, is_video_path, open_video_source
    from .fuse_sharded import check_not_sharded

    check_not_sharded(args, "a video")
    if args.resize and getattr(args, "align", "none") != "none":
        raise UsageError("--resize and --align exclude each other: --align resamples IR into the frame of VIS")
    ir, vis, out = Path(args.ir), Path(args.vis), Path(args.output)
    to_video = is_video_path(out)
    if to_video or not out.is_dir():
        check_output(out, sources=(("IR", ir), ("VIS", vis)))
    if to_video and out.suffix.lower() not in WRITE_FORMATS:
        raise UsageError(f"-o {out}: cannot write {out.suffix} video; use {', '.join(WRITE_FORMATS)}")
    if not to_video and out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; give a video name ({', '.join(WRITE_FORMATS)}) or a folder for frames")
    ext = check_extension(args.ext if args.ext.startswith(".") else "." + args.ext, args.bit_depth,
                          f"extension {args.ext}")
    smoothing = DEFAULT_SMOOTHING if args.smoothing is None else args.smoothing
    temporal: TemporalMode = "frame" if args.temporal == "frame" else "ema"  # auto: ema for video
    fps = _parse_fps(args.fps) if args.fps is not None else None
    with open_video_source(ir, args.max_pixels) as src_a, open_video_source(vis, args.max_pixels) as src_b:
        if src_a.frames and src_b.frames and src_a.frames != src_b.frames and args.sync == "exact":
            raise CDDFuseError(f"the sources have different frame counts (IR {src_a.frames}, VIS {src_b.frames}); "
                               "--sync shortest pairs them frame by frame and stops at the shorter one")
        if src_a.fps and src_b.fps and src_a.fps != src_b.fps and args.sync == "exact":
            raise CDDFuseError(f"the sources have different frame rates (IR {_rate(src_a.fps)}, VIS "
                               f"{_rate(src_b.fps)} frames/s); resample one first, or --sync shortest to pair "
                               "them frame by frame anyway")
        aligned = getattr(args, "align", "none") != "none"  # each IR frame is warped into VIS's frame
        if (src_a.width, src_a.height) != (src_b.width, src_b.height) and not args.resize and not aligned:
            raise CDDFuseError(f"the two sources differ in size ({src_a.width}x{src_a.height} vs "
                               f"{src_b.width}x{src_b.height}); --resize resamples VIS to the size of IR")
        rate = fps or src_a.fps or src_b.fps or Fraction(25)
        total = min(n for n in (src_a.frames, src_b.frames) if n) if (src_a.frames or src_b.frames) else None
        fuser = make_fuser(args)  # bad weights or options fail before anything is created
        try:
            check_writable_folder(out.parent if to_video else out)
        except OSError as e:
            raise CDDFuseError(f"cannot write to {out.parent if to_video else out}: {e.strerror or e}") from None
        if to_video:
            remove_stale_temporaries(out.parent, out.name)  # left by a run that was killed
        batch = args.batch_size or (CUDA_BATCH_SIZE if fuser.device.type == "cuda" else 1)
        bar = tqdm(total=total, desc="fusing", unit="frame", disable=args.quiet or not sys.stderr.isatty())
        names = src_a.stems if isinstance(src_a, FrameFolderSource) else None
        started = time.perf_counter()
        try:
            if to_video:
                with VideoWriter(out, rate) as writer:
                    stats = fuse_sequences(fuser, iter(src_a), iter(src_b), writer.write, normalize=temporal,
                                           smoothing=smoothing, sync=args.sync, resize=args.resize,
                                           batch_size=batch, progress=bar.update)
            else:
                written: list[Path] = []

                def write_frame(frame: Any) -> None:
                    name = names[len(written)] if names else f"{len(written):06d}"
                    written.append(write_image(out / f"{name}{ext}", frame, bit_depth=args.bit_depth))

                stats = fuse_sequences(fuser, iter(src_a), iter(src_b), write_frame, normalize=temporal,
                                       smoothing=smoothing, sync=args.sync, resize=args.resize,
                                       batch_size=batch, progress=bar.update)
        finally:
            bar.close()
    seconds = time.perf_counter() - started
    if not args.quiet:
        codec = {"libx264": "H.264", "libvpx-vp9": "VP9"}
        what = (f"{codec[WRITE_FORMATS[out.suffix.lower()][1]]} at {_rate(rate)} frames/s" if to_video
                else f"{ext} frames")
        trimmed = " (trimmed to the shorter source)" if stats.trimmed else ""
        print(f"wrote {out}: {stats.frames} frames{trimmed}, {what}, normalisation {temporal}, in {seconds:.1f} s "
              f"({stats.frames / max(seconds, 1e-9):.2f} frames/s)", file=sys.stderr)
    return 0
