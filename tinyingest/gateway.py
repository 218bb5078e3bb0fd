"""The running gateway: storage, data sources, their batchers; one ingest per request.

:class:`Gateway` is built once at startup (tables created, batchers ready) and handed
to every handler. :class:`Ingest` is one request's stream: decoded bytes in, blocks
out to the data source's batcher and bad rows to its quarantine batcher.
:class:`SmallBodies` does the same for many small 202 bodies at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyingest import ddl, metrics, migrate, parser, sqlguard
from tinyingest.auth import DATASOURCES_READ, PIPES_READ, Token
from tinyingest.batcher import (
    QUARANTINED,
    RowsRefused,
    SinkPool,
    TableBatcher,
    is_transient,
    is_view_error,
)
from tinyingest.config import Settings
from tinyingest.datafiles import DataSource, Node, Pipe, Project
from tinyingest.errors import ErrorCode
from tinyingest.idempotency import REQUEST_LOG_TABLE, RecentRequests, RequestLog
from tinyingest.block import Block, EncodedBlock
from tinyingest.native import encode_block, omit_missing, sort_plan
from tinyingest.pipes import (
    CompiledQuery,
    check_pipe,
    compile_endpoint,
    compile_node,
    datasource_columns,
)
from tinyingest.quarantine import quarantine_rows, refused_rows
from tinyingest.schema import ColumnSpec
from tinyingest.sinks import QueryResult, Sink, SinkError
from tinyingest.sinks.embedded import EmbeddedSink
from tinyingest.spool import Spool
from tinyingest.sqlguard import SQLGuard

log = logging.getLogger("tinyingest")

#: Rows handed from a request's parser to the batcher at a time: keeps a streaming
#: upload's memory flat whatever its size.
BLOCK_ROWS = 65_536

#: Uncompressed /v0/events bodies up to this size (announced) are parsed whole when they
#: end and coalesced with others (:class:`SmallBodies`); larger ones stream.
SMALL_BODY_BYTES = 64 << 10

#: NDJSON parsers kept for reuse per table.
_IDLE_PARSERS = 64

#: Row errors that mean the row could not be read at all (Tinybird's "invalid_lines").
_UNREADABLE = frozenset({ErrorCode.INVALID_JSON, ErrorCode.NOT_OBJECT, ErrorCode.BAD_CSV,
                         ErrorCode.FIELD_COUNT, ErrorCode.ROW_TOO_LONG, ErrorCode.TOO_DEEP})


@dataclass(slots=True)
class Table:
    """A data source as the gateway serves it."""

    datasource: DataSource
    ndjson_columns: tuple[ColumnSpec, ...]  # what NDJSON rows fill (a path, not computed)
    csv_columns: tuple[ColumnSpec, ...]  # what CSV fields fill, in order (not computed)
    batcher: TableBatcher
    quarantine: TableBatcher
    created_at: float
    #: NDJSON parsers that finished a body, reused: building one costs more than a tiny
    #: request's parsing (CSV parsers keep a body's header, so they are not reused).
    idle_parsers: list[parser.Parser] = field(default_factory=list)
    #: Small 202 bodies of the lean /v0/events path (see Gateway.small_bodies).
    small_bodies: SmallBodies | None = None


#: Seconds a readiness probe (``SELECT 1``) may take before ClickHouse counts as down.
_PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """What one endpoint or ``/v0/sql`` query may take, and where each limit is set
    (named in the error when a query hits it)."""

    timeout: float
    max_rows: int
    timeout_origin: str = "TINYINGEST_QUERY_TIMEOUT"
    max_rows_origin: str = "TINYINGEST_QUERY_MAX_ROWS"


class StartupError(Exception):
    """The project cannot be served on this ClickHouse (the message says why)."""


def _create_error(datasource: DataSource, error: SinkError) -> str:
    where = f"{datasource.path}: " if datasource.path else ""
    message = f"{where}ClickHouse refused the table of data source '{datasource.name}': {error}"
    match = re.search(r"Unknown data type family: (\w+)", str(error))
    if match:
        columns = [c.name for c in datasource.columns if match.group(1) in c.ch_type]
        message += (f". Column {', '.join(repr(c) for c in columns) or '?'} has type "
                    f"{match.group(1)}, which this ClickHouse server does not have (18.16 lacks "
                    "Bool, Date32, DateTime64, IPv4, IPv6, Int128/256, Map): use a newer server "
                    "or the embedded engine, or another type")
    return message


def _address(sink: Sink) -> str:
    host, port = getattr(sink, "host", None), getattr(sink, "port", None)
    return f"{host}:{port}" if host is not None else str(sink)


class _StartupWait:
    """A starting gateway's wait for a ClickHouse that does not answer (still starting,
    or away): said once when it begins, and once more if it ends in giving up."""

    def __init__(self, sink: Sink, seconds: float) -> None:
        self._sink = sink
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._said = False

    async def retry(self, exc: SinkError, what: str) -> None:
        """Return after a pause if ``exc`` is worth waiting out, else raise StartupError."""
        if not is_transient(exc):
            raise StartupError(what) from exc
        if time.monotonic() >= self._deadline:
            raise StartupError(
                f"ClickHouse at {_address(self._sink)} did not answer within {self._seconds:g} s "
                f"({exc}): start it, or check --clickhouse / TINYINGEST_CLICKHOUSE_URL; "
                "TINYINGEST_CLICKHOUSE_STARTUP_WAIT sets how long to wait") from exc
        if not self._said:
            self._said = True
            log.warning("ClickHouse is not answering yet (%s); waiting up to %g s for it",
                        exc, self._seconds)
        await asyncio.sleep(min(1.0, max(0.0, self._deadline - time.monotonic())))

#: KILL QUERY is sent again every this many seconds while the engine does not list a
#: query that has started (its Query packet may still be on its way), up to _KILL_FOR s.
_KILL_RETRY = 0.05
_KILL_FOR = 5.0


class QueryCancelled(SinkError):
    """The query's client went away before the query was sent: it never ran."""


