"""The ``cddfuse serve`` web application: a Starlette app with a static page and a small JSON/HTTP API.

Endpoints (schema at ``/api/openapi.json``):

- ``POST /api/fuse`` -- multipart ``a``, ``b`` (files) and options -> the fused image bytes;
- ``GET /api/health`` -- liveness (never needs the token);
- ``GET /api/info`` -- task, weights provenance, version, the methods offered (``cddfuse``, ``lite``);
- ``GET /`` -- the page (``static/index.html``); ``/favicon.ico``.

Errors are JSON ``{"error": "...", "code": "..."}`` (some with ``"detail"``): 400 bad input, 401
missing/wrong bearer token, 408 upload too slow, 413 upload or image too large, 503 busy
(``Retry-After``) or stopping. Messages name the API's fields (``resize=true``); the page turns the
codes it knows into words about its own controls. One model is kept in memory (and CDDFuse-lite
beside it when its weights are there: the ``method`` field picks it).


How a request is handled, so that no client can hold the server:

1. the upload is read to a per-request temporary folder (on disk, so memory stays small) within
   ``upload_timeout`` seconds and at ``min_upload_rate`` bytes per second or faster (averaged from the
   start of the body, after a grace of :data:`UPLOAD_GRACE` seconds); a slower client gets 408 and
   its connection is closed. An upload holds no fusion slot;
2. only a complete, valid request takes one of ``queue_size`` slots (else 503 ``busy``); fusions run
   one at a time in a worker thread;
3. while it waits or runs, a request whose client goes away is cancelled (the engine stops between
   two tiles), and :meth:`ServeState.stop` (called by ``cddfuse serve`` on SIGTERM/SIGINT) cancels
   every request;
4. an error answered before the body was read (413, 401, 503) is sent first, then the rest of the
   body is read and discarded for at most :data:`DRAIN_SECONDS` / :data:`DRAIN_BYTES` before the
   connection is closed, so that clients that send their whole body before reading (Python's
   urllib, requests) read the answer instead of a broken pipe.

The temporary folder is always removed. Needs the ``serve`` extra (``pip install cddfuse[serve]``);
imported only by ``cddfuse serve``.
"""
from __future__ import annotations

import asyncio
import hmac
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .. import __version__
from ..errors import CDDFuseError, InputTooLarge, SizeMismatch
from ..options import (
    CHROMA_MODES,
    COLOR_MODES,
    DEFAULT_MAX_PIXELS,
    METHODS,
    NETWORK_METHODS,
    NORMALIZE_MODES,
    TASKS,
    check_choice,
    parse_size,  # the one size grammar (re-exported: cddfuse.serve.app.parse_size)
)

if TYPE_CHECKING:  # the serve extra is imported inside create_app (every module imports without extras)
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from ..fusion import Fuser

__all__ = ["create_app", "parse_size", "check_token", "ServeState", "FORMATS", "DEFAULT_MAX_UPLOAD",
           "DEFAULT_UPLOAD_TIMEOUT", "DEFAULT_MIN_UPLOAD_RATE", "UPLOAD_GRACE", "DRAIN_SECONDS", "DRAIN_BYTES",
           "OPENAPI"]

