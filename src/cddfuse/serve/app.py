"""The ``cddfuse serve`` web application: a Starlette app with a static page and a small JSON/HTTP API.

Endpoints (schema at ``/api/openapi.json``):

- ``POST /api/fuse`` -- multipart ``a``, ``b`` (files) and options -> the fused image bytes;
- ``GET /api/health`` -- liveness (never needs the token);
- ``GET /api/info`` -- task, weights provenance, version, the methods offered (``cddfuse``, ``lite``);
- ``GET /`` -- the page (``static/index.html``).

Errors are JSON ``{"error": "...", "code": "..."}``: 400 bad input, 401 missing/wrong bearer token,
413 upload or image too large, 503 busy (``Retry-After``). One model is kept in memory (and CDDFuse-lite
beside it when its weights are there: the ``method`` field picks it); fusions run one at a time in a
worker thread, behind a bounded queue. Uploads go to a per-request temporary folder that
is always removed.

Needs the ``serve`` extra (``pip install cddfuse[serve]``); imported only by ``cddfuse serve``.
"""
from __future__ import annotations

import asyncio
import copy
import hmac
import shutil
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import CDDFuseError
from ..fusion.policy import resolve_chroma
from ..options import CHROMA_MODES, COLOR_MODES, DEFAULT_MAX_PIXELS, NETWORK_METHODS, NORMALIZE_MODES, TASKS

if TYPE_CHECKING:  # the serve extra is imported inside create_app (every module imports without extras)
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from ..fusion import Fuser

__all__ = ["create_app", "parse_size", "FORMATS", "DEFAULT_MAX_UPLOAD", "OPENAPI"]

STATIC = Path(__file__).resolve().parent / "static"
#: Output formats of ``POST /api/fuse``: name -> (extension, bit depth, content type).
FORMATS: dict[str, tuple[str, int, str]] = {
    "png": (".png", 8, "image/png"),
    "png16": (".png", 16, "image/png"),
    "npy": (".npy", 8, "application/x-npy"),
}
DEFAULT_MAX_UPLOAD = 50 * 2**20
_CHUNK = 64 * 1024
_UPLOAD_FIELDS = ("a", "b")
_OPTION_FIELDS = ("task", "method", "color", "chroma", "normalize", "resize", "format")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


