"""``cddfuse serve`` against hostile clients: the real command in a subprocess on a loopback port, driven
with raw sockets, urllib, httpx and curl.

Each case is something a client can send -- slow headers, slow bodies, clients that vanish, oversize
uploads, bad tokens, malformed multipart, wrong content types, huge fields, image bombs, floods -- and
asserts the answer (status, code, one line) and that the server answers ``/api/health`` afterwards with
nothing left admitted. Every loop is bounded in count and in time and ends by itself; time bounds are
generous liveness limits (a slow client is cut after 2 s here; the tests allow 60), never a speed test.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'cddfuse[serve]'")
httpx = pytest.importorskip("httpx", reason="needs httpx (the test extra)")

from cddfuse.io.image import write_image  # noqa: E402

from .test_hostile import png_header_only  # noqa: E402
from .test_serve_browser import start_server, stop_server  # noqa: E402

TOKEN = "hostile-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 256 * 1024  # --max-upload
MAX_PIXELS = 1_000_000
SERVER_ARGS = ("--token", TOKEN, "--max-upload", str(LIMIT), "--max-pixels", str(MAX_PIXELS), "--upload-timeout",
               "2", "--min-upload-rate", "1K", "--header-timeout", "2", "--queue", "2")
LIVENESS = 60.0  # seconds: far above the 2 s limits, far below "held for as long as the attacker likes"


@pytest.fixture(scope="module")
def server(tiny_weights) -> Iterator[tuple[str, int]]:
    proc, url = start_server(tiny_weights, *SERVER_ARGS)
    try:
        yield url, int(url.rsplit(":", 1)[1])
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[bytes, bytes]:
    d = tmp_path_factory.mktemp("hostile_pair")
    rng = np.random.default_rng(0)
    a = write_image(d / "a.png", rng.random((24, 32)), bit_depth=8).read_bytes()
    b = write_image(d / "b.png", rng.random((24, 32)), bit_depth=8).read_bytes()
    return a, b


def healthy(url: str) -> dict:
    """The server answers /api/health, with nothing admitted or uploading (waits for vanished work to end)."""
    deadline = time.monotonic() + LIVENESS
    while True:
        h = httpx.get(url + "/api/health", timeout=LIVENESS).json()
        if (h["busy"], h["uploads"]) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert h["status"] == "ok" and h["busy"] == 0 and h["uploads"] == 0, h
    return h


def multipart(fields: dict[str, tuple[str | None, bytes]], boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body: name -> (filename or None for a text field, content)."""
    boundary = boundary or uuid.uuid4().hex
    parts = []
    for name, (filename, content) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def fuse(url: str, a: bytes, b: bytes, data: dict | None = None, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url + "/api/fuse", files={"a": ("a.png", a, "image/png"), "b": ("b.png", b, "image/png")},
                      data=data or {}, headers=AUTH if headers is None else headers, timeout=LIVENESS)


