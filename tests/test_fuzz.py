"""Property-based fuzzing (hypothesis) of the parsers that meet untrusted input: the image reader, the
pair matcher, the weights loader and the config parser.

The only outcomes allowed are a result or a :class:`~cddfuse.errors.CDDFuseError` -- never another
exception, never a hang. Budgets are fixed (``max_examples``, no deadline surprises) so the module
takes seconds in CI; ``CDDFUSE_FUZZ_EXAMPLES`` raises them for a longer local run.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cddfuse.errors import CDDFuseError  # noqa: E402
from cddfuse.io.image import read_image, write_image  # noqa: E402

EXAMPLES = int(os.environ.get("CDDFUSE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _seed_files() -> dict:
    """Small valid files of every supported format, to mutate."""
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="cddfuse-fuzz-"))
    out = {}
    for ext, img, depth in ((".png", rng.random((9, 7)), 8), (".png", rng.random((6, 5, 3)), 16),
                            (".jpg", rng.random((8, 8, 3)), 8), (".bmp", rng.random((5, 6)), 8),
                            (".tif", rng.random((4, 7)), 16)):
        path = write_image(root / f"seed{len(out)}{ext}", img, bit_depth=depth)
        out[path.name] = path.read_bytes()
    return out


SEEDS = _seed_files()


def _read(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(data)
        try:
            img = read_image(path)
        except CDDFuseError:
            return
        assert img.dtype == np.float32 and img.ndim in (2, 3) and np.all(np.isfinite(img))
        assert img.min() >= 0 and img.max() <= 1


@pytest.mark.slow
@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg", ".bmp", ".tif", ".xyz"]))
def test_reader_on_random_bytes(data, suffix):
    _read(data, suffix)


@FUZZ
@given(name=st.sampled_from(sorted(SEEDS)), cuts=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)),
                                                          max_size=12),
       truncate=st.one_of(st.none(), st.integers(0, 4095)))
@pytest.mark.slow
def test_reader_on_mutated_real_files(name, cuts, truncate):
    data = bytearray(SEEDS[name])
    for pos, value in cuts:  # flip bytes, headers included
        data[pos % len(data)] = value
    if truncate is not None:
        data = data[: truncate % (len(data) + 1)]
    _read(bytes(data), Path(name).suffix)


@FUZZ
@given(a=st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_. -]{0,11}", fullmatch=True), max_size=8, unique=True),
       b=st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_. -]{0,11}", fullmatch=True), max_size=8, unique=True),
       ext=st.sampled_from([".png", ".jpg", ".PNG", ".txt", ""]))
@pytest.mark.slow
def test_pair_matcher(a, b, ext):
    from cddfuse.io.pairs import match_pairs

    with tempfile.TemporaryDirectory() as tmp:
        da, db = Path(tmp) / "a", Path(tmp) / "b"
        da.mkdir()
        db.mkdir()
        for folder, names in ((da, a), (db, b)):
            for name in names:
                (folder / f"{name}{ext}").write_bytes(b"x")
        try:
            listing = match_pairs(da, db)
        except ValueError:  # two files of one stem (e.g. "x" and "x.png.png"): a clear refusal
            return
        stems = [s for s, _, _ in listing.pairs]
        assert stems == sorted(stems)
        assert set(stems).isdisjoint(listing.only_a) and set(stems).isdisjoint(listing.only_b)
        for stem, pa, pb in listing.pairs:
            assert pa.parent == da and pb.parent == db and pa.stem == pb.stem == stem


@pytest.fixture(scope="module")
def weights_bytes(tmp_path_factory):
    from cddfuse.models.weights import save_weights

    from .helpers import TINY_SIZES, make_random_model

    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(make_random_model(0, **TINY_SIZES), path, task="ivf", residual="vis")
    import torch

    pth = tmp_path_factory.mktemp("w") / "tiny.pth"
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(3)}, buf)
    pth.write_bytes(buf.getvalue())
    return {".safetensors": path.read_bytes(), ".pth": pth.read_bytes()}


@FUZZ
@given(kind=st.sampled_from([".safetensors", ".pth"]),
       cuts=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
       truncate=st.one_of(st.none(), st.integers(0, 1 << 16)), raw=st.one_of(st.none(), st.binary(max_size=512)))
def test_weights_loader(weights_bytes, kind, cuts, truncate, raw):
    from cddfuse.models.weights import load_weights

    data = bytearray(weights_bytes[kind]) if raw is None else bytearray(raw)
    for pos, value in cuts:
        if data:
            data[pos % len(data)] = value
    if truncate is not None:
        data = data[: truncate % (len(data) + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"w{kind}"
        path.write_bytes(bytes(data))
        try:
            model, info = load_weights(path)
        except CDDFuseError:
            return
        assert info.config is not None and not model.training


_KEYS = ["name", "task", "seed", "device", "model.dim", "model.num_heads", "data.mode", "data.crop_size",
         "train.batch_size", "phase1.epochs", "phase2.residual", "optim.lr", "optim.betas", "sched.gamma",
         "val.metrics", "log.every_steps", "checkpoint.every_steps", "nonsense.key", "optim.lrr"]
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(-2, 3), max_size=3))


@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=5),
       text=st.one_of(st.none(), st.text(max_size=200)))
def test_config_parser(overrides, text):
    import yaml

    from cddfuse.train.config import apply_overrides, default_config, load_config, validate

    try:
        if text is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "c.yaml"
                path.write_text(text)
                cfg = load_config(path)
        else:
            cfg = default_config()
        apply_overrides(cfg, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in overrides])
        validate(cfg)
    except CDDFuseError:
        return


# ----------------------------------------------------------------------------- header parsers (sizes before decoding)

_HEADER_SEEDS = [
    b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20 +X 30\n", b"#?RGBE\n\n-Y 5 +X 7\n",
    b"PF\n7 5\n-1\n", b"Pf\n# c\n7 5\n-1.0\n", b"P7\nWIDTH 7\nHEIGHT 5\nDEPTH 3\nMAXVAL 255\nENDHDR\n",
    b"II*\x00\x08\x00\x00\x00\x02\x00\x00\x01\x04\x00\x01\x00\x00\x00\x07\x00\x00\x00"
    b"\x01\x01\x04\x00\x01\x00\x00\x00\x05\x00\x00\x00",
    b"MM\x00*\x00\x00\x00\x08\x00\x02\x01\x00\x00\x03\x00\x00\x00\x01\x00\x07\x00\x00"
    b"\x01\x01\x00\x03\x00\x00\x00\x01\x00\x05\x00\x00",
]


def test_header_seeds_parse():
    from cddfuse.io.headers import header_size

    assert [header_size(s)[1] for s in _HEADER_SEEDS] == [(30, 20), (7, 5), (7, 5), (7, 5), (7, 5), (7, 5), (7, 5)]


@FUZZ
@given(seed=st.sampled_from(_HEADER_SEEDS), cuts=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)),
                                                          max_size=6),
       truncate=st.one_of(st.none(), st.integers(0, 255)), tail=st.binary(max_size=64))
def test_header_parsers_on_mutated_headers(seed, cuts, truncate, tail):
    """Every parser returns ``None`` or two non-negative whole numbers, on any bytes, and never raises."""
    from cddfuse.io.headers import header_size, parse_hdr, parse_pam, parse_pfm, parse_tiff

    data = bytearray(seed + tail)
    for pos, value in cuts:
        data[pos % len(data)] = value
    if truncate is not None:
        data = data[: truncate % (len(data) + 1)]
    head = bytes(data)
    for parse in (parse_hdr, parse_pfm, parse_pam, parse_tiff):
        size = parse(head)
        assert size is None or (len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size))
    found = header_size(head, lambda at, n: head[at:at + n])
    assert found is None or found[0] in ("HDR", "PFM", "PAM", "TIFF")


@FUZZ
@given(magic=st.sampled_from([b"#?RADIANCE\n", b"PF\n", b"Pf ", b"P7\n", b"II*\x00", b"MM\x00*", b"II+\x00", b""]),
       data=st.binary(max_size=512))
def test_header_parsers_on_random_bytes(magic, data):
    from cddfuse.io.headers import header_size

    head = magic + data
    found = header_size(head, lambda at, n: head[at:at + n])
    assert found is None or all(v >= 0 for v in found[1])


@FUZZ
@given(seed=st.sampled_from(_HEADER_SEEDS), tail=st.binary(max_size=256))
def test_reader_on_header_only_files(seed, tail):
    """Files of the self-parsed formats with any body: read, or refused in one CDDFuseError."""
    _read(seed + tail, ".hdr")


# ----------------------------------------------------------------------------- weights headers and zip directories

@FUZZ
@given(header=st.recursive(st.one_of(st.none(), st.integers(-2**70, 2**70), st.text(max_size=8), st.booleans()),
                           lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c,
                                                                                      max_size=4)), max_leaves=12),
       data=st.binary(max_size=64), length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_safetensors_header_reader(header, data, length):
    """Any JSON header and any length word: a result whose tensors fit the file, or one CheckpointError."""
    import json
    import struct

    from cddfuse.models.weights import read_safetensors_header

    text = json.dumps(header).encode()
    raw = struct.pack("<Q", len(text) if length is None else length) + text + data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        path.write_bytes(raw)
        try:
            tensors, meta = read_safetensors_header(path)
        except CDDFuseError:
            return
        assert all(0 <= t.start <= t.end <= len(data) for t in tensors.values())
        assert all(isinstance(v, str) for v in meta.values())


@FUZZ
@given(cuts=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
       truncate=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_zip_directory_inspection(weights_bytes, cuts, truncate):
    """The .pth zip check reads only the directory: a byte count, or one CheckpointError, on any damage."""
    from cddfuse.models.weights import check_zip_bounds

    data = bytearray(weights_bytes[".pth"])
    for pos, value in cuts:
        data[pos % len(data)] = value
    if truncate is not None:
        data = data[: truncate % (len(data) + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.pth"
        path.write_bytes(bytes(data))
        try:
            total = check_zip_bounds(path)
        except CDDFuseError:
            return
        assert total >= 0


# ----------------------------------------------------------------------------- the YAML guard and the tuning cache

_YAML_PIECES = ["a: &x [1, 2]\n", "b: *x\n", "<<: *x\n", "seed: [", "]", "{", "}", ": ", "- ", "!!python/object ",
                "&y ", "*y", "\n  ", "'", '"', "#", ".nan", "1e999", "\t", "\\u0000"]


@FUZZ
@given(pieces=st.lists(st.sampled_from(_YAML_PIECES), max_size=24), text=st.text(max_size=40))
def test_yaml_guard(pieces, text):
    """The config parser never expands an alias, never shows YAML's mark snippet, never raises but UsageError."""
    from cddfuse.errors import UsageError
    from cddfuse.train.config import _yaml_load

    source = "".join(pieces) + text
    try:
        value = _yaml_load(source, "fuzz")
    except UsageError as e:
        assert "\n" not in str(e) and "^" not in str(e)  # noqa: PT017 - an error is one outcome of two
        return
    assert len(repr(value)) <= 20 * len(source) + 20  # parsed: nothing was expanded


@FUZZ
@given(text=st.text(max_size=300))
def test_tuning_cache_reader(text):
    import warnings

    from cddfuse.engine.tuning import load_cache

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tuning.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert isinstance(load_cache(path), dict)
