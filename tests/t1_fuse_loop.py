"""pyfs.fuse_loop's parts under trio, without a kernel: the read lock, the
poll fast path and its yields, hand-off, waking the spares, and when the
lean loop falls back to pyfuse3's stock loop (tests/t4_fuse_loop.py runs it
mounted)."""

from __future__ import annotations

import logging
import os
import types

import pyfuse3
import pytest
import trio

from pyfs import fuse_loop
from pyfs.fuse_loop import FAST_STREAK, LeanLoop, session_loop, unsupported


def new_counters() -> dict[str, int]:
    return {}


class Bystander:
    """A task that counts how often it got to run: whether the task under
    test yielded to the scheduler."""

    def __init__(self) -> None:
        self.runs = 0

    async def run(self) -> None:
        while True:
            self.runs += 1
            await trio.lowlevel.checkpoint()


async def settle() -> None:
    """Let every runnable task run until it parks."""
    for _ in range(10):
        await trio.lowlevel.checkpoint()


def test_free_lock_is_taken_without_a_checkpoint():
    async def main():
        loop = LeanLoop(new_counters())
        lock = loop.namespace.Lock()
        b = Bystander()
        async with trio.open_nursery() as n:
            n.start_soon(b.run)
            await settle()
            before = b.runs
            for _ in range(100):
                async with lock:
                    pass
            assert b.runs == before             # never yielded
            n.cancel_scope.cancel()
    trio.run(main)


def test_release_keeps_the_lock_from_spares_until_handoff():
    async def main():
        loop = LeanLoop(new_counters())
        lock = loop.namespace.Lock()
        got: list[str] = []

        async def spare(name: str) -> None:
            async with lock:
                got.append(name)

        async with trio.open_nursery() as n:
            await lock.__aenter__()
            n.start_soon(spare, "b")
            n.start_soon(spare, "c")
            await settle()
            await lock.__aexit__(None, None, None)
            await settle()
            assert got == []                    # released, but nobody was woken
            loop.handoff()                      # the reader is about to block
            await settle()
            assert len(got) == 1                # one spare, not both
            assert loop.counters["fuse_loop_handoffs"] == 1
            await lock.__aenter__()             # the lock holder: no hand-off
            loop.handoff()
            await settle()
            assert len(got) == 1 and loop.counters["fuse_loop_handoffs"] == 1
            await lock.__aexit__(None, None, None)
            loop.wake_all()
            await settle()
            assert sorted(got) == ["b", "c"]
    trio.run(main)


def test_a_suspended_handler_hands_the_reading_over():
    """In the session's nursery, a scheduler pass that finds the lock free
    (its holder is suspended in a handler) wakes a spare at once; no call
    needed."""
    async def main():
        loop = LeanLoop(new_counters())
        ns = loop.namespace
        lock = ns.Lock()
        took = trio.Event()

        async def spare() -> None:
            async with lock:
                took.set()

        async with ns.open_nursery() as n:
            await lock.__aenter__()
            n.start_soon(spare)
            await settle()
            await trio.sleep(0.01)              # blocked with the lock held: no hand-off
            assert not took.is_set()
            await lock.__aexit__(None, None, None)
            t0 = trio.current_time()
            with trio.fail_after(5):
                await took.wait()               # a handler waiting for a thread, say
            assert trio.current_time() - t0 < 1     # not at the end of trio's I/O wait
            assert loop.counters["fuse_loop_handoffs"] == 1
    trio.run(main)


def test_wait_readable_polls_then_parks_and_yields_every_streak():
    async def main():
        loop = LeanLoop(new_counters())
        ll = loop.namespace.lowlevel
        c = loop.counters
        r, w = os.pipe()
        try:
            os.write(w, b"x")
            with trio.CancelScope() as scope:
                scope.cancel()                  # any checkpoint in here raises Cancelled
                for _ in range(FAST_STREAK):
                    await ll.wait_readable(r)
                assert c["fuse_loop_fast_reads"] == FAST_STREAK
                await ll.wait_readable(r)       # a whole streak without a park: yield
            assert scope.cancelled_caught and c["fuse_loop_yields"] == 1
            await ll.wait_readable(r)           # the streak starts again
            assert c["fuse_loop_fast_reads"] == FAST_STREAK + 1
            os.read(r, 1)

            async def later() -> None:
                await trio.sleep(0.01)
                os.write(w, b"y")
            async with trio.open_nursery() as n:
                n.start_soon(later)
                await ll.wait_readable(r)       # empty: parks in trio until written
            assert c["fuse_loop_parks"] == 1 and os.read(r, 1) == b"y"
        finally:
            os.close(r)
            os.close(w)
    trio.run(main)


