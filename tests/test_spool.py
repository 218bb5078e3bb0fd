"""The spool's promises, on real files: replay what was not acknowledged, cut torn tails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tinyingest.block import EncodedBlock
from tinyingest.spool import Spool, SpoolFull, decode_record, encode_record


def block(tag: int, rows: int = 3, size: int = 10) -> EncodedBlock:
    return EncodedBlock(("a", "b"), ("UInt8", "String"), rows,
                        (bytes([tag]) * rows, bytes([tag % 251]) * size))


def replayed(directory: Path) -> list[tuple[str, EncodedBlock]]:
    spool = Spool(str(directory))
    try:
        return [(table, blk) for _, table, blk in spool.replay()]
    finally:
        spool.close()


def test_record_round_trip() -> None:
    original = block(7)
    assert decode_record(b"".join(encode_record("t", original))) == ("t", original)


def test_unacknowledged_records_are_replayed_in_order(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    assert list(spool.replay()) == []
    ids = [spool.append("t", block(i)) for i in range(5)]
    spool.ack([ids[1], ids[3]])
    assert spool.bytes_on_disk == sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    spool.close()  # as after a crash: nothing else written
    assert replayed(tmp_path) == [("t", block(0)), ("t", block(2)), ("t", block(4))]


def test_fully_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    list(spool.replay())
    ids = [spool.append("t", block(i)) for i in range(3)]
    spool.ack(ids)
    spool.close()
    assert list(tmp_path.iterdir()) == []
    assert replayed(tmp_path) == []


def test_torn_tail_is_discarded_and_earlier_records_kept(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    list(spool.replay())
    for i in range(3):
        spool.append("t", block(i, size=1000))
    spool.close()
    log = next(tmp_path.glob("*.log"))
    os.truncate(log, log.stat().st_size - 7)  # a crash in the middle of the last write
    assert replayed(tmp_path) == [("t", block(0, size=1000)), ("t", block(1, size=1000))]
    # The tail was cut: a second replay finds the same two, and new appends follow them.
    spool = Spool(str(tmp_path))
    assert len(list(spool.replay())) == 2
    spool.append("t", block(9))
    spool.close()
    assert [b.payloads[0][0] for _, b in replayed(tmp_path)] == [0, 1, 9]


def test_corrupt_record_ends_the_segment(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    list(spool.replay())
    for i in range(3):
        spool.append("t", block(i, size=100))
    spool.close()
    log = next(tmp_path.glob("*.log"))
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the second record
    log.write_bytes(bytes(data))
    assert replayed(tmp_path) == [("t", block(0, size=100))]


def test_size_limit_refuses_with_503_and_frees_on_ack(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=3000)
    list(spool.replay())
    first = spool.append("t", block(1, size=1000))
    spool.append("t", block(2, size=1000))
    with pytest.raises(SpoolFull) as refused:
        spool.append("t", block(3, size=1000))
    assert refused.value.status == 503
    spool.ack([first])
    assert spool.pending_records == 1
    assert spool.bytes_on_disk == sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    spool.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Path:
    """A 1 MiB tmpfs: a real disk-full, not a simulated one (the suite runs as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_refuses_with_507_and_leaves_no_torn_record(tiny_disk: Path) -> None:
    spool = Spool(str(tiny_disk / "spool"))
    list(spool.replay())
    stored = 0
    with pytest.raises(SpoolFull) as refused:
        for i in range(100):
            spool.append("t", block(i, size=100_000))
            stored += 1
    assert refused.value.status == 507
    spool.close()
    assert len(replayed(tiny_disk / "spool")) == stored > 0
