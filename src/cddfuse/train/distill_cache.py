"""The teacher's outputs for distillation, computed once per training pair and kept on disk.

Every item is one ``.npz`` file holding the pair's two luminance images ``a``, ``b`` and the teacher's
fused luminance ``t`` (all ``(H, W)`` float32; ``t`` is what the exact pipeline hands to min-max
normalisation, its residual included), plus a SHA-256 of the three arrays' bytes. Files are written
atomically (temporary file + rename), so an interrupted fill leaves only complete items and a rerun
computes just the missing ones.

The cache is keyed twice:

* the folder name is a digest of the *teacher* (its file's SHA-256), the residual mode, the luminance
  rule and this format's version -- another teacher or pipeline setting gets another folder;
* each item's name is a digest of the folder key and the SHA-256 of both source files -- an edited
  image gets a new item, never a stale one.

An item that fails its checksum (a damaged disk, a hand-edited file) is reported and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._fileutil import atomic_path
from ..errors import CDDFuseError

__all__ = ["CACHE_FORMAT", "TeacherSpec", "Triplet", "TeacherCache", "file_sha256", "resolve_teacher"]

#: Bumped whenever what an item holds or how it is computed changes.
CACHE_FORMAT = 1

Log = Callable[[str], None]


def file_sha256(path: os.PathLike[str] | str) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher makes the targets.

    Attributes:
        path: the weights file (any format :func:`cddfuse.models.weights.load_weights` reads).
        sha256: its SHA-256.
        task: ``"ivf"`` or ``"mif"``.
        residual: the residual mode the teacher is decoded with (part of the target).
    """

    path: Path
    sha256: str
    task: str
    residual: str

    def key(self) -> str:
        """Digest of everything that decides a target besides the two images."""
        facts = {"format": CACHE_FORMAT, "teacher": self.sha256, "residual": self.residual,
                 "luminance": "bt601-read_luminance", "engine": "fp32"}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, str]:
        return {"file": self.path.name, "sha256": self.sha256, "task": self.task, "residual": self.residual}


def resolve_teacher(teacher: os.PathLike[str] | str | None, task: str, residual: str = "auto") -> TeacherSpec:
    """The teacher: ``teacher`` (a weights file) or the bundled exact weights of ``task``.

    Raises:
        CDDFuseError: missing or unreadable weights, or CDDFuse-lite weights (a student is not a teacher).
    """
    from ..fusion.policy import resolve_residual
    from ..models.pretrained import pretrained_path
    from ..models.weights import load_weights, weights_architecture

    path = Path(teacher) if teacher is not None else pretrained_path(task)
    if weights_architecture(path) == "lite":
        raise CDDFuseError(f"{path}: is CDDFuse-lite weights; the teacher must be exact CDDFuse weights "
                           "(the bundled ones by default, or an authors' .pth)")
    _, info = load_weights(path)  # refuses foreign or broken files in one line
    return TeacherSpec(path=path, sha256=file_sha256(path), task=task,
                       residual=resolve_residual(residual, task, info))


@dataclass
class Triplet:
    """One training pair and its target: ``a``, ``b``, ``t`` each ``(H, W)`` float32."""

    stem: str
    a: np.ndarray
    b: np.ndarray
    t: np.ndarray


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for x in arrays:
        h.update(str(x.shape).encode())
        h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return h.hexdigest()


