"""A leaner pyfuse3 session loop, through pyfuse3's own event-loop hook.

pyfuse3's `main()` runs reader tasks that each take a `trio.Lock`, wait in
`trio.lowlevel.wait_readable` for /dev/fuse, release the lock (handing it to a
parked spare task), read one request and run its handler. Per request that is
an uncontended lock acquire that still passes through the scheduler, an
EPOLLONESHOT re-arm plus a park, and a switch to the other task: about as
much as pyfs's handlers cost.

pyfuse3 looks its `trio` module up at call time: the hook pyfuse3.asyncio
uses to swap the event loop, and the one attribute of another module pyfs
sets (for one session, restored after). `session_loop()` puts a namespace
there that differs from trio in four places:

- the read lock does not checkpoint when it is free and is not passed on when
  released: the task that just answered a request takes it again and reads
  the next one itself while requests are queued;
- waiting for /dev/fuse first asks `poll(0)`; only an empty queue parks the
  task in trio. Every FAST_STREAK reads without a park it yields to trio once,
  so the journal flush timer, housekeeping and woken fsync waiters still run;
- a handler that blocks hands the reading over to a parked spare: trio calls
  `before_io_wait` on an instrument of ours once per scheduler pass, and a
  pass that finds the read lock free means the task that released it is
  suspended in a handler. `handoff()` does the same at once, for a handler
  that knows it is about to block (fsync waiting for a journal flush, so the
  requests queued meanwhile join that flush). Without the hand-off a handler
  that waits for the kernel would deadlock: pyfuse3.invalidate_inode (in a
  worker thread after an O_DIRECT write) waits for page locks that READs in
  flight hold until the daemon answers them;
- the spares are woken when the session ends (`terminate()`, or a reader that
  read the kernel's ENODEV at unmount), since nobody else would wake them.

It depends on pyfuse3's internals (see PYFUSE3_VERSIONS, and pyproject.toml's
pin); with another version, or no hook, pyfuse3's stock loop runs and a
warning is logged. Counters (`pyfs stats`): fuse_loop_lean (1 when active),
fuse_loop_fast_reads, fuse_loop_parks, fuse_loop_yields, fuse_loop_handoffs.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from types import ModuleType

import trio

log = logging.getLogger("pyfs.fuse_loop")

# pyfuse3 releases the loop reads the internals of (internal.pxi's
# _wait_fuse_readable and _session_loop, main() and terminate()).
PYFUSE3_VERSIONS = ("3.5.0",)
PYFUSE3_INTERNALS = ("_wait_fuse_readable", "_session_loop", "main", "terminate")
FAST_STREAK = 16                # reads served without a park before one yield to trio
COUNTERS = ("fuse_loop_lean", "fuse_loop_fast_reads", "fuse_loop_parks", "fuse_loop_yields",
            "fuse_loop_handoffs")


class ReaderLock:
    """pyfuse3's read lock: the right to wait for and read the next request.

    Free: taken without a checkpoint. Released: stays free (the releasing
    task reads the request and comes back for it); the spares parked here
    are woken only by handoff() or wake_all()."""

    def __init__(self) -> None:
        self.held = False
        self.spares = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self.held:
            await self.spares.park()
        self.held = True

    async def __aexit__(self, *exc: object) -> None:
        self.held = False

    def handoff(self) -> bool:
        """The holder is busy (blocked in a handler): wake one spare to read."""
        if self.held or not self.spares:
            return False
        self.spares.unpark()
        return True

    def wake_all(self) -> None:
        self.spares.unpark_all()


class _Namespace:
    """A module stand-in: the given attributes, the rest from `fallback`."""

    def __init__(self, fallback: ModuleType, **attrs: object) -> None:
        self._fallback = fallback
        self.__dict__.update(attrs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._fallback, name)


class _ReaderNursery:
    """pyfuse3's worker nursery; every reader task wakes the spares when it
    ends, so that the others see the session ended instead of parking on."""

    def __init__(self, nursery: trio.Nursery, loop: LeanLoop) -> None:
        self._nursery = nursery
        self._loop = loop

    def start_soon(self, fn, *args, name: object = None) -> None:
        self._nursery.start_soon(self._loop.reader_task, fn, args, name=name or fn)

    def __getattr__(self, name: str) -> object:
        return getattr(self._nursery, name)


class _HandoffWatch(trio.abc.Instrument):
    """Once per scheduler pass (not per request): a free read lock means its
    last holder is suspended in a handler; a spare takes over the reading.
    The pass has already chosen how long to wait for I/O, so a hand-off also
    pokes trio's wakeup channel, or the spare would sleep through that wait."""

    def __init__(self, loop: LeanLoop) -> None:
        self.loop = loop
        self.token = trio.lowlevel.current_trio_token()

    def before_io_wait(self, timeout: float) -> None:
        if self.loop.handoff() and timeout > 0:
            self.token.run_sync_soon(_nothing)


