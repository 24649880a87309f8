"""The authors' weights by name (cddfuse.models.hub) against a local HTTP server: download, verification,
cache, offline use and every refusal (HTTP error, server down, cut short, wrong file, full disk)."""
from __future__ import annotations

import errno
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cddfuse import data
from cddfuse.cli.main import main
from cddfuse.errors import CDDFuseError
from cddfuse.models import hub
from cddfuse.models.weights import load_weights

FAKE = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()  # any content will do


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/ok/<file>``: the file; ``/short/<file>``: Content-Length of the whole, half the bytes, then the
    connection closes; ``/error/<file>``: HTTP 500. Files come from the server's ``files`` dict."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        mode, _, name = self.path.strip("/").partition("/")
        body = self.server.files.get(name)  # type: ignore[attr-defined]
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        if mode == "error" or body is None:
            self.send_error(500 if body is not None else 404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if mode == "ok" else body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests = {}, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _base(srv: http.server.ThreadingHTTPServer, mode: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{mode}/"


def _closed_port_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/models/"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CDDFUSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def _publish(monkeypatch, srv, content: bytes, name: str = "authors-ivf") -> hub.HubWeights:
    """Serve ``content`` as ``name``'s file and make its git blob id the expected one."""
    real = hub.HUB[name]
    entry = hub.HubWeights(name, real.filename, hub.git_blob_id(content), real.description)
    monkeypatch.setitem(hub.HUB, name, entry)
    srv.files[entry.filename] = content
    return entry


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_git_blob_id_is_gits():
    # `printf 'hello\n' | git hash-object --stdin`
    assert hub.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert hub.git_blob_id(FAKE) == hashlib.sha1(b"blob 300000\0" + FAKE).hexdigest()


def test_published_names_and_ids():
    assert hub.names() == ("authors-ivf", "authors-mif")
    assert hub.HUB["authors-ivf"].filename == "CDDFuse_IVF.pth"
    assert hub.HUB["authors-ivf"].blob_id == "d2794226bd48961132111bceff89ce3c955b3985"
    assert hub.HUB["authors-mif"].filename == "CDDFuse_MIF.pth"
    assert hub.HUB["authors-mif"].blob_id == "072e39abce5979c0568ee510713c123c28160f12"
    assert hub.BASE_URL == ("https://raw.githubusercontent.com/Zhaozixiang1228/MMIF-CDDFuse/"
                            "fd8da1f39d8d403b7343e577bd5a30cba38c7b7b/models/")


def test_download_then_offline_from_the_cache(server, cache, monkeypatch, capsys):
    entry = _publish(monkeypatch, server, FAKE)
    monkeypatch.setenv(hub.URL_ENV, _base(server, "ok"))
    path = hub.fetch("authors-ivf")
    assert path == cache / "CDDFuse_IVF.pth" and path.read_bytes() == FAKE
    assert _cache_files(cache) == ["CDDFuse_IVF.pth"]  # no temporary file left
    err = capsys.readouterr().err
    assert f"downloading {_base(server, 'ok')}CDDFuse_IVF.pth" in err and "\r" not in err  # not a terminal
    assert server.requests == ["/ok/CDDFuse_IVF.pth"]
    monkeypatch.setenv(hub.URL_ENV, _closed_port_url())  # offline now
    assert hub.fetch("authors-ivf") == path and len(server.requests) == 1
    assert capsys.readouterr().err == ""
    assert entry.blob_id == hub.git_blob_id(path.read_bytes())


def test_a_damaged_cache_file_is_replaced(server, cache, monkeypatch):
    _publish(monkeypatch, server, FAKE)
    monkeypatch.setenv(hub.URL_ENV, _base(server, "ok"))
    path = hub.fetch("authors-ivf")
    path.write_bytes(FAKE[:-1] + b"x")
    monkeypatch.setenv(hub.URL_ENV, _closed_port_url())
    with pytest.raises(CDDFuseError, match="cannot download"):
        hub.fetch("authors-ivf", quiet=True)
    assert _cache_files(cache) == []  # the damaged file is not trusted, nor kept
    monkeypatch.setenv(hub.URL_ENV, _base(server, "ok"))
    assert hub.fetch("authors-ivf", quiet=True).read_bytes() == FAKE


def test_a_local_folder_or_file_url_as_mirror(tmp_path, cache, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "CDDFuse_MIF.pth").write_bytes(FAKE)
    monkeypatch.setitem(hub.HUB, "authors-mif", hub.HubWeights("authors-mif", "CDDFuse_MIF.pth",
                                                               hub.git_blob_id(FAKE), "test"))
    monkeypatch.setenv(hub.URL_ENV, str(mirror))
    assert hub.fetch("authors-mif", quiet=True).read_bytes() == FAKE
    (cache / "CDDFuse_MIF.pth").unlink()
    monkeypatch.setenv(hub.URL_ENV, mirror.as_uri())
    assert hub.fetch("authors-mif", quiet=True).read_bytes() == FAKE


@pytest.mark.parametrize("case", ["wrong file", "cut short", "HTTP 500", "server down", "missing file"])
def test_refusals_leave_nothing_in_the_cache(server, cache, monkeypatch, case):
    _publish(monkeypatch, server, FAKE)
    url, says = {
        "wrong file": (_base(server, "ok"), "is not the published CDDFuse_IVF.pth (git blob"),
        "cut short": (_base(server, "short"), "was cut short (150000 of 300000 bytes)"),
        "HTTP 500": (_base(server, "error"), "HTTP 500"),
        "server down": (_closed_port_url(), "Connection refused"),
        "missing file": (str(cache.parent / "no_mirror_here"), "No such file"),
    }[case]
    if case == "wrong file":
        server.files["CDDFuse_IVF.pth"] = FAKE[::-1]
    monkeypatch.setenv(hub.URL_ENV, url)
    with pytest.raises(CDDFuseError) as e:
        hub.fetch("authors-ivf", quiet=True)
    msg = e.value.cli_message()
    assert says in msg and "\n" not in msg
    assert "CDDFUSE_WEIGHTS_URL" in msg and "--weights PATH" in msg and "weights=PATH" in str(e.value)
    assert _cache_files(cache) == []


def test_full_disk_leaves_nothing(server, cache, monkeypatch):
    _publish(monkeypatch, server, FAKE)
    monkeypatch.setenv(hub.URL_ENV, _base(server, "ok"))

    def full(fd: int) -> None:  # the data did not fit: the disk reports it when it is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cddfuse.models.hub.os.fsync", full)
    with pytest.raises(CDDFuseError) as e:
        hub.fetch("authors-ivf", quiet=True)
    msg = e.value.cli_message()
    assert "No space left on device" in msg and "CDDFUSE_CACHE" in msg and "--weights PATH" in msg
    assert _cache_files(cache) == []


def test_the_cli_refuses_with_one_line_and_exit_1(server, cache, monkeypatch, tmp_path, capsys):
    _publish(monkeypatch, server, FAKE)
    monkeypatch.setenv(hub.URL_ENV, _base(server, "error"))
    assert main(["fuse", "--example", "tno", "--weights", "authors-ivf", "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cddfuse fuse: error: cannot download http://127.0.0.1:")
    assert "HTTP 500" in lines[0] and "--weights PATH" in lines[0]
    assert not (tmp_path / "x.png").exists() and _cache_files(cache) == []


@pytest.mark.slow
def test_the_reference_checkpoint_served_by_name(server, cache, monkeypatch, seed1_checkpoint, tmp_path):
    """The real loader gets the served authors'-format file: the same network as the file itself, and
    `--weights authors-ivf` fuses with it (task and residual from the published file name)."""
    content = seed1_checkpoint.read_bytes()
    _publish(monkeypatch, server, content)
    monkeypatch.setenv(hub.URL_ENV, _base(server, "ok"))
    model, info = load_weights("authors-ivf")
    ref, _ = load_weights(seed1_checkpoint)
    assert info.source_format == "official" and (info.task, info.residual) == ("ivf", "vis")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    out, out_ref = tmp_path / "hub.png", tmp_path / "file.png"
    common = ["--example", "tno", "--device", "cpu", "-q"]
    assert main(["fuse", *common, "--weights", "authors-ivf", "-o", str(out)]) == 0
    assert main(["fuse", *common, "--weights", str(cache / "CDDFuse_IVF.pth"), "-o", str(out_ref)]) == 0
    assert out.read_bytes() == out_ref.read_bytes()
    assert data.paths("tno")[0].exists() and len(server.requests) == 1  # downloaded once
