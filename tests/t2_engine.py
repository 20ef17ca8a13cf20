"""Engine-level guarantees: a commit is all or nothing, failures stop all writes."""

from __future__ import annotations

import pytest

from pyfs.device import MemDevice
from pyfs.engine import Engine
from pyfs.format import BtreeId, KeyType, pack_key
from pyfs.mkfs import format_device
from pyfs.trans import EngineFailed

RAW = bytes([KeyType.raw])


def engine() -> Engine:
    dev = MemDevice(32 << 20)
    format_device(dev)
    return Engine(dev)


def test_oversized_value_rejects_the_whole_transaction():
    eng = engine()
    t = eng.trans()
    t.set(BtreeId.xattrs, pack_key(5, 1), RAW + b"small")
    t.set(BtreeId.xattrs, pack_key(5, 2), RAW + bytes(eng.btrees.max_value))
    nkeys = eng.journal.nkeys
    with pytest.raises(ValueError):
        t.commit()
    assert eng.btrees.get(BtreeId.xattrs, pack_key(5, 1)) is None
    assert eng.journal.nkeys == nkeys
    t2 = eng.trans()                      # the engine is still healthy
    t2.set(BtreeId.xattrs, pack_key(5, 1), RAW + b"ok")
    t2.commit()
    eng.close()


def test_failure_mid_commit_saves_what_was_committed_then_stops_writes():
    """A commit that fails part way: every transaction committed before it is
    written and flushed, nothing of the failed one is, and nothing more is
    written after that."""
    eng = engine()
    t = eng.trans()
    t.set(BtreeId.inodes, pack_key(1, 0), RAW + b"durable")
    t.commit()
    eng.flush()
    t = eng.trans()
    t.set(BtreeId.inodes, pack_key(2, 0), RAW + b"committed, not durable")
    t.commit()

    def boom(*_a):
        raise RuntimeError("injected trigger failure")
    eng.committer.add_trigger(BtreeId.dirents, boom)
    t = eng.trans()
    t.set(BtreeId.inodes, pack_key(3, 0), RAW + b"partial")
    t.set(BtreeId.dirents, pack_key(3, 1), RAW + b"partial")
    with pytest.raises(RuntimeError):
        t.commit()
    writes = eng.dev.counters["writes"]
    flushes = eng.dev.counters["flushes"]
    with pytest.raises(EngineFailed):
        eng.trans().commit()
    with pytest.raises(OSError):
        eng.flush()
    eng.close()                            # like a power cut: writes nothing more
    assert eng.dev.counters["writes"] == writes and eng.dev.counters["flushes"] == flushes
    again = Engine(MemDevice(eng.dev.snapshot()))
    assert again.btrees.get(BtreeId.inodes, pack_key(1, 0)) == RAW + b"durable"
    assert again.btrees.get(BtreeId.inodes, pack_key(2, 0)) == RAW + b"committed, not durable"
    assert again.btrees.get(BtreeId.inodes, pack_key(3, 0)) is None
    assert again.btrees.get(BtreeId.dirents, pack_key(3, 1)) is None


def test_crash_blacklists_the_unused_reservation_and_repeated_crashes_stay_bounded():
    dev = MemDevice(32 << 20)
    format_device(dev, bucket_size=128 << 10, btree_node_size=16 << 10)
    eng = Engine(dev)
    expect = {}
    for crash in range(7):
        t = eng.trans()
        for i in range(50):
            k = pack_key(crash, i)
            t.set(BtreeId.inodes, k, RAW + bytes([crash]) * 40)
            expect[k] = RAW + bytes([crash]) * 40
        t.commit()
        eng.flush()
        # Written but never durable: must not resurface after this crash.
        t = eng.trans()
        t.set(BtreeId.inodes, pack_key(99, crash), RAW + b"not durable")
        t.commit()
        eng.btrees.flush_all()               # the bset reaches the disk; the journal does not
        eng = Engine(MemDevice(eng.dev.snapshot()))     # crash, remount
        assert 1 <= len(eng.sb.blacklist) <= 4
        assert dict(eng.btrees.iter(BtreeId.inodes)) == expect
    eng.close()
    clean = Engine(MemDevice(eng.dev.snapshot()))
    assert dict(clean.btrees.iter(BtreeId.inodes)) == expect
    a, b = clean.sb.blacklist[-1]
    assert a <= b <= clean.sb.seq_reserved and clean.journal.cur_seq > b


def test_full_rewrite_when_blacklist_overflows():
    dev = MemDevice(32 << 20)
    format_device(dev, bucket_size=128 << 10, btree_node_size=16 << 10)
    eng = Engine(dev)
    rewrites = 0
    for crash in range(6):
        t = eng.trans()
        t.set(BtreeId.inodes, pack_key(crash, 0), RAW + b"x")
        t.commit()
        eng.flush()
        eng = Engine(MemDevice(eng.dev.snapshot()))
        rewrites = max(rewrites, eng.counters.get("btree_stale_rewrites", 0))
        assert len(eng.sb.blacklist) <= 4
    assert rewrites == 1
    for crash in range(6):
        assert eng.btrees.get(BtreeId.inodes, pack_key(crash, 0)) == RAW + b"x"