def _nothing() -> None:
    pass


class LeanLoop:
    """The state of one session: its read lock, poll objects and counters."""

    def __init__(self, counters: dict[str, int], fast_streak: int = FAST_STREAK) -> None:
        self.counters = counters
        self.fast_streak = fast_streak
        self.streak = 0
        self.lock: ReaderLock | None = None
        self._pollers: dict[int, select.poll] = {}
        for name in COUNTERS:
            counters[name] = 0
        counters["fuse_loop_lean"] = 1
        self.namespace = _Namespace(
            trio, Lock=self.new_lock, open_nursery=self.open_nursery,
            lowlevel=_Namespace(trio.lowlevel, wait_readable=self.wait_readable,
                                notify_closing=self.notify_closing))

    def new_lock(self) -> ReaderLock:
        self.lock = ReaderLock()
        return self.lock

    @asynccontextmanager
    async def open_nursery(self):
        """pyfuse3.main()'s nursery of reader tasks: the session."""
        watch = _HandoffWatch(self)
        trio.lowlevel.add_instrument(watch)
        try:
            async with trio.open_nursery() as nursery:
                yield _ReaderNursery(nursery, self)
        finally:
            trio.lowlevel.remove_instrument(watch)

    async def reader_task(self, fn, args: tuple) -> None:
        try:
            await fn(*args)
        finally:
            self.wake_all()

    def _poller(self, fd: int) -> select.poll:
        p = self._pollers.get(fd)
        if p is None:
            p = self._pollers[fd] = select.poll()
            p.register(fd, select.POLLIN)
        return p

    async def wait_readable(self, fd: int) -> None:
        """Return once a request can be read: at once while requests are queued."""
        c = self.counters
        if self.streak >= self.fast_streak:
            self.streak = 0
            c["fuse_loop_yields"] += 1
            await trio.lowlevel.checkpoint()
        if self._poller(fd).poll(0):
            self.streak += 1
            c["fuse_loop_fast_reads"] += 1
            return
        self.streak = 0
        c["fuse_loop_parks"] += 1
        await trio.lowlevel.wait_readable(fd)

    def notify_closing(self, fd: int) -> None:
        """terminate(): wake the task parked on /dev/fuse and every spare."""
        self.wake_all()
        trio.lowlevel.notify_closing(fd)

    def handoff(self) -> bool:
        """Wake a spare if the read lock is free; whether one was woken."""
        if self.lock is None or not self.lock.handoff():
            return False
        self.counters["fuse_loop_handoffs"] += 1
        return True

    def wake_all(self) -> None:
        if self.lock is not None:
            self.lock.wake_all()


_active: LeanLoop | None = None


def handoff() -> None:
    """Call just before a handler blocks (awaits something that parks): a
    spare reader serves the requests that arrive meanwhile, from now rather
    than from the next scheduler pass. A no-op under the stock loop, which
    keeps a reader waiting on /dev/fuse all the time."""
    if _active is not None:
        _active.handoff()


def unsupported(pyfuse3: ModuleType) -> str | None:
    """Why the lean loop cannot run on this pyfuse3 (None: it can)."""
    version = getattr(pyfuse3, "__version__", "?")
    if getattr(pyfuse3, "trio", None) is not trio:
        return f"pyfuse3 {version} has no trio hook, or it is already taken"
    if version not in PYFUSE3_VERSIONS:
        return (f"pyfuse3 {version} is not a release it was written for "
                f"({', '.join(PYFUSE3_VERSIONS)})")
    missing = [n for n in PYFUSE3_INTERNALS if not hasattr(pyfuse3, n)]
    if missing:
        return f"pyfuse3 {version} lacks {', '.join(missing)}"
    return None


@contextmanager
def session_loop(pyfuse3: ModuleType, loop: str, counters: dict[str, int]) -> Iterator[str]:
    """Run the body (pyfuse3.main() and everything that may call
    pyfuse3.terminate()) with the chosen loop; yields the loop in effect."""
    global _active
    why = unsupported(pyfuse3) if loop == "lean" else None
    if why is not None:
        log.warning("lean FUSE session loop unavailable (%s): using pyfuse3's stock loop", why)
    if loop != "lean" or why is not None:
        counters["fuse_loop_lean"] = 0
        yield "stock"
        return
    lean = LeanLoop(counters)
    pyfuse3.trio = lean.namespace
    _active = lean
    try:
        yield "lean"
    finally:
        pyfuse3.trio = trio
        _active = None
