"""Reading and writing CDDFuse weights.

Two formats are understood:

* **cddfuse safetensors** (the project's own): a flat state dict of :class:`CDDFuse` plus string
  metadata ``format = "cddfuse"``, ``format_version``, ``task``, ``residual``, ``normalize``,
  ``config`` (JSON of :class:`CDDFuseConfig`) and ``provenance`` (JSON: data, recipe, steps...).
  Round trip is bit-exact.
* **the authors' checkpoints** (``CDDFuse_IVF.pth``, ``CDDFuse_MIF.pth`` and anything saved by their
  ``train.py``): a dict with ``DIDF_Encoder``, ``DIDF_Decoder``, ``BaseFuseLayer``, ``DetailFuseLayer``,
  each a state dict, usually with the ``module.`` prefix of ``nn.DataParallel``. They are read with
  ``torch.load(..., weights_only=True)``, which refuses pickled code.

Both kinds of network are stored the same way: CDDFuse (exact) weights, and CDDFuse-lite weights (the
distilled student of :mod:`cddfuse.models.lite`), whose metadata adds ``architecture = "lite"`` and whose
``config`` holds :class:`~cddfuse.models.lite.LiteConfig`. :func:`load_weights` loads exact weights and
:func:`load_lite_weights` lite ones; each refuses the other kind in one line naming the mismatch, and
:func:`load_any_weights` takes either.

Every mismatch (missing or unexpected keys, wrong shapes) is reported by name; nothing is ever
silently left at random initialisation.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from .._fileutil import PathLike, atomic_path
from ..errors import CheckpointError, first_line
from ..options import NORMALIZE_MODES, RESIDUAL_MODES, TASKS, Normalize, ResidualMode, Task
from .cddfuse import CDDFuse, CDDFuseConfig
from .lite import CDDFuseLite, LiteConfig

__all__ = [
    "WeightsInfo",
    "Architecture",
    "OFFICIAL_PARTS",
    "load_weights",
    "load_lite_weights",
    "load_any_weights",
    "weights_architecture",
    "save_weights",
    "save_lite_weights",
    "read_official_checkpoint",
    "official_to_state_dict",
    "state_dict_to_official",
    "check_state_dict",
]

FORMAT_NAME = "cddfuse"
FORMAT_VERSION = "1"

#: The authors' checkpoint parts and the prefix of each in :class:`CDDFuse`'s state dict.
OFFICIAL_PARTS: dict[str, str] = {
    "DIDF_Encoder": "encoder.",
    "DIDF_Decoder": "decoder.",
    "BaseFuseLayer": "base_fuse.",
    "DetailFuseLayer": "detail_fuse.",
}


_C = TypeVar("_C", bound=str)

#: Which network a weights file is for.
Architecture = Literal["cddfuse", "lite"]


@dataclass
class WeightsInfo:
    """What a weights file says about itself.

    Attributes:
        task: ``"ivf"`` (infrared-visible) or ``"mif"`` (medical), or ``None`` when unknown.
        residual: residual mode the weights were trained for (``"vis"``, ``"sum"``, ``"none"``),
            or ``None`` when the file does not say.
        normalize: output normalisation the weights are meant to be used with.
            For lite weights: the residual mode of the teacher, already part of the student's output
            (a lite network adds no residual of its own).
        normalize: output normalisation the weights are meant to be used with.
        config: network sizes (:class:`CDDFuseConfig`, or :class:`LiteConfig` for lite weights).
        source_format: ``"cddfuse"`` (safetensors) or ``"official"`` (the authors' .pth).
        provenance: free-form facts (data, recipe, steps, wall time, hardware...).
        path: where the weights came from.
        architecture: ``"cddfuse"`` (the exact network) or ``"lite"`` (CDDFuse-lite).
    """

    task: Task | None
    residual: ResidualMode | None
    normalize: Normalize
    config: CDDFuseConfig | LiteConfig
    source_format: str
    provenance: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    architecture: Architecture = "cddfuse"


def _fail(path: PathLike, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}")


def official_to_state_dict(ckpt: Mapping[str, Any], path: PathLike = "<checkpoint>") -> dict[str, Tensor]:
    """Map the authors' four-part checkpoint to a flat :class:`CDDFuse` state dict."""
    missing = [k for k in OFFICIAL_PARTS if k not in ckpt]
    if missing:
        raise _fail(path, f"not a CDDFuse checkpoint: missing part(s) {missing} (found {sorted(ckpt)[:8]})")
    out: dict[str, Tensor] = {}
    for part, prefix in OFFICIAL_PARTS.items():
        sd = ckpt[part]
        if not isinstance(sd, Mapping):
            raise _fail(path, f"part {part!r} is a {type(sd).__name__}, expected a state dict")
        for k, v in sd.items():
            if not isinstance(v, Tensor):
                raise _fail(path, f"entry {part}/{k} is a {type(v).__name__}, expected a tensor")
            out[prefix + (k[len("module."):] if k.startswith("module.") else k)] = v
    return out


def state_dict_to_official(state_dict: Mapping[str, Tensor],
                           data_parallel: bool = True) -> dict[str, dict[str, Tensor]]:
    """Inverse of :func:`official_to_state_dict` (for the authors' test scripts)."""
    out: dict[str, dict[str, Tensor]] = {part: {} for part in OFFICIAL_PARTS}
    for k, v in state_dict.items():
        for part, prefix in OFFICIAL_PARTS.items():
            if k.startswith(prefix):
                out[part][("module." if data_parallel else "") + k[len(prefix):]] = v
                break
        else:
            raise KeyError(f"key {k!r} belongs to no part of the authors' format")
    return out


def infer_config(state_dict: Mapping[str, Tensor]) -> CDDFuseConfig:
    """Read the network sizes off a state dict (for the authors' files, which store none).

    Raises:
        CheckpointError: a key it needs is missing or has a shape no CDDFuse tensor has.
    """
    try:
        return _infer_config(state_dict)
    except KeyError as e:
        raise CheckpointError(f"cannot tell the network size: key {e.args[0]!r} is missing") from None
    except (IndexError, TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
        shapes = {k: tuple(v.shape) for k, v in state_dict.items() if k in _SIZE_KEYS}
        raise CheckpointError(f"cannot tell the network size: tensors of impossible shapes {shapes} "
                              f"({' '.join(str(e).split())[:80]})") from None


_SIZE_KEYS = ("encoder.patch_embed.proj.weight", "encoder.baseFeature.attn.scale", "decoder.output.2.weight",
              "encoder.encoder_level1.0.ffn.project_out.weight", "encoder.baseFeature.mlp.project_out.weight",
              "encoder.detailFeature.net.0.theta_phi.bottleneckBlock.0.weight")


def _infer_config(state_dict: Mapping[str, Any]) -> CDDFuseConfig:
    try:
        dim = state_dict["encoder.patch_embed.proj.weight"].shape[0]
        in_ch = state_dict["encoder.patch_embed.proj.weight"].shape[1]
        heads = state_dict["encoder.baseFeature.attn.scale"].shape[0]
        out_ch = state_dict["decoder.output.2.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"cannot tell the network size: key {e.args[0]!r} is missing") from None

    def count(prefix: str) -> int:
        idx = {int(k[len(prefix):].split(".")[0]) for k in state_dict
               if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
        return max(idx) + 1 if idx else 0

    ffn_hidden = state_dict.get("encoder.encoder_level1.0.ffn.project_out.weight")
    base_hidden = state_dict["encoder.baseFeature.mlp.project_out.weight"].shape[1]
    inn_hidden = state_dict.get("encoder.detailFeature.net.0.theta_phi.bottleneckBlock.0.weight")
    return CDDFuseConfig(
        dim=dim,
        num_heads=heads,
        encoder_blocks=count("encoder.encoder_level1."),
        decoder_blocks=count("decoder.encoder_level2."),
        ffn_expansion=(ffn_hidden.shape[1] / dim) if ffn_hidden is not None else 2.0,
        base_ffn_expansion=base_hidden / dim,
        encoder_inn_layers=count("encoder.detailFeature.net."),
        fuse_inn_layers=count("detail_fuse.net."),
        inn_expansion=(inn_hidden.shape[0] / (dim // 2)) if inn_hidden is not None else 2.0,
        in_channels=in_ch,
        out_channels=out_ch,
    )


def check_state_dict(model: CDDFuse, state_dict: Mapping[str, Any], path: PathLike = "<weights>") -> None:
    """Raise :class:`CheckpointError` naming every missing/unexpected key and shape mismatch.

    ``model`` may live on the ``meta`` device (no memory) and ``state_dict`` may hold anything with a
    ``shape`` (e.g. the tensor descriptions of a safetensors header), so a file is checked against the
    network before a byte of it is allocated.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems: list[str] = []

    def listing(label: str, items: list[str]) -> None:
        if items:
            shown = ", ".join(items[:6]) + (f" ... (+{len(items) - 6} more)" if len(items) > 6 else "")
            problems.append(f"{len(items)} {label}: {shown}")

    listing("missing key(s)", missing)
    listing("unexpected key(s)", unexpected)
    listing("shape mismatch(es)", shapes)
    if problems:
        raise _fail(path, "weights do not fit the CDDFuse network; " + "; ".join(problems))


def read_official_checkpoint(path: PathLike) -> dict[str, Tensor]:
    """Load an authors'-format ``.pth`` safely (``weights_only=True``) as a flat state dict.

    Files that are not PyTorch checkpoints at all (an image, random bytes) are named as such; files
    that hold more than tensors (code, foreign objects) are refused without running anything, and
    PyTorch's advice to turn the safety check off is never passed on.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except OSError as e:
        raise _fail(path, f"cannot read: {e.strerror or e}") from None
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # zip (torch.save) or a pickle stream
        raise _fail(path, "not a PyTorch checkpoint or safetensors file")
    if magic.startswith(b"PK"):
        check_zip_bounds(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = first_line(e)
        if "weights_only" in msg or "Weights only" in msg:
            raise _fail(path, _REFUSED) from None
        msg = msg.split(". ")[0]  # torch's first sentence; the rest is advice about how files get corrupted
        raise _fail(path, f"cannot read as a PyTorch checkpoint (truncated or not a checkpoint?): {msg}") from None
    except Exception:  # pickle.UnpicklingError for files holding code or foreign objects
        raise _fail(path, _REFUSED) from None
    if not isinstance(ckpt, Mapping):
        raise _fail(path, f"not a CDDFuse checkpoint: holds a {type(ckpt).__name__}, expected a dict")
    if "model" in ckpt and isinstance(ckpt["model"], Mapping) and "DIDF_Encoder" not in ckpt:
        ckpt = ckpt["model"]
    if all(isinstance(v, Tensor) for v in ckpt.values()) and any(k.startswith("encoder.") for k in ckpt):
        return dict(ckpt)  # already a flat cddfuse state dict saved with torch.save
    return official_to_state_dict(ckpt, path)


#: A torch.save file stores its tensors uncompressed; a zip entry may inflate to at most this many times
#: its compressed size (plus :data:`ZIP_SLACK` in all) before the file is refused as a decompression bomb.
ZIP_MAX_RATIO = 2
ZIP_SLACK = 16 << 20
#: The pickled structure of a checkpoint (names and storage descriptions) is small.
ZIP_MAX_PICKLE = 64 << 20


def check_zip_bounds(path: PathLike) -> int:
    """Read the zip directory of a ``torch.save`` file (nothing is inflated) and bound what loading it takes.

    Returns:
        the bytes the entries inflate to.

    Raises:
        CheckpointError: not a readable zip, an entry compressed more than :data:`ZIP_MAX_RATIO`
            times (torch writes tensors uncompressed), inflating to more than the file size times
            :data:`ZIP_MAX_RATIO` plus :data:`ZIP_SLACK`, or a pickle larger than :data:`ZIP_MAX_PICKLE`.
    """
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise _fail(path, f"cannot read as a PyTorch checkpoint (truncated or not a checkpoint?): "
                          f"{' '.join(str(e).split())[:100]}") from None
    total = sum(max(entry.file_size, 0) for entry in entries)
    for entry in entries:
        if entry.filename.endswith(".pkl") and entry.file_size > ZIP_MAX_PICKLE:
            raise _fail(path, f"refused: its structure ({entry.filename}) inflates to {entry.file_size:,} bytes; "
                              "not a weights file")
        if entry.file_size > ZIP_MAX_RATIO * entry.compress_size + (1 << 20):
            raise _fail(path, f"refused: entry {entry.filename} inflates from {entry.compress_size:,} to "
                              f"{entry.file_size:,} bytes (a decompression bomb: torch.save stores tensors)")
    if total > ZIP_MAX_RATIO * size + ZIP_SLACK:
        raise _fail(path, f"refused: it inflates to {total:,} bytes from a {size:,}-byte file (a decompression bomb)")
    return total


_REFUSED = ("refused to load: the file holds more than tensors (code or other objects); only weights are "
            "loaded, never code -- use the authors' released .pth or a cddfuse .safetensors")


def _official_defaults(path: Path) -> tuple[Task, ResidualMode]:
    """(task, residual) for an authors' checkpoint, from its file name.

    Their two released files are ``CDDFuse_IVF.pth`` (trained with the visible image as residual)
    and ``CDDFuse_MIF.pth`` (decoded without residual by their ``test_MIF.py``). The files carry no
    metadata, so the name is all there is; an unknown name is treated as IVF weights.
    """
    name = path.name.lower()
    if "mif" in name or "medical" in name:
        return "mif", "none"
    return "ivf", "vis"


def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < 100_000_000


def load_weights(path: PathLike, *, device: str | torch.device = "cpu") -> tuple[CDDFuse, WeightsInfo]:
    """Build a :class:`CDDFuse` in eval mode from a weights file of either format.

    Args:
        path: a ``.safetensors`` file written by :func:`save_weights`, or an authors' ``.pth``; or
            the name ``"authors-ivf"`` / ``"authors-mif"``: the authors' published file, downloaded
            and verified on first use (:mod:`cddfuse.models.hub`).
        device: where to put the model.

    Returns:
        ``(model, info)``.

    Raises:
        CheckpointError: missing, truncated or foreign file, or weights that do not fit (names given).
        CDDFuseError: a published file could not be downloaded (:func:`cddfuse.models.hub.fetch`).
    """
    state, info = _read_any(path)
    if info.architecture == "lite":
        raise _mismatch(info, "lite")
    assert isinstance(info.config, CDDFuseConfig)
    model = CDDFuse(info.config)
    check_state_dict(model, state, info.path or path)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def _mismatch(info: WeightsInfo, found: Architecture) -> CheckpointError:
    """The one-line error for weights of the other architecture than the one asked for."""
    if found == "lite":
        what = "is CDDFuse-lite weights, not CDDFuse (exact) weights"
        return CheckpointError(f"{info.path}: {what}; use method='lite', or pass exact weights",
                               cli=f"{info.path}: {what}; use --method lite, or pass exact weights")
    what = "is CDDFuse (exact) weights, not CDDFuse-lite weights"
    return CheckpointError(f"{info.path}: {what}; use method='cddfuse', or pass lite weights",
                           cli=f"{info.path}: {what}; use --method cddfuse, or pass lite weights")


def _read_any(path: PathLike) -> tuple[dict[str, Tensor], WeightsInfo]:
    """State dict and metadata of a weights file of any format and architecture (tensors checked finite;
    names, shapes and sizes checked against the network before any tensor is read)."""
    from . import hub

    p = hub.fetch(os.fspath(path)) if hub.is_hub_name(path) else Path(path)
    if not p.exists():
        raise _fail(p, "no such weights file")
    if p.is_dir():
        raise _fail(p, "is a folder, expected a weights file (.safetensors or .pth)")
    if _is_safetensors(p) or p.suffix == ".safetensors":
        state, info = _read_safetensors(p)
    else:
        state = read_official_checkpoint(p)
        task, residual = _official_defaults(p)
        try:
            config = infer_config(state)
        except CheckpointError as e:
            raise _fail(p, str(e)) from None
        info = WeightsInfo(task=task, residual=residual, normalize="minmax", config=config,
                           source_format="official", path=str(p))
        check_state_dict(check_config(config, p), state, p)  # before the network is allocated
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _fail(p, f"the weights hold NaN or infinite values (first in {key}); the file is broken -- "
                           "use the last good checkpoint")
    return state, info


def weights_architecture(path: PathLike) -> Architecture:
    """``"cddfuse"`` or ``"lite"``: which network the weights file is for (reads only its metadata
    for safetensors; an authors' ``.pth`` is always ``"cddfuse"``).

    Raises:
        CheckpointError: missing or unreadable file.
    """
    from . import hub

    if hub.is_hub_name(path):
        return "cddfuse"  # the authors' published checkpoints
    p = Path(path)
    if not p.exists():
        raise _fail(p, "no such weights file")
    if p.is_file() and (_is_safetensors(p) or p.suffix == ".safetensors"):
        _, meta = read_safetensors_header(p)  # the header alone, bounded
        return "lite" if meta.get("architecture") == "lite" else "cddfuse"
    return "cddfuse"


def load_lite_weights(path: PathLike, *, device: str | torch.device = "cpu") -> tuple[CDDFuseLite, WeightsInfo]:
    """Build a :class:`CDDFuseLite` in eval mode from lite weights (written by :func:`save_lite_weights`).

    Raises:
        CheckpointError: missing, truncated or foreign file; exact CDDFuse weights (one line naming the
            mismatch); weights that do not fit the sizes their metadata states.
    """
    state, info = _read_any(path)
    if info.architecture != "lite":
        raise _mismatch(info, "cddfuse")
    assert isinstance(info.config, LiteConfig)
    model = CDDFuseLite(info.config)
    _check_lite_state(model, state, info.path or path)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def load_any_weights(path: PathLike, *, device: str | torch.device = "cpu"
                     ) -> tuple[CDDFuse | CDDFuseLite, WeightsInfo]:
    """Either kind of weights: :func:`load_weights` or :func:`load_lite_weights` as the file says
    (``info.architecture``)."""
    if weights_architecture(path) == "lite":
        return load_lite_weights(path, device=device)
    return load_weights(path, device=device)


def _check_lite_state(model: CDDFuseLite, state: Mapping[str, Any], path: PathLike) -> None:
    """Names and shapes of ``state`` (tensors, or :class:`TensorSpec` of a header) against ``model``'s."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:4]}" + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
                 if items]
        raise _fail(path, "weights do not fit the CDDFuse-lite network their metadata describes: " + "; ".join(parts))


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as a safetensors header describes it (nothing read)."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


#: bytes per element of the safetensors dtypes
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
#: A safetensors header (names, shapes, metadata) larger than this is refused unread.
MAX_HEADER_BYTES = 16 << 20


def read_safetensors_header(path: PathLike) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Parse a safetensors header (``u64`` length + JSON) without reading or mapping any tensor.

    Every tensor's dtype, shape and byte range are checked against each other and against the file
    size, so that what :func:`load_weights` allocates afterwards is bounded by the file.

    Returns:
        ``(tensors, metadata)``.

    Raises:
        CheckpointError: one line saying what is wrong.
    """
    p = Path(path)
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 1 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise _fail(p, "cannot read as safetensors (truncated or corrupted?): the header length "
                               f"{n} does not fit the file ({size} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise _fail(p, f"cannot read: {e.strerror or e}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail(p, "cannot read as safetensors (truncated or corrupted?): the header is not JSON") from None
    if not isinstance(doc, dict):
        raise _fail(p, "cannot read as safetensors: the header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _fail(p, "cannot read as safetensors: its metadata is not a mapping of strings")
    data = size - 8 - n
    tensors: dict[str, TensorSpec] = {}
    for name, d in doc.items():
        try:
            dtype, shape, (start, end) = d["dtype"], tuple(d["shape"]), d["data_offsets"]
            ok = (dtype in _DTYPE_BYTES and all(type(v) is int and v >= 0 for v in (*shape, start, end))
                  and len(shape) <= 8)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _fail(p, f"cannot read as safetensors: bad description of tensor {name[:80]!r}")
        count = 1
        for v in shape:
            count *= v
        if end - start != count * _DTYPE_BYTES[dtype] or end > data or start > end:
            raise _fail(p, f"cannot read as safetensors (truncated or corrupted?): tensor {name[:80]!r} of "
                           f"shape {list(shape)} does not fit the file")
        tensors[name] = TensorSpec(dtype, shape, start, end)
    return tensors, meta


#: Bounds on the sizes a weights file may ask for (the paper's network: dim 64, 4 + 4 blocks); the model is
#: built on PyTorch's ``meta`` device (no memory) and compared with the file before anything is allocated.
CONFIG_LIMITS = {"dim": 4096, "num_heads": 256, "encoder_blocks": 256, "decoder_blocks": 256,
                 "encoder_inn_layers": 256, "fuse_inn_layers": 256, "in_channels": 16, "out_channels": 16}


def check_config(config: CDDFuseConfig, path: PathLike) -> CDDFuse:
    """Bound ``config``'s sizes and build its network on the ``meta`` device (shapes only, no memory).

    Raises:
        CheckpointError: a size outside :data:`CONFIG_LIMITS` or an expansion outside (0, 16].
    """
    for name, top in CONFIG_LIMITS.items():
        v = getattr(config, name)
        if type(v) is not int or not 0 <= v <= top:
            raise _fail(path, f"bad cddfuse metadata: {name}={v!r} (must be a whole number in [0, {top}])")
    for name in ("ffn_expansion", "base_ffn_expansion", "inn_expansion"):
        v = getattr(config, name)
        if not isinstance(v, (int, float)) or not 0 < v <= 16:
            raise _fail(path, f"bad cddfuse metadata: {name}={v!r} (must be a number in (0, 16])")
    try:
        with torch.device("meta"):
            return CDDFuse(config)
    except (ValueError, TypeError, RuntimeError) as e:
        raise _fail(path, f"bad cddfuse metadata: the sizes do not make a network "
                          f"({' '.join(str(e).split())[:100]})") from None


#: Bounds on the sizes CDDFuse-lite weights may ask for (the bundled models: width 16, 3 levels).
LITE_CONFIG_LIMITS = {"width": 1024, "stem": 64, "levels": 16, "blocks": 64, "guides": 64, "head_width": 1024,
                      "head_layers": 64}


def check_lite_config(config: LiteConfig, path: PathLike) -> CDDFuseLite:
    """Bound a lite ``config``'s sizes and build its network on the ``meta`` device (no memory).

    Raises:
        CheckpointError: a size outside :data:`LITE_CONFIG_LIMITS`, or sizes that make no network.
    """
    for name, top in LITE_CONFIG_LIMITS.items():
        v = getattr(config, name, None)
        if v is not None and (type(v) is not int or not 0 <= v <= top):
            raise _fail(path, f"bad cddfuse-lite metadata: {name}={v!r} (must be a whole number in [0, {top}])")
    try:
        with torch.device("meta"):
            return CDDFuseLite(config)
    except (ValueError, TypeError, RuntimeError) as e:
        raise _fail(path, f"bad cddfuse-lite metadata: the sizes do not make a network "
                          f"({' '.join(str(e).split())[:100]})") from None


def _read_safetensors(p: Path) -> tuple[dict[str, Tensor], WeightsInfo]:
    from safetensors import SafetensorError, safe_open

    specs, meta = read_safetensors_header(p)
    info = _safetensors_info(p, meta)
    # names and shapes, before any tensor is read
    if isinstance(info.config, LiteConfig):
        _check_lite_state(check_lite_config(info.config, p), specs, p)
    else:
        check_state_dict(check_config(info.config, p), specs, p)
    try:
        with safe_open(str(p), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(p, f"cannot read as safetensors (truncated or corrupted?): {' '.join(str(e).split())[:200]}") \
            from None
    return state, info


def _meta_choice(p: Path, meta: Mapping[str, str], key: str, choices: tuple[_C, ...], what: str) -> _C | None:
    """``meta[key]`` as one of ``choices`` (``None`` when missing or empty), else a CheckpointError."""
    value = meta.get(key) or None
    if value is not None and value not in choices:
        raise _fail(p, f"bad {what} {value!r} in metadata (one of {', '.join(choices)} expected)")
    return value


def _safetensors_info(p: Path, meta: Mapping[str, str]) -> WeightsInfo:
    """The :class:`WeightsInfo` of a safetensors file's metadata."""
    if meta.get("format") != FORMAT_NAME:
        raise _fail(p, f"safetensors file without cddfuse metadata (format={meta.get('format')!r}); "
                       "write weights with cddfuse.models.weights.save_weights")
    architecture: Architecture = "lite" if meta.get("architecture") == "lite" else "cddfuse"
    if meta.get("architecture") not in (None, "cddfuse", "lite"):
        raise _fail(p, f"unknown architecture {meta.get('architecture')!r} in metadata (cddfuse or lite expected)")
    try:
        raw_config = json.loads(meta["config"])
        config: CDDFuseConfig | LiteConfig = (
            LiteConfig.from_dict(raw_config) if architecture == "lite" else CDDFuseConfig.from_dict(raw_config))
        provenance = json.loads(meta.get("provenance", "{}"))
    except (KeyError, ValueError, TypeError, RecursionError, OverflowError, AttributeError) as e:
        raise _fail(p, f"bad cddfuse metadata: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(provenance, dict):
        provenance = {}
    residual = _meta_choice(p, meta, "residual", RESIDUAL_MODES, "residual mode")
    task = _meta_choice(p, meta, "task", TASKS, "task")
    normalize = _meta_choice(p, meta, "normalize", NORMALIZE_MODES, "normalisation") or "minmax"
    return WeightsInfo(task=task, residual=residual, normalize=normalize,
                       config=config, source_format="cddfuse", provenance=provenance, path=str(p),
                       architecture=architecture)


def save_weights(
    model: CDDFuse,
    path: PathLike,
    *,
    task: str,
    residual: str,
    normalize: str = "minmax",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as cddfuse safetensors with metadata, atomically (temp file + rename).

    Args:
        model: the network (any device; saved as contiguous CPU tensors).
        path: destination, conventionally ``*.safetensors``.
        task: ``"ivf"`` or ``"mif"``.
        residual: residual mode for inference (``"vis"``, ``"sum"``, ``"none"``).
        normalize: output normalisation for inference (``"minmax"`` or ``"none"``).
        provenance: JSON-serialisable facts (data, recipe, steps, wall time, hardware...).
    """
    return _save(model, path, task=task, residual=residual, normalize=normalize, provenance=provenance)


def save_lite_weights(
    model: CDDFuseLite,
    path: PathLike,
    *,
    task: str,
    residual: str,
    normalize: str = "minmax",
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write a :class:`CDDFuseLite` as cddfuse safetensors with ``architecture = "lite"``, atomically.

    Args:
        model: the student network.
        path: destination, conventionally ``*.safetensors``.
        task: ``"ivf"`` or ``"mif"``.
        residual: the teacher's residual mode (already part of the student's output).
        normalize: output normalisation for inference (``"minmax"`` or ``"none"``).
        provenance: JSON-serialisable facts (teacher file and sha256, data, recipe, steps, wall time, CPU...).
    """
    return _save(model, path, task=task, residual=residual, normalize=normalize, provenance=provenance,
                 architecture="lite")


def _save(model: CDDFuse | CDDFuseLite, path: PathLike, *, task: str, residual: str, normalize: str,
          provenance: Mapping[str, Any] | None, architecture: Architecture | None = None) -> Path:
    """Both networks' safetensors writer: checked metadata (``architecture`` only for lite), atomic."""
    from safetensors.torch import save_file

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    if architecture is not None:
        meta["architecture"] = architecture
    meta |= {
        "task": task,
        "residual": residual,
        "normalize": normalize,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "provenance": json.dumps(dict(provenance or {}), sort_keys=True, default=str),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    dest = Path(path)
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return dest
