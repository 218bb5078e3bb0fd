"""The spool: an append-only, checksummed on-disk log of accepted blocks.

Every block a request hands over is appended here *before* the request is answered,
and acknowledged (:meth:`Spool.ack`) once ClickHouse has stored it. After a crash or a
restart, :meth:`Spool.replay` yields the blocks that were never acknowledged, so an
answered request's rows are inserted even if the process died first. Delivery is
at-least-once: a block stored just before a crash, whose ack was not yet written, is
inserted again on replay.

Layout: ``<dir>/<segment>.log`` files of records, each
``b"TIS1" | u32 body length | u32 crc32(body) | body``, and beside each a
``<segment>.ack`` file of u32 record numbers already stored. A torn or corrupt record
(a crash mid-write) ends its segment: it and anything after it are discarded on replay.
A segment whose records are all acknowledged is deleted once it is no longer written to.

Durability: ``fsync="none"`` survives a crash of the process (the page cache holds the
data), not of the machine; ``fsync="always"`` syncs before each answer and survives
power loss too, at the cost of one fsync per request.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tinyingest.block import EncodedBlock
from tinyingest.native import binary_str, varint

log = logging.getLogger("tinyingest.spool")

_MAGIC = b"TIS1"
_HEADER = struct.Struct("<4sII")
_SEGMENT_BYTES = 64 << 20


class SpoolFull(Exception):
    """The spool is over its size limit (answer 503) or the disk is full (507)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RecordId:
    segment: int
    index: int


@dataclass(slots=True)
class _Segment:
    number: int
    size: int = 0
    records: int = 0  # appended (or found on replay)
    acked: set[int] = field(default_factory=set)



def _readvarint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7




@functools.lru_cache(maxsize=256)
def _record_head(table: str, names: tuple[str, ...], types: tuple[str, ...]) -> bytes:
    # The same for every block of a table: built once.
    head = [binary_str(table), varint(len(names))]
    for name, ch_type in zip(names, types):
        head += [binary_str(name), binary_str(ch_type)]
    return b"".join(head)


def encode_record(table: str, block: EncodedBlock) -> list[bytes]:
    """The record's body as pieces (payloads are not copied here)."""
    pieces = [_record_head(table, block.names, block.types), varint(block.num_rows)]
    for payload in block.payloads:
        pieces += [varint(len(payload)), payload]
    return pieces


def decode_record(body: bytes) -> tuple[str, EncodedBlock]:
    data = memoryview(body)

    def text(pos: int) -> tuple[str, int]:
        length, pos = _readvarint(data, pos)
        return bytes(data[pos : pos + length]).decode(), pos + length

    table, pos = text(0)
    count, pos = _readvarint(data, pos)
    names, types = [], []
    for _ in range(count):
        name, pos = text(pos)
        ch_type, pos = text(pos)
        names.append(name)
        types.append(ch_type)
    num_rows, pos = _readvarint(data, pos)
    payloads = []
    for _ in range(count):
        length, pos = _readvarint(data, pos)
        payloads.append(bytes(data[pos : pos + length]))
        pos += length
    return table, EncodedBlock(tuple(names), tuple(types), num_rows, tuple(payloads))