class TeacherCache:
    """The on-disk targets of one teacher under ``root`` (see the module docstring).

    Args:
        root: the cache folder (shared by teachers: each gets its own sub-folder).
        spec: the teacher.
        log: where progress and repairs are reported (one line each).
    """

    def __init__(self, root: os.PathLike[str] | str, spec: TeacherSpec, log: Log | None = None) -> None:
        self.spec = spec
        self.folder = Path(root) / spec.key()[:20]
        self.log = log or (lambda _msg: None)
        self._fuser: object | None = None
        self.computed = 0
        self.reused = 0
        self.repaired = 0

    def item_path(self, path_a: Path, path_b: Path) -> Path:
        """Where the item of the pair ``(path_a, path_b)`` lives (named by the teacher and both files' bytes)."""
        key = hashlib.sha256(f"{self.spec.key()}:{file_sha256(path_a)}:{file_sha256(path_b)}".encode())
        return self.folder / f"{key.hexdigest()[:32]}.npz"

    def read(self, item: Path) -> Triplet | None:
        """The item, or ``None`` when missing; a damaged item is reported, deleted and ``None`` returned."""
        if not item.is_file():
            return None
        try:
            with np.load(item, allow_pickle=False) as z:
                stem = str(z["stem"])
                a, b, t = (np.asarray(z[k], dtype=np.float32) for k in ("a", "b", "t"))
                stored = str(z["sha256"])
            ok = a.shape == b.shape == t.shape and a.ndim == 2 and _digest(a, b, t) == stored
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            ok, stem = False, f"({type(e).__name__})"
        if not ok:
            self.log(f"teacher cache: {item.name} ({stem}) is damaged (checksum or format); recomputing it")
            item.unlink(missing_ok=True)
            self.repaired += 1
            return None
        return Triplet(stem, a, b, t)

    def _teacher(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self._fuser is None:
            from ..fusion.fuser import Fuser

            self._fuser = Fuser(weights=self.spec.path, task=self.spec.task,  # type: ignore[arg-type]
                                residual=self.spec.residual, device="cpu")  # type: ignore[arg-type]
        out = self._fuser.fuse_luminance(a, b)  # type: ignore[attr-defined]
        return np.ascontiguousarray(out, dtype=np.float32)

    def get(self, stem: str, path_a: Path, path_b: Path) -> Triplet:
        """The pair's triplet: from the cache, or computed by the teacher and stored (atomically)."""
        item = self.item_path(path_a, path_b)
        hit = self.read(item)
        if hit is not None:
            self.reused += 1
            return hit
        from .data import read_luminance

        a, b = read_luminance(path_a), read_luminance(path_b)
        if a.shape != b.shape:
            raise CDDFuseError(f"{stem}: the two sources differ in size ({a.shape[1]}x{a.shape[0]} vs "
                               f"{b.shape[1]}x{b.shape[0]}); distillation needs registered pairs")
        t = self._teacher(a, b)
        if not np.all(np.isfinite(t)):
            raise CDDFuseError(f"{stem}: the teacher produced NaN or infinite values; check its weights")
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(item) as tmp, open(tmp, "wb") as f:
            np.savez(f, stem=np.array(stem), a=a, b=b, t=t, sha256=np.array(_digest(a, b, t)))
        self._write_manifest()
        self.computed += 1
        return Triplet(stem, a, b, t)

    def _write_manifest(self) -> None:
        manifest = self.folder / "teacher.json"
        if not manifest.exists():
            from .._fileutil import atomic_write_bytes

            atomic_write_bytes(manifest, json.dumps({"format": CACHE_FORMAT, **self.spec.to_dict()},
                                                    indent=1).encode())

    def fill(self, pairs: Sequence[tuple[str, Path, Path]], what: str = "pairs") -> list[Triplet]:
        """All pairs' triplets, computing the missing ones (progress logged about every 30 s)."""
        out: list[Triplet] = []
        t0 = last = time.monotonic()
        base = (self.computed, self.reused, self.repaired)
        for i, (stem, pa, pb) in enumerate(pairs):
            out.append(self.get(stem, Path(pa), Path(pb)))
            now = time.monotonic()
            if now - last > 30 or i + 1 == len(pairs):
                last = now
                c, r, f = (x - y for x, y in zip((self.computed, self.reused, self.repaired), base))
                self.log(f"teacher cache ({what}): {i + 1}/{len(pairs)} ready ({c} computed, {r} reused, "
                         f"{f} repaired; {now - t0:.0f} s)")
        return out