def one_line_json(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert "\n" not in body["error"] and len(body["error"]) < 400 and "Traceback" not in body["error"]
    if code is not None:
        assert body["code"] == code, body
    return body


def raw(port: int, data: bytes, wait: float = LIVENESS) -> tuple[bytes, float]:
    """Send ``data`` on a fresh socket, read until the server closes it; (everything read, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        t0 = time.monotonic()
        s.sendall(data)
        out = b""
        while time.monotonic() - t0 < wait:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out, time.monotonic() - t0


def trickle(port: int, first: bytes, step: bytes, interval: float, limit: float = LIVENESS) -> tuple[bytes, float]:
    """Send ``first``, then ``step`` every ``interval`` s until the server closes the socket or ``limit`` s;
    (what it answered, seconds the socket was held)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.monotonic()
        s.sendall(first)
        s.settimeout(interval)
        out = b""
        while time.monotonic() - t0 < limit:
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            except socket.timeout:
                try:
                    s.sendall(step)
                except OSError:
                    break
            except OSError:
                break
        return out, time.monotonic() - t0


# ------------------------------------------------------------------------------------------- slow clients
SLOW_HEADERS = {
    "request line then a header byte a second": (b"POST /api/fuse HTTP/1.1\r\n", b"X", 0.5),
    "half a request line, a byte a second": (b"POST /api/fu", b"s", 0.5),
    "an idle connection that sends nothing": (b"", b"", 0.5),
    "headers without the blank line": (b"GET /api/health HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n", 0.5),
}


@pytest.mark.parametrize("first, step, interval", SLOW_HEADERS.values(), ids=SLOW_HEADERS.keys())
def test_slow_headers_are_cut(server, first, step, interval):
    url, port = server
    _, held = trickle(port, first, step, interval)
    assert held < LIVENESS, "a slow-header connection was held"
    healthy(url)


def _slow_body(kind: str) -> tuple[bytes, bytes]:
    body, ctype = multipart({"a": ("a.png", b"x" * 100)})
    head = f"POST /api/fuse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\n"
    if kind == "chunked":
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode(), b"1\r\nx\r\n"
    if kind == "stalls":
        return (head + "Content-Length: 100000\r\n\r\n").encode() + body[:50], b""
    return (head + "Content-Length: 100000\r\n\r\n").encode(), b"x"


@pytest.mark.parametrize("kind", ["content-length, a byte every 0.5 s", "chunked", "stalls"])
def test_slow_bodies_get_408_and_are_closed(server, kind):
    url, port = server
    first, step = _slow_body(kind.split(",")[0])
    answer, held = trickle(port, first, step, 0.5)
    assert held < LIVENESS
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"upload_too_slow"' in answer
    healthy(url)


def test_four_slow_clients_do_not_block_fusions(server, pair):
    url, port = server
    first, step = _slow_body("content-length")
    results: list[tuple[bytes, float]] = []
    threads = [threading.Thread(target=lambda: results.append(trickle(port, first, step, 0.5))) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    statuses = [fuse(url, *pair).status_code for _ in range(3)]  # while 6 sockets trickle (queue is 2)
    for t in threads:
        t.join(LIVENESS)
    assert statuses == [200, 200, 200]
    assert len(results) == 6 and all(answer.startswith(b"HTTP/1.1 408") for answer, _ in results)
    healthy(url)


# ------------------------------------------------------------------------------------------- vanished clients
@pytest.mark.parametrize("when", ["after the headers", "halfway through the body", "after the whole body"])
def test_vanished_client_frees_everything(server, pair, when):
    url, port = server
    body, ctype = multipart({"a": ("a.png", pair[0]), "b": ("b.png", pair[1])})
    head = (f"POST /api/fuse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    cut = {"after the headers": 0, "halfway through the body": len(body) // 2, "after the whole body": len(body)}[when]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + body[:cut])
        time.sleep(0.2)
    healthy(url)
    assert fuse(url, *pair).status_code == 200


# ------------------------------------------------------------------------------------------- oversize uploads
def _oversize() -> tuple[bytes, str]:
    return multipart({"a": ("a.png", b"\x89PNG" + bytes(2 * LIMIT)), "b": ("b.png", b"x")})


def _urllib(url: str, body: bytes, ctype: str) -> int | str:
    req = urllib.request.Request(url + "/api/fuse", data=body, headers={"Content-Type": ctype, **AUTH})
    try:
        with urllib.request.urlopen(req, timeout=LIVENESS) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError as e:  # a broken pipe or reset instead of the answer
        return f"{type(e).__name__}: {e}"


def _httpx(url: str, body: bytes, ctype: str) -> int | str:
    try:
        return httpx.post(url + "/api/fuse", content=body, headers={"Content-Type": ctype, **AUTH},
                          timeout=LIVENESS).status_code
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"


def _httpx_chunked(url: str, body: bytes, ctype: str) -> int | str:
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]
    try:
        return httpx.post(url + "/api/fuse", content=chunks(), headers={"Content-Type": ctype, **AUTH},
                          timeout=LIVENESS).status_code
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"


def _curl(url: str, body: bytes, ctype: str, expect: bool = True) -> int | str:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    headers = ["-H", f"Content-Type: {ctype}", "-H", f"Authorization: Bearer {TOKEN}"]
    if not expect:
        headers += ["-H", "Expect:"]  # send the body without waiting for 100 Continue
    p = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", *headers, "--data-binary", "@-",
                        url + "/api/fuse"], input=body, capture_output=True, timeout=LIVENESS)
    return int(p.stdout) if p.stdout.isdigit() and p.stdout != b"000" else f"curl exit {p.returncode}"


CLIENTS: dict[str, Callable[[str, bytes, str], int | str]] = {
    "urllib": _urllib, "httpx": _httpx, "httpx chunked (no Content-Length)": _httpx_chunked,
    "curl with Expect 100-continue": _curl, "curl without Expect": lambda u, b, c: _curl(u, b, c, expect=False),
}


