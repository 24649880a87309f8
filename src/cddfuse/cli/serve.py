"""``cddfuse serve``: a web page and an HTTP API for fusion (needs ``pip install cddfuse[serve]``)."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from ..errors import UsageError
from ..options import DEFAULT_MAX_PIXELS, NETWORK_METHODS, TASKS

# the serve extra's constants, without importing Starlette (the parser is built for every command)
DEFAULT_UPLOAD_TIMEOUT = 120.0
DEFAULT_MIN_UPLOAD_RATE = 10 * 1024
UPLOAD_GRACE = 5.0
DEFAULT_HEADER_TIMEOUT = 10.0

HELP = "serve a web page and an HTTP API that fuse uploaded image pairs"

DESCRIPTION = """\
Serve a page at http://HOST:PORT/ (upload two images, fuse, compare, download) and an HTTP API
(POST /api/fuse, GET /api/health, GET /api/info; schema at /api/openapi.json). One model is kept in
memory and fusions run one at a time; up to --queue requests wait, more are answered 503.

Listens on 127.0.0.1 by default. On any other address, set --token: requests to /api/fuse and
/api/info then need 'Authorization: Bearer TOKEN' (the page asks for it once).

Slow or vanished clients cannot hold it: request headers must arrive within --header-timeout, an upload within
--upload-timeout and at --min-upload-rate or faster (408 otherwise), and an upload holds no fusion
slot until it is complete; a fusion whose client disconnects is cancelled between two tiles. SIGTERM
or Ctrl-C cancels the work in progress and stops within a few seconds.

exit status: 130 after SIGTERM or SIGINT (the normal way to stop it), 1 when it cannot start (port
in use, unreadable weights), 2 for a bad option."""

EPILOG = """\
examples:
  cddfuse serve
  cddfuse serve --task mif --port 8080
  cddfuse serve --host 0.0.0.0 --token "$(openssl rand -hex 16)" --max-upload 20M
  curl -F a=@ir.png -F b=@vis.png http://127.0.0.1:8000/api/fuse -o fused.png"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="ivf: infrared-visible, mif: medical (default: what the weights were made for, else ivf)")
    p.add_argument("--weights", metavar="PATH", default=None,
                   help="weights file, or authors-ivf / authors-mif (the authors' published files, downloaded once "
                        "and verified; default: the bundled weights of --task for --method)")
    p.add_argument("--method", choices=NETWORK_METHODS, default="cddfuse",
                   help="the network requests get by default: cddfuse (the exact network, default) or lite "
                        "(CDDFuse-lite only). With cddfuse, CDDFuse-lite is offered beside it (the page's choice, "
                        "the API's method field) when its weights are installed or given with --lite-weights")
    p.add_argument("--lite-weights", metavar="PATH", default=None,
                   help="CDDFuse-lite weights to offer beside the exact network (default: the bundled ones)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, default), cpu, cuda, cuda:N")
    p.add_argument("--max-upload", default="50M", metavar="SIZE",
                   help="largest request (both images), e.g. 50M (default), 512K; larger uploads get 413")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"largest image in pixels, read from its header before decoding "
                        f"(default {DEFAULT_MAX_PIXELS:,}); larger get 413")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on /api/fuse and /api/info "
                   "(printable ASCII, no spaces)")
    p.add_argument("--queue", type=int, default=4, metavar="N",
                   help="fusions admitted at once, running and waiting (default 4); more get 503 busy")
    p.add_argument("--upload-timeout", type=float, default=DEFAULT_UPLOAD_TIMEOUT, metavar="SECONDS",
                   help=f"longest time an upload may take (default {DEFAULT_UPLOAD_TIMEOUT:g}); slower ones get 408")
    p.add_argument("--min-upload-rate", default=f"{DEFAULT_MIN_UPLOAD_RATE // 1024}K", metavar="SIZE",
                   help=f"slowest average upload rate per second, after the first {UPLOAD_GRACE:g} s (default "
                        f"{DEFAULT_MIN_UPLOAD_RATE // 1024}K; 0: none); slower uploads get 408")
    p.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="SECONDS",
                   help=f"longest time a connection may take to send a request's headers (default "
                        f"{DEFAULT_HEADER_TIMEOUT:g}); it is closed after")
    p.set_defaults(func=run)
    return p


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost`` -> True; ``0.0.0.0`` or a LAN address -> False."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401

        from ..serve.app import check_token, create_app, parse_size
        from ..serve.server import listen, serve
    except ImportError as e:
        raise UsageError(f"cddfuse serve needs the serve extra ({e.name} is missing): "
                         "pip install 'cddfuse[serve]'") from None
    try:
        parse_size(args.max_upload)
    except ValueError as e:
        raise UsageError.invalid("max_upload", args.max_upload, str(e)) from None
    try:
        check_token(args.token)
    except ValueError as e:
        raise UsageError(f"--token: {e}") from None
    min_rate = 0 if str(args.min_upload_rate).strip() in ("0", "0K", "0k") else None
    if min_rate is None:
        try:
            min_rate = parse_size(args.min_upload_rate)
        except ValueError as e:
            raise UsageError.invalid("min_upload_rate", args.min_upload_rate, str(e) + "; 0 for none") from None
    if not 0 < args.upload_timeout < float("inf"):
        raise UsageError.invalid("upload_timeout", args.upload_timeout, "must be a positive number of seconds")
    if not 0 < args.header_timeout < float("inf"):
        raise UsageError.invalid("header_timeout", args.header_timeout, "must be a positive number of seconds")
    if args.queue < 1:
        raise UsageError.invalid("queue", args.queue, "must be at least 1")
    if args.max_pixels < 1:
        raise UsageError.invalid("max_pixels", args.max_pixels, "must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UsageError.invalid("port", args.port, "must be between 0 and 65535")
    if args.lite_weights is not None and args.method == "lite":
        raise UsageError("--lite-weights offers CDDFuse-lite beside the exact network; with --method lite give the "
                         "lite weights as --weights")
    sock = listen(args.host, args.port)  # before the model loads: a port in use is one line, at once
    try:
        if args.token is None and not is_loopback(args.host):
            print(f"cddfuse serve: warning: listening on {args.host} without --token: anyone who can reach it can "
                  "use it", file=sys.stderr)
        app = create_app(weights=args.weights, task=args.task, device=args.device, method=args.method,
                         lite_weights=args.lite_weights, max_upload=args.max_upload,
                         max_pixels=args.max_pixels, token=args.token, queue_size=args.queue,
                         upload_timeout=args.upload_timeout, min_upload_rate=min_rate)
        fuser = app.state.fuser
        if fuser.method == "cddfuse" and fuser.device.type == "cpu":  # tune now, not during the first request
            from ..engine.tuning import settings

            settings(notify=lambda line: print(f"cddfuse serve: {line}", file=sys.stderr, flush=True))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"cddfuse serve: http://{shown}:{port}/ (task {fuser.task}, {' and '.join(app.state.fusers)}; "
              "Ctrl-C to stop)", file=sys.stderr, flush=True)
        serve(app, sock, on_stop=app.state.serve.stop, header_timeout=args.header_timeout)
    finally:
        sock.close()
    return 0
