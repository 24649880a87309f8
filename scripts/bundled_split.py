"""The train/validation split of the bundled recipes' data, in one place.

Used by ``scripts/train_bundled.sh`` (symbolic links into the shared data) and
``scripts/gpu_prepare.py`` (copies, since links do not travel to another machine).

The rule: the pairs of each source folder, taken in file-name order (first sources sorted by name,
each matched with the second source of the same stem), are numbered across the folders of a task
(IVF: RoadScene; MIF: Harvard MRI_CT, then MRI_PET, then MRI_SPECT); every 20th pair (numbers 19,
39, ...) is held out for validation, the rest is for training. Medical file names get the folder
as a prefix (``MRI_CT_16003.png``) so that the three folders can share one. Test images are never
used (they are not under ``data/train``).

    python scripts/bundled_split.py --task ivf --shared ../shared --dest runs/bundled_ivf/split [--copy]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

#: Every HOLD_OUT_EVERY-th pair is held out for validation.
HOLD_OUT_EVERY = 20

#: Per task: (file-name prefix, first-source folder, second-source folder) under ``data/train``.
SOURCES: dict[str, list[tuple[str, str, str]]] = {
    "ivf": [("", "RoadScene/ir", "RoadScene/vi")],
    "mif": [(f"MRI_{m}_", f"Harvard/MRI_{m}/{m}", f"Harvard/MRI_{m}/MRI") for m in ("CT", "PET", "SPECT")],
}


@dataclass(frozen=True)
class SplitPair:
    part: str  # "train" or "val"
    name_a: str  # file name in the split's a/ folder
    src_a: Path
    name_b: str
    src_b: Path


def _files(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise SystemExit(f"bundled_split: {folder} is not a folder (is the shared data there? see CDDFUSE_SHARED)")
    return sorted(f.name for f in folder.iterdir() if not f.name.startswith(".") and f.is_file())


def split_pairs(task: str, train_root: Path) -> list[SplitPair]:
    """The pairs of ``task`` under ``train_root`` (the shared ``data/train``), each with its part."""
    out: list[SplitPair] = []
    i = 0
    for prefix, dir_a, dir_b in SOURCES[task]:
        folder_a, folder_b = train_root / dir_a, train_root / dir_b
        names_b = _files(folder_b)
        for fa in _files(folder_a):
            stem = fa.rsplit(".", 1)[0] if "." in fa else fa
            pattern = re.compile(re.escape(stem) + r"\.[A-Za-z]+")
            fb = next((n for n in names_b if pattern.fullmatch(n)), None)
            if fb is None:
                continue
            part = "val" if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else "train"
            out.append(SplitPair(part, prefix + fa, (folder_a / fa).resolve(), prefix + fb, (folder_b / fb).resolve()))
            i += 1
    return out


def write_split(pairs: list[SplitPair], dest: Path, copy: bool = False) -> Path:
    """Make ``dest/{train,val}/{a,b}`` with links to (or, with ``copy``, copies of) the pairs' files.

    Built beside ``dest`` and renamed into place, so that an interrupted run leaves no half split."""
    if dest.exists():
        raise SystemExit(f"bundled_split: {dest} exists already")
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for part in ("train", "val"):
            for side in ("a", "b"):
                (tmp / part / side).mkdir(parents=True)
        for p in pairs:
            for side, name, src in (("a", p.name_a, p.src_a), ("b", p.name_b, p.src_b)):
                target = tmp / p.part / side / name
                if copy:
                    shutil.copyfile(src, target)
                else:
                    target.symlink_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(SOURCES), required=True)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CDDFUSE_SHARED", "../shared")),
                    help="the shared folder (with data/train); default $CDDFUSE_SHARED or ../shared")
    ap.add_argument("--dest", type=Path, required=True, help="the split folder to make (must not exist)")
    ap.add_argument("--copy", action="store_true", help="copy the files instead of linking to them")
    a = ap.parse_args(argv)
    pairs = split_pairs(a.task, a.shared / "data" / "train")
    write_split(pairs, a.dest, copy=a.copy)
    n_val = sum(p.part == "val" for p in pairs)
    print(f"bundled_split: {a.dest}: {len(pairs) - n_val} training and {n_val} validation pairs ({a.task})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
