"""Tests for pyfs.device: real devices, MemDevice, RecordingDevice, FaultyDevice."""

from __future__ import annotations

import array
import errno
import fcntl
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfs.device import (
    BlockDevice,
    Device,
    DeviceBusy,
    DeviceError,
    FaultyDevice,
    FileDevice,
    MemDevice,
    RecordingDevice,
    open_device,
)
from pyfs.device import file as devmod

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def blocks_bytes(path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture(params=["file", "mem"])
def anydev(request, tmp_path) -> Iterator[Device]:
    """A writable 1 MiB device of each in-tree kind."""
    if request.param == "file":
        dev = open_device(str(tmp_path / "img"), create_size=MiB)
    else:
        dev = MemDevice(MiB)
    with dev:
        yield dev


# --------------------------------------------------------------------------
# Behaviour shared by every device


def test_roundtrip_and_counters(anydev):
    anydev.pwrite(b"hello", 100)
    anydev.pwrite(memoryview(b"xxworldxx")[2:7], 105)
    anydev.pwrite(bytearray(b"!"), MiB - 1)
    assert anydev.pread(10, 100) == b"helloworld"
    assert anydev.pread(1, MiB - 1) == b"!"
    assert anydev.pread(4, 0) == bytes(4)
    assert anydev.pread(0, MiB) == b""
    anydev.flush()
    assert anydev.counters == {"reads": 4, "read_bytes": 15, "writes": 3, "write_bytes": 11,
                               "flushes": 1, "discards": 0, "discard_bytes": 0}


def test_pwrite_counts_bytes_of_wide_memoryview(anydev):
    words = array.array("I", [0x01020304, 0x05060708])
    anydev.pwrite(memoryview(words), 8)
    assert anydev.pread(8, 8) == words.tobytes()
    assert anydev.counters["write_bytes"] == 8


@pytest.mark.parametrize("length,offset", [(1, MiB), (2, MiB - 1), (1, -1), (-1, 0), (MiB + 1, 0)])
def test_out_of_range(anydev, length, offset):
    with pytest.raises(DeviceError, match="outside"):
        anydev.pread(length, offset)
    if length >= 0:
        with pytest.raises(DeviceError, match="outside"):
            anydev.pwrite(b"x" * length, offset)
    with pytest.raises(DeviceError, match="outside"):
        anydev.discard(offset, length)
    assert anydev.counters["reads"] == anydev.counters["writes"] == 0


def test_discard_zeroes_exact_range(anydev):
    anydev.pwrite(b"\xff" * (64 * KiB), 0)
    anydev.discard(1000, 20000)          # unaligned both ends
    data = anydev.pread(64 * KiB, 0)
    assert data == b"\xff" * 1000 + bytes(20000) + b"\xff" * (64 * KiB - 21000)
    anydev.discard(0, 0)
    assert anydev.counters["discards"] == 2 and anydev.counters["discard_bytes"] == 20000


def test_prefetch_is_a_hint(anydev):
    anydev.pwrite(b"p" * 8192, 4096)
    anydev.prefetch(4096, 8192)
    anydev.prefetch(anydev.size - 4096, 8192)           # past the end: ignored
    assert anydev.pread(8192, 4096) == b"p" * 8192
    if isinstance(anydev, FileDevice):
        assert anydev.counters["prefetches"] == 1


def test_close_is_idempotent(anydev):
    anydev.close()
    anydev.close()


# --------------------------------------------------------------------------
# Image files


def test_create_is_sparse(tmp_path):
    path = tmp_path / "img"
    with open_device(str(path), create_size=GiB) as dev:
        assert isinstance(dev, FileDevice)
        assert (dev.size, dev.is_block, dev.read_only, dev.path) == (GiB, False, False, str(path))
        dev.pwrite(b"end", GiB - 3)
        assert dev.pread(3, GiB - 3) == b"end"
    assert os.path.getsize(path) == GiB
    assert blocks_bytes(path) <= 64 * KiB


def test_existing_file_keeps_or_grows(tmp_path):
    path = str(tmp_path / "img")
    with open_device(path, create_size=2 * MiB) as dev:
        dev.pwrite(b"keep", 0)
    with open_device(path, create_size=MiB) as dev:      # smaller: keeps its size
        assert dev.size == 2 * MiB
    with open_device(path, create_size=4 * MiB) as dev:  # larger: extended sparse
        assert dev.size == 4 * MiB and dev.pread(4, 0) == b"keep"
    with open_device(path) as dev:
        assert dev.size == 4 * MiB
    assert blocks_bytes(path) <= 64 * KiB


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope")
    with pytest.raises(DeviceError, match="no such file: .*nope") as ei:
        open_device(path)
    assert ei.value.errno == errno.ENOENT
    assert not os.path.exists(path)
    with pytest.raises(ValueError):
        open_device(path, create_size=MiB, read_only=True)
    with pytest.raises(ValueError):
        open_device(path, create_size=-1)


def test_not_a_file(tmp_path):
    with pytest.raises(DeviceError):
        open_device(str(tmp_path))
    with pytest.raises(DeviceError, match="neither"):
        open_device("/dev/null")


def test_read_only_refuses_writes(tmp_path):
    path = str(tmp_path / "img")
    with open_device(path, create_size=MiB) as dev:
        dev.pwrite(b"data", 0)
    with open_device(path, read_only=True) as dev:
        assert dev.read_only and dev.pread(4, 0) == b"data"
        for call in (lambda: dev.pwrite(b"x", 0), lambda: dev.discard(0, 4096)):
            with pytest.raises(DeviceError) as ei:
                call()
            assert ei.value.errno == errno.EROFS
        dev.flush()   # harmless
        assert dev.pread(4, 0) == b"data"
    ro = MemDevice(b"abc", read_only=True)
    with pytest.raises(DeviceError):
        ro.pwrite(b"x", 0)


def test_discard_punches_hole(tmp_path):
    path = str(tmp_path / "img")
    with open_device(path, create_size=4 * MiB) as dev:
        dev.pwrite(os.urandom(4 * MiB), 0)
        dev.flush()
        before = blocks_bytes(path)
        assert before >= 4 * MiB
        dev.discard(MiB, 2 * MiB)
        assert blocks_bytes(path) <= before - 2 * MiB
        assert dev.pread(2 * MiB, MiB) == bytes(2 * MiB)
        assert dev.size == os.path.getsize(path) == 4 * MiB   # KEEP_SIZE


def test_discard_falls_back_to_zeros(tmp_path, monkeypatch):
    def unsupported(fd, mode, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(devmod, "_fallocate", unsupported)
    with open_device(str(tmp_path / "img"), create_size=3 * MiB) as dev:
        dev.pwrite(b"\x01" * (3 * MiB), 0)
        dev.discard(10, 3 * MiB - 20)    # spans several zero chunks
        assert dev.pread(3 * MiB, 0) == b"\x01" * 10 + bytes(3 * MiB - 20) + b"\x01" * 10
        assert dev.counters["writes"] == 1   # the zero fill is not counted as writes


def test_discard_other_errors_propagate(tmp_path, monkeypatch):
    def broken(fd, mode, offset, length):
        raise OSError(errno.EIO, "boom")

    monkeypatch.setattr(devmod, "_fallocate", broken)
    with open_device(str(tmp_path / "img"), create_size=MiB) as dev:
        with pytest.raises(OSError) as ei:
            dev.discard(0, 4096)
        assert ei.value.errno == errno.EIO


# --------------------------------------------------------------------------
# Exclusive opens


def test_exclusive_lock(tmp_path):
    path = str(tmp_path / "img")
    dev = open_device(path, create_size=MiB)
    for kwargs in ({}, {"read_only": True}, {"create_size": 2 * MiB}):
        with pytest.raises(DeviceBusy, match="in use by another pyfs mount or fsck") as ei:
            open_device(path, **kwargs)
        assert ei.value.errno == errno.EBUSY
    assert os.path.getsize(path) == MiB   # the refused create_size did not grow it
    with open_device(path, exclusive=False) as peek:   # non-exclusive opens never lock
        assert peek.size == MiB
    dev.close()
    with open_device(path, read_only=True):
        with pytest.raises(DeviceBusy):                # read-only opens lock too
            open_device(path)
    with open_device(path):
        pass


def test_exclusive_lock_across_processes(tmp_path):
    path = str(tmp_path / "img")
    open_device(path, create_size=MiB).close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DeviceBusy):
            open_device(path, read_only=True)
    finally:
        holder.communicate(timeout=10)
    with open_device(path):
        pass


# --------------------------------------------------------------------------
# Block devices


def test_loop_block_device(loop_device):
    loop, backing = loop_device
    with open_device(loop) as dev:
        assert isinstance(dev, BlockDevice)
        assert (dev.size, dev.is_block, dev.path) == (8 * MiB, True, loop)
        dev.pwrite(b"\xab" * (256 * KiB), 0)
        dev.flush()
        assert dev.pread(256 * KiB, 0) == b"\xab" * (256 * KiB)
        with pytest.raises(DeviceBusy):
            open_device(loop)
        with pytest.raises(DeviceBusy):
            open_device(loop, read_only=True)
        dev.discard(0, 128 * KiB)
        assert dev.pread(128 * KiB, 0) == bytes(128 * KiB)
        assert dev.pread(4, 128 * KiB) == b"\xab" * 4
        with pytest.raises(DeviceError, match="outside"):
            dev.pread(1, 8 * MiB)
    with pytest.raises(DeviceError, match="less than"):
        open_device(loop, create_size=16 * MiB)
    with open_device(loop, read_only=True) as dev:
        assert dev.read_only and dev.pread(4, 128 * KiB) == b"\xab" * 4
    with open(backing, "rb") as f:
        f.seek(128 * KiB)
        assert f.read(4) == b"\xab" * 4


def test_block_ioctls_mocked(tmp_path, monkeypatch):
    # The ioctl numbers are the asm-generic encodings.
    assert devmod.BLKGETSIZE64 == (2 << 30) | (8 << 16) | (0x12 << 8) | 114
    assert devmod.BLKDISCARD == (0x12 << 8) | 119
    calls: list[tuple[int, bytes]] = []
    discard_ok = [True]

    def fake_ioctl(fd, request, arg=0):
        calls.append((request, bytes(arg)))
        if request == devmod.BLKGETSIZE64:
            return struct.pack("Q", 3 * GiB)
        if request == devmod.BLKSSZGET:
            return struct.pack("i", 4096)
        if request == devmod.BLKDISCARD and discard_ok[0]:
            return 0
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(fcntl, "ioctl", fake_ioctl)
    fd = os.open(tmp_path / "fake", os.O_RDWR | os.O_CREAT)
    dev = BlockDevice("/dev/fake", fd, read_only=False)
    with dev:
        assert (dev.size, dev.sector_size, dev.is_block) == (3 * GiB, 4096, True)
        calls.clear()
        dev.discard(1000, 10000)                 # shrunk inward to [4096, 8192)
        dev.discard(5000, 100)                   # no whole sector: no ioctl
        assert calls == [(devmod.BLKDISCARD, struct.pack("QQ", 4096, 4096))]
        discard_ok[0] = False
        dev.discard(0, 8192)                     # unsupported: ignored, then not retried
        dev.discard(0, 8192)
        assert len(calls) == 2
        assert dev.counters["discards"] == 4
        with pytest.raises(DeviceError):
            dev.discard(3 * GiB, 1)


# --------------------------------------------------------------------------
# MemDevice


def test_mem_device():
    src = bytearray(b"abcdef")
    dev = MemDevice(src)
    src[0] = 0
    assert (dev.size, dev.path, dev.is_block, dev.read_only) == (6, "<mem>", False, False)
    assert dev.pread(6, 0) == b"abcdef"      # a private copy
    dev.pwrite(b"XY", 4)
    assert dev.snapshot() == b"abcdXY"
    assert isinstance(dev.snapshot(), bytes) and isinstance(dev.pread(1, 0), bytes)
    with pytest.raises(DeviceError):
        dev.pwrite(b"XYZ", 4)                # would grow the buffer
    assert dev.size == 6 and dev.snapshot() == b"abcdXY"
    dev.discard(1, 2)
    assert dev.snapshot() == b"a\0\0dXY"
    assert MemDevice(4096).snapshot() == bytes(4096)


# --------------------------------------------------------------------------
# RecordingDevice

SIZE = 16 * KiB


def apply_ref(ref: bytearray, op: tuple) -> None:
    if op[0] == "write":
        ref[op[1]:op[1] + len(op[2])] = op[2]
    elif op[0] == "discard":
        ref[op[1]:op[1] + op[2]] = bytes(op[2])


def run_ops(ops: list[tuple], base: bytes) -> tuple[RecordingDevice, list[bytes]]:
    """Play ops through a RecordingDevice; states[k] is the reference image
    after the first k ops."""
    rec = RecordingDevice(MemDevice(base))
    ref = bytearray(base)
    states = [bytes(ref)]
    for op in ops:
        if op[0] == "write":
            rec.pwrite(op[2], op[1])
        elif op[0] == "flush":
            rec.flush()
        else:
            rec.discard(op[1], op[2])
        apply_ref(ref, op)
        states.append(bytes(ref))
    return rec, states


@st.composite
def op_st(draw) -> tuple:
    kind = draw(st.sampled_from(["write", "write", "write", "flush", "discard"]))
    if kind == "flush":
        return ("flush",)
    offset = draw(st.integers(0, SIZE - 1))
    length = draw(st.integers(1, min(3000, SIZE - offset)))
    if kind == "discard":
        return ("discard", offset, length)
    return ("write", offset, bytes([draw(st.integers(1, 255))]) * length)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(op_st(), max_size=25), data=st.data())