def parse_size(text: str | int) -> int:
    """``"50M"`` -> 52428800; also ``K``, ``G`` (powers of 1024), optional ``B``, or a plain byte count.

    >>> parse_size("50M"), parse_size("1k"), parse_size(123), parse_size("2GB")
    (52428800, 1024, 123, 2147483648)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().upper()
        if s.endswith("B"):
            s = s[:-1]
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(s[-1:], 1)
        if scale != 1:
            s = s[:-1]
        try:
            value = int(float(s) * scale)
        except ValueError:
            raise ValueError(f"not a size: {text!r} (use e.g. 50M, 512K, 1G or a number of bytes)") from None
    if value < 1:
        raise ValueError(f"must be at least one byte, got {text!r}")
    return value


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "code": code}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> JSONResponse:
        from starlette.responses import JSONResponse

        return JSONResponse({"error": self.message, "code": self.code}, status_code=self.status,
                            headers=self.headers)


class _UploadTooLarge(Exception):
    """Raised from the request's ``receive`` as soon as the body passes the limit."""


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """Wrap ASGI ``receive`` so that reading more than ``limit`` body bytes raises :class:`_UploadTooLarge`
    (the body is counted while it arrives; nothing past the limit is kept)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _UploadTooLarge
        return message

    return wrapped


def _bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ApiError(400, "bad_option", f"{name}={text!r}: expected true or false")


def _choice(name: str, text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise ApiError(400, "bad_option", f"{name}={text!r}: choose one of {', '.join(choices)}")
    return text


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
    lite = Fuser(weights=lite_weights, task=main.task, method="lite", device=main.device,
                 max_pixels=main.max_pixels)
    lite.color, lite.normalize, lite.chroma = main.color, main.normalize, main.chroma
    return lite


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


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
        token: when set, ``/api/fuse`` and ``/api/info`` need ``Authorization: Bearer <token>`` (401).
        queue_size: fusions admitted at once (running + waiting); more get 503 with ``Retry-After``.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    if fuser_factory is None:
        def fuser_factory() -> Fuser:
            from ..fusion import Fuser

            return Fuser(weights=weights, task=task, method=method, device=device,  # type: ignore[arg-type]
                         max_pixels=max_pixels)
    limit = parse_size(max_upload)
    if queue_size < 1:
        raise ValueError(f"queue_size must be at least 1, got {queue_size}")
    fuser = fuser_factory()
    fuser.max_pixels = max_pixels
    fusers: dict[str, Fuser] = {fuser.method: fuser}
    lite = _lite_beside(fuser, lite_weights)
    if lite is not None:
        fusers["lite"] = lite
    state: dict[str, Any] = {"admitted": 0, "lock": None}

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong token (send Authorization: Bearer <token>)",
                           {"WWW-Authenticate": "Bearer"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "task": fuser.task, "auth": token is not None,
                             "busy": state["admitted"], "queue": queue_size, "methods": list(fusers)})

    async def info(request: Request) -> Response:
        check_token(request)
        return JSONResponse(_fuser_info(fuser) | {"max_upload": limit, "max_pixels": max_pixels,
                                                   "queue": queue_size, "methods": list(fusers),
                                                   "method_weights": {name: _fuser_info(f)["weights"]
                                                                      for name, f in fusers.items()}})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def fuse(request: Request) -> Response:
        check_token(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, "upload_too_large", f"the upload is larger than the limit of {limit} bytes")
        if state["admitted"] >= queue_size:
            raise ApiError(503, "busy", f"the server is busy ({queue_size} fusions queued); retry shortly",
                           {"Retry-After": "2"})
        state["admitted"] += 1
        try:
            if state["lock"] is None:  # made in the app's event loop
                state["lock"] = asyncio.Lock()
            tmp = Path(tempfile.mkdtemp(prefix="cddfuse-serve-"))
            try:
                return await _fuse_request(request, tmp, state["lock"])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            state["admitted"] -= 1

    async def _fuse_request(request: Request, tmp: Path, lock: asyncio.Lock) -> Response:
        limited = Request(request.scope, _limited_receive(request.receive, limit))
        try:
            form = await limited.form(max_files=len(_UPLOAD_FIELDS), max_fields=len(_OPTION_FIELDS))
        except _UploadTooLarge:
            raise ApiError(413, "upload_too_large", f"the upload is larger than the limit of {limit} bytes") from None
        except HTTPException as e:  # Starlette's multipart errors (not multipart, too many fields...)
            raise ApiError(400, "bad_request", str(e.detail)) from None
        try:
            paths: dict[str, Path] = {}
            names: dict[str, str] = {}
            for field in _UPLOAD_FIELDS:
                upload = form.get(field)
                if not isinstance(upload, UploadFile):
                    raise ApiError(400, "missing_file", f"missing file field {field!r} (multipart, two images a and b)")
                names[field] = upload.filename or field
                path = tmp / (field + _safe_suffix(upload.filename))
                with open(path, "wb") as out:
                    while chunk := await upload.read(_CHUNK):
                        out.write(chunk)
                paths[field] = path
            options: dict[str, str] = {}
            for k, v in form.items():
                if k in _UPLOAD_FIELDS:
                    continue
                if not isinstance(v, str):
                    raise ApiError(400, "bad_option", f"{k}: expected a text field, got a file")
                options[k] = v
        finally:
            await form.close()
        unknown = sorted(set(options) - set(_OPTION_FIELDS))
        if unknown:
            raise ApiError(400, "bad_option", f"unknown field(s) {', '.join(unknown)}; the options are "
                           + ", ".join(_OPTION_FIELDS))
        req_task = options.get("task", fuser.task) or fuser.task
        _choice("task", req_task, TASKS)
        if req_task != fuser.task:
            raise ApiError(400, "wrong_task", f"task={req_task!r}: this server runs the {fuser.task} model; "
                           f"start one with --task {req_task} for that")
        req_method = options.get("method") or fuser.method
        if req_method not in fusers:
            _choice("method", req_method, NETWORK_METHODS)
            raise ApiError(400, "method_unavailable", f"method={req_method!r}: this server offers "
                           f"{', '.join(fusers)} (no {req_method} weights for task {fuser.task} are loaded)")
        fmt = _choice("format", options.get("format", "png") or "png", tuple(FORMATS))
        ext, bit_depth, content_type = FORMATS[fmt]
        job = copy.copy(fusers[req_method])  # shares the model; per-request options
        job.color = _choice("color", options.get("color", fuser.color) or fuser.color, COLOR_MODES)  # type: ignore[assignment]
        job.chroma = resolve_chroma(_choice("chroma", options.get("chroma") or "auto", CHROMA_MODES), fuser.task)
        job.normalize = _choice("normalize", options.get("normalize", fuser.normalize) or fuser.normalize,  # type: ignore[assignment]
                                NORMALIZE_MODES)
        resize = _bool("resize", options.get("resize", "false"))

        def describe(e: CDDFuseError) -> str:
            text = e.cli_message()
            for field, path in paths.items():
                text = text.replace(str(path), f"{field} ({names[field]})")
            return text.replace("--max-pixels", "the server's --max-pixels")

        def run() -> bytes:
            from ..io.image import probe_image, write_image

            for path in paths.values():  # sizes from the headers, before anything is decoded
                try:
                    probe_image(path, max_pixels)
                except CDDFuseError as e:
                    if "more than the limit" in str(e):
                        raise ApiError(413, "image_too_large", describe(e)) from None
                    raise
            image = job.fuse(paths["a"], paths["b"], resize=resize)
            out = write_image(tmp / ("fused" + ext), image, bit_depth=bit_depth)
            return out.read_bytes()

        async with lock:  # one fusion at a time; the others wait here (at most queue_size in all)
            try:
                data = await run_in_threadpool(run)
            except CDDFuseError as e:
                raise ApiError(400, "bad_input", describe(e)) from None
            except MemoryError:
                raise ApiError(413, "out_of_memory", "out of memory fusing this pair; send smaller images") from None
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
        Route("/api/health", health),
        Route("/api/info", info),
        Route("/api/openapi.json", openapi),
        Route("/api/fuse", fuse, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                       Exception: server_error})
    app.state.fuser = fuser
    app.state.fusers = fusers
    return app


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
                                  "properties": {"error": {"type": "string"}, "code": {"type": "string"}}}},
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
                    "400": err("bad input: unreadable image, sizes differ, bad option"),
                    "401": err("missing or wrong bearer token"),
                    "413": err("upload larger than --max-upload, or image larger than --max-pixels"),
                    "503": err("busy: the queue is full; retry after the Retry-After seconds"),
                },
            }},
            "/api/health": {"get": {"summary": "Liveness", "responses": {"200": {
                "description": "status, task, whether a token is needed, fusions admitted now",
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
