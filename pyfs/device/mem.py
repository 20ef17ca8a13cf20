"""MemDevice: an image held in memory (tests, benchmarks, crash states)."""

from __future__ import annotations

from .base import _ZERO_CHUNK, Device


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
