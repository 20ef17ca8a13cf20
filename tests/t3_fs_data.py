"""File data: extents, copy-on-write splits, sparse files, truncate, checksums,
space exhaustion, and a model test against a bytearray."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import FsEnv
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfs.format import BtreeId, Extent, pack_key, unpack_key
from pyfs.fs import FSError
from pyfs.fs.filesystem import Op
from pyfs.fs.inode import MAX_FILE_SIZE, ORPHAN_TRUNCATE, ROOT_INUM, orphan_key, orphan_val

ROOT = ROOT_INUM
B = 4096


def raises(err: int, fn, *args, **kw):
    with pytest.raises(FSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == err, f"{ei.value} is not {errno.errorcode[err]}"


def extents(eng, inum: int) -> list[tuple[int, Extent]]:
    return [(unpack_key(k)[1], Extent.unpack(v)) for k, v in
            eng.btrees.iter(BtreeId.extents, pack_key(inum, 0), pack_key(inum, 2**64 - 1))]


def new_file(fs, name: bytes = b"f") -> int:
    return fs.create(ROOT, name, 0o644).st_ino


def test_write_read_roundtrip(fsenv):
    fs = fsenv.fs
    f = new_file(fs)
    data = os.urandom(3 * B + 123)
    assert fs.write(f, 0, data) == len(data)
    a = fs.getattr(f)
    assert a.st_size == len(data) and a.st_blocks == 4 * 8
    assert fs.read(f, 0, 10**6) == data
    assert fs.read(f, 100, 50) == data[100:150]
    assert fs.read(f, len(data), 10) == b""
    assert fs.read(f, len(data) + 5000, 10) == b""
    assert fs.write(f, 0, b"") == 0
    raises(errno.EISDIR, fs.read, ROOT, 0, 1)
    raises(errno.EISDIR, fs.write, ROOT, 0, b"x")
    raises(errno.EINVAL, fs.write, f, -1, b"x")


def test_large_write_spans_chunks(fsenv):
    fs = fsenv.fs
    f = new_file(fs)
    data = os.urandom(3 * 1024 * 1024 + 777)
    assert fs.write(f, 5, data) == len(data)
    assert fs.read(f, 0, 5) == bytes(5)
    assert fs.read(f, 5, len(data)) == data
    fs2 = fsenv.remount()
    assert fs2.read(f, 5, len(data)) == data


def test_sequential_reads_prefetch_the_regions_ahead(fsenv):
    fs = fsenv.fs
    f = new_file(fs)
    data = os.urandom(4 * 1024 * 1024)
    fs.write(f, 0, data)
    fs2 = fsenv.remount()                    # a cold region cache
    regions = {e.dev_offset: e.region_blocks for _f, e in extents(fsenv.eng, f)}
    assert len(regions) >= 8
    advised: list[tuple[int, int]] = []
    fsenv.dev.prefetch = lambda off, n: advised.append((off, n))
    chunk = 128 * 1024
    got = b"".join(fs2.read(f, off, chunk) for off in range(0, len(data), chunk))
    assert got == data
    # Every region after the first ones is advised once, as a whole, before
    # the read that needs it.
    assert len(advised) == len(set(advised)) >= len(regions) - 2
    assert all(regions.get(off) == n // B for off, n in advised)
    assert fsenv.eng.counters["data_readahead_regions"] == len(advised)
    # Random reads prefetch nothing.
    advised.clear()
    fs3 = fsenv.remount()
    for off in (3 * chunk, 20 * chunk, 7 * chunk, 29 * chunk):
        assert fs3.read(f, off, chunk) == data[off:off + chunk]
    assert advised == []


def test_partial_overwrite_splits_extent(fsenv):
    fs, eng = fsenv.fs, fsenv.eng
    f = new_file(fs)
    orig = os.urandom(16 * B)
    fs.write(f, 0, orig)
    [(k0, e0)] = extents(eng, f)
    assert (k0, e0.region_blocks, e0.live_offset, e0.nblocks) == (0, 16, 0, 16)
    fs.write(f, 4 * B, b"N" * (2 * B))
    ex = extents(eng, f)
    assert [k for k, _e in ex] == [0, 4, 6]
    left, mid, right = (e for _k, e in ex)
    assert (left.dev_offset, left.csum, left.live_offset, left.nblocks) == \
        (e0.dev_offset, e0.csum, 0, 4)
    assert (right.dev_offset, right.csum, right.live_offset, right.nblocks) == \
        (e0.dev_offset, e0.csum, 6, 10)
    assert mid.dev_offset != e0.dev_offset and mid.nblocks == 2
    want = orig[:4 * B] + b"N" * 2 * B + orig[6 * B:]
    assert fs.read(f, 0, 16 * B) == want
    assert fs.getattr(f).st_blocks == 16 * 8
    # Overwrite across two pieces and past the end.
    fs.write(f, 5 * B, b"M" * (12 * B))
    want = want[:5 * B] + b"M" * 12 * B
    assert fs.read(f, 0, 20 * B) == want
    assert fs.getattr(f).st_blocks == 17 * 8
    assert [k for k, _e in extents(eng, f)] == [0, 4, 5]
    fsenv.remount()
    assert fsenv.fs.read(f, 0, 20 * B) == want


def test_unaligned_writes_read_modify_write(fsenv):
    fs = fsenv.fs
    f = new_file(fs)
    model = bytearray(os.urandom(10 * B))
    fs.write(f, 0, model)
    for off, n in ((10, 5), (B - 3, 7), (3 * B + 100, 2 * B), (9 * B + 4000, 500)):
        chunk = os.urandom(n)
        fs.write(f, off, chunk)
        model[off:off + n] = chunk
    assert fs.read(f, 0, len(model) + 10) == bytes(model)


def test_appends(fsenv):
    fs = fsenv.fs
    f = new_file(fs)
    model = b""
    for i in range(50):
        line = b"line %d\n" % i
        fs.write(f, len(model), line)
        model += line
    assert fs.read(f, 0, 10**6) == model
    assert fs.getattr(f).st_blocks == 8


def test_sparse_file(fsenv):
    fs, eng = fsenv.fs, fsenv.eng
    f = new_file(fs)
    gib = 1 << 30
    fs.write(f, gib, b"end")
    a = fs.getattr(f)
    assert a.st_size == gib + 3 and a.st_blocks == 8
    assert fs.read(f, 0, 4096) == bytes(4096)
    assert fs.read(f, gib - 10, 13) == bytes(10) + b"end"
    assert [k for k, _e in extents(eng, f)] == [gib // B]
    fs.setattr(f, size=4 * gib)
    assert fs.getattr(f).st_size == 4 * gib and fs.getattr(f).st_blocks == 8
    assert fs.read(f, 4 * gib - 5, 100) == bytes(5)


def test_truncate_down_zeroes_tail_and_trims(fsenv):
    fs, eng = fsenv.fs, fsenv.eng
    f = new_file(fs)
    data = os.urandom(8 * B)
    fs.write(f, 0, data)
    fs.setattr(f, size=2 * B + 100)
    assert fs.getattr(f).st_size == 2 * B + 100
    assert fs.getattr(f).st_blocks == 3 * 8
    assert fs.read(f, 0, 10 * B) == data[:2 * B + 100]
    ex = extents(eng, f)
    assert sum(e.nblocks for _k, e in ex) == 3 and ex[-1][0] + ex[-1][1].nblocks == 3
    # Growing again must show zeros, not the old bytes past the cut.
    fs.setattr(f, size=6 * B)
    got = fs.read(f, 0, 6 * B)
    assert got == data[:2 * B + 100] + bytes(4 * B - 100)
    fs.write(f, 5 * B, b"z")
    assert fs.read(f, 2 * B, 4 * B) == data[2 * B:2 * B + 100] + bytes(3 * B - 100) + b"z" + bytes(B - 1)
    fs.setattr(f, size=0)
    assert extents(eng, f) == [] and fs.getattr(f).st_blocks == 0
    raises(errno.EISDIR, fs.setattr, ROOT, size=0)
    raises(errno.EFBIG, fs.setattr, f, size=MAX_FILE_SIZE + 1)


def test_truncate_in_chunks(fsenv):
    fs, eng = fsenv.fs, fsenv.eng
    fs.chunk = 4
    f = new_file(fs)
    for i in range(30):
        fs.write(f, i * 2 * B, b"%d" % i)
    assert len(extents(eng, f)) == 30
    fs.setattr(f, size=7 * B)
    assert [k for k, _e in extents(eng, f)] == [0, 2, 4, 6]
    assert eng.btrees.get(BtreeId.inodes, orphan_key(f)) is None
    assert fs.getattr(f).st_blocks == 4 * 8


def test_pending_truncate_finishes_at_mount(fsenv):
    fs, eng = fsenv.fs, fsenv.eng
    f = new_file(fs)
    for i in range(10):
        fs.write(f, i * 2 * B, b"x")
    # What a crash in the middle of a chunked truncate leaves: i_size cut, a
    # truncate orphan, extents still past EOF.
    op = Op(fs)
    op.put(f, fs._inode(f).replace(size=B))
    op.t.set(BtreeId.inodes, orphan_key(f), orphan_val(ORPHAN_TRUNCATE))
    op.commit()
    eng.flush()
    fs2 = fsenv.crash()
    assert [k for k, _e in extents(fsenv.eng, f)] == [0]
    assert fs2.getattr(f).st_blocks == 8
    assert fsenv.eng.btrees.get(BtreeId.inodes, orphan_key(f)) is None


def test_efbig(fsenv):
    fs = fsenv.fs
    f = new_file(fs)
    raises(errno.EFBIG, fs.write, f, MAX_FILE_SIZE, b"x")
    assert fs.write(f, MAX_FILE_SIZE - 2, b"abcd") == 2
    assert fs.getattr(f).st_size == MAX_FILE_SIZE
    assert fs.read(f, MAX_FILE_SIZE - 2, 10) == b"ab"


def test_checksum_mismatch_is_eio(fsenv):
    fs = fsenv.fs
    f = new_file(fs)
    fs.write(f, 0, b"A" * (4 * B))
    g = new_file(fs, b"g")
    fs.write(g, 0, b"G" * B)
    fsenv.remount()                              # no cached regions
    fs, eng = fsenv.fs, fsenv.eng
    [(_k, e)] = extents(eng, f)
    eng.dev.pwrite(b"\xff", e.dev_offset + 2 * B + 17)
    before = eng.counters["data_csum_errors"]
    raises(errno.EIO, fs.read, f, 0, 10)         # the damage is elsewhere in the region
    raises(errno.EIO, fs.read, f, 3 * B, 10)
    assert eng.counters["data_csum_errors"] == before + 2
    raises(errno.EIO, fs.write, f, 10, b"rmw")   # a partial write reads through it too
    assert fs.read(g, 0, B) == b"G" * B
    fs.write(f, 0, b"B" * (4 * B))               # a whole-block overwrite heals the file
    assert fs.read(f, 0, 4 * B) == b"B" * (4 * B)


def test_enospc_and_recovery(make_fsenv):
    env = make_fsenv(24 << 20)
    fs = env.fs
    f = new_file(fs)
    chunk = os.urandom(1 << 20)
    total = 0
    with pytest.raises(FSError) as ei:
        for _ in range(100):
            n = fs.write(f, total, chunk)
            total += n
            if n < len(chunk):
                fs.write(f, total, chunk)       # nothing left: now it must fail
    assert ei.value.errno == errno.ENOSPC
    assert 8 << 20 < total < 24 << 20
    assert fs.getattr(f).st_size == total
    assert fs.read(f, total - 1000, 1000) == (chunk * 30)[total - 1000:total]
    fs.forget(f, 1)
    fs.unlink(ROOT, b"f")
    env.eng.flush()
    g = new_file(fs, b"g")
    assert fs.write(g, 0, chunk) == len(chunk)


def test_blocks_accounting_after_remount(fsenv):
    fs = fsenv.fs
    f = new_file(fs)
    fs.write(f, 0, os.urandom(5 * B))
    fs.write(f, 20 * B, b"tail")
    fs.setattr(f, size=21 * B)
    fs2 = fsenv.remount()
    assert fs2.getattr(f).st_blocks == 6 * 8


# ---------------------------------------------------------------- model

OPS = st.lists(st.one_of(
    st.tuples(st.just("w"), st.integers(0, 40 * B), st.integers(1, 3 * B)),
    st.tuples(st.just("t"), st.integers(0, 44 * B), st.just(0)),
    st.tuples(st.just("r"), st.integers(0, 44 * B), st.integers(0, 5 * B)),
    st.tuples(st.just("m"), st.just(0), st.just(0)),
), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(ops=OPS)
def test_model_read_write_truncate(ops):
    env = FsEnv(24 << 20)
    fs = env.fs
    f = new_file(fs)
    model = bytearray()
    for i, (op, off, n) in enumerate(ops):
        if op == "w":
            data = bytes([i % 251 + 1]) * n
            assert fs.write(f, off, data) == n
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + n] = data
        elif op == "t":
            fs.setattr(f, size=off)
            if off < len(model):
                del model[off:]
            else:
                model.extend(bytes(off - len(model)))
        elif op == "r":
            assert fs.read(f, off, n) == bytes(model[off:off + n])
        else:
            fs = env.remount()
        assert fs.getattr(f).st_size == len(model)
    assert fs.read(f, 0, len(model) + 1) == bytes(model)
    env.remount()
    assert env.fsck() == []
    env.close()
