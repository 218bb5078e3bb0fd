"""ClickHouse server over the native protocol (clickhouse-driver).

:class:`ClickHouseSink` uses clickhouse-driver for the connection, the handshake, queries
and result decoding, but sends INSERT data itself: an
:class:`~tinyingest.block.EncodedBlock` is already Native column data, so the Data packet
is a small header around those payloads and no Python object is built per row.

The INSERT exchange (as in ``clickhouse_driver.Client.process_insert_query``)::

    -> Query "INSERT INTO t (a, b) VALUES"      (compression off)
    -> Data (empty)                              end of external tables
    <- Data (sample block: the columns' types)
    -> Data (our block)                          [<- ProfileEvents, revision >= 54456]
    -> Data (empty)                              end of data [<- ProfileEvents]
    <- EndOfStream | Exception

The packet layout follows the driver's own revision checks, so the sink works with old
servers (Debian's 18.16, revision 54412) and current ones (custom-serialization byte).
"""

from __future__ import annotations

import io
import re
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from clickhouse_driver import Client, defines, errors
from clickhouse_driver.block import RowOrientedBlock
from clickhouse_driver.clientinfo import ClientInfo
from clickhouse_driver.protocol import ClientPacketTypes, Compression, ServerPacketTypes
from clickhouse_driver.queryprocessingstage import QueryProcessingStage
from clickhouse_driver.settings.writer import SettingsFlags, write_settings
from clickhouse_driver.writer import write_binary_str
from clickhouse_driver.varint import write_varint

from tinyingest.block import EncodedBlock
from tinyingest.native import binary_str, varint
from tinyingest.sinks import QueryResult, SinkError

