"""Times without an offset in a ``DateTime('Zone')`` column: read in that zone, as ClickHouse does.

ClickHouse reads ``'2024-06-01 12:00:00'`` into ``DateTime('Europe/Berlin')`` as noon in
Berlin. Around a change of offset it takes the wall clock as it read *before* the change:
a time the clocks skipped (``02:30`` on a spring-forward night) uses the new offset, a
time that occurs twice (``01:30`` on a fall-back night) its first occurrence. Measured on
18.16 and chDB 26.9, both ``toDateTime('2024-03-10 02:30:00', 'America/New_York')`` =
1710052200 and ``toDateTime('2024-11-03 01:30:00', 'America/New_York')`` = 1730611800.

The parsers get a zone as a table of *shifts*: ``(wall_from, offset)`` pairs, sorted, the
wall clock (local time counted as if it were UTC, in seconds) from which ``offset`` applies.
Both parsers look a naive time up in the same table, so their results agree.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The range any of our time types stores: DateTime64's 1900-01-01 .. 2299-12-31, a day
# of margin either side.
_FIRST = -2208988800 - 86400
_LAST = 10413792000 + 86400
_DAY = 86400
#: A zone without offset changes (or UTC itself) needs no table.
NO_SHIFTS: tuple[tuple[int, int], ...] = ()


def is_known_zone(zone: str) -> bool:
    """True for an IANA time zone name this machine's tz database has."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def wall_clock_shifts(zone: str) -> tuple[tuple[int, int], ...]:
    """The zone's ``(wall_from, offset)`` table, the first ``wall_from`` the earliest
    representable second; :data:`NO_SHIFTS` for ``""`` (no zone: UTC) and fixed zones.

    Built once per zone and process by probing zoneinfo daily, then finding each change
    to the second (about 0.2 s): zoneinfo keeps its transitions private.
    """
    if not zone:
        return NO_SHIFTS
    tz = ZoneInfo(zone)

    def offset_at(utc: int) -> int:
        delta = datetime.fromtimestamp(utc, tz).utcoffset()
        assert delta is not None
        return delta.days * _DAY + delta.seconds

    previous = offset_at(_FIRST)
    shifts = [(-(1 << 63), previous)]
    for day in range(_FIRST + _DAY, _LAST, _DAY):
        offset = offset_at(day)
        if offset == previous:
            continue
        lo, hi = day - _DAY, day  # offset_at(lo) == previous != offset_at(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if offset_at(mid) == previous:
                lo = mid
            else:
                hi = mid
        # From the change on, on the wall clock as it read before the change.
        shifts.append((hi + previous, offset))
        previous = offset
    if len(shifts) == 1 and previous == 0:
        return NO_SHIFTS
    return tuple(shifts)


def wall_to_utc(wall: int, shifts: tuple[tuple[int, int], ...]) -> int:
    """Epoch seconds of the wall-clock time ``wall`` (local seconds counted as UTC)."""
    if not shifts:
        return wall
    index = bisect_right(shifts, (wall, 1 << 62)) - 1
    return wall - shifts[index][1]
