"""Emulated faults, as littlefs's bd/ folder has them: RecordingDevice logs
every write, flush and discard (like dm-log-writes) so that crash tests can
rebuild the image any power cut could leave, with ids that reproduce a state;
FaultyDevice fails a chosen I/O call."""

from __future__ import annotations

import bisect
import errno
import os
import random
import re
from collections.abc import Iterator, Sequence

from .base import _ZERO_BLOCK, _ZERO_CHUNK, IO_KINDS, PAGE, SECTOR, Device, Wrapper
from .mem import MemDevice, _zero

_STATE_ID = re.compile(r"f(\d+):u(\d+)(?::r([0-9a-f]+))?")


class RecordingDevice(Wrapper):
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
                data = data[:sectors * SECTOR]
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
    return -(-nbytes // SECTOR)


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
        for off in range(0, len(chunk), PAGE):
            block = chunk[off:off + PAGE]
            if block != _ZERO_BLOCK[:len(block)]:
                os.pwrite(fd, block, start + off)


class FaultyDevice(Wrapper):
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
