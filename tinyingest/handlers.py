"""HTTP handlers for Tinybird's v0 API. Thin: the work happens in gateway/parser/batcher.

Ingest handlers stream: ``data_received`` passes each chunk through the decoder
(gzip/zstd), the multipart reader if any, and the parser, so a body is never held
whole. Errors are JSON ``{"error": "..."}`` with ``Content-Type: application/json``,
which Tinybird's clients require.
"""

from __future__ import annotations

import asyncio
import csv
import datetime
import decimal
import functools
import hashlib
import io
import itertools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable
from http.client import responses
from typing import Any

import tornado
from tornado import httputil, routing, web
from tornado.http1connection import HTTP1Connection
from tornado.ioloop import PeriodicCallback
from tornado.log import app_log, gen_log

from tinyingest import metrics, parquet, parser
from tinyingest.auth import (
    ADMIN,
    DATASOURCES_APPEND,
    DATASOURCES_READ,
    PIPES_READ,
    Authorizer,
    InvalidToken,
    Token,
    request_token,
)
from tinyingest.datafiles import Pipe
from tinyingest.decompress import BodyError, Decoder, make_decoder
from tinyingest.gateway import (
    SMALL_BODY_BYTES,
    Gateway,
    Ingest,
    QueryLimits,
    RunningQuery,
    SmallBodies,
    Table,
    TooManyQueries,
    new_import_id,
)
from tinyingest.idempotency import MAX_REQUEST_ID_BYTES, Answer
from tinyingest.limits import feed_pieces
from tinyingest.multipart import MultipartReader, parse_boundary
from tinyingest.schema import SchemaError
from tinyingest.pipes import CompiledQuery, apply_q, pipe_parameters
from tinyingest.redact import new_error_id, public_message, request_summary
from tinyingest.sinks import QueryResult, SinkError
from tinyingest.spool import SpoolFull
from tinyingest.template import TemplateError

log = logging.getLogger("tinyingest.http")

#: ClickHouse refused the gateway's own credentials (UNKNOWN_USER, WRONG_PASSWORD,
#: REQUIRED_PASSWORD, AUTHENTICATION_FAILED): a 503 for the caller, not their error.
_CONNECTION_REFUSED_CODES = frozenset({192, 193, 194, 516})


class APIError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


#: Browsers (flock.js, dashboards) call the API cross-origin.
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
}


