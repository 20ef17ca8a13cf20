"""Tier 2: the journal ring: wrap-around, bucket boundaries, sequences, group
commit, preflush ordering, reclaim, reading an empty journal, and replay of
interior pointer changes."""

from __future__ import annotations

import os
import random
import re
import struct
import sys
from types import SimpleNamespace

import pytest

from pyfs.btree.io import parse_node
from pyfs.device import MemDevice, RecordingDevice
from pyfs.engine import Engine
from pyfs.format import (
    SECTOR_SIZE,
    KeyType,
    SeqBlacklist,
    pack_key,
    unpack_jset,
    unpack_jset_header,
)
from pyfs.journal.journal import Journal, JournalFull
from pyfs.journal.read import read_chain
from pyfs.mkfs import format_device

sys.path.insert(0, os.path.dirname(__file__))
from t2_btree_model import check_btrees  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
SMALL = {"bucket_size": 128 * KiB, "btree_node_size": 16 * KiB}


def image(size: int = 16 * MiB, **kw) -> MemDevice:
    dev = MemDevice(size)
    format_device(dev, **(SMALL | kw))
    return dev


def jstart(eng: Engine) -> int:
    return eng.sb.journal_bucket * eng.sb.bucket_size


def scan(dev, eng: Engine):
    return read_chain(dev, eng.sb)


def items(eng: Engine, bid: int = 1) -> dict[bytes, bytes]:
    return dict(eng.btrees.iter(bid))


def churn(eng: Engine, rng: random.Random, model: dict, n: int, *, bid: int = 1,
          nkeys: int = 2000, per: int = 10, vmax: int = 200) -> list[int]:
    seqs = []
    for _ in range(n):
        t = eng.trans()
        for _ in range(per):
            k = pack_key(5, rng.randrange(nkeys))
            if rng.random() < 0.2:
                t.delete(bid, k)
                model.pop(k, None)
            else:
                v = bytes([KeyType.raw]) + rng.randbytes(rng.randrange(1, vmax))
                t.set(bid, k, v)
                model[k] = v
        seqs.append(t.commit())
    return seqs


def journal_writes(rec: RecordingDevice, eng: Engine) -> list[tuple[int, int, bytes]]:
    """(log index, device offset, data) of every journal write in rec's log."""
    sb = eng.sb
    lo, hi = jstart(eng), sb.first_data_bucket * sb.bucket_size
    return [(i, op[1], op[2]) for i, op in enumerate(rec.log)
            if op[0] == "write" and lo <= op[1] < hi]


# --------------------------------------------------------------------------
# The ring


def test_wraparound_many_laps():
    dev = image()
    rec = RecordingDevice(dev)
    eng = Engine(rec)
    j = eng.journal
    rng = random.Random(1)
    model: dict[bytes, bytes] = {}
    checked = 0
    while j.head < 5 * j.ring:
        churn(eng, rng, model, 200)
        if rng.random() < 0.3:
            eng.flush()
        # A crash now (after a flush) recovers everything.
        if rng.random() < 0.25:
            eng.flush()
            e2 = Engine(MemDevice(dev.snapshot()))
            assert items(e2) == model
            e2.close(clean=False)
            checked += 1
    laps = j.head // j.ring
    assert laps >= 5 and checked >= 2
    assert eng.counters["journal_full_waits"] > 0, "the ring never filled up"
    assert eng.counters["btree_node_writes_reclaim"] > 0
    writes = journal_writes(rec, eng)
    bs = eng.sb.bucket_size
    start = jstart(eng)
    prev = None
    for _i, off, data in writes:
        rel = off - start
        assert rel % SECTOR_SIZE == 0, "entries start on a sector boundary"
        assert len(data) % SECTOR_SIZE == 0, "entries are whole sectors"
        assert rel % bs + len(data) <= bs, f"entry at ring offset {rel} crosses a bucket"
        seq = unpack_jset_header(data, off)[0]
        if prev is not None:
            assert seq == prev + 1, "journal writes are in sequence order, no gaps"
        prev = seq
    sc = scan(dev, eng)
    seqs = [e.seq for e in sc.entries]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[-1] == prev
    eng.close()
    e3 = Engine(dev)
    assert e3.replayed_entries == 0 and items(e3) == model
    check_btrees(e3)


