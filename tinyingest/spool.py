"""The spool: an append-only, checksummed on-disk log of accepted blocks.

Every block a request hands over is appended here *before* the request is answered,
and acknowledged (:meth:`Spool.ack`) once ClickHouse has stored it. After a crash or a
restart, :meth:`Spool.replay` yields the blocks that were never acknowledged, so an
answered request's rows are inserted even if the process died first. Delivery is
at-least-once: a block stored just before a crash, whose ack was not yet written, is
inserted again on replay.

Layout: ``<dir>/<segment>.log`` files of records, each
``b"TIS1" | u32 body length | u32 crc32(body) | body`` (numbered by position), and beside
each a ``<segment>.ack`` file of u32 record numbers already stored. A torn or corrupt
record (a crash mid-write) ends its segment: it and anything after it are discarded on
replay.

Size: the limit (``max_bytes``) counts the records not yet acknowledged, never the
acknowledged ones still on disk. Segments are rolled at a quarter of the limit (at most
64 MiB), and a segment whose records are all acknowledged is deleted once it is no longer
written to. While the files hold more than the limit, a closed segment at least half
acknowledged is compacted: its unacknowledged records are copied, with their numbers, as
``b"TIS2" | u32 body length | u32 crc32(number, body) | u32 number | body`` records into
``<segment>.compact``, which is synced and renamed over the ``.log`` (atomic: a crash
leaves the old file or the new one, never a mix; a stale ``.compact`` is deleted on
replay); then its ``.ack`` file is emptied (after the rename, so that an acknowledged
record is never replayed from the old file). The files thus stay within about 2.5 times
the limit, and a record's id never changes.

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
_MAGIC_NUMBERED = b"TIS2"  # a compacted segment's records: with their own number
_NUMBERED = struct.Struct("<4sIII")
_INDEX = struct.Struct("<I")
_SEGMENT_BYTES = 64 << 20
_MIN_SEGMENT_BYTES = 4 << 10


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
    size: int = 0  # of its .log file
    records: int = 0  # numbers given (appended, or found on replay)
    #: Record number -> (offset in the .log, length with header), not yet acknowledged.
    pending: dict[int, tuple[int, int]] = field(default_factory=dict)
    live: int = 0  # the pending records' lengths, summed

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
    :param max_bytes: once the records not yet acknowledged take this many bytes,
        :meth:`append` raises :class:`SpoolFull` (503) until acknowledgements free space.
    :param fsync: ``"none"`` or ``"always"`` (see the module docstring).
    """

    def __init__(self, directory: str, *, max_bytes: int = 1 << 30, fsync: str = "none") -> None:
        if fsync not in ("none", "always"):
            raise ValueError("fsync must be 'none' or 'always'")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._fsync = fsync == "always"
        self._segment_bytes = max(_MIN_SEGMENT_BYTES, min(_SEGMENT_BYTES, max_bytes // 4))
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        #: The segment replay() is reading: acks of its records may arrive meanwhile (the
        #: caller awaits deliveries between records), yet it is neither deleted nor
        #: compacted until read whole.
        self._reading: _Segment | None = None
        self._fd = -1
        self._ack_fd = -1
        self._bytes = 0  # the segments' .log sizes, summed
        self._pending_bytes = 0  # the unacknowledged records' lengths (checked per request)

    # -- sizes -----------------------------------------------------------------------

    @property
    def bytes_on_disk(self) -> int:
        """The .log files' sizes: acknowledged records not yet deleted or compacted too."""
        return self._bytes

    @property
    def pending_bytes(self) -> int:
        """The records not yet acknowledged (headers included): what the limit counts."""
        return self._pending_bytes

    @property
    def pending_records(self) -> int:
        return sum(len(s.pending) for s in self._segments.values())

    # -- replay ----------------------------------------------------------------------

    def replay(self) -> Iterator[tuple[RecordId, str, EncodedBlock]]:
        """Unacknowledged records left by an earlier process, oldest first.

        Torn tails are cut off here. Call once, before the first :meth:`append`.
        """
        for stale in self.directory.glob("*.compact"):
            stale.unlink()  # a compaction the process did not finish: the .log is whole
        numbers = sorted(int(p.stem) for p in self.directory.glob("*.log") if p.stem.isdigit())
        for number in numbers:
            segment = _Segment(number)
            self._segments[number] = segment
            self._reading = segment
            acked = self._read_acks(number)
            path = self._log_path(number)
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                record = _parse(data, pos, segment.records)
                if record is None:
                    break
                index, body, length = record
                segment.records = max(segment.records, index + 1)
                offset = pos
                pos += length
                if index in acked:
                    continue
                segment.pending[index] = (offset, length)
                segment.live += length
                self._pending_bytes += length
                table, block = decode_record(body)
                yield RecordId(number, index), table, block
            if pos < len(data):
                log.warning("spool %s: discarding a torn or corrupt tail of %d bytes",
                            path.name, len(data) - pos)
                os.truncate(path, pos)
            segment.size = pos
            self._bytes += pos
            self._reading = None
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
        if self._pending_bytes + _HEADER.size + length > self.max_bytes:
            raise SpoolFull(f"spool is full ({self.max_bytes} bytes of unconfirmed rows); "
                            "ClickHouse is slow or down", 503)
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        segment = self._writable(_HEADER.size + length)
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
        index = segment.records
        segment.records += 1
        segment.pending[index] = (segment.size, len(header) + length)
        segment.live += len(header) + length
        segment.size += len(header) + length
        self._bytes += len(header) + length
        self._pending_bytes += len(header) + length
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
            acked = []
            for index in indexes:
                entry = segment.pending.pop(index, None)
                if entry is not None:  # not acknowledged twice
                    acked.append(index)
                    segment.live -= entry[1]
                    self._pending_bytes -= entry[1]
            if not acked:
                continue
            if self._active is segment:
                os.write(self._ack_fd, struct.pack(f"<{len(acked)}I", *acked))
            elif not self._maybe_delete(segment):
                with open(self._ack_path(number), "ab") as file:
                    file.write(struct.pack(f"<{len(acked)}I", *acked))
                self._maybe_compact(segment)

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
        if active is not None and (active.size == 0
                                   or active.size + length <= self._segment_bytes):
            return active
        if active is not None:
            os.close(self._fd)
            os.close(self._ack_fd)
            self._fd = self._ack_fd = -1
            self._active = None
            self._maybe_delete(active)
        for segment in list(self._segments.values()):
            self._maybe_compact(segment)
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
        if segment is self._active or segment is self._reading or segment.pending:
            return False
        self._log_path(segment.number).unlink(missing_ok=True)
        self._ack_path(segment.number).unlink(missing_ok=True)
        del self._segments[segment.number]
        self._bytes -= segment.size
        return True

    def _maybe_compact(self, segment: _Segment) -> None:
        """Compact a closed segment at least half acknowledged, while the files hold more
        than the limit (see the module docstring); each compaction at least halves the
        file, so the bytes copied never exceed the bytes appended."""
        if (segment is self._active or segment is self._reading or not segment.pending
                or segment.live * 2 > segment.size
                or self._bytes <= self.max_bytes or segment.number not in self._segments):
            return
        path = self._log_path(segment.number)
        temporary = path.with_suffix(".compact")
        moved: dict[int, tuple[int, int]] = {}
        size = 0
        try:
            with open(path, "rb") as source, open(temporary, "wb") as target:
                for index, (offset, length) in sorted(segment.pending.items()):
                    source.seek(offset)
                    record = _parse(source.read(length), 0, index)
                    if record is None or record[0] != index:  # never: we wrote it
                        raise OSError(errno.EIO, f"record {index} unreadable")
                    body = record[1]
                    crc = zlib.crc32(body, zlib.crc32(_INDEX.pack(index)))
                    target.write(_NUMBERED.pack(_MAGIC_NUMBERED, len(body), crc, index))
                    target.write(body)
                    moved[index] = (size, _NUMBERED.size + len(body))
                    size += _NUMBERED.size + len(body)
                target.flush()
                # Records that were on disk stay there, whatever the fsync setting.
                os.fsync(target.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            log.warning("spool %s: not compacted: %s", path.name, exc)
            return
        log.info("spool %s: compacted to %d unconfirmed records, %d of %d bytes kept",
                 path.name, len(moved), size, segment.size)
        self._bytes += size - segment.size
        self._pending_bytes += size - segment.live
        segment.size = segment.live = size
        segment.pending = moved
        try:
            # Only once the rename is on disk: until then the old file's acknowledged
            # records need their acks.
            _fsync_directory(self.directory)
            os.truncate(self._ack_path(segment.number), 0)
        except OSError as exc:  # stale acks name records the file no longer has: harmless
            log.warning("spool %s: acks not cleared: %s", path.name, exc)


def _parse(data: bytes, pos: int, next_index: int) -> tuple[int, bytes, int] | None:
    """The record at ``pos``: (number, body, length with header), or None if torn or
    corrupt. A plain record's number is ``next_index`` (its position)."""
    if len(data) - pos < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, pos)
    if magic == _MAGIC:
        start, index, check = pos + _HEADER.size, next_index, 0
    elif magic == _MAGIC_NUMBERED and len(data) - pos >= _NUMBERED.size:
        index = _NUMBERED.unpack_from(data, pos)[3]
        start, check = pos + _NUMBERED.size, zlib.crc32(_INDEX.pack(index))
    else:
        return None
    body = data[start : start + length]
    if len(body) != length or zlib.crc32(body, check) != crc:
        return None
    return index, body, start - pos + length


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
