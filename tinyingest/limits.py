"""Bounds on what clients can hold of the gateway: connections, stalled bodies, and how much
body work one request does in an event-loop pass.

* :class:`LimitedHTTPServer` refuses connections over a cap (503, then close), pauses
  accepting when the process is out of file descriptors instead of spinning on the error,
  and closes a connection whose body stops arriving for ``body_idle_timeout`` seconds.
* :func:`raise_nofile_limit` and :func:`connection_cap` keep that cap below the process's
  file descriptor limit.
* :func:`feed_pieces` hands decoded body pieces to a consumer, letting other requests run
  between them (a small compressed chunk can hold gigabytes).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback

log = logging.getLogger("tinyingest.limits")

#: Descriptors kept for everything but client connections (ClickHouse connections, spool
#: and engine files, the listening sockets).
_RESERVED_FDS = 1024

#: Accept errors that mean "no descriptors or memory now": accepting again at once fails
#: again, so the listening socket is left alone for a while.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_PAUSE = 0.5
#: At most one warning per this many seconds for refused connections or accept pauses.
_WARN_EVERY = 10.0
#: Connections accepted per readiness event (Tornado's figure), so that one busy listening
#: socket does not starve the rest of the loop.
_ACCEPTS_PER_EVENT = 128

_REFUSAL_BODY = b'{"error": "too many open connections; retry later"}'
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n"
            b"Content-Length: %d\r\n\r\n" % len(_REFUSAL_BODY) + _REFUSAL_BODY)


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an infinite hard limit: keep the soft one
            log.warning("cannot raise the open files limit from %d: %s", soft, exc)
    return soft


def connection_cap(wanted: int, nofile: int) -> int:
    """``wanted`` open connections, or fewer if the descriptor limit ``nofile`` needs it."""
    cap = min(wanted, max(nofile - min(_RESERVED_FDS, nofile // 4), 1))
    if cap < wanted:
        log.warning("max_connections lowered from %d to %d: the open files limit is %d",
                    wanted, cap, nofile)
    return cap


class _RateLimitedWarning:
    def __init__(self) -> None:
        self._next = 0.0
        self._skipped = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return
        self._next = now + _WARN_EVERY
        skipped, self._skipped = self._skipped, 0
        log.warning(message + (f" ({skipped} more since the last warning)" if skipped else ""),
                    *args)


class LimitedHTTPServer(HTTPServer):
    """Tornado's HTTPServer with a connection cap, an accept loop that survives running out
    of file descriptors, and an inactivity timeout for request bodies."""

    def initialize(self, *args: Any, max_connections: int = 10_000,
                   body_idle_timeout: float = 0.0, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._max_connections = max_connections
        self._idle = _IdleBodies(body_idle_timeout)
        self._warn_refused = _RateLimitedWarning()
        self._warn_accept = _RateLimitedWarning()

    def add_sockets(self, sockets: Any) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_handler(sock)

    def _accept_handler(self, sock: socket.socket) -> Callable[[], None]:
        """Tornado's netutil.add_accept_handler, but an accept that fails for want of
        descriptors stops accepting for a moment: the error is level-triggered, so
        retrying at once would spin a core and log each failure."""
        io_loop = IOLoop.current()
        state = {"removed": False, "paused": False}

        def resume() -> None:
            if not state["removed"] and state["paused"]:
                state["paused"] = False
                io_loop.add_handler(sock, accept, IOLoop.READ)

        def accept(fd: Any, events: int) -> None:
            for _ in range(_ACCEPTS_PER_EVENT):
                if state["removed"] or state["paused"]:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    if exc.errno not in _OUT_OF_RESOURCES:
                        raise
                    self._warn_accept("cannot accept connections (%s) with %d open; pausing "
                                      "%g s", exc.strerror, len(self._connections),
                                      _ACCEPT_PAUSE)
                    state["paused"] = True
                    io_loop.remove_handler(sock)
                    io_loop.call_later(_ACCEPT_PAUSE, resume)
                    return
                if len(self._connections) >= self._max_connections:
                    self._refuse(connection)
                    continue
                self._handle_connection(connection, address)

        def remove() -> None:
            if not state["paused"]:
                io_loop.remove_handler(sock)
            state["removed"] = True

        io_loop.add_handler(sock, accept, IOLoop.READ)
        return remove

    def _refuse(self, connection: socket.socket) -> None:
        self._warn_refused("refusing connections: %d open, max_connections",
                           len(self._connections))
        try:
            connection.setblocking(False)
            connection.send(_REFUSAL)  # a fresh socket's buffer takes it whole
        except OSError:
            pass
        connection.close()

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        if not isinstance(request_conn, HTTP1Connection) or self._idle.timeout <= 0:
            return delegate
        return _WatchedBody(delegate, request_conn, self._idle)


class _WatchedBody(httputil.HTTPMessageDelegate):
    """Notes when each body piece arrives, for :class:`_IdleBodies`. The time the gateway
    itself makes the body wait (prepare, backpressure) does not count as idle."""

    __slots__ = ("inner", "connection", "idle", "last", "waiting")

    def __init__(self, inner: httputil.HTTPMessageDelegate, connection: HTTP1Connection,
                 idle: _IdleBodies) -> None:
        self.inner = inner
        self.connection = connection
        self.idle = idle
        self.last = 0.0
        self.waiting = 0

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        result = self.inner.headers_received(start_line, headers)
        if "Content-Length" in headers or "Transfer-Encoding" in headers:  # a body follows
            self.last = time.monotonic()
            self.idle.watch(self)
            if result is not None:
                return self._wait(result)
        return result

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.last = time.monotonic()
        result = self.inner.data_received(chunk)
        return None if result is None else self._wait(result)

    async def _wait(self, awaitable: Awaitable[None]) -> None:
        self.waiting += 1
        try:
            await awaitable
        finally:
            self.waiting -= 1
            self.last = time.monotonic()

    def finish(self) -> None:
        self.idle.forget(self)
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.idle.forget(self)
        self.inner.on_connection_close()


class _IdleBodies:
    """One sweep a second closes the connections whose body has not moved for ``timeout``
    seconds (a client that sent headers and stalled, or trickles nothing). Tornado's
    body_timeout bounds only a body's total time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._watched: set[_WatchedBody] = set()
        self._sweeper: PeriodicCallback | None = None

    def watch(self, body: _WatchedBody) -> None:
        self._watched.add(body)
        if self._sweeper is None:
            self._sweeper = PeriodicCallback(self._sweep, 1000)
            self._sweeper.start()

    def forget(self, body: _WatchedBody) -> None:
        self._watched.discard(body)

    def _sweep(self) -> None:
        deadline = time.monotonic() - self.timeout
        idle = [b for b in self._watched if not b.waiting and b.last < deadline]
        for body in idle:
            self._watched.discard(body)
            log.info("no body bytes from %s for %g s: closing the connection",
                     body.connection.context, self.timeout)
            body.connection.stream.close()  # the request learns it in on_connection_close