def test_notify_closing_and_ending_readers_wake_the_spares():
    async def main():
        loop = LeanLoop(new_counters())
        ns = loop.namespace
        lock = ns.Lock()
        ended: list[str] = []
        r, w = os.pipe()

        async def reader(name: str) -> None:
            # pyfuse3's _wait_fuse_readable: under the lock, check whether the
            # session ended, then wait for the device.
            try:
                async with lock:
                    if not ended:
                        await ns.lowlevel.wait_readable(r)
            except trio.ClosedResourceError:
                pass
            ended.append(name)

        try:
            with trio.fail_after(5):
                async with ns.open_nursery() as n:
                    n.start_soon(reader, "a")
                    n.start_soon(reader, "b")
                    await settle()
                    assert ended == []          # a waits on the pipe, b parked behind it
                    ns.lowlevel.notify_closing(r)   # pyfuse3.terminate()
            assert sorted(ended) == ["a", "b"]

            ended.clear()
            async with ns.open_nursery() as n:  # a reader that ends on its own
                n.start_soon(reader, "a")
                n.start_soon(reader, "b")
                await settle()
                os.write(w, b"x")               # one returns; its end wakes the other, which sees the end
            assert sorted(ended) == ["a", "b"]
        finally:
            os.close(r)
            os.close(w)
    trio.run(main)


def fake_pyfuse3(**over) -> types.SimpleNamespace:
    attrs = {n: getattr(pyfuse3, n) for n in fuse_loop.PYFUSE3_INTERNALS}
    attrs.update(trio=trio, __version__=fuse_loop.PYFUSE3_VERSIONS[0])
    attrs.update(over)
    return types.SimpleNamespace(**{k: v for k, v in attrs.items() if v is not None})


def test_the_installed_pyfuse3_is_supported():
    assert unsupported(pyfuse3) is None


@pytest.mark.parametrize("over, why", [
    ({"trio": None}, "no trio hook"),
    ({"trio": types.SimpleNamespace()}, "already taken"),
    ({"__version__": "3.6.0"}, "not a release it was written for"),
    ({"_wait_fuse_readable": None}, "lacks _wait_fuse_readable"),
])
def test_falls_back_to_the_stock_loop(over, why, caplog):
    mod = fake_pyfuse3(**over)
    hook = getattr(mod, "trio", None)
    counters = new_counters()
    with caplog.at_level(logging.WARNING, logger="pyfs.fuse_loop"):
        with session_loop(mod, "lean", counters) as used:
            assert used == "stock"
            assert getattr(mod, "trio", None) is hook       # left alone
            fuse_loop.handoff()                             # harmless
    assert why in caplog.text and "stock loop" in caplog.text
    assert counters["fuse_loop_lean"] == 0


def test_session_loop_installs_and_restores_the_hook(caplog):
    mod = fake_pyfuse3()
    counters = new_counters()
    with caplog.at_level(logging.WARNING, logger="pyfs.fuse_loop"):
        with session_loop(mod, "stock", counters) as used:
            assert used == "stock" and mod.trio is trio
        with session_loop(mod, "lean", counters) as used:
            assert used == "lean" and mod.trio is not trio
            assert mod.trio.lowlevel.current_task is trio.lowlevel.current_task
            assert mod.trio.ClosedResourceError is trio.ClosedResourceError
            assert counters["fuse_loop_lean"] == 1
    assert mod.trio is trio
    assert caplog.text == ""                    # choosing the stock loop is no warning
