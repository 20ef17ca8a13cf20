"""File data: extents, checksummed regions, copy-on-write writes.

Extent key (inum, first file block) -> Extent(dev_offset, region_blocks, csum,
live_offset, nblocks, gen). A region is what one allocation wrote: its
xxh3_64 covers all of it, so reads fetch and verify the whole region and then
slice out the live blocks. Data is never overwritten in place: a write goes
to fresh space and the extents it covers are trimmed or split (the pieces keep
their region and checksum, only live_offset/nblocks/key change).

Invariant: bytes past i_size inside the last block read as zeros (truncate
rewrites a partial last block), so extending a file never exposes old data.
"""

from __future__ import annotations

import errno
from collections import OrderedDict

from ..alloc.foreground import NoSpace, Watermark
from ..format import BLOCK_SIZE, BtreeId, Extent, checksum, pack_key, unpack_key
from .errors import FSError

EXT = BtreeId.extents
REGION_MAX_BLOCKS = 64          # 256 KiB: bounds what a small read must fetch
REGION_CACHE = 16               # verified regions kept (appends re-read their tail)
READAHEAD_BLOCKS = 256          # a sequential reader gets the next 1 MiB prefetched
READAHEAD_FILES = 64            # sequential readers tracked at once
COUNTERS = ("data_csum_errors", "data_write_bytes", "data_read_bytes", "data_regions_written",
            "data_regions_read", "data_region_cache_hits", "data_readahead_regions")