@pytest.mark.parametrize("client", CLIENTS.values(), ids=CLIENTS.keys())
def test_oversize_upload_reads_413_not_a_broken_pipe(server, client):
    url, _ = server
    body, ctype = _oversize()
    answers = [client(url, body, ctype) for _ in range(8)]  # a race once lost half the time: try several
    assert answers == [413] * 8, answers
    healthy(url)


def test_oversize_upload_answer_names_the_limit(server):
    url, _ = server
    body, ctype = _oversize()
    r = httpx.post(url + "/api/fuse", content=body, headers={"Content-Type": ctype, **AUTH}, timeout=LIVENESS)
    err = one_line_json(r, 413, "upload_too_large")
    assert err["detail"] == {"limit": LIMIT} and "256 KiB" in err["error"] and "--" not in err["error"]
    healthy(url)


def test_lying_content_length_is_counted_as_it_arrives(server):
    url, port = server
    body, ctype = _oversize()
    head = (f"POST /api/fuse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {LIMIT + 10}\r\n\r\n").encode()  # small enough to start, then more is sent
    answer, _ = raw(port, head + body[:LIMIT + 10])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    healthy(url)


# ------------------------------------------------------------------------------------------- tokens
BAD_AUTH = {
    "no header": {},
    "empty bearer": {"Authorization": "Bearer"},
    "wrong token": {"Authorization": "Bearer wrong"},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "token without scheme": {"Authorization": TOKEN},
    "prefix of the token": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus a suffix": {"Authorization": f"Bearer {TOKEN}x"},
}


@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
def test_bad_tokens_get_401(server, pair, headers):
    url, _ = server
    err = one_line_json(fuse(url, *pair, headers=headers), 401, "unauthorized")
    assert "Authorization: Bearer" in err["error"]
    assert httpx.get(url + "/api/info", headers=headers).status_code == 401
    healthy(url)


def test_right_token_any_case_of_the_scheme(server, pair):
    url, _ = server
    assert fuse(url, *pair, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert httpx.get(url + "/api/health").json()["auth"] is True


@pytest.mark.parametrize("token", ["", " ", "\t", "two words", "caf\u00e9"])
def test_unusable_tokens_are_refused_at_start(tiny_weights, token):
    import os
    import sys

    from .test_serve_browser import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "serve", "--weights", str(tiny_weights),
                        "--port", "0", "--token", token], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("cddfuse serve: error: --token: "), p.stderr


# ------------------------------------------------------------------------------------------- malformed requests
def _post_raw(url: str, body: bytes, ctype: str | None) -> httpx.Response:
    headers = dict(AUTH)
    if ctype is not None:
        headers["Content-Type"] = ctype
    return httpx.post(url + "/api/fuse", content=body, headers=headers, timeout=LIVENESS)