class TooManyQueries(SinkError):
    """Every query connection is taken and ``query_max_waiting`` queries wait already:
    the query was not queued (answered 429, as Tinybird does over its limits)."""


class RunningQuery:
    """One endpoint query, shared by its handler (whose client may hang up at any moment)
    and the pool thread that runs it. The lock orders "sent to the engine" against
    "cancelled", so that a cancel is never lost: before the send, the query is not sent
    at all; after it, it is killed in the engine."""

    def __init__(self, query_id: str) -> None:
        self.query_id = query_id
        self._lock = threading.Lock()
        self._cancelled = False
        self._started = False
        self._ended = threading.Event()
        #: The pool call while the query waits for a connection: cancelled with the query,
        #: so that an abandoned query gives up its waiting place at once.
        self.waiting: asyncio.Future[Any] | None = None

    def start(self) -> None:
        """In the pool thread, just before the query is sent."""
        with self._lock:
            if self._cancelled:
                raise QueryCancelled(f"query {self.query_id} cancelled before it started")
            self._started = True

    def end(self) -> None:
        self._ended.set()

    def cancel(self) -> bool:
        """Mark the query cancelled; True if it was sent and is still to be killed."""
        with self._lock:
            self._cancelled = True
            return self._started and not self._ended.is_set()

    def wait_ended(self, seconds: float) -> bool:
        return self._ended.wait(seconds)


