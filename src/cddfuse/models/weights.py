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
from typing import Any, Literal, Union

import torch
from torch import Tensor

from .._fileutil import atomic_path
from ..errors import CheckpointError
from ..options import NORMALIZE_MODES, RESIDUAL_MODES, TASKS
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

PathLike = Union[str, "os.PathLike[str]"]

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

    task: str | None
    residual: str | None
    normalize: str
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
    """Read the network sizes off a state dict (for the authors' files, which store none)."""
    try:
        dim = state_dict["encoder.patch_embed.proj.weight"].shape[0]
        in_ch = state_dict["encoder.patch_embed.proj.weight"].shape[1]
        heads = state_dict["encoder.baseFeature.attn.scale"].shape[0]
        out_ch = state_dict["decoder.output.2.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"cannot tell the network size: key {e.args[0]!r} is missing") from None

    def count(prefix: str) -> int:
        idx = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
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


def check_state_dict(model: CDDFuse, state_dict: Mapping[str, Tensor], path: PathLike = "<weights>") -> None:
    """Raise :class:`CheckpointError` naming every missing/unexpected key and shape mismatch."""
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
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
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


_REFUSED = ("refused to load: the file holds more than tensors (code or other objects); only weights are "
            "loaded, never code -- use the authors' released .pth or a cddfuse .safetensors")


def _official_defaults(path: Path) -> tuple[str | None, str | None]:
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
        path: a ``.safetensors`` file written by :func:`save_weights`, or an authors' ``.pth``.
        device: where to put the model.

    Returns:
        ``(model, info)``.

    Raises:
        CheckpointError: missing, truncated or foreign file, or weights that do not fit (names given).
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
    """State dict and metadata of a weights file of any format and architecture (tensors checked finite)."""
    p = Path(path)
    if not p.exists():
        raise _fail(p, "no such weights file")
    if p.is_dir():
        raise _fail(p, "is a folder, expected a weights file (.safetensors or .pth)")
    if _is_safetensors(p) or p.suffix == ".safetensors":
        state, info = _read_safetensors(p)
    else:
        state = read_official_checkpoint(p)
        task, residual = _official_defaults(p)
        info = WeightsInfo(task=task, residual=residual, normalize="minmax", config=infer_config(state),
                           source_format="official", path=str(p))
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
    p = Path(path)
    if not p.exists():
        raise _fail(p, "no such weights file")
    if p.is_file() and (_is_safetensors(p) or p.suffix == ".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise _fail(p, f"cannot read as safetensors (truncated or corrupted?): {e}") from None
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


def _check_lite_state(model: CDDFuseLite, state: Mapping[str, Tensor], path: PathLike) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:4]}" + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
                 if items]
        raise _fail(path, "weights do not fit the CDDFuse-lite network their metadata describes: " + "; ".join(parts))


def _read_safetensors(p: Path) -> tuple[dict[str, Tensor], WeightsInfo]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(p, f"cannot read as safetensors (truncated or corrupted?): {e}") from None
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
    except (KeyError, ValueError, TypeError) as e:
        raise _fail(p, f"bad cddfuse metadata: {e}") from None
    residual = meta.get("residual") or None
    if residual is not None and residual not in RESIDUAL_MODES:
        raise _fail(p, f"bad residual mode {residual!r} in metadata")
    info = WeightsInfo(task=meta.get("task") or None, residual=residual, normalize=meta.get("normalize", "minmax"),
                       config=config, source_format="cddfuse", provenance=provenance, path=str(p),
                       architecture=architecture)
    return state, info


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
    from safetensors.torch import save_file

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
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
    from safetensors.torch import save_file

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": "lite",
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