def _malformed(a: bytes, b: bytes) -> dict[str, tuple[bytes, str | None]]:
    good, ctype = multipart({"a": ("a.png", a), "b": ("b.png", b)}, boundary="bnd")
    dup = good[: -len("--bnd--\r\n")] + multipart({"a": ("a.png", a)}, boundary="bnd")[0]
    twice = multipart({"a": ("a.png", a), "b": ("b.png", b), "color": (None, b"gray"), "colour": (None, b"auto")},
                      boundary="bnd")[0].replace(b'name="colour"', b'name="color"')
    return {
        "no boundary": (good, "multipart/form-data"),
        "another boundary": (good, "multipart/form-data; boundary=other"),
        "truncated body": (good[: len(good) // 2], ctype),
        "no closing boundary": (good[: -len("--bnd--\r\n")], ctype),
        "empty body": (b"", ctype),
        "garbage": (bytes(range(256)) * 8, ctype),
        "missing a": (multipart({"b": ("b.png", b)}, boundary="bnd")[0], ctype),
        "missing b": (multipart({"a": ("a.png", a)}, boundary="bnd")[0], ctype),
        "a as a text field": (multipart({"a": (None, a[:10]), "b": ("b.png", b)}, boundary="bnd")[0], ctype),
        "a file in an option field": (multipart({"a": ("a.png", a), "b": ("b.png", b), "color": ("c.txt", b"gray")},
                                                boundary="bnd")[0], ctype),
        "a given twice": (dup, ctype),
        "an option given twice": (twice, ctype),
        "too many fields": (multipart({"a": ("a.png", a), "b": ("b.png", b),
                                       **{f"f{i}": (None, b"1") for i in range(20)}}, boundary="bnd")[0], ctype),
        "unknown field": (multipart({"a": ("a.png", a), "b": ("b.png", b), "colour": (None, b"gray")},
                                    boundary="bnd")[0], ctype),
    }


MALFORMED = ["no boundary", "another boundary", "truncated body", "no closing boundary", "empty body", "garbage",
             "missing a", "missing b", "a as a text field", "a file in an option field", "a given twice",
             "an option given twice", "too many fields", "unknown field"]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_multipart_is_400(server, pair, case):
    url, _ = server
    body, ctype = _malformed(*pair)[case]
    err = one_line_json(_post_raw(url, body, ctype), 400)
    assert err["code"] in ("bad_request", "missing_file", "bad_option"), err
    healthy(url)


CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", None,
                 "multipart/mixed; boundary=bnd", "image/png"]


@pytest.mark.parametrize("ctype", CONTENT_TYPES)
def test_wrong_content_types_are_415(server, pair, ctype):
    url, _ = server
    body, _ = multipart({"a": ("a.png", pair[0]), "b": ("b.png", pair[1])}, boundary="bnd")
    err = one_line_json(_post_raw(url, body, ctype), 415, "unsupported_media_type")
    assert "multipart/form-data" in err["error"]
    healthy(url)


HUGE = {
    "100 KB option value": {"color": (None, b"g" * 100_000)},
    "10 KB file name": {"a": ("n" * 10_000 + ".png", "A")},
    "10 KB field name": {"x" * 10_000: (None, b"1")},
    "option value of binary junk": {"normalize": (None, bytes(range(1, 256)))},
}


@pytest.mark.parametrize("extra", HUGE.values(), ids=HUGE.keys())
def test_huge_field_values_are_refused_briefly(server, pair, extra):
    url, _ = server
    fields: dict[str, tuple[str | None, bytes]] = {"a": ("a.png", pair[0]), "b": ("b.png", pair[1])}
    for k, (fn, v) in extra.items():
        fields[k] = (fn, pair[0] if v == "A" else v)
    body, ctype = multipart(fields)
    r = _post_raw(url, body, ctype)
    if "file name" in str(extra.keys()) or r.status_code == 200:  # a long file name is legal
        assert r.status_code == 200 and len(r.headers["content-disposition"]) < 400
    else:
        one_line_json(r, 400)
    healthy(url)


BAD_OPTIONS = {
    "task": ("xyz", "task='xyz'"), "color": ("sepia", "color='sepia'"), "resize": ("maybe", "resize='maybe'"),
    "format": ("jpeg", "format='jpeg'"), "normalize": ("zscore", "normalize='zscore'"),
    "chroma": ("purple", "chroma='purple'"),
}


@pytest.mark.parametrize("field", BAD_OPTIONS)
def test_bad_option_values_name_the_field(server, pair, field):
    url, _ = server
    value, says = BAD_OPTIONS[field]
    err = one_line_json(fuse(url, *pair, data={field: value}), 400, "bad_option")
    assert says in err["error"] and err["detail"] == {"field": field} and "--" not in err["error"]
    healthy(url)


# ------------------------------------------------------------------------------------------- bad images, bombs
def _bmp_header(width: int, height: int) -> bytes:
    import struct

    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0,
                                                                     2835, 2835, 0, 0)


def _jpeg_header(width: int, height: int) -> bytes:
    import struct

    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    return b"\xff\xd8\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


BOMBS = {
    "png 100000x100000 header": lambda: png_header_only(100_000, 100_000),
    "png 2000x1000 header": lambda: png_header_only(2000, 1000),
    "bmp 30000x30000 header": lambda: _bmp_header(30_000, 30_000),
    "jpeg 60000x60000 header": lambda: _jpeg_header(60_000, 60_000),
    "radiance hdr 20000x20000 header": lambda: (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n"
                                                + b"\x02\x02\x4e\x20" + bytes(4000)),
    "pfm 20000x20000 header": lambda: b"PF\n20000 20000\n-1.0\n" + bytes(4000),
    "pgm 20000x20000 header": lambda: b"P5\n20000 20000\n255\n" + bytes(4000),
}


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS.keys())
@pytest.mark.parametrize("field", ["a", "b"])
def test_image_bombs_get_413(server, pair, bomb, field):
    url, _ = server
    a, b = (bomb(), pair[1]) if field == "a" else (pair[0], bomb())
    err = one_line_json(fuse(url, a, b), 413, "image_too_large")
    assert err["detail"]["field"] == field and f"this server's limit of {MAX_PIXELS:,} pixels" in err["error"]
    assert "--" not in err["error"] and "/tmp" not in err["error"]
    healthy(url)


