"""Alloc keys: one per bucket, read through a key cache; bucket state transitions.

The truth about a bucket is its alloc key (format.Alloc: gen, data type,
flags, dirty/cached sectors, the journal seq that emptied it). A bucket with
no key is free with generation 0, so a fresh 16 TiB image needs no keys.

Key cache (seed 001): extent and node updates change sector counts many times
per bucket (64 small files share a 256 KiB bucket). Each change is journaled
with its transaction but goes into an in-memory cache instead of a second
btree insert. A cached entry pins the journal sequence of its first unflushed
change; reclaim flushes entries into the alloc btree, journaling them again
at the current sequence so the journal tail may pass the old one.

Emptying: when a bucket's sectors reach zero and no open bucket holds it, its
generation is bumped (stale pointers to it now read as absent), it is flagged
need_discard with the emptying seq, and it waits, indexed by that seq, until
the journal makes the seq durable. Then it is discarded (hole punched) and
only then marked free in the free-space index. Discards are done in batches
by do_discards().
"""

from __future__ import annotations

import heapq

from ..format import Alloc, AllocFlag, BtreeId, DataType, pack_key

ALLOC = BtreeId.alloc
NEED_DISCARD = 1 << AllocFlag.need_discard
FREE_ALLOC = Alloc(gen=0, data_type=DataType.free, flags=0, dirty_sectors=0,
                   cached_sectors=0, journal_seq=0)

COUNTERS = (
    "alloc_key_updates", "alloc_keycache_flushes", "alloc_buckets_emptied",
    "discards", "discard_bytes", "alloc_journal_waits",
)


def alloc_key(bucket: int) -> bytes:
    return pack_key(0, bucket)


