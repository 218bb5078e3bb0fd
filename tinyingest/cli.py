"""``tinyingest serve`` / ``tinyingest init``: wiring only."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import signal
import sys
from pathlib import Path

import socket
from typing import TYPE_CHECKING

from tinyingest import __version__
from tinyingest.auth import WeakAdminToken, load_admin_token, new_token, project_tokens
from tinyingest.config import ConfigError, Settings
from tinyingest.datadir import DataDirBusy, lock_data_dir
from tinyingest.datafiles import DatafileError, load_project, write_example_project

if TYPE_CHECKING:
    from tinyingest.sinks import Sink

# Modules that import prometheus_client (gateway, routes) are imported in serve(): with
# --workers, PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported.

log = logging.getLogger("tinyingest")

#: Pending connections the kernel queues per listening socket (Tornado's default is 128:
#: a burst of thousands of clients would see resets instead of a queue).
_BACKLOG = 4096


def make_sink(settings: Settings, *, for_queries: bool = False) -> Sink:
    if settings.clickhouse_url:
        from tinyingest.sinks.clickhouse import ClickHouseSink

        url = settings.clickhouse_url
        if for_queries and settings.clickhouse_query_url:
            url = settings.clickhouse_query_url
        return ClickHouseSink(url, send_receive_timeout=settings.clickhouse_timeout)
    try:
        from tinyingest.sinks.embedded import EmbeddedSink
    except ImportError as exc:
        raise SystemExit(
            f"the embedded engine needs chDB ({exc}): pip install 'tinyingest[embedded]', "
            "or pass --clickhouse clickhouse://user:password@host:9000/db") from None
    return EmbeddedSink(str(Path(settings.data_dir) / "chdb"))


async def serve(settings: Settings, sockets: list[socket.socket] | None = None,
                worker: int | None = None) -> int:
    """Run one gateway process until SIGTERM/SIGINT; ``worker`` is its number under --workers."""
    from tinyingest.auth import Authorizer
    from tinyingest.gateway import Gateway, StartupError
    from tinyingest.limits import LimitedHTTPServer, connection_cap, raise_nofile_limit
    from tinyingest.routes import make_app
    from tinyingest.sinks import SinkError
    from tinyingest.sinks.embedded import EmbeddedSink
    from tinyingest.template import TemplateError

    try:
        project = load_project(settings.project_dir)
    except DatafileError as exc:
        log.error("datafile error: %s", exc)
        return 2
    token, generated = load_admin_token(settings.admin_token, settings.data_dir)
    if generated:
        print(f"admin token (stored in {settings.data_dir}/admin_token): {token}", flush=True)
    sink = make_sink(settings)
    # Each worker owns its spool; a single process keeps the plain name.
    spool_dir = "spool" if worker is None else f"spool-{worker}"
    # Queries get connections of their own, so that an insert never waits for a query:
    # on a server, and on chDB's one engine per process (its connections run at once).
    if isinstance(sink, EmbeddedSink):
        readers: list[Sink] = [sink.reader() for _ in range(settings.query_connections)]
    else:
        readers = [make_sink(settings, for_queries=True)
                   for _ in range(settings.query_connections)]
    insert_sinks = [make_sink(settings) for _ in range(settings.insert_connections - 1)] \
        if settings.clickhouse_url else []
    gateway = Gateway(settings, sink, project, spool_dir=spool_dir, readers=readers,
                      insert_sinks=insert_sinks)
    try:
        await gateway.start()
    except (TemplateError, StartupError, SinkError) as exc:  # like a datafile error: exit 2
        log.error("%s", exc if not isinstance(exc, SinkError) else f"ClickHouse: {exc}")
        await gateway.close()
        return 2
    _tune_gc()
    server = LimitedHTTPServer(
        make_app(gateway, Authorizer(token, project_tokens(project, settings.data_dir))),
        max_connections=connection_cap(settings.max_connections, raise_nofile_limit()),
        body_idle_timeout=settings.body_idle_timeout,
        # Tornado's defaults are unsafe for ingestion: 3600 s for headers, no body timeout.
        idle_connection_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        # Small until a handler knows better: ingest handlers raise it to max_body_bytes
        # once the token is checked (see routes.BufferedBody for the others).
        max_body_size=settings.max_buffered_body_bytes,
        max_header_size=64 << 10,
        decompress_request=False,  # we decode bodies ourselves, with a size limit
    )
    port = settings.port
    if sockets is None:
        server.listen(settings.port, settings.host, backlog=_BACKLOG)
    else:
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]  # --port 0: the one the kernel chose
    log.info("tinyingest %s listening on http://%s:%d%s", __version__, settings.host,
             port, "" if worker is None else f" (worker {worker})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: finishing requests in flight, flushing pending rows")
    server.stop()  # no new connections; open ones get 503 while draining
    await gateway.drain(settings.drain_timeout)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinyingest", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="start the gateway")
    run.add_argument("--project", default=".", help="directory with datasources/ and pipes/")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=_port, default=7181,
                     help="0-65535 (0: any free port; default 7181)")
    run.add_argument("--clickhouse", metavar="URL", default=os.environ.get(
        "TINYINGEST_CLICKHOUSE_URL"), help="clickhouse://user:password@host:9000/db "
        "(default: the embedded engine)")
    run.add_argument("--data-dir", default="./.tinyingest",
                     help="embedded engine data and local state")
    run.add_argument("--workers", type=_workers, default=1,
                     help="processes sharing the port (needs --clickhouse when > 1)")
    init = commands.add_parser("init", help="write an example project")
    init.add_argument("directory")
    commands.add_parser("token", help="print a new random token (for TINYINGEST_ADMIN_TOKEN)")
    args = parser.parse_args(argv)
    if args.command == "token":
        print(new_token())
        return 0
    _configure_logging()
    if args.command == "init":
        try:
            written = write_example_project(args.directory)
        except FileExistsError as exc:
            print(f"not overwriting: {exc}", file=sys.stderr)
            return 1
        for path in written:
            print(path)
        return 0
    try:
        settings = Settings.from_env(project_dir=args.project, host=args.host, port=args.port,
                                     clickhouse_url=args.clickhouse, data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"tinyingest: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1 and not settings.clickhouse_url:
        print("--workers > 1 needs --clickhouse: the embedded engine lives in one process",
              file=sys.stderr)
        return 2
    try:
        _private_data_dir(settings.data_dir)
    except OSError as exc:
        print(f"tinyingest: cannot use data dir {settings.data_dir}: {exc.strerror}",
              file=sys.stderr)
        return 2
    # Before anything else reads or writes the data dir (spool, tokens, chDB, metrics):
    # kept open, and inherited by --workers' children, until the process exits.
    try:
        lock_data_dir(settings.data_dir)
    except DataDirBusy as exc:
        log.error("%s", exc)
        return 2
    try:  # raised before anything starts (serve and supervise load the token first)
        if args.workers > 1:
            return supervise(settings, args.workers)
        # Bound before the spool is replayed: a port in use stops here, the data dir
        # untouched.
        sockets = _bind(settings)
        if sockets is None:
            return 2
        _install_uvloop()
        return asyncio.run(serve(settings, sockets))
    except WeakAdminToken as exc:
        print(f"tinyingest: {exc}", file=sys.stderr)
        return 2


def _port(text: str) -> int:
    """``--port``: a TCP port number (argparse says what is wrong: exit 2, one line)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: expected 0-65535")
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of processes, 1 or more")
    return workers