class BaseHandler(web.RequestHandler):
    gateway: Gateway
    authorizer: Authorizer

    def initialize(self, gateway: Gateway, authorizer: Authorizer) -> None:
        self.gateway = gateway
        self.authorizer = authorizer

    def set_default_headers(self) -> None:
        for name, value in _CORS_HEADERS.items():
            self.set_header(name, value)

    def options(self, *args: str) -> None:
        self.set_status(204)
        self.finish()

    def require(self, scope: str = ADMIN, resource: str | None = None) -> Token:
        """The request's token, which must hold ``scope`` on ``resource`` (403 if not).

        With ``resource`` None only the token's validity is checked (callers then
        filter what it may see); ``scope=ADMIN`` needs the admin token.
        """
        value = request_token(self.header("Authorization"), self.query_argument("token"))
        if value is None:
            raise APIError(403, "missing token: send 'Authorization: Bearer <token>'")
        try:
            token = self.authorizer.identify(value)
        except InvalidToken as exc:  # a JWT: malformed, badly signed, expired
            raise APIError(403, str(exc)) from None
        if token is None:
            raise APIError(403, "invalid token")
        if scope == ADMIN and not token.is_admin:
            raise APIError(403, f"token '{token.name}' is not an admin token")
        if scope != ADMIN and resource is not None and not token.can(scope, resource):
            raise APIError(403, f"token '{token.name}' has no {scope} scope on '{resource}'")
        return token

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header. Unlike ``headers.get()``, an absent one costs no KeyError
        raised and caught inside HTTPHeaders (most optional headers are absent)."""
        headers = self.request.headers
        return headers[name] if name in headers else default

    def query_argument(self, name: str, default: str | None = None) -> str | None:
        """``get_query_argument(name, default)``, skipping its work when the argument is
        absent (most optional ones are, on every tiny ingest request)."""
        if name not in self.request.query_arguments:
            return default
        return self.get_query_argument(name, default)

    def send_json(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(_to_json(body))

    def send_api_error(self, error: APIError) -> None:
        if self._finished:
            return
        self.clear()
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.send_json(error.status, {"error": error.message})

    _error_id: str | None = None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Tornado's own errors (405, 500, malformed requests) in the same JSON shape; an
        # uncaught exception's details stay in the log, under the id the client gets.
        message = self._reason if self._error_id is None else \
            f"{self._reason} (error id {self._error_id})"
        self.set_header("Content-Type", "application/json")
        self.finish(_to_json({"error": message}))

    def _request_summary(self) -> str:
        # Tornado names the request with this in every log line it writes about one.
        return request_summary(self.request)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, APIError):
            return
        if isinstance(value, web.HTTPError):
            super().log_exception(typ, value, tb)  # one warning line, no traceback
            return
        # Not Tornado's: its line repeats the request's unredacted URI.
        self._error_id = new_error_id()
        app_log.error("Uncaught exception %s (error id %s)", self._request_summary(),
                      self._error_id, exc_info=(typ, value, tb))

    async def _handle(self, coro: Any) -> None:
        try:
            await coro
        except APIError as error:
            self.send_api_error(error)
        except SpoolFull as error:
            self.send_api_error(APIError(error.status, str(error), {"Retry-After": "5"}))
        except SinkError as error:
            log.warning("ClickHouse error: %s", error)
            self.send_api_error(APIError(503, f"ClickHouse error: {engine_message(error)}",
                                         {"Retry-After": "1"}))


def engine_message(error: SinkError) -> str:
    """ClickHouse's message for the client: what it says about the SQL or the rows,
    without paths or stack traces; when something was cut, the whole is logged under an
    id the message names."""
    full = str(error)
    public = public_message(full)
    if public == full:
        return full
    error_id = new_error_id()
    log.warning("ClickHouse error (error id %s): %s", error_id, full)
    return f"{public} (error id {error_id})"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


#: ``json.dumps(body, default=_json_value)`` without building an encoder per call.
_to_json = json.JSONEncoder(default=_json_value).encode


#: Bodies up to this size are read and dropped before an early answer (see answer_early).
_DISCARD_LIMIT = 8 << 20


@web.stream_request_body
class IngestHandler(BaseHandler):
    """Shared body streaming for ``/v0/events`` and ``/v0/datasources`` appends."""

    ingest: Ingest | None = None
    decoder: Decoder | None = None
    multipart: MultipartReader | None = None
    #: An answer decided before the body was read, sent once the body is read (a
    #: client still sending would otherwise see its connection reset, not the answer).
    early: tuple[int, Any, dict[str, str]] | None = None
    _discarded = 0

    def target(self) -> tuple[Table, str, dict[str, bytes | None], bool]:
        """(table, format, CSV options, sniff gzip) from the request; raises APIError."""
        raise NotImplementedError

    def prepare(self) -> Awaitable[None] | None:
        # A check added here that can refuse a plain /v0/events POST must also send it
        # away from the lean path (EventsRouter._lean), which admits only what this accepts.
        if self.request.method != "POST":
            return None
        self._counted = True
        self.gateway.active_requests += 1
        try:
            token = self.require(DATASOURCES_APPEND)
            table, fmt, csv_options, sniff = self.target()
            if not token.can(DATASOURCES_APPEND, table.datasource.name):
                raise APIError(403, f"token '{token.name}' has no {DATASOURCES_APPEND} scope "
                                    f"on '{table.datasource.name}'")
            if self.gateway.draining:
                raise APIError(503, "shutting down", {"Retry-After": "5"})
            overload = self.gateway.overloaded()
            if overload is not None:
                raise APIError(503, overload, {"Retry-After": "2"})
            if self._request_id(token, table):
                # Tornado reads no body until this is done.
                return self._unless_recorded(table, fmt, csv_options, sniff)
            if self.early is None and not self._finished:  # not replayed from memory
                self._start_ingest(table, fmt, csv_options, sniff)
        except APIError as error:
            self.answer_early(error.status, {"error": error.message}, error.headers)
        return None

    def _start_ingest(self, table: Table, fmt: str, csv_options: dict[str, bytes | None],
                      sniff: bool) -> None:
        limit = self.gateway.settings.max_body_bytes
        length = self.header("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise APIError(413, f"request body is larger than {limit} bytes")
        try:
            self.decoder = make_decoder(self.header("Content-Encoding"), limit, sniff_gzip=sniff,
                                        max_ratio=self.gateway.settings.max_compression_ratio)
        except BodyError as exc:
            raise APIError(exc.status, str(exc)) from None
        content_type = self.header("Content-Type") or ""
        if content_type.lower().startswith("multipart/form-data"):
            boundary = parse_boundary(content_type)
            if boundary is None:
                raise APIError(400, "multipart body without a boundary")
            self.multipart = MultipartReader(boundary)
        try:
            self.ingest = Ingest(self.gateway, table, fmt, csv_options=csv_options,
                                 import_id=self.import_id())
        except (SchemaError, ValueError) as exc:  # e.g. Array columns from CSV
            raise APIError(400, str(exc)) from None
        _allow_body(self.request, limit)  # the token is good: the server's small limit goes

    def answer_early(self, status: int, body: Any, headers: dict[str, str]) -> None:
        """Answer without ingesting. A small body is read and dropped first; a large one
        (or a 413) is answered now, and Tornado closes the connection after the answer."""
        length = self.request.headers.get("Content-Length", "")
        # The body is dropped, not kept: Tornado's small limit would answer a bare 400 over
        # this answer (a long body is answered at _DISCARD_LIMIT anyway).
        _allow_body(self.request, 1 << 62)
        if status == 413 or (length.isdigit() and int(length) > _DISCARD_LIMIT):
            self._send_early(status, body, headers)
        else:
            self.early = (status, body, headers)

    def _send_early(self, status: int, body: Any, headers: dict[str, str]) -> None:
        if self._finished:
            return
        self.clear()
        for name, value in headers.items():
            self.set_header(name, value)
        self.send_json(status, body)

    def import_id(self) -> str:
        return ""

    _request_key: tuple[str, str] | None = None

    def _request_id(self, token: Token, table: Table) -> bool:
        """True if the request carries an id to look up in the shared log. An answer
        this process remembers is replayed here (answered early, False)."""
        request_id = self.header("X-Request-Id") or self.query_argument("batch_id")
        if not request_id:
            return False
        if len(request_id.encode("utf-8", "surrogatepass")) > MAX_REQUEST_ID_BYTES:
            raise APIError(400, f"X-Request-Id (or batch_id) is longer than "
                                f"{MAX_REQUEST_ID_BYTES} bytes")
        # Per token and endpoint: another client's id never replays this one's answer.
        # By the token's value, not its name alone: a datafile may name a token as the
        # admin token is named.
        holder = hashlib.sha256(token.value.encode()).hexdigest()[:16]
        scope = f"{token.name}#{holder}:{type(self).__name__}:{table.datasource.name}"
        previous = self.gateway.recent_requests.begin(scope, request_id)
        if previous is None:
            raise APIError(409, f"request {request_id} is still being processed",
                           {"Retry-After": "1"})
        if previous is True:
            self._request_key = (scope, request_id)
            return True
        assert not isinstance(previous, bool)
        self._replay(previous)
        return False

    async def _unless_recorded(self, table: Table, fmt: str,
                               csv_options: dict[str, bytes | None], sniff: bool) -> None:
        """Replay the answer another process (or an earlier run) recorded for this id;
        else ingest. An id that cannot be checked is not ingested (503)."""
        key = self._request_key
        assert key is not None
        try:
            try:
                previous = await self.gateway.request_log.lookup(*key)
            except SinkError as exc:
                log.warning("cannot check request ids: %s", exc)
                raise APIError(503, f"cannot check X-Request-Id in ClickHouse: {exc}",
                               {"Retry-After": "1"}) from None
            if self._request_key is None:
                return  # the client went away meanwhile
            if previous is None:
                self._start_ingest(table, fmt, csv_options, sniff)
                return
            self._request_key = None
            self.gateway.recent_requests.finish(*key, previous.status, previous.body)
            self._replay(previous)
        except APIError as error:
            self.answer_early(error.status, {"error": error.message}, error.headers)

    def _replay(self, previous: Answer) -> None:
        self.answer_early(previous.status, previous.body, {"X-Idempotent-Replay": "true"})

    async def reply(self, status: int, body: Any) -> None:
        """Answer an ingest. A 2xx answer to a request with an id is recorded in the
        shared log first, so that a retry anywhere finds it once the client has it."""
        if self._request_key is not None and 200 <= status < 300:
            try:
                await self.gateway.request_log.record(*self._request_key, status,
                                                      _to_json(body))
            except SinkError as exc:
                # The rows are in: answering an error would make the client send them
                # again. This process still remembers the id.
                log.warning("could not record request id %s: %s", self._request_key[1], exc)
        self.send_json(status, body)

    async def confirmed(self, ingest: Ingest, accepted: Any) -> None:
        """Wait until ClickHouse has the request's rows (raises SinkError: 503).

        When it does not confirm them, the rows are still spooled and will be inserted:
        a retry with the same id is then answered 202 with ``accepted`` (the counts), not
        stored twice. This process remembers that at once; the shared log gets it when
        ClickHouse takes it (in an outage, usually not: a retry reaching another process
        may store the rows again).
        """
        try:
            await ingest.stored()
        except SinkError:
            if self._request_key is not None:
                key, self._request_key = self._request_key, None
                self.gateway.recent_requests.finish(*key, 202, accepted)
                task = asyncio.get_running_loop().create_task(
                    self.gateway.request_log.record(*key, 202, _to_json(accepted)))
                _recording.add(task)  # the loop keeps only a weak reference
                task.add_done_callback(_recorded)
            raise

    def send_json(self, status: int, body: Any) -> None:
        if self._request_key is not None:
            key, self._request_key = self._request_key, None
            self.gateway.recent_requests.finish(*key, status, body)
        super().send_json(status, body)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        # Not a coroutine: most chunks need no waiting, and Tornado only waits on what
        # is returned.
        if self.early is not None:
            self._discarded += len(chunk)
            if self._discarded > _DISCARD_LIMIT:  # a long chunked body: answer now
                early, self.early = self.early, None
                self._send_early(*early)
            return None
        if self._finished or self.ingest is None or self.decoder is None:
            return None
        return feed_pieces(self.decoder.pieces(chunk), self._feed, self._body_failed)

    def _feed(self, data: bytes) -> Awaitable[Any] | None:
        if self._finished or self.ingest is None:
            return None
        if self.multipart is not None:
            data = self.multipart.feed(data)
        self.ingest.feed(data)
        # Flow control: Tornado reads no more of the body until this is done.
        return self.ingest.backpressure()

    def _body_failed(self, exc: Exception) -> None:
        if isinstance(exc, BodyError):
            self.send_api_error(APIError(exc.status, str(exc)))
        elif isinstance(exc, SpoolFull):
            self.send_api_error(APIError(exc.status, str(exc), {"Retry-After": "5"}))
        else:
            raise exc

    def send_api_error(self, error: APIError) -> None:
        ingest = self.ingest
        if ingest is None or self._finished:
            super().send_api_error(error)
            return
        # Blocks of this request handed over before the error are stored all the same:
        # the answer says how many rows that is.
        self.clear()
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.send_json(error.status, {"error": error.message, **_stored_rows(ingest)})

    async def post(self) -> None:
        if self.early is not None:
            self._send_early(*self.early)
        if not self._finished:
            await self._handle(self.answer())

    async def answer(self) -> None:
        """Finish the body and answer (each endpoint's own response)."""
        raise NotImplementedError

    def _finish_body(self) -> Ingest:
        assert self.ingest is not None and self.decoder is not None
        try:
            data = self.decoder.finish()
            if self.multipart is not None:
                data = self.multipart.feed(data)
                self.multipart.finish()
            self.ingest.feed(data)
        except BodyError as exc:
            raise APIError(exc.status, str(exc)) from None
        self.ingest.finish()
        return self.ingest

    def on_connection_close(self) -> None:
        # A client that went away mid-body: its complete rows were accepted as they came.
        if self.ingest is not None:
            self.ingest.discard_results()
        if self._request_key is not None:
            key, self._request_key = self._request_key, None
            self.gateway.recent_requests.finish(*key, 499, None)
        self._done()

    def on_finish(self) -> None:
        if self._request_key is not None:  # finished without send_json (Tornado's errors)
            key, self._request_key = self._request_key, None
            self.gateway.recent_requests.finish(*key, self.get_status(), None)
        self._done()

    _counted = False

    def _done(self) -> None:
        if self._counted:
            self._counted = False
            self.gateway.active_requests -= 1


class EventsHandler(IngestHandler):
    """``POST /v0/events?name=DS[&wait=true]``: NDJSON rows (api.md section 1)."""

    def target(self) -> tuple[Table, str, dict[str, bytes | None], bool]:
        name = self.get_query_argument("name", None)
        if not name:
            raise APIError(400, "the 'name' parameter is required")
        table = self.gateway.tables.get(name)
        if table is None:
            raise APIError(404, f"data source '{name}' not found")
        return table, "ndjson", {}, False


    async def answer(self) -> None:
        ingest = self._finish_body()
        body = {"successful_rows": ingest.successful_rows,
                "quarantined_rows": ingest.quarantined_rows}
        wait = self.query_argument("wait")
        if wait is not None and wait.lower() in ("true", "1"):
            await self.confirmed(ingest, body)
            body.update(_stored_rows(ingest))  # rows ClickHouse refused: quarantined now
            await self.reply(200, body)
        else:
            ingest.discard_results()
            await self.reply(202, body)


class EventsRouter(routing.Router):
    """``/v0/events``: a plain 202 ingest takes a lean path; anything else the handler.

    A RequestHandler costs about as much CPU as a 1-row request's whole ingest (a Task,
    three coroutines, header bookkeeping: about 65 us of a tiny request's 250). A request
    that :class:`EventsHandler` would accept and answer without waiting (POST, a Bearer
    token with the append scope on a known data source, no ``wait``, no request id, no
    multipart, an acceptable size and encoding, the gateway neither draining nor
    overloaded) is served by :class:`_LeanIngest`, or :class:`_LeanSmallBody` for a small
    body: the same spool promise and answer bytes. Every other request, refusals
    included, goes to the handler, the one implementation of each of them.
    """

    def __init__(self, gateway: Gateway, authorizer: Authorizer) -> None:
        self.gateway = gateway
        self.authorizer = authorizer
        self._late_bodies = _LateBodies(gateway.settings.body_timeout)
        #: Set by routes.make_app once the Application exists (for the handler path).
        self.application: web.Application | None = None

    def find_handler(self, request: httputil.HTTPServerRequest,
                     **kwargs: Any) -> httputil.HTTPMessageDelegate | None:
        lean = self._lean(request)
        if lean is not None:
            return lean
        assert self.application is not None
        return self.application.get_handler_delegate(
            request, EventsHandler, {"gateway": self.gateway, "authorizer": self.authorizer})

    def _lean(self, request: httputil.HTTPServerRequest) -> _LeanRequest | None:
        """The lean path for this request, or None for the handler. Each check mirrors one
        of IngestHandler.prepare / EventsHandler; when in doubt, the handler."""
        if request.method != "POST":
            return None
        args = request.query_arguments
        headers = request.headers
        if "wait" in args or "batch_id" in args or "X-Request-Id" in headers:
            return None
        names = args.get("name")
        if not names:
            return None
        # A name the handler would clean up (spaces, control characters) matches no table
        # here, so it takes the handler's path.
        table = self.gateway.tables.get(names[-1].decode("utf-8", "replace"))
        if table is None:
            return None
        value = request_token(headers.get("Authorization"), None)
        if value is None:  # no header: ?token= or a 403, the handler's business
            return None
        try:
            token = self.authorizer.identify(value)
        except InvalidToken:
            return None
        if token is None or not token.can(DATASOURCES_APPEND, table.datasource.name):
            return None
        gateway = self.gateway
        if gateway.draining or gateway.overloaded() is not None:
            return None
        limit = gateway.settings.max_body_bytes
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            return None
        if headers.get("Content-Type", "").lower().startswith("multipart/form-data"):
            return None
        encoding = headers.get("Content-Encoding")
        try:
            if encoding is None and length is not None and length.isdigit() and \
                    int(length) <= SMALL_BODY_BYTES:
                return _LeanSmallBody(gateway, request, self._late_bodies,
                                      gateway.small_bodies(table))
            decoder = make_decoder(encoding, limit,
                                   max_ratio=gateway.settings.max_compression_ratio)
            ingest = Ingest(gateway, table, "ndjson")
        except (BodyError, SchemaError, ValueError):
            return None
        return _LeanIngest(gateway, request, self._late_bodies, decoder, ingest)


#: The handler's ``Server`` header, kept on the lean path's answers.
_SERVER = f"TornadoServer/{tornado.version}"


@functools.lru_cache(maxsize=1)
def _http_date(second: int) -> str:
    """The ``Date`` header, formatted once per second."""
    return httputil.format_timestamp(second)


class _LeanRequest(httputil.HTTPMessageDelegate):
    """One admitted ``/v0/events`` request (see :class:`EventsRouter`). Its answers,
    errors included, carry the same status, headers and JSON as the handler's, and it
    is counted in the metrics as ``EventsHandler``."""

    def __init__(self, gateway: Gateway, request: httputil.HTTPServerRequest,
                 late_bodies: _LateBodies) -> None:
        self.gateway = gateway
        self.request = request
        self.answered = False
        self._counted = True
        self._late_bodies = late_bodies
        late_bodies.watch(self)
        gateway.active_requests += 1

    def on_connection_close(self) -> None:
        self._done()

    def _accepted(self, successful_rows: int, quarantined_rows: int) -> None:
        self._answer(202, {"successful_rows": successful_rows,
                           "quarantined_rows": quarantined_rows})

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, BodyError):
            self._answer(exc.status, {"error": str(exc)})
        elif isinstance(exc, SpoolFull):
            # Blocks of this request spooled before this point are still delivered.
            self._answer(exc.status, {"error": str(exc)}, {"Retry-After": "5"})
        else:
            error_id = new_error_id()  # as BaseHandler.log_exception / write_error
            app_log.error("Uncaught exception %s (error id %s)", request_summary(self.request),
                          error_id, exc_info=exc)
            self._answer(500, {"error": f"{responses[500]} (error id {error_id})"})

    def _answer(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
        self.answered = True
        data = _to_json(body).encode()
        # The handler's headers, in its order.
        headers = httputil.HTTPHeaders({
            "Server": _SERVER, "Content-Type": "application/json",
            "Date": _http_date(int(time.time())), **_CORS_HEADERS, **(extra or {}),
            "Content-Length": str(len(data))})
        connection = self.request.connection
        assert connection is not None
        connection.write_headers(
            httputil.ResponseStartLine("", status, responses.get(status, "Unknown")),
            headers, data)
        connection.finish()
        metrics.observe_request("EventsHandler", status, self.request.request_time())
        self._done()

    def _done(self) -> None:
        if self._counted:
            self._counted = False
            self.gateway.active_requests -= 1
            self._late_bodies.forget(self)


class _LeanIngest(_LeanRequest):
    """A streamed body: chunks to the decoder and the request's own :class:`Ingest` as
    they come, then 202 with the row counts."""

    def __init__(self, gateway: Gateway, request: httputil.HTTPServerRequest,
                 late_bodies: _LateBodies, decoder: Decoder, ingest: Ingest) -> None:
        super().__init__(gateway, request, late_bodies)
        self.decoder = decoder
        self.ingest: Ingest | None = ingest
        _allow_body(request, gateway.settings.max_body_bytes)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.answered or self.ingest is None:
            return None
        # Every error is answered, as the handler does.
        return feed_pieces(self.decoder.pieces(chunk), self._feed, self._fail)

    def _feed(self, data: bytes) -> Awaitable[Any] | None:
        if self.answered or self.ingest is None:
            return None
        self.ingest.feed(data)
        return self.ingest.backpressure()

    def finish(self) -> None:
        ingest = self.ingest
        if self.answered or ingest is None:
            return
        try:
            ingest.feed(self.decoder.finish())
            ingest.finish()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        self._release()
        self._accepted(ingest.successful_rows, ingest.quarantined_rows)

    def on_connection_close(self) -> None:
        # A client that went away mid-body: its complete rows were accepted as they came.
        self._release()
        super().on_connection_close()

    def _fail(self, exc: Exception) -> None:
        ingest = self.ingest
        self._release()
        if ingest is not None and isinstance(exc, (BodyError, SpoolFull)):
            # As the handler's answer: the rows handed over before the error are stored.
            extra = {"Retry-After": "5"} if isinstance(exc, SpoolFull) else None
            self._answer(exc.status, {"error": str(exc), **_stored_rows(ingest)}, extra)
            return
        super()._fail(exc)

    def _release(self) -> None:
        """Nobody awaits this request's inserts: their errors must still be consumed."""
        ingest, self.ingest = self.ingest, None
        if ingest is not None:
            ingest.discard_results()


class _LeanSmallBody(_LeanRequest):
    """A small uncompressed body (at most :data:`SMALL_BODY_BYTES`, announced): kept
    until it is complete, then handed to the table's :class:`SmallBodies`, which answers
    it with the other small bodies of the same event-loop pass."""

    def __init__(self, gateway: Gateway, request: httputil.HTTPServerRequest,
                 late_bodies: _LateBodies, small_bodies: SmallBodies) -> None:
        super().__init__(gateway, request, late_bodies)
        self.small_bodies = small_bodies
        self.chunks: list[bytes] = []
        self.closed = False

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        chunks, self.chunks = self.chunks, []
        self.small_bodies.add(chunks[0] if len(chunks) == 1 else b"".join(chunks),
                              self._promised)

    def on_connection_close(self) -> None:
        # Before finish(): nothing of the body was taken. After: its rows are promised,
        # but nobody is left to hear it.
        self.closed = True
        self.chunks = []
        super().on_connection_close()

    def _promised(self, successful_rows: int, quarantined_rows: int,
                  error: Exception | None) -> None:
        if self.closed:
            return
        if error is not None:
            self._fail(error)
        else:
            self._accepted(successful_rows, quarantined_rows)


class _LateBodies:
    """TINYINGEST_BODY_TIMEOUT for the lean path. Tornado's own costs a timer and three
    futures per request (about 7 % of a 1-row request's CPU), so it is turned off for
    these requests, and one sweep a second hangs up on those whose body is late: the
    same limit, up to a second later."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadlines: dict[_LeanRequest, float] = {}  # insertion order: oldest first
        self._sweeper: PeriodicCallback | None = None

    def watch(self, lean: _LeanRequest) -> None:
        connection = lean.request.connection
        if not isinstance(connection, HTTP1Connection):
            return  # not Tornado's HTTP/1 connection: its own timeout applies
        connection.set_body_timeout(None)  # type: ignore[arg-type]  # None: no timer
        self._deadlines[lean] = time.monotonic() + self._timeout
        if self._sweeper is None:
            self._sweeper = PeriodicCallback(self._sweep, 1000)
            self._sweeper.start()

    def forget(self, lean: _LeanRequest) -> None:
        self._deadlines.pop(lean, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        late = []
        for lean, deadline in self._deadlines.items():
            if deadline > now:
                break  # the rest started later: same timeout, later deadlines
            late.append(lean)
        for lean in late:
            del self._deadlines[lean]
            connection = lean.request.connection
            assert isinstance(connection, HTTP1Connection)
            gen_log.info("Timeout reading body from %s", lean.request.remote_ip)
            connection.stream.close()  # the request learns it in on_connection_close


@web.stream_request_body
class DataSourcesHandler(IngestHandler):
    """``/v0/datasources``: ``GET`` lists; ``POST mode=append`` streams rows in."""

    _import_id = ""

    def import_id(self) -> str:
        self._import_id = new_import_id()
        return self._import_id

    def target(self) -> tuple[Table, str, dict[str, bytes | None], bool]:
        mode = self.get_query_argument("mode", "create")
        if mode != "append":
            raise APIError(400, f"mode={mode} is not supported yet; use mode=append")
        name = self.get_query_argument("name", None)
        if not name:
            raise APIError(400, "the 'name' parameter is required")
        table = self.gateway.tables.get(name)
        if table is None:
            raise APIError(404, f"data source '{name}' not found")
        fmt = self.get_query_argument("format", "csv").lower()
        if fmt not in ("csv", "ndjson", "json"):
            raise APIError(400, f"format '{fmt}' is not supported (csv or ndjson)")
        options: dict[str, bytes | None] = {}
        delimiter = self.get_query_argument("dialect_delimiter", None)
        if delimiter:
            options["delimiter"] = _one_byte(delimiter, "dialect_delimiter")
        escapechar = self.get_query_argument("dialect_escapechar", None)
        if escapechar:
            options["escapechar"] = _one_byte(escapechar, "dialect_escapechar")
        new_line = self.get_query_argument("dialect_new_line", None)
        if new_line and new_line not in ("\n", "\r\n", "\\n", "\\r\\n"):
            raise APIError(400, "dialect_new_line must be \\n or \\r\\n")
        return table, "csv" if fmt == "csv" else "ndjson", options, True

    async def get(self) -> None:
        await self._handle(self._list())

    async def _list(self) -> None:
        self.require()
        self.send_json(200, {"datasources": [datasource_json(t) for t in
                                             self.gateway.tables.values()]})


    async def answer(self) -> None:
        ingest = self._finish_body()
        table = ingest.table
        answer = {
            "id": self._import_id,
            "import_id": self._import_id,
            "job_id": self._import_id,
            "datasource": datasource_json(table),
            "successful_rows": ingest.successful_rows,
            "quarantined_rows": ingest.quarantined_rows,
            "quarantine_rows": ingest.quarantined_rows,
            "invalid_lines": ingest.invalid_lines,
            "error": False,
            "blocks": [],
        }
        await self.confirmed(ingest, answer)  # appends answer once the rows are in ClickHouse
        answer.update(_stored_rows(ingest), quarantine_rows=ingest.quarantined_rows)
        await self.reply(200, answer)


def _stored_rows(ingest: Ingest) -> dict[str, int]:
    return {"successful_rows": ingest.successful_rows,
            "quarantined_rows": ingest.quarantined_rows}


def _allow_body(request: httputil.HTTPServerRequest, limit: int) -> None:
    """Raise Tornado's body limit for this request (the server's is small: see cli.serve)."""
    if isinstance(request.connection, HTTP1Connection):
        request.connection.set_max_body_size(limit)


#: Request-id records written after their 503 answer (IngestHandler.confirmed).
_recording: set[asyncio.Task[None]] = set()


def _recorded(task: asyncio.Task[None]) -> None:
    _recording.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not record a request id: %s", task.exception())


def _one_byte(value: str, name: str) -> bytes:
    text = {"\\t": "\t", "tab": "\t"}.get(value, value)
    raw = text.encode()
    if len(raw) != 1:
        raise APIError(400, f"{name} must be a single character")
    return raw


def datasource_json(table: Table) -> dict[str, Any]:
    datasource = table.datasource
    created = datetime.datetime.fromtimestamp(table.created_at, datetime.timezone.utc)
    stamp = created.strftime("%Y-%m-%d %H:%M:%S.%f")  # clients strip 7 chars: keep micros
    return {
        "id": "t_" + uuid.uuid5(uuid.NAMESPACE_DNS, datasource.name).hex,
        "name": datasource.name,
        "description": datasource.description,
        "type": "ndjson",
        "created_at": stamp,
        "updated_at": stamp,
        "engine": {"engine": datasource.engine.name,
                   "sorting_key": datasource.engine.sorting_key or "tuple()",
                   "partition_key": datasource.engine.partition_key or ""},
        "schema": {"columns": [{
            "name": c.name, "normalized_name": c.name, "type": c.ch_type,
            "nullable": c.nullable and not c.array_depth, "default_value": c.default_expr, "codec": c.codec,
            "jsonpath": c.jsonpath, "auto": False,
        } for c in datasource.columns]},
        "headers": {}, "tags": {}, "shared_with": [], "used_by": [], "indexes": [],
        "quarantine": datasource.quarantine_name,
    }


_TRAILING_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)

#: Output formats: URL extension or FORMAT name -> (content type, writer).
_FORMATS = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "csvwithnames": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "jsoneachrow": "application/x-ndjson",
    "parquet": parquet.CONTENT_TYPE,
}


#: Query ids: unique per process run, cheap (ClickHouse only needs them for KILL QUERY).
_QUERY_ID_PREFIX = f"tinyingest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
_query_numbers = itertools.count()


class QueryHandler(BaseHandler):
    """Shared by pipe endpoints and ``/v0/sql``: parameters, execution, output formats."""

    _running: RunningQuery | None = None
    _client_gone = False

    def request_params(self) -> dict[str, str | list[str]]:
        """Query-string and body parameters; a repeated key gives a list (Array params)."""
        merged: dict[str, list[str]] = {}
        for name, values in self.request.query_arguments.items():
            merged.setdefault(name, []).extend(v.decode("utf-8", "replace") for v in values)
        content_type = self.request.headers.get("Content-Type", "")
        if self.request.method == "POST" and content_type.startswith("application/json"):
            try:
                body = json.loads(self.request.body or b"{}")
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                raise APIError(400, "the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise APIError(400, "the JSON body must be an object of parameters")
            for name, value in body.items():
                values = value if isinstance(value, list) else [value]
                merged.setdefault(name, []).extend(
                    v if isinstance(v, str) else json.dumps(v) for v in values)
        else:
            for name, raw in self.request.body_arguments.items():
                merged.setdefault(name, []).extend(v.decode("utf-8", "replace") for v in raw)
        return {name: values[0] if len(values) == 1 else values
                for name, values in merged.items()}

    async def run_query(self, compiled: CompiledQuery, sql: str, output: str,
                        limits: QueryLimits, params: dict[str, str | list[str]]) -> None:
        if output == "parquet" and not parquet.available():
            raise APIError(501, parquet.MISSING)
        if self._client_gone:
            return  # it hung up while the query was being compiled: nothing to run
        self._running = RunningQuery(f"{_QUERY_ID_PREFIX}-{next(_query_numbers)}")
        try:
            result = await self.gateway.query(sql, limits, settings=compiled.settings,
                                              running=self._running)
        except TooManyQueries as error:
            raise APIError(429, str(error), {"Retry-After": "1"}) from None
        except SinkError as error:
            if self._client_gone:
                return  # cancelled because the client left: no one to answer
            if error.code == 159:  # TIMEOUT_EXCEEDED
                raise APIError(408, f"query timeout: the query ran longer than {limits.timeout:g}"
                                    f" s, the limit set by {limits.timeout_origin} "
                                    f"({engine_message(error)})") from None
            if error.code == 396:  # TOO_MANY_ROWS_OR_BYTES: only max_result_rows is set
                raise APIError(400, f"result too large: more than {limits.max_rows} rows, the "
                                    f"limit set by {limits.max_rows_origin}; filter or add a "
                                    f"LIMIT ({engine_message(error)})") from None
            if error.code is None or error.code in _CONNECTION_REFUSED_CODES:
                # The gateway's connection failed, not the caller's query: say so, and
                # keep the server's words for the log.
                log.warning("query connection to ClickHouse failed: %s", error)
                raise APIError(503, "ClickHouse is not available for queries",
                               {"Retry-After": "1"}) from None
            raise APIError(400, engine_message(error)) from None
        finally:
            self._running = None
        if self._finished or self._client_gone:
            return
        self.write_result(result, output, params)

    def on_connection_close(self) -> None:
        # The client is gone: stop its query in ClickHouse rather than let it run on (or,
        # still waiting for a connection, never send it).
        self._client_gone = True
        if self._running is not None:
            asyncio.ensure_future(self.gateway.cancel(self._running))

    def write_result(self, result: QueryResult, output: str,
                     params: dict[str, str | list[str]]) -> None:
        names = [name for name, _ in result.meta]
        self.set_header("Content-Type", _FORMATS[output])
        if output == "parquet":
            # Tinybird's option (binary String columns unless it is 1).
            option = params.get("output_format_parquet_string_as_string", "0")
            self.finish(parquet.parquet_bytes(result.meta, result.rows, string_as_string=(
                option if isinstance(option, str) else option[-1]) in ("1", "true")))
        elif output == "json":
            body = query_json(result)
            self.finish(_to_json(body))
        elif output in ("ndjson", "jsoneachrow"):
            self.finish("".join(_to_json(dict(zip(names, row))) + "\n"
                                for row in result.rows))
        else:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            if output == "csvwithnames":
                writer.writerow(names)
            writer.writerows([_csv_value(v) for v in row] for row in result.rows)
            self.finish(buffer.getvalue())

    async def _handle(self, coro: Any) -> None:
        try:
            await super()._handle(coro)
        except TemplateError as error:
            self.send_json(error.status, error.body if error.body is not None
                           else {"error": str(error)})


def _csv_value(value: Any) -> Any:
    if value is None:
        return "\\N"
    if isinstance(value, (datetime.date, decimal.Decimal, uuid.UUID, list, tuple, bytes)):
        return _json_value(value) if not isinstance(value, (list, tuple)) else json.dumps(
            value, default=_json_value)
    return value


class SQLHandler(QueryHandler):
    """``GET|POST /v0/sql?q=SELECT ...``: read-only, over data sources and pipes.

    ``q`` comes from the query string, a form field, or the raw body. A ``q`` starting
    with ``%`` is a template rendered with the other parameters. JSON by default;
    a trailing ``FORMAT`` picks CSV, CSVWithNames, JSONEachRow, JSON or Parquet.
    """

    async def get(self) -> None:
        await self._handle(self._query())

    async def post(self) -> None:
        await self._handle(self._query())

    async def _query(self) -> None:
        token = self.require(DATASOURCES_READ)
        if not (token.is_admin or token.resources(DATASOURCES_READ)
                or token.resources(PIPES_READ)):
            raise APIError(403, f"token '{token.name}' has no READ scope: /v0/sql needs "
                                "DATASOURCES:READ or PIPES:READ on a resource")
        params = self.request_params()
        q = params.pop("q", None)
        if q is None and self.request.method == "POST":
            # The SQL as the body, whatever its Content-Type: curl -d sends it as a form,
            # which Tornado reads as a field named after the query.
            q = self.request.body.decode("utf-8", "replace")
        if isinstance(q, list):
            q = q[-1]
        if not q or not q.strip():
            raise APIError(400, "the 'q' parameter is required")
        sql = q.strip().rstrip(";")
        output = "json"
        match = _TRAILING_FORMAT.search(sql)
        if match:
            output = match.group(1).lower()
            if output not in _FORMATS:
                raise APIError(400, f"FORMAT {match.group(1)} is not supported: use JSON, CSV, "
                                    "CSVWithNames, JSONEachRow or Parquet")
            sql = sql[: match.start()]
        compiled = self.gateway.compile_sql(sql, params, token)
        await self.run_query(compiled, compiled.sql, output, self.gateway.query_limits(), params)


def query_json(result: QueryResult) -> dict[str, Any]:
    """ClickHouse's JSON output format, as Tinybird's clients read it."""
    names = [name for name, _ in result.meta]
    return {
        "meta": [{"name": name, "type": ch_type} for name, ch_type in result.meta],
        "data": [dict(zip(names, row)) for row in result.rows],
        "rows": len(result.rows),
        "rows_before_limit_at_least": max(result.rows_before_limit, len(result.rows)),
        "statistics": {"elapsed": result.elapsed, "rows_read": result.rows_read,
                       "bytes_read": result.bytes_read},
    }


class PipeDataHandler(QueryHandler):
    """``GET|POST /v0/pipes/<name>.(json|csv|csvwithnames|ndjson|parquet)``: a pipe's
    endpoint, with parameters."""

    async def get(self, name: str, extension: str) -> None:
        await self._handle(self._serve(name, extension))

    async def post(self, name: str, extension: str) -> None:
        await self._handle(self._serve(name, extension))

    async def _serve(self, name: str, extension: str) -> None:
        token = self.require(PIPES_READ, name)
        output = extension.lower()
        if output not in _FORMATS:
            raise APIError(400, f"format .{extension} is not supported: .json, .csv, "
                                ".csvwithnames, .ndjson, .parquet")
        pipe = self.gateway.project.pipes.get(name)
        if pipe is None:
            raise APIError(404, f"pipe '{name}' not found")
        params = self.request_params()
        # A JWT's fixed_params win over the request's (compile_pipe applies them).
        compiled = self.gateway.compile_pipe(pipe, params, token)
        sql = compiled.sql
        q = params.get("q")
        if q:
            # q is the caller's own SQL: it reads only what the token may read.
            sql = apply_q(q if isinstance(q, str) else q[-1], compiled,
                          self.gateway.readable_tables(token), row_filters=token.filters,
                          columns=self.gateway.table_columns, guard=self.gateway.guard)
        await self.run_query(compiled, sql, output, self.gateway.query_limits(pipe), params)


def pipe_json(pipe: Pipe) -> dict[str, Any]:
    endpoint = pipe.endpoint
    return {
        "id": "t_" + uuid.uuid5(uuid.NAMESPACE_DNS, "pipe:" + pipe.name).hex,
        "name": pipe.name,
        "description": pipe.description,
        "type": "endpoint" if endpoint is not None else (
            "materialized" if any(n.type == "materialized" for n in pipe.nodes) else "default"),
        "endpoint": endpoint.name if endpoint is not None else None,
        "nodes": [{"name": node.name, "sql": node.sql, "node_type": node.type,
                   "description": node.description, "materialized": node.datasource
                   if node.type == "materialized" else None} for node in pipe.nodes],
        "params": [{"name": p.name, "type": p.type, "default": p.default,
                    "description": p.description, "required": bool(p.required)}
                   for p in pipe_parameters(pipe)],
        "url": f"/v0/pipes/{pipe.name}.json" if endpoint is not None else None,
    }


class PipesHandler(BaseHandler):
    """``GET /v0/pipes`` and ``GET /v0/pipes/<name>``."""

    async def get(self, name: str | None = None) -> None:
        await self._handle(self._get(name))

    async def _get(self, name: str | None) -> None:
        token = self.require(PIPES_READ, name)
        pipes = self.gateway.project.pipes
        if name is None:
            self.send_json(200, {"pipes": [pipe_json(p) for p in pipes.values()
                                           if token.can(PIPES_READ, p.name)]})
            return
        pipe = pipes.get(name)
        if pipe is None:
            raise APIError(404, f"pipe '{name}' not found")
        self.send_json(200, pipe_json(pipe))


_OPENAPI_TYPES = {"Int": "integer", "UInt": "integer", "Float": "number", "Boolean": "boolean",
                  "Array": "array"}


class OpenAPIHandler(BaseHandler):
    """``GET /v0/pipes/openapi.json``: OpenAPI 3 for every endpoint and its parameters."""

    async def get(self) -> None:
        await self._handle(self._get())

    async def _get(self) -> None:
        token = self.require(PIPES_READ)
        paths: dict[str, Any] = {}
        for pipe in self.gateway.project.pipes.values():
            if pipe.endpoint is None or not token.can(PIPES_READ, pipe.name):
                continue
            parameters = []
            for param in pipe_parameters(pipe):
                kind = next((v for k, v in _OPENAPI_TYPES.items() if param.type.startswith(k)),
                            "string")
                schema: dict[str, Any] = {"type": kind}
                if kind == "array":
                    schema["items"] = {"type": "string"}
                if param.default is not None:
                    schema["default"] = param.default
                parameters.append({"name": param.name, "in": "query",
                                   "required": bool(param.required),
                                   "description": param.description or "",
                                   "schema": schema})
            paths[f"/v0/pipes/{pipe.name}.json"] = {"get": {
                "summary": pipe.description or pipe.name,
                "parameters": parameters,
                "responses": {"200": {"description": "ClickHouse JSON output"},
                              "400": {"description": "invalid parameter"}},
            }}
        self.send_json(200, {"openapi": "3.0.3",
                             "info": {"title": "tinyingest endpoints", "version": "1.0"},
                             "paths": paths,
                             "components": {"securitySchemes": {"bearer": {
                                 "type": "http", "scheme": "bearer"}}},
                             "security": [{"bearer": []}]})


class TokensHandler(BaseHandler):
    """``GET /v0/tokens``: the admin token sees every token, with its value and scopes."""

    async def get(self) -> None:
        await self._handle(self._get())

    async def _get(self) -> None:
        self.require(ADMIN)
        self.send_json(200, {"tokens": [t.as_json() for t in self.authorizer.tokens]})


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.send_json(200, {"status": "ok", "parser": parser.IMPLEMENTATION,
                             "backend": self.gateway.sink.name, "pid": os.getpid(),
                             "requests_in_flight": self.gateway.active_requests,
                             "queries_in_flight": self.gateway.queries_in_flight,
                             "spool_bytes": self.gateway.spool.bytes_on_disk})


class ReadyHandler(BaseHandler):
    """``/readyz``: 200 when the gateway can store and query now, 503 with the reason if
    not (ClickHouse down, draining). ``/healthz`` stays the liveness answer: a gateway
    whose ClickHouse is away still accepts rows into its spool."""

    async def get(self) -> None:
        reason = await self.gateway.unready()
        if reason is None:
            self.send_json(200, {"status": "ready", "backend": self.gateway.sink.name})
        else:
            self.set_header("Retry-After", "1")
            self.send_json(503, {"status": "unready", "error": reason})


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.send_api_error(APIError(404, f"not found: {self.request.path}"))
