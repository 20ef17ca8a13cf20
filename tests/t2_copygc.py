"""copygc: fragmented, nearly full images keep accepting writes."""

from __future__ import annotations

import os
import random

from enginekit import check_alloc, delete_file, file_extents, read_file, write_file

from pyfs.device import MemDevice
from pyfs.engine import Engine
from pyfs.format import BLOCK_SIZE, DataType
from pyfs.mkfs import format_device


def engine(size: int) -> Engine:
    dev = MemDevice(size)
    format_device(dev, bucket_size=128 << 10, btree_node_size=32 << 10)
    return Engine(dev)


def assert_clean(eng: Engine) -> None:
    problems = check_alloc(eng)
    assert not problems, "\n".join(problems[:10])


def test_fill_delete_half_then_write_40_percent():
    size = 32 << 20
    eng = engine(size)
    rng = random.Random(11)
    data_bytes = (eng.alloc.end - eng.alloc.first) * eng.sb.bucket_size
    files: dict[int, bytes] = {}
    inum = 100
    while sum(map(len, files.values())) < 0.85 * data_bytes - (256 << 10):
        d = rng.randbytes(16384)
        write_file(eng, inum, d)
        files[inum] = d
        inum += 1
    assert_clean(eng)
    for i in sorted(files)[::2]:            # every other file: buckets end half full
        delete_file(eng, i)
        del files[i]
    eng.flush()
    assert_clean(eng)
    target = int(0.40 * size)
    written = 0
    while written < target:
        d = rng.randbytes(65536)
        write_file(eng, inum, d)            # must never raise NoSpace
        files[inum] = d
        inum += 1
        written += len(d)
        if inum % 40 == 0:
            assert_clean(eng)               # pointers and backpointers: a bijection
    c = eng.counters
    assert c["copygc_buckets_evacuated"] > 0 and c["copygc_bytes_moved"] > 0
    for i, d in files.items():
        assert read_file(eng, i)[:len(d)] == d, f"inode {i} changed"
    assert_clean(eng)
    eng.close()
    again = Engine(MemDevice(eng.dev.snapshot()))
    assert_clean(again)
    for i, d in list(files.items())[::7]:
        assert read_file(again, i)[:len(d)] == d


def test_copygc_moves_btree_nodes_too():
    eng = engine(16 << 20)
    for i in range(400):
        write_file(eng, 10 + i, os.urandom(4096))
    eng.sync_all()
    bs = eng.sb.bucket_size
    node = next(n for n in eng.btrees.walk(0) if n.level == 0)
    b = node.offset // bs
    eng.alloc.release_all()          # so the btree write point's bucket is closed
    moved_before = eng.counters["copygc_nodes_moved"]
    assert eng.copygc.evacuate(b)
    assert eng.counters["copygc_nodes_moved"] > moved_before
    assert all(n.offset // bs != b for bid in range(8) for n in eng.btrees.walk(bid))
    assert_clean(eng)


def test_stale_pointer_reads_as_absent_and_cached_invalidation():
    eng = engine(16 << 20)
    write_file(eng, 7, b"c" * (8 * BLOCK_SIZE))
    e = file_extents(eng, 7)[0]
    b = e.dev_offset // eng.sb.bucket_size
    eng.alloc.release_all()
    # Turn the bucket into cached data: no dirty sectors, the pointer still there.
    st = eng.alloc.state
    a = st.get(b)
    st.put(b, a.replace(data_type=DataType.cached, dirty_sectors=0,
                        cached_sectors=a.dirty_sectors))
    assert read_file(eng, 7) == b"c" * (8 * BLOCK_SIZE)
    assert st.invalidate_cached(b)
    assert st.is_stale(b, e.gen)
    assert read_file(eng, 7) == bytes(8 * BLOCK_SIZE)      # stale: absent, never wrong data
    assert not eng.alloc.index.is_free(b)                  # waits on the journal first
    eng.flush()
    st.do_discards()
    assert eng.alloc.index.is_free(b)


def test_fragmentation_heap_orders_by_live_sectors():
    eng = engine(16 << 20)
    for i in range(64):
        write_file(eng, 100 + i, os.urandom(16384))
    eng.alloc.release_all()
    for i in range(0, 64, 2):
        delete_file(eng, 100 + i)
    frag = eng.alloc.state.frag
    assert frag.live
    s1, b1 = frag.pop_emptiest()
    assert s1 == min(frag.live.values())    # popped, but still a candidate until moved
    assert all(0 < s < frag.bucket_sectors for s in frag.live.values())


def test_filesystem_scenario_ends_with_clean_fsck():
    """Issue 8's scenario through the filesystem API: real files, then fsck."""
    import stat

    from pyfs.fs import Filesystem
    from pyfs.fsck import FsckOptions, fsck_device

    size = 48 << 20
    dev = MemDevice(size)
    format_device(dev, bucket_size=128 << 10, btree_node_size=32 << 10)
    eng = Engine(dev)
    fs = Filesystem(eng)
    rng = random.Random(5)
    data_bytes = (eng.alloc.end - eng.alloc.first) * eng.sb.bucket_size
    files: dict[bytes, bytes] = {}

    def put(name: bytes, d: bytes) -> None:
        attr = fs.create(1, name, stat.S_IFREG | 0o644)
        fs.write(attr.st_ino, 0, d)
        fs.release(attr.st_ino)
        fs.forget(attr.st_ino, 1)       # as the kernel does: unlink may then free it
        files[name] = d

    i = 0
    while sum(map(len, files.values())) < 0.85 * data_bytes - (2 << 20):
        put(b"small%06d" % i, rng.randbytes(16384))
        i += 1
    for name in sorted(files)[::2]:
        fs.unlink(1, name)
        del files[name]
    written = 0
    while written < 0.40 * size:
        put(b"new%06d" % written, rng.randbytes(65536))
        written += 65536
    assert eng.counters["copygc_buckets_evacuated"] > 0
    for name, d in files.items():
        ino = fs.lookup(1, name).st_ino
        assert fs.read(ino, 0, len(d) + 1) == d
    eng.close()
    res = fsck_device(MemDevice(dev.snapshot()), FsckOptions(force=True, check_data=True))
    assert res.exit_code == 0, res
