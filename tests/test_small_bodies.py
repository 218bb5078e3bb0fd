"""SmallBodies: small 202 bodies coalesced once per event-loop pass, on the real backends.

The HTTP tests (test_http_ingest.py, test_faults.py) cover what clients see; these show
that bodies ending in one pass become one spool record and one block, and that each
request still learns its own counts, or the error that kept all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from conftest import PROJECT_DIR
from tinyingest.batcher import BatchLimits
from tinyingest.config import Settings
from tinyingest.datafiles import load_project
from tinyingest.gateway import Gateway
from tinyingest.sinks import Sink
from tinyingest.spool import SpoolFull

Answer = tuple[int, int, Exception | None]


def run(sink: Sink, tmp_path: Path, scenario: Callable[[Gateway], Awaitable[None]],
        **settings: object) -> None:
    config = dataclasses.replace(
        Settings(project_dir=PROJECT_DIR, data_dir=str(tmp_path / "gateway")),
        batch=BatchLimits(flush_interval=0.05), **settings)  # type: ignore[arg-type]

    async def main() -> None:
        gateway = Gateway(config, sink, load_project(PROJECT_DIR))
        await gateway.start()
        try:
            await scenario(gateway)
        finally:
            await gateway.close()

    asyncio.run(main())


async def count(gateway: Gateway, sql: str, expected: int = 0) -> int:
    """The count ``sql`` gives once it is ``expected`` (or 20 s passed), asked on the
    gateway's own insert connection: the batchers flush meanwhile."""
    deadline = time.monotonic() + 20
    while True:
        found = int((await gateway.writer.run(lambda sink: sink.query(sql))).rows[0][0])
        if found >= expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def test_bodies_of_one_pass_are_one_record_and_each_learns_its_counts(
        sink: Sink, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    row = '{{"id": {}, "tag": "%s"}}' % tag
    bodies = [
        (row.format(1) + "\n" + row.format(2)).encode(),  # no newline at the end
        (row.format(3) + '\n{"id": 4, "tag": "%s", "ts": "never"}\n' % tag).encode(),
        b"\xef\xbb\xbf" + row.format(5).encode(),  # a BOM starts each body
        b"",
    ]

    async def scenario(gateway: Gateway) -> None:
        small = gateway.small_bodies(gateway.tables["events"])
        answers: list[Answer] = []
        for body in bodies:
            small.add(body, lambda *answer: answers.append(answer))
        assert answers == []  # answered once the pass's rows are spooled
        await asyncio.sleep(0)
        assert answers == [(2, 0, None), (1, 1, None), (1, 0, None), (0, 0, None)]
        # One record for the four bodies' rows, one for the quarantined row.
        assert gateway.spool.pending_records == 2
        stored = await count(gateway, f"SELECT count() FROM events WHERE tag = '{tag}'", 4)
        quarantined = await count(gateway, "SELECT count() FROM events_quarantine "
                                  f"WHERE tag = '{tag}' AND length(c__error) > 0", 1)
        assert (stored, quarantined) == (4, 1)

    run(sink, tmp_path, scenario)


def test_a_full_spool_refuses_every_body_of_the_pass(sink: Sink, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    body = ('{"id": 1, "tag": "%s"}\n' % tag).encode()

    async def scenario(gateway: Gateway) -> None:
        small = gateway.small_bodies(gateway.tables["events"])
        answers: list[Answer] = []
        for _ in range(3):
            small.add(body, lambda *answer: answers.append(answer))
        await asyncio.sleep(0)
        assert len(answers) == 3
        for stored, quarantined, error in answers:
            assert (stored, quarantined) == (0, 0)
            assert isinstance(error, SpoolFull) and error.status == 503
        assert gateway.spool.pending_records == 0
        # The refused rows are gone from the shared parser: the next pass starts empty.
        small.add(b"", lambda *answer: answers.append(answer))
        await asyncio.sleep(0)
        assert answers[-1] == (0, 0, None)
        await asyncio.sleep(0.3)
        assert await count(gateway, f"SELECT count() FROM events WHERE tag = '{tag}'") == 0

    run(sink, tmp_path, scenario, spool_max_bytes=64)


def test_a_request_that_fails_to_answer_leaves_the_others_answered(
        sink: Sink, tmp_path: Path) -> None:
    body = ('{"id": 1, "tag": "%s"}\n' % uuid.uuid4().hex).encode()

    def broken(*answer: object) -> None:
        raise RuntimeError("the connection broke while answering")

    async def scenario(gateway: Gateway) -> None:
        small = gateway.small_bodies(gateway.tables["events"])
        answers: list[Answer] = []
        small.add(body, broken)
        small.add(body, lambda *answer: answers.append(answer))
        await asyncio.sleep(0)
        assert answers == [(1, 0, None)]

    run(sink, tmp_path, scenario)
