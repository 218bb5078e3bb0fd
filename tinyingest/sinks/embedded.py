"""Embedded ClickHouse (chDB): the zero-setup sink.

:class:`EmbeddedSink` runs ClickHouse in-process with chDB (``pip install chdb-core``)
on a data directory of its own. It speaks the same SQL as a current ClickHouse server.

* **Inserts** stream the :class:`~tinyingest.block.EncodedBlock` as one Native-format
  block (``n_columns``, ``n_rows``, then per column name, type and payload) into
  ``Connection.send_insert("INSERT INTO t (...)", "Native")``: no temporary file, no
  Python object per row, and the engine parses Native at memory speed.
* **Queries** come back in Native format too and are decoded with clickhouse-driver's
  column readers, so rows hold the same Python values as
  :class:`~tinyingest.sinks.clickhouse.ClickHouseSink` returns (``datetime``, ``date``,
  ``None`` for NULL, lists for arrays).
* **Read-only queries** run on a second connection to the same engine opened with
  ``readonly=1`` and the limits as connection settings; a ``SETTINGS`` clause in the SQL
  can then neither lift the limits nor write (chDB runs every ``;``-separated statement,
  so a per-query ``SETTINGS`` suffix would not be enough).
* **Concurrency**: chDB runs one call at a time per connection (a second thread's call
  on the same connection waits for the first) and calls on different connections at
  once, with the GIL released. :meth:`~EmbeddedSink.reader` gives a sink with
  connections of its own, so queries on it never wait for this one's inserts.

chDB hosts one engine per process, bound to one data directory: open one EmbeddedSink
per process (and its readers) and :meth:`~EmbeddedSink.close` it before opening another
directory.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import threading
from collections import OrderedDict
from typing import Any

from tinyingest.block import EncodedBlock
from tinyingest.sinks import QueryResult, SinkError
from tinyingest.native import NativeDecoder, native_header, varint
from tinyingest.sinks.clickhouse import quote_identifier, quote_table

__all__ = ["EmbeddedSink"]

_CODE = re.compile(r"Code: (\d+)\. (?:DB::Exception: )?")
_VERSION_SUFFIX = re.compile(r"\s*\(version [0-9.]+[^)]*\)\.?$")
_MAX_READERS = 8  # cached query connections, one per distinct (readonly, limits)
_QUERY_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Readers open their connections from their pool threads: one chdb.connect at a time.
_CONNECT_LOCK = threading.Lock()


def _query_tag(query_id: str) -> str:
    """The comment that starts a query's SQL: chDB takes no query id from its caller
    (it makes one up), so :meth:`EmbeddedSink.cancel` finds the query by its text."""
    if not _QUERY_ID.match(query_id):
        raise ValueError(f"query_id {query_id!r}: use letters, digits and _ . : -")
    return f"/* tinyingest query {query_id} */ "


def _sink_error(exc: BaseException) -> SinkError:
    """ClickHouse's message and code out of a chDB exception."""
    text = str(exc)
    match = None
    for match in _CODE.finditer(text):
        pass  # the innermost "Code: N." carries the real message
    if match is None:
        return SinkError(text)
    message = _VERSION_SUFFIX.sub("", text[match.end() :]).strip()
    # chDB wraps some errors twice: "Code: 164. DB::Exception: ... (version x). (READONLY)"
    message = re.sub(r"\s*\(version [0-9.]+[^)]*\)\.\s*\([A-Z_]+\)$", "", message)
    return SinkError(message, int(match.group(1)))


