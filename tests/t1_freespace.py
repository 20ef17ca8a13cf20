"""Unit tests for the hierarchical-bitmap free-space index.

The stateful test drives FreeSpaceIndex and a reference model side by side: a
bytearray with one byte per bucket (1 = free), whose C-speed find/count make
the model cheap even for 64**3 + 1 buckets.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyfs.alloc.freespace import FreeSpaceIndex

EDGE_SIZES = [1, 63, 64, 65, 4096, 4097, 64**3 + 1]


def expected_levels(n: int) -> int:
    return max(1, math.ceil(round(math.log(n, 64), 9)))


# ----------------------------------------------------------------------
# Edge sizes and shape


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_edge_sizes_fill_and_drain(n: int) -> None:
    idx = FreeSpaceIndex(n, group_buckets=64)
    assert idx.levels == expected_levels(n)
    assert idx.count == 0 and idx.find_free() is None and idx.find_free(n - 1) is None
    idx.fill()
    assert idx.count == n and idx.check() == []
    assert idx.find_free() == 0 and idx.find_free(n - 1) == n - 1
    assert sum(idx.group_free) == n
    assert idx.set_range_used(0, n - 1) == n - 1
    assert idx.count == 1 and idx.find_free(0) == n - 1 and idx.find_free(n // 2) == n - 1
    assert idx.set_used(n - 1) and not idx.set_used(n - 1)
    assert idx.count == 0 and idx.find_free(0) is None and idx.check() == []
    idx.set_free(0)
    assert idx.find_free(n - 1) == 0  # wraps
    idx.clear_all()
    assert idx.count == 0 and idx.check() == [] and not any(idx.group_free)


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_take_allocates_in_order(n: int) -> None:
    idx = FreeSpaceIndex(min(n, 5000), free=True)
    got = [idx.take(0) for _ in range(idx.nbuckets)]
    assert got == list(range(idx.nbuckets))
    assert idx.take(0) is None and idx.count == 0 and idx.check() == []


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_lone_free_bucket_is_found_through_every_level(n: int) -> None:
    idx = FreeSpaceIndex(n, group_buckets=64)
    for b in sorted({0, 63, 64, 4095, 4096, n // 2, n - 1} & set(range(n))):
        assert idx.set_free(b) and idx.check() == []
        assert idx.find_free(0) == b and idx.find_free(b) == b
        assert idx.find_free((b + 1) % n) == b  # climbs to the top, wraps, descends
        assert idx.find_free_in(0, b) is None and idx.find_free_in(b, n) == b
        assert idx.set_used(b) and idx.check() == []
        assert idx.find_free(0) is None


def test_wrap_around() -> None:
    idx = FreeSpaceIndex(4097)
    for b in (5, 4000):
        idx.set_free(b)
    assert idx.find_free(0) == 5
    assert idx.find_free(5) == 5
    assert idx.find_free(6) == 4000
    assert idx.find_free(4001) == 5  # nothing after the hint: wrap to 0
    assert idx.find_free(4096) == 5
    assert idx.find_free(10**9) == 5  # an out-of-range hint starts at 0
    assert idx.find_free(-3) == 5
    assert idx.find_free_in(6, 4000) is None
    assert idx.find_free_in(6, 4001) == 4000
    assert idx.find_free_in(-10, 10**9) == 5


def test_group_search_wraps_within_group() -> None:
    idx = FreeSpaceIndex(1000, group_buckets=100)
    idx.set_free(250)
    idx.set_free(299)
    idx.set_free(300)
    assert idx.group_range(2) == (200, 300) and idx.group_range(9) == (900, 1000)
    assert idx.free_in_group(2) == 2 and idx.free_in_group(3) == 1
    assert idx.find_free_in_group(2) == 250
    assert idx.find_free_in_group(2, hint=260) == 299
    idx.set_used(299)
    assert idx.find_free_in_group(2, hint=260) == 250  # wraps inside group 2, not into 3
    assert idx.find_free_in_group(2, hint=5) == 250  # hint outside the group is ignored
    assert idx.find_free_in_group(4) is None
    idx.set_free(200)
    idx.set_used(250)
    assert idx.find_free_in_group(2, hint=201) == 200  # wraps to the group's first bucket
    with pytest.raises(IndexError):
        idx.group_range(10)


def test_last_group_is_partial() -> None:
    idx = FreeSpaceIndex(130, group_buckets=64, free=True)
    assert list(idx.group_free) == [64, 64, 2]
    idx.set_used(129)
    assert idx.free_in_group(2) == 1


def test_from_bytes_round_trip_masks_tail() -> None:
    rng = random.Random(7)
    for n in (1, 7, 8, 63, 64, 65, 1000, 4097):
        data = rng.randbytes((n + 7) // 8 + 3)  # extra bytes and tail bits are ignored
        idx = FreeSpaceIndex.from_bytes(data, n, group_buckets=10)
        want = [b for b in range(n) if data[b // 8] >> (b % 8) & 1]
        assert list(idx.iter_free()) == want
        assert idx.count == len(want) and idx.check() == []
        assert FreeSpaceIndex.from_bytes(idx.to_bytes(), n).to_bytes() == idx.to_bytes()
    with pytest.raises(ValueError):
        FreeSpaceIndex.from_bytes(b"\xff", 9)


def test_free_extents() -> None:
    idx = FreeSpaceIndex(300)
    idx.set_range_free(10, 200)
    idx.set_used(64)
    idx.set_free(299)
    assert list(idx.free_extents()) == [(10, 64), (65, 200), (299, 300)]
    assert list(idx.free_extents(100, 150)) == [(100, 150)]
    assert "10-63 65-199 299" in idx.to_text()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        FreeSpaceIndex(0)
    with pytest.raises(ValueError):
        FreeSpaceIndex(10, group_buckets=0)
    idx = FreeSpaceIndex(10)
    for bad in (-1, 10):
        with pytest.raises(IndexError):
            idx.set_free(bad)
        with pytest.raises(IndexError):
            idx.is_free(bad)
    assert idx.set_range_free(5, 5) == 0 and idx.set_range_free(20, 30) == 0


def test_memory_is_about_one_bit_per_bucket() -> None:
    n = 1 << 19  # 1 TiB of 2 MiB buckets
    idx = FreeSpaceIndex(n, group_buckets=n, free=True)
    mem = idx.memory_breakdown()
    assert mem["bottom"] == n // 8
    assert mem["upper"] == (128 + 2 + 1) * 8  # levels of 128, 2 and 1 words
    assert idx.memory_bytes() == mem["total"] == mem["bottom"] + mem["upper"] + mem["groups"]


# ----------------------------------------------------------------------
# Stateful comparison with a reference model


class FreeSpaceMachine(RuleBasedStateMachine):
    idx: FreeSpaceIndex
    model: bytearray  # 1 = free

    def pos(self, data: st.DataObject) -> int:
        """A bucket, biased towards word and level boundaries."""
        n = self.n
        edges = [e for e in (0, 1, 62, 63, 64, 65, 4095, 4096, 4097, n // 2, n - 2, n - 1) if 0 <= e < n]
        return data.draw(st.one_of(st.sampled_from(edges), st.integers(0, n - 1)))

    @initialize(
        n=st.one_of(st.sampled_from(EDGE_SIZES), st.integers(1, 9000)),
        group_buckets=st.sampled_from([1, 3, 64, 100, 4096]),
        start=st.sampled_from(["empty", "full", "random"]),
        seed=st.integers(0, 2**32),
    )
    def setup(self, n: int, group_buckets: int, start: str, seed: int) -> None:
        if n > 10000:
            group_buckets = max(group_buckets, 64)  # keep the per-group checks cheap
        self.n, self.gb = n, group_buckets
        if start == "random":
            data = random.Random(seed).randbytes((n + 7) // 8)
            self.idx = FreeSpaceIndex.from_bytes(data, n, group_buckets)
            digits = f"{int.from_bytes(data, 'little'):0{len(data) * 8}b}"[::-1][:n]
            self.model = bytearray(digits.encode().translate(bytes.maketrans(b"01", b"\x00\x01")))
        else:
            self.idx = FreeSpaceIndex(n, group_buckets, free=start == "full")
            self.model = bytearray([start == "full"]) * n

    def model_next(self, lo: int, hi: int) -> int | None:
        i = self.model.find(1, lo, hi) if lo < hi else -1
        return None if i < 0 else i

    @rule(data=st.data())
    def set_free(self, data: st.DataObject) -> None:
        b = self.pos(data)
        assert self.idx.set_free(b) == (not self.model[b])
        self.model[b] = 1

    @rule(data=st.data())
    def set_used(self, data: st.DataObject) -> None:
        b = self.pos(data)
        assert self.idx.set_used(b) == bool(self.model[b])
        self.model[b] = 0

    @rule(data=st.data(), free=st.booleans())
    def set_range(self, data: st.DataObject, free: bool) -> None:
        lo = self.pos(data)
        hi = min(self.n, lo + data.draw(st.one_of(st.integers(0, 200), st.integers(0, self.n))))
        before = self.model.count(1, lo, hi)
        if free:
            assert self.idx.set_range_free(lo, hi) == hi - lo - before
        else:
            assert self.idx.set_range_used(lo, hi) == before
        self.model[lo:hi] = bytes([free]) * (hi - lo)

    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        hint = self.pos(data)
        want = self.model_next(hint, self.n)
        want = self.model_next(0, self.n) if want is None else want
        assert self.idx.take(hint) == want
        if want is not None:
            self.model[want] = 0

    @rule(data=st.data())
    def find_free(self, data: st.DataObject) -> None:
        hint = data.draw(st.one_of(st.just(-1), st.just(self.n), st.integers(0, self.n - 1)))
        start = hint if 0 <= hint < self.n else 0
        want = self.model_next(start, self.n)
        want = self.model_next(0, self.n) if want is None else want
        assert self.idx.find_free(hint) == want

    @rule(data=st.data())
    def find_free_in(self, data: st.DataObject) -> None:
        lo = self.pos(data)
        hi = data.draw(st.integers(0, self.n + 1))
        assert self.idx.find_free_in(lo, hi) == self.model_next(lo, min(hi, self.n))

    @rule(data=st.data())
    def find_free_in_group(self, data: st.DataObject) -> None:
        g = data.draw(st.integers(0, self.idx.ngroups - 1))
        hint = self.pos(data)
        lo, hi = g * self.gb, min((g + 1) * self.gb, self.n)
        start = hint if lo <= hint < hi else lo
        want = self.model_next(start, hi)
        want = self.model_next(lo, start) if want is None else want
        assert self.idx.find_free_in_group(g, hint) == want

    @rule(data=st.data())
    def is_free_and_counts(self, data: st.DataObject) -> None:
        b = self.pos(data)
        assert self.idx.is_free(b) == bool(self.model[b])
        lo, hi = b, data.draw(st.integers(b, self.n))
        assert self.idx.count_free_in(lo, hi) == self.model.count(1, lo, hi)

    @precondition(lambda self: self.n <= 10000)
    @rule()
    def iterate(self) -> None:
        want = [i for i, f in enumerate(self.model) if f]
        assert list(self.idx.iter_free()) == want
        assert sum(e - s for s, e in self.idx.free_extents()) == len(want)

    @rule(full=st.booleans())
    def reset(self, full: bool) -> None:
        if full:
            self.idx.fill()
        else:
            self.idx.clear_all()
        self.model = bytearray([full]) * self.n

    @invariant()
    def counters_match(self) -> None:
        assert self.idx.count == self.model.count(1)
        gb = self.gb
        want = [self.model.count(1, lo, lo + gb) for lo in range(0, self.n, gb)]
        assert list(self.idx.group_free) == want

    def teardown(self) -> None:
        assert self.idx.check() == []
        # bit b of the packed bitmap is model[b]
        digits = bytes(self.model[::-1]).translate(bytes.maketrans(b"\x00\x01", b"01"))
        assert int.from_bytes(self.idx.to_bytes(), "little") == int(digits, 2)


FreeSpaceMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    report_multiple_bugs=False,  # shrink one failure only: big sizes shrink slowly
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestFreeSpaceMachine = FreeSpaceMachine.TestCase
