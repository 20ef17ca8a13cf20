"""Bucket allocator: alloc keys, seq-gated reuse, discard, ENOSPC, goals, backpointers."""

from __future__ import annotations

import os
import random

import pytest
from enginekit import check_alloc, delete_file, read_file, write_file

from pyfs.alloc.foreground import NoSpace
from pyfs.device import MemDevice, RecordingDevice, open_device
from pyfs.engine import Engine
from pyfs.format import (
    BLOCK_SIZE,
    BtreeId,
    DataType,
    Extent,
    checksum,
    pack_key,
)
from pyfs.mkfs import format_device

EXT = BtreeId.extents
MAXB = (1 << 64) - 1


def new_engine(size=32 << 20, **kw) -> Engine:
    dev = MemDevice(size)
    format_device(dev, bucket_size=128 << 10, btree_node_size=32 << 10)
    return Engine(dev, **kw)


def assert_clean(eng: Engine) -> None:
    problems = check_alloc(eng)
    assert not problems, "\n".join(problems[:20])


def test_alloc_keys_track_extents_and_nodes():
    eng = new_engine()
    rng = random.Random(1)
    files = {i: rng.randbytes(rng.randrange(1, 40000)) for i in range(10, 200)}
    for i, d in files.items():
        write_file(eng, i, d)
    assert_clean(eng)
    for i in list(files)[::2]:
        delete_file(eng, i)
        del files[i]
    assert_clean(eng)
    for i, d in files.items():
        assert read_file(eng, i)[:len(d)] == d
    eng.flush()
    # Crash (no clean close) and clean close both recover the same accounting.
    crashed = Engine(MemDevice(eng.dev.snapshot()))
    assert_clean(crashed)
    eng.close()
    again = Engine(MemDevice(eng.dev.snapshot()))
    assert_clean(again)
    for i, d in files.items():
        assert read_file(again, i)[:len(d)] == d


def test_key_cache_avoids_btree_inserts_per_update():
    eng = new_engine()
    before = eng.counters["btree_updates"]
    for i in range(64):                 # 64 small files share buckets
        write_file(eng, 100 + i, b"x" * 4096)
    alloc_updates = eng.counters["alloc_key_updates"]
    assert alloc_updates >= 64
    # Extent keys and backpointers go to btrees; alloc keys mostly stay cached.
    btree_updates = eng.counters["btree_updates"] - before
    assert btree_updates < 2 * 64 + alloc_updates // 4
    assert eng.alloc.state.cache


def test_emptied_bucket_waits_for_journal_then_discard():
    eng = new_engine()
    write_file(eng, 5, os.urandom(128 << 10))      # one whole bucket
    eng.flush()
    b = Extent.unpack(eng.btrees.first(EXT, pack_key(5, 0), pack_key(5, MAXB))[1]).dev_offset \
        // eng.sb.bucket_size
    eng.alloc.release_all()                          # close the data write point
    gen = eng.alloc.state.get(b).gen
    delete_file(eng, 5)
    a = eng.alloc.state.get(b)
    assert a.data_type == DataType.need_discard and a.gen == gen + 1
    assert not eng.alloc.index.is_free(b), "reusable before the journal is durable"
    assert eng.alloc.state.nwaiting == 1
    eng.flush()
    eng.alloc.state.do_discards()
    assert eng.alloc.index.is_free(b)
    assert eng.alloc.state.get(b).data_type == DataType.free
    assert eng.counters["discards"] >= 1
    assert_clean(eng)


def test_deleting_large_file_shrinks_image(tmp_path):
    path = str(tmp_path / "img")
    dev = open_device(path, create_size=64 << 20)
    format_device(dev, bucket_size=128 << 10)
    eng = Engine(dev)
    write_file(eng, 7, os.urandom(24 << 20))
    eng.flush()
    used = os.stat(path).st_blocks * 512
    assert used >= 24 << 20
    delete_file(eng, 7)
    eng.close()
    after = os.stat(path).st_blocks * 512
    assert after < used - (20 << 20), (used, after)
    dev = open_device(path)
    eng = Engine(dev)
    assert_clean(eng)
    eng.close()


