"""Rows without a value for some columns, through HTTP, on both backends.

Tinybird's rule: a column that is neither Nullable nor has a DEFAULT quarantines a row
without its value (the gateway stored the type's zero: ``{}`` became a 1970-01-01 row);
a Nullable column is NULL; a DEFAULT is the DEFAULT, a literal one stored by the parser,
an expression (``now()``, ``id * 2``) computed by ClickHouse.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import start_gateway
from gatewayclient import call, ndjson, sql
from tinyingest.testing import GatewayProcess

ITEMS = """\
SCHEMA >
    `id` UInt64 `json:$.id`,
    `tag` String `json:$.tag`,
    `ts` DateTime `json:$.ts`,
    `opt` Nullable(Int32) `json:$.opt`,
    `note` String `json:$.note` DEFAULT 'none',
    `n` UInt16 `json:$.n` DEFAULT 7,
    `seen` DateTime `json:$.seen` DEFAULT now(),
    `twice` UInt64 `json:$.twice` DEFAULT id * 2,
    `labels` Array(String) `json:$.labels[:]`

ENGINE "MergeTree"
ENGINE_SORTING_KEY "tag, id"
"""

COLUMNS = "id, tag, ts, opt, note, n, seen, twice, labels"


@pytest.fixture(scope="module", params=["clickhouse", "embedded"])
def gateway(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("missing")
    project = root / "project"
    (project / "datasources").mkdir(parents=True)
    (project / "datasources" / "items.datasource").write_text(ITEMS)
    server = request.getfixturevalue("clickhouse_server") if request.param == "clickhouse" \
        else None
    process = start_gateway(request.param, Path(root / "data"), server=server,
                            project_dir=str(project))
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"gateway exited with {code}:\n{process.log_tail()}"


def _stored(gateway: GatewayProcess, tag: str) -> list[dict[str, object]]:
    return sql(gateway, f"SELECT {COLUMNS} FROM items WHERE tag = '{tag}' ORDER BY id")


def _quarantined(gateway: GatewayProcess, tag: str) -> list[dict[str, object]]:
    return sql(gateway, "SELECT c__error_column, c__error, id FROM items_quarantine "
                        f"WHERE c__raw LIKE '%{tag}%' ORDER BY c__raw")


def _recent(text: object) -> bool:
    stamp = datetime.datetime.strptime(str(text), "%Y-%m-%d %H:%M:%S")
    return abs(stamp - datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)) \
        < datetime.timedelta(minutes=10)


def _check(gateway: GatewayProcess, tag: str) -> None:
    stored = _stored(gateway, tag)
    assert [(r["id"], r["ts"], r["opt"], r["note"], r["n"], r["twice"], r["labels"])
            for r in stored] == [
        (1, "2024-01-02 03:04:05", 5, "x", 2, 9, ["a"]),  # every value sent
        (2, "2024-01-02 03:04:05", None, "none", 7, 4, []),  # missing: NULL / DEFAULTs
        (3, "2024-01-02 03:04:05", None, "none", 7, 6, []),  # null: NULL / DEFAULTs
        (4, "2024-01-02 03:04:05", None, "none", 7, 33, []),  # twice sent, seen not
    ]
    assert stored[0]["seen"] == "2024-01-02 00:00:00"
    assert all(_recent(r["seen"]) for r in stored[1:]), stored  # now(), by ClickHouse
    assert _quarantined(gateway, tag) == [
        {"c__error_column": ["ts"], "id": "5",
         "c__error": ["missing value on column 'ts': DateTime is not Nullable and has no "
                      "DEFAULT"]},
        {"c__error_column": ["ts"], "id": "6",
         "c__error": ["null value on column 'ts', which is not Nullable(DateTime)"]},
        {"c__error_column": ["id"], "id": None,
         "c__error": ["missing value on column 'id': UInt64 is not Nullable and has no "
                      "DEFAULT"]},
    ]


def _rows(tag: str) -> list[dict[str, object]]:
    ts = "2024-01-02 03:04:05"
    return [
        {"id": 1, "tag": tag, "ts": ts, "opt": 5, "note": "x", "n": 2, "seen": "2024-01-02",
         "twice": 9, "labels": ["a"]},
        {"id": 2, "tag": tag, "ts": ts},
        {"id": 3, "tag": tag, "ts": ts, "opt": None, "note": None, "n": None, "seen": None,
         "twice": None, "labels": None},
        {"id": 4, "tag": tag, "ts": ts, "twice": 33},
        {"id": 5, "tag": tag},
        {"id": 6, "tag": tag, "ts": None},
        {"tag": tag},  # id has no DEFAULT either: the first missing column is named
    ]


def test_events_wait(gateway: GatewayProcess) -> None:
    tag = uuid.uuid4().hex
    response = call(gateway, "POST", "/v0/events", params={"name": "items", "wait": "true"},
                    body=ndjson(_rows(tag)))
    assert response.status == 200, response.body
    assert response.json() == {"successful_rows": 4, "quarantined_rows": 3}
    _check(gateway, tag)


def test_events_one_byte_chunks(gateway: GatewayProcess) -> None:
    tag = uuid.uuid4().hex
    body = ndjson(_rows(tag))
    response = call(gateway, "POST", "/v0/events", params={"name": "items", "wait": "true"},
                    body=[body[i : i + 1] for i in range(len(body))])
    assert response.status == 200, response.body
    assert response.json() == {"successful_rows": 4, "quarantined_rows": 3}
    _check(gateway, tag)


def test_datasources_append_ndjson(gateway: GatewayProcess) -> None:
    tag = uuid.uuid4().hex
    response = call(gateway, "POST", "/v0/datasources",
                    params={"mode": "append", "name": "items", "format": "ndjson"},
                    body=ndjson(_rows(tag)))
    assert response.status == 200, response.body
    assert (response.json()["successful_rows"], response.json()["quarantine_rows"]) == (4, 3)
    _check(gateway, tag)


def test_every_row_missing_the_same_expression_default(gateway: GatewayProcess) -> None:
    # The usual case (a field clients never send): one block without the column.
    tag = uuid.uuid4().hex
    body = ndjson({"id": i, "tag": tag, "ts": 0} for i in range(100))
    response = call(gateway, "POST", "/v0/events", params={"name": "items", "wait": "true"},
                    body=body)
    assert response.json() == {"successful_rows": 100, "quarantined_rows": 0}
    stored = _stored(gateway, tag)
    assert [r["twice"] for r in stored] == [2 * i for i in range(100)]
    assert all(_recent(r["seen"]) for r in stored)


def test_datasources_append_csv(gateway: GatewayProcess) -> None:
    # CSV: an empty field is the DEFAULT (literal or expression), NULL for Nullable;
    # an empty field without either is not the type ("value ''"); a short record is
    # quarantined.
    tag = uuid.uuid4().hex
    text = (f"{COLUMNS.replace(' ', '')}\n"
            f"1,{tag},2024-01-02 03:04:05,5,x,2,2024-01-02 00:00:00,9,\"['a']\"\n"
            f"2,{tag},2024-01-02 03:04:05,,,,,,\n"
            f"3,{tag},2024-01-02 03:04:05,\\N,\\N,\\N,\\N,\\N,\n"
            f"4,{tag},2024-01-02 03:04:05,,,,,33,\n"
            f"5,{tag},,,,,,,\n"
            f"6,{tag},\\N,,,,,,\n"
            f"7,{tag},2024-01-02 03:04:05\n")
    response = call(gateway, "POST", "/v0/datasources",
                    params={"mode": "append", "name": "items", "format": "csv"},
                    body=text.encode())
    assert response.status == 200, response.body
    assert (response.json()["successful_rows"], response.json()["quarantine_rows"]) == (4, 3)
    stored = _stored(gateway, tag)
    assert [(r["id"], r["opt"], r["note"], r["n"], r["twice"], r["labels"]) for r in stored] == [
        (1, 5, "x", 2, 9, ["a"]), (2, None, "none", 7, 4, []), (3, None, "none", 7, 6, []),
        (4, None, "none", 7, 33, []),
    ]
    assert all(_recent(r["seen"]) for r in stored[1:]), stored
    errors = sql(gateway, "SELECT c__error FROM items_quarantine "
                          f"WHERE c__raw LIKE '%{tag}%' ORDER BY c__raw")
    assert errors == [{"c__error": ["value '' on column 'ts' is not DateTime"]},
                      {"c__error": ["null value on column 'ts', which is not Nullable(DateTime)"]},
                      {"c__error": ["wrong number of fields: expected 9, got 3"]}]
