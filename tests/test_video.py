"""Video fusion: ``cddfuse fuse IR.mp4 VIS.mp4 -o fused.mp4`` and frame folders, on short clips made from real
test pairs (a crop window moving over a TNO / RoadScene pair gives real motion)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from cddfuse.cli.main import main
from cddfuse.fusion import Fuser
from cddfuse.fusion.video import TemporalNormalizer, flicker, fuse_sequences
from cddfuse.io.image import read_image

av = pytest.importorskip("av")

from cddfuse.io.video import VideoWriter, open_video_source  # noqa: E402


def _clip(image: Path, frames: int, size: tuple[int, int], step: int = 6, flags: int = cv2.IMREAD_GRAYSCALE
          ) -> list[np.ndarray]:
    """``frames`` crops of ``size`` (h, w), the window moving right and down by ``step`` pixels a frame."""
    img = cv2.imread(str(image), flags)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = size
    return [np.ascontiguousarray(img[40 + i * step // 2: 40 + i * step // 2 + h, 30 + i * step: 30 + i * step + w])
            for i in range(frames)]


def _encode(frames: list[np.ndarray], path: Path, fps: Fraction = Fraction(25)) -> Path:
    with VideoWriter(path, fps) as out:
        for f in frames:
            out.write(f)
    return path


def _decode(path: Path, gray: bool) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="gray" if gray else "rgb24") for f in c.decode(video=0)]


@pytest.fixture
def tno_clip(test_data, tmp_path) -> tuple[Path, Path]:
    """6 gray frames of 48x64 from TNO 01, as H.264 files."""
    ir = _clip(test_data / "TNO" / "ir" / "01.png", 6, (48, 64))
    vi = _clip(test_data / "TNO" / "vi" / "01.png", 6, (48, 64))
    return _encode(ir, tmp_path / "ir.mp4"), _encode(vi, tmp_path / "vi.mp4")


def test_video_to_frames_is_the_image_pipeline_frame_by_frame(tno_clip, tiny_weights, tmp_path, capsys):
    ir, vi = tno_clip
    out = tmp_path / "frames"
    assert main(["fuse", str(ir), str(vi), "-o", str(out), "--temporal", "frame", "--weights", str(tiny_weights)]) == 0
    assert "wrote " + str(out) + ": 6 frames, .png frames, normalisation frame" in capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i:06d}.png" for i in range(6)]
    fuser = Fuser(weights=tiny_weights, device="cpu")
    for name, a, b in zip(names, _decode(ir, gray=True), _decode(vi, gray=True)):
        np.testing.assert_allclose(read_image(out / name), fuser.fuse(a, b), atol=0.5 / 255 + 1e-6)


def test_colour_frames_to_h264_keeps_rate_size_and_colour(test_data, tiny_weights, tmp_path, capsys):
    rs = test_data / "RoadScene"
    size = (47, 63)  # odd sides: yuv420p needs even ones, the last row and column are repeated
    for side, flags in (("ir", cv2.IMREAD_GRAYSCALE), ("vi", cv2.IMREAD_COLOR)):
        (tmp_path / side).mkdir()
        for i, frame in enumerate(_clip(rs / side / "FLIR_00977.jpg", 5, size, flags=flags)):
            cv2.imwrite(str(tmp_path / side / f"{i}.png"), frame if frame.ndim == 2 else frame[..., ::-1])
    common = [str(tmp_path / "ir"), str(tmp_path / "vi"), "--weights", str(tiny_weights), "-q"]
    assert main(["fuse", *common, "-o", str(tmp_path / "fused.mp4"), "--fps", "25/2"]) == 0
    assert main(["fuse", *common, "-o", str(tmp_path / "frames"), "--temporal", "ema"]) == 0  # the same, lossless
    with av.open(str(tmp_path / "fused.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.profile == "High"
        assert stream.average_rate == Fraction(25, 2) and (stream.width, stream.height) == (64, 48)
        assert stream.codec_context.pix_fmt == "yuv420p"
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames = [read_image(tmp_path / "frames" / f"{i}.png") for i in range(5)]
    assert len(decoded) == 5 and frames[0].shape == (47, 63, 3)
    for got, want in zip(decoded, frames):
        assert np.abs(got[47].astype(int) - got[46]).mean() < 4  # the repeated last row (after lossy coding)
        mse = np.mean((got[:47, :63] / 255.0 - want) ** 2)
        assert 10 * np.log10(1 / mse) > 30  # H.264 at CRF 18 with 4:2:0 chroma, on a 63x47 frame
        assert np.abs(want[..., 0] - want[..., 2]).mean() > 0.01  # colour output, not gray
    assert not list(tmp_path.glob(".*cddfuse-tmp"))
    mkv = _encode([f[..., :3] for f in decoded], tmp_path / "again.mkv", Fraction(25, 2))
    with open_video_source(mkv) as source:  # read back: colour, its rate; Matroska stores no frame count
        assert source.is_color and source.fps == Fraction(25, 2) and source.frames is None
        assert len(list(source)) == 5


def test_temporal_normalizer_known_answer():
    norm = TemporalNormalizer(smoothing=2)
    first = norm(np.array([0.2, 0.5, 0.8], np.float32))
    np.testing.assert_allclose(first, [0.0, 0.5, 1.0], atol=1e-6)  # first frame: its own range
    second = norm(np.array([0.4, 0.6, 1.0], np.float32))  # range -> (0.2 + (0.4-0.2)/2, 0.8 + (1.0-0.8)/2)
    assert norm.range == pytest.approx((0.3, 0.9))
    np.testing.assert_allclose(second, [1 / 6, 0.5, 1.0], atol=1e-6)  # 1.0 is above the range: clipped
    per_frame = TemporalNormalizer(smoothing=1)
    per_frame(np.array([0.0, 1.0]))
    np.testing.assert_allclose(per_frame(np.array([0.4, 0.5, 0.6])), [0.0, 0.5, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="at least 1"):
        TemporalNormalizer(0.5)


def test_smoothed_range_removes_flicker_on_a_static_camera(test_data):
    """A static TNO view in which a hot object appears every other frame: per-frame min-max makes the whole
    frame jump in brightness; the smoothed range keeps it nearly steady."""
    ir = cv2.imread(str(test_data / "TNO" / "ir" / "01.png"), cv2.IMREAD_GRAYSCALE)[40:88, 30:94]
    vi = cv2.imread(str(test_data / "TNO" / "vi" / "01.png"), cv2.IMREAD_GRAYSCALE)[40:88, 30:94]
    vi = (vi * 0.6).astype(np.uint8)
    rng = np.random.default_rng(0)
    frames_a = []
    for t in range(12):
        frame = np.clip(ir.astype(np.float64) * 0.7 + rng.normal(0, 2, ir.shape), 0, 255)
        if t % 2:
            frame[10:16, 20 + t:26 + t] = 255  # the hot object, 6x6 pixels
        frames_a.append(frame.astype(np.uint8))
    out = {}
    for mode in ("frame", "ema"):
        fused: list[np.ndarray] = []
        fuse_sequences(Fuser(method="max"), iter(frames_a), iter([vi] * 12), fused.append, normalize=mode)
        out[mode] = flicker(fused)
    assert out["frame"] > 0.02 and out["ema"] < out["frame"] / 3


def test_frame_counts_and_rates_must_match_unless_sync_shortest(test_data, tmp_path, capsys):
    ir = _encode(_clip(test_data / "TNO" / "ir" / "01.png", 5, (32, 32)), tmp_path / "ir.mp4")
    vi = _encode(_clip(test_data / "TNO" / "vi" / "01.png", 3, (32, 32)), tmp_path / "vi.mp4")
    out = tmp_path / "fused.mp4"
    assert main(["fuse", str(ir), str(vi), "-o", str(out), "--method", "max"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cddfuse fuse: error: the sources have different frame counts (IR 5, VIS 3); --sync shortest "
                   "pairs them frame by frame and stops at the shorter one"]
    assert not out.exists() and not list(tmp_path.glob(".*cddfuse-tmp"))
    assert main(["fuse", str(ir), str(vi), "-o", str(out), "--method", "max", "--sync", "shortest"]) == 0
    assert "3 frames (trimmed to the shorter source)" in capsys.readouterr().err
    assert len(_decode(out, gray=True)) == 3
    slow = _encode(_clip(test_data / "TNO" / "vi" / "01.png", 5, (32, 32)), tmp_path / "vi30.mp4", Fraction(30))
    assert main(["fuse", str(ir), str(slow), "-o", str(tmp_path / "x.mp4"), "--method", "max"]) == 1
    assert "different frame rates (IR 25, VIS 30 frames/s)" in capsys.readouterr().err


def test_interrupted_video_leaves_nothing_and_a_rerun_completes(tno_clip, tmp_path, capsys, monkeypatch):
    ir, vi = tno_clip
    out = tmp_path / "fused.mp4"
    calls = []
    real = Fuser.fuse_luminance

    def interrupted(self, ya, yb):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C or `kill` (SIGTERM) does in the middle of the video
        return real(self, ya, yb)

    monkeypatch.setattr(Fuser, "fuse_luminance", interrupted)
    assert main(["fuse", str(ir), str(vi), "-o", str(out), "--method", "max"]) == 130
    assert capsys.readouterr().err.strip() == "cddfuse fuse: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir.mp4", "vi.mp4"]  # no partial video, no temporary
    monkeypatch.setattr(Fuser, "fuse_luminance", real)
    assert main(["fuse", str(ir), str(vi), "-o", str(out), "--method", "max", "-q"]) == 0
    assert len(_decode(out, gray=True)) == 6


def test_numbered_frame_folders_to_video_in_natural_order(tmp_path, capsys):
    for side in ("ir", "vi"):
        (tmp_path / side).mkdir()
        for i in (1, 2, 10):  # natural order 1, 2, 10 (not 1, 10, 2): brightness rises with the number
            cv2.imwrite(str(tmp_path / side / f"frame_{i}.png"), np.full((16, 16), 20 * i, np.uint8))
    out = tmp_path / "fused.webm"
    assert main(["fuse", str(tmp_path / "ir"), str(tmp_path / "vi"), "-o", str(out), "--method", "mean",
                 "--normalize", "none", "--fps", "30000/1001"]) == 0
    assert "3 frames, VP9 at 29.970 frames/s" in capsys.readouterr().err
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
        means = [float(f.to_ndarray(format="gray").mean()) for f in c.decode(video=0)]
    assert means == pytest.approx([20, 40, 200], abs=3)
    frames_out = tmp_path / "frames"
    assert main(["fuse", str(tmp_path / "ir"), str(tmp_path / "vi"), "-o", str(frames_out), "--method", "mean",
                 "--temporal", "ema", "-q"]) == 0  # two folders as one sequence: frames keep their names
    assert sorted(p.name for p in frames_out.iterdir()) == ["frame_1.png", "frame_10.png", "frame_2.png"]


def test_video_errors_are_one_line(tno_clip, tmp_path, capsys, monkeypatch):
    ir, vi = tno_clip
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    cases = [
        (["fuse", str(bad), str(vi), "-o", str(tmp_path / "a.mp4"), "--method", "max"], 1, "not a readable video"),
        (["fuse", str(ir), str(vi), "-o", str(tmp_path / "a.avi"), "--method", "max"], 2, "cannot write .avi video"),
        (["fuse", str(ir), str(vi), "-o", str(tmp_path / "a.mp4"), "--method", "max", "--fps", "0"], 2,
         "--fps 0: expected a positive frame rate"),
        (["fuse", str(ir), str(vi), "-o", str(tmp_path / "a.mp4"), "--method", "max", "--shard", "0/2"], 2,
         "--shard splits folders of pairs; a video is not split"),
    ]
    for argv, code, text in cases:
        assert main(argv) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err
    import cddfuse.io.video as video_io

    def no_av():
        raise video_io.CDDFuseError('video files need the video extra: pip install "cddfuse[video]"')

    monkeypatch.setattr(video_io, "_av", no_av)
    assert main(["fuse", str(ir), str(vi), "-o", str(tmp_path / "a.mp4"), "--method", "max"]) == 1
    assert 'pip install "cddfuse[video]"' in capsys.readouterr().err
    assert not list(tmp_path.glob("a.*"))
