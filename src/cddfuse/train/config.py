"""Training configuration: defaults (the paper's recipe), YAML files, command-line overrides, validation.

A configuration is a nested dict. :data:`DEFAULTS` lists every key that exists; a YAML file or an
override may only set known keys (unknown ones are reported with the closest known name), and each
value is checked by :func:`validate`. Overrides are ``dotted.key=value`` strings whose value is
parsed as YAML (``optim.lr=2e-4``, ``phase1.parts=[encoder,decoder]``, ``val.a=null``).
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..models.cddfuse import CDDFuseConfig
from ..options import RESIDUAL_MODES, TASKS

__all__ = [
    "DEFAULTS",
    "PARTS",
    "MODEL_SIZES",
    "RESUME_OVERRIDABLE",
    "default_config",
    "load_config",
    "apply_overrides",
    "merge",
    "validate",
    "dump_config",
    "parse_duration",
]

#: The four separately optimised parts of CDDFuse (attribute names of :class:`cddfuse.models.CDDFuse`).
PARTS = ("encoder", "decoder", "base_fuse", "detail_fuse")

#: Network sizes a run does not choose: training works on luminance, one channel in and out.
_FIXED_MODEL_SIZES = ("in_channels", "out_channels")

#: The ``model`` section's sizes: :class:`~cddfuse.models.CDDFuseConfig`'s fields and defaults (the paper's).
MODEL_SIZES: dict[str, Any] = {f.name: f.default for f in fields(CDDFuseConfig) if f.name not in _FIXED_MODEL_SIZES}

#: The paper's recipe (Zhao et al., CVPR 2023; the authors' train.py) on MSRS.
DEFAULTS: dict[str, Any] = {
    "name": None,  # run name: the run directory is runs/<name> unless --run-dir is given
    "task": "ivf",  # ivf (infrared-visible) | mif (medical); written into the exported weights
    "seed": 0,  # model initialisation and data order
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "model": {
        **MODEL_SIZES,  # dim, num_heads, encoder_blocks, ...: CDDFuseConfig's, the paper's network
        "init": None,  # optional weights file (ours or the authors') to start from
    },
    "data": {
        "cache": None,  # file written by `cddfuse prepare` (.h5/.hdf5/.npz)
        "a": None,  # or: folder of first sources (infrared / CT / PET / SPECT)
        "b": None,  # and folder of second sources (visible / MRI), paired by file stem
        "mode": "patches",  # patches (paper) | random_crop (small data sets)
        "patch_size": 128,
        "stride": 200,
        "contrast_threshold": 0.1,  # (p90 - p10) / p90 below this in either source: patch dropped / crop redrawn
        "crop_size": 128,  # random_crop mode
        "crops_per_image": 1,  # random crops per pair and epoch
        "flips": True,  # random horizontal/vertical flips (random_crop mode)
        "unmatched": "error",  # error | skip: images without a partner in the other folder
        "small_images": "error",  # error | skip: images smaller than the patch / crop
        "workers": 0,  # DataLoader worker processes per rank
    },
    "train": {
        "batch_size": 8,  # global batch (split evenly over data-parallel ranks)
        "drop_last": True,  # drop the last incomplete batch of every epoch
        "max_steps_per_epoch": None,  # cap (quick experiments); None = the whole data set
        "micro_batch": "auto",  # pairs per forward/backward chunk (same gradient); auto: by memory on CPU, all on CUDA
        "precision": "fp32",  # fp32 | bf16 (autocast: CUDA, or CPUs with AMX / AVX512-BF16)
        "threads": None,  # torch intra-op threads on CPU (None: torch's default)
        "cpu_malloc_tuning": True,  # on Linux/glibc CPU: reuse freed memory instead of mmap/munmap per tensor
    },
    "phase1": {  # reconstruction: encoder + decoder rebuild each source
        "epochs": 40,
        "parts": ["encoder", "decoder"],
    },
    "phase2": {  # fusion
        "epochs": 80,
        "parts": ["encoder", "decoder", "base_fuse", "detail_fuse"],
        "residual": "vis",  # decoder residual of the fused image: vis | sum | none
    },
    "optim": {
        "lr": 1e-4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "grad_clip": 0.01,  # max L2 norm of the gradient, per part; null = no clipping
    },
    "sched": {
        "step_epochs": 20,  # StepLR step size, in epochs in which the part is trained
        "gamma": 0.5,
        "min_lr": 1e-6,
    },
    "loss": {
        "recon_ssim": 5.0,
        "recon_mse": 1.0,
        "recon_a": 1.0,
        "recon_b": 1.0,
        "recon_gradient": 5.0,
        "decomp": 2.0,
        "fusion_intensity": 1.0,
        "fusion_gradient": 10.0,
    },
    "checkpoint": {
        "every_steps": 500,  # also at every phase boundary, at the end and on --max-time / SIGTERM
        "weights": None,  # safetensors file rewritten with the current weights at every checkpoint (null: none)
    },
    "log": {
        "every_steps": 10,  # loss scalars
        "image_every_steps": 500,  # image grids (0: never)
        "tensorboard": True,
        "progress": True,
    },
    "val": {
        "a": None,  # held-out pairs (folders); validation is skipped when unset
        "b": None,
        "every_epochs": 1,
        "max_pairs": 4,
        "max_size": 256,  # centre-crop larger validation images to this size (0: full size)
        "metrics": ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"],
    },
}

#: Keys that may change when a run is resumed (they do not change the computation).
RESUME_OVERRIDABLE = (
    "device",
    "data.workers",
    "train.micro_batch",  # same gradient (float rounding aside)
    "train.threads",
    "train.cpu_malloc_tuning",
    "train.precision",  # autocast only: weights, Adam state and losses stay float32 in every precision
    "log.",
    "checkpoint.",
    "val.",
    "phase2.epochs",
    "name",
)

_CHOICES = {
    "task": TASKS,
    "data.mode": ("patches", "random_crop"),
    "data.unmatched": ("error", "skip"),
    "data.small_images": ("error", "skip"),
    "train.precision": ("fp32", "bf16"),
    "phase2.residual": RESIDUAL_MODES,
}


#: A config or a --set value larger than this is refused before it is parsed (recipes are a few KB).
MAX_CONFIG_BYTES = 1 << 20


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """SafeLoader that also reads ``1e-4`` / ``2E+3`` (no dot) as floats, as people write learning rates,
    and refuses aliases (``*name``, also in ``<<: *name``): a 700-byte file of nested aliases expands to
    billions of values ("billion laughs"); a recipe never needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise UsageError(f"line {event.start_mark.line + 1}: aliases (*{event.anchor}) are not accepted in a "
                             "config; write the value out")
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


