"""Running the web application under uvicorn: the listening socket, a header timeout, and a stop
that cancels the work in progress.

* :func:`listen` binds the address first, so that a port in use is one line (and the URL is printed
  only once the port is ours); the socket is handed to uvicorn.
* The HTTP protocol is uvicorn's h11 one with a timeout on request headers: a connection whose
  request line and headers have not arrived ``header_timeout`` seconds after it opened (or after its
  previous response) is closed, so slow headers cannot hold connections.
* On SIGTERM or SIGINT the app's :meth:`~cddfuse.serve.app.ServeState.stop` cancels uploads and
  fusions (the engine stops between two tiles) and uvicorn's graceful shutdown waits at most
  ``graceful`` seconds for the connections to end.

Needs the ``serve`` extra; imported only by ``cddfuse serve``.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..errors import CDDFuseError

__all__ = ["listen", "serve", "DEFAULT_HEADER_TIMEOUT", "DEFAULT_GRACEFUL"]

#: Seconds a connection may take to send a request's line and headers.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds the shutdown waits for connections to end before it cancels what is left.
DEFAULT_GRACEFUL = 3


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, ready for uvicorn (connections wait in its backlog until
    uvicorn serves them).

    Raises:
        CDDFuseError: the address is in use, not this machine's, or not allowed (one line).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CDDFuseError(f"cannot listen on {host}: {e.strerror}; give an address of this machine with "
                           "--host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)  # now: two servers started together cannot both bind (SO_REUSEADDR)
    except OSError as e:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if e.errno == errno.EADDRINUSE:
            raise CDDFuseError(f"cannot listen on {where}: the port is in use (another server?); stop it or choose "
                               "another --port") from None
        if e.errno == errno.EACCES:
            raise CDDFuseError(f"cannot listen on {where}: not allowed (ports below 1024 need privileges); choose "
                               "another --port") from None
        raise CDDFuseError(f"cannot listen on {where}: {e.strerror}; check --host and --port") from None
    sock.set_inheritable(True)
    return sock


def _protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol, closing connections whose request headers are late."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout, self._late)

        def _late(self) -> None:
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete  # no request under way
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11


def _quiet_cancellation(record: logging.LogRecord) -> bool:
    """Once stopping, requests cut short by the shutdown are expected: no traceback for them in the log."""
    if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
        return False
    return "graceful shutdown exceeded" not in record.getMessage()


def serve(app: Any, sock: socket.socket, *, on_stop: Callable[[], None], header_timeout: float = DEFAULT_HEADER_TIMEOUT,
          graceful: int = DEFAULT_GRACEFUL) -> None:
    """Serve ``app`` on the bound socket ``sock`` until SIGTERM or SIGINT; ``on_stop`` is called at the
    signal (it must only set flags). After the shutdown uvicorn raises the signal again, which the
    command line reports as interrupted (exit 130)."""
    import uvicorn

    signalled: list[int] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            signalled.append(sig)
            on_stop()
            logging.getLogger("uvicorn.error").addFilter(_quiet_cancellation)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", http=_protocol(header_timeout), lifespan="off",
                            timeout_graceful_shutdown=graceful)
    try:
        Server(config).run(sockets=[sock])
        if signalled:
            # uvicorn raises the signal again once it has shut down, but asyncio's own SIGINT handler may
            # turn that into a cancelled main task that ends normally (a race, seen on a loaded machine):
            # stopped by a signal is an interruption whichever way the event loop ended
            raise KeyboardInterrupt
    except KeyboardInterrupt:  # the signal, raised again by uvicorn once it has shut down
        _abandon_stuck_work(DEFAULT_LAST_WAIT)
        raise


#: Seconds the process waits, after the shutdown, for work threads still inside a step that cannot be
#: cancelled (decoding a large image, say) before it exits without them.
DEFAULT_LAST_WAIT = 1.0


def _abandon_stuck_work(seconds: float) -> None:
    """Wait up to ``seconds`` for the other non-daemon threads (fusions finishing their current step);
    if some are still running, exit now with 130 instead of waiting for them at interpreter exit (their
    request folders are already removed, the engine's disk maps are unlinked files)."""
    import os
    import sys
    import threading
    import time

    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon and t is not threading.current_thread() for t in threading.enumerate()):
        print("cddfuse serve: interrupted (a fusion still decoding was abandoned)", file=sys.stderr, flush=True)
        os._exit(130)