def test_enospc_then_deletes_recover():
    eng = new_engine(size=16 << 20)
    inum = 1000
    written = []
    with pytest.raises(NoSpace):
        while True:
            write_file(eng, inum, os.urandom(64 << 10))
            written.append(inum)
            inum += 1
    assert eng.counters["alloc_enospc"] >= 1
    assert len(written) > 50
    for i in written[: len(written) // 2]:
        delete_file(eng, i)                          # deletes always commit
    for i in range(5):
        write_file(eng, 5000 + i, os.urandom(64 << 10))   # space came back
    assert_clean(eng)
    eng.close()
    assert_clean(Engine(MemDevice(eng.dev.snapshot())))


def test_linear_allocation_for_consecutive_files():
    eng = new_engine(size=64 << 20)
    for i in range(20):
        write_file(eng, 300 + i, b"y" * 16384)
    offs = [Extent.unpack(eng.btrees.first(EXT, pack_key(300 + i, 0),
                                           pack_key(300 + i, MAXB))[1]).dev_offset
            for i in range(20)]
    assert offs == sorted(offs), "consecutive inodes should be laid out in order"
    assert eng.counters["alloc_bounces"] == 0


def test_bounce_when_goal_group_full():
    eng = new_engine(size=64 << 20)
    g = eng.alloc.goals
    inum = 5
    goal_group = g.goal_bucket(inum, 0) // g.gb
    lo, hi = eng.alloc.index.group_range(goal_group)
    for b in range(max(lo, eng.alloc.first), hi):   # fill the goal group
        if eng.alloc.index.is_free(b):
            eng.alloc.index.set_used(b)
    write_file(eng, inum, b"z" * 4096)
    assert eng.counters["alloc_bounces"] >= 1


def test_seq_gated_reuse_survives_every_crash_state():
    """No bucket emptied by a non-durable transaction is overwritten in any crash state."""
    base = MemDevice(8 << 20)
    format_device(base, bucket_size=128 << 10, btree_node_size=16 << 10)
    rec = RecordingDevice(base)
    eng = Engine(rec)
    rng = random.Random(7)
    live: dict[int, bytes] = {}
    nxt = 100
    for _round in range(12):
        for _ in range(6):
            d = rng.randbytes(rng.randrange(4096, 70000))
            try:
                write_file(eng, nxt, d)
            except NoSpace:
                break
            live[nxt] = d
            nxt += 1
        if rng.random() < 0.5:
            eng.flush()
        for i in rng.sample(sorted(live), k=len(live) // 3):
            delete_file(eng, i)
            del live[i]
    eng.flush()
    states = dropped = 0
    samples = int(os.environ.get("PYFS_CRASH_SAMPLES", "12"))
    for state_id, upto, extra in rec.crash_states(random.Random(3), samples):
        dev = rec.materialize(upto, extra)
        try:
            e2 = Engine(dev)
        except Exception as ex:   # pragma: no cover - reported with the state id
            raise AssertionError(f"crash state {state_id}: mount failed: {ex}") from ex
        for k, v in e2.btrees.iter(EXT):
            e = Extent.unpack(v)
            region = dev.pread(e.region_blocks * BLOCK_SIZE, e.dev_offset)
            assert checksum(region) == e.csum, (
                f"crash state {state_id}: extent {k.hex()} data was overwritten")
        problems = check_alloc(e2)
        assert not problems, f"crash state {state_id}: {problems[:5]}"
        states += 1
        dropped += bool(e2.counters.get("journal_dropped_entries"))
    print(f"checked {states} crash states; {dropped} dropped an unflushed journal tail")
    assert states > 50
    assert dropped, "no crash state exercised dropping entries whose data was lost"


def test_usage_command(tmp_path, capsys):
    import json

    from pyfs.cli import main
    path = str(tmp_path / "u.img")
    assert main(["mkfs", path, "--size", "64M", "-q"]) == 0
    eng = Engine(open_device(path))
    for i in range(10):
        write_file(eng, 100 + i, os.urandom(50000))
    eng.close()
    capsys.readouterr()
    assert main(["usage", path, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["by_type"]["user"] >= 1 and rep["by_type"]["btree"] >= 1
    assert rep["live_bytes"] >= 10 * 50000
    assert rep["allocator"]["buckets"] == rep["buckets"]         # Allocator.usage(), as is
    assert main(["usage", path]) == 0
    out = capsys.readouterr().out
    assert "Fragmentation" in out and "\nAllocator:\n" in out and " reserve: " in out
    (tmp_path / "junk").write_bytes(b"x" * 10000)
    assert main(["usage", str(tmp_path / "junk")]) == 1
    assert "not a usable pyfs filesystem" in capsys.readouterr().err