STATIC = Path(__file__).resolve().parent / "static"
#: Output formats of ``POST /api/fuse``: name -> (extension, bit depth, content type).
FORMATS: dict[str, tuple[str, int, str]] = {
    "png": (".png", 8, "image/png"),
    "png16": (".png", 16, "image/png"),
    "npy": (".npy", 8, "application/x-npy"),
}
DEFAULT_MAX_UPLOAD = 50 * 2**20
#: Seconds a whole upload may take (``--upload-timeout``).
DEFAULT_UPLOAD_TIMEOUT = 120.0
#: Bytes per second an upload must average (``--min-upload-rate``), after :data:`UPLOAD_GRACE`.
DEFAULT_MIN_UPLOAD_RATE = 10 * 2**10
#: Seconds at the start of an upload before the minimum rate applies.
UPLOAD_GRACE = 5.0
#: After an early error answer, the unread rest of a body is discarded for at most this long...
DRAIN_SECONDS = 5.0
#: ... and at most this many bytes, then the connection is closed.
DRAIN_BYTES = 64 * 2**20
_CHUNK = 64 * 1024
_POLL = 0.2  # seconds between checks of the stop and cancel flags while waiting
_UPLOAD_FIELDS = ("a", "b")
_OPTION_FIELDS = ("task", "method", "color", "chroma", "normalize", "resize", "format")
_MAX_FIELD_BYTES = 4096  # an option's value (the longest legal one is a few characters)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def check_token(token: str | None) -> str | None:
    """The bearer token as given, or ``ValueError`` when it cannot protect anything: empty, or with
    spaces or characters other than printable ASCII (an HTTP header could not carry it intact).

    >>> check_token("s3cret-token"), check_token(None)
    ('s3cret-token', None)
    >>> check_token("  ")
    Traceback (most recent call last):
    ...
    ValueError: the token is empty or blank: anyone could use the server; give a secret ...
    """
    if token is None:
        return None
    if not token.strip():
        raise ValueError("the token is empty or blank: anyone could use the server; give a secret "
                         "(e.g. openssl rand -hex 16)")
    if not all("!" <= c <= "~" for c in token):
        raise ValueError("the token may hold printable ASCII characters only, without spaces "
                         "(e.g. openssl rand -hex 16)")
    return token


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "code": code}`` with ``status``
    (and ``"detail"`` when given: facts the page words for its own controls)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.detail = detail

    def response(self) -> JSONResponse:
        from starlette.responses import JSONResponse

        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.detail:
            body["detail"] = self.detail
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class _ClientGone(Exception):
    """The client closed its connection; nothing can be answered."""


class ServeState:
    """What the app shares between requests: uploads and fusions now, and the stop switch.

    :meth:`stop` may be called from a signal handler or another thread: it only sets events.
    """

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.admitted = 0  # fusions admitted (waiting or running)
        self.uploads = 0  # bodies being read
        self.stopping = threading.Event()
        self._cancels: set[threading.Event] = set()
        self._guard = threading.Lock()
        self.lock: asyncio.Lock | None = None  # made in the app's event loop

    def stop(self) -> None:
        """Refuse new fusions and cancel every upload, waiting and running fusion (between two tiles)."""
        self.stopping.set()
        with self._guard:
            for event in self._cancels:
                event.set()

    def new_cancel(self) -> threading.Event:
        """An event for one request; set at once when the server is already stopping."""
        event = threading.Event()
        with self._guard:
            self._cancels.add(event)
        if self.stopping.is_set():
            event.set()
        return event

    def drop_cancel(self, event: threading.Event) -> None:
        with self._guard:
            self._cancels.discard(event)


def drain_unread_body(app: ASGIApp, seconds: float = DRAIN_SECONDS, max_bytes: int = DRAIN_BYTES,
                      stopping: threading.Event | None = None) -> ASGIApp:
    """ASGI middleware: when a response is complete but the request's body was not read to its end,
    send the response, then read and discard the rest of the body for at most ``seconds`` and
    ``max_bytes`` before ending it; the connection is then closed (``Connection: close``). Clients that
    write their whole body before reading then get the answer (e.g. 413) instead of a reset
    connection. A 408 (too slow) is not drained, nor anything once ``stopping`` is set: the connection
    is closed at once."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        body_done = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers  # none
        drain = False

        async def tracked_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal drain
            if message["type"] == "http.response.start" and not body_done:  # the connection cannot be reused
                drain = message.get("status") != 408 and not (stopping is not None and stopping.is_set())
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            if drain and message["type"] == "http.response.body" and not message.get("more_body", False):
                await send(dict(message, more_body=True))  # the client has the whole answer now
                await _discard_body(receive, seconds, max_bytes)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await app(scope, tracked_receive, tracked_send)

    return wrapped


async def _discard_body(receive: Receive, seconds: float, max_bytes: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    seen = 0
    pending: asyncio.Future[Message] | None = None
    try:
        while seen <= max_bytes:
            pending = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, deadline - loop.time()))
            if not done:
                return
            message = pending.result()
            pending = None
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            seen += len(message.get("body", b""))
    finally:
        if pending is not None:
            pending.cancel()


async def read_body(receive: Receive, out: IO[bytes], *, limit: int, timeout: float, min_rate: float,
                    cancel: threading.Event) -> int:
    """Copy the request body from ASGI ``receive`` to ``out``; returns its size in bytes.

    Raises:
        ApiError: 413 past ``limit`` bytes; 408 when it takes longer than ``timeout`` seconds or
            averages less than ``min_rate`` bytes/s after :data:`UPLOAD_GRACE` seconds (0: no minimum);
            503 when ``cancel`` is set (the server stops).
        _ClientGone: the client went away.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = 0
    pending: asyncio.Future[Message] | None = None
    try:
        while True:
            deadline = start + timeout
            if min_rate > 0:
                deadline = min(deadline, start + min(UPLOAD_GRACE, timeout) + total / min_rate)
            left = deadline - loop.time()
            if left <= 0:
                raise ApiError(408, "upload_too_slow",
                               f"the upload was too slow: {total} bytes in {loop.time() - start:.1f} s; this server "
                               f"needs the whole body within {timeout:g} s and at least {min_rate:g} bytes/s",
                               detail={"received": total, "timeout": timeout, "min_rate": min_rate})
            if cancel.is_set():
                raise ApiError(503, "stopping", "the server is stopping; retry later", {"Retry-After": "5"})
            if pending is None:
                pending = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({pending}, timeout=min(left, _POLL))
            if not done:
                continue
            message = pending.result()
            pending = None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            out.write(chunk)
            if not message.get("more_body", False):
                return total
    finally:
        if pending is not None:
            pending.cancel()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"the upload is larger than this server's limit of {limit} bytes "
                    f"({_human(limit)}); send smaller images", detail={"limit": limit})


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ApiError(400, "bad_option", f"{name}={_short(text)}: expected true or false", detail={"field": name})


