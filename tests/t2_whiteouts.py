"""Tier 2: whiteout rules and node-write buffering, checked on the bytes written.

Each test reads the node's region back from the device and walks its bsets
(format.unpack_bset_header / unpack_bset), so "a whiteout was emitted" means
an empty value for that key sits in the bset that was appended.
"""

from __future__ import annotations

import os
import sys

import pytest

from pyfs.btree.io import parse_node, round_up
from pyfs.btree.node import NEWEST_SET_MAX, Node
from pyfs.device import MemDevice
from pyfs.engine import Engine
from pyfs.format import NODE_HDR_SIZE, BtreeId, KeyType, pack_key, unpack_bset, unpack_bset_header
from pyfs.mkfs import format_device

sys.path.insert(0, os.path.dirname(__file__))
from t2_btree_model import check_btrees, check_node  # noqa: E402

MiB = 1 << 20
BID = BtreeId.inodes


def val(tag: int, n: int = 20) -> bytes:
    return bytes([KeyType.raw]) + tag.to_bytes(4, "little") * (n // 4)


def K(i: int) -> bytes:
    return pack_key(7, i)


def bsets(dev, node: Node, node_size: int) -> list[tuple[list[bytes], list[bytes]]]:
    """Every bset of node's region on the device, oldest first."""
    buf = dev.pread(node_size, node.offset)
    out = []
    pos = NODE_HDR_SIZE
    while True:
        h = unpack_bset_header(buf, pos)
        if h is None or h.node_seq != node.node_seq:
            return out
        out.append(unpack_bset(buf, pos, h, node.offset + pos))
        pos = round_up(pos + h.size)


class Leaf:
    """An engine whose inodes btree is one leaf, with helpers to update it."""

    def __init__(self, **kw):
        self.dev = MemDevice(64 * MiB)
        format_device(self.dev)
        self.eng = Engine(self.dev, **kw)
        self.bt = self.eng.btrees
        self.tag = 0

    @property
    def node(self) -> Node:
        return self.bt.leaf(BID, K(0))

    def set(self, *idx: int, n: int = 20) -> None:
        t = self.eng.trans()
        for i in idx:
            self.tag += 1
            t.set(BID, K(i), val(self.tag, n))
        t.commit()

    def delete(self, *idx: int) -> None:
        t = self.eng.trans()
        for i in idx:
            t.delete(BID, K(i))
        t.commit()

    def write(self) -> tuple[list[bytes], list[bytes]]:
        """Write the leaf; return the bset that write appended."""
        node = self.node
        before = len(bsets(self.dev, node, self.bt.node_size))
        written = node.written_bytes
        self.bt.write_node(node, "flush")
        assert node.offset == self.node.offset and node.written_bytes > written, \
            "expected an append, not a rewrite"
        sets = bsets(self.dev, node, self.bt.node_size)
        assert len(sets) == before + 1
        return sets[-1]

    def counters(self) -> tuple[int, int]:
        c = self.eng.counters
        return c["btree_whiteouts_written"], c["btree_whiteouts_avoided"]


def whiteouts(bset: tuple[list[bytes], list[bytes]]) -> list[bytes]:
    return [k for k, v in zip(*bset) if not v]


def entries_for(bset, key: bytes) -> list[bytes]:
    return [v for k, v in zip(*bset) if k == key]


@pytest.fixture
def leaf() -> Leaf:
    lf = Leaf()
    lf.set(*range(10))
    lf.write()
    return lf


def test_delete_written_key_emits_whiteout(leaf):
    w0, a0 = leaf.counters()
    leaf.delete(3)
    node = leaf.node
    assert K(3) in node.whiteouts
    check_node(node)                      # the whiteout is not in a live set
    assert all(v for v in node.nv + node.ov + node.wv)
    bset = leaf.write()
    assert whiteouts(bset) == [K(3)]
    assert leaf.counters() == (w0 + 1, a0)
    assert not leaf.node.whiteouts
    assert leaf.bt.get(BID, K(3)) is None
    assert K(3) not in dict(leaf.bt.iter(BID))


def test_delete_unwritten_key_emits_none(leaf):
    w0, a0 = leaf.counters()
    leaf.set(20)
    leaf.delete(20)
    assert K(20) not in leaf.node.whiteouts
    bset = leaf.write()
    assert entries_for(bset, K(20)) == []
    assert whiteouts(bset) == []
    assert leaf.counters() == (w0, a0 + 1)


def test_delete_key_that_overwrote_written_key_emits_one(leaf):
    w0, a0 = leaf.counters()
    leaf.set(4)                 # overwrite of a written key: the old version is on disk
    leaf.delete(4)
    bset = leaf.write()
    assert entries_for(bset, K(4)) == [b""]
    assert leaf.counters() == (w0 + 1, a0)
    assert leaf.bt.get(BID, K(4)) is None


def test_delete_reinsert_delete_emits_exactly_one(leaf):
    w0, a0 = leaf.counters()
    leaf.delete(7)
    leaf.set(7)
    leaf.delete(7)
    assert leaf.bt.get(BID, K(7)) is None
    bset = leaf.write()
    assert entries_for(bset, K(7)) == [b""]
    assert whiteouts(bset) == [K(7)]
    assert leaf.counters() == (w0 + 1, a0)


def test_delete_then_reinsert_writes_the_value_not_a_whiteout(leaf):
    w0, a0 = leaf.counters()
    leaf.delete(5)
    leaf.set(5)
    want = leaf.bt.get(BID, K(5))
    bset = leaf.write()
    assert entries_for(bset, K(5)) == [want]
    assert whiteouts(bset) == []
    # No whiteout reached the disk, so none may be counted as written.
    assert leaf.counters() == (w0, a0)


def test_delete_twice_emits_one(leaf):
    w0, a0 = leaf.counters()
    leaf.delete(2)
    leaf.delete(2)
    bset = leaf.write()
    assert whiteouts(bset) == [K(2)]
    assert leaf.counters() == (w0 + 1, a0)


def test_key_deleted_in_an_older_unwritten_set(leaf):
    """A written key overwritten into the older unwritten set (o), then deleted."""
    leaf.set(1)
    leaf.set(*range(100, 100 + NEWEST_SET_MAX + 1), n=4)   # pushes n into o
    node = leaf.node
    assert K(1) in node.ok and K(1) not in node.nk and K(1) in node.wk
    leaf.delete(1)
    check_node(leaf.node)
    bset = leaf.write()
    assert entries_for(bset, K(1)) == [b""]


def test_whiteouts_gone_after_write_and_from_disk(leaf):
    leaf.delete(0, 1, 2)
    leaf.set(30)
    leaf.delete(30)
    leaf.write()
    node = leaf.node
    assert not node.whiteouts and not node.ok and not node.nk
    assert all(node.wv)
    live = dict(leaf.bt.iter(BID))
    assert sorted(live) == [K(i) for i in range(3, 10)]
    # What the region parses to agrees, whiteouts applied.
    img = parse_node(leaf.dev.pread(leaf.bt.node_size, node.offset), node.offset)
    assert img.keys == sorted(live) and all(img.vals)
    # And a fresh mount of the image sees the same.
    leaf.eng.flush()
    eng2 = Engine(MemDevice(leaf.dev.snapshot()))
    assert dict(eng2.btrees.iter(BID)) == live
    eng2.close(clean=False)


def test_counters_match_bytes_written():
    """Random deletes/reinserts: counters equal what the bsets hold."""
    import random
    rng = random.Random(5)
    lf = Leaf()
    lf.set(*range(60))
    lf.write()
    on_disk = set(range(60))          # keys live in the written bsets
    model = set(range(60))
    expect_written = expect_avoided = 0
    w0, a0 = lf.counters()
    for _round in range(30):
        pending_wo: set[int] = set()   # written keys deleted since the last write
        for _ in range(rng.randint(1, 12)):
            i = rng.randrange(80)
            if rng.random() < 0.5:
                lf.set(i)
                model.add(i)
            else:
                if i in model and i not in on_disk and i not in pending_wo:
                    expect_avoided += 1
                if i in on_disk:
                    pending_wo.add(i)
                lf.delete(i)
                model.discard(i)
            check_node(lf.node)
        want_wo = sorted(K(i) for i in pending_wo if i not in model)
        bset = lf.write()
        assert whiteouts(bset) == want_wo
        expect_written += len(want_wo)
        on_disk = set(model)
        assert lf.counters() == (w0 + expect_written, a0 + expect_avoided)
        assert sorted(dict(lf.bt.iter(BID))) == sorted(K(i) for i in model)
    check_btrees(lf.eng)


# --------------------------------------------------------------------------
# Buffering: how often nodes are written


def overwrite_workload(eng: Engine, n_updates: int, nkeys: int = 200, size: int = 80) -> None:
    for i in range(n_updates):
        t = eng.trans()
        t.set(BID, K(i % nkeys), val(i, size))
        t.commit()


def test_write_buffer_4k_writes_every_4k():
    eng = Engine(_image(), write_buffer=4096)
    overwrite_workload(eng, 2000)
    c = eng.counters
    # Each update dirties ~100 bytes: a write about every 41 updates.
    per_update = 16 + 4 + 81
    expect = 2000 * per_update // 4096
    assert expect * 0.8 <= c["btree_node_writes_buffer"] <= expect * 1.2, c
    check_btrees(eng)


def test_default_buffers_far_more():
    results = {}
    for wb in (4096, None):
        eng = Engine(_image(), write_buffer=wb)
        overwrite_workload(eng, 2000)
        eng.btrees.flush_all()
        results[wb] = eng.counters["btree_node_writes"]
    assert results[None] * 5 <= results[4096], results


def test_dirty_set_not_written_at_4k_by_default():
    lf = Leaf()
    node = lf.node
    writes = lf.eng.counters["btree_node_writes"]
    written = node.written_bytes
    lf.set(*range(100), n=100)            # ~12 KiB of dirty keys
    assert lf.node.dirty_bytes > 2 * 4096
    assert lf.eng.counters["btree_node_writes"] == writes
    assert lf.node.written_bytes == written
    assert lf.eng.counters["btree_node_writes_buffer"] == 0


def test_newest_set_bounded_new_set_instead_of_write():
    lf = Leaf()
    writes = lf.eng.counters["btree_node_writes"]
    nkeys = 3 * NEWEST_SET_MAX + 32
    for base in range(0, nkeys, 50):
        lf.set(*range(base, base + 50), n=4)
        node = lf.node
        assert len(node.nk) <= NEWEST_SET_MAX
        assert node.nsets() <= 3
        check_node(node)
    node = lf.node
    assert node.ok, "the newest set should have been folded into an older unwritten set"
    assert lf.eng.counters["btree_node_writes"] == writes, "a new set starts, no write"
    assert sorted(dict(lf.bt.iter(BID))) == [K(i) for i in range(nkeys)]
    bset = lf.write()
    assert len(bset[0]) == nkeys


def _image() -> MemDevice:
    dev = MemDevice(64 * MiB)
    format_device(dev)
    return dev