class Spool:
    """Append, acknowledge, replay. Used from the event loop thread only.

    :param directory: created if missing; one spool per process.
    :param max_bytes: above this many bytes on disk, :meth:`append` raises
        :class:`SpoolFull` (503) until acknowledgements free space.
    :param fsync: ``"none"`` or ``"always"`` (see the module docstring).
    """

    def __init__(self, directory: str, *, max_bytes: int = 1 << 30, fsync: str = "none") -> None:
        if fsync not in ("none", "always"):
            raise ValueError("fsync must be 'none' or 'always'")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._fsync = fsync == "always"
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._fd = -1
        self._ack_fd = -1
        self._bytes = 0  # the segments' sizes, summed (checked on every request)

    # -- sizes -----------------------------------------------------------------------

    @property
    def bytes_on_disk(self) -> int:
        return self._bytes

    @property
    def pending_records(self) -> int:
        return sum(s.records - len(s.acked) for s in self._segments.values())

    # -- replay ----------------------------------------------------------------------

    def replay(self) -> Iterator[tuple[RecordId, str, EncodedBlock]]:
        """Unacknowledged records left by an earlier process, oldest first.

        Torn tails are cut off here. Call once, before the first :meth:`append`.
        """
        numbers = sorted(int(p.stem) for p in self.directory.glob("*.log") if p.stem.isdigit())
        for number in numbers:
            segment = _Segment(number)
            self._segments[number] = segment
            segment.acked = self._read_acks(number)
            path = self._log_path(number)
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                if len(data) - pos < _HEADER.size:
                    break
                magic, length, crc = _HEADER.unpack_from(data, pos)
                body = data[pos + _HEADER.size : pos + _HEADER.size + length]
                if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                    break
                index = segment.records
                segment.records += 1
                pos += _HEADER.size + length
                if index not in segment.acked:
                    table, block = decode_record(body)
                    yield RecordId(number, index), table, block
            if pos < len(data):
                log.warning("spool %s: discarding a torn or corrupt tail of %d bytes",
                            path.name, len(data) - pos)
                os.truncate(path, pos)
            segment.size = pos
            self._bytes += pos
            self._maybe_delete(segment)

    def _read_acks(self, number: int) -> set[int]:
        try:
            raw = self._ack_path(number).read_bytes()
        except FileNotFoundError:
            return set()
        usable = len(raw) - len(raw) % 4  # a torn last ack is simply not an ack
        return set(struct.unpack(f"<{usable // 4}I", raw[:usable]))

    # -- append / ack ----------------------------------------------------------------

    def append(self, table: str, block: EncodedBlock) -> RecordId:
        """Write one record; returns its id. Raises :class:`SpoolFull` (nothing written)."""
        pieces = encode_record(table, block)
        length = sum(len(piece) for piece in pieces)
        if self.bytes_on_disk + length > self.max_bytes:
            raise SpoolFull(f"spool is full ({self.max_bytes} bytes of unconfirmed rows); "
                            "ClickHouse is slow or down", 503)
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        segment = self._writable(length)
        header = _HEADER.pack(_MAGIC, length, crc)
        try:
            written = os.writev(self._fd, [header, *pieces])
            if written != len(header) + length:
                raise OSError(errno.ENOSPC, "short write")
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            # Leave no torn record behind: cut the segment back to where it was.
            os.ftruncate(self._fd, segment.size)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull("no space left for the spool", 507) from exc
            raise
        segment.size += len(header) + length
        self._bytes += len(header) + length
        index = segment.records
        segment.records += 1
        return RecordId(segment.number, index)

    def ack(self, records: list[RecordId]) -> None:
        """ClickHouse stored these records: they will not be replayed."""
        by_segment: dict[int, list[int]] = {}
        for record in records:
            by_segment.setdefault(record.segment, []).append(record.index)
        for number, indexes in by_segment.items():
            segment = self._segments.get(number)
            if segment is None:
                continue
            segment.acked.update(indexes)
            if self._active is segment:
                os.write(self._ack_fd, struct.pack(f"<{len(indexes)}I", *indexes))
            elif not self._maybe_delete(segment):
                with open(self._ack_path(number), "ab") as file:
                    file.write(struct.pack(f"<{len(indexes)}I", *indexes))

    def close(self) -> None:
        for fd in (self._fd, self._ack_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._ack_fd = -1
        if self._active is not None:
            active, self._active = self._active, None
            self._maybe_delete(active)

    # -- segments --------------------------------------------------------------------

    def _log_path(self, number: int) -> Path:
        return self.directory / f"{number:010d}.log"

    def _ack_path(self, number: int) -> Path:
        return self.directory / f"{number:010d}.ack"

    def _writable(self, length: int) -> _Segment:
        active = self._active
        if active is not None and active.size + length <= _SEGMENT_BYTES:
            return active
        if active is not None:
            os.close(self._fd)
            os.close(self._ack_fd)
            self._active = None
            self._maybe_delete(active)
        number = max(self._segments, default=0) + 1
        segment = _Segment(number)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._fd = os.open(self._log_path(number), flags, 0o600)
        self._ack_fd = os.open(self._ack_path(number), flags, 0o600)
        self._segments[number] = segment
        self._active = segment
        return segment

    def _maybe_delete(self, segment: _Segment) -> bool:
        """Delete a segment that is not being written and has nothing left to replay."""
        if segment is self._active or len(segment.acked) < segment.records:
            return False
        self._log_path(segment.number).unlink(missing_ok=True)
        self._ack_path(segment.number).unlink(missing_ok=True)
        del self._segments[segment.number]
        self._bytes -= segment.size
        return True