def _choice(name: str, text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise ApiError(400, "bad_option", f"{name}={_short(text)}: choose one of {', '.join(choices)}",
                       detail={"field": name})
    return text


def _short(text: str, n: int = 40) -> str:
    """``repr`` of a client's value, cut to ``n`` characters (a huge field is not echoed whole)."""
    return repr(text) if len(text) <= n else repr(text[:n]) + f"... ({len(text)} characters)"


def _safe_suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp") else ".img"


def _fuser_info(fuser: Fuser) -> dict[str, Any]:
    info = fuser.info
    weights: dict[str, Any] | None = None
    if info is not None:
        weights = {"task": info.task, "residual": info.residual, "normalize": info.normalize,
                   "source_format": info.source_format, "file": Path(info.path).name if info.path else None,
                   "provenance": _jsonable(info.provenance)}
    return {"task": fuser.task, "method": fuser.method, "residual": fuser.residual, "device": str(fuser.device),
            "weights": weights, "version": __version__}


def _lite_beside(main: Fuser, lite_weights: str | Path | None) -> Fuser | None:
    """CDDFuse-lite for the server's task beside an exact model: ``lite_weights``, else the bundled student
    of the task; ``None`` when this installation has none (the method is then not offered)."""
    from ..fusion import Fuser
    from ..models.pretrained import lite_pretrained_path

    if main.method != "cddfuse":
        return None
    if lite_weights is None:
        try:
            lite_weights = lite_pretrained_path(main.task)
        except CDDFuseError:
            return None
    options = main.options
    if options.tile is not None or options.max_memory is not None or options.precision != "fp32":
        options = options.replace(tile=None, max_memory=None, precision="fp32")  # the exact engine's own
    return Fuser(weights=lite_weights, task=main.task, method="lite", device=main.device, options=options)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _size_mismatch(size_a: str, size_b: str) -> ApiError:
    return ApiError(400, "size_mismatch", f"a and b differ in size ({size_a} vs {size_b}); register them first, "
                    "or send resize=true to resample b to the size of a", detail={"a": size_a, "b": size_b})


def _image_too_large(field: str, name: str, size: str, limit: int | None) -> ApiError:
    return ApiError(413, "image_too_large", f"{field} ({name}): {size} pixels is more than this server's limit of "
                    f"{limit:,} pixels; send a smaller image",
                    detail={"field": field, "size": size, "limit": limit})


def create_app(
    fuser_factory: Callable[[], Fuser] | None = None,
    *,
    weights: str | Path | None = None,
    task: str | None = None,
    device: str = "auto",
    method: str = "cddfuse",
    lite_weights: str | Path | None = None,
    max_upload: int | str = DEFAULT_MAX_UPLOAD,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    token: str | None = None,
    queue_size: int = 4,
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
    min_upload_rate: float = DEFAULT_MIN_UPLOAD_RATE,
) -> Starlette:
    """Build the web application.

    Args:
        fuser_factory: makes the one :class:`~cddfuse.fusion.Fuser` the app keeps (called once, now);
            default ``Fuser(weights=weights, task=task, method=method, device=device, max_pixels=max_pixels)``.
        weights, task, device, method: for the default factory (``method``: ``cddfuse`` or ``lite``).
        lite_weights: CDDFuse-lite weights offered beside an exact model (requests choose with the
            ``method`` field); default: the bundled student of the task, when installed.
        max_upload: largest request body (``50M``, or bytes); larger uploads get 413 while they arrive.
        max_pixels: largest image (width x height, read from its header before decoding); larger: 413.
        token: when set, ``/api/fuse`` and ``/api/info`` need ``Authorization: Bearer <token>`` (401);
            empty, blank or non-ASCII tokens are refused (``ValueError``, see :func:`check_token`).
        queue_size: fusions admitted at once (running + waiting); more get 503 with ``Retry-After``.
        upload_timeout: seconds the whole body may take to arrive (408 after).
        min_upload_rate: bytes per second the body must average after :data:`UPLOAD_GRACE` seconds (408
            below; 0: no minimum).

    The app's :class:`ServeState` is ``app.state.serve``; ``app.state.serve.stop()`` cancels all work.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from ..engine import FusionCancelled

    if fuser_factory is None:
        def fuser_factory() -> Fuser:
            from ..fusion import Fuser

            return Fuser(weights=weights, task=check_choice("task", task, TASKS) if task is not None else None,
                         method=check_choice("method", method, METHODS), device=device, max_pixels=max_pixels)
    limit = parse_size(max_upload)
    if queue_size < 1:
        raise ValueError(f"queue_size must be at least 1, got {queue_size}")
    if not upload_timeout > 0 or upload_timeout == float("inf"):
        raise ValueError(f"upload_timeout must be a positive number of seconds, got {upload_timeout}")
    if not min_upload_rate >= 0 or min_upload_rate == float("inf"):
        raise ValueError(f"min_upload_rate must be a number of bytes per second (0: none), got {min_upload_rate}")
    token = check_token(token)
    fuser = fuser_factory()
    if fuser.max_pixels != max_pixels:  # the server's limit, whatever the factory chose
        fuser = fuser.with_options(max_pixels=max_pixels)
    state = ServeState(queue_size)
    fusers: dict[str, Fuser] = {fuser.method: fuser}
    lite = _lite_beside(fuser, lite_weights)
    if lite is not None:
        fusers["lite"] = lite

    def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong token (send the header Authorization: Bearer "
                           "<token>)", {"WWW-Authenticate": "Bearer"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "stopping" if state.stopping.is_set() else "ok", "task": fuser.task,
                             "auth": token is not None, "busy": state.admitted, "uploads": state.uploads,
                             "queue": queue_size, "methods": list(fusers)})

    async def info(request: Request) -> Response:
        authorize(request)
        return JSONResponse(_fuser_info(fuser) | {
            "max_upload": limit, "max_pixels": max_pixels, "queue": queue_size, "upload_timeout": upload_timeout,
            "min_upload_rate": min_upload_rate, "methods": list(fusers),
            "method_weights": {name: _fuser_info(f)["weights"] for name, f in fusers.items()}})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def favicon(request: Request) -> Response:
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    async def fuse(request: Request) -> Response:
        if state.stopping.is_set():
            raise ApiError(503, "stopping", "the server is stopping; retry later", {"Retry-After": "5"})
        authorize(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _too_large(limit)
        kind = request.headers.get("content-type", "")
        if kind.split(";")[0].strip().lower() != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type", f"the request is {_short(kind) if kind else 'untyped'}; "
                           "send multipart/form-data with the image files a and b (and options as text fields)")
        cancel = state.new_cancel()
        tmp = Path(tempfile.mkdtemp(prefix="cddfuse-serve-"))
        try:
            return await _fuse_request(request, tmp, cancel)
        except _ClientGone:
            return Response(status_code=204)  # nobody reads it
        finally:
            state.drop_cancel(cancel)
            shutil.rmtree(tmp, ignore_errors=True)

    async def _fuse_request(request: Request, tmp: Path, cancel: threading.Event) -> Response:
        # 1. the upload, to disk; no slot is held while it arrives
        state.uploads += 1
        try:
            with open(tmp / "body", "wb") as out:
                await read_body(request.receive, out, limit=limit, timeout=upload_timeout,
                                min_rate=min_upload_rate, cancel=cancel)
        finally:
            state.uploads -= 1
        watch = asyncio.ensure_future(request.receive())  # the body is read: the next message is a disconnect

        def gone(task: asyncio.Future[Message]) -> None:
            if not task.cancelled() and task.exception() is None and task.result()["type"] == "http.disconnect":
                cancel.set()

        watch.add_done_callback(gone)
        try:
            paths, names, options = await _parse(request, tmp)
            job, resize, fmt = _options(options)
            # 2. a slot, only for a complete and valid request
            if state.admitted >= queue_size:
                raise ApiError(503, "busy", f"the server is busy ({queue_size} fusions queued); retry shortly",
                               {"Retry-After": "2"})
            state.admitted += 1
            try:
                return await _run(job, paths, names, resize, fmt, tmp, cancel)
            finally:
                state.admitted -= 1
        finally:
            watch.cancel()

    async def _parse(request: Request, tmp: Path) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
        body = tmp / "body"

        async def replay() -> Message:
            chunk = reader.read(_CHUNK)
            return {"type": "http.request", "body": chunk, "more_body": len(chunk) == _CHUNK}

        with open(body, "rb") as reader:
            try:
                form = await Request(request.scope, replay).form(
                    max_files=len(_UPLOAD_FIELDS), max_fields=len(_OPTION_FIELDS), max_part_size=_MAX_FIELD_BYTES)
            except HTTPException as e:  # Starlette's multipart errors (not multipart, too many fields...)
                raise ApiError(400, "bad_request", f"{e.detail} (send multipart/form-data with the image files a "
                               f"and b and the options {', '.join(_OPTION_FIELDS)})") from None
        try:
            paths: dict[str, Path] = {}
            names: dict[str, str] = {}
            for field in _UPLOAD_FIELDS:
                upload = form.get(field)
                if not isinstance(upload, UploadFile):
                    raise ApiError(400, "missing_file", f"missing the file field {field!r} (multipart/form-data "
                                   "with the two images a and b)", detail={"field": field})
                names[field] = (upload.filename or field)[:200]
                path = tmp / (field + _safe_suffix(upload.filename))
                with open(path, "wb") as out:
                    while chunk := await upload.read(_CHUNK):
                        out.write(chunk)
                paths[field] = path
            options: dict[str, str] = {}
            for k, v in form.multi_items():
                if k in _UPLOAD_FIELDS:
                    continue
                if not isinstance(v, str):
                    raise ApiError(400, "bad_option", f"{_short(k)}: expected a text field, got a file",
                                   detail={"field": k})
                if k in options:
                    raise ApiError(400, "bad_option", f"{_short(k)} is given twice", detail={"field": k})
                options[k] = v
        finally:
            await form.close()
        (tmp / "body").unlink()
        unknown = sorted(set(options) - set(_OPTION_FIELDS))
        if unknown:
            raise ApiError(400, "bad_option", f"unknown field(s) {', '.join(_short(u) for u in unknown)}; the options "
                           "are " + ", ".join(_OPTION_FIELDS), detail={"field": unknown[0][:40]})
        return paths, names, options

    def _options(options: dict[str, str]) -> tuple[Fuser, bool, str]:
        req_task = options.get("task", fuser.task) or fuser.task
        _choice("task", req_task, TASKS)
        if req_task != fuser.task:
            raise ApiError(400, "wrong_task", f"task={req_task!r}: this server runs the {fuser.task} model; leave "
                           f"task out, or send task={fuser.task}", detail={"field": "task", "server": fuser.task})
        req_method = options.get("method") or fuser.method
        if req_method not in fusers:
            _choice("method", req_method, NETWORK_METHODS)
            raise ApiError(400, "method_unavailable", f"method={req_method!r}: this server offers "
                           f"{', '.join(fusers)} (no {req_method} weights for task {fuser.task} are loaded); leave "
                           "method out, or send one of those", detail={"field": "method", "server": list(fusers)})
        fmt = _choice("format", options.get("format", "png") or "png", tuple(FORMATS))
        job = fusers[req_method].with_options(  # shares the model; this request's options
            color=_choice("color", options.get("color", fuser.color) or fuser.color, COLOR_MODES),
            chroma=_choice("chroma", options.get("chroma") or "auto", CHROMA_MODES),
            normalize=_choice("normalize", options.get("normalize", fuser.normalize) or fuser.normalize,
                              NORMALIZE_MODES))
        return job, _bool("resize", options.get("resize", "false")), fmt

    async def _acquire(lock: asyncio.Lock, cancel: threading.Event) -> None:
        """Wait for the one fusion lock; give up (lock not held) when ``cancel`` is set."""
        acquiring = asyncio.ensure_future(lock.acquire())
        while not acquiring.done():
            await asyncio.wait({acquiring}, timeout=_POLL)
            if not acquiring.done() and cancel.is_set():
                acquiring.cancel()
                try:
                    await acquiring
                except asyncio.CancelledError:
                    pass
                if not acquiring.cancelled():  # it got the lock as it was cancelled
                    lock.release()
                raise FusionCancelled("cancelled while waiting")

    def _cancelled() -> Exception:
        if state.stopping.is_set():
            return ApiError(503, "stopping", "the server is stopping; retry later", {"Retry-After": "5"})
        return _ClientGone()

    async def _run(job: Fuser, paths: dict[str, Path], names: dict[str, str], resize: bool, fmt: str, tmp: Path,
                   cancel: threading.Event) -> Response:
        ext, bit_depth, content_type = FORMATS[fmt]

        def describe(e: CDDFuseError) -> str:
            text = str(e)
            for field, path in paths.items():
                text = text.replace(str(path), f"{field} ({names[field]})")
            return text.replace("resize=True", "resize=true")

        def run() -> bytes:
            from ..io.image import probe_image, write_image

            headers: dict[str, Any] = {}
            for field, path in paths.items():  # sizes from the headers, before anything is decoded
                try:
                    headers[field] = probe_image(path, max_pixels)
                except InputTooLarge as e:
                    raise _image_too_large(field, names[field], e.size, e.limit) from None
            ha, hb = headers["a"], headers["b"]
            if not resize and ha and hb and (ha.width, ha.height) != (hb.width, hb.height):
                raise _size_mismatch(ha.size, hb.size)
            if cancel.is_set():
                raise FusionCancelled("cancelled")
            image = job.fuse(paths["a"], paths["b"], resize=resize, cancel=cancel)
            out = write_image(tmp / ("fused" + ext), image, bit_depth=bit_depth)
            return out.read_bytes()

        if state.lock is None:  # made in the app's event loop
            state.lock = asyncio.Lock()
        try:
            await _acquire(state.lock, cancel)  # one fusion at a time; the others wait here (at most queue_size)
        except FusionCancelled:
            raise _cancelled() from None
        try:
            try:
                data = await run_in_threadpool(run)
            except asyncio.CancelledError:  # the server gave up on this request: stop the thread's work too
                cancel.set()
                raise
        except FusionCancelled:
            raise _cancelled() from None
        except SizeMismatch as e:
            raise _size_mismatch(e.size_a, e.size_b) from None
        except InputTooLarge as e:
            field = next((f for f, p in paths.items() if e.path == str(p)), "a")
            raise _image_too_large(field, names[field], e.size, e.limit) from None
        except CDDFuseError as e:
            raise ApiError(400, "bad_input", describe(e)) from None
        except MemoryError:
            raise ApiError(413, "out_of_memory", "out of memory fusing this pair; send smaller images") from None
        finally:
            state.lock.release()
        stem = Path(names["a"]).stem or "fused"
        return Response(data, media_type=content_type,
                        headers={"Content-Disposition": f'attachment; filename="{_ascii(stem)}-fused{ext}"'})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": str(exc.detail), "code": f"http_{exc.status_code}"},
                            status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        # the traceback goes to the server's log (uvicorn); the client gets one line, no internals
        import logging

        logging.getLogger("cddfuse.serve").error("unexpected error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log",
                             "code": "internal"}, status_code=500)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/health", health),
        Route("/api/info", info),
        Route("/api/openapi.json", openapi),
        Route("/api/fuse", fuse, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes,
                    middleware=[Middleware(_DrainMiddleware, stopping=state.stopping)],
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.fuser = fuser
    app.state.serve = state
    app.state.fusers = fusers
    return app


class _DrainMiddleware:
    """:func:`drain_unread_body` as a Starlette middleware class."""

    def __init__(self, app: ASGIApp, stopping: threading.Event | None = None) -> None:
        self.app = drain_unread_body(app, stopping=stopping)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _ascii(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text if ord(c) < 128) or "fused"


def _openapi() -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}

    def err(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": error}}}

    return {
        "openapi": "3.0.3",
        "info": {"title": "cddfuse serve", "version": __version__,
                 "description": "CDDFuse image fusion over HTTP. When the server runs with --token, /api/fuse "
                                "and /api/info need 'Authorization: Bearer <token>'."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error", "code"],
                                  "properties": {"error": {"type": "string"}, "code": {"type": "string"},
                                                 "detail": {"type": "object",
                                                            "description": "facts about the error, e.g. the field"}}}},
        },
        "paths": {
            "/api/fuse": {"post": {
                "summary": "Fuse two images",
                "security": [{"bearer": []}, {}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["a", "b"],
                    "properties": {
                        "a": {"type": "string", "format": "binary",
                              "description": "infrared / functional image (IR, CT, PET, SPECT)"},
                        "b": {"type": "string", "format": "binary", "description": "visible / MRI image"},
                        "task": {"type": "string", "enum": list(TASKS),
                                 "description": "must be the server's task (default)"},
                        "method": {"type": "string", "enum": list(NETWORK_METHODS),
                                   "description": "cddfuse (the exact network) or lite (CDDFuse-lite); one of the "
                                                  "methods /api/info lists (default: the server's)"},
                        "color": {"type": "string", "enum": list(COLOR_MODES), "default": "auto"},
                        "chroma": {"type": "string", "enum": list(CHROMA_MODES), "default": "auto"},
                        "normalize": {"type": "string", "enum": list(NORMALIZE_MODES), "default": "minmax"},
                        "resize": {"type": "boolean", "default": False,
                                   "description": "resample b to the size of a when they differ"},
                        "format": {"type": "string", "enum": list(FORMATS), "default": "png",
                                   "description": "png (8-bit), png16 (16-bit), npy (float32 in [0, 1])"},
                    }}}}},
                "responses": {
                    "200": {"description": "the fused image",
                            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                        "application/x-npy": {"schema": {"type": "string", "format": "binary"}}}},
                    "400": err("bad input: unreadable image (bad_input), sizes differ (size_mismatch: send "
                               "resize=true), bad or unknown option (bad_option), malformed multipart "
                               "(bad_request), a or b missing (missing_file), task not the server's (wrong_task)"),
                    "401": err("missing or wrong bearer token (unauthorized)"),
                    "408": err("the upload was slower than the server's minimum rate or time (upload_too_slow)"),
                    "413": err("upload larger than the server's limit (upload_too_large), or an image with more "
                               "pixels than its limit (image_too_large); the limits are in /api/info"),
                    "415": err("the body is not multipart/form-data (unsupported_media_type)"),
                    "503": err("busy: the queue is full (busy), or the server is stopping (stopping); retry "
                               "after the Retry-After seconds"),
                },
            }},
            "/api/health": {"get": {"summary": "Liveness", "responses": {"200": {
                "description": "status (ok, stopping), task, whether a token is needed (auth), fusions admitted "
                               "now (busy), uploads being read (uploads), queue size",
                "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/api/info": {"get": {"summary": "Model and server facts", "security": [{"bearer": []}, {}],
                                  "responses": {"200": {"description": "task, weights provenance, version, limits",
                                                        "content": {"application/json": {"schema": {
                                                            "type": "object"}}}},
                                                "401": err("missing or wrong bearer token")}}},
        },
    }


#: The OpenAPI 3 description of the API, served at ``/api/openapi.json``.
OPENAPI = _openapi()