def test_entries_never_cross_a_bucket():
    """Big transactions: an entry that does not fit the rest of a bucket moves to the next."""
    dev = image()
    rec = RecordingDevice(dev)
    eng = Engine(rec)
    rng = random.Random(2)
    model: dict[bytes, bytes] = {}
    for _ in range(60):
        churn(eng, rng, model, rng.randint(1, 30), per=20, vmax=2000)
        eng.flush()
    bs = eng.sb.bucket_size
    start = jstart(eng)
    moved = 0
    for _i, off, data in journal_writes(rec, eng):
        rel = off - start
        assert rel % bs + len(data) <= bs
        moved += rel % bs == 0
    assert moved >= 3, "expected entries to start fresh buckets"
    e2 = Engine(MemDevice(dev.snapshot()))
    assert items(e2) == model


def test_sequence_continuity_across_remounts():
    dev = image()
    eng = Engine(dev)
    rng = random.Random(3)
    model: dict[bytes, bytes] = {}
    last = 0
    for _round in range(4):
        seqs = churn(eng, rng, model, 300)
        assert seqs == sorted(seqs) and seqs[0] > last
        last = eng.flush()
        sc = scan(dev, eng)
        got = [e.seq for e in sc.entries]
        assert got == list(range(got[0], last + 1))
        assert sc.newest.last_seq == got[0]
        eng.close()
        eng = Engine(dev)
        assert eng.journal.cur_seq > last
    assert items(eng) == model


def test_read_journal_on_empty_journal():
    dev = image()
    sb_eng_less = MemDevice(dev.snapshot())
    from pyfs.superblock import read_superblock
    sb, _ = read_superblock(sb_eng_less)
    sc = read_chain(sb_eng_less, sb)
    assert sc.entries == [] and sc.newest is None and sc.end_reason == "empty"
    assert sc.head == 0
    eng = Engine(dev)                   # a fresh image mounts with nothing to replay
    assert eng.replayed_entries == 0 and eng.journal.cur_seq == 1
    assert items(eng) == {}


# --------------------------------------------------------------------------
# Flushing


def test_group_commit_one_flush_covers_all():
    dev = image()
    rec = RecordingDevice(dev)
    eng = Engine(rec)
    eng.flush()
    c = eng.counters
    flushes, writes, preflushes = c["journal_flushes"], c["journal_writes"], \
        c["journal_preflushes"]
    dev_flushes = dev.counters["flushes"]
    seqs = []
    for i in range(10):
        t = eng.trans()
        t.set(1, pack_key(1, i), bytes([KeyType.raw, i]))
        seqs.append(t.commit())
    assert c["journal_flushes"] == flushes and dev.counters["flushes"] == dev_flushes, \
        "commits must not wait for the device"
    assert c["journal_writes"] == writes
    durable = eng.flush()
    assert all(s <= durable for s in seqs)
    assert len(set(seqs)) == 1, "small commits share one journal entry"
    assert c["journal_writes"] == writes + 1
    assert c["journal_flushes"] - flushes == 1 + c["journal_preflushes"] - preflushes
    assert dev.counters["flushes"] - dev_flushes == c["journal_flushes"] - flushes
    # And the entry holds them all.
    sc = scan(dev, eng)
    assert sc.newest.seq == durable
    assert {k for _b, _l, k, _v in sc.newest.keys} >= {pack_key(1, i) for i in range(10)}


