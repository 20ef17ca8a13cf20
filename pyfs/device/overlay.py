"""Devices that keep writes in memory: OverlayDevice (read-only mounts, fsck
-n, inspection: the image is never touched) and StagedDevice (a mount or a
repairing fsck: writes reach the image only once the whole job succeeded)."""

from __future__ import annotations

import errno

from .base import PAGE, Device, DeviceError, Wrapper


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
            start = b * PAGE
            blk = bytearray(self.inner.pread(min(PAGE, self.size - start), start))
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
        first, last = offset // PAGE, (offset + length - 1) // PAGE
        if last - first + 1 < len(self.blocks):
            touched = (b for b in range(first, last + 1) if b in self.blocks)
        else:
            touched = (b for b in self.blocks if first <= b <= last)
        for b in touched:
            start = b * PAGE
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
            b = pos // PAGE
            start = b * PAGE
            n = min(end, start + PAGE) - pos
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


class StagedDevice(Wrapper):
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
            self.inner.pwrite(bytes(blocks[b]), b * PAGE)
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
