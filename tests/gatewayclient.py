"""A small HTTP client for the tests: real sockets, no dependencies, no hidden retries."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from tinyingest.testing import GatewayProcess


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)


def call(gateway: GatewayProcess, method: str, path: str, *, params: dict[str, Any] | None = None,
         body: bytes | Iterable[bytes] | None = None, headers: dict[str, str] | None = None,
         token: str | None = "admin", timeout: float = 60) -> Response:
    """One request. ``body`` as an iterable is sent with chunked transfer encoding."""
    parts = urlsplit(gateway.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    all_headers = dict(headers or {})
    if token == "admin":
        all_headers["Authorization"] = f"Bearer {gateway.token}"
    elif token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    query = ("?" + urlencode(params, doseq=True)) if params else ""
    chunked = body is not None and not isinstance(body, (bytes, bytearray))
    try:
        connection.request(method, path + query, body=body, headers=all_headers,
                           encode_chunked=chunked)
        response = connection.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                        response.read())
    finally:
        connection.close()


def sql(gateway: GatewayProcess, query: str) -> list[dict[str, Any]]:
    response = call(gateway, "GET", "/v0/sql", params={"q": query})
    assert response.status == 200, response.body
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def wait_for_rows(gateway: GatewayProcess, query: str, expected: int,
                  timeout: float = 20) -> list[dict[str, Any]]:
    """Poll until ``query`` returns ``expected`` rows (bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = sql(gateway, query)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def ndjson(rows: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)
