"""Free-space index: a hierarchy of bitmaps with fan-out 64.

Level 0 has one bit per bucket (set = free). Level k+1 has one bit per 64-bit
word of level k (set = that word is nonzero), up to a single top word, so
there are max(1, ceil(log64(nbuckets))) levels. A point operation touches at
most one word per level and a search at most two, so everything is
O(levels): 4 levels cover 16M buckets.

Each level is an array('Q'): 8 bytes per 64 buckets at the bottom, about 1/63
of that for all the levels above, and no per-bucket Python objects. Bucket b
is bit b & 63 of word b >> 6, i.e. little-endian bit order, the layout that
to_bytes()/from_bytes() use.

Regions. Bucket b belongs to allocation group b // group_buckets, and
group_free[g] holds group g's free count, kept exact by every mutation, so the
allocator can choose a group (Tux3-style per-group free counts) without
scanning and then search only it with find_free_in_group(). A shard for
parallel allocation is likewise a contiguous bucket range: find_free_in(lo, hi)
costs O(levels) for any range, so shards need no hierarchy of their own.

Bulk paths (fill, from_bytes, set_range_free/set_range_used) work on whole
words and derive upper levels with C-speed bytes/int conversions, so building
the index for millions of buckets at mount takes milliseconds.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator

WORD_BITS = 64
_MASK = (1 << WORD_BITS) - 1
_FULL = array("Q", [_MASK])
_EMPTY = array("Q", [0])
_DIGITS = bytes.maketrans(b"\x00\x01", b"01")
DEFAULT_GROUP_BUCKETS = 4096


def _ffs(word: int) -> int:
    """Index of the lowest set bit of a nonzero word."""
    return (word & -word).bit_length() - 1


def _nwords(nbits: int) -> int:
    return (nbits + WORD_BITS - 1) // WORD_BITS


def _summarize(lower: array) -> array:
    """One bit per word of `lower`, set where that word is nonzero."""
    flags = bytes(map(bool, lower))  # one 0/1 byte per word
    out = array("Q")
    if flags:
        # Reversed ASCII digits put flag i at bit i; base-2 int() is linear time.
        big = int(flags[::-1].translate(_DIGITS), 2)
        out.frombytes(big.to_bytes(_nwords(len(flags)) * 8, "little"))
        if sys.byteorder != "little":
            out.byteswap()
    return out



class FreeSpaceIndex:
    """Free buckets of one device: O(levels) updates and first-fit searches."""

    __slots__ = ("nbuckets", "group_buckets", "group_free", "_levels", "_count")

    def __init__(
        self, nbuckets: int, group_buckets: int = DEFAULT_GROUP_BUCKETS, *, free: bool = False
    ) -> None:
        self._setup(nbuckets, group_buckets)
        if free:
            self.fill()
        else:
            self.clear_all()

    def _setup(self, nbuckets: int, group_buckets: int) -> None:
        if nbuckets < 1:
            raise ValueError(f"nbuckets must be >= 1, not {nbuckets}")
        if group_buckets < 1:
            raise ValueError(f"group_buckets must be >= 1, not {group_buckets}")
        self.nbuckets = nbuckets
        self.group_buckets = group_buckets
        self.group_free = array("Q")
        self._levels: list[array] = []
        self._count = 0

    @classmethod
    def from_bytes(
        cls, data: bytes, nbuckets: int, group_buckets: int = DEFAULT_GROUP_BUCKETS
    ) -> FreeSpaceIndex:
        """Build from a packed bitmap (bit b = byte b // 8, bit b % 8; set = free)."""
        idx = cls.__new__(cls)
        idx._setup(nbuckets, group_buckets)
        need = (nbuckets + 7) // 8
        if len(data) < need:
            raise ValueError(f"bitmap has {len(data)} bytes, {need} needed for {nbuckets} buckets")
        bottom = array("Q")
        bottom.frombytes(bytes(data[:need]) + bytes(_nwords(nbuckets) * 8 - need))
        if sys.byteorder != "little":
            bottom.byteswap()
        bottom[-1] &= idx._tail_mask()  # bits past the last bucket must stay clear
        idx._install(bottom)
        return idx

    def to_bytes(self) -> bytes:
        """The bottom bitmap in from_bytes() layout."""
        bottom = array("Q", self._levels[0])
        if sys.byteorder != "little":
            bottom.byteswap()
        return bottom.tobytes()[: (self.nbuckets + 7) // 8]

    # ------------------------------------------------------------------
    # Shape and counters

    @property
    def count(self) -> int:
        """Number of free buckets."""
        return self._count

    @property
    def levels(self) -> int:
        return len(self._levels)

    @property
    def ngroups(self) -> int:
        return -(-self.nbuckets // self.group_buckets)

    def group_range(self, g: int) -> tuple[int, int]:
        """Buckets [lo, hi) of group g."""
        if not 0 <= g < self.ngroups:
            raise IndexError(f"group {g} out of range [0, {self.ngroups})")
        lo = g * self.group_buckets
        return lo, min(lo + self.group_buckets, self.nbuckets)

    def free_in_group(self, g: int) -> int:
        return self.group_free[g]

    def count_free_in(self, lo: int, hi: int) -> int:
        """Free buckets in [lo, hi), by popcount over whole words."""
        lo, hi = max(lo, 0), min(hi, self.nbuckets)
        if lo >= hi:
            return 0
        chunk = self._levels[0][lo >> 6 : _nwords(hi)]
        if sys.byteorder != "little":
            chunk.byteswap()
        bits = int.from_bytes(chunk.tobytes(), "little") >> (lo & 63)
        return (bits & ((1 << (hi - lo)) - 1)).bit_count()

    # ------------------------------------------------------------------
    # Point operations, O(levels)

    def _check(self, b: int) -> None:
        if not 0 <= b < self.nbuckets:
            raise IndexError(f"bucket {b} out of range [0, {self.nbuckets})")

    def is_free(self, b: int) -> bool:
        self._check(b)
        return bool(self._levels[0][b >> 6] >> (b & 63) & 1)

    def set_free(self, b: int) -> bool:
        """Mark bucket b free; False if it already was."""
        self._check(b)
        levels = self._levels
        bottom = levels[0]
        w = b >> 6
        old = bottom[w]
        bit = 1 << (b & 63)
        if old & bit:
            return False
        bottom[w] = old | bit
        self._count += 1
        self.group_free[b // self.group_buckets] += 1
        # A word that was empty becomes nonzero: set its summary bit, and go on
        # up only while the summary word was itself empty.
        k, nlev = 1, len(levels)
        while not old and k < nlev:
            lvl = levels[k]
            bit = 1 << (w & 63)
            w >>= 6
            old = lvl[w]
            lvl[w] = old | bit
            k += 1
        return True

    def set_used(self, b: int) -> bool:
        """Mark bucket b used; False if it already was."""
        self._check(b)
        levels = self._levels
        bottom = levels[0]
        w = b >> 6
        old = bottom[w]
        bit = 1 << (b & 63)
        if not old & bit:
            return False
        new = old & ~bit
        bottom[w] = new
        self._count -= 1
        self.group_free[b // self.group_buckets] -= 1
        # A word that became empty clears its summary bit, upward while each
        # summary word becomes empty in turn.
        k, nlev = 1, len(levels)
        while not new and k < nlev:
            lvl = levels[k]
            bit = 1 << (w & 63)
            w >>= 6
            new = lvl[w] & ~bit
            lvl[w] = new
            k += 1
        return True

    def _next_free(self, pos: int) -> int | None:
        """First free bucket >= pos (0 <= pos), or None."""
        levels = self._levels
        k, nlev = 0, len(levels)
        idx = pos
        # Climb until a level has a set bit at or after idx in idx's word...
        while k < nlev:
            lvl = levels[k]
            w = idx >> 6
            if w >= len(lvl):
                return None
            sh = idx & 63
            word = lvl[w] >> sh << sh
            if word:
                idx = (w << 6) | _ffs(word)
                break
            idx = w + 1  # next word of this level = next bit one level up
            k += 1
        else:
            return None
        # ...then descend through first set bits, which summaries guarantee.
        while k:
            k -= 1
            idx = (idx << 6) | _ffs(levels[k][idx])
        return idx

    def find_free(self, hint: int = 0) -> int | None:
        """First free bucket >= hint, wrapping to 0; None if none is free."""
        if not self._count:
            return None
        if not 0 <= hint < self.nbuckets:
            hint = 0
        found = self._next_free(hint)
        if found is None and hint:
            found = self._next_free(0)
        return found

    def find_free_in(self, lo: int, hi: int) -> int | None:
        """First free bucket in [lo, hi), or None."""
        lo, hi = max(lo, 0), min(hi, self.nbuckets)
        if lo >= hi:
            return None
        found = self._next_free(lo)
        return found if found is not None and found < hi else None

    def find_free_in_group(self, g: int, hint: int | None = None) -> int | None:
        """First free bucket of group g at or after hint, wrapping within the group."""
        lo, hi = self.group_range(g)
        if not self.group_free[g]:
            return None
        start = hint if hint is not None and lo <= hint < hi else lo
        found = self.find_free_in(start, hi)
        if found is None and start > lo:
            found = self.find_free_in(lo, start)
        return found

    def take(self, hint: int = 0) -> int | None:
        """find_free(hint) and mark it used; None if the device is full."""
        b = self.find_free(hint)
        if b is not None:
            self.set_used(b)
        return b

    def iter_free(self, lo: int = 0, hi: int | None = None) -> Iterator[int]:
        """Free buckets in [lo, hi) in order, O(levels) each."""
        hi = self.nbuckets if hi is None else hi
        b = self.find_free_in(lo, hi)
        while b is not None:
            yield b
            b = self.find_free_in(b + 1, hi)

    def free_extents(self, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, int]]:
        """Maximal runs [start, end) of free buckets within [lo, hi)."""
        hi = self.nbuckets if hi is None else min(hi, self.nbuckets)
        bottom = self._levels[0]
        start = self.find_free_in(lo, hi)
        while start is not None:
            # Scan for the first used bucket: whole free words are skipped at once.
            w, sh = start >> 6, start & 63
            used = ~bottom[w] & _MASK >> sh << sh
            while not used and (w + 1) << 6 < hi:
                w += 1
                used = ~bottom[w] & _MASK
            end = min((w << 6) | _ffs(used) if used else (w + 1) << 6, hi)
            yield start, end
            start = self.find_free_in(end, hi)

    # ------------------------------------------------------------------
    # Bulk operations

    def _tail_mask(self) -> int:
        """Valid bits of the last bottom word."""
        return _MASK >> (-self.nbuckets & 63)

    def _install(self, bottom: array, count: int | None = None) -> None:
        """Adopt a bottom level: derive the levels above it and the counters."""
        levels = [bottom]
        while len(levels[-1]) > 1:
            levels.append(_summarize(levels[-1]))
        self._levels = levels
        self._count = self.count_free_in(0, self.nbuckets) if count is None else count
        if count is None:
            self.group_free = array("Q", bytes(8 * self.ngroups))
            self._recount_groups(0, self.ngroups)

    def clear_all(self) -> None:
        """Mark every bucket used."""
        self._install(array("Q", bytes(8 * _nwords(self.nbuckets))), count=0)
        self.group_free = array("Q", bytes(8 * self.ngroups))

    def fill(self) -> None:
        """Mark every bucket free."""
        bottom = _FULL * _nwords(self.nbuckets)
        bottom[-1] = self._tail_mask()
        self._install(bottom, count=self.nbuckets)
        ngroups, gb = self.ngroups, self.group_buckets
        self.group_free = array("Q", [gb]) * ngroups
        self.group_free[-1] = self.nbuckets - gb * (ngroups - 1)

    def set_range_free(self, lo: int, hi: int) -> int:
        """Mark [lo, hi) free with whole-word writes; returns how many changed."""
        return self._set_range(lo, hi, True)

    def set_range_used(self, lo: int, hi: int) -> int:
        """Mark [lo, hi) used with whole-word writes; returns how many changed."""
        return self._set_range(lo, hi, False)

    def _set_range(self, lo: int, hi: int, free: bool) -> int:
        lo, hi = max(lo, 0), min(hi, self.nbuckets)
        if lo >= hi:
            return 0
        before = self.count_free_in(lo, hi)
        bottom = self._levels[0]
        wlo, wlast = lo >> 6, (hi - 1) >> 6
        head = _MASK >> (lo & 63) << (lo & 63)  # bits >= lo in the first word
        tail = _MASK >> (63 - ((hi - 1) & 63))  # bits < hi in the last word
        edges = [(wlo, head & tail)] if wlo == wlast else [(wlo, head), (wlast, tail)]
        for w, m in edges:
            bottom[w] = bottom[w] | m if free else bottom[w] & ~m
        if wlast - wlo > 1:
            bottom[wlo + 1 : wlast] = (_FULL if free else _EMPTY) * (wlast - wlo - 1)
        changed = hi - lo - before if free else before
        self._count += changed if free else -changed
        self._recount_groups(lo // self.group_buckets, (hi - 1) // self.group_buckets + 1)
        self._resummarize(wlo, wlast + 1)
        return changed

    def _recount_groups(self, glo: int, ghi: int) -> None:
        gb, gf = self.group_buckets, self.group_free
        if gb % WORD_BITS == 0 and gb <= 1024 and ghi - glo > 64:
            # Many small word-aligned groups: per-word popcounts summed in chunks
            # beat one slice-and-convert per group.
            k = gb // WORD_BITS
            pcs = [w.bit_count() for w in self._levels[0][glo * k : ghi * k]]
            gf[glo:ghi] = array("Q", [sum(pcs[i : i + k]) for i in range(0, len(pcs), k)])
            return
        for g in range(glo, ghi):
            gf[g] = self.count_free_in(g * gb, (g + 1) * gb)

    def _resummarize(self, wlo: int, whi: int) -> None:
        """Recompute the summary bits above bottom words [wlo, whi)."""
        levels = self._levels
        for k in range(1, len(levels)):
            plo, phi = wlo >> 6, _nwords(whi)
            levels[k][plo:phi] = _summarize(levels[k - 1][plo << 6 : phi << 6])
            wlo, whi = plo, phi

    # ------------------------------------------------------------------
    # Introspection

    def memory_breakdown(self) -> dict[str, int]:
        """Bytes held by the bottom bitmap, the levels above it and group counts."""
        bottom = len(self._levels[0]) * 8
        upper = sum(len(lvl) for lvl in self._levels[1:]) * 8
        groups = len(self.group_free) * self.group_free.itemsize
        return {"bottom": bottom, "upper": upper, "groups": groups,
                "total": bottom + upper + groups}

    def memory_bytes(self) -> int:
        """Total bytes of the search structure (all levels plus group counts)."""
        return self.memory_breakdown()["total"]

    def check(self) -> list[str]:
        """Consistency problems (empty if none): summaries, tail bits, counters."""
        problems = []
        levels = self._levels
        if levels[0][-1] & ~self._tail_mask():
            problems.append("bits set past the last bucket")
        for k in range(1, len(levels)):
            if levels[k] != _summarize(levels[k - 1]):
                problems.append(f"level {k} does not summarize level {k - 1}")
        if len(levels[-1]) != 1:
            problems.append(f"top level has {len(levels[-1])} words, not 1")
        real = self.count_free_in(0, self.nbuckets)
        if real != self._count:
            problems.append(f"count is {self._count}, bitmap has {real} free")
        for g in range(self.ngroups):
            real = self.count_free_in(*self.group_range(g))
            if self.group_free[g] != real:
                problems.append(f"group {g} count is {self.group_free[g]}, bitmap has {real}")
        return problems

    def to_text(self, limit: int = 16) -> str:
        """Human-readable summary: shape, per-level fill, first free extents."""
        lines = [
            f"FreeSpaceIndex: {self.nbuckets} buckets, {self._count} free, "
            f"{self.levels} levels, {self.ngroups} groups of {self.group_buckets}"
        ]
        for k, lvl in enumerate(self._levels):
            nonzero = len(lvl) - lvl.count(0)
            lines.append(f"  L{k}: {len(lvl)} words, {nonzero} nonzero, {len(lvl) * 8} bytes")
        runs = []
        for n, (s, e) in enumerate(self.free_extents()):
            if n == limit:
                runs.append("...")
                break
            runs.append(str(s) if e - s == 1 else f"{s}-{e - 1}")
        lines.append("  free: " + (" ".join(runs) or "(none)"))
        shown = [str(c) for c in self.group_free[:limit]]
        more = " ..." if self.ngroups > limit else ""
        lines.append("  group free: " + " ".join(shown) + more)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"FreeSpaceIndex(nbuckets={self.nbuckets}, free={self._count}, "
                f"levels={self.levels}, group_buckets={self.group_buckets})")
