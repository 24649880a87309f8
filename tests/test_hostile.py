"""Hostile and careless input, as a user would give it, against every entry point.

Each case asserts what the user must see and what must not happen: the exit code, one line on
stderr (``cddfuse <command>: error: ...``), no traceback, no partial or changed file, sources
untouched. The command line runs in-process (an exception escaping ``main`` fails the test, which
is what a traceback would be); cases that need a real process (a FIFO, concurrent runs) spawn one.
"""
from __future__ import annotations

import errno
import hashlib
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cddfuse._fileutil import _HOST
from cddfuse.cli.main import main
from cddfuse.errors import CDDFuseError, UsageError
from cddfuse.fusion import Fuser
from cddfuse.io.image import ImageReadError, probe_image, read_image, write_image

# ----------------------------------------------------------------------------- helpers


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` gray pixels, with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def float_tiff(path: Path, values: np.ndarray) -> Path:
    import cv2

    assert cv2.imwrite(str(path), values.astype(np.float32))
    return path


def snapshot(*roots: Path) -> dict[str, str]:
    """Content hash of every file under ``roots`` (hidden files included)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Cli:
    """Runs ``cddfuse`` in-process and checks the user-visible contract."""

    def __init__(self, capsys: pytest.CaptureFixture) -> None:
        self.capsys = capsys

    def __call__(self, *args: object, rc: int, says: str | None = None) -> str:
        self.capsys.readouterr()
        code = main([str(a) for a in args])
        err = self.capsys.readouterr().err
        assert "Traceback" not in err
        assert code == rc, err
        if rc != 0:
            lines = [line for line in err.splitlines() if line.strip()]
            assert lines, "an error must be reported"
            assert lines[-1].startswith(f"cddfuse {args[0]}: error: ") or lines[-1].startswith("failed pairs:") \
                or " fused, " in lines[-1], lines
            assert "[ WARN" not in err  # OpenCV's own warnings do not leak before ours
        if says is not None:
            assert says in err, err
        return err


@pytest.fixture
def cli(capsys):
    return Cli(capsys)


@pytest.fixture
def pair(tmp_path):
    """Two small 8-bit sources in their own folder, and a snapshot to prove they are never touched."""
    rng = np.random.default_rng(7)
    src = tmp_path / "src"
    ir = write_image(src / "ir.png", rng.random((20, 24)))
    vi = write_image(src / "vi.png", rng.random((20, 24, 3)))
    before = snapshot(src)
    yield ir, vi
    assert {k: v for k, v in snapshot(src).items() if k in before} == before, "a source was changed"


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(8)
    for stem in ("01", "02", "03"):
        write_image(tmp_path / "ir" / f"{stem}.png", rng.random((16, 18)))
        write_image(tmp_path / "vi" / f"{stem}.png", rng.random((16, 18)))
    before = snapshot(tmp_path / "ir", tmp_path / "vi")
    yield tmp_path / "ir", tmp_path / "vi"
    after = snapshot(tmp_path / "ir", tmp_path / "vi")
    assert {k: v for k, v in after.items() if k in before} == before, "a source was changed or removed"


def fuse(*args: object) -> list[object]:
    return ["fuse", *args, "--method", "max"]


# ----------------------------------------------------------------------------- sources are never written

def test_output_is_the_ir_source(cli, pair):
    ir, vi = pair
    cli(*fuse(ir, vi, "-o", ir), rc=2, says="is the IR source")


def test_output_is_the_visible_source(cli, pair):
    ir, vi = pair
    cli(*fuse(ir, vi, "-o", vi), rc=2, says="is the VIS source")


def test_output_is_a_symlink_to_a_source(cli, pair, tmp_path):
    ir, vi = pair
    link = tmp_path / "link.png"
    link.symlink_to(ir)
    cli(*fuse(ir, vi, "-o", link), rc=2, says="is the IR source")
    assert link.is_symlink()


def test_output_is_a_hard_link_to_a_source(cli, pair, tmp_path):
    ir, vi = pair
    hard = tmp_path / "hard.png"
    os.link(vi, hard)
    cli(*fuse(ir, vi, "-o", hard), rc=2, says="is the VIS source")


def test_output_folder_holding_the_source_name(cli, pair):
    ir, vi = pair  # -o the sources' own folder: the output would be src/ir.png, the IR source
    cli(*fuse(ir, vi, "-o", ir.parent), rc=2, says="is the IR source")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_folder_output_is_an_input_folder(cli, folders, overwrite):
    ir, vi = folders
    cli(*fuse(ir, vi, "-o", ir, *overwrite), rc=2, says="is or contains the source folder")
    cli(*fuse(ir, vi, "-o", vi, *overwrite), rc=2, says="is or contains the source folder")


def test_folder_output_contains_an_input_folder(cli, folders):
    ir, vi = folders
    cli(*fuse(ir, vi, "-o", ir.parent), rc=2, says="is or contains the source folder")


def test_folder_output_through_a_symlink_to_an_input(cli, folders, tmp_path):
    ir, vi = folders
    (tmp_path / "alias").symlink_to(vi)
    cli(*fuse(ir, vi, "-o", tmp_path / "alias"), rc=2, says="is or contains the source folder")


# ----------------------------------------------------------------------------- no garbage with exit 0

@pytest.mark.parametrize("bad, says", [
    (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-np.inf, "NaN or infinite"),
    (1.5, "must hold values in [0, 1]"), (-0.25, "must hold values in [0, 1]"),
])
def test_float_tiff_with_bad_values(cli, pair, tmp_path, bad, says):
    _, vi = pair
    values = np.random.default_rng(0).random((20, 24))
    values[3, 4] = bad
    tif = float_tiff(tmp_path / "bad.tif", values)
    cli(*fuse(tif, vi, "-o", tmp_path / "out.png"), rc=1, says=says)
    assert not (tmp_path / "out.png").exists()


def test_float_tiff_rule_is_the_same_for_api_and_cli(tmp_path):
    tif = float_tiff(tmp_path / "big.tif", np.full((6, 6), 2.0))
    with pytest.raises(CDDFuseError, match=r"\[0, 1\]"):
        Fuser(method="max").fuse(tif, tif)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        Fuser(method="max").fuse(np.full((6, 6), 2.0), np.zeros((6, 6)))
    good = float_tiff(tmp_path / "good.tif", np.full((6, 6), 0.5))
    assert Fuser(method="max", normalize="none").fuse(good, good).max() == pytest.approx(0.5)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_with_non_finite_tensors(cli, pair, tmp_path, tiny_weights, value):
    from cddfuse.models.weights import load_weights, save_weights

    model, info = load_weights(tiny_weights)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = value
    bad = save_weights(model, tmp_path / "bad.safetensors", task="ivf", residual="vis")
    ir, vi = pair
    cli("fuse", ir, vi, "-o", tmp_path / "out.png", "--weights", bad, rc=1, says="NaN or infinite values")
    assert not (tmp_path / "out.png").exists()


def test_non_finite_network_output_is_an_error_not_an_image(pair, tmp_path, tiny_weights, monkeypatch):
    fuser = Fuser(weights=tiny_weights, device="cpu")
    monkeypatch.setattr(fuser, "fuse_luminance", lambda a, b: np.full(a.shape, np.nan, np.float32))
    with pytest.raises(CDDFuseError, match="NaN or infinite"):
        fuser.fuse(*pair)


def test_non_finite_image_is_never_written(tmp_path):
    img = np.zeros((4, 4), np.float32)
    img[1, 1] = np.nan
    with pytest.raises(CDDFuseError, match="not written"):
        write_image(tmp_path / "x.png", img)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- write errors

@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else False,
                    reason="root ignores file permissions")
def test_read_only_output_folder_pair_mode(cli, pair, tmp_path):  # pragma: no cover - runs as non-root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    cli(*fuse(*pair, "-o", ro / "out.png"), rc=1, says="cannot write")


def test_output_parent_is_a_file(cli, pair, tmp_path):
    (tmp_path / "file").write_text("x")
    cli(*fuse(*pair, "-o", tmp_path / "file" / "out.png"), rc=1, says="cannot write")


def test_unwritable_output_checked_before_fusing(cli, pair, tmp_path, monkeypatch):
    import cddfuse.fusion.fuser as F

    def refuse(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("cddfuse._fileutil.tempfile.TemporaryFile", refuse)
    monkeypatch.setattr(F.Fuser, "fuse", lambda *a, **k: pytest.fail("fused although the output cannot be written"))
    cli(*fuse(*pair, "-o", tmp_path / "out.png"), rc=1, says="Permission denied")


def test_full_disk_in_pair_mode_leaves_nothing(cli, pair, tmp_path, monkeypatch):
    def full(fd: int) -> None:  # the data did not fit: the disk reports it when it is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cddfuse._fileutil.os.fsync", full)
    cli(*fuse(*pair, "-o", tmp_path / "out.png"), rc=1, says="No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no output, no temporary file


def test_full_disk_in_folder_mode_stops_with_the_summary(cli, folders, tmp_path, monkeypatch):
    import cddfuse.io.image as I

    calls = []

    def full(path, data):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(I, "atomic_write_bytes", full)
    err = cli(*fuse(*folders, "-o", tmp_path / "out", "--batch-size", "1"), rc=1,
              says="stopped early: cannot write")
    assert "0 fused" in err and "No space left on device" in err
    assert len(calls) < 3  # it stopped instead of failing every pair in turn
    assert not [p for p in (tmp_path / "out").iterdir()]


def test_one_unwritable_name_fails_that_pair_only(cli, folders, tmp_path):
    out = tmp_path / "out"
    (out / "02.png").mkdir(parents=True)  # a folder where the output file should go
    err = cli(*fuse(*folders, "-o", out, "--overwrite"), rc=1, says="2 fused")
    assert "02" in err.splitlines()[-1]
    assert (out / "01.png").is_file() and (out / "03.png").is_file()


# ----------------------------------------------------------------------------- decompression bombs and odd files

def test_bomb_header_is_refused_before_decoding(cli, pair, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))
    cli(*fuse(bomb, pair[1], "-o", tmp_path / "o.png"), rc=1, says="100000x100000 pixels is more than the limit")
    cli(*fuse(pair[0], bomb, "-o", tmp_path / "o.png"), rc=1, says="--max-pixels")


def test_pair_sizes_are_compared_from_the_headers(cli, pair, tmp_path, monkeypatch):
    import cddfuse.io.image as I

    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(30_000, 30_000))
    monkeypatch.setattr(I.cv2, "imdecode", lambda *a: pytest.fail("decoded before comparing sizes"))
    cli(*fuse(pair[0], big, "-o", tmp_path / "o.png", "--max-pixels", 10**10), rc=1,
        says="differ in size (24x20 vs 30000x30000)")


def test_max_pixels_can_be_lowered_and_raised(cli, pair, tmp_path):
    cli(*fuse(*pair, "-o", tmp_path / "o.png", "--max-pixels", 100), rc=1, says="24x20 pixels is more than the limit")
    cli(*fuse(*pair, "-o", tmp_path / "o.png", "--max-pixels", 480), rc=0)


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_max_pixels_must_be_a_positive_number(cli, pair, tmp_path, value):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in fuse(*pair, "-o", tmp_path / "o.png", "--max-pixels", value)])
    assert e.value.code == 2


@pytest.mark.slow
def test_fifo_is_refused_not_waited_on(tmp_path, pair):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "fuse", str(fifo), str(pair[1]), "-o",
                           str(tmp_path / "o.png"), "--method", "max"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "not a regular file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content, says", [
    (b"", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
    (bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)), "not a readable image"),
    (b"hello, I am text", "not a readable image"),
])
def test_files_that_are_not_images(cli, pair, tmp_path, content, says):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    cli(*fuse(bad, pair[1], "-o", tmp_path / "o.png"), rc=1, says=says)


def test_truncated_png(cli, pair, tmp_path):
    data = Path(pair[1]).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    cli(*fuse(pair[0], cut, "-o", tmp_path / "o.png"), rc=1, says="not a readable image")


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_missing_or_folder_source(cli, pair, tmp_path, what):
    target = tmp_path / "nothing.png"
    if what == "folder":
        target.mkdir()
        cli(*fuse(target, pair[1], "-o", tmp_path / "o.png"), rc=2, says="both be files or both be folders")
    else:
        cli(*fuse(target, pair[1], "-o", tmp_path / "o.png"), rc=1, says="no such file")


def test_exif_rotation_of_a_png_counts_too(tmp_path):
    """OpenCV applies the orientation of PNG (eXIf) as of JPEG: the header sizes must say the same."""
    from PIL import Image

    rng = np.random.default_rng(3)
    a = write_image(tmp_path / "a.png", rng.random((4, 8)))  # 8 wide, 4 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray((rng.random((8, 4)) * 255).astype(np.uint8)).save(tmp_path / "b.png", exif=exif)  # 4x8, shown 8x4
    assert probe_image(tmp_path / "b.png").size == "8x4" == probe_image(a).size
    assert read_image(tmp_path / "b.png").shape == (4, 8)
    assert Fuser(method="max").fuse(a, tmp_path / "b.png").shape == (4, 8)


def test_float_rgb_and_float64_tiffs_are_read(tmp_path):
    """TIFFs whose headers Pillow does not parse are decoded by OpenCV and checked after decoding."""
    rgb = float_tiff(tmp_path / "rgb.tif", np.random.default_rng(4).random((5, 6, 3)))
    assert read_image(rgb).shape == (5, 6, 3)
    import cv2

    assert cv2.imwrite(str(tmp_path / "f64.tif"), np.full((5, 6), 0.25))
    assert read_image(tmp_path / "f64.tif").max() == pytest.approx(0.25)
    with pytest.raises(ImageReadError, match="more than the limit"):
        read_image(rgb, max_pixels=10)


def test_a_source_linked_into_the_output_folder_is_not_overwritten(cli, folders, tmp_path):
    ir, vi = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "02.png").symlink_to(ir / "02.png")  # the output name of pair 02 is its infrared source
    err = cli(*fuse(ir, vi, "-o", out, "--overwrite"), rc=1, says="is one of its sources")
    assert "2 fused" in err and (out / "02.png").is_symlink()


def test_bench_out_dir_is_a_source_folder(cli, tmp_path):
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    write_image(tmp_path / "set" / "vi" / "01.png", np.zeros((8, 8)))
    before = snapshot(tmp_path / "set")
    cli("bench", tmp_path / "set", "--method", "max", "--out-dir", tmp_path / "set" / "ir", rc=2,
        says="is or contains a source folder")
    assert snapshot(tmp_path / "set") == before


def test_exif_rotation_is_applied_by_fuse_and_eval_alike(cli, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for folder in ("ir", "vi"):
        (tmp_path / folder).mkdir()
        exif = Image.Exif()
        exif[0x0112] = 6  # shown rotated by 90 degrees
        Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / folder / "01.jpg", exif=exif)
    assert probe_image(tmp_path / "ir" / "01.jpg").size == "20x30"
    assert read_image(tmp_path / "ir" / "01.jpg").shape[:2] == (30, 20)
    cli(*fuse(tmp_path / "ir", tmp_path / "vi", "-o", tmp_path / "out"), rc=0)
    assert read_image(tmp_path / "out" / "01.png").shape[:2] == (30, 20)
    cli("eval", tmp_path / "ir", tmp_path / "vi", tmp_path / "out", "--metrics", "EN,SD", rc=0)


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("args, says", [
    (["--device", "tpu9"], "--device tpu9: not a device"),
    (["--device", "meta"], "--device meta: unsupported device type"),
    (["--max-memory", "1K"], "--max-memory 1K: cannot be met"),
    (["--max-memory", "lots"], "--max-memory lots"),
    (["--tile", "1"], "--tile 1: must be a number of pixels, at least 4"),
    (["--precision", "tf32"], "--precision tf32: needs a CUDA GPU"),
])
def test_bad_option_values(cli, pair, tmp_path, tiny_weights, args, says):
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "cpu", *args, rc=2, says=says)
    assert not (tmp_path / "o.png").exists()


def test_cuda_without_a_gpu(cli, pair, tmp_path, tiny_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "cuda", rc=2,
        says="--device cuda: no CUDA GPU is available")


def test_bf16_on_a_cpu_without_bf16_units(cli, pair, tmp_path, tiny_weights, monkeypatch):
    monkeypatch.setenv("CDDFUSE_CPU_FLAGS", "fpu sse2 avx2 fma avx512f")  # an AVX-512 CPU without BF16 or AMX
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "cpu", "--precision", "bf16",
        rc=2, says="needs AMX or AVX512-BF16")


def test_small_tile_works_with_one_warning_line(cli, pair, tmp_path, tiny_weights):
    err = cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--device", "cpu", "--tile", "8",
              rc=0)
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == ["cddfuse fuse: warning: --tile 8 is very small: every tile recomputes a border around itself, "
                        "so small tiles multiply the work (128 is fastest on CPU)"]


@pytest.mark.parametrize("args, says", [
    (["-o", "{tmp}/o.gif"], "cannot write .gif"),
    (["-o", "{tmp}/o.jpg", "--bit-depth", "16"], "cannot hold 16-bit"),
    (["-o", "{tmp}/o"], "cannot write files without extension"),
])
def test_bad_output_names(cli, pair, tmp_path, args, says):
    cli(*fuse(*pair, *[a.format(tmp=tmp_path) for a in args]), rc=2, says=says)


def test_bad_extension_in_folder_mode_names_the_option(cli, folders, tmp_path):
    err = cli(*fuse(*folders, "-o", tmp_path / "out", "--ext", ".xyz"), rc=2, says="extension .xyz: cannot write .xyz")
    assert "x.xyz" not in err


def test_messages_speak_flags_not_python(cli, tmp_path):
    a = write_image(tmp_path / "a.png", np.zeros((5, 6)))
    b = write_image(tmp_path / "b.png", np.zeros((6, 5)))
    err = cli(*fuse(a, b, "-o", tmp_path / "o.png"), rc=1, says="--resize")
    assert "resize=True" not in err


# ----------------------------------------------------------------------------- weights files

@pytest.mark.parametrize("content", [
    b"", b"\x00" * 100, bytes(range(256)) * 10, png_header_only(10, 10), b"<html>not found</html>",
])
def test_weights_that_are_not_checkpoints(cli, pair, tmp_path, content):
    bad = tmp_path / "w.pth"
    bad.write_bytes(content)
    err = cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, rc=1)
    assert "not a PyTorch checkpoint or safetensors file" in err or "cannot read as" in err
    assert "weights_only=False" not in err and "more than tensors" not in err


def test_weights_holding_code_run_nothing(cli, pair, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    torch.save({"DIDF_Encoder": Evil()}, bad)
    err = cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", bad, rc=1, says="refused to load")
    assert not marker.exists() and "weights_only=False" not in err


@pytest.mark.parametrize("make", ["folder", "missing", "truncated"])
def test_weights_path_problems(cli, pair, tmp_path, tiny_weights, make):
    target = tmp_path / "w.safetensors"
    if make == "folder":
        target.mkdir()
    elif make == "truncated":
        target.write_bytes(Path(tiny_weights).read_bytes()[:500])
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", target, rc=1)


def test_weights_with_a_rule(cli, pair, tmp_path, tiny_weights):
    cli("fuse", *pair, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--method", "max", rc=2,
        says="only used with --method cddfuse")


# ----------------------------------------------------------------------------- temporary files

def test_stale_temporary_beside_a_pair_output_is_removed(cli, pair, tmp_path):
    out = tmp_path / "o.png"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".o.png.h{_HOST}p{int(dead.stdout)}.abc123.cddfuse-tmp"  # a writer killed at the rename
    stale.write_bytes(b"half")
    cli(*fuse(*pair, "-o", out), rc=0)
    assert not stale.exists() and out.exists()


def test_temporary_of_a_live_writer_is_kept(folders, tmp_path):
    from cddfuse._fileutil import remove_stale_temporaries

    out = tmp_path / "out"
    out.mkdir()
    live = out / f".01.png.h{_HOST}p{os.getppid()}.fed789.cddfuse-tmp"  # our parent process is alive
    live.write_bytes(b"being written")
    assert remove_stale_temporaries(out) == 0 and live.exists()


def test_temporaries_of_other_machines_are_removed_only_when_old(tmp_path):
    """On a shared file system a process id says nothing about another machine's writers: age decides."""
    from cddfuse._fileutil import STALE_AFTER_S, remove_stale_temporaries

    other = tmp_path / ".01.png.h00000000p1.abcdef.cddfuse-tmp"        # another host's writer
    untagged = tmp_path / ".02.png.tmpx8k2.cddfuse-tmp"               # an older version's name
    huge = tmp_path / f".03.png.h{_HOST}p{10**30}.abcdef.cddfuse-tmp"  # not a process id at all
    for f in (other, untagged, huge):
        f.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1 and other.exists() and untagged.exists() and not huge.exists()
    old = os.stat(other).st_mtime - STALE_AFTER_S - 60
    for f in (other, untagged):
        os.utime(f, (old, old))
    assert remove_stale_temporaries(tmp_path) == 2 and not other.exists() and not untagged.exists()


# ----------------------------------------------------------------------------- the Python API

@pytest.mark.parametrize("array, says", [
    (np.zeros((0, 0), np.uint8), "empty image"),
    (np.zeros((0, 5), np.float32), "empty image"),
    (np.full((4, 4), np.nan, np.float32), "NaN or infinite"),
    (np.zeros((4, 4, 2), np.uint8), "expected an (H, W)"),
    (np.zeros((4, 4), np.int64), "unsupported dtype"),
    (np.zeros((2, 4, 4, 3), np.uint8), "expected an (H, W)"),
    ("not/a/file.png", "no such file"),
    (12345, "expected a file path"),
])
def test_api_rejects_bad_arrays_with_one_clear_error(array, says):
    with pytest.raises(CDDFuseError) as e:
        Fuser(method="mean").fuse(array, np.zeros((4, 4), np.uint8))
    assert says in str(e.value)


@pytest.mark.parametrize("kwargs, parameter", [
    (dict(device="tpu9"), "device"), (dict(tile=True), "tile"), (dict(tile=2), "tile"),
    (dict(max_pixels=0), "max_pixels"), (dict(max_memory="1K"), "max_memory"), (dict(normalize="zscore"), "normalize"),
])
def test_api_option_errors_are_value_errors_naming_the_parameter(tiny_weights, kwargs, parameter):
    with pytest.raises(ValueError) as e:
        Fuser(weights=tiny_weights, **kwargs)
    assert isinstance(e.value, UsageError) and e.value.parameter == parameter


def test_api_reads_no_file_larger_than_its_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50_000, 50_000))
    with pytest.raises(ImageReadError, match="more than the limit"):
        Fuser(method="max").fuse(bomb, bomb)


# ----------------------------------------------------------------------------- folder mode

def test_folder_with_a_bad_file_among_good_ones(cli, folders, tmp_path):
    ir, vi = folders
    float_tiff(ir / "04.tif", np.full((16, 18), np.nan))
    write_image(vi / "04.png", np.zeros((16, 18)))
    (ir / "05.png").write_bytes(png_header_only(90_000, 90_000))
    write_image(vi / "05.png", np.zeros((16, 18)))
    err = cli(*fuse(ir, vi, "-o", tmp_path / "out"), rc=1, says="3 fused, 0 already done (skipped), 2 failed")
    assert "failed pairs: 04, 05" in err


def test_folder_with_two_files_of_one_stem(cli, folders, tmp_path):
    ir, vi = folders
    write_image(ir / "01.jpg", np.zeros((16, 18)))
    cli(*fuse(ir, vi, "-o", tmp_path / "out"), rc=2, says="two files with stem '01'")


def test_folders_without_common_names(cli, folders, tmp_path):
    ir, _ = folders
    other = tmp_path / "other"
    write_image(other / "zz.png", np.zeros((4, 4)))
    cli(*fuse(ir, other, "-o", tmp_path / "out"), rc=1, says="no pairs")
    assert not (tmp_path / "out").exists()


def test_folder_output_is_a_file(cli, folders, tmp_path):
    (tmp_path / "out").write_text("x")
    cli(*fuse(*folders, "-o", tmp_path / "out"), rc=2, says="is a file")


@pytest.mark.slow
def test_folder_with_a_fifo_does_not_block(folders, tmp_path):
    ir, vi = folders
    os.mkfifo(ir / "04.png")
    write_image(vi / "04.png", np.zeros((16, 18)))
    proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", *map(str, fuse(ir, vi, "-o", tmp_path / "out"))],
                          capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr and "3 fused" in proc.stderr
    os.unlink(ir / "04.png")


@pytest.mark.slow
def test_two_folder_runs_into_one_output_folder(folders, tmp_path, tiny_weights):
    """Two runs at once, same output folder: every output complete and equal to a single run's."""
    ir, vi = folders
    for i in range(4, 12):
        write_image(ir / f"{i:02d}.png", np.random.default_rng(i).random((40, 44)))
        write_image(vi / f"{i:02d}.png", np.random.default_rng(100 + i).random((40, 44)))
    args = [sys.executable, "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "--weights", str(tiny_weights),
            "--device", "cpu", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(args + ["-o", str(tmp_path / "shared")], stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert subprocess.run(args + ["-o", str(tmp_path / "alone")], env=env).returncode == 0
    shared = sorted(p.name for p in (tmp_path / "shared").iterdir())
    assert shared == sorted(p.name for p in (tmp_path / "alone").iterdir()) and len(shared) == 11
    for name in shared:
        assert (tmp_path / "shared" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


# ----------------------------------------------------------------------------- eval and bench

def test_eval_with_a_bomb_among_the_fused_images(cli, folders, tmp_path):
    ir, vi = folders
    cli(*fuse(ir, vi, "-o", tmp_path / "out"), rc=0)
    (tmp_path / "out" / "02.png").write_bytes(png_header_only(60_000, 60_000))
    cli("eval", ir, vi, tmp_path / "out", "--metrics", "EN", rc=1, says="more than the limit")


def test_eval_with_a_fifo_as_fused_image(folders, tmp_path):
    ir, vi = folders
    out = tmp_path / "out"
    out.mkdir()
    for stem in ("01", "02"):
        write_image(out / f"{stem}.png", np.zeros((16, 18)))
    os.mkfifo(out / "03.png")
    proc = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "eval", str(ir), str(vi), str(out),
                           "--metrics", "EN"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, rc, says", [
    (["--metrics", "BOGUS"], 2, "BOGUS"),
    (["--workers", "0"], 2, None),
])
def test_eval_bad_options(cli, folders, tmp_path, args, rc, says):
    ir, vi = folders
    cli(*fuse(ir, vi, "-o", tmp_path / "out"), rc=0)
    cli("eval", ir, vi, tmp_path / "out", "--metrics", "EN", *args, rc=rc, says=says)


def test_eval_missing_fused_folder(cli, folders, tmp_path):
    cli("eval", *folders, tmp_path / "nowhere", rc=1, says="does not exist")


def test_bench_on_a_folder_that_is_not_a_test_set(cli, folders):
    cli("bench", folders[0], "--method", "max", rc=1, says="not a test set this command knows")


def test_bench_bad_limit(cli, tmp_path):
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    write_image(tmp_path / "set" / "vi" / "01.png", np.zeros((8, 8)))
    cli("bench", tmp_path / "set", "--method", "max", "--limit", "0", rc=2, says="--limit 0: must be at least 1")


def test_bench_with_random_bytes_as_weights(cli, tmp_path):
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    write_image(tmp_path / "set" / "vi" / "01.png", np.zeros((8, 8)))
    (tmp_path / "w.pth").write_bytes(b"\x01\x02" * 64)
    cli("bench", tmp_path / "set", "--weights", tmp_path / "w.pth", rc=1, says="not a PyTorch checkpoint")


def test_bench_with_a_bomb_in_the_set(cli, tmp_path):
    write_image(tmp_path / "set" / "ir" / "01.png", np.zeros((8, 8)))
    (tmp_path / "set" / "vi").mkdir()
    (tmp_path / "set" / "vi" / "01.png").write_bytes(png_header_only(70_000, 70_000))
    cli("bench", tmp_path / "set", "--method", "max", rc=1, says="more than the limit")


# ----------------------------------------------------------------------------- prepare and train

def test_prepare_into_a_file_that_is_a_folder(cli, folders, tmp_path):
    (tmp_path / "cache.h5").mkdir()
    cli("prepare", *folders, "-o", tmp_path / "cache.h5", "--patch-size", "8", "-q", rc=2, says="--overwrite")
    cli("prepare", *folders, "-o", tmp_path / "cache.h5", "--patch-size", "8", "-q", "--overwrite", rc=1)
    assert (tmp_path / "cache.h5").is_dir()


def test_train_on_a_corrupt_cache(cli, tmp_path):
    bad = tmp_path / "data.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 200)
    cli("train", "--config", "configs/small_cpu.yaml", "--data", bad, "--run-dir", tmp_path / "run", "--no-progress",
        "--no-tensorboard", rc=1)


def test_train_resume_of_a_folder_that_is_no_run(cli, tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("my holiday photos")
    cli("train", "--resume", tmp_path / "foreign", rc=2, says="no training checkpoint here")
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["notes.txt"]


def test_train_unknown_config_key(cli, tmp_path):
    cli("train", "--config", "configs/small_cpu.yaml", "--set", "optim.lrr=1", "--print-config", rc=2,
        says="did you mean optim.lr")


# ----------------------------------------------------------------------------- bounded memory by default

@pytest.mark.parametrize("size", [(480, 640), (2048, 2048), (4096, 4096)])
def test_default_memory_is_bounded_on_cpu(monkeypatch, size):
    """Without --max-memory the CPU engine plans within 3 GiB (or 80% of what is free): a 2048x2048 pair took
    10.6 GB before. The plan is checked against the engine's own memory model, without running the network."""
    import cddfuse.engine.engine as E
    from cddfuse.engine import DEFAULT_BUDGET, estimate_memory
    from cddfuse.models import CDDFuse, CDDFuseConfig

    seen = {}

    def plan_only(model, a, b, residual, *, tile, store, dtype, ops, memory_budget, workers=None):
        seen.update(tile=tile, store=store, budget=memory_budget)
        return torch.zeros_like(a)

    monkeypatch.setattr(E, "tiled_fuse", plan_only)
    model = CDDFuse(CDDFuseConfig())
    h, w = size
    a = torch.zeros(1, 1, h, w)
    E.fuse_tensors(model, a, a, device="cpu")
    assert seen["budget"] is not None and seen["budget"] <= DEFAULT_BUDGET
    assert estimate_memory(h, w, seen["tile"], CDDFuseConfig(), 1, 4, seen["store"] == "disk") <= seen["budget"]
    if size == (480, 640):
        assert seen["store"] == "memory"  # small images are not slowed down by the bound


# ----------------------------------------------------------------------------- training checkpoints

TRAIN_CONFIG = {
    "task": "ivf", "seed": 0, "device": "cpu",
    "model": {"dim": 8, "num_heads": 2, "encoder_blocks": 1, "decoder_blocks": 1, "encoder_inn_layers": 1},
    "data": {"mode": "random_crop", "crop_size": 16, "workers": 0},
    "train": {"batch_size": 2, "threads": 1},
    "phase1": {"epochs": 1}, "phase2": {"epochs": 1},
    "checkpoint": {"every_steps": 1},
    "log": {"progress": False, "tensorboard": False},
}


@pytest.fixture
def tiny_run(tmp_path, folders):
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN_CONFIG))
    return ["train", "--config", cfg, "--a", folders[0], "--b", folders[1], "--run-dir", tmp_path / "run"]


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(cli, tiny_run, tmp_path, monkeypatch):
    import cddfuse.train.checkpoint as C

    real, calls = C.atomic_write_bytes, []

    def fill_up(dest, data):
        calls.append(dest)
        if len(calls) > 2:  # last.pt + state.json of the first checkpoint went through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(dest, data)

    monkeypatch.setattr(C, "atomic_write_bytes", fill_up)
    cli(*tiny_run, rc=1, says="No space left on device; the previous checkpoint is kept")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert C.load_checkpoint(last)["global_step"] == 1  # whole and readable
    assert not list(last.parent.glob(".*cddfuse-tmp"))


@pytest.mark.slow
def test_truncated_checkpoint_is_refused_on_resume(cli, tiny_run, tmp_path):
    cli(*tiny_run, rc=0)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    cli("train", "--resume", tmp_path / "run", rc=1, says="not a readable training checkpoint")


def test_bf16_on_a_cpu_with_bf16_units_runs_close_to_fp32(pair, tiny_weights):
    from cddfuse.fusion.fuser import cpu_bf16_feature

    if cpu_bf16_feature() is None:
        pytest.skip("this CPU has neither AMX nor AVX512-BF16")
    fp32 = Fuser(weights=tiny_weights, device="cpu").fuse(*pair)
    bf16 = Fuser(weights=tiny_weights, device="cpu", precision="bf16").fuse(*pair)
    assert bf16.shape == fp32.shape and np.all(np.isfinite(bf16))
    assert np.abs(bf16 - fp32).mean() < 0.02


def test_a_resumed_run_removes_the_temporaries_of_the_killed_one(cli, tiny_run, tmp_path):
    cli(*tiny_run, rc=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "run" / "checkpoints" / f".last.pt.h{_HOST}p{int(dead.stdout)}.0a1b2c3d.cddfuse-tmp"
    stale.write_bytes(b"half a checkpoint")
    cli("train", "--resume", tmp_path / "run", rc=0)
    assert not stale.exists()


def test_written_files_follow_the_umask(tmp_path, tiny_weights):
    """Outputs get the permissions a plain open() would give, whatever mode the writer used (safetensors: 0600)."""
    from cddfuse._fileutil import _umask
    from cddfuse.models.weights import load_weights, save_weights

    model, _ = load_weights(tiny_weights)
    expected = 0o666 & ~_umask()
    paths = [save_weights(model, tmp_path / "w.safetensors", task="ivf", residual="vis"),
             write_image(tmp_path / "x.png", np.zeros((4, 4)))]
    assert [oct(os.stat(p).st_mode & 0o777) for p in paths] == [oct(expected)] * 2