class BucketState:
    """Alloc keys through the key cache, and the emptied-bucket pipeline."""

    def __init__(self, btrees, journal, index, dev, bucket_size: int, counters: dict):
        self.btrees = btrees
        self.journal = journal
        self.index = index                  # FreeSpaceIndex: set = free and usable
        self.dev = dev
        self.bucket_size = bucket_size
        self.c = counters
        for n in COUNTERS:
            counters.setdefault(n, 0)
        # bucket -> (Alloc, pin seq). Insertion order == pin order.
        self.cache: dict[int, tuple[Alloc, int]] = {}
        self.waiting: list[tuple[int, int]] = []    # heap (emptying seq, bucket)
        self.discard_ready: list[int] = []
        self.open_refs: dict[int, int] = {}         # bucket -> writers holding it open
        self.discard_enabled = True
        # fsck, until it has recounted: alloc keys may claim fewer sectors than
        # a bucket holds, and counts clamp at zero (Allocator.tolerate_undercount).
        self.clamp_undercount = False
        self.orphans_at_mount: list[int] = []
        self.frag = Fragmentation(bucket_size // 512)
        # Live sectors by data type (user, btree): what statfs reports as used.
        self.live = {DataType.user: 0, DataType.btree: 0}
        # During mount: alloc keys journaled but not yet replayed into the btree.
        self.overlay: dict[int, bytes] | None = None

    # ------------------------------------------------------------ keys

    def get(self, b: int) -> Alloc:
        ent = self.cache.get(b)
        if ent is not None:
            return ent[0]
        v = self.overlay.get(b) if self.overlay else None
        if v is None:
            v = self.btrees.get(ALLOC, alloc_key(b))
        return Alloc.unpack(v) if v is not None else FREE_ALLOC

    def put(self, b: int, a: Alloc) -> None:
        """Journal the new alloc key in the open entry and cache it (no btree insert)."""
        seq = self.journal.cur_seq
        val = a.pack()
        self.journal.add(ALLOC, alloc_key(b), val)
        ent = self.cache.get(b)
        self.cache[b] = (a, ent[1] if ent is not None else seq)
        self.c["alloc_key_updates"] += 1
        self.frag.update(b, a, b in self.open_refs)

    def oldest_pin(self) -> int:
        for _a, pin in self.cache.values():
            return pin
        return 0

    def flush_cache(self, before_seq: int | None = None) -> int:
        """Move cached keys pinned before before_seq (all if None) into the btree."""
        n = 0
        cache = self.cache
        while cache:
            b = next(iter(cache))
            a, pin = cache[b]
            if before_seq is not None and pin >= before_seq:
                break
            del cache[b]
            val = a.pack()
            seq = self.journal.reserve(len(val) + 22)   # may seal: fine between commits
            self.journal.add(ALLOC, alloc_key(b), val)
            self.btrees.insert(ALLOC, alloc_key(b), val, seq)
            n += 1
        self.c["alloc_keycache_flushes"] += n
        return n

    # ------------------------------------------------------------ sectors

    def add_sectors(self, b: int, delta: int, data_type: int, gen: int) -> None:
        """Apply a sector delta from a committed extent or node change.

        A pointer whose generation is not the bucket's is stale: its bucket was
        emptied and reused, and it no longer counts."""
        a = self.get(b)
        if a.gen != gen:
            self.c["alloc_stale_pointers"] = self.c.get("alloc_stale_pointers", 0) + 1
            return
        sectors = a.dirty_sectors + delta
        if sectors < 0:
            assert self.clamp_undercount, f"bucket {b}: sector count would go negative ({sectors})"
            delta, sectors = -a.dirty_sectors, 0
        if data_type in self.live:
            self.live[data_type] += delta
        if sectors and a.data_type != data_type:
            a = a.replace(data_type=data_type)
        a = a.replace(dirty_sectors=sectors)
        if not sectors and not self.open_refs.get(b):
            self._emptied(b, a)
        else:
            self.put(b, a)

    def _emptied(self, b: int, a: Alloc) -> None:
        seq = self.journal.cur_seq
        self.put(b, a.replace(gen=(a.gen + 1) & 0xFFFFFFFF, data_type=DataType.need_discard,
                              flags=a.flags | NEED_DISCARD, dirty_sectors=0,
                              journal_seq=seq))
        heapq.heappush(self.waiting, (seq, b))
        self.c["alloc_buckets_emptied"] += 1

    def close_bucket(self, b: int) -> None:
        """An open bucket's last writer is done: empty it if nothing lives there."""
        a = self.get(b)
        self.frag.update(b, a, False)
        if not a.dirty_sectors and a.data_type != DataType.need_discard:
            if a.data_type == DataType.free:
                self.index.set_free(b)  # nothing was ever committed here: straight back
                return
            self._emptied(b, a)

    def invalidate_cached(self, b: int) -> bool:
        """Drop a bucket of cached data by bumping its generation (seed 001):
        every pointer into it turns stale at once. It then waits on the journal
        like any emptied bucket, so a crash cannot revive the old generation
        after the bucket was reused."""
        a = self.get(b)
        if a.data_type != DataType.cached or a.dirty_sectors or b in self.open_refs:
            return False
        self._emptied(b, a.replace(cached_sectors=0))
        return True

    def is_stale(self, bucket: int, gen: int) -> bool:
        return self.get(bucket).gen != gen

    # ------------------------------------------------------------ reuse

    def durable(self, seq: int) -> None:
        """The journal is durable through seq: emptied buckets may be discarded."""
        w = self.waiting
        while w and w[0][0] <= seq:
            self.discard_ready.append(heapq.heappop(w)[1])

    def do_discards(self, limit: int | None = None) -> int:
        """Discard ready buckets and mark them free; returns how many."""
        ready = self.discard_ready
        n = 0
        while ready and (limit is None or n < limit):
            b = ready.pop()
            a = self.get(b)
            if a.data_type != DataType.need_discard or a.dirty_sectors:
                continue        # reused or refilled meanwhile (cannot happen; be safe)
            if self.discard_enabled:
                self.dev.discard(b * self.bucket_size, self.bucket_size)
                self.c["discards"] += 1
                self.c["discard_bytes"] += self.bucket_size
            self.put(b, a.replace(data_type=DataType.free, flags=a.flags & ~NEED_DISCARD))
            self.index.set_free(b)
            n += 1
        return n

    @property
    def nwaiting(self) -> int:
        return len(self.waiting)

    # ------------------------------------------------------------ mount

    def build(self, first: int, end: int, overlay: dict[int, bytes], durable_seq: int) -> None:
        """Build the free-space index from alloc keys (btree with journal overlay).

        overlay maps bucket -> newest journaled alloc value not yet replayed;
        so the index is ready before replay touches the btrees."""
        idx = self.index
        idx.set_range_free(first, end)
        self.live = dict.fromkeys(self.live, 0)
        seen = set()
        for k, v in self.btrees.iter(ALLOC):
            b = int.from_bytes(k[8:], "big")
            if b in overlay:
                v = overlay[b]
                seen.add(b)
            self._note(b, Alloc.unpack(v), first, end)
        for b, v in overlay.items():
            if b not in seen:
                self._note(b, Alloc.unpack(v), first, end)
        self.durable(durable_seq)

    def _note(self, b: int, a: Alloc, first: int, end: int) -> None:
        if not first <= b < end:
            return
        if a.data_type == DataType.free:
            return
        if a.data_type in self.live:
            self.live[a.data_type] += a.dirty_sectors
        self.frag.update(b, a, False)
        self.index.set_used(b)
        if a.flags & NEED_DISCARD:
            heapq.heappush(self.waiting, (a.journal_seq, b))
        elif not a.dirty_sectors and a.data_type in (DataType.user, DataType.btree):
            self.orphans_at_mount.append(b)     # open at the crash; emptied after mount

    def settle_mount(self) -> None:
        """Buckets left open and empty by a crash go through the emptying path."""
        for b in self.orphans_at_mount:
            self._emptied(b, self.get(b))
        self.orphans_at_mount = []


class Fragmentation:
    """Partly used, closed user buckets ordered by live sectors (fewest first).

    Kept up to date on every alloc key change (and seeded at mount from the
    keys read to build the free-space index), so copygc never scans buckets.
    A heap with lazy deletion: entries are checked against `live` when popped."""

    def __init__(self, bucket_sectors: int):
        self.bucket_sectors = bucket_sectors
        self.live: dict[int, int] = {}
        self.heap: list[tuple[int, int]] = []

    def update(self, b: int, a: Alloc, is_open: bool) -> None:
        s = a.dirty_sectors
        if (a.data_type == DataType.user and 0 < s < self.bucket_sectors and not is_open):
            if self.live.get(b) != s:
                self.live[b] = s
                heapq.heappush(self.heap, (s, b))
                if len(self.heap) > 4 * len(self.live) + 1024:
                    self.heap = [(v, k) for k, v in self.live.items()]
                    heapq.heapify(self.heap)
        else:
            self.live.pop(b, None)

    def pop_emptiest(self) -> tuple[int, int] | None:
        """Remove and return (live sectors, bucket) of the emptiest candidate."""
        heap = self.heap
        while heap:
            s, b = heapq.heappop(heap)
            if self.live.get(b) == s:
                return s, b
        return None

    def push(self, s: int, b: int) -> None:
        """Put back a candidate copygc could not evacuate now."""
        heapq.heappush(self.heap, (s, b))
