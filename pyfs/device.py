"""The device layer: every byte pyfs reads or writes goes through a Device.

Real devices are regular image files (FileDevice) or block devices
(BlockDevice), driven through a raw fd with pread/pwrite/fdatasync. The rest
exists for testing: MemDevice keeps the image in memory, RecordingDevice logs
every write, flush and discard (like dm-log-writes) so crash tests can rebuild
the image as of any point, and FaultyDevice injects I/O errors at a chosen
call.

pread/pwrite are the hot path: they validate the range, bump counters and call
straight into the kernel (or the bytearray); nothing else.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import os
import random
import re
import stat
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from pyfs.format import BLOCK_SIZE, SECTOR_SIZE

# Block device ioctls, asm-generic encoding (x86, arm, riscv): _IO(0x12, 119),
# _IOR(0x12, 114, size_t) and _IO(0x12, 104).
BLKDISCARD = 0x1277               # arg: struct { u64 offset; u64 length; }
BLKGETSIZE64 = 0x80081272         # arg: u64 size in bytes
BLKSSZGET = 0x1268                # arg: int logical sector size

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

COUNTER_KEYS = ("reads", "read_bytes", "writes", "write_bytes",
                "flushes", "discards", "discard_bytes")
IO_KINDS = ("read", "write", "flush", "discard")

_ZERO_CHUNK = bytes(1 << 20)      # zero-fill fallback and sparse-copy comparisons
_ZERO_BLOCK = bytes(BLOCK_SIZE)
# errnos meaning "this file/device cannot do it", not "the request is wrong"
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.ENOTTY}


class DeviceError(OSError):
    """Opening, sizing or addressing a device failed; the message says why."""


class DeviceBusy(DeviceError):
    """The image is held by another pyfs mount or fsck."""


def _new_counters() -> dict[str, int]:
    return dict.fromkeys(COUNTER_KEYS, 0)


def _as_bytes_view(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    # len() of a memoryview counts items, not bytes; normalise odd formats.
    if isinstance(data, memoryview) and (data.itemsize != 1 or data.ndim != 1):
        return data.cast("B")
    return data


# --------------------------------------------------------------------------
# Base class


class Device:
    """A fixed-size array of bytes with positional I/O."""

    path: str
    size: int
    read_only: bool
    is_block: bool
    counters: dict[str, int]

    def __init__(self, path: str, size: int, *, read_only: bool, is_block: bool):
        self.path = path
        self.size = size
        self.read_only = read_only
        self.is_block = is_block
        self.counters = _new_counters()

    def pread(self, length: int, offset: int) -> bytes:
        raise NotImplementedError

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def discard(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def prefetch(self, offset: int, length: int) -> None:
        """Hint that [offset, offset+length) will be read soon (no-op by default)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"<{type(self).__name__} {self.path!r} {self.size} bytes {mode}>"

    # Shared checks; callers test the fast condition inline and only call
    # these to build the error.

    def _range_error(self, what: str, length: int, offset: int) -> DeviceError:
        return DeviceError(errno.EINVAL, f"{what} of {length} bytes at offset {offset} is "
                           f"outside {self.path} (size {self.size})")

    def _check_range(self, what: str, length: int, offset: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self._range_error(what, length, offset)

    def _start_write(self, data: bytes | memoryview, offset: int) -> bytes | memoryview:
        """Check a write (read-only, range) and count it; return the bytes to write."""
        if self.read_only:
            raise self._readonly_error()
        data = _as_bytes_view(data)
        n = len(data)
        if offset < 0 or offset + n > self.size:
            raise self._range_error("write", n, offset)
        c = self.counters
        c["writes"] += 1
        c["write_bytes"] += n
        return data

    def _start_discard(self, offset: int, length: int) -> None:
        """Check a discard (read-only, range) and count it."""
        if self.read_only:
            raise self._readonly_error()
        self._check_range("discard", length, offset)
        c = self.counters
        c["discards"] += 1
        c["discard_bytes"] += length

    def _readonly_error(self) -> DeviceError:
        return DeviceError(errno.EROFS, f"{self.path} is opened read-only")


# --------------------------------------------------------------------------
# Real devices


_fallocate_fn: Any = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """libc fallocate(2); Python's os module only has posix_fallocate."""
    global _fallocate_fn
    if _fallocate_fn is None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
        _fallocate_fn = fn
    if _fallocate_fn(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class FileDevice(Device):
    """A regular image file. The fd is owned (and closed) by the device."""

    def __init__(self, path: str, fd: int, size: int, *, read_only: bool,
                 is_block: bool = False):
        super().__init__(path, size, read_only=read_only, is_block=is_block)
        self.fd = fd
        self._punch_hole = True   # cleared once the filesystem refuses it

    def pread(self, length: int, offset: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self._range_error("read", length, offset)
        c = self.counters
        c["reads"] += 1
        c["read_bytes"] += length
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            data = self._read_rest(data, length, offset)
        return data

    def _read_rest(self, data: bytes, length: int, offset: int) -> bytes:
        # Single reads stop near 2 GiB; a zero-length read means the file shrank.
        parts = [data]
        done = len(data)
        while done < length:
            chunk = os.pread(self.fd, length - done, offset + done)
            if not chunk:
                raise DeviceError(errno.EIO, f"short read from {self.path}: {done} of "
                                  f"{length} bytes at offset {offset} (was it truncated?)")
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        data = self._start_write(data, offset)
        done = os.pwrite(self.fd, data, offset)
        if done != len(data):
            self._write_rest(memoryview(data), done, offset)

    def _write_rest(self, view: memoryview, done: int, offset: int) -> None:
        while done < len(view):
            w = os.pwrite(self.fd, view[done:], offset + done)
            if w <= 0:
                raise DeviceError(errno.EIO, f"short write to {self.path} at offset "
                                  f"{offset + done}")
            done += w

    def flush(self) -> None:
        self.counters["flushes"] += 1
        os.fdatasync(self.fd)

    def prefetch(self, offset: int, length: int) -> None:
        # Starts the host's read of the range without waiting for it, so that
        # the disk works while we answer the request before it.
        if 0 <= offset and offset + length <= self.size:
            self.counters["prefetches"] = self.counters.get("prefetches", 0) + 1
            try:
                os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass        # only a hint: the read itself reports real errors

    def discard(self, offset: int, length: int) -> None:
        self._start_discard(offset, length)
        if length:
            self._discard(offset, length)

    def _discard(self, offset: int, length: int) -> None:
        if self._punch_hole:
            try:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                self._punch_hole = False
        self._write_zeros(offset, length)

    def _write_zeros(self, offset: int, length: int) -> None:
        # Discarded ranges of an image file must read back as zeros.
        end = offset + length
        while offset < end:
            n = min(len(_ZERO_CHUNK), end - offset)
            view = memoryview(_ZERO_CHUNK)[:n]
            self._write_rest(view, 0, offset)
            offset += n

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)   # also drops the flock


class BlockDevice(FileDevice):
    """A block device: size from BLKGETSIZE64, discard via BLKDISCARD.

    Discard is a hint here: the range is shrunk inward to whole logical
    sectors, and a device without discard support silently ignores it
    (discarded blocks of a real device have undefined contents anyway).
    """

    def __init__(self, path: str, fd: int, *, read_only: bool):
        size = _ioctl_u64(fd, BLKGETSIZE64)
        super().__init__(path, fd, size, read_only=read_only, is_block=True)
        try:
            self.sector_size = _ioctl_int(fd, BLKSSZGET)
        except OSError:
            self.sector_size = SECTOR_SIZE
        self._discard_ok = True

    def _discard(self, offset: int, length: int) -> None:
        ss = self.sector_size
        start = -(-offset // ss) * ss
        end = (offset + length) // ss * ss
        if end <= start or not self._discard_ok:
            return
        try:
            fcntl.ioctl(self.fd, BLKDISCARD, struct.pack("QQ", start, end - start))
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            self._discard_ok = False


def _ioctl_u64(fd: int, request: int) -> int:
    return struct.unpack("Q", fcntl.ioctl(fd, request, bytes(8)))[0]


def _ioctl_int(fd: int, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, request, bytes(4)))[0]


def _busy(path: str, also: str = "") -> DeviceBusy:
    return DeviceBusy(errno.EBUSY, f"{path} is in use by another pyfs mount or fsck{also}")


def _lock(fd: int, path: str) -> None:
    # flock locks belong to the open file description, so a second open in the
    # same process conflicts too.
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _busy(path) from None
        raise DeviceError(e.errno, f"cannot lock {path}: {e.strerror}") from None


def _open_fd(path: str, flags: int, mode: int = 0o644) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise DeviceError(errno.ENOENT, f"no such file: {path}") from None
    except PermissionError:
        raise DeviceError(errno.EACCES, f"permission denied: {path}") from None
    except OSError as e:
        if e.errno == errno.EBUSY:   # O_EXCL on a claimed block device
            raise _busy(path, " (or is mounted)") from None
        raise DeviceError(e.errno, f"cannot open {path}: {e.strerror}") from None


def open_device(path: str, *, create_size: int | None = None, read_only: bool = False,
                exclusive: bool = True) -> Device:
    """Open an image file or block device.

    create_size: create a missing file sparse at this size, or extend a
    smaller existing one; a block device must be at least this big.
    exclusive: fail with DeviceBusy if another exclusive opener holds it
    (read-only opens lock too: fsck -n must not run under a live mount).
    """
    path = os.fspath(path)
    if create_size is not None:
        if read_only:
            raise ValueError("create_size needs a writable open")
        if create_size < 0:
            raise ValueError(f"negative create_size {create_size}")
    flags = os.O_RDONLY if read_only else os.O_RDWR
    try:
        is_block = stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        if create_size is None:
            raise DeviceError(errno.ENOENT, f"no such file: {path}") from None
        is_block = False
    if is_block:
        # O_EXCL on a block device claims it against mounts and other O_EXCL
        # openers; the flock below additionally excludes non-O_EXCL tools.
        fd = _open_fd(path, flags | (os.O_EXCL if exclusive else 0))
    else:
        fd = _open_fd(path, flags | (os.O_CREAT if create_size is not None else 0))
    try:
        return _make_device(path, fd, create_size, read_only, exclusive)
    except BaseException:
        os.close(fd)
        raise


def _make_device(path: str, fd: int, create_size: int | None, read_only: bool,
                 exclusive: bool) -> Device:
    # Lock before looking at or growing the file: never resize a live image.
    if exclusive:
        _lock(fd, path)
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        dev = BlockDevice(path, fd, read_only=read_only)
        if create_size is not None and dev.size < create_size:
            raise DeviceError(errno.ENOSPC, f"block device {path} has {dev.size} bytes, "
                              f"less than the requested {create_size}")
        return dev
    if not stat.S_ISREG(st.st_mode):
        raise DeviceError(errno.EINVAL, f"{path} is neither a regular file nor a block device")
    size = st.st_size
    if create_size is not None and size < create_size:
        os.ftruncate(fd, create_size)   # sparse: no blocks allocated
        size = create_size
    return FileDevice(path, fd, size, read_only=read_only)


# --------------------------------------------------------------------------
# In-memory device


class MemDevice(Device):
    """A device backed by a bytearray. Discarded ranges read as zeros."""

    def __init__(self, size_or_bytes: int | bytes | bytearray | memoryview, *,
                 read_only: bool = False):
        # bytearray(int) is zeroed; bytearray(bytes) is always a private copy
        self._init(bytearray(size_or_bytes), read_only)

    @classmethod
    def _adopt(cls, buf: bytearray) -> MemDevice:
        """Wrap buf without copying it; the caller gives it up."""
        dev = cls.__new__(cls)
        dev._init(buf, False)
        return dev

    def _init(self, buf: bytearray, read_only: bool) -> None:
        Device.__init__(self, "<mem>", len(buf), read_only=read_only, is_block=False)
        self._buf = buf
        self._view = memoryview(buf)   # pins the size: writes can never grow it

    def pread(self, length: int, offset: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self._range_error("read", length, offset)
        c = self.counters
        c["reads"] += 1
        c["read_bytes"] += length
        return self._view[offset:offset + length].tobytes()

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        data = self._start_write(data, offset)
        self._view[offset:offset + len(data)] = data

    def flush(self) -> None:
        self.counters["flushes"] += 1

    def discard(self, offset: int, length: int) -> None:
        self._start_discard(offset, length)
        _zero(self._view, offset, length)

    def snapshot(self) -> bytes:
        return self._view.tobytes()


def _zero(view: memoryview, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        n = min(len(_ZERO_CHUNK), end - offset)
        view[offset:offset + n] = _ZERO_CHUNK[:n]
        offset += n


# --------------------------------------------------------------------------
# Wrappers: forward to an inner device


class _Wrapper(Device):
    """Forwards attributes to `inner`; subclasses intercept the I/O calls."""

    def __init__(self, inner: Device):
        # No Device.__init__: size, counters and the rest live on inner.
        self.inner = inner

    path = property(lambda self: self.inner.path)
    size = property(lambda self: self.inner.size)
    read_only = property(lambda self: self.inner.read_only)
    is_block = property(lambda self: self.inner.is_block)
    counters = property(lambda self: self.inner.counters)

    def pread(self, length: int, offset: int) -> bytes:
        return self.inner.pread(length, offset)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        self.inner.pwrite(data, offset)

    def flush(self) -> None:
        self.inner.flush()

    def discard(self, offset: int, length: int) -> None:
        self.inner.discard(offset, length)

    def prefetch(self, offset: int, length: int) -> None:
        self.inner.prefetch(offset, length)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found normally (e.g. snapshot, fd).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


_STATE_ID = re.compile(r"f(\d+):u(\d+)(?::r([0-9a-f]+))?")


class RecordingDevice(_Wrapper):
    """Logs every write, flush and discard in order, like dm-log-writes.

    `base` is the image before the log; materialize() replays a prefix of
    the log onto it, plus chosen unflushed writes (possibly torn), to build
    the image a crash at that point could leave behind.
    """

    def __init__(self, inner: Device):
        super().__init__(inner)
        snap = getattr(inner, "snapshot", None)
        self.base: bytes = snap() if snap is not None else inner.pread(inner.size, 0)
        self.log: list[tuple] = []

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        self.inner.pwrite(data, offset)
        # Logged only once it happened: a failed write changed nothing.
        self.log.append(("write", offset, bytes(data)))

    def flush(self) -> None:
        self.inner.flush()
        self.log.append(("flush",))

    def discard(self, offset: int, length: int) -> None:
        self.inner.discard(offset, length)
        self.log.append(("discard", offset, length))

    def snapshot(self) -> bytes:
        return self.materialize(len(self.log)).snapshot()

    def flush_points(self) -> list[int]:
        return [i for i, op in enumerate(self.log) if op[0] == "flush"]

    def _next_flush(self, upto: int) -> int:
        log = self.log
        for i in range(upto, len(log)):
            if log[i][0] == "flush":
                return i
        return len(log)

    def unflushed_writes(self, upto: int) -> list[int]:
        """Indices of the writes at or after upto and before the next flush:
        the ones a crash right after op upto-1 may or may not have persisted."""
        return [i for i in range(upto, self._next_flush(upto)) if self.log[i][0] == "write"]

    def materialize(self, upto: int, extra: Sequence[tuple[int, int | None]] = ()) -> MemDevice:
        """The image after ops [0, upto) and then each (op_index, sectors) of
        extra in order: sectors None is the whole write, k its first k
        512-byte sectors (a torn write)."""
        if not 0 <= upto <= len(self.log):
            raise ValueError(f"upto {upto} outside the log (0..{len(self.log)})")
        extra = list(extra)
        self._check_extra(upto, extra)
        buf = bytearray(self.base)
        view = memoryview(buf)
        for op in self.log[:upto]:
            _apply(view, op)
        for i, sectors in extra:
            _, offset, data = self.log[i]
            if sectors is not None:
                data = data[:sectors * SECTOR_SIZE]
            view[offset:offset + len(data)] = data
        view.release()
        return MemDevice._adopt(buf)

    def _check_extra(self, upto: int, extra: list[tuple[int, int | None]]) -> None:
        end = self._next_flush(upto)
        seen: set[int] = set()
        for i, sectors in extra:
            if not upto <= i < end or self.log[i][0] != "write":
                raise ValueError(f"extra op {i} is not a write in the unflushed window "
                                 f"[{upto}, {end}) of upto={upto}")
            if i in seen:
                raise ValueError(f"extra op {i} given twice")
            seen.add(i)
            if sectors is not None and not 0 <= sectors <= _nsectors(len(self.log[i][2])):
                raise ValueError(f"extra op {i}: {sectors} sectors outside its "
                                 f"{_nsectors(len(self.log[i][2]))}")

    def materialize_to(self, path: str, upto: int,
                       extra: Sequence[tuple[int, int | None]] = ()) -> None:
        """Write the materialized image to a (sparse) file at path."""
        view = self.materialize(upto, extra)._view
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, len(view))
            _write_nonzero(fd, view)
        finally:
            os.close(fd)

    def crash_states(self, rng: random.Random,
                     samples_per_flush: int) -> Iterator[tuple[str, int, list]]:
        """(state_id, upto, extra) for the start of the log, after every flush
        and the end of the log: first the clean state, then up to
        samples_per_flush distinct random subsets of the unflushed writes,
        shuffled, some torn. state_from_id(state_id) rebuilds (upto, extra)."""
        fps = self.flush_points()
        starts = sorted({0, len(self.log), *(fp + 1 for fp in fps)})
        for upto in starts:
            nflush = bisect.bisect_left(fps, upto)   # flushes before upto, for humans
            yield f"f{nflush}:u{upto}", upto, []
            if not self.unflushed_writes(upto):
                continue
            seen: set[tuple] = set()
            for _ in range(samples_per_flush):
                seed = rng.getrandbits(32)
                extra = self._sample(upto, seed)
                if tuple(extra) in seen:
                    continue
                seen.add(tuple(extra))
                yield f"f{nflush}:u{upto}:r{seed:x}", upto, extra

    def _sample(self, upto: int, seed: int) -> list[tuple[int, int | None]]:
        r = random.Random(seed)
        window = self.unflushed_writes(upto)
        extra: list[tuple[int, int | None]] = []
        for i in r.sample(window, r.randint(1, len(window))):   # random order
            n = _nsectors(len(self.log[i][2]))
            if n > 1 and r.random() < 0.25:
                extra.append((i, r.randrange(1, n)))
            else:
                extra.append((i, None))
        return extra

    def state_from_id(self, state_id: str) -> tuple[int, list]:
        m = _STATE_ID.fullmatch(state_id)
        if m is None:
            raise ValueError(f"malformed crash state id {state_id!r}")
        upto = int(m[2])
        if upto > len(self.log):
            raise ValueError(f"crash state {state_id!r} is beyond this log ({len(self.log)} ops)")
        if m[3] is None:
            return upto, []
        if not self.unflushed_writes(upto):
            raise ValueError(f"crash state {state_id!r}: no unflushed writes at {upto}")
        return upto, self._sample(upto, int(m[3], 16))


def _nsectors(nbytes: int) -> int:
    return -(-nbytes // SECTOR_SIZE)


def _apply(view: memoryview, op: tuple) -> None:
    if op[0] == "write":
        _, offset, data = op
        view[offset:offset + len(data)] = data
    elif op[0] == "discard":
        _zero(view, op[1], op[2])


def _write_nonzero(fd: int, view: memoryview) -> None:
    # Skip all-zero 4 KiB blocks; test 1 MiB at a time first since images are
    # mostly empty. (tobytes() then == is memcmp; memoryview == is per item.)
    big = len(_ZERO_CHUNK)
    for start in range(0, len(view), big):
        chunk = view[start:start + big].tobytes()
        if chunk == _ZERO_CHUNK[:len(chunk)]:
            continue
        for off in range(0, len(chunk), BLOCK_SIZE):
            block = chunk[off:off + BLOCK_SIZE]
            if block != _ZERO_BLOCK[:len(block)]:
                os.pwrite(fd, block, start + off)


class FaultyDevice(_Wrapper):
    """Fails I/O call number fail_at (0-based, counting only `kinds`) with
    OSError(error) without performing it; persistent=True fails every later
    such call too."""

    def __init__(self, inner: Device, fail_at: int, *, error: int = errno.EIO,
                 kinds: tuple[str, ...] = IO_KINDS, persistent: bool = False):
        super().__init__(inner)
        unknown = set(kinds) - set(IO_KINDS)
        if unknown:
            raise ValueError(f"unknown I/O kinds {sorted(unknown)}; known: {IO_KINDS}")
        self.fail_at = fail_at
        self.error = error
        self.kinds = frozenset(kinds)
        self.persistent = persistent
        self.calls = 0
        self.failures = 0

    def _tick(self, kind: str) -> None:
        if kind not in self.kinds:
            return
        n = self.calls
        self.calls = n + 1
        if n == self.fail_at or (self.persistent and n > self.fail_at):
            self.failures += 1
            raise OSError(self.error, os.strerror(self.error))

    def pread(self, length: int, offset: int) -> bytes:
        self._tick("read")
        return self.inner.pread(length, offset)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        self._tick("write")
        self.inner.pwrite(data, offset)

    def flush(self) -> None:
        self._tick("flush")
        self.inner.flush()

    def discard(self, offset: int, length: int) -> None:
        self._tick("discard")
        self.inner.discard(offset, length)


class OverlayDevice(Device):
    """Reads come from `inner` (opened read-only); writes stay in memory.

    Block-granular: a write touching a block copies the block into the
    overlay first, so later reads see inner's bytes patched by every write.
    """

    def __init__(self, inner: Device):
        super().__init__(inner.path, inner.size, read_only=False, is_block=inner.is_block)
        self.inner = inner
        self.blocks: dict[int, bytearray] = {}

    def _block(self, b: int) -> bytearray:
        blk = self.blocks.get(b)
        if blk is None:
            start = b * BLOCK_SIZE
            blk = bytearray(self.inner.pread(min(BLOCK_SIZE, self.size - start), start))
            self.blocks[b] = blk
        return blk

    def pread(self, length: int, offset: int) -> bytes:
        self._check_range("read", length, offset)
        c = self.counters
        c["reads"] += 1
        c["read_bytes"] += length
        data = self.inner.pread(length, offset)
        if not self.blocks or not length:
            return data
        out = bytearray(data)
        first, last = offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE
        if last - first + 1 < len(self.blocks):
            touched = (b for b in range(first, last + 1) if b in self.blocks)
        else:
            touched = (b for b in self.blocks if first <= b <= last)
        for b in touched:
            start = b * BLOCK_SIZE
            lo, hi = max(start, offset), min(start + len(self.blocks[b]), offset + length)
            out[lo - offset:hi - offset] = self.blocks[b][lo - start:hi - start]
        return bytes(out)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        data = memoryview(data).cast("B")
        self._check_range("write", len(data), offset)
        c = self.counters
        c["writes"] += 1
        c["write_bytes"] += len(data)
        pos, end = offset, offset + len(data)
        while pos < end:
            b = pos // BLOCK_SIZE
            start = b * BLOCK_SIZE
            n = min(end, start + BLOCK_SIZE) - pos
            self._block(b)[pos - start:pos - start + n] = data[pos - offset:pos - offset + n]
            pos += n

    def flush(self) -> None:
        self.counters["flushes"] += 1

    def discard(self, offset: int, length: int) -> None:
        self._check_range("discard", length, offset)
        self.counters["discards"] += 1
        self.counters["discard_bytes"] += length
        zero = bytes(min(length, 1 << 20))
        pos = offset
        while pos < offset + length:
            n = min(len(zero), offset + length - pos)
            self.pwrite(zero[:n], pos)
            pos += n

    def close(self) -> None:
        self.blocks.clear()
        self.inner.close()


class StagedDevice(_Wrapper):
    """Holds every write in memory (an OverlayDevice) until commit() writes them
    through, in block order, and flushes; from then on it passes everything
    straight to `inner`. A mount, and a repairing fsck, stage what they write:
    one that fails (abort()) leaves the image exactly as it found it."""

    def __init__(self, inner: Device):
        super().__init__(inner)
        self.stage: OverlayDevice | None = OverlayDevice(inner)
        self.aborted = False

    def _target(self) -> Device:
        if self.aborted:
            raise DeviceError(errno.EROFS, f"{self.path}: staged writes were abandoned")
        return self.stage if self.stage is not None else self.inner

    def pread(self, length: int, offset: int) -> bytes:
        return self._target().pread(length, offset)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        if self.inner.read_only:
            raise self.inner._readonly_error()
        self._target().pwrite(data, offset)

    def flush(self) -> None:
        self._target().flush()

    def discard(self, offset: int, length: int) -> None:
        self._target().discard(offset, length)

    @property
    def staging(self) -> bool:
        return self.stage is not None

    def close(self) -> None:
        # Closed while staging (an engine unmounted inside a repairing fsck):
        # the staged writes are still to be committed, so inner stays open
        # for the caller that owns it.
        if self.stage is None:
            self.inner.close()

    def commit(self) -> int:
        """Write the staged blocks to the device and flush; return how many."""
        stage = self.stage
        if stage is None:
            return 0
        blocks = stage.blocks
        for b in sorted(blocks):
            self.inner.pwrite(bytes(blocks[b]), b * BLOCK_SIZE)
        if blocks:
            self.inner.flush()
        self.stage = None
        # From now on a plain pass-through: bind the inner device's methods
        # here, sparing every I/O of the session a call through this wrapper.
        for name in ("pread", "pwrite", "flush", "discard"):
            setattr(self, name, getattr(self.inner, name))
        return len(blocks)

    def abort(self) -> None:
        """Forget the staged writes: the device keeps what it had, and nothing
        more goes through this wrapper."""
        if self.stage is not None:
            self.stage.blocks.clear()
            self.stage = None
            self.aborted = True
