"""Scoped tokens from the datafiles' TOKEN lines: who may write and read what."""

from __future__ import annotations

import pytest

from gatewayclient import call, ndjson
from tinyingest.testing import GatewayProcess


@pytest.fixture(scope="module")
def tokens(gateway: GatewayProcess) -> dict[str, str]:
    response = call(gateway, "GET", "/v0/tokens")
    assert response.status == 200
    listed = {t["name"]: t for t in response.json()["tokens"]}
    assert {s["type"] + ":" + s["resource"] for s in listed["events_append"]["scopes"]} == \
        {"DATASOURCES:APPEND:events"}
    assert {s["type"] + ":" + s["resource"] for s in listed["pipe_read"]["scopes"]} == \
        {"PIPES:READ:events_by_tag"}
    return {name: t["token"] for name, t in listed.items()}


def test_append_token_writes_only_its_data_source(gateway: GatewayProcess,
                                                  tokens: dict[str, str]) -> None:
    body = ndjson([{"id": 1, "tag": "scoped"}])
    ok = call(gateway, "POST", "/v0/events", params={"name": "events", "wait": "true"},
              body=body, token=tokens["events_append"])
    assert ok.status == 200
    refused = call(gateway, "POST", "/v0/events", params={"name": "table"}, body=body,
                   token=tokens["events_append"])
    assert refused.status == 403 and "DATASOURCES:APPEND" in refused.json()["error"]
    # Appending is not reading: /v0/sql needs a READ scope.
    assert call(gateway, "GET", "/v0/sql", params={"q": "SELECT count() FROM events"},
                token=tokens["events_append"]).status == 403


def test_read_token_reads_its_data_source_and_quarantine_only(gateway: GatewayProcess,
                                                              tokens: dict[str, str]) -> None:
    read = tokens["events_read"]
    assert call(gateway, "GET", "/v0/sql", params={"q": "SELECT count() FROM events"},
                token=read).status == 200
    assert call(gateway, "GET", "/v0/sql", params={"q": "SELECT count() FROM events_quarantine"},
                token=read).status == 200
    assert call(gateway, "GET", "/v0/sql", params={"q": "SELECT count() FROM table"},
                token=read).status == 400
    assert call(gateway, "POST", "/v0/events", params={"name": "events"}, body=b"{}",
                token=read).status == 403


def test_pipe_token_calls_its_endpoint_but_reads_nothing_else(gateway: GatewayProcess,
                                                              tokens: dict[str, str]) -> None:
    pipe = tokens["pipe_read"]
    assert call(gateway, "GET", "/v0/pipes/events_by_tag.json", params={"label": "x"},
                token=pipe).status == 200
    assert call(gateway, "GET", "/v0/sql", params={"q": "SELECT count() FROM events_by_tag",
                                                   "label": "x"}, token=pipe).status == 200
    assert call(gateway, "GET", "/v0/sql", params={"q": "SELECT count() FROM events"},
                token=pipe).status == 400
    q_escape = call(gateway, "GET", "/v0/pipes/events_by_tag.json",
                    params={"label": "x", "q": "SELECT count() FROM events"}, token=pipe)
    assert q_escape.status == 400  # q reads only what the token may read
    listed = call(gateway, "GET", "/v0/pipes", token=pipe).json()["pipes"]
    assert [p["name"] for p in listed] == ["events_by_tag"]
    assert call(gateway, "GET", "/v0/tokens", token=pipe).status == 403
    assert call(gateway, "GET", "/v0/pipes/tag_counts_mv.json", token=pipe).status == 403