class _Formatter(logging.Formatter):
    """A traceback only for a bug of ours: a library's log record (clickhouse-driver logs
    one with every failed connect) is printed as one line, its exception's last."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.name.startswith(("tinyingest", "tornado")):
            exc = record.exc_info[1]
            record = logging.makeLogRecord({
                **record.__dict__, "msg": f"{record.getMessage()}: {type(exc).__name__}: {exc}",
                "args": None, "exc_info": None, "exc_text": None})
        return super().format(record)


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # Its warnings repeat ours (every failed connect, each retry): the gateway says what
    # ClickHouse's state means for the rows.
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)


def _private_data_dir(path: str) -> None:
    """The data dir holds tokens, spooled rows and the embedded engine's tables: nobody
    else's to read. Everything this process creates is 0600 / 0700 (chDB's files too:
    it runs in this process), and a dir made before, by an older version or by hand, is
    closed."""
    os.umask(0o077)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _bind(settings: Settings, *, reuse_port: bool = False) -> list[socket.socket] | None:
    """The listening sockets, or None (said why) when the address is taken or wrong."""
    from tornado.netutil import bind_sockets

    try:
        return bind_sockets(settings.port, settings.host, backlog=_BACKLOG,
                            reuse_port=reuse_port)
    except OSError as exc:
        hint = ": another process listens there (a tinyingest serve already running?); " \
            "stop it or pass another --port" if exc.errno == errno.EADDRINUSE else ""
        log.error("cannot listen on %s:%d: %s%s", settings.host, settings.port,
                  exc.strerror or exc, hint)
        return None


def _tune_gc() -> None:
    """Once started: the heap built so far (modules, schemas, connections) lives as long
    as the process, so it is frozen out of the collector's scans; and the youngest
    generation is collected every 10,000 allocations, not 700. Requests leave no cycles,
    but the blocks and futures a flush interval holds were scanned again and again:
    about 5 % of the CPU of 1-row requests, 1 % with these settings."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def supervise(settings: Settings, workers: int) -> int:
    """Pre-fork ``workers`` gateway processes on one listening socket.

    The parent only supervises: it restarts a worker that dies, and forwards SIGTERM /
    SIGINT so that every worker drains and exits; it exits 0 when all exited 0.
    """
    import shutil

    from tornado.netutil import bind_sockets

    # Each worker binds its own SO_REUSEPORT socket, so the kernel spreads connections over
    # the workers (with one shared socket, one worker may accept every keep-alive
    # connection). A first bind here reports a port in use before anything forks, and
    # before the data dir is written.
    first = _bind(settings, reuse_port=True)
    if first is None:
        return 2
    for sock in first:
        sock.close()
    # Workers' metrics are summed by prometheus-client's multiprocess mode.
    metrics_dir = Path(settings.data_dir) / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    # Tokens are made once, before the fork, so that every worker knows the same ones.
    load_admin_token(settings.admin_token, settings.data_dir)
    try:
        project_tokens(load_project(settings.project_dir), settings.data_dir)
    except DatafileError as exc:
        log.error("datafile error: %s", exc)
        return 2
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _install_uvloop()
            code = 1
            try:
                sockets = bind_sockets(settings.port, settings.host, reuse_port=True,
                                       backlog=_BACKLOG)
                code = asyncio.run(serve(settings, sockets, number))
            finally:
                os._exit(code)
        children[pid] = number

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for number in range(workers):
        spawn(number)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        number = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed |= code != 0
        elif code == 2:  # a configuration error: restarting cannot help
            log.error("worker %d could not start; stopping", number)
            forward(signal.SIGTERM, None)
            failed = True
        else:
            log.error("worker %d exited with %d; restarting it", number, code)
            spawn(number)
    return 1 if failed else 0