#: Decoded body bytes one request handles in one go before other requests get a turn.
LOOP_STEP = 1 << 20


def feed_pieces(pieces: Iterator[bytes], feed: Callable[[bytes], Awaitable[Any] | None],
                fail: Callable[[Exception], None]) -> Awaitable[None] | None:
    """Give each of ``pieces`` to ``feed``, which returns something to wait on or None.

    Up to :data:`LOOP_STEP` bytes are fed at once; the rest (and any wait) goes on in a
    coroutine that lets the event loop run between steps, returned for Tornado to await
    before it reads more of the body. An exception from ``pieces`` or ``feed`` goes to
    ``fail``.
    """
    done = 0
    try:
        for piece in pieces:
            wait = feed(piece)
            done += len(piece)
            if wait is not None or done >= LOOP_STEP:
                return _feed_rest(pieces, feed, fail, wait)
    except Exception as exc:  # noqa: BLE001 - the caller decides what each error means
        fail(exc)
    return None


async def _feed_rest(pieces: Iterator[bytes], feed: Callable[[bytes], Awaitable[Any] | None],
                     fail: Callable[[Exception], None], wait: Awaitable[Any] | None) -> None:
    try:
        more = True
        while more:
            if wait is not None:
                await wait
            else:
                await asyncio.sleep(0)  # other requests' turn
            wait, done, more = None, 0, False
            for piece in pieces:
                wait = feed(piece)
                done += len(piece)
                if wait is not None or done >= LOOP_STEP:
                    more = True
                    break
    except Exception as exc:  # noqa: BLE001
        fail(exc)