__all__ = ["ClickHouseSink", "quote_table"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Payloads up to this size go through the driver's write buffer; larger ones are sent
# straight from our bytes object to the socket (no extra copy).
_DIRECT_SEND_BYTES = 64 * 1024


def quote_identifier(name: str) -> str:
    """Back-quote a column or table name for ClickHouse SQL.

    >>> quote_identifier("a`b")
    '`a\\\\`b`'
    """
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_table(table: str) -> str:
    """Quote ``table`` or ``database.table``; an already quoted name is kept as is.

    >>> quote_table("db.events")
    '`db`.`events`'
    """
    if table.startswith(("`", '"')):
        return table
    parts = table.split(".")
    if len(parts) == 2 and all(_IDENTIFIER.match(part) for part in parts):
        return ".".join(quote_identifier(part) for part in parts)
    return quote_identifier(table)


#: Seconds of idleness after which a connection is pinged before it is used.
_PING_AFTER_IDLE = 5.0

# BlockInfo: field 1 is_overflows = 0, field 2 bucket_num = -1, then 0 (end of fields).
_BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"


class ClickHouseSink:
    """A ClickHouse server (or a cluster's node / load balancer) over the native protocol.

    :param url: ``clickhouse://user:password@host:9000/database``; the schemes
        ``clickhouse+native://`` (same) and ``clickhouses://`` (TLS, default port 9440)
        are accepted too, as is the query parameter ``secure=1``.
    :param connect_timeout: seconds to establish the TCP connection.
    :param send_receive_timeout: seconds any socket read or write may block.
    :param settings: ClickHouse settings sent with every query and insert.

    Data travels uncompressed (the insert path writes raw Native bytes into the
    stream); put the gateway next to ClickHouse. A connection error or a server
    exception closes the connection; the next call reconnects.

    >>> sink = ClickHouseSink("clickhouse://default:@127.0.0.1:9000/default")

    .. versionadded:: 0.1
    """

    name = "clickhouse"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10.0,
        send_receive_timeout: float = 60.0,
        settings: dict[str, Any] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("clickhouse", "clickhouse+native", "clickhouses"):
            raise ValueError(
                f"unsupported ClickHouse URL scheme {parts.scheme!r} "
                "(use clickhouse://user:password@host:9000/database)"
            )
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        secure = parts.scheme == "clickhouses" or query.get("secure", "").lower() in (
            "1",
            "true",
            "yes",
        )
        database = unquote(parts.path.lstrip("/")) or "default"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (defines.DEFAULT_SECURE_PORT if secure else defines.DEFAULT_PORT)
        self.database = database
        self._settings = dict(settings or {})
        self._client = Client(
            host=self.host,
            port=self.port,
            database=database,
            user=unquote(parts.username) if parts.username else defines.DEFAULT_USER,
            password=unquote(parts.password) if parts.password else "",
            secure=secure,
            compression=False,
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
            sync_request_timeout=min(5.0, send_receive_timeout),
            client_name="tinyingest",
            settings=self._settings,
        )
        self._last_used = 0.0
        self._client_info: ClientInfo | None = None
        self._driver_force_connect = self._client.connection.force_connect
        self._client.connection.force_connect = self._force_connect

    def _force_connect(self) -> None:
        # clickhouse-driver pings before every query: a round trip per endpoint request.
        # Ping only a connection idle for a while; a dead one is reconnected on error.
        connection = self._client.connection
        if connection.connected and time.monotonic() - self._last_used < _PING_AFTER_IDLE:
            connection.check_query_execution()
        else:
            self._driver_force_connect()
        self._last_used = time.monotonic()

    def __repr__(self) -> str:
        return f"<ClickHouseSink {self.host}:{self.port}/{self.database}>"

    # -- Sink protocol ------------------------------------------------------------

    def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL).

        LowCardinality columns are allowed on servers that still call them experimental
        (18.x), and LowCardinality of numbers and dates on newer ones, which call those
        "suspicious" (the parser stores them exactly either way).

        :raises SinkError: the server refused the statement or could not be reached.
        """
        with self._errors():
            if not self._client.connection.connected:
                self._client.connection.connect()
            server = self._client.connection.server_info
            if server is not None and server.version_major >= 19:
                settings = {"allow_suspicious_low_cardinality_types": 1}
            else:
                settings = {"allow_experimental_low_cardinality_type": 1}
            self._client.execute(sql, settings=settings)

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
        """Run a SELECT and return all its rows.

        :param readonly: send ``readonly=1``: the query cannot write or change settings.
        :param max_execution_time: seconds ClickHouse may run the query (0: no limit).
        :param max_result_rows: with a value > 0, fail (``result_overflow_mode='throw'``)
            instead of returning more rows.
        :param query_id: ClickHouse's query id, for :meth:`cancel`.
        :param settings: more settings (e.g. ``max_threads``), applied before the limits.
        :raises SinkError: the server refused the query, a limit was hit, or the server
            could not be reached.
        """
        settings = dict(settings or {})
        if max_execution_time > 0:
            # Seconds are integers on old servers; round up so that 0.5 does not mean "none".
            settings["max_execution_time"] = max(1, int(-(-max_execution_time // 1)))
        if max_result_rows > 0:
            settings["max_result_rows"] = max_result_rows
            settings["result_overflow_mode"] = "throw"
        if readonly:
            settings["readonly"] = 1  # last: the limits above are applied before it
        start = time.monotonic()
        with self._errors():
            self._force_connect()
            connection = self._client.connection
            answer = _Answer()
            try:
                # Client.execute would send the query and the end of its (empty) external
                # tables in two writes; one is enough.
                connection.socket.sendall(self._query_packet(sql, query_id, settings))
                while not answer.done:
                    answer.add(connection.receive_packet())
            except BaseException:
                # As the driver does after any error (half an exchange leaves the stream
                # unusable): drop the connection; the next query reconnects.
                self._client.disconnect()
                raise
        return QueryResult(
            meta=answer.meta,
            rows=answer.rows,
            rows_read=answer.rows_read,
            bytes_read=answer.bytes_read,
            elapsed=time.monotonic() - start,
            rows_before_limit=answer.rows_before_limit,
        )

    def _query_packet(self, sql: str, query_id: str | None, settings: dict[str, Any]) -> bytes:
        """A Query packet and the empty Data block that ends it (no external tables), as
        ``Connection.send_query`` and ``send_external_tables`` write them, in one buffer:
        one send."""
        connection = self._client.connection
        revision = connection.server_info.used_revision
        out = io.BytesIO()
        write_varint(ClientPacketTypes.QUERY, out)
        write_binary_str(query_id or "", out)
        if revision >= defines.DBMS_MIN_REVISION_WITH_CLIENT_INFO:
            if self._client_info is None:
                # The driver builds one per query, looking the OS user up each time.
                self._client_info = ClientInfo(connection.client_name, connection.context,
                                               client_revision=connection.client_revision)
                self._client_info.query_kind = ClientInfo.QueryKind.INITIAL_QUERY
            self._client_info.initial_query_start_time_microseconds = int(time.time() * 1e6)
            self._client_info.write(revision, out)
        as_strings = revision >= defines.DBMS_MIN_REVISION_WITH_SETTINGS_SERIALIZED_AS_STRINGS
        write_settings({**self._settings, **settings}, out, as_strings,
                       SettingsFlags.IMPORTANT if connection.settings_is_important else 0)
        if revision >= defines.DBMS_MIN_REVISION_WITH_INTERSERVER_SECRET:
            write_binary_str("", out)
        write_varint(QueryProcessingStage.COMPLETE, out)
        write_varint(Compression.DISABLED, out)
        write_binary_str(sql, out)
        if revision >= defines.DBMS_MIN_PROTOCOL_VERSION_WITH_PARAMETERS:
            write_settings({}, out, True, SettingsFlags.CUSTOM)
        write_varint(ClientPacketTypes.DATA, out)
        if revision >= defines.DBMS_MIN_REVISION_WITH_TEMPORARY_TABLES:
            write_binary_str("", out)
        if revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO:
            out.write(_BLOCK_INFO)
        out.write(b"\x00\x00")  # no columns, no rows
        return out.getvalue()

    def cancel(self, query_id: str) -> bool:
        """Stop a running query (its client went away), from a connection of its own: the
        query's connection is busy reading its answer (and not ours to use from this
        thread). ClickHouse stops the query at its next block; the query's caller gets
        "Query was cancelled". True if the server had the query."""
        client = Client(host=self.host, port=self.port, user=self._client.connection.user,
                        password=self._client.connection.password,
                        secure=self._client.connection.secure_socket, connect_timeout=5,
                        send_receive_timeout=10)
        try:
            with _ErrorMapper(client):  # not self._errors(): that would drop the busy one
                killed = client.execute("KILL QUERY WHERE query_id = %(id)s ASYNC",
                                        {"id": query_id})
        finally:
            client.disconnect()
        return bool(killed)

    def insert(self, table: str, block: EncodedBlock) -> None:
        """Insert ``block`` into ``table`` as one INSERT.

        :param table: ``name`` or ``database.name`` (quoted here), or an already
            back-quoted name.
        :raises SinkError: the table is missing, a type does not match, or the server
            refused the data or could not be reached. ClickHouse inserts a block
            atomically into a MergeTree table, so a failed insert wrote nothing.
        """
        if block.num_rows == 0:
            return  # an empty Data packet would end the INSERT; nothing to send
        columns = ", ".join(quote_identifier(name) for name in block.names)
        sql = f"INSERT INTO {quote_table(table)} ({columns}) VALUES"
        client = self._client
        with self._errors():
            with client.disconnect_on_error(sql, None):
                connection = client.connection
                connection.send_query(sql)
                connection.send_external_tables(None)  # empty block: no external tables
                sample = client.receive_sample_block()
                if sample is None or len(sample.columns_with_types) != len(block.names):
                    raise SinkError(
                        f"INSERT INTO {table}: server expects "
                        f"{0 if sample is None else len(sample.columns_with_types)} columns, block has "
                        f"{len(block.names)}"
                    )
                self._send_block(connection, block)
                client.receive_profile_events()
                connection.send_data(RowOrientedBlock())  # empty block: end of data
                client.receive_profile_events()
                client.receive_end_of_insert_query()

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        self._client.disconnect()

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _send_block(connection: Any, block: EncodedBlock) -> None:
        """Write one Data packet holding ``block``'s pre-encoded columns."""
        revision = connection.server_info.used_revision
        head = bytearray(varint(ClientPacketTypes.DATA))
        if revision >= defines.DBMS_MIN_REVISION_WITH_TEMPORARY_TABLES:
            head += binary_str("")  # table name: the INSERT's own table
        if revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO:
            head += _BLOCK_INFO
        head += varint(len(block.names))
        head += varint(block.num_rows)
        custom_serialization = revision >= defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION
        fout = connection.fout
        for name, ch_type, payload in zip(block.names, block.types, block.payloads):
            head += binary_str(name)
            head += binary_str(ch_type)
            if custom_serialization:
                head.append(0)  # no custom (sparse) serialization
            if len(payload) < _DIRECT_SEND_BYTES:
                head += payload
            else:
                fout.write(bytes(head))
                fout.flush()
                head.clear()
                connection.socket.sendall(payload)
        fout.write(bytes(head))
        fout.flush()

    def _errors(self) -> _ErrorMapper:
        return _ErrorMapper(self._client)