def test_preflush_only_before_entries_that_point_at_unflushed_nodes():
    dev = image()
    rec = RecordingDevice(dev)
    eng = Engine(rec)
    c = eng.counters
    eng.flush()
    # No node written since the last flush: no preflush.
    t = eng.trans()
    t.set(1, pack_key(1, 1), bytes([KeyType.raw]))
    t.commit()
    pre = c["journal_preflushes"]
    eng.flush()
    assert c["journal_preflushes"] == pre
    # Plain node writes (bsets appended, as reclaim and eviction do): the next
    # entry needs no preflush, but may not record a last_seq they alone support.
    t = eng.trans()
    t.set(1, pack_key(1, 2), bytes([KeyType.raw]))
    t.commit()
    safe = eng.journal.durable_last_seq
    eng.alloc.state.flush_cache()           # alloc keys into the btree: nothing pinned
    assert eng.btrees.flush_all() > 0
    mark = len(rec.log)
    eng.flush()
    assert c["journal_preflushes"] == pre
    (_i, off, data), = [w for w in journal_writes(rec, eng) if w[0] >= mark]
    assert unpack_jset(data, off).last_seq <= max(safe, eng.journal.safe_last_seq)
    # After that flush the next entry may record the advance.
    t = eng.trans()
    t.set(1, pack_key(1, 3), bytes([KeyType.raw]))
    t.commit()
    eng.flush()
    assert eng.journal.durable_last_seq > safe
    # A split: its pointer changes point at new nodes, so the entry holding
    # them is written only after a flush covering those nodes.
    mark = len(rec.log)
    splits = c["btree_splits"]
    i = 10
    while c["btree_splits"] == splits:
        t = eng.trans()
        t.set(1, pack_key(2, i), bytes([KeyType.raw]) + bytes(200))
        t.commit()
        i += 1
    eng.flush()
    assert c["journal_preflushes"] == pre + 1
    kinds = [op[0] for op in rec.log[mark:]]
    first_j = min(w[0] for w in journal_writes(rec, eng) if w[0] >= mark) - mark
    assert "write" in kinds[:first_j] and kinds[first_j - 1] == "flush", kinds
    assert kinds[-1] == "flush"


def test_reclaim_writes_oldest_pins_and_advances_last_seq():
    dev = image()
    eng = Engine(dev)
    bt = eng.btrees
    j = eng.journal
    model: dict[bytes, bytes] = {}
    # Dirty different btrees in different entries so pins differ.
    for bid in (0, 1, 2, 3):
        t = eng.trans()
        for i in range(20):
            t.set(bid, pack_key(9, i), bytes([KeyType.raw]) + bytes(30))
        t.commit()
        eng.flush()
        model[bid] = True
    pins = [n.pin_seq for n in bt.dirty]
    assert len(set(pins)) >= 4
    oldest = bt.oldest_pin()
    last_before = j.durable_last_seq
    assert last_before <= oldest
    n_before = eng.counters["btree_node_writes_reclaim"]
    eng.reclaim()
    assert eng.counters["btree_node_writes_reclaim"] > n_before
    assert bt.oldest_pin() == 0 or bt.oldest_pin() > oldest
    eng.flush()             # makes the node writes durable: the entry after it may
    assert j.durable_last_seq == last_before
    t = eng.trans()         # record the advance
    t.set(5, pack_key(1, 1), bytes([KeyType.raw]))
    t.commit()
    eng.flush()
    assert j.durable_last_seq > last_before
    sc = scan(dev, eng)
    assert sc.newest.last_seq == j.durable_last_seq
    e2 = Engine(MemDevice(dev.snapshot()))
    for bid in (0, 1, 2, 3):
        assert len(items(e2, bid)) == 20


# --------------------------------------------------------------------------
# Replay of interior pointer changes