def test_a_real_image_over_the_pixel_limit_is_413(server, pair, tmp_path):
    url, _ = server
    big = write_image(tmp_path / "big.png", np.zeros((1001, 1000)), bit_depth=8).read_bytes()  # 1,001,000 px
    err = one_line_json(fuse(url, big, big), 413, "image_too_large")
    assert "1000x1001 pixels" in err["error"]
    healthy(url)


NOT_IMAGES = {
    "empty file": b"",
    "text": b"hello, this is not an image\n",
    "truncated png": None,
    "html": b"<html><body>x</body></html>",
    "png signature only": b"\x89PNG\r\n\x1a\n",
}


@pytest.mark.parametrize("content", NOT_IMAGES.values(), ids=NOT_IMAGES.keys())
def test_files_that_are_not_images_are_400(server, pair, content):
    url, _ = server
    content = pair[1][: len(pair[1]) // 2] if content is None else content
    err = one_line_json(fuse(url, pair[0], content), 400, "bad_input")
    assert err["error"].startswith("b (b.png)") and "/tmp" not in err["error"]
    healthy(url)


def test_sizes_differ_names_the_resize_field(server, pair, tmp_path):
    url, _ = server
    small = write_image(tmp_path / "s.png", np.zeros((12, 16)), bit_depth=8).read_bytes()
    err = one_line_json(fuse(url, pair[0], small), 400, "size_mismatch")
    assert "send resize=true" in err["error"] and "--resize" not in err["error"]
    assert err["detail"] == {"a": "32x24", "b": "16x12"}
    assert fuse(url, pair[0], small, data={"resize": "true"}).status_code == 200
    healthy(url)


# ------------------------------------------------------------------------------------------- paths, methods, floods
PATHS = {
    "GET /api/fuse": ("GET", "/api/fuse", 405),
    "PUT /api/fuse": ("PUT", "/api/fuse", 405),
    "unknown path": ("GET", "/nope", 404),
    "traversal out of static": ("GET", "/static/../app.py", 404),
    "encoded traversal": ("GET", "/static/%2e%2e/app.py", 404),
    "favicon": ("GET", "/favicon.ico", 200),
}


@pytest.mark.parametrize("method, path, status", PATHS.values(), ids=PATHS.keys())
def test_methods_and_paths(server, method, path, status):
    url, port = server
    answer, _ = raw(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]
    if status != 200:
        assert b'"error"' in answer
    healthy(url)


@pytest.mark.slow
def test_a_flood_of_fusions_gets_only_200_or_503(server, pair):
    url, _ = server
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        code = fuse(url, *pair).status_code
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIVENESS)
    assert len(statuses) == 24 and set(statuses) <= {200, 503} and 200 in statuses
    healthy(url)


def test_a_flood_of_connections_leaves_health_answering(server):
    url, port = server
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]  # idle connections
    try:
        assert httpx.get(url + "/api/health", timeout=LIVENESS).status_code == 200
    finally:
        for s in socks:
            s.close()
    healthy(url)


def test_garbage_request_line(server):
    url, port = server
    answer, _ = raw(port, b"\x00\x01\x02 NOT HTTP\r\n\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    healthy(url)


# ------------------------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.slow
def test_signal_during_an_upload_and_a_fusion_stops_the_server(tiny_weights, pair, sig):
    proc, url = start_server(tiny_weights, "--upload-timeout", "100", "--min-upload-rate", "0")
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:  # an upload that never ends
        body, ctype = multipart({"a": ("a.png", pair[0])})
        s.sendall(f"POST /api/fuse HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 100000\r\n\r\n"
                  .encode() + body[:100])
        deadline = time.monotonic() + LIVENESS
        while httpx.get(url + "/api/health").json()["uploads"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=LIVENESS)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 130
    output = proc.stdout.read() if proc.stdout else ""
    assert "Traceback" not in output and output.strip().endswith("cddfuse serve: interrupted"), output


def test_port_in_use_is_one_line_exit_1(server, tiny_weights):
    import os
    import sys

    from .test_serve_browser import ROOT

    _, port = server
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "serve", "--weights", str(tiny_weights),
                        "--port", str(port)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "http://" not in p.stderr and p.stdout == ""
    assert p.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}: the port is in use" in p.stderr


def test_health_and_info_are_json(server):
    url, _ = server
    info = httpx.get(url + "/api/info", headers=AUTH).json()
    assert info["max_upload"] == LIMIT and info["max_pixels"] == MAX_PIXELS and info["upload_timeout"] == 2
    assert json.loads(httpx.get(url + "/api/openapi.json").text)["paths"]["/api/fuse"]["post"]["responses"]["408"]