class EmbeddedSink:
    """ClickHouse in-process (chDB) on ``data_dir``.

    :param data_dir: where chDB keeps its databases; created if missing.
    :param timezone: the session time zone (``session_timezone``) of every query.

    >>> sink = EmbeddedSink("/var/lib/tinyingest")  # doctest: +SKIP

    .. versionadded:: 0.1
    """

    name = "embedded"
    database = "default"

    def __init__(self, data_dir: str, *, timezone: str = "UTC") -> None:
        try:
            import chdb
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the embedded sink needs chDB: pip install 'tinyingest[embedded]'"
            ) from e
        path = os.path.abspath(data_dir)
        if any(char in path for char in "?&'\\"):
            raise ValueError(f"data_dir {path!r} must not contain ?, &, ' or \\")
        os.makedirs(path, exist_ok=True)
        self.data_dir = path
        # Blocks on their way into an INSERT (see insert()); plain names, no quoting needed.
        self._spill_dir = os.path.join(path, "inserts")
        os.makedirs(self._spill_dir, exist_ok=True)
        self._spill_numbers = itertools.count()
        self._chdb = chdb
        self._timezone = timezone
        try:
            self._conn: Any = chdb.connect(self._connection_string({}))
        except Exception as e:
            raise _sink_error(e) from e
        self._readers: OrderedDict[tuple[object, ...], Any] = OrderedDict()
        # KILL QUERY comes from other threads while the writer and readers are busy: it
        # gets a connection of its own.
        self._killer: Any = None
        self._killer_lock = threading.Lock()
        self._decoder = NativeDecoder(timezone)

    def __repr__(self) -> str:
        return f"<EmbeddedSink {self.data_dir}>"

    def _connection_string(self, settings: dict[str, object]) -> str:
        # LowCardinality of numbers and dates: the parser fills them exactly; ClickHouse
        # only calls them "suspicious" for their usual lack of benefit.
        params = {"session_timezone": self._timezone,
                  "allow_suspicious_low_cardinality_types": 1, **settings}
        return self.data_dir + "?" + "&".join(f"{key}={value}" for key, value in params.items())

    def connect(self, settings: dict[str, object]) -> Any:
        """Another chDB connection on this engine, its session with ``settings`` (chDB
        hosts one engine per process: a connection elsewhere would be refused)."""
        self._connection()  # raises when closed
        try:
            with _CONNECT_LOCK:
                return self._chdb.connect(self._connection_string(settings))
        except Exception as e:
            raise _sink_error(e) from e

    def reader(self) -> EmbeddedSink:
        """A sink for queries on this engine, with connections of its own: its queries
        run beside this sink's inserts and the other readers' queries (chDB serializes
        the calls of one connection only). Close it before or after this sink.

        >>> readers = [sink.reader() for _ in range(4)]  # doctest: +SKIP

        .. versionadded:: 0.2
        """
        reader = copy.copy(self)
        reader._conn = self.connect({})
        reader._readers = OrderedDict()
        reader._killer = None
        reader._killer_lock = threading.Lock()
        reader._decoder = NativeDecoder(self._timezone)  # a driver context per thread
        return reader

    def _connection(self) -> Any:
        if self._conn is None:
            raise SinkError("the embedded sink is closed")
        return self._conn

    # -- Sink protocol ------------------------------------------------------------

    def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL).

        :raises SinkError: ClickHouse refused the statement.
        """
        try:
            self._connection().query(sql, "Null")
        except Exception as e:
            raise _sink_error(e) from e

    def insert(self, table: str, block: EncodedBlock) -> None:
        """Insert ``block`` into ``table`` as one INSERT (one Native block).

        The block goes through a file in the data directory and ``INSERT ... SELECT FROM
        file(..., Native)``. chDB's streaming ``send_insert`` would avoid the file, but it
        reports success for rows the table then refuses (a CHECK constraint, a DEFAULT
        that throws): measured with chDB 26.9, ``rows_written=1`` and nothing stored.

        :raises SinkError: the table is missing, a type does not match, the data is
            malformed or the table refused it; nothing was inserted.
        """
        if block.num_rows == 0:
            return
        columns = ", ".join(quote_identifier(name) for name in block.names)
        path = os.path.join(self._spill_dir, f"{os.getpid()}-{next(self._spill_numbers)}.native")
        with open(path, "wb") as file:
            file.write(varint(len(block.names)) + varint(block.num_rows))
            for index, payload in enumerate(block.payloads):
                file.write(native_header(block, index))
                file.write(payload)
        try:
            self._connection().query(
                f"INSERT INTO {quote_table(table)} ({columns}) "
                f"SELECT * FROM file('{path}', Native)", "Null")
        except Exception as e:
            raise _sink_error(e) from e
        finally:
            os.unlink(path)

    def query(
        self,
        sql: str,
        *,
        readonly: bool = True,
        max_execution_time: float = 10.0,
        max_result_rows: int = 0,
        query_id: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> QueryResult:
        """Run a SELECT and return all its rows (see :meth:`ClickHouseSink.query`).

        ``query_id`` is written in a comment at the start of the SQL, for :meth:`cancel`.

        :raises SinkError: ClickHouse refused the query or a limit was hit.
        """
        connection = self._reader(readonly, max_execution_time, max_result_rows)
        if query_id is not None:
            sql = _query_tag(query_id) + sql
        if settings:
            sql += " SETTINGS " + ", ".join(f"{name} = {int(value)}"
                                            for name, value in settings.items())
        try:
            result = connection.query(sql, "Native")
            data = result.bytes()
            meta, rows = self._decoder.decode(data)
            if not meta:
                meta = self._describe(connection, sql)
            return QueryResult(
                meta=meta,
                rows=rows,
                rows_read=int(result.rows_read()),
                bytes_read=int(result.bytes_read()),
                elapsed=float(result.elapsed()),
            )
        except SinkError:
            raise
        except Exception as e:
            raise _sink_error(e) from e

    def cancel(self, query_id: str) -> bool:
        """Stop a running query (see :meth:`ClickHouseSink.cancel`): ``KILL QUERY`` on a
        connection of its own, from any thread; chDB runs it beside the busy ones."""
        tag = _query_tag(query_id)
        with self._killer_lock:
            if self._killer is None:
                self._killer = self.connect({})
            try:
                killed = self._killer.query(
                    f"KILL QUERY WHERE startsWith(query, '{tag}') ASYNC", "TSV").bytes()
            except Exception as e:
                raise _sink_error(e) from e
        return bool(killed.strip())

    def close(self) -> None:
        """Close every connection; the engine shuts down with the last one."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        with self._killer_lock:
            if self._killer is not None:
                self._killer.close()
                self._killer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- internals ----------------------------------------------------------------

    def _reader(self, readonly: bool, max_execution_time: float, max_result_rows: int) -> Any:
        """A connection whose session carries the limits (and ``readonly=1``, set last)."""
        self._connection()  # raises when closed
        key = (readonly, max_execution_time, max_result_rows)
        reader = self._readers.get(key)
        if reader is not None:
            self._readers.move_to_end(key)
            return reader
        settings: dict[str, object] = {}
        if max_execution_time > 0:
            settings["max_execution_time"] = max_execution_time
        if max_result_rows > 0:
            settings["max_result_rows"] = max_result_rows
            settings["result_overflow_mode"] = "throw"
        if readonly:
            settings["readonly"] = 1
        reader = self.connect(settings)
        self._readers[key] = reader
        if len(self._readers) > _MAX_READERS:
            _, oldest = self._readers.popitem(last=False)
            oldest.close()
        return reader

    @staticmethod
    def _describe(connection: Any, sql: str) -> list[tuple[str, str]]:
        """Column names and types of a query that returned no rows (Native writes nothing)."""
        body = sql.strip().rstrip(";")
        try:
            data = connection.query(f"DESCRIBE TABLE ({body}\n)", "JSONCompact").bytes()
        except Exception:
            # e.g. a FORMAT clause in the query: run it again for its JSON meta.
            data = connection.query(sql, "JSONCompact").bytes()
            return [(str(c["name"]), str(c["type"])) for c in json.loads(data)["meta"]]

        described = json.loads(data)["data"]
        return [(str(row[0]), str(row[1])) for row in described]
