"""Bundle what a GPU training run needs beside the repository (run here, where ../shared and PyPI are).

Writes, into an ignored folder of the checkout (default ``.gpu``, listed in ``.gitignore``):

* ``data/ivf`` and ``data/mif``: copies (not links: links do not travel) of the training pairs,
  split as ``scripts/train_bundled.sh`` splits them (``scripts/bundled_split.py``: every 20th pair by
  name held out in ``val/``): RoadScene (IVF) and Harvard MRI_CT + MRI_PET + MRI_SPECT (MIF);
* ``wheels``: the packages the GPU machine lacks (kornia and kornia_rs), downloaded for CPython
  ``--python-version`` (default 3.12, the GPU machine's) on manylinux x86-64, for
  ``pip install --no-index --no-deps --target``.

Then ``bash scripts/gpu_train.sh`` runs there (see its header). Prints the sizes, and the size of
everything that would travel (tracked and untracked-not-ignored files plus this folder; the limit
is 64 MiB).

    python3 scripts/gpu_prepare.py [--dest .gpu] [--shared ../shared] [--python-version 3.12]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bundled_split import split_pairs, write_split

ROOT = Path(__file__).resolve().parents[1]

#: What the GPU machine lacks, pinned to the versions the project is tested with (kornia needs kornia_rs).
WHEELS = ("kornia==0.9.0", "kornia_rs==0.2.0")

#: manylinux tags pip should accept (pip matches each exactly).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")

LIMIT = 64 * 2**20  # what may travel to the device machine


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def prepare_data(dest: Path, train_root: Path) -> dict[str, dict[str, int]]:
    """Copy the split of each task to ``dest/<task>`` (kept when its manifest says it is the same split)."""
    out = {}
    for task in ("ivf", "mif"):
        pairs = split_pairs(task, train_root)
        manifest = {"task": task, "train": sorted(p.name_a for p in pairs if p.part == "train"),
                    "val": sorted(p.name_a for p in pairs if p.part == "val")}
        folder = dest / task
        mf = folder / "split.json"
        if not (mf.is_file() and json.loads(mf.read_text()) == manifest):
            shutil.rmtree(folder, ignore_errors=True)
            write_split(pairs, folder, copy=True)
            mf.write_text(json.dumps(manifest, indent=1) + "\n")
        out[task] = {"train": len(manifest["train"]), "val": len(manifest["val"]), "bytes": _size(folder)}
    return out


def prepare_wheels(dest: Path, python_version: str, wheels: tuple[str, ...] = WHEELS) -> list[Path]:
    """Download ``wheels`` (no dependencies: name each) for CPython ``python_version`` into a fresh ``dest``."""
    shutil.rmtree(dest, ignore_errors=True)  # one version of each: two would stop the install
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + list(wheels), check=True)
    return sorted(dest.glob("*.whl"))


def travelling_bytes(root: Path, extra: Path) -> int:
    """Bytes of what travels: tracked and untracked-not-ignored files of ``root``, plus ``extra``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True).stdout.split(b"\0")
    files = {root / os.fsdecode(f) for f in listed if f}
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink()) + _size(extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=ROOT / ".gpu", help="the bundle folder (default: the checkout's .gpu)")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared")),
                    help="the shared folder with data/train (default $CDDFUSE_SHARED or ../shared)")
    ap.add_argument("--python-version", default="3.12", help="CPython version of the wheels (the GPU machine's: 3.12)")
    ap.add_argument("--no-data", action="store_true", help="only the wheels")
    ap.add_argument("--no-wheels", action="store_true", help="only the data")
    a = ap.parse_args(argv)
    dest = a.dest.resolve()
    mb = 2**20
    if not a.no_data:
        for task, n in prepare_data(dest / "data", a.shared / "data" / "train").items():
            print(f"gpu_prepare: {dest / 'data' / task}: {n['train']} training + {n['val']} validation pairs, "
                  f"{n['bytes'] / mb:.1f} MiB")
    if not a.no_wheels:
        whl = prepare_wheels(dest / "wheels", a.python_version)
        print(f"gpu_prepare: {dest / 'wheels'}: " + ", ".join(w.name for w in whl)
              + f"; {sum(w.stat().st_size for w in whl) / mb:.1f} MiB")
    if dest.is_relative_to(ROOT):
        total = travelling_bytes(ROOT, dest)
        print(f"gpu_prepare: what travels (the working tree with {dest.relative_to(ROOT)}): {total / mb:.1f} MiB "
              f"of {LIMIT / mb:.0f} MiB")
        if total > LIMIT:
            print("gpu_prepare: too large to travel", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
