"""Real devices: image files and block devices, through a raw fd with
pread/pwrite/fdatasync, an exclusive lock, hole punching or BLKDISCARD."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from typing import Any

from .base import (
    _UNSUPPORTED,
    _ZERO_CHUNK,
    BLKDISCARD,
    BLKGETSIZE64,
    BLKSSZGET,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    SECTOR,
    Device,
    DeviceBusy,
    DeviceError,
)

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
            self.sector_size = SECTOR
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
