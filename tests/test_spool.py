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


# -- the limit counts unacknowledged bytes; acknowledged ones leave the disk ------------

LIMIT = 64 << 10


def disk_usage(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def test_acknowledged_records_do_not_count_against_the_limit(tmp_path: Path) -> None:
    """Far more than the limit in total, each record confirmed before the next: never
    full, and the files stay within a few times the limit."""
    spool = Spool(str(tmp_path), max_bytes=LIMIT)
    list(spool.replay())
    peak = 0
    for i in range(1000):  # about 16 times the limit
        spool.ack([spool.append("t", block(i % 256, size=1000))])
        peak = max(peak, disk_usage(tmp_path))
    assert spool.pending_bytes == 0 and spool.pending_records == 0
    assert peak <= 2 * LIMIT, peak
    assert spool.bytes_on_disk == sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    spool.close()
    assert list(tmp_path.iterdir()) == [] and replayed(tmp_path) == []


def test_pending_bytes_are_the_unacknowledged_records(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=LIMIT)
    list(spool.replay())
    ids = [spool.append("t", block(i, size=1000)) for i in range(10)]
    one = spool.pending_bytes // 10
    assert spool.pending_bytes == spool.bytes_on_disk == 10 * one
    spool.ack(ids[:4])
    spool.ack(ids[:2])  # acknowledged twice: counted once
    assert spool.pending_bytes == 6 * one and spool.pending_records == 6
    # After a restart only the 6 unacknowledged records count, not the 10 on disk.
    restarted = Spool(str(tmp_path), max_bytes=8 * one)
    assert len(list(restarted.replay())) == 6
    assert restarted.pending_bytes == 6 * one and restarted.bytes_on_disk == 10 * one
    restarted.append("t", block(20, size=1000))
    restarted.append("t", block(21, size=1000))
    with pytest.raises(SpoolFull) as refused:
        restarted.append("t", block(22, size=1000))
    assert refused.value.status == 503


def _pinned_load(spool: Spool, count: int, every: int) -> list[int]:
    """``count`` records, all acknowledged at once but one in ``every``: the tags kept."""
    kept = []
    for i in range(count):
        record = spool.append("t", block(i % 256, size=1000))
        if i % every:
            spool.ack([record])
        else:
            kept.append(i % 256)
    return kept


def test_compaction_keeps_exactly_the_unacknowledged_records(tmp_path: Path) -> None:
    """One record in 20 never confirmed (its table is away): the segments holding them
    are compacted, the disk stays bounded, and replay after a crash (no close) yields
    those records, in order, and only them; then acks after the restart hold too."""
    spool = Spool(str(tmp_path), max_bytes=LIMIT)
    list(spool.replay())
    peak = 0
    kept: list[int] = []
    for _ in range(4):
        kept += _pinned_load(spool, 250, 20)
        peak = max(peak, disk_usage(tmp_path))
    assert peak <= 3 * LIMIT, peak
    assert any(p.read_bytes()[:4] == b"TIS2" for p in tmp_path.glob("*.log")), "no compaction"
    assert spool.pending_records == len(kept) == 52
    # A crash: the process dies with the files as they are.
    after = Spool(str(tmp_path), max_bytes=LIMIT)
    records = list(after.replay())
    assert [blk.payloads[0][0] for _, _, blk in records] == kept
    assert all(blk == block(blk.payloads[0][0], size=1000) for _, _, blk in records)
    after.ack([record for record, _, _ in records[:30]])
    kept += _pinned_load(after, 500, 25)  # more compactions, of compacted segments too
    again = Spool(str(tmp_path), max_bytes=LIMIT)
    assert [blk.payloads[0][0] for _, _, blk in again.replay()] == kept[30:]


class Crash(BaseException):
    """The process dies here (not an error the spool handles)."""


@pytest.mark.parametrize("where", ["before the rename", "after the rename"])
def test_a_crash_during_compaction_loses_and_repeats_nothing(
        tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tinyingest.spool

    spool = Spool(str(tmp_path), max_bytes=LIMIT)
    list(spool.replay())
    kept = _pinned_load(spool, 200, 10)

    def crash(*args: object) -> None:
        raise Crash

    if where == "before the rename":
        monkeypatch.setattr(os, "replace", crash)  # the .compact file is written, not renamed
    else:
        monkeypatch.setattr(tinyingest.spool, "_fsync_directory", crash)  # acks not cleared
    with pytest.raises(Crash):
        _pinned_load(spool, 100, 10)  # until a compaction starts
    monkeypatch.undo()
    assert (where == "before the rename") == any(tmp_path.glob("*.compact"))
    after = Spool(str(tmp_path), max_bytes=LIMIT)
    tags = [blk.payloads[0][0] for _, _, blk in after.replay()]
    assert tags[:len(kept)] == kept  # every unacknowledged record, none acknowledged
    assert len(tags) - len(kept) <= 10  # the unacknowledged ones of the crashed round
    assert not any(tmp_path.glob("*.compact"))


def test_acks_during_replay_do_not_delete_the_segment_being_read(tmp_path: Path) -> None:
    """The gateway awaits deliveries while it replays, so records are acknowledged before
    the rest of their segment is read: that segment is not deleted nor compacted then."""
    spool = Spool(str(tmp_path))
    list(spool.replay())
    for i in range(50):
        spool.append("t", block(i, size=1000))
    # A crash, then a restart whose every replayed record is stored at once, and a crash
    # after ten of them.
    restarted = Spool(str(tmp_path), max_bytes=LIMIT // 4)
    for count, (record, _, _) in enumerate(restarted.replay(), 1):
        restarted.ack([record])
        if count == 10:
            break
    assert [blk.payloads[0][0] for _, blk in replayed(tmp_path)] == list(range(10, 50))