def test_blacklist_overflow_moves_only_nodes_with_stale_bsets():
    """A stale bset (written, never durable) in a btree nothing touches again
    stays unreadable after the fifth crash drops its blacklist range: the
    node holding it moves; the nodes without one stay where they are, so a
    full filesystem has room for this mount."""
    dev = MemDevice(32 << 20)
    format_device(dev, bucket_size=128 << 10, btree_node_size=16 << 10)
    eng = Engine(dev)
    t = eng.trans()
    for i in range(400):                            # several inodes nodes
        t.set(BtreeId.inodes, pack_key(1000 + i, 0), RAW + bytes(60))
    t.set(BtreeId.xattrs, pack_key(1, 1), RAW + b"durable")
    t.commit()
    eng.sync_all()                                  # nodes written, their roots durable
    t = eng.trans()
    t.set(BtreeId.xattrs, pack_key(1, 2), RAW + b"never durable")
    t.commit()
    eng.btrees.flush_all()                          # the bset is on disk, the journal entry not
    moved = []
    for crash in range(6):
        eng = Engine(MemDevice(eng.dev.snapshot()))
        assert eng.btrees.get(BtreeId.xattrs, pack_key(1, 2)) is None
        moved.append(eng.counters.get("btree_stale_nodes_moved", 0))
        t = eng.trans()
        t.set(BtreeId.inodes, pack_key(crash, 0), RAW + b"x")
        t.commit()
        eng.flush()
    nodes = sum(1 for bid in range(len(eng.btrees.roots)) for _ in eng.btrees.walk(bid))
    assert sum(moved) == 1 < nodes                  # the xattrs leaf, once
    eng.close()
    clean = Engine(MemDevice(eng.dev.snapshot()))
    assert len(clean.sb.blacklist) == 2             # dropped at the fifth crash, one since ...
    assert clean.btrees.get(BtreeId.xattrs, pack_key(1, 2)) is None     # ... and so is the bset
    assert clean.btrees.get(BtreeId.xattrs, pack_key(1, 1)) == RAW + b"durable"


def test_hostile_journal_value_gives_mount_error():
    from pyfs.format import Alloc
    from pyfs.recovery import MountError

    eng = engine()
    t = eng.trans()
    t.set(BtreeId.inodes, pack_key(1, 0), RAW + b"x")
    t.commit()
    # A journaled alloc key that does not decode (valid checksums around it).
    eng.journal.add(BtreeId.alloc, pack_key(0, 40), bytes([Alloc.KEY_TYPE]) + b"\x01")
    eng.flush()
    with pytest.raises(MountError, match="run fsck"):
        Engine(MemDevice(eng.dev.snapshot()))


def test_a_mount_that_fails_writes_nothing():
    """Replay writes nodes (here every 4 KiB of dirty keys) before it reads
    the rest of the tree: a read error after those writes fails the mount,
    and the image is exactly what it was (the mount's writes were staged)."""
    from pyfs.device import FaultyDevice
    from pyfs.recovery import MountError
    dev = MemDevice(16 << 20)
    format_device(dev, bucket_size=128 << 10, btree_node_size=16 << 10)
    eng = Engine(dev)
    eng.sync_all()                          # later keys only in the journal
    for i in range(300):
        t = eng.trans()
        for j in range(10):
            t.set(BtreeId.inodes, pack_key(i, j), RAW + bytes(40))
        t.commit()
    eng.flush()
    image = dev.snapshot()                  # a crash: the journal needs replay
    probe = FaultyDevice(MemDevice(image), fail_at=1 << 30, kinds=("read",))
    Engine(probe, write_buffer=4096).close()
    reads = probe.calls
    failed_after_writes = 0
    for k in range(0, reads, max(1, reads // 40)):
        inner = MemDevice(image)
        faulty = FaultyDevice(inner, fail_at=k, kinds=("read",))
        try:
            Engine(faulty, write_buffer=4096).close()
        except MountError:
            assert inner.snapshot() == image, f"failed mount (read {k}) wrote the image"
            failed_after_writes += k > reads // 2
    assert failed_after_writes > 5


def test_stop_after_a_device_error_flushes_what_was_committed_first():
    """A fatal error from outside a commit (a device error, corruption): the
    transactions committed before it are made durable, then writing stops."""
    eng = engine()
    for i in range(20):
        t = eng.trans()
        t.set(BtreeId.inodes, pack_key(100 + i, 0), RAW + b"committed %d" % i)
        t.commit()
    assert eng.journal.nkeys and not eng.journal.durable_seq     # nothing written yet
    eng.stop(OSError(5, "simulated device error"))
    assert eng.failed is not None
    with pytest.raises(EngineFailed):
        eng.trans().commit()
    again = Engine(MemDevice(eng.dev.snapshot()))       # a power cut right after
    for i in range(20):
        assert again.btrees.get(BtreeId.inodes, pack_key(100 + i, 0)) == RAW + b"committed %d" % i
