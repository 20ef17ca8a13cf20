"""Group commit: the device flushes that make committed work durable.

One flush at a time runs in one long-lived thread (FlushThread); every
waiter whose commit a running flush covers returns when it ends, waiters
arriving meanwhile wait for the next one (Flusher). The FUSE edge waits here
for fsync, the periodic flusher and the unmount; the engine's flush_async
decides what a flush writes. Async (trio), below the FUSE edge and the fs
layer: it knows the engine and nothing above it.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable

import trio

log = logging.getLogger("pyfs.group_commit")


class FlushingStopped(OSError):
    """Journal flushing stopped after a failure: nothing more becomes durable."""

    def __init__(self):
        super().__init__(errno.EIO, "journal flushing stopped")


class FlushThread:
    """One long-lived thread that runs the device flushes.

    A flush handed to it and waited for costs about 100 us of hand-off on the
    test VM against 170-190 us through trio.to_thread.run_sync, which looks up
    its thread cache, renames the thread twice and takes a capacity limiter on
    every call. Flushes run one at a time anyway (see Flusher)."""

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="pyfs-flush", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (job := self.jobs.get()) is not None:
            job()

    async def run_sync(self, fn: Callable[[], object]) -> object:
        """fn() in the flush thread. Like to_thread.run_sync, the caller waits
        for it even when cancelled: a flush is never left half-observed."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        result: list = []

        def job() -> None:
            try:
                result.append((True, fn()))
            except BaseException as e:      # handed to the waiting task
                result.append((False, e))
            token.run_sync_soon(done.set)
        self.jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        ok, value = result[0]
        if not ok:
            raise value
        return value

    def stop(self, timeout: float = 60.0) -> None:
        self.jobs.put(None)
        self.thread.join(timeout)


class Flusher:
    """Group commit: waiters for seq s return at once if s is durable; else one
    flush at a time runs and wakes every waiter it covered; waiters arriving
    while it runs wait for the next one."""

    def __init__(self, eng, run_sync=trio.to_thread.run_sync,
                 before_wait: Callable[[], None] = lambda: None):
        self.eng = eng
        self.run_sync = run_sync
        # The FUSE edge lets another reader serve requests meanwhile.
        self.before_wait = before_wait
        self.running: trio.Event | None = None
        self.waiting: list[int] = []
        self.failed: BaseException | None = None
        self.last_flush_ns = 0          # wall clock of the last completed flush
        eng.counters.setdefault("journal_flush_waiters", 0)

    def dirty(self) -> bool:
        """Committed but not yet durable work exists."""
        j = self.eng.journal
        return bool(j.nkeys or j.sealed or j.written_seq > j.durable_seq)

    async def wait(self, seq: int) -> None:
        j = self.eng.journal
        if j.durable_seq >= seq:
            return
        self.before_wait()
        self.waiting.append(seq)
        try:
            while j.durable_seq < seq:
                if self.failed is not None:
                    raise FlushingStopped()
                if self.running is not None:
                    await self.running.wait()
                else:
                    await self.flush()
        finally:
            self.waiting.remove(seq)

    async def flush(self) -> None:
        """Run one flush, or wait for the running one."""
        if self.running is not None:
            await self.running.wait()
            return
        if self.failed is not None:
            return
        done = self.running = trio.Event()
        try:
            # Let requests already queued (other writers' writes and fsyncs)
            # commit first, so this flush covers them too.
            await trio.sleep(0)
            durable = await self.eng.flush_async(self.run_sync)
            self.eng.counters["journal_flush_waiters"] += sum(
                1 for s in self.waiting if s <= durable)
            self.last_flush_ns = time.time_ns()
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):
                self.failed = e
                log.error("journal flush failed: %r", e)
            raise
        finally:
            self.running = None
            done.set()

    async def preflush(self) -> None:
        """A device flush (in the flush thread), so that the journal write after
        it may point at the nodes written before it; or wait for the flush
        already running, which does as much."""
        if self.running is not None:
            await self.running.wait()
            return
        if self.failed is not None:
            raise FlushingStopped()
        j = self.eng.journal
        done = self.running = trio.Event()
        try:
            token = j.flush_token()
            await self.run_sync(self.eng.dev.flush)
            j.flush_done(token)
            self.eng.counters["journal_preflushes"] += 1
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):
                self.failed = e
                log.error("device flush failed: %r", e)
            raise
        finally:
            self.running = None
            done.set()

    def stop(self) -> None:
        """No more journal writes (errors=ro after a fatal error)."""
        if self.failed is None:
            self.failed = RuntimeError("filesystem failed")