class DataIO:
    def __init__(self, eng):
        self.eng = eng
        self.bt = eng.btrees
        self.dev = eng.dev
        self.c = eng.counters
        for name in COUNTERS:
            self.c.setdefault(name, 0)
        self.cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        # inum -> (next block a sequential read would start at, block up to
        # which regions have been prefetched)
        self.readers: OrderedDict[int, tuple[int, int]] = OrderedDict()

    # ------------------------------------------------------------ lookups

    def extents(self, inum: int, first: int, end: int, limit: int = 0
                ) -> list[tuple[int, Extent]]:
        """Extents overlapping file blocks [first, end), in order; at most
        `limit` of them if limit is set."""
        out: list[tuple[int, Extent]] = []
        if end <= first:
            return out
        bt = self.bt
        prev = bt.last_before(EXT, pack_key(inum, first), pack_key(inum, 0))
        if prev is not None:
            f = unpack_key(prev[0])[1]
            e = Extent.unpack(prev[1])
            if f + e.nblocks > first:
                out.append((f, e))
        if first + 1 < end:
            for k, v in bt.iter(EXT, pack_key(inum, first + 1), pack_key(inum, end - 1)):
                if limit and len(out) >= limit:
                    break
                out.append((unpack_key(k)[1], Extent.unpack(v)))
        return out

    def all_keys(self, inum: int, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` raw extent items of inum."""
        out: list[tuple[bytes, bytes]] = []
        if limit <= 0:
            return out
        for kv in self.bt.iter(EXT, pack_key(inum, 0), pack_key(inum, (1 << 64) - 1)):
            out.append(kv)
            if len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------ reading

    def drop_cache(self) -> None:
        self.cache.clear()

    def region(self, e: Extent) -> bytes:
        """The extent's whole region, checksum-verified (EIO on mismatch)."""
        ck = (e.dev_offset, e.region_blocks, e.csum)
        buf = self.cache.get(ck)
        if buf is not None:
            self.cache.move_to_end(ck)
            self.c["data_region_cache_hits"] += 1
            return buf
        n = e.region_blocks * BLOCK_SIZE
        buf = self.dev.pread(n, e.dev_offset)
        self.c["data_regions_read"] += 1
        self.c["data_read_bytes"] += n
        if checksum(buf) != e.csum:
            self.c["data_csum_errors"] += 1
            raise FSError(errno.EIO, f"data checksum mismatch in region at byte {e.dev_offset}")
        self._cache_put(ck, buf)
        return buf

    def _cache_put(self, ck: tuple[int, int, int], buf: bytes) -> None:
        self.cache[ck] = buf
        if len(self.cache) > REGION_CACHE:
            self.cache.popitem(last=False)

    def readahead(self, inum: int, first: int, end: int) -> None:
        """Note a read of blocks [first, end); if it continues the last one,
        ask the device for the regions of the next READAHEAD_BLOCKS early."""
        readers = self.readers
        nxt, ahead = readers.pop(inum, (-1, 0))
        if first != nxt:
            ahead = end         # a new or a random reader: nothing prefetched yet
        elif ahead - end < READAHEAD_BLOCKS // 2:
            start, stop = max(ahead, end), end + READAHEAD_BLOCKS
            for f, e in self.extents(inum, start, stop):
                if f < start < ahead:
                    continue    # straddles the last window: prefetched with it
                if (e.dev_offset, e.region_blocks, e.csum) not in self.cache:
                    self.dev.prefetch(e.dev_offset, e.region_blocks * BLOCK_SIZE)
                    self.c["data_readahead_regions"] += 1
            ahead = stop
        readers[inum] = (end, ahead)
        if len(readers) > READAHEAD_FILES:
            readers.popitem(last=False)

    def read_blocks(self, inum: int, first: int, end: int) -> bytes | bytearray:
        """File blocks [first, end) with holes as zeros."""
        state = self.eng.alloc.state
        bs = self.eng.sb.bucket_size
        exts = self.extents(inum, first, end)
        if len(exts) == 1:
            f, e = exts[0]
            if f <= first and end <= f + e.nblocks and not state.is_stale(e.dev_offset // bs,
                                                                             e.gen):
                # One extent covers it all (sequential reads): one copy, not three.
                src = (e.live_offset + first - f) * BLOCK_SIZE
                return self.region(e)[src:src + (end - first) * BLOCK_SIZE]
        out = bytearray((end - first) * BLOCK_SIZE)
        for f, e in exts:
            if state.is_stale(e.dev_offset // bs, e.gen):
                # The bucket was emptied and its generation bumped (e.g. cached
                # data invalidated): the pointer reads as absent, never as
                # whatever the bucket holds now.
                self.c["data_stale_pointers"] = self.c.get("data_stale_pointers", 0) + 1
                continue
            lo = max(f, first)
            hi = min(f + e.nblocks, end)
            src = (e.live_offset + lo - f) * BLOCK_SIZE
            reg = self.region(e)
            out[(lo - first) * BLOCK_SIZE:(hi - first) * BLOCK_SIZE] = \
                reg[src:src + (hi - lo) * BLOCK_SIZE]
        return out

    # ------------------------------------------------------------ writing

    def write_regions(self, inum: int, first: int, buf: bytes | bytearray | memoryview,
                      wm: Watermark = Watermark.normal) -> tuple[list[tuple[int, Extent]], list]:
        """Write whole blocks to fresh space starting at file block `first`.

        Returns the new extents and the allocation refs to release after the
        commit. May cover fewer blocks than given when space runs out part way;
        raises ENOSPC if nothing could be allocated."""
        nblk = len(buf) // BLOCK_SIZE
        view = memoryview(buf)
        new: list[tuple[int, Extent]] = []
        refs = []
        pos = 0
        alloc = self.eng.alloc.alloc_data
        while pos < nblk:
            try:
                off, n, gen, ref = alloc(inum, first + pos, min(nblk - pos, REGION_MAX_BLOCKS),
                                         wm)
            except NoSpace:
                if not new:
                    raise FSError(errno.ENOSPC) from None
                break
            data = view[pos * BLOCK_SIZE:(pos + n) * BLOCK_SIZE]
            self.dev.pwrite(data, off)
            csum = checksum(data)
            new.append((first + pos, Extent(dev_offset=off, region_blocks=n, csum=csum,
                                            live_offset=0, nblocks=n, gen=gen)))
            refs.append(ref)
            if n <= 4:
                # Small regions are the tails that appends re-read.
                self._cache_put((off, n, csum), bytes(data))
            self.c["data_regions_written"] += 1
            self.c["data_write_bytes"] += n * BLOCK_SIZE
            pos += n
        # No flush between data and journal: the engine checks the data of
        # unacknowledged journal entries at mount (ordered data, one flush).
        return new, refs

    def punch(self, t, inum: int, first: int, end: int,
              exts: list[tuple[int, Extent]] | None = None) -> int:
        """In t, remove file blocks [first, end) from the extent map, trimming and
        splitting extents that straddle the edges. Returns live blocks removed."""
        removed = 0
        if exts is None:
            exts = self.extents(inum, first, end)
        for f, e in exts:
            e_end = f + e.nblocks
            t.delete(EXT, pack_key(inum, f))
            if f < first:
                t.set(EXT, pack_key(inum, f), e.replace(nblocks=first - f).pack())
            if e_end > end:
                t.set(EXT, pack_key(inum, end),
                      e.replace(live_offset=e.live_offset + end - f, nblocks=e_end - end).pack())
            removed += min(e_end, end) - max(f, first)
        return removed
