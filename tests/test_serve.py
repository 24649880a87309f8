"""``cddfuse serve``: the HTTP API in-process (Starlette's TestClient), with the tiny random model."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="needs the serve extra: pip install 'cddfuse[serve]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (the test extra)")

from starlette.testclient import TestClient  # noqa: E402

from cddfuse.errors import CDDFuseError, InputTooLarge, SizeMismatch  # noqa: E402
from cddfuse.fusion import Fuser  # noqa: E402
from cddfuse.io.image import read_image, write_image  # noqa: E402
from cddfuse.serve.app import OPENAPI, create_app, parse_size  # noqa: E402

from .test_hostile import png_header_only  # noqa: E402

PET = ("MRI_PET/PET/11.png", "MRI_PET/MRI/11.png")


def _png(path: Path, shape: tuple[int, ...], seed: int) -> Path:
    write_image(path, np.random.default_rng(seed).random(shape), bit_depth=8)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("serve_pair")
    return _png(d / "ir.png", (20, 24), 1), _png(d / "vis.png", (20, 24), 2)


@pytest.fixture(scope="module")
def app(tiny_weights):
    return create_app(lambda: Fuser(weights=tiny_weights, device="cpu"), max_upload="1M", queue_size=4)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def _files(a: Path | bytes, b: Path | bytes, names: tuple[str, str] = ("a.png", "b.png")) -> dict:
    def body(x: Path | bytes) -> bytes:
        return x if isinstance(x, bytes) else x.read_bytes()
    return {"a": (names[0], body(a), "image/png"), "b": (names[1], body(b), "image/png")}


def _decoded(content: bytes, tmp_path: Path, name: str = "r.png") -> np.ndarray:
    p = tmp_path / name
    p.write_bytes(content)
    return read_image(p, keep_integer=True)


def test_parse_size():
    assert parse_size("50M") == 50 * 2**20 and parse_size("10") == 10
    with pytest.raises(ValueError, match="as a size"):
        parse_size("lots")


def test_health_info_openapi_page(client, tiny_weights):
    h = client.get("/api/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["task"] == "ivf"
    info = client.get("/api/info").json()
    assert info["task"] == "ivf" and info["weights"]["file"] == tiny_weights.name
    assert info["weights"]["provenance"]["purpose"] == "test fixture: random weights"
    assert "version" in info
    schema = client.get("/api/openapi.json").json()
    assert schema == OPENAPI and set(schema["paths"]) == {"/api/fuse", "/api/health", "/api/info"}
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and 'type="range"' in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/app.css").status_code == 200


def test_fused_png_equals_the_library(client, pair, tiny_weights, tmp_path):
    r = client.post("/api/fuse", files=_files(*pair))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert "ir-fused.png" not in r.headers["content-disposition"]  # the upload's name, "a.png"
    expected = write_image(tmp_path / "e.png", Fuser(weights=tiny_weights, device="cpu").fuse(*pair))
    assert r.content == expected.read_bytes()


def test_png16_and_npy(client, pair, tiny_weights, tmp_path):
    want = Fuser(weights=tiny_weights, device="cpu").fuse(*pair)
    r16 = client.post("/api/fuse", files=_files(*pair), data={"format": "png16"})
    assert r16.status_code == 200 and r16.headers["content-type"] == "image/png"
    img16 = _decoded(r16.content, tmp_path)
    assert img16.dtype == np.uint16 and img16.shape == (20, 24)
    assert np.abs(img16 / 65535.0 - want).max() < 1e-4
    rn = client.post("/api/fuse", files=_files(*pair), data={"format": "npy"})
    assert rn.status_code == 200 and rn.headers["content-type"] == "application/x-npy"
    arr = np.load(io.BytesIO(rn.content))
    assert arr.dtype == np.float32 and np.array_equal(arr, want)


def test_options(client, pair, tiny_weights, tmp_path):
    r = client.post("/api/fuse", files=_files(*pair), data={"normalize": "none", "format": "npy", "task": "ivf"})
    want = Fuser(weights=tiny_weights, device="cpu", normalize="none").fuse(*pair)
    assert r.status_code == 200 and np.array_equal(np.load(io.BytesIO(r.content)), want)


@pytest.mark.slow
def test_colour_pair_mif(tiny_weights, test_data, tmp_path):
    a, b = test_data / PET[0], test_data / PET[1]
    app = create_app(lambda: Fuser(weights=tiny_weights, task="mif", device="cpu"))
    with TestClient(app) as c:
        assert c.get("/api/health").json()["task"] == "mif"
        r = c.post("/api/fuse", files=_files(a, b), data={"task": "mif"})
        assert r.status_code == 200, r.text
        fused = _decoded(r.content, tmp_path)
        assert fused.shape == (256, 256, 3)
        expected = write_image(tmp_path / "e.png", Fuser(weights=tiny_weights, task="mif", device="cpu").fuse(a, b))
        assert r.content == expected.read_bytes()
        gray = c.post("/api/fuse", files=_files(a, b), data={"color": "gray"})
        assert gray.status_code == 200 and _decoded(gray.content, tmp_path, "g.png").ndim == 2
        wrong = c.post("/api/fuse", files=_files(a, b), data={"task": "ivf"})
        assert wrong.status_code == 400 and wrong.json()["code"] == "wrong_task"
        assert "send task=mif" in wrong.json()["error"] and "--" not in wrong.json()["error"]


@pytest.mark.parametrize("data, says", [
    ({"format": "jpeg"}, "format='jpeg'"),
    ({"color": "sepia"}, "color='sepia'"),
    ({"resize": "maybe"}, "resize='maybe'"),
    ({"task": "xyz"}, "task='xyz'"),
    ({"bogus": "1"}, "unknown field"),
])
def test_bad_options_400(client, pair, data, says):
    r = client.post("/api/fuse", files=_files(*pair), data=data)
    assert r.status_code == 400 and says in r.json()["error"] and r.json()["code"] == "bad_option"


def test_bad_inputs_400(client, pair, tmp_path):
    small = _png(tmp_path / "small.png", (10, 12), 3)
    r = client.post("/api/fuse", files=_files(pair[0], small))
    assert r.status_code == 400 and r.json()["code"] == "size_mismatch"
    assert "a and b differ in size (24x20 vs 12x10)" in r.json()["error"] and "resize=true" in r.json()["error"]
    assert r.json()["detail"] == {"a": "24x20", "b": "12x10"}
    assert "/tmp" not in r.json()["error"] and "--" not in r.json()["error"]
    ok = client.post("/api/fuse", files=_files(pair[0], small), data={"resize": "true"})
    assert ok.status_code == 200 and _decoded(ok.content, tmp_path).shape == (20, 24)
    junk = client.post("/api/fuse", files=_files(pair[0], b"not an image at all", ("ir.png", "notes.png")))
    assert junk.status_code == 400 and junk.json()["code"] == "bad_input"
    assert "b (notes.png)" in junk.json()["error"] and "not a readable image" in junk.json()["error"]
    missing = client.post("/api/fuse", files={"a": ("a.png", pair[0].read_bytes(), "image/png")})
    assert missing.status_code == 400 and missing.json()["code"] == "missing_file"
    not_multipart = client.post("/api/fuse", content=b"{}", headers={"content-type": "application/json"})
    assert not_multipart.status_code == 415 and "multipart/form-data" in not_multipart.json()["error"]
    assert client.get("/api/fuse").status_code == 405 and "error" in client.get("/api/fuse").json()
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json()


def test_upload_limit_413_while_reading(tiny_weights, pair):
    a, b = pair[0].read_bytes(), pair[1].read_bytes()
    app = create_app(lambda: Fuser(weights=tiny_weights, device="cpu"), max_upload=10**6)
    with TestClient(app) as c:
        # the size of the multipart body these files make, then a limit one byte short of it
        import httpx

        body = httpx.Request("POST", "http://x/api/fuse", files=_files(a, b)).read()
        exact = create_app(lambda: Fuser(weights=tiny_weights, device="cpu"), max_upload=len(body))
        over = create_app(lambda: Fuser(weights=tiny_weights, device="cpu"), max_upload=len(body) - 1)
        with TestClient(exact) as ce, TestClient(over) as co:
            assert ce.post("/api/fuse", files=_files(a, b)).status_code == 200
            r = co.post("/api/fuse", files=_files(a, b))
            assert r.status_code == 413 and r.json()["code"] == "upload_too_large"

            def chunks():  # no Content-Length: the limit is enforced while the body arrives
                yield body[:1000]
                yield body[1000:]
            req = httpx.Request("POST", "http://x/api/fuse", files=_files(a, b))
            r2 = co.post("/api/fuse", content=chunks(), headers={"content-type": req.headers["content-type"]})
            assert r2.status_code == 413 and r2.json()["code"] == "upload_too_large"
        assert c.get("/api/health").status_code == 200


def test_pixel_bomb_413(client, pair, monkeypatch):
    import cddfuse.io.image as I

    assert client.post("/api/fuse", files=_files(*pair)).status_code == 200
    monkeypatch.setattr(I.cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    orientation = I._orientation

    def no_metadata_of_bombs(im):  # Pillow's EXIF lookup once allocated the 10-gigapixel image first (~10 s)
        assert im.size[0] * im.size[1] < 10**9, "read the metadata of a bomb"
        return orientation(im)

    monkeypatch.setattr(I, "_orientation", no_metadata_of_bombs)
    r = client.post("/api/fuse", files=_files(png_header_only(100_000, 100_000), pair[1]))
    # refused from the header, before anything is decoded or its metadata read
    assert r.status_code == 413 and r.json()["code"] == "image_too_large"
    assert "a (a.png): 100000x100000 pixels is more than this server's limit" in r.json()["error"]
    assert r.json()["detail"]["field"] == "a" and "--" not in r.json()["error"]


def test_token(tiny_weights, pair):
    app = create_app(lambda: Fuser(weights=tiny_weights, device="cpu"), token="s3cret")
    with TestClient(app) as c:
        assert c.get("/api/health").status_code == 200 and c.get("/api/health").json()["auth"] is True
        assert c.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/api/fuse", files=_files(*pair), headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
            assert c.get("/api/info", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert c.post("/api/fuse", files=_files(*pair), headers=good).status_code == 200
        assert c.get("/api/info", headers=good).status_code == 200


class _HeldFuser(Fuser):
    """Holds every fusion until ``release`` is set, so that a burst meets a full queue whatever the timing."""

    release = threading.Event()

    def fuse(self, *args, **kwargs):
        assert self.release.wait(timeout=600), "never released"
        return super().fuse(*args, **kwargs)


def test_burst_against_a_queue_of_4(tiny_weights, pair):
    app = create_app(lambda: _HeldFuser(weights=tiny_weights, device="cpu"), queue_size=4)
    statuses: list[int] = []
    retry: list[str | None] = []
    lock = threading.Lock()
    _HeldFuser.release.clear()
    with TestClient(app) as c:

        def one() -> None:
            r = c.post("/api/fuse", files=_files(*pair))
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 503:
                    retry.append(r.headers.get("retry-after"))
                    assert r.json()["code"] == "busy"
                else:
                    assert r.headers["content-type"] == "image/png"

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for _ in range(60_000):  # 4 admitted and held; the other 16 refused at once
            with lock:
                if len(statuses) >= 16:
                    break
            time.sleep(0.01)
        assert statuses == [503] * 16 and c.get("/api/health").json()["busy"] == 4
        _HeldFuser.release.set()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads), "a request hung"
        assert sorted(statuses) == [200] * 4 + [503] * 16
        assert all(v is not None and int(v) > 0 for v in retry)
        h = c.get("/api/health").json()
        assert h["status"] == "ok" and h["busy"] == 0
        assert c.post("/api/fuse", files=_files(*pair)).status_code == 200


def test_temporary_folders_are_removed(client, pair, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    client.post("/api/fuse", files=_files(*pair))
    client.post("/api/fuse", files=_files(pair[0], b"junk"))
    client.post("/api/fuse", files=_files(png_header_only(100_000, 100_000), pair[1]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("cddfuse-serve-")]


def test_cli_serve_parser_and_loopback():
    from cddfuse.cli.main import build_parser
    from cddfuse.cli.serve import is_loopback

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.max_upload, args.queue, args.token) == ("127.0.0.1", 8000, "50M", 4, None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_cli_serve_warns_off_loopback_without_token(tiny_weights, monkeypatch, capsys):
    import cddfuse.serve.server as server
    from cddfuse.cli.main import main

    ran: list[dict] = []
    monkeypatch.setattr(server, "serve", lambda app, sock, **kw: ran.append({"host": sock.getsockname()[0], **kw}))
    base = ["serve", "--weights", str(tiny_weights), "--device", "cpu", "--port", "0"]
    assert main([*base, "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "0.0.0.0 without --token" in warnings[0]
    assert main([*base, "--host", "0.0.0.0", "--token", "t"]) == 0
    assert main(base) == 0
    assert "warning" not in capsys.readouterr().err
    assert [kw["host"] for kw in ran] == ["0.0.0.0", "0.0.0.0", "127.0.0.1"]
    assert main([*base, "--max-upload", "lots"]) == 2
    assert "--max-upload lots" in capsys.readouterr().err
    assert main([*base, "--queue", "0"]) == 2


class _BrokenFuser(Fuser):
    def fuse(self, *args, **kwargs):
        raise RuntimeError("boom /secret/path")


def test_unexpected_error_is_json_500_and_the_server_goes_on(tiny_weights, pair):
    app = create_app(lambda: _BrokenFuser(weights=tiny_weights, device="cpu"))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/api/fuse", files=_files(*pair))
        assert r.status_code == 500 and r.json()["code"] == "internal" and "secret" not in r.text
        assert c.get("/api/health").json()["busy"] == 0


# ------------------------------------------------------------------------------------------- cancellation
def test_engine_stops_between_tiles_when_cancelled(tiny_weights):
    import torch

    from cddfuse.engine import FusionCancelled, tiled_fuse

    model = Fuser(weights=tiny_weights, device="cpu").model
    a, b = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    cancel = threading.Event()
    passes: list[int] = []

    def progress(i: int, n: int) -> None:
        passes.append(i)
        if i == 1:
            cancel.set()

    with pytest.raises(FusionCancelled):
        tiled_fuse(model, a, b, tile=16, progress=progress, cancel=cancel, workers=1)
    assert passes == [0, 1]  # stopped after the first tile of the second pass, not at the end
    full: list[int] = []
    out = tiled_fuse(model, a, b, tile=16, progress=lambda i, n: full.append(n), cancel=threading.Event())
    assert len(full) > 2 and torch.allclose(out, tiled_fuse(model, a, b, tile=16), atol=1e-6)


def test_a_client_that_goes_away_cancels_its_fusion(tiny_weights, pair, monkeypatch):
    """ASGI-level: the body arrives, the fusion starts, the client disconnects: the engine stops early and
    the slot is given back."""
    import asyncio

    import httpx

    import cddfuse.engine.engine as E

    started = threading.Event()
    passes: list[int] = []
    real_start = E.Engine._start_pass

    def start_pass(self):
        passes.append(self.pass_index)
        started.set()
        real_start(self)

    monkeypatch.setattr(E.Engine, "_start_pass", start_pass)
    folder = Path(pair[0]).parent
    big = _png(folder / "big_a.png", (256, 256), 7), _png(folder / "big_b.png", (256, 256), 8)
    app = create_app(lambda: Fuser(weights=tiny_weights, device="cpu", tile=64), queue_size=2)
    request = httpx.Request("POST", "http://x/api/fuse", files=_files(*big))
    body = request.read()
    sent: list[dict] = []

    async def scenario() -> None:
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 60)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/api/fuse", "raw_path": b"/api/fuse", "root_path": "",
                 "query_string": b"", "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
                 "scheme": "http", "server": ("x", 80), "client": ("y", 1), "http_version": "1.1",
                 "asgi": {"version": "3.0"}}
        await asyncio.wait_for(app(scope, receive, send), 300)

    asyncio.run(scenario())
    n = E.n_passes(1, 1)
    assert started.is_set() and len(passes) < n, (passes, n)  # cancelled before the last pass
    assert sent[0]["status"] == 204  # nobody is there to read an answer
    assert app.state.serve.admitted == 0 and app.state.serve.uploads == 0


def test_stop_cancels_and_refuses(tiny_weights, pair):
    app = create_app(lambda: Fuser(weights=tiny_weights, device="cpu"))
    with TestClient(app) as c:
        app.state.serve.stop()
        r = c.post("/api/fuse", files=_files(*pair))
        assert r.status_code == 503 and r.json()["code"] == "stopping" and r.headers["retry-after"]
        assert c.get("/api/health").json()["status"] == "stopping"


@pytest.mark.parametrize("token", ["", "   ", "\t", "with space", "caf\u00e9", "new\nline"])
def test_unusable_tokens_are_refused(tiny_weights, token):
    from cddfuse.serve.app import check_token

    with pytest.raises(ValueError, match="token"):
        check_token(token)
    with pytest.raises(ValueError, match="token"):
        create_app(lambda: Fuser(weights=tiny_weights, device="cpu"), token=token)


def test_favicon_and_page_link(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon"
    assert r.content[:4] == b"\x00\x00\x01\x00"  # an ICO directory
    assert 'href="/favicon.ico"' in client.get("/").text
    assert client.get("/static/favicon.svg").status_code == 200


def test_cli_serve_constants_match_the_app():
    import cddfuse.cli.serve as cli
    import cddfuse.serve.app as app_module
    import cddfuse.serve.server as server_module

    assert cli.DEFAULT_UPLOAD_TIMEOUT == app_module.DEFAULT_UPLOAD_TIMEOUT
    assert cli.DEFAULT_MIN_UPLOAD_RATE == app_module.DEFAULT_MIN_UPLOAD_RATE
    assert cli.UPLOAD_GRACE == app_module.UPLOAD_GRACE
    assert cli.DEFAULT_HEADER_TIMEOUT == server_module.DEFAULT_HEADER_TIMEOUT


@pytest.mark.parametrize("args, says", [
    (["--token", ""], "--token: the token is empty or blank"),
    (["--token", "a b"], "--token: the token may hold printable ASCII"),
    (["--upload-timeout", "nan"], "--upload-timeout nan"),
    (["--upload-timeout", "0"], "--upload-timeout 0"),
    (["--header-timeout", "inf"], "--header-timeout inf"),
    (["--min-upload-rate", "fast"], "--min-upload-rate fast"),
    (["--min-upload-rate", "nan"], "--min-upload-rate nan"),
])
def test_cli_serve_bad_options_exit_2(tiny_weights, capsys, args, says):
    from cddfuse.cli.main import main

    assert main(["serve", "--weights", str(tiny_weights), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


class _TypedErrorFuser(Fuser):
    """Raises the typed errors with wording the server has never seen: the status must follow the type."""

    error: Exception = RuntimeError("unset")

    def fuse(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize("error, status, code, detail", [
    (InputTooLarge("huge", width=9000, height=9000, limit=1000), 413, "image_too_large",
     {"size": "9000x9000", "limit": 1000}),
    (SizeMismatch("nope", size_a="3x4", size_b="5x6"), 400, "size_mismatch", {"a": "3x4", "b": "5x6"}),
    (CDDFuseError("9000x9000 pixels is more than the limit"), 400, "bad_input", {}),  # text alone: no status
])
def test_the_http_status_follows_the_error_type(tiny_weights, pair, error, status, code, detail):
    _TypedErrorFuser.error = error
    app = create_app(lambda: _TypedErrorFuser(weights=tiny_weights, device="cpu"))
    with TestClient(app) as c:
        r = c.post("/api/fuse", files=_files(*pair))
    assert r.status_code == status and r.json()["code"] == code
    assert detail.items() <= r.json().get("detail", {}).items()


def test_per_request_options_leave_the_servers_fuser_alone(app, pair):
    fuser = app.state.fuser
    before = fuser.options
    with TestClient(app) as c:
        r = c.post("/api/fuse", files=_files(*pair), data={"color": "gray", "normalize": "none", "chroma": "ycbcr"})
    assert r.status_code == 200 and fuser.options is before and fuser.options.normalize == "minmax"
