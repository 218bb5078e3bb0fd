"""The URL table and the Tornado Application."""

from __future__ import annotations

from typing import Any

from tornado import web

from tinyingest import handlers, metrics
from tinyingest.auth import Authorizer
from tinyingest.gateway import Gateway


def make_app(gateway: Gateway, authorizer: Authorizer) -> web.Application:
    shared: dict[str, Any] = {"gateway": gateway, "authorizer": authorizer}
    events = handlers.EventsRouter(gateway, authorizer)
    app = web.Application(
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
            (r"/metrics", metrics.MetricsHandler),
        ],
        default_handler_class=handlers.NotFoundHandler,
        default_handler_args=shared,
        log_function=metrics.log_request,
    )
    events.application = app
    return app
