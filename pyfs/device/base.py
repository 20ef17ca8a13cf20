"""What every device is: a fixed-size array of bytes with positional I/O,
counters, and the checks the implementations share; and Wrapper, the base
of devices that forward to another."""

from __future__ import annotations

import errno
from typing import Any

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

# The device layer's own units (it imports nothing of pyfs): pages are what
# the overlays keep and what zero-skipping copies compare; a sector is the
# unit a power cut can tear a write at (and a block device's usual one).
PAGE = 4096
SECTOR = 512

_ZERO_CHUNK = bytes(1 << 20)      # zero-fill fallback and sparse-copy comparisons
_ZERO_BLOCK = bytes(PAGE)
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


class Wrapper(Device):
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
