"""Retried requests are not stored twice: answers remembered by ``X-Request-Id``.

A client may send ``X-Request-Id: <id>`` (or ``?batch_id=<id>``) with an ingest
request. Within the window (:data:`WINDOW_SECONDS`, at most :data:`MAX_ENTRIES` ids,
per gateway process), a request whose id already got a 2xx answer is not ingested
again: it gets the same answer, with ``X-Idempotent-Replay: true``. A request whose id
is still being processed gets 409 and ``Retry-After``. A failed request (non-2xx) can
be retried with the same id.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

WINDOW_SECONDS = 15 * 60
MAX_ENTRIES = 100_000


@dataclass(slots=True)
class Answer:
    status: int
    body: Any
    at: float


class RecentRequests:
    def __init__(self, window: float = WINDOW_SECONDS, max_entries: int = MAX_ENTRIES) -> None:
        self._window = window
        self._max_entries = max_entries
        self._answers: OrderedDict[tuple[str, str], Answer | None] = OrderedDict()

    def _expire(self) -> None:
        horizon = time.monotonic() - self._window
        while self._answers:
            key, answer = next(iter(self._answers.items()))
            if answer is not None and answer.at >= horizon \
                    and len(self._answers) <= self._max_entries:
                break
            if answer is None and len(self._answers) <= self._max_entries:
                break  # in flight: kept until it finishes
            self._answers.popitem(last=False)

    def begin(self, scope: str, request_id: str) -> Answer | None | bool:
        """Register a request. Returns True to go ahead, the earlier :class:`Answer` to
        replay it, or None while an earlier request with this id is still in flight."""
        self._expire()
        key = (scope, request_id)
        if key in self._answers:
            return self._answers[key]
        self._answers[key] = None
        return True

    def finish(self, scope: str, request_id: str, status: int, body: Any) -> None:
        key = (scope, request_id)
        if 200 <= status < 300:
            self._answers[key] = Answer(status, body, time.monotonic())
            self._answers.move_to_end(key)
        else:
            self._answers.pop(key, None)  # a failure may be retried