def test_recording_matches_reference(ops, data):
    base = bytes(random.Random(len(ops)).randbytes(SIZE))
    rec, states = run_ops(ops, base)
    assert rec.base == base
    assert rec.log == ops
    assert rec.snapshot() == rec.inner.snapshot() == states[-1]
    for upto in range(len(ops) + 1):
        assert rec.materialize(upto).snapshot() == states[upto]
    # A random crash state: unflushed writes applied in a random order, some torn.
    upto = data.draw(st.integers(0, len(ops)))
    window = rec.unflushed_writes(upto)
    chosen = data.draw(st.permutations(window))[:data.draw(st.integers(0, len(window)))]
    extra = []
    ref = bytearray(states[upto])
    for i in chosen:
        _, offset, payload = ops[i]
        sectors = data.draw(st.none() | st.integers(0, -(-len(payload) // 512)))
        if sectors is not None:
            payload = payload[:sectors * 512]
        ref[offset:offset + len(payload)] = payload
        extra.append((i, sectors))
    assert rec.materialize(upto, extra).snapshot() == bytes(ref)


def test_flush_points_and_clean_prefixes():
    ops = [("write", 0, b"a" * 512), ("flush",), ("write", 512, b"b" * 512),
           ("discard", 0, 512), ("flush",), ("write", 0, b"c" * 10)]
    rec, states = run_ops(ops, bytes(SIZE))
    fp = rec.flush_points()
    assert fp == [1, 4]
    assert rec.materialize(fp[0] + 1).snapshot() == states[2]
    assert rec.materialize(fp[1] + 1).snapshot() == states[5]
    assert rec.unflushed_writes(0) == [0]
    assert rec.unflushed_writes(2) == [2]
    assert rec.unflushed_writes(5) == [5]
    assert rec.unflushed_writes(6) == []


def test_torn_write_applies_exactly_k_sectors():
    payload = bytes(range(256)) * 8              # 2048 bytes = 4 sectors
    rec, _ = run_ops([("flush",), ("write", 100, payload)], b"\xee" * SIZE)
    for k in range(5):
        img = rec.materialize(1, [(1, k)]).snapshot()
        n = k * 512
        assert img[100:100 + n] == payload[:n]
        assert img[:100] == b"\xee" * 100 and img[100 + n:] == b"\xee" * (SIZE - 100 - n)
    assert rec.materialize(1, [(1, None)]).snapshot()[100:2148] == payload
    with pytest.raises(ValueError):
        rec.materialize(1, [(1, 5)])
    with pytest.raises(ValueError):
        rec.materialize(1, [(1, -1)])


def test_extras_out_of_order():
    ops = [("write", 0, b"A" * 1024), ("write", 512, b"B" * 1024), ("flush",)]
    rec, _ = run_ops(ops, bytes(SIZE))
    in_order = rec.materialize(0, [(0, None), (1, None)]).snapshot()
    reversed_ = rec.materialize(0, [(1, None), (0, None)]).snapshot()
    assert in_order[:1536] == b"A" * 512 + b"B" * 1024
    assert reversed_[:1536] == b"A" * 1024 + b"B" * 512
    only_second = rec.materialize(0, [(1, 1)]).snapshot()
    assert only_second[:1536] == bytes(512) + b"B" * 512 + bytes(512)


def test_extras_validated():
    ops = [("write", 0, b"a"), ("flush",), ("write", 1, b"b"), ("discard", 0, 1),
           ("write", 2, b"c"), ("flush",), ("write", 3, b"d")]
    rec, _ = run_ops(ops, bytes(SIZE))
    rec.materialize(2, [(4, None), (2, None)])          # fine: both before the next flush
    bad = [
        (2, [(6, None)]),      # beyond the next flush
        (2, [(0, None)]),      # before upto: already applied
        (2, [(3, None)]),      # a discard, not a write
        (2, [(5, None)]),      # the flush itself
        (2, [(2, None), (2, 1)]),   # the same write twice
        (0, [(2, None)]),      # window of upto=0 ends at the first flush
        (len(ops) + 1, []),    # upto beyond the log
        (-1, []),
    ]
    for upto, extra in bad:
        with pytest.raises(ValueError):
            rec.materialize(upto, extra)
    assert rec.materialize(6, [(6, None)]).snapshot()[:4] == b"\0bcd"


def test_base_read_from_devices_without_snapshot(tmp_path):
    with open_device(str(tmp_path / "img"), create_size=64 * KiB) as dev:
        dev.pwrite(b"before", 0)
        rec = RecordingDevice(dev)
        rec.pwrite(b"after!", 0)
        assert rec.base[:6] == b"before" and len(rec.base) == 64 * KiB
        assert rec.materialize(0).pread(6, 0) == b"before"
        assert rec.materialize(1).pread(6, 0) == b"after!"
        assert rec.path == dev.path and rec.size == dev.size and rec.counters is dev.counters


def test_materialize_to_is_sparse(tmp_path):
    size = 4 * MiB
    rec = RecordingDevice(MemDevice(size))
    rec.pwrite(b"x" * 100, 5000)
    rec.pwrite(b"y" * 8192, 3 * MiB)
    rec.flush()
    rec.pwrite(b"z" * 10, size - 10)
    out = str(tmp_path / "crash.img")
    rec.materialize_to(out, 3, [(3, None)])
    with open(out, "rb") as f:
        assert f.read() == rec.materialize(3, [(3, None)]).snapshot()
    assert os.path.getsize(out) == size
    assert blocks_bytes(out) <= 64 * KiB
    rec.materialize_to(out, 0)                      # overwrites, truncating old content
    with open(out, "rb") as f:
        assert f.read() == bytes(size)


def test_crash_states_and_ids():
    ops = [("write", 0, b"a" * 2048), ("write", 4096, b"b" * 512), ("flush",),
           ("write", 0, b"c" * 1024), ("write", 1024, b"d" * 1536), ("write", 8192, b"e"),
           ("discard", 4096, 512), ("flush",), ("flush",), ("write", 100, b"f" * 600)]
    rec, states = run_ops(ops, bytes(SIZE))
    got = list(rec.crash_states(random.Random(7), 12))
    assert got == list(rec.crash_states(random.Random(7), 12))
    uptos = [u for _, u, _ in got]
    assert sorted(set(uptos)) == [0, 3, 8, 9, 10]
    ids = [sid for sid, _, _ in got]
    assert len(set(ids)) == len(ids)
    torn = 0
    for upto in sorted(set(uptos)):
        mine = [(sid, e) for sid, u, e in got if u == upto]
        assert mine[0][1] == []                     # the clean state comes first
        assert rec.materialize(upto).snapshot() == states[upto]
        window = set(rec.unflushed_writes(upto))
        for _, extra in mine[1:]:
            assert extra and {i for i, _ in extra} <= window
        torn += sum(1 for _, e in mine for _, k in e if k is not None)
        assert len({tuple(e) for _, e in mine}) == len(mine)   # no duplicate states
    assert torn > 0
    for sid, upto, extra in got:
        assert rec.state_from_id(sid) == (upto, extra), sid
        rec.materialize(upto, extra)                # every state is valid
    # Samples are not all "apply everything in order".
    assert any([i for i, _ in e] != sorted(i for i, _ in e) for _, _, e in got)
    for bad in ("nonsense", "f0:u99", "f0:u3:rzz"):
        with pytest.raises(ValueError):
            rec.state_from_id(bad)


def test_recording_skips_failed_writes():
    rec = RecordingDevice(FaultyDevice(MemDevice(SIZE), 1, kinds=("write",)))
    rec.pwrite(b"ok", 0)
    with pytest.raises(OSError):
        rec.pwrite(b"no", 10)
    rec.flush()
    assert rec.log == [("write", 0, b"ok"), ("flush",)]


# --------------------------------------------------------------------------
# FaultyDevice


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC])
def test_faulty_fails_exactly_once(error):
    inner = MemDevice(SIZE)
    dev = FaultyDevice(inner, 2, error=error, kinds=("write",))
    dev.pwrite(b"0", 0)
    dev.pread(1, 0)              # reads are not counted
    dev.flush()
    dev.pwrite(b"1", 1)
    with pytest.raises(OSError) as ei:
        dev.pwrite(b"2", 2)
    assert ei.value.errno == error and ei.value.strerror == os.strerror(error)
    assert inner.pread(3, 0) == b"01\0"   # the failed write did not happen
    dev.pwrite(b"3", 3)
    assert inner.pread(4, 0) == b"01\x003"
    assert (dev.calls, dev.failures) == (4, 1)
    assert dev.counters is inner.counters and dev.counters["writes"] == 3


def test_faulty_persistent_and_all_kinds():
    inner = MemDevice(SIZE)
    dev = FaultyDevice(inner, 1, persistent=True)
    dev.pread(1, 0)                              # call 0
    for call in (lambda: dev.pwrite(b"x", 0), dev.flush,
                 lambda: dev.discard(0, 1), lambda: dev.pread(1, 0)):
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == errno.EIO
    assert (dev.calls, dev.failures) == (5, 4)
    assert inner.counters["writes"] == inner.counters["flushes"] == inner.counters["discards"] == 0
    assert inner.snapshot() == bytes(SIZE)


def test_faulty_forwards_everything_else():
    inner = MemDevice(b"abc")
    dev = FaultyDevice(inner, 0, kinds=("flush",))
    assert (dev.size, dev.path, dev.read_only, dev.is_block) == (3, "<mem>", False, False)
    assert dev.snapshot() == b"abc"
    assert isinstance(dev, Device)
    with pytest.raises(OSError):
        dev.flush()
    dev.flush()
    assert (dev.calls, dev.failures) == (2, 1)
    with pytest.raises(ValueError):
        FaultyDevice(inner, 0, kinds=("writes",))
    with dev as same:
        assert same is dev


def test_faulty_over_file_device(tmp_path):
    with open_device(str(tmp_path / "img"), create_size=MiB) as inner:
        dev = FaultyDevice(inner, 0, error=errno.ENOSPC, kinds=("discard",))
        assert not hasattr(dev, "snapshot")
        dev.pwrite(b"\x07" * 4096, 0)
        with pytest.raises(OSError):
            dev.discard(0, 4096)
        assert dev.pread(4096, 0) == b"\x07" * 4096
        dev.close()
        assert inner.fd == -1
