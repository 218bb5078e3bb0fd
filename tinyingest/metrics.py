"""Prometheus metrics, fed from one place: the Application's ``log_function``.

Ingest counters are bumped by the ingest handlers through :func:`count_rows` (rows
accepted) and by the batchers through :func:`count_stored` (rows ClickHouse has).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from tornado import web

REGISTRY = CollectorRegistry()

REQUESTS = Histogram(
    "tinyingest_request_seconds", "HTTP requests by handler and status",
    ["handler", "status"], registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
ROWS = Counter("tinyingest_rows_total",
               "Rows by data source and outcome: accepted (good rows, spooled), quarantined "
               "(bad rows, spooled for the quarantine table), stored (good rows ClickHouse "
               "has confirmed: behind accepted while it is away)",
               ["datasource", "outcome"], registry=REGISTRY)
REFUSED = Counter("tinyingest_refused_rows_total",
                  "Rows ClickHouse refused after they were accepted, by data source and where "
                  "they went (quarantined; kept_in_spool: the quarantine refused them too)",
                  ["datasource", "outcome"], registry=REGISTRY)


# Labelled children, looked up once: labels() costs more than the observation itself.
_request_series: dict[tuple[str, int], Any] = {}
_row_series: dict[str, tuple[Any, Any]] = {}
_stored_series: dict[str, Any] = {}


def log_request(handler: web.RequestHandler) -> None:
    """Tornado ``log_function``: one observation per finished request."""
    observe_request(type(handler).__name__, handler.get_status(),
                    handler.request.request_time())


def observe_request(handler: str, status: int, seconds: float) -> None:
    """One finished request (requests served without a RequestHandler call this)."""
    key = (handler, status)
    series = _request_series.get(key)
    if series is None:
        series = _request_series[key] = REQUESTS.labels(handler, str(status))
    series.observe(seconds)


def count_rows(datasource: str, accepted: int, quarantined: int) -> None:
    """Rows a request handed over (spooled): ``accepted`` good ones, ``quarantined`` bad."""
    series = _row_series.get(datasource)
    if series is None:
        series = _row_series[datasource] = (ROWS.labels(datasource, "accepted"),
                                            ROWS.labels(datasource, "quarantined"))
    # inc(0) would still take the counter's lock: skip it (most requests quarantine none).
    if accepted:
        series[0].inc(accepted)
    if quarantined:
        series[1].inc(quarantined)


def count_stored(datasource: str, rows: int) -> None:
    """Rows of ``datasource`` ClickHouse confirmed an insert of (replayed ones too; a
    block inserted again after a lost answer counts again, as ClickHouse has it twice)."""
    series = _stored_series.get(datasource)
    if series is None:
        series = _stored_series[datasource] = ROWS.labels(datasource, "stored")
    series.inc(rows)


def count_refused(datasource: str, outcome: str, rows: int) -> None:
    """Rows refused after being accepted (rare: not on the good path)."""
    REFUSED.labels(datasource, outcome).inc(rows)


class MetricsHandler(web.RequestHandler):
    def get(self) -> None:
        registry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # --workers: every worker's samples, summed.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(generate_latest(registry))
