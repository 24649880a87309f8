"""The sample pairs shipped in the package (cddfuse.data) and `cddfuse fuse --example NAME`."""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys

import numpy as np
import pytest

from cddfuse import data
from cddfuse.cli.main import main
from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.io.image import read_image

from .helpers import ROOT, shared_path

# where each sample comes from, in the official test sets (see src/cddfuse/data/README.txt)
ORIGINS = {
    "tno": ("TNO/ir/19.png", "TNO/vi/19.png"),
    "roadscene": ("RoadScene/ir/FLIR_08021.jpg", "RoadScene/vi/FLIR_08021.jpg"),
    "mri-pet": ("MRI_PET/PET/51.png", "MRI_PET/MRI/51.png"),
}


def test_names_paths_tasks_and_loading():
    assert data.names() == ("tno", "roadscene", "mri-pet")
    assert {n: data.task(n) for n in data.names()} == {"tno": "ivf", "roadscene": "ivf", "mri-pet": "mif"}
    shapes = {"tno": ((270, 360), (270, 360)), "roadscene": ((291, 446), (291, 446, 3)),
              "mri-pet": ((256, 256, 3), (256, 256))}
    total = 0
    for name in data.names():
        first, second = data.paths(name)
        assert first.is_file() and second.is_file() and first.parent == second.parent == data.FOLDER
        total += first.stat().st_size + second.stat().st_size
        a, b = data.load(name)
        assert (a.shape, b.shape) == shapes[name]
        assert a.dtype == b.dtype == np.float32 and 0 <= a.min() < a.max() <= 1 and 0 <= b.min() < b.max() <= 1
    assert total < 400_000  # a few hundred KB in the package
    assert (data.FOLDER / "README.txt").is_file()


def test_samples_hold_the_pixels_of_the_published_test_images():
    """Byte copies, or 1-channel copies of RGB files with three equal channels: the same pixels."""
    for name, (first, second) in ORIGINS.items():
        a, b = data.load(name)
        np.testing.assert_array_equal(a, read_image(shared_path("data", "test", *first.split("/"))))
        np.testing.assert_array_equal(b, read_image(shared_path("data", "test", *second.split("/"))))


@pytest.mark.parametrize("call", [data.paths, data.load, data.task])
def test_an_unknown_name_lists_the_names(call):
    with pytest.raises(UsageError, match="no sample pair named 'ivf'; the samples are tno, roadscene, mri-pet"):
        call("ivf")
    assert issubclass(UsageError, CDDFuseError)


def test_package_data_ships_every_sample_file():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cddfuse"]
    files = [p.relative_to(data.FOLDER.parent).as_posix() for p in data.FOLDER.iterdir() if p.suffix != ".py"
             and p.name != "__pycache__"]
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), (files, patterns)


@pytest.mark.slow
def test_example_equals_the_explicit_pair(tiny_weights, tmp_path):
    """`--example NAME` is the same job as passing the sample's two files (and its task)."""
    common = ["--weights", str(tiny_weights), "--device", "cpu", "-q"]
    for name in ("roadscene", "tno"):
        first, second = data.paths(name)
        assert main(["fuse", "--example", name, "-o", str(tmp_path / f"{name}_ex.png"), *common]) == 0
        assert main(["fuse", str(first), str(second), "-o", str(tmp_path / f"{name}.png"), *common]) == 0
        assert (tmp_path / f"{name}_ex.png").read_bytes() == (tmp_path / f"{name}.png").read_bytes()
    # options still apply
    assert main(["fuse", "--example", "roadscene", "-o", str(tmp_path / "gray.png"), "--color", "gray",
                 "--method", "max", "-q"]) == 0
    assert read_image(tmp_path / "gray.png").shape == (291, 446)


@pytest.mark.slow
def test_example_defaults_to_its_task(tmp_path):
    """mri-pet without --task or --weights: the bundled MIF weights, as --task mif would pick."""
    pet, mri = data.paths("mri-pet")
    assert main(["fuse", "--example", "mri-pet", "-o", str(tmp_path / "ex.png"), "--device", "cpu", "-q"]) == 0
    assert main(["fuse", str(pet), str(mri), "--task", "mif", "-o", str(tmp_path / "mif.png"), "--device", "cpu",
                 "-q"]) == 0
    assert main(["fuse", str(pet), str(mri), "--task", "ivf", "-o", str(tmp_path / "ivf.png"), "--device", "cpu",
                 "-q"]) == 0
    ex, mif, ivf = (read_image(tmp_path / f"{n}.png") for n in ("ex", "mif", "ivf"))
    assert ex.shape == (256, 256, 3)
    np.testing.assert_array_equal(ex, mif)
    assert not np.array_equal(ex, ivf)


def test_example_usage_errors(tmp_path, capsys):
    out = str(tmp_path / "x.png")
    first, second = data.paths("tno")
    for argv in (["--example", "nope", "-o", out], ["--example", "tno", str(first), str(second), "-o", out],
                 ["--example", "tno", str(first), "-o", out], [str(first), "-o", out], ["-o", out]):
        try:
            rc = main(["fuse", *argv])
        except SystemExit as e:  # argparse's own refusal (an unknown name)
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, argv
        assert "--example" in err.strip().splitlines()[-1]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_first_command_needs_nothing_outside_the_package(tmp_path):
    """The README's first command, in a folder of its own, with no shared data folder anywhere."""
    env = dict(os.environ, CDDFUSE_SHARED=str(tmp_path / "no_shared_here"))
    r = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "fuse", "--example", "tno", "-o", "fused.png"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert read_image(tmp_path / "fused.png").shape == (270, 360)