class _YamlSyntaxError(UsageError):
    """Text that is not YAML (a ``--set`` value then stays the text as written)."""


def _yaml_load(text: str, where: str) -> Any:
    """Parse YAML ``text`` (from ``where``) safely: bounded size, no aliases, no deep nesting.

    Raises:
        UsageError: one line naming ``where``, the problem and its line (never the YAML mark snippet).
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise UsageError(f"{where}: {len(text):,} characters is more than a config may have "
                         f"({MAX_CONFIG_BYTES:,}); is this the right file?")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(e.problem or e.context or "syntax error").split())
        raise _YamlSyntaxError(f"{where} is not valid YAML: {what}{at}") from None
    except yaml.YAMLError as e:
        raise _YamlSyntaxError(f"{where} is not valid YAML: {' '.join(str(e).split())[:200]}") from None
    except RecursionError:
        raise UsageError(f"{where}: nested too deeply to be a config") from None


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a config value can be megabytes long)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 6
    r.maxlevel = 3
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_config() -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS)


def _flat_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out.extend(_flat_keys(v, prefix + k + "."))
    return out


def _unknown(key: str, where: str) -> UsageError:
    known = _flat_keys(DEFAULTS)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known sections: {', '.join(DEFAULTS)}"
    return UsageError(f"unknown config key {key!r} in {where}{hint}")


def merge(base: dict[str, Any], update: Mapping[str, Any], where: str = "config", prefix: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into ``base`` (in place); keys must exist in ``base``."""
    if not isinstance(update, Mapping):
        raise UsageError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {type(update).__name__}")
    for k, v in update.items():
        key = prefix + str(k)
        if k not in base:
            raise _unknown(key, where)
        if isinstance(base[k], dict):
            if not isinstance(v, Mapping):
                raise UsageError(f"{where}: {key} must be a mapping of settings, got {_short(v)}")
            merge(base[k], v, where, key + ".")
        else:
            base[k] = copy.deepcopy(v)
    return base


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Defaults updated by the YAML file at ``path`` (if given). Relative data paths stay as written."""
    cfg = default_config()
    if path is None:
        return cfg
    p = Path(path)
    doc = read_config_file(p)
    if doc is None:
        return cfg
    return merge(cfg, doc, where=str(p))


def read_config_file(p: Path) -> Any:
    """The YAML document of the recipe file ``p``, read safely (bounded size, UTF-8, no aliases).

    Raises:
        UsageError: one line naming the file and the problem.
    """
    if not p.is_file():
        raise UsageError(f"config file {p} not found")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise UsageError(f"config file {p}: {p.stat().st_size:,} bytes is more than a config may have "
                             f"({MAX_CONFIG_BYTES:,}); is this the right file?")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"config file {p} is not UTF-8 text") from None
    return _yaml_load(text, f"config file {p}")


def _set_dotted(cfg: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node: Any = cfg
    for _i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise _unknown(key, where)
        node = node[part]
    last = parts[-1]
    if not isinstance(node, dict) or last not in node:
        raise _unknown(key, where)
    if isinstance(node[last], dict):
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: {key} is a section; set its keys ({key}.<name>=...) or give a mapping")
        merge(node[last], value, where, key + ".")
    else:
        node[last] = value


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str], where: str = "--set") -> list[str]:
    """Apply ``key=value`` strings (value parsed as YAML) to ``cfg`` in place; returns the keys set."""
    keys = []
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"{where} expects KEY=VALUE (e.g. optim.lr=2e-4), got {_short(item)}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = _yaml_load(raw, f"{where} {key}") if raw.strip() else None
        except _YamlSyntaxError:
            value = raw  # not YAML: the text as written (a path with a colon...)
        _set_dotted(cfg, key, value, f"{where} {item}")
        keys.append(key)
    return keys


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _num(cfg: Mapping[str, Any], key: str, *, integer: bool = False, minimum: float | None = None,
         allow_none: bool = False, strict_min: bool = False) -> None:
    v = _get(cfg, key)
    if v is None and allow_none:
        return
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise UsageError(f"config {key} must be {kind}{' or null' if allow_none else ''}, got {_short(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise UsageError(f"config {key} must be a finite number, got {v}")
    if minimum is not None and (v <= minimum if strict_min else v < minimum):
        raise UsageError(f"config {key} must be {'>' if strict_min else '>='} {minimum}, got {_short(v)}")


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check types and ranges of every setting; raise :class:`UsageError` naming the key. Returns ``cfg``."""
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise UsageError(f"config {key} must be one of {', '.join(choices)}; got {_short(_get(cfg, key))}")
    _num(cfg, "seed", integer=True, minimum=0)
    dev = cfg["device"]
    if not isinstance(dev, str) or not (dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")):
        raise UsageError(f"config device must be auto, cpu, cuda or cuda:N; got {_short(cfg['device'])}")
    for k, default in MODEL_SIZES.items():  # counts are integers >= 0, expansions positive numbers
        if isinstance(default, int):
            _num(cfg, f"model.{k}", integer=True, minimum=0)
    for k, default in MODEL_SIZES.items():
        if isinstance(default, float):
            _num(cfg, f"model.{k}", minimum=0, strict_min=True)
    m = cfg["model"]
    if m["dim"] < 2 or m["dim"] % 2 or m["num_heads"] < 1 or m["dim"] % m["num_heads"]:
        raise UsageError(f"config model.dim must be even and divisible by model.num_heads; got dim={m['dim']}, "
                         f"num_heads={m['num_heads']}")
    for k in ("patch_size", "stride", "crop_size", "crops_per_image"):
        _num(cfg, f"data.{k}", integer=True, minimum=1)
    _num(cfg, "data.contrast_threshold", minimum=0)
    _num(cfg, "data.workers", integer=True, minimum=0)
    if not isinstance(cfg["data"]["flips"], bool):
        raise UsageError(f"config data.flips must be true or false, got {_short(cfg['data']['flips'])}")
    _num(cfg, "train.batch_size", integer=True, minimum=1)
    _num(cfg, "train.max_steps_per_epoch", integer=True, minimum=1, allow_none=True)
    _num(cfg, "train.threads", integer=True, minimum=1, allow_none=True)
    if cfg["train"]["micro_batch"] != "auto":
        _num(cfg, "train.micro_batch", integer=True, minimum=1)
    for ph in ("phase1", "phase2"):
        _num(cfg, f"{ph}.epochs", integer=True, minimum=0)
        parts = cfg[ph]["parts"]
        if not isinstance(parts, list) or not parts or any(p not in PARTS for p in parts):
            raise UsageError(f"config {ph}.parts must be a non-empty list of {', '.join(PARTS)}; got {_short(parts)}")
    if any(p in ("base_fuse", "detail_fuse") for p in cfg["phase1"]["parts"]):
        raise UsageError("config phase1.parts: the fusion layers are not used in Phase I (reconstruction)")
    if cfg["phase1"]["epochs"] + cfg["phase2"]["epochs"] == 0:
        raise UsageError("config phase1.epochs + phase2.epochs must be > 0")
    _num(cfg, "optim.lr", minimum=0, strict_min=True)
    _num(cfg, "optim.weight_decay", minimum=0)
    _num(cfg, "optim.eps", minimum=0, strict_min=True)
    betas = cfg["optim"]["betas"]
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or not all(isinstance(x, (int, float)) and 0 <= x < 1 for x in betas)):
        raise UsageError(f"config optim.betas must be two numbers in [0, 1), got {_short(betas)}")
    _num(cfg, "optim.grad_clip", minimum=0, strict_min=True, allow_none=True)
    _num(cfg, "sched.step_epochs", integer=True, minimum=1)
    _num(cfg, "sched.gamma", minimum=0, strict_min=True)
    _num(cfg, "sched.min_lr", minimum=0)
    for k in DEFAULTS["loss"]:
        _num(cfg, f"loss.{k}", minimum=0)
    _num(cfg, "checkpoint.every_steps", integer=True, minimum=0)
    _num(cfg, "log.every_steps", integer=True, minimum=1)
    _num(cfg, "log.image_every_steps", integer=True, minimum=0)
    if not isinstance(cfg["train"]["cpu_malloc_tuning"], bool):
        raise UsageError("config train.cpu_malloc_tuning must be true or false, got "
                         f"{_short(cfg['train']['cpu_malloc_tuning'])}")
    for k in ("tensorboard", "progress"):
        if not isinstance(cfg["log"][k], bool):
            raise UsageError(f"config log.{k} must be true or false, got {_short(cfg['log'][k])}")
    _num(cfg, "val.every_epochs", integer=True, minimum=1)
    _num(cfg, "val.max_pairs", integer=True, minimum=1)
    _num(cfg, "val.max_size", integer=True, minimum=0)
    if not isinstance(cfg["val"]["metrics"], list):
        raise UsageError(f"config val.metrics must be a list of metric names, got {_short(cfg['val']['metrics'])}")
    if (cfg["val"]["a"] is None) != (cfg["val"]["b"] is None):
        raise UsageError("config val.a and val.b must be given together (two folders of held-out pairs)")
    d = cfg["data"]
    if d["cache"] is None and (d["a"] is None or d["b"] is None):
        raise UsageError(
            "no training data: give a cache from `cddfuse prepare` (data.cache / --data) or two folders "
            "(data.a and data.b / --a and --b)"
        )
    if d["cache"] is not None and (d["a"] is not None or d["b"] is not None):
        raise UsageError("give either data.cache or the folders data.a and data.b, not both")
    for key in ("name", "model.init", "data.cache", "data.a", "data.b", "val.a", "val.b", "checkpoint.weights"):
        v = _get(cfg, key)
        if v is not None and not isinstance(v, str):
            raise UsageError(f"config {key} must be a string (a path) or null, got {_short(v)}")
    return cfg


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out = []
    for k in set(old) | set(new):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(changed_keys(a, b, prefix + k + "."))
        elif a != b:
            out.append(prefix + k)
    return sorted(out)


def dump_config(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)


def parse_duration(text: str | float | int) -> float:
    """``"90"``, ``"90s"``, ``"45m"``, ``"1.5h"``, ``"2h30m"``, ``"1d"`` -> seconds."""
    if isinstance(text, (int, float)):
        secs = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
        secs, num = 0.0, ""
        try:
            if s and s[-1].isdigit():
                s += "s"
            for ch in s:
                if ch.isdigit() or ch == ".":
                    num += ch
                elif ch in units and num:
                    secs += float(num) * units[ch]
                    num = ""
                else:
                    raise ValueError
            if num or not s:
                raise ValueError
        except ValueError:
            raise UsageError(f"bad duration {_short(text)}; use e.g. 3600, 90s, 45m, 1.5h, 2h30m") from None
    if not math.isfinite(secs) or secs <= 0:
        raise UsageError(f"duration must be a positive, finite time, got {_short(text)}")
    return secs
