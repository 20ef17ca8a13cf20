"""Engine-level guarantees: a commit is all or nothing, failures stop all writes."""

from __future__ import annotations

import pytest

from pyfs.device import MemDevice
from pyfs.engine import Engine, EngineFailed
from pyfs.format import BtreeId, KeyType, pack_key
from pyfs.mkfs import format_device

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


def test_failure_mid_commit_stops_writes_and_remount_sees_durable_state():
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
    eng.add_trigger(BtreeId.dirents, boom)
    t = eng.trans()
    t.set(BtreeId.inodes, pack_key(3, 0), RAW + b"partial")
    t.set(BtreeId.dirents, pack_key(3, 1), RAW + b"partial")
    writes = eng.dev.counters["writes"]
    with pytest.raises(RuntimeError):
        t.commit()
    with pytest.raises(EngineFailed):
        eng.trans().commit()
    with pytest.raises(OSError):
        eng.flush()
    eng.close()                            # like a power cut: writes nothing
    assert eng.dev.counters["writes"] == writes
    again = Engine(MemDevice(eng.dev.snapshot()))
    assert again.btrees.get(BtreeId.inodes, pack_key(1, 0)) == RAW + b"durable"
    assert again.btrees.get(BtreeId.inodes, pack_key(3, 0)) is None
    assert again.btrees.get(BtreeId.dirents, pack_key(3, 1)) is None
