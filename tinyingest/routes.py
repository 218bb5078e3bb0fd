"""The URL table and the Tornado Application."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from http.client import responses
from typing import Any

from tornado import httputil, web
from tornado.http1connection import HTTP1Connection

from tinyingest import handlers, metrics
from tinyingest.auth import Authorizer, InvalidToken, request_token
from tinyingest.gateway import Gateway


def make_app(gateway: Gateway, authorizer: Authorizer) -> web.Application:
    shared: dict[str, Any] = {"gateway": gateway, "authorizer": authorizer}
    events = handlers.EventsRouter(gateway, authorizer)
    app = _Application(
        [
            (r"/v0/events", events),
            (r"/v0/datasources", handlers.DataSourcesHandler, shared),
            (r"/v0/sql", handlers.SQLHandler, shared),
            (r"/v0/pipes", handlers.PipesHandler, shared),
            (r"/v0/pipes/openapi\.json", handlers.OpenAPIHandler, shared),
            (r"/v0/pipes/([^/.]+)\.(\w+)", handlers.PipeDataHandler, shared),
            (r"/v0/pipes/([^/.]+)", handlers.PipesHandler, shared),
            (r"/v0/tokens", handlers.TokensHandler, shared),
            (r"/healthz", handlers.HealthHandler, shared),
            (r"/readyz", handlers.ReadyHandler, shared),
            (r"/metrics", metrics.MetricsHandler),
        ],
        default_handler_class=handlers.NotFoundHandler,
        default_handler_args=shared,
        log_function=metrics.log_request,
    )
    app.authorizer = authorizer
    app.max_buffered_body = gateway.settings.max_buffered_body_bytes
    events.application = app
    return app


class _Application(web.Application):
    authorizer: Authorizer
    max_buffered_body: int

    def find_handler(  # type: ignore[override]  # Tornado's routers take any delegate
            self, request: httputil.HTTPServerRequest,
            **kwargs: Any) -> httputil.HTTPMessageDelegate:
        delegate = super().find_handler(request, **kwargs)
        # Streaming handlers (ingest) check the token and size themselves; every other one
        # gets its body whole, so it is bounded here.
        if isinstance(delegate, web._HandlerDelegate) and not delegate.stream_request_body:
            return BufferedBody(delegate, request, self.authorizer, self.max_buffered_body)
        return delegate


class BufferedBody(httputil.HTTPMessageDelegate):
    """The body of a handler that reads it whole: over ``limit`` bytes it is answered 413
    (announced: before it is read), and it is kept only for a request with a valid token.
    Without one the body is dropped as it comes and the handler answers as it would
    without it (403, 404, ...): nobody unauthenticated makes the gateway hold memory."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, request: httputil.HTTPServerRequest,
                 authorizer: Authorizer, limit: int) -> None:
        self.inner = inner
        self.request = request
        self.authorizer = authorizer
        self.limit = limit
        self.received = 0
        self.keep = False
        self.refused = False

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            # This class applies the limit, with a JSON 413: Tornado's would answer a bare
            # 400 first. Tornado keeps nothing of a body itself.
            connection.set_max_body_size(1 << 62)
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.limit:
            self._refuse()
            return None
        self.keep = self._authenticated()
        return self.inner.headers_received(start_line, headers)

    def _authenticated(self) -> bool:
        token = self.request.query_arguments.get("token")
        value = request_token(self.request.headers.get("Authorization"),
                              token[-1].decode("utf-8", "replace") if token else None)
        if value is None:
            return False
        try:
            return self.authorizer.identify(value) is not None
        except InvalidToken:
            return False

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.refused:
            return None
        self.received += len(chunk)
        if self.received > self.limit:
            self._refuse()
            self.inner.on_connection_close()  # drops what it kept
            return None
        return self.inner.data_received(chunk) if self.keep else None

    def finish(self) -> None:
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.inner.on_connection_close()

    def _refuse(self) -> None:
        """413, and Tornado closes the connection once it is sent (the body is unread)."""
        self.refused = True
        data = handlers._to_json({"error": f"request body is larger than {self.limit} bytes "
                                           "(TINYINGEST_MAX_BUFFERED_BODY_BYTES)"}).encode()
        headers = httputil.HTTPHeaders({
            "Content-Type": "application/json", "Date": httputil.format_timestamp(time.time()),
            **handlers._CORS_HEADERS, "Content-Length": str(len(data))})
        connection = self.request.connection
        assert connection is not None
        connection.write_headers(httputil.ResponseStartLine("", 413, responses[413]),
                                 headers, data)
        connection.finish()
        handler = getattr(self.inner, "handler_class", type(self.inner))
        metrics.observe_request(handler.__name__, 413, self.request.request_time())