class _Answer:
    """What the packets answering one query carry (see :meth:`ClickHouseSink.query`)."""

    def __init__(self) -> None:
        self.done = False
        self.meta: list[tuple[str, str]] = []
        self.rows: list[tuple[Any, ...]] = []
        self.rows_read = self.bytes_read = self.rows_before_limit = 0

    def add(self, packet: Any) -> None:
        """One packet, as read by the driver's ``Connection.receive_packet``."""
        kind = packet.type
        if kind == ServerPacketTypes.DATA:
            block = packet.block
            if not self.meta and block.columns_with_types:
                self.meta = [(str(name), str(ch_type))
                             for name, ch_type in block.columns_with_types]
            if block.num_rows:
                self.rows.extend(tuple(row) for row in block.get_rows())
        elif kind == ServerPacketTypes.EXCEPTION:
            raise packet.exception
        elif kind == ServerPacketTypes.PROGRESS:
            self.rows_read += int(packet.progress.rows)
            self.bytes_read += int(packet.progress.bytes)
        elif kind == ServerPacketTypes.PROFILE_INFO:
            self.rows_before_limit = int(packet.profile_info.rows_before_limit or 0)
        elif kind == ServerPacketTypes.END_OF_STREAM:
            self.done = True


class _ErrorMapper:
    """Turn driver and socket errors into :class:`SinkError`; drop a broken connection."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        if exc is None or isinstance(exc, SinkError):
            return  # (driver calls already dropped the connection on any error)
        if isinstance(exc, errors.ServerException):
            raise SinkError(_server_message(exc), exc.code) from exc
        if isinstance(exc, (errors.Error, OSError, EOFError)):
            self._client.disconnect()
            raise SinkError(f"ClickHouse connection failed: {exc}", None) from exc


def _server_message(exc: Any) -> str:
    message = str(getattr(exc, "message", "") or exc)
    # The driver formats "Code: 60.\nDB::Exception: ...\nStack trace:\n..."; keep the text.
    message = re.split(r"\.?\s*Stack trace:", message, maxsplit=1)[0].strip()
    if message.startswith("DB::Exception: "):
        message = message[len("DB::Exception: ") :]
    return message
