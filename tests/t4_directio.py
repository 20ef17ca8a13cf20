"""Direct I/O beside the page cache: O_DIRECT writers (pwrite, and io_submit,
which the kernel runs asynchronously and then does not invalidate the cache
after) while buffered readers in other processes keep the file's pages
cached. Every buffered read after a completed write must return it."""

from __future__ import annotations

import ctypes
import json
import mmap
import multiprocessing
import os
import platform
import struct

import pytest
from conftest import pyfs_cli

BS = 4096
NBLK = 4                        # a small file: readers keep every page cached
WRITES = 300
READERS = 3

# Linux AIO syscalls (no libaio needed): io_setup, io_destroy, io_getevents, io_submit.
AIO_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
IOCB_CMD_PWRITE = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class Iocb(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("key", ctypes.c_uint32),
                ("rw_flags", ctypes.c_int32), ("opcode", ctypes.c_uint16),
                ("reqprio", ctypes.c_int16), ("fildes", ctypes.c_uint32),
                ("buf", ctypes.c_uint64), ("nbytes", ctypes.c_uint64),
                ("offset", ctypes.c_int64), ("reserved2", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("resfd", ctypes.c_uint32)]


class IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


def _sys(*args) -> int:
    r = libc.syscall(*args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


class Aio:
    """One io_submit'ed pwrite at a time, waited for with io_getevents."""

    def __init__(self):
        self.setup, self.destroy, self.getevents, self.submit = AIO_SYSCALLS[platform.machine()]
        self.ctx = ctypes.c_ulong(0)
        _sys(self.setup, 4, ctypes.byref(self.ctx))

    def pwrite(self, fd: int, buf: mmap.mmap, off: int) -> int:
        cb = Iocb(opcode=IOCB_CMD_PWRITE, fildes=fd, nbytes=len(buf), offset=off,
                  buf=ctypes.addressof(ctypes.c_char.from_buffer(buf)))
        cbs = (ctypes.POINTER(Iocb) * 1)(ctypes.pointer(cb))
        assert _sys(self.submit, self.ctx, 1, cbs) == 1
        ev = IoEvent()
        assert _sys(self.getevents, self.ctx, 1, 1, ctypes.byref(ev), None) == 1
        return ev.res

    def close(self) -> None:
        _sys(self.destroy, self.ctx)


def block(gen: int) -> bytes:
    return struct.pack("<I", gen) * (BS // 4)


def writer(path: str, mode: str, done) -> None:
    """O_DIRECT writes of generation g to block g % NBLK; each completed write
    is announced to the checker."""
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BS)                     # page-aligned, as O_DIRECT wants
    aio = Aio() if mode == "aio" else None
    try:
        for gen in range(1, WRITES + 1):
            buf[:] = block(gen)
            off = gen % NBLK * BS
            n = aio.pwrite(fd, buf, off) if aio else os.pwrite(fd, buf, off)
            assert n == BS, n
            done.put((off, gen))
    finally:
        done.put(None)
        if aio:
            aio.close()
        os.close(fd)


def reader(path: str, stop) -> None:
    """Buffered whole-file reads, over and over: the pages stay cached."""
    fd = os.open(path, os.O_RDONLY)
    while not stop.is_set():
        os.pread(fd, NBLK * BS, 0)
    os.close(fd)


def checker(path: str, done, result) -> None:
    """After each completed write, a buffered read of its block must show that
    write or a later one, never an older generation."""
    fd = os.open(path, os.O_RDONLY)
    stale = []
    while (item := done.get()) is not None:
        off, gen = item
        got = os.pread(fd, BS, off)
        seen = struct.unpack_from("<I", got)[0]
        if got != block(seen) or seen < gen:
            stale.append((off, gen, seen))
    os.close(fd)
    result.put(stale)


def dio_invalidations(mnt) -> int:
    return json.loads(pyfs_cli("stats", "--json", mnt.path).stdout)["fuse_dio_invalidations"]


@pytest.mark.parametrize("mode", ["aio", "sync"])
def test_buffered_reads_see_direct_writes(mnt, mode):
    if mode == "aio" and platform.machine() not in AIO_SYSCALLS:
        pytest.skip(f"AIO syscall numbers unknown on {platform.machine()}")
    path = mnt.p("f")
    with open(path, "wb") as f:
        f.write(bytes(NBLK * BS))
    ctx = multiprocessing.get_context("fork")
    done, result, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=reader, args=(path, stop)) for _ in range(READERS)]
    procs.append(ctx.Process(target=checker, args=(path, done, result)))
    for p in procs:
        p.start()
    w = ctx.Process(target=writer, args=(path, mode, done))
    w.start()
    w.join(120)
    stale = result.get(timeout=120)
    stop.set()
    for p in procs:
        p.join(60)
    assert w.exitcode == 0 and all(p.exitcode == 0 for p in procs)
    assert stale == [], f"{len(stale)} of {WRITES} reads were stale: {stale[:5]}"
    with open(path, "rb") as f:                 # the cache holds the last generation
        assert f.read() == b"".join(block(WRITES - (WRITES - b) % NBLK) for b in range(NBLK))
    assert dio_invalidations(mnt) > 0


def test_direct_writes_alone_invalidate_nothing(mnt):
    """Without buffered I/O on the file since its O_DIRECT open, a direct write
    costs no invalidation; a buffered read makes the next one invalidate."""
    path = mnt.p("f")
    with open(path, "wb") as f:
        f.write(bytes(64 * BS))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, BS)
    try:
        before = dio_invalidations(mnt)
        buf[:] = block(1)
        os.pwrite(fd, buf, 0)                   # pages from before the open: dropped
        for i in range(1, 20):
            os.pwrite(fd, buf, i * BS)
        assert dio_invalidations(mnt) == before + 1
        with open(path, "rb") as f:             # buffered: fills the page cache
            assert f.read(BS) == block(1)
            buf[:] = block(2)
            os.pwrite(fd, buf, 0)
            f.seek(0)
            assert f.read(BS) == block(2)
        assert dio_invalidations(mnt) == before + 2
    finally:
        os.close(fd)