def test_replay_interior_pointer_changes():
    dev = image()
    eng = Engine(dev)
    bt = eng.btrees
    rng = random.Random(4)
    model: dict[bytes, bytes] = {}
    churn(eng, rng, model, 50, vmax=300)
    assert bt.roots[1].level >= 1
    eng.sync_all()                       # everything on disk; the journal is clean
    splits = eng.counters["btree_splits"]
    churn(eng, rng, model, 80, vmax=300)
    assert eng.counters["btree_splits"] > splits
    root = bt.roots[1]
    assert root.level >= 1 and root.dirty, "the root holds unwritten pointer changes"
    img = parse_node(dev.pread(bt.node_size, root.offset), root.offset)
    assert img.keys != root.merged()[0], "the root on disk is stale"
    eng.flush()                          # crash here: nodes not written, journal durable
    e2 = Engine(MemDevice(dev.snapshot()))
    interior = [k for e in e2.scan.entries for _b, lv, k, _v in e.keys if lv]
    assert interior, "the journal holds interior pointer changes"
    assert items(e2) == model
    check_btrees(e2)
    # The interior replay pins the parent: written later, its region is current.
    e2.btrees.flush_all()
    e2.flush()
    e3 = Engine(MemDevice(e2.dev.snapshot()))
    assert items(e3) == model


# --------------------------------------------------------------------------
# Journal ring space is reused by whole buckets


class _FixedTail:
    """roots_fn/last_seq_fn for a bare Journal: last_seq is whatever we say."""

    def __init__(self):
        self.last: int | None = None

    def last_seq(self, seq: int) -> int:
        return seq if self.last is None else self.last


def test_head_never_enters_the_bucket_holding_last_seq():
    """The mount scan finds last_seq through the bucket it lives in, which must
    start with an entry no newer than it. A head that wrapped into that bucket
    would overwrite its start and leave the journal unreadable."""
    bs, nb = 128 * KiB, 8
    start = bs
    dev = MemDevice(start + bs * nb)
    tail = _FixedTail()
    geometry = SimpleNamespace(bucket_size=bs, journal_bucket=1, journal_nbuckets=nb,
                               seq_blacklist=SeqBlacklist)
    j = Journal(dev, start=start, bucket_size=bs, nbuckets=nb, counters={},
                roots_fn=lambda: [], last_seq_fn=tail.last_seq)

    def entry() -> int:
        j.reserve(30)
        j.add(1, pack_key(1, j.cur_seq), bytes([KeyType.raw]) + bytes(7))
        return j.flush()

    for _ in range(40):                 # the tail follows the head into bucket 1
        entry()
    tail.last = j.cur_seq               # pin the next entry: mid bucket 1
    want = j.cur_seq
    newest = None
    with pytest.raises(JournalFull):
        for _ in range(nb * bs // SECTOR_SIZE):
            newest = entry()
            sc = read_chain(dev, geometry)
            assert sc.newest.seq == newest
            assert [e.seq for e in sc.entries] == list(range(want, newest + 1))
    assert newest is not None and newest - want > 150


# --------------------------------------------------------------------------
# docs/FORMAT.md: the node, bset, pointer and journal tables match the structs

FORMAT_MD = os.path.join(os.path.dirname(__file__), "..", "docs", "FORMAT.md")


def _layout(fmt: str, names) -> list[tuple[str, int, int]]:
    codes = re.findall(r"\d*[a-zA-Z?]", fmt[1:])
    out, off = [], 0
    for name, code in zip(names, codes, strict=True):
        size = struct.calcsize("<" + code)
        out.append((name, off, size))
        off += size
    assert off == struct.calcsize(fmt)
    return out


@pytest.mark.parametrize("const", ["NODE_HDR_FMT", "BSET_HDR_FMT", "BTREE_PTR_FMT",
                                   "JSET_HDR_FMT", "JSET_ROOT_FMT", "JSET_KEY_FMT"])
def test_format_md_tables_match_structs(const):
    import pyfs.format as F
    fmt = getattr(F, const)
    text = open(FORMAT_MD).read()
    start = text.index(f"Struct `{const} = \"{fmt}\"`")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].isdigit():
            rows.append((cells[1], int(cells[0]), int(cells[3])))
    fields = getattr(F, const.replace("_FMT", "_FIELDS"), None) or [r[0] for r in rows]
    assert rows == _layout(fmt, fields), const
