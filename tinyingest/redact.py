"""What may leave the process: no token in a log line, no internals in an error body.

* :func:`request_summary` is how every log line names a request (Tornado's warnings and
  uncaught-exception logs, the lean ingest path, ours): method, URI with the values of
  ``token`` replaced, client address. Headers (``Authorization``) are never logged.
* :func:`public_message` is the part of an engine's message a client gets: ClickHouse's
  words about the client's SQL or rows, without stack traces or filesystem paths (the
  data directory, the engine's files, the venv). The whole message goes to the log.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import unquote_plus

from tornado.httputil import HTTPServerRequest

REDACTED = "<redacted>"
#: Query parameters that carry a token (Tinybird's CLI and browsers send ``?token=``).
_TOKEN_PARAMETERS = frozenset({"token"})

#: "Stack trace:" (ClickHouse server), "Stack trace (when copying this message, ...)" (chDB).
_STACK_TRACE = re.compile(r"\.?\s*Stack trace\b.*", re.DOTALL | re.IGNORECASE)
#: An absolute path of two or more parts, e.g. /var/lib/clickhouse/store/0ab/x/data.bin.
_PATH = re.compile(r"(?<![\w/.])/(?:[^\s/'\"`,;()\[\]{}<>]+/)+[^\s/'\"`,;()\[\]{}<>]*")


def redacted_uri(uri: str) -> str:
    """``uri`` with the value of every token parameter replaced (names are compared
    decoded, as Tornado reads them: ``?%74oken=`` is a token too)."""
    path, mark, query = uri.partition("?")
    if not mark:
        return uri
    parts = []
    for part in re.split(r"([&;])", query):
        name, equals, _ = part.partition("=")
        if equals and unquote_plus(name).strip().lower() in _TOKEN_PARAMETERS:
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{path}?{''.join(parts)}"


def request_summary(request: HTTPServerRequest) -> str:
    """``POST /v0/sql?token=<redacted> (127.0.0.1)``: a request as log lines name it."""
    return f"{request.method} {redacted_uri(request.uri or '')} ({request.remote_ip})"


def public_message(message: str) -> str:
    """An engine's message without stack traces and filesystem paths."""
    return _PATH.sub("<path>", _STACK_TRACE.sub("", message)).strip()


def new_error_id() -> str:
    """Names one error in the log and in the answer that hides its details."""
    return secrets.token_hex(6)
