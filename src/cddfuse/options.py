"""The choices of every option, in one place (torch-free, so the CLI can import it at start-up).

Each option is a ``Literal`` type for signatures (``residual: ResidualMode``) and the tuple of its
values for checks and ``argparse`` choices (``choices=TASKS``); the tuples are derived from the
types, so the two cannot drift apart.

Example:
    >>> from cddfuse.options import TASKS, RESIDUAL_MODES, check_choice
    >>> TASKS
    ('ivf', 'mif')
    >>> RESIDUAL_MODES
    ('vis', 'sum', 'none')
    >>> check_choice("residual", "add", RESIDUAL_MODES)
    Traceback (most recent call last):
    ...
    cddfuse.errors.UsageError: residual='add': unknown residual; choose one of vis, sum, none
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, TypeVar, get_args

from .errors import UsageError

__all__ = [
    "Task", "TASKS",
    "ResidualMode", "RESIDUAL_MODES", "ResidualChoice", "RESIDUAL_CHOICES",
    "Method", "METHODS", "NETWORK_METHODS", "Normalize", "NORMALIZE_MODES", "ColorMode", "COLOR_MODES",
    "ChromaMode", "CHROMA_MODES",
    "Precision", "PRECISIONS", "Backend", "BACKENDS", "AlignModel", "ALIGN_MODELS", "AlignChoice", "ALIGN_CHOICES",
    "BenchNormalize", "BENCH_NORMALIZE_MODES", "ReportFormat", "REPORT_FORMATS", "OpsKind", "OPS_KINDS",
    "check_choice", "DEFAULT_MAX_PIXELS", "parse_size",
]

#: ``ivf``: infrared + visible; ``mif``: medical (CT / PET / SPECT + MRI).
Task = Literal["ivf", "mif"]
TASKS: tuple[Task, ...] = get_args(Task)

#: The image added to the decoder's output before the sigmoid: the visible/MRI image, A + B, or nothing.
ResidualMode = Literal["vis", "sum", "none"]
RESIDUAL_MODES: tuple[ResidualMode, ...] = get_args(ResidualMode)

#: A residual mode, or ``auto``: what the weights were trained for (see ``cddfuse.fusion.resolve_residual``).
ResidualChoice = Literal["auto", "vis", "sum", "none"]
RESIDUAL_CHOICES: tuple[ResidualChoice, ...] = get_args(ResidualChoice)

#: The network (``cddfuse``), its distilled real-time student (``lite``: CDDFuse-lite), or the baseline
#: rules mean = (A + B) / 2 and max = max(A, B).
Method = Literal["cddfuse", "lite", "mean", "max"]
METHODS: tuple[Method, ...] = get_args(Method)
#: The methods that run a network (and take weights); the others are rules.
NETWORK_METHODS: tuple[Method, ...] = ("cddfuse", "lite")

#: ``minmax``: stretch the fused luminance to [0, 1] (the authors' protocol); ``none``: keep it.
Normalize = Literal["minmax", "none"]
NORMALIZE_MODES: tuple[Normalize, ...] = get_args(Normalize)

#: ``cddfuse bench --normalize``: a normalisation, or ``auto``: what the weights (or the rule) are meant for.
BenchNormalize = Literal["auto", "minmax", "none"]
BENCH_NORMALIZE_MODES: tuple[BenchNormalize, ...] = get_args(BenchNormalize)

#: ``auto``: colour output when a source is colour; ``gray``: always gray.
ColorMode = Literal["auto", "gray"]
COLOR_MODES: tuple[ColorMode, ...] = get_args(ColorMode)

#: How a colour source's chroma goes back onto the fused luminance: ``saturation`` keeps each pixel's
#: hue and saturation; ``ycbcr`` puts Cb/Cr back unchanged (the authors' scripts); ``auto``:
#: ``saturation`` for infrared-visible, ``ycbcr`` for medical pairs (a PET/SPECT colour map encodes
#: values; its faint low end should not be strengthened over bright MRI). See ``cddfuse.io.color``.
ChromaMode = Literal["auto", "saturation", "ycbcr"]
CHROMA_MODES: tuple[ChromaMode, ...] = get_args(ChromaMode)

#: Arithmetic of the network: fp32 (exact to the paper), tf32 (CUDA tensor cores), bf16.
Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

#: What runs the network: PyTorch, or ONNX Runtime on the exported graph.
Backend = Literal["torch", "onnx"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

#: The transform ``cddfuse align`` estimates from the first image to the second (2, 4, 6 or 8 parameters).
AlignModel = Literal["translation", "similarity", "affine", "homography"]
ALIGN_MODELS: tuple[AlignModel, ...] = get_args(AlignModel)

#: ``fuse --align``: ``none`` (default: the sources are registered already), or the model to align with.
AlignChoice = Literal["none", "translation", "similarity", "affine", "homography"]
ALIGN_CHOICES: tuple[AlignChoice, ...] = get_args(AlignChoice)

#: Layouts of a metrics report (``cddfuse eval --format``): aligned text, Markdown, CSV, JSON.
ReportFormat = Literal["table", "md", "csv", "json"]
REPORT_FORMATS: tuple[ReportFormat, ...] = get_args(ReportFormat)

#: The exact engine's arithmetic kernels (``cddfuse.engine.ops.make_ops``): ``auto`` (oneDNN fused ops on
#: CPU float32 when available), ``fused``, ``plain`` (PyTorch's own) or ``bf16`` (bfloat16 products).
OpsKind = Literal["auto", "fused", "plain", "bf16"]
OPS_KINDS: tuple[OpsKind, ...] = get_args(OpsKind)

#: Images with more pixels than this are refused from their header, before decoding, unless the caller
#: raises the limit (``max_pixels=``, ``--max-pixels``): 100 megapixels (e.g. 10000 x 10000) -- far above
#: any camera or scanner in this field, far below what a malicious header can claim (a 900-megapixel
#: PNG can be an 854 KB file). Decoding a 100-megapixel 16-bit RGB image takes 600 MB.
DEFAULT_MAX_PIXELS = 100_000_000

_T = TypeVar("_T", bound=str)


def check_choice(name: str, value: object, choices: Sequence[_T]) -> _T:
    """``value`` if it is one of ``choices``, else a :class:`~cddfuse.errors.UsageError` naming ``name``."""
    if value not in choices:
        raise UsageError.invalid(name, value, f"unknown {name}; choose one of {', '.join(choices)}")
    return value  # type: ignore[return-value]


_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*")


def parse_size(text: str | int) -> int:
    """A size in bytes, as every size option reads it (``--max-memory``, ``--max-upload``,
    ``--min-upload-rate``, ``max_memory=``...).

    The grammar: a whole number of bytes (an ``int``, or digits), or a decimal number (``1.5``; no sign,
    no exponent) followed by a unit ``K``, ``M``, ``G`` or ``T`` -- powers of 1024, in either case --
    and an optional ``B`` or ``iB`` (``512M`` = ``512MB`` = ``512MiB`` = 536870912); spaces around are
    ignored. The result must be at least one byte and less than 2**63.

    Raises:
        ValueError: what is wrong with ``text``, with examples.

    Example:
        >>> parse_size("1.5G"), parse_size("512M"), parse_size("50MiB"), parse_size("1k"), parse_size(123)
        (1610612736, 536870912, 52428800, 1024, 123)
        >>> parse_size("lots")
        Traceback (most recent call last):
        ...
        ValueError: cannot read 'lots' as a size; write e.g. 3G, 512M, 50MB or a number of bytes
    """
    if isinstance(text, bool):
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 3G, 512M, 50MB or a number of bytes")
    if isinstance(text, int):
        value = float(text)
    else:
        match = _SIZE.fullmatch(str(text))
        if not match:
            raise ValueError(f"cannot read {str(text)[:40]!r} as a size; write e.g. 3G, 512M, 50MB or a number "
                             "of bytes")
        value = float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")
    if not value < 2**63:  # also infinity, from a number too long for a float
        raise ValueError(f"size {str(text)[:40]!r} is larger than any machine's memory")
    if value < 1:
        raise ValueError(f"a size must be at least one byte, got {str(text)[:40]!r}")
    return int(value)
