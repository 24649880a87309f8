"""Distillation configuration (``cddfuse distill``): defaults, YAML recipes, ``--set`` overrides, checks.

Same conventions as :mod:`cddfuse.train.config`: a nested dict, only known keys, ``dotted.key=value``
overrides parsed as YAML, every value checked by :func:`validate` with one line naming the key.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..models.lite import LiteConfig
from ..options import RESIDUAL_CHOICES, TASKS
from .config import _yaml_load, _YamlSyntaxError, parse_duration, read_config_file

__all__ = ["DEFAULTS", "RESUME_OVERRIDABLE", "default_config", "load_config", "apply_overrides", "validate",
           "changed_keys", "dump_config", "parse_duration", "lite_config"]

#: Every setting and its default.
DEFAULTS: dict[str, Any] = {
    "name": None,  # run name: the run directory is runs/<name> unless --run-dir is given
    "task": "ivf",  # ivf | mif: written into the weights; picks the bundled teacher
    "seed": 0,  # initialisation and the crops of every step
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "teacher": None,  # exact CDDFuse weights (ours or the authors' .pth); null: the bundled ones of the task
    "residual": "auto",  # how the teacher is decoded (auto: as `cddfuse fuse` decodes it)
    "model": {f.name: f.default for f in fields(LiteConfig)},  # the student's sizes
    "data": {
        "a": None,  # folder of first sources (infrared / CT / PET / SPECT)
        "b": None,  # folder of second sources (visible / MRI), paired by file stem
        "every": 1,  # use every k-th pair (file-name order) -- a documented subset
        "teacher_every": 1,  # the teacher fuses every k-th of those; the others train with the fusion loss only
        "cache_dir": None,  # teacher outputs; null: <run directory's parent>/teacher_cache
        "crop_size": 128,  # random crops of (a, b, teacher) for each step
        "flips": True,
        "unmatched": "error",  # error | skip
    },
    "train": {
        "steps": 3000,
        "batch_size": 16,  # crops of pairs with a teacher output per step (global; split over ranks)
        "fusion_batch_size": 0,  # and crops of pairs without one (fusion loss only; needs data.teacher_every > 1)
        "precision": "fp32",  # fp32 | bf16 (CUDA, or CPUs with AMX / AVX512-BF16)
        "threads": None,  # torch threads on CPU (None: torch's default)
    },
    "optim": {
        "lr": 2e-3,  # AdamW; linear warm-up, then cosine decay to lr * min_lr_ratio
        "weight_decay": 0.0,
        "warmup_steps": 100,
        "min_lr_ratio": 0.05,
        "grad_clip": 1.0,  # max L2 norm of the gradient; null: none
    },
    "loss": {
        "l1": 1.0,  # L1(student, teacher)
        "gradient": 1.0,  # L1 between their Sobel magnitudes
        "ssim": 0.5,  # SSIM loss against the teacher
        "fusion": 0.1,  # CDDFuse's fusion loss on the student: intensity + fusion_gradient * gradient
        "fusion_gradient": 10.0,
        "fusion_only": 0.1,  # weight of the fusion loss on the crops without a teacher output
    },
    "checkpoint": {"every_steps": 200},
    "log": {"every_steps": 20, "tensorboard": True, "progress": True},
    "val": {
        "a": None,  # held-out pairs (folders); validation is skipped when unset
        "b": None,
        "every_steps": 250,
        "max_pairs": 12,  # spread evenly over the held-out pairs
    },
}

#: Keys that may change on --resume (they do not change the computation of the steps done).
RESUME_OVERRIDABLE = ("device", "train.threads", "train.steps", "log.", "checkpoint.", "val.every_steps", "name")

_CHOICES = {"task": TASKS, "residual": RESIDUAL_CHOICES, "train.precision": ("fp32", "bf16"),
            "data.unmatched": ("error", "skip")}


def default_config() -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS)


def _flat(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out.extend(_flat(v, prefix + k + "."))
    return out


def _unknown(key: str, where: str) -> UsageError:
    close = difflib.get_close_matches(key, _flat(DEFAULTS), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known sections: {', '.join(DEFAULTS)}"
    return UsageError(f"unknown distill config key {key!r} in {where}{hint}")


def merge(base: dict[str, Any], update: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place; keys must exist in ``base``."""
    if not isinstance(update, Mapping):
        raise UsageError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {type(update).__name__}")
    for k, v in update.items():
        key = prefix + str(k)
        if k not in base:
            raise _unknown(key, where)
        if isinstance(base[k], dict):
            if not isinstance(v, Mapping):
                raise UsageError(f"{where}: {key} must be a mapping of settings, got {v!r}")
            merge(base[k], v, where, key + ".")
        else:
            base[k] = copy.deepcopy(v)
    return base


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Defaults updated by the YAML recipe at ``path`` (if given)."""
    cfg = default_config()
    if path is None:
        return cfg
    p = Path(path)
    doc = read_config_file(p)
    return cfg if doc is None else merge(cfg, doc, str(p))


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str], where: str = "--set") -> list[str]:
    """Apply ``key=value`` strings (value parsed as YAML) in place; returns the keys set."""
    keys = []
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"{where} expects KEY=VALUE (e.g. optim.lr=1e-3), got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        try:
            value = _yaml_load(raw, f"{where} {key}") if raw else None
        except _YamlSyntaxError:
            value = raw  # not YAML: the text as written
        node: Any = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                raise _unknown(key, f"{where} {item}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise _unknown(key, f"{where} {item}")
        node[parts[-1]] = value
        keys.append(key)
    return keys


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _num(cfg: Mapping[str, Any], key: str, *, integer: bool = False, minimum: float | None = None,
         allow_none: bool = False, strict: bool = False) -> None:
    v = _get(cfg, key)
    if v is None and allow_none:
        return
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v):
        raise UsageError(f"config {key} must be {'an integer' if integer else 'a number'}"
                         f"{' or null' if allow_none else ''}, got {v!r}")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise UsageError(f"config {key} must be {'>' if strict else '>='} {minimum}, got {v!r}")


def lite_config(cfg: Mapping[str, Any]) -> LiteConfig:
    """The student's sizes from the ``model`` section (a :class:`UsageError` naming a bad one)."""
    try:
        return LiteConfig.from_dict(dict(cfg["model"]))
    except (ValueError, TypeError) as e:
        raise UsageError(f"config model: {e}") from None


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every setting; :class:`UsageError` naming the key. Returns ``cfg``."""
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise UsageError(f"config {key} must be one of {', '.join(choices)}; got {_get(cfg, key)!r}")
    _num(cfg, "seed", integer=True, minimum=0)
    dev = cfg["device"]
    if not isinstance(dev, str) or not (dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")):
        raise UsageError(f"config device must be auto, cpu, cuda or cuda:N; got {dev!r}")
    for k in DEFAULTS["model"]:
        _num(cfg, f"model.{k}", integer=True, minimum=0)
    lite_config(cfg)
    _num(cfg, "data.every", integer=True, minimum=1)
    _num(cfg, "data.teacher_every", integer=True, minimum=1)
    _num(cfg, "train.fusion_batch_size", integer=True, minimum=0)
    if cfg["train"]["fusion_batch_size"] and cfg["data"]["teacher_every"] == 1:
        raise UsageError("config train.fusion_batch_size > 0 needs data.teacher_every > 1 (pairs without a "
                         "teacher output to draw from)")
    _num(cfg, "data.crop_size", integer=True, minimum=8)
    if not isinstance(cfg["data"]["flips"], bool):
        raise UsageError(f"config data.flips must be true or false, got {cfg['data']['flips']!r}")
    _num(cfg, "train.steps", integer=True, minimum=1)
    _num(cfg, "train.batch_size", integer=True, minimum=1)
    _num(cfg, "train.threads", integer=True, minimum=1, allow_none=True)
    _num(cfg, "optim.lr", minimum=0, strict=True)
    _num(cfg, "optim.weight_decay", minimum=0)
    _num(cfg, "optim.warmup_steps", integer=True, minimum=0)
    _num(cfg, "optim.min_lr_ratio", minimum=0)
    _num(cfg, "optim.grad_clip", minimum=0, strict=True, allow_none=True)
    for k in DEFAULTS["loss"]:
        _num(cfg, f"loss.{k}", minimum=0)
    _num(cfg, "checkpoint.every_steps", integer=True, minimum=0)
    _num(cfg, "log.every_steps", integer=True, minimum=1)
    for k in ("tensorboard", "progress"):
        if not isinstance(cfg["log"][k], bool):
            raise UsageError(f"config log.{k} must be true or false, got {cfg['log'][k]!r}")
    _num(cfg, "val.every_steps", integer=True, minimum=1)
    _num(cfg, "val.max_pairs", integer=True, minimum=1)
    if (cfg["val"]["a"] is None) != (cfg["val"]["b"] is None):
        raise UsageError("config val.a and val.b must be given together (two folders of held-out pairs)")
    if cfg["data"]["a"] is None or cfg["data"]["b"] is None:
        raise UsageError("no training data: give two folders of paired sources (data.a and data.b / --a and --b)")
    for key in ("name", "teacher", "data.a", "data.b", "data.cache_dir", "val.a", "val.b"):
        v = _get(cfg, key)
        if v is not None and not isinstance(v, str):
            raise UsageError(f"config {key} must be a string (a path) or null, got {v!r}")
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