class Gateway:
    def __init__(self, settings: Settings, sink: Sink, project: Project, *,
                 spool_dir: str = "spool", readers: Sequence[Sink] = (),
                 insert_sinks: Sequence[Sink] = ()) -> None:
        """:param sink: creates the tables, inserts, and runs queries if there are no readers.
        :param readers: connections for queries (:meth:`EmbeddedSink.reader` on chDB);
            none: queries share the writer's, and wait for its inserts.
        :param insert_sinks: more connections for inserts, beside ``sink``."""
        self.settings = settings
        self.sink = sink
        self.project = project
        self.writer = SinkPool([sink, *insert_sinks], "writer")
        self.readers = SinkPool(readers, "reader") if readers else None
        # Callers' SQL is read by ClickHouse's parser: the embedded engine's own, or an
        # in-memory chDB in front of a server.
        self.guard = SQLGuard(functools.partial(sink.connect, sqlguard.SETTINGS)
                              if isinstance(sink, EmbeddedSink) else None)
        self.spool = Spool(str(Path(settings.data_dir) / spool_dir),
                           max_bytes=settings.spool_max_bytes, fsync=settings.spool_fsync)
        self.tables: dict[str, Table] = {}
        #: Table -> column names (data sources and quarantines), and everything a published
        #: pipe may read: both fixed once start() has created the tables.
        self.table_columns: dict[str, tuple[str, ...]] = {}
        self._all_tables: frozenset[str] = frozenset()
        self.recent_requests = RecentRequests()
        self.request_log = RequestLog(self.writer, sink.database)
        self.draining = False  # SIGTERM received: new ingest requests get 503
        self.active_requests = 0  # ingest requests being received or answered
        #: Queries handed to a sink and not yet back (queued for a connection, or running).
        self.queries_in_flight = 0
        self._probe: asyncio.Future[QueryResult] | None = None  # see unready()
        self._probe_started = 0.0
        # Cancels have threads of their own: a busy default executor must not delay them.
        self._cancels = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="tinyingest-cancel")

    async def drain(self, timeout: float) -> None:
        """Refuse new rows, let requests in flight finish (up to ``timeout`` s), flush."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.active_requests > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.active_requests:
            log.warning("%d requests still in flight after %.0f s", self.active_requests,
                        timeout)
        await self.close()

    async def start(self) -> None:
        """Create every data source's tables (idempotent), then replay the spool.

        A ClickHouse that does not answer yet (still starting, or busy) is waited for, up
        to ``settings.clickhouse_startup_wait`` seconds (said once); a table it refuses
        stops the start at once.
        """
        database = self.sink.database
        wait = _StartupWait(self.sink, self.settings.clickhouse_startup_wait)
        if REQUEST_LOG_TABLE in self.project.datasources:
            raise StartupError(f"data source name '{REQUEST_LOG_TABLE}' is reserved: the "
                               "gateway keeps the answers to X-Request-Id there")
        plans = await self._schema_plans(database, wait)
        for datasource in self.project.datasources.values():
            while True:
                try:
                    await self.writer.run(functools.partial(
                        self._create, datasource, database, plans[datasource.name]))
                    break
                except SinkError as exc:
                    await wait.retry(exc, _create_error(datasource, exc))
                    # An ALTER may have been applied before the error: read again.
                    plans = await self._schema_plans(database, wait)
            self.tables[datasource.name] = self._table(datasource)
        create_log = self.request_log.create_sql()
        await self.writer.run(lambda sink: sink.execute(create_log))
        await self.request_log.prune()
        self.table_columns = datasource_columns(t.datasource for t in self.tables.values())
        self._all_tables = frozenset(self.readable_tables(None))
        for pipe in self.project.pipes.values():
            check_pipe(pipe, self.readable_tables(None), pipes=self.project.pipes)
        # Start the parser now: a first query should not wait for it (nor a broken chDB
        # install go unnoticed until then).
        self.guard.check("SELECT 1")
        await self.writer.run(functools.partial(self._create_views, database))
        log.info("parser: %s; backend: %s (%s); data sources: %s", parser.IMPLEMENTATION,
                 self.sink.name, self.sink, ", ".join(sorted(self.tables)) or "none")
        await self._replay()

    async def _replay(self) -> None:
        """Blocks accepted by an earlier process but never confirmed by ClickHouse."""
        replayed = skipped = 0
        for record, table_name, block in self.spool.replay():
            batcher = self._batcher(table_name)
            if batcher is None:
                skipped += 1  # kept in the spool: its data source may come back
                continue
            future = batcher.add(block, record)
            future.add_done_callback(_consume)
            replayed += block.num_rows
            if batcher.pending_bytes > self.settings.batch.flush_bytes:
                await asyncio.wait([future])  # bound the memory a big backlog takes
        if replayed or skipped:
            log.info("spool: replaying %d rows; %d blocks wait for a data source that is "
                     "not in the project", replayed, skipped)

    def _batcher(self, table_name: str) -> TableBatcher | None:
        for table in self.tables.values():
            if table.datasource.name == table_name:
                return table.batcher
            if table.datasource.quarantine_name == table_name:
                return table.quarantine
        return None

    def overloaded(self) -> str | None:
        """Why new rows must be refused now (503), or None."""
        spool = self.spool
        if spool.pending_bytes > spool.max_bytes * 0.9:  # acknowledged rows do not count
            return "the spool of unconfirmed rows is nearly full: ClickHouse is slow or down"
        # Checked on every ingest request: one plain loop, no generators.
        pending = 0
        oldest = 0.0
        for table in self.tables.values():
            pending += table.batcher.pending_bytes + table.quarantine.pending_bytes
            oldest = max(oldest, table.batcher.lag)
        if pending > self.settings.max_pending_bytes:
            return "too many rows waiting for ClickHouse"
        # Rows that wait longer than this for a busy ClickHouse (every insert connection
        # taken; not the flush interval) are not "queryable within a second" any more:
        # ClickHouse takes less than we accept, so ask clients to slow down. While it is
        # away, rows are accepted into the spool up to the limits above.
        if oldest > self.settings.max_pending_age:
            return f"ClickHouse is {oldest:.1f} s behind"
        return None

    async def _refused(self, datasource: DataSource, blocks: list[EncodedBlock],
                       error: SinkError) -> bool | str:
        """Rows ClickHouse will not take go to the quarantine whole, with its message.
        False if some could not be spooled for it: they stay in the spool as they are;
        QUARANTINED once they are in the quarantine table."""
        table = self.tables[datasource.name]
        kept = True
        futures: list[asyncio.Future[None]] = []
        message = str(error)
        if is_view_error(error):
            message = (f"a materialized view on '{datasource.name}' failed, so these rows "
                       f"may be in '{datasource.name}' too (ClickHouse stores the table "
                       f"before its views): {message}")
        for block in blocks:
            try:
                bad = refused_rows(datasource, block, message)
                record = self.spool.append(datasource.quarantine_name, bad)
            except Exception:
                log.exception("could not quarantine %d refused rows for %s", block.num_rows,
                              datasource.name)
                kept = False
                continue
            metrics.count_refused(datasource.name, "quarantined", block.num_rows)
            futures.append(table.quarantine.add(bad, record))
        if futures:
            # The request waiting for these rows (wait=true) hears of them once they are
            # in the quarantine table, or once ClickHouse had its time (they are spooled).
            table.quarantine.expedite()
            done, _ = await asyncio.wait(futures, timeout=self.settings.clickhouse_timeout)
            for future in futures:
                future.add_done_callback(_consume)
            if kept and len(done) == len(futures) and \
                    not any(f.cancelled() or f.exception() for f in futures):
                return QUARANTINED
        return kept

    async def _quarantine_refused(self, datasource: DataSource, blocks: list[EncodedBlock],
                                  error: SinkError) -> bool | str:
        """Even the quarantine table refused rows: they stay in the spool (the next start
        inserts them again, once the table is repaired), never dropped."""
        rows = sum(block.num_rows for block in blocks)
        metrics.count_refused(datasource.name, "kept_in_spool", rows)
        log.error("%s: the quarantine table refused %d rows too; they stay in the spool "
                  "and are inserted again at the next start: %s", datasource.name, rows, error)
        return False

    async def _schema_plans(self, database: str,
                            wait: _StartupWait) -> dict[str, migrate.Plan]:
        """Every data source's datafile against its live tables (see :mod:`migrate`),
        all read before anything is changed; a change that is not additive stops the
        start with every problem found, and nothing altered."""
        datasources = self.project.datasources.values()
        names = tuple(name for d in datasources for name in (d.name, d.quarantine_name))
        while True:
            try:
                live = await self.writer.run(
                    functools.partial(migrate.read_live, database=database, names=names))
                break
            except SinkError as exc:
                await wait.retry(exc, f"could not read the tables of the data sources: {exc}")
        plans = {d.name: migrate.plan(d, database, live.get(d.name),
                                      live.get(d.quarantine_name)) for d in datasources}
        problems = [problem for p in plans.values() for problem in p.problems]
        if problems:
            raise StartupError(
                "the datafiles do not match the tables ClickHouse has; the gateway changes "
                "a table only to add a column, and changed nothing:\n  " + "\n  ".join(problems)
                + "\nRevert the datafile, or migrate the table by hand (README: Data sources).")
        return plans

    @staticmethod
    def _create(datasource: DataSource, database: str, plan: migrate.Plan, sink: Sink) -> None:
        for statement, change in zip(plan.statements, plan.changes):
            sink.execute(statement)
            log.info("%s", change)
        sink.execute(ddl.create_table_sql(datasource, database))
        sink.execute(ddl.create_quarantine_sql(datasource, database))

    def _table(self, datasource: DataSource) -> Table:
        writable = tuple(c for c in datasource.columns
                         if c.default_kind not in ("MATERIALIZED", "ALIAS"))
        ndjson = tuple(c for c in writable if c.path is not None)
        limits = self.settings.batch
        return Table(
            datasource=datasource,
            ndjson_columns=ndjson,
            csv_columns=writable,
            batcher=TableBatcher(self.writer, datasource.name, ndjson, limits,
                                 on_stored=self.spool.ack,
                                 on_rows_stored=functools.partial(metrics.count_stored,
                                                                  datasource.name),
                                 on_refused=functools.partial(self._refused, datasource),
                                 sort=sort_plan(ndjson, datasource.engine.sorting_key)),
            quarantine=TableBatcher(self.writer, datasource.quarantine_name, (), limits,
                                    on_stored=self.spool.ack,
                                    on_refused=functools.partial(self._quarantine_refused,
                                                                 datasource)),
            created_at=time.time(),
        )

    def small_bodies(self, table: Table) -> SmallBodies:
        """The table's coalescer of small 202 bodies, built on first use. Raises
        SchemaError as an :class:`Ingest` of the table would."""
        if table.small_bodies is None:
            table.small_bodies = SmallBodies(self.spool, table, self.settings.max_row_bytes)
        return table.small_bodies

    def query_limits(self, pipe: Pipe | None = None) -> QueryLimits:
        """The limits of ``pipe``'s endpoint (its ``QUERY_MAX_ROWS`` / ``QUERY_TIMEOUT``
        where set), or of ``/v0/sql`` (None)."""
        limits = QueryLimits(self.settings.query_timeout, self.settings.query_max_rows)
        if pipe is None:
            return limits
        where = f"of pipe '{pipe.name}' ({pipe.path or pipe.name})"
        if pipe.query_timeout is not None:
            limits = dataclasses.replace(limits, timeout=pipe.query_timeout,
                                         timeout_origin=f"QUERY_TIMEOUT {where}")
        if pipe.query_max_rows is not None:
            limits = dataclasses.replace(limits, max_rows=pipe.query_max_rows,
                                         max_rows_origin=f"QUERY_MAX_ROWS {where}")
        return limits

    async def query(self, sql: str, limits: QueryLimits, *, query_id: str | None = None,
                    settings: dict[str, Any] | None = None,
                    running: RunningQuery | None = None) -> QueryResult:
        """A read-only SELECT under ``limits``; ``running`` (with its query id) lets
        :meth:`cancel` stop it. :raises QueryCancelled: cancelled before it was sent."""
        if running is not None:
            query_id = running.query_id

        def run(sink: Sink) -> QueryResult:
            if running is not None:
                running.start()
            try:
                return sink.query(sql, readonly=True, max_execution_time=limits.timeout,
                                  max_result_rows=limits.max_rows, query_id=query_id,
                                  settings=settings)
            finally:
                if running is not None:
                    running.end()
        pool = self.readers if self.readers is not None else self.writer
        # Past its connections, a query waits for one, up to a bound: each one runs for
        # its timeout at most, so the wait is bounded too.
        if self.queries_in_flight >= pool.size + self.settings.query_max_waiting:
            raise TooManyQueries(
                f"too many queries at once: {pool.size} running and "
                f"{self.settings.query_max_waiting} waiting, the limits set by "
                f"TINYINGEST_QUERY_CONNECTIONS and TINYINGEST_QUERY_MAX_WAITING")
        self.queries_in_flight += 1
        call = asyncio.ensure_future(pool.run(run))
        if running is not None:
            running.waiting = call
        try:
            return await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if running is None or not call.cancelled() or \
                    (current is not None and current.cancelling()):
                raise  # not the query's cancel (shutdown): let it go on
            raise QueryCancelled(f"query {running.query_id} cancelled before it started") \
                from None
        finally:
            self.queries_in_flight -= 1
            if running is not None:
                running.waiting = None

    async def unready(self) -> str | None:
        """Why this gateway should not get traffic now (draining, ClickHouse not
        answering), or None. At most one probe runs at a time; its answer holds 1 s."""
        if self.draining:
            return "draining: the gateway is stopping"
        now = time.monotonic()
        if self._probe is None or (self._probe.done() and now - self._probe_started > 1.0):
            self._probe_started = now
            self._probe = asyncio.ensure_future(
                self.query("SELECT 1", QueryLimits(_PROBE_TIMEOUT, 1)))
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), _PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            return f"ClickHouse did not answer within {_PROBE_TIMEOUT:g} s"
        except SinkError as exc:
            return f"ClickHouse: {exc}"
        return None

    async def cancel(self, running: RunningQuery) -> None:
        """Stop a query whose client went away (ClickHouse would run it on for minutes):
        a query still waiting for a connection is never sent; a sent one is killed."""
        if not running.cancel():
            if running.waiting is not None:
                # Never sent: leave the pool's queue (a thread that has just taken it
                # finds it cancelled and does not send it).
                running.waiting.cancel()
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._cancels, self._kill, running)
        except SinkError as exc:
            log.warning("could not cancel query %s: %s", running.query_id, exc)

    def _kill(self, running: RunningQuery) -> None:
        # The Query packet may not have reached the engine yet when the client hangs up
        # just as the query starts: kill again until the engine has it or it has ended.
        deadline = time.monotonic() + _KILL_FOR
        while not self.sink.cancel(running.query_id):
            if running.wait_ended(_KILL_RETRY) or time.monotonic() > deadline:
                return

    def readable_tables(self, token: Token | None) -> set[str]:
        """The data sources (and their quarantines) ``token`` may read; None: all, as a
        published pipe reads whatever its SQL names. A data source the token reads
        through a row filter (JWT) comes without its quarantine."""
        if token is None and self._all_tables:
            return set(self._all_tables)
        names = set(self.tables) if token is None or token.is_admin else \
            token.resources(DATASOURCES_READ) & set(self.tables)
        filtered = token.filters if token is not None else {}
        return names | {self.tables[name].datasource.quarantine_name for name in names
                        if name not in filtered}

    def compile_sql(self, q: str, params: Mapping[str, str | list[str]],
                    token: Token) -> CompiledQuery:
        """``/v0/sql``: a query (a template if it starts with %) over what ``token`` may
        read: data sources (through its row filters), their quarantines and pipes (with
        its fixed parameters). ``column()`` & co name only columns of what it may read."""
        pipes = {name: pipe for name, pipe in self.project.pipes.items()
                 if token.can(PIPES_READ, name)}
        adhoc = Pipe("_sql", "", (Node("_sql", q),))
        return compile_node(adhoc, "_sql", params, self.readable_tables(token) | set(pipes),
                            pipes=pipes, pipe_tables=self._all_tables,
                            columns=self.table_columns,
                            row_filters=token.filters, fixed_params=token.fixed_params,
                            guard=self.guard)

    def compile_pipe(self, pipe: Pipe, params: Mapping[str, str | list[str]],
                     token: Token | None = None) -> CompiledQuery:
        """A pipe's endpoint, with ``token``'s fixed parameters (JWT) over ``params``;
        ``column()`` & co name only columns of the data sources."""
        return compile_endpoint(pipe, params, self._all_tables, pipes=self.project.pipes,
                                columns=self.table_columns,
                                fixed_params=token.fixed_params if token is not None else None,
                                guard=self.guard)

    def _create_views(self, database: str, sink: Sink) -> None:
        """Materialized pipes: a ClickHouse materialized view per node, ``TO`` its target,
        so rows are pre-aggregated as they are inserted."""
        for pipe in self.project.pipes.values():
            for node in pipe.nodes:
                if node.type != "materialized" or node.datasource is None:
                    continue
                select = compile_node(pipe, node.name, {}, self.readable_tables(None),
                                      pipes=self.project.pipes, guard=self.guard).sql
                view = ddl.quote_identifier(f"{pipe.name}__{node.name}")
                sink.execute(
                    f"CREATE MATERIALIZED VIEW IF NOT EXISTS {ddl.quote_identifier(database)}."
                    f"{view} TO {ddl.quote_identifier(database)}."
                    f"{ddl.quote_identifier(node.datasource)} AS {select}")

    async def close(self) -> None:
        for table in self.tables.values():
            await table.batcher.close()
            await table.quarantine.close()
        self.spool.close()
        self.guard.close()
        await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
        if self.readers is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.readers.close)
        self._cancels.shutdown(wait=False, cancel_futures=True)


class Ingest:
    """One request's rows: ``feed`` decoded body bytes, then ``finish``.

    Rows go to the batcher in blocks of :data:`BLOCK_ROWS` while the body streams in;
    ``stored`` resolves when ClickHouse has acknowledged every one of them.
    """

    def __init__(self, gateway: Gateway, table: Table, fmt: str, *,
                 csv_options: dict[str, bytes | None] | None = None,
                 import_id: str = "") -> None:
        self.table = table
        self.import_id = import_id
        self._spool = gateway.spool
        self._max_row_bytes = gateway.settings.max_row_bytes
        self._confirm_timeout = gateway.settings.clickhouse_timeout
        self._delimiter: bytes | None = None
        if fmt == "csv":
            options = csv_options or {}
            self._delimiter = options.get("delimiter") or b","
            self._columns: Sequence[ColumnSpec] = table.csv_columns
            self._parser: parser.Parser = \
                parser.CSVParser(self._columns, max_row_bytes=self._max_row_bytes,
                                 delimiter=self._delimiter,
                                 escapechar=options.get("escapechar"))
        else:
            self._columns = table.ndjson_columns
            self._parser = table.idle_parsers.pop() if table.idle_parsers else \
                parser.NDJSONParser(self._columns, max_row_bytes=self._max_row_bytes)
        self._rows_since_take = 0
        self._futures: list[asyncio.Future[None]] = []
        self.successful_rows = 0
        self.quarantined_rows = 0
        self.invalid_lines = 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._rows_since_take += self._parser.feed(data)
        if self._rows_since_take >= BLOCK_ROWS:
            self._hand_over()

    def finish(self) -> None:
        self._parser.finish()
        self._hand_over()
        if self._delimiter is None and len(self.table.idle_parsers) < _IDLE_PARSERS:
            self.table.idle_parsers.append(self._parser)
        metrics.count_rows(self.table.datasource.name, self.successful_rows,
                           self.quarantined_rows)

    def _hand_over(self) -> None:
        block = self._parser.take_block()
        self._rows_since_take = 0
        promise(self._spool, self.table, self._columns, block, self._futures,
                csv_delimiter=self._delimiter, import_id=self.import_id,
                max_row_bytes=self._max_row_bytes)
        self.successful_rows += block.num_rows
        self.quarantined_rows += len(block.errors)
        self.invalid_lines += sum(1 for e in block.errors if e.code in _UNREADABLE)

    def backpressure(self) -> Awaitable[Any] | None:
        """While the table has much more pending than one flush: something to wait on
        (the last block's insert); else None."""
        if self.table.batcher.pending_rows > 4 * BLOCK_ROWS and self._futures:
            # asyncio.wait: a failed insert is reported by stored(), not here.
            return asyncio.wait([self._futures[-1]])
        return None

    async def stored(self) -> None:
        """Wait until ClickHouse has every row of this request; raises SinkError when an
        insert failed or ClickHouse has not confirmed within the ClickHouse timeout.

        The deadline is the request's own: during an outage a backlog of spooled rows
        queues ahead of this request's and is retried with a backoff, so the insert
        holding them may not even be tried in time. The rows stay promised either way.
        """
        if not self._futures:
            return
        self.table.batcher.expedite()
        self.table.quarantine.expedite()
        _, waiting = await asyncio.wait(self._futures, timeout=self._confirm_timeout)
        self.discard_results()  # the first error is raised; the others are consumed
        if waiting:
            raise SinkError(f"ClickHouse did not confirm the rows within "
                            f"{self._confirm_timeout:g} s; they are spooled and will be "
                            f"inserted when it does")
        for future in self._futures:
            error = future.exception()
            if isinstance(error, RowsRefused):
                # ClickHouse refused them after they were accepted: they are in the
                # quarantine with its message, so they count as quarantined.
                self.successful_rows -= error.rows
                self.quarantined_rows += error.rows
            elif error is not None:
                raise error

    def discard_results(self) -> None:
        """For 202 answers: nobody awaits the inserts, but their errors must be consumed."""
        for future in self._futures:
            future.add_done_callback(_consume)


def promise(spool: Spool, table: Table, columns: Sequence[ColumnSpec], block: Block,
            futures: list[asyncio.Future[None]], *, csv_delimiter: bytes | None = None,
            import_id: str = "", max_row_bytes: int) -> None:
    """Spool ``block``'s rows and its bad rows, then queue them for their tables; each
    insert's future is appended to ``futures``. Once a part is queued it is promised, so
    a :class:`SpoolFull` for the bad rows leaves the good rows promised."""
    datasource = table.datasource
    # Spooled before the batcher sees it: once added, a block is promised.
    if block.num_rows:
        # Rows without a value for an expression DEFAULT go without that column.
        for encoded in omit_missing(columns, block.omitted, encode_block(columns, block)):
            record = spool.append(datasource.name, encoded)
            futures.append(table.batcher.add(encoded, record))
    if block.errors:
        bad = quarantine_rows(datasource, columns, block.errors, csv_delimiter=csv_delimiter,
                              import_id=import_id, max_row_bytes=max_row_bytes)
        record = spool.append(datasource.quarantine_name, bad)
        futures.append(table.quarantine.add(bad, record))


#: What a small body's request learns once its rows are promised: its stored and
#: quarantined row counts, or why nothing of it was.
Accepted = Callable[[int, int, Exception | None], None]


class SmallBodies:
    """Small NDJSON bodies of one data source answered 202, coalesced.

    Each body is parsed whole when its request ends, into one parser shared by all of
    them; once per event-loop pass the rows of every body that ended in that pass are
    spooled and queued as one block, and then each request learns its counts. A 1-row
    request so costs a parse, not a block, an encode, a spool write and an insert future
    of its own. The promise is the same as :class:`Ingest`'s: nobody hears "accepted"
    before its rows are in the spool.
    """

    def __init__(self, spool: Spool, table: Table, max_row_bytes: int) -> None:
        self._spool = spool
        self._table = table
        self._max_row_bytes = max_row_bytes
        self._parser = parser.NDJSONParser(table.ndjson_columns, max_row_bytes=max_row_bytes)
        self._waiting: list[tuple[Accepted, int, int]] = []  # since the last hand-over

    def add(self, body: bytes, accepted: Accepted) -> None:
        """Parse ``body`` (a whole request's); ``accepted`` is called in this or the next
        event-loop pass."""
        parser_ = self._parser
        good = parser_.num_rows
        ended = parser_.feed(body) + parser_.finish()
        good = parser_.num_rows - good
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self._hand_over)
        self._waiting.append((accepted, good, ended - good))

    def _hand_over(self) -> None:
        waiting, self._waiting = self._waiting, []
        block = self._parser.take_block()
        futures: list[asyncio.Future[None]] = []
        error: Exception | None = None
        try:
            promise(self._spool, self._table, self._table.ndjson_columns, block, futures,
                    max_row_bytes=self._max_row_bytes)
        except Exception as exc:  # noqa: BLE001 - each request is answered with it
            error = exc
        else:
            metrics.count_rows(self._table.datasource.name, block.num_rows,
                               len(block.errors))
        for future in futures:  # nobody awaits a 202's inserts: consume their errors
            future.add_done_callback(_consume)
        for accepted, good, bad in waiting:
            try:  # one request's failure to answer must not leave the others hanging
                if error is None:
                    accepted(good, bad, None)
                else:
                    accepted(0, 0, error)
            except Exception:  # noqa: BLE001
                log.exception("answering a request of %s failed", self._table.datasource.name)


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def new_import_id() -> str:
    return secrets.token_hex(13).upper()
