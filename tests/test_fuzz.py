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

    from .conftest import TINY_SIZES, make_random_model

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
