"""``tinyingest serve`` / ``tinyingest init``: wiring only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from tornado.httpserver import HTTPServer

from tinyingest import __version__
from tinyingest.auth import Authorizer, load_admin_token
from tinyingest.config import Settings
from tinyingest.datafiles import DatafileError, load_project, write_example_project
from tinyingest.gateway import Gateway
from tinyingest.routes import make_app
from tinyingest.sinks import Sink

log = logging.getLogger("tinyingest")


def make_sink(settings: Settings) -> Sink:
    if settings.clickhouse_url:
        from tinyingest.sinks.clickhouse import ClickHouseSink

        return ClickHouseSink(settings.clickhouse_url)
    try:
        from tinyingest.sinks.embedded import EmbeddedSink
    except ImportError as exc:
        raise SystemExit(
            f"the embedded engine needs chDB ({exc}): pip install 'tinyingest[embedded]', "
            "or pass --clickhouse clickhouse://user:password@host:9000/db") from None
    return EmbeddedSink(str(Path(settings.data_dir) / "chdb"))


async def serve(settings: Settings) -> int:
    try:
        project = load_project(settings.project_dir)
    except DatafileError as exc:
        log.error("datafile error: %s", exc)
        return 2
    token, generated = load_admin_token(settings.admin_token, settings.data_dir)
    if generated:
        print(f"admin token (stored in {settings.data_dir}/admin_token): {token}", flush=True)
    sink = make_sink(settings)
    gateway = Gateway(settings, sink, project)
    await gateway.start()
    server = HTTPServer(
        make_app(gateway, Authorizer(token)),
        # Tornado's defaults are unsafe for ingestion: 3600 s for headers, no body timeout.
        idle_connection_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_body_size=settings.max_body_bytes,
        max_header_size=64 << 10,
        decompress_request=False,  # we decode bodies ourselves, with a size limit
    )
    server.listen(settings.port, settings.host)
    log.info("tinyingest %s listening on http://%s:%d", __version__, settings.host,
             settings.port)
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
    run.add_argument("--port", type=int, default=7181)
    run.add_argument("--clickhouse", metavar="URL", default=os.environ.get(
        "TINYINGEST_CLICKHOUSE_URL"), help="clickhouse://user:password@host:9000/db "
        "(default: the embedded engine)")
    run.add_argument("--data-dir", default="./.tinyingest",
                     help="embedded engine data and local state")
    init = commands.add_parser("init", help="write an example project")
    init.add_argument("directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "init":
        try:
            written = write_example_project(args.directory)
        except FileExistsError as exc:
            print(f"not overwriting: {exc}", file=sys.stderr)
            return 1
        for path in written:
            print(path)
        return 0
    settings = Settings.from_env(project_dir=args.project, host=args.host, port=args.port,
                                 clickhouse_url=args.clickhouse, data_dir=args.data_dir)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(serve(settings))
