"""``cddfuse serve``: a web page and an HTTP API for fusion (needs ``pip install cddfuse[serve]``)."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from ..errors import UsageError
from ..options import DEFAULT_MAX_PIXELS, NETWORK_METHODS, TASKS

HELP = "serve a web page and an HTTP API that fuse uploaded image pairs"

DESCRIPTION = """\
Serve a page at http://HOST:PORT/ (upload two images, fuse, compare, download) and an HTTP API
(POST /api/fuse, GET /api/health, GET /api/info; schema at /api/openapi.json). One model is kept in
memory and fusions run one at a time; up to --queue requests wait, more are answered 503.

Listens on 127.0.0.1 by default. On any other address, set --token: requests to /api/fuse and
/api/info then need 'Authorization: Bearer TOKEN' (the page asks for it once)."""

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
                   help="weights file (default: the bundled weights of --task for --method)")
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
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on /api/fuse and /api/info")
    p.add_argument("--queue", type=int, default=4, metavar="N",
                   help="fusions admitted at once, running and waiting (default 4); more get 503 busy")
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
        import uvicorn

        from ..serve.app import create_app, parse_size
    except ImportError as e:
        raise UsageError(f"cddfuse serve needs the serve extra ({e.name} is missing): "
                         "pip install 'cddfuse[serve]'") from None
    try:
        parse_size(args.max_upload)
    except ValueError as e:
        raise UsageError.invalid("max_upload", args.max_upload, str(e)) from None
    if args.queue < 1:
        raise UsageError.invalid("queue", args.queue, "must be at least 1")
    if args.max_pixels < 1:
        raise UsageError.invalid("max_pixels", args.max_pixels, "must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UsageError.invalid("port", args.port, "must be between 0 and 65535")
    if args.token is None and not is_loopback(args.host):
        print(f"cddfuse serve: warning: listening on {args.host} without --token: anyone who can reach it can "
              "use it", file=sys.stderr)
    if args.lite_weights is not None and args.method == "lite":
        raise UsageError("--lite-weights offers CDDFuse-lite beside the exact network; with --method lite give the "
                         "lite weights as --weights")
    app = create_app(weights=args.weights, task=args.task, device=args.device, method=args.method,
                     lite_weights=args.lite_weights, max_upload=args.max_upload,
                     max_pixels=args.max_pixels, token=args.token, queue_size=args.queue)
    fuser = app.state.fuser
    if fuser.method == "cddfuse" and fuser.device.type == "cpu":  # tune now, not during the first request
        from ..engine.tuning import settings

        settings(notify=lambda line: print(f"cddfuse serve: {line}", file=sys.stderr, flush=True))
    print(f"cddfuse serve: http://{args.host}:{args.port}/ (task {app.state.fuser.task}, "
          f"{' and '.join(app.state.fusers)}; Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
