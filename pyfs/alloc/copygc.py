"""copygc: move the live data out of the emptiest buckets so whole buckets free up.

Copy-on-write leaves buckets partly live after deletes and overwrites; a
bucket is reusable only when wholly empty. copygc picks the buckets with the
fewest live sectors (the Fragmentation heap, kept current by alloc key
changes), finds what lives in each through its backpointers (never scanning
the extents btree), and rewrites it elsewhere through the normal write path:
an extent's region is read and its checksum verified, its live blocks are
written compactly to a bucket of copygc's own write point, and the extent key
is replaced in one transaction (the triggers move the alloc counts and the
backpointer). A btree node in the bucket is compacted into a new region. The
emptied bucket then takes the usual path: journal, discard, free.

It runs when free buckets fall below a threshold: from the mount daemon's
background task, throttled, and synchronously from the allocator as a last
resort before ENOSPC. It keeps its own reserve: it never starts on a bucket
unless enough free buckets remain to hold that bucket's live data.
"""

from __future__ import annotations

import time

from ..format import BLOCK_SIZE, SECTOR_SIZE, Backpointer, BtreeId, Extent, KeyType, checksum
from .backpointers import bucket_keys, extent_start, pointed_at
from .foreground import Watermark

COUNTERS = ("copygc_runs", "copygc_buckets_evacuated", "copygc_bytes_moved",
            "copygc_extents_moved", "copygc_nodes_moved", "copygc_ns", "copygc_skipped")


class Copygc:
    def __init__(self, eng):
        self.eng = eng
        self.alloc = eng.alloc
        self.c = eng.counters
        for n in COUNTERS:
            self.c.setdefault(n, 0)
        self.running = False
        ndata = self.alloc.end - self.alloc.first
        # Start moving data when fewer buckets than this are free.
        self.threshold = max(8, ndata // 16)
        self.alloc.low_space_mark = self.threshold
        # A bucket fuller than this is not worth moving.
        self.max_live = self.alloc.bucket_size // SECTOR_SIZE * 7 // 8

    def wanted(self) -> bool:
        a = self.alloc
        return (a.index.count < self.threshold
                and bool(a.state.frag.live) and not self.running)

    def run(self, max_buckets: int = 8) -> int:
        """Evacuate up to max_buckets of the emptiest buckets; return how many."""
        if self.running:
            return 0
        self.running = True
        t0 = time.perf_counter_ns()
        done = 0
        try:
            self.c["copygc_runs"] += 1
            frag = self.alloc.state.frag
            while done < max_buckets:
                cand = frag.pop_emptiest()
                if cand is None:
                    break
                sectors, b = cand
                if sectors > self.max_live:
                    frag.push(sectors, b)
                    break
                # The live data must fit above the btree reserve; buckets emptied
                # so far come back once the journal is flushed.
                need = -(-sectors * SECTOR_SIZE // self.alloc.bucket_size) + 1
                if not self._room_for(need):
                    frag.push(sectors, b)
                    self.c["copygc_skipped"] += 1
                    break
                if self.evacuate(b):
                    done += 1
                    self.c["copygc_buckets_evacuated"] += 1
        finally:
            self.running = False
            self.c["copygc_ns"] += time.perf_counter_ns() - t0
        return done

    def _room_for(self, need: int) -> bool:
        a = self.alloc
        floor = a.floors[Watermark.copygc] + a.commit_margin
        if a.index.count - floor >= need:
            return True
        if a.state.waiting or a.state.discard_ready:
            self.eng._need_space()          # flush, discard: recycle evacuated buckets
        return a.index.count - floor >= need

    def evacuate(self, b: int) -> bool:
        """Move everything live in bucket b elsewhere. True if it is now empty."""
        eng = self.eng
        bs = self.alloc.bucket_size
        lo, hi = bucket_keys(b)
        for k, v in list(eng.btrees.iter(BtreeId.backpointers, lo, hi)):
            bp = Backpointer.unpack(v)
            offset = pointed_at(k, bs)
            if bp.level == 0:
                self._move_extent(bp, offset)
            else:
                self._move_node(bp, offset)
        return self.alloc.state.get(b).dirty_sectors == 0

    def _move_extent(self, bp: Backpointer, offset: int) -> None:
        eng = self.eng
        val = eng.btrees.get(bp.btree_id, bp.pos)
        if val is None or val[0] != KeyType.extent:
            return
        e = Extent.unpack(val)
        if extent_start(e) != offset or e.gen != bp.gen:
            return          # the backpointer is for an extent since replaced
        region = eng.dev.pread(e.region_blocks * BLOCK_SIZE, e.dev_offset)
        if checksum(region) != e.csum:
            eng.counters["copygc_csum_errors"] = eng.counters.get("copygc_csum_errors", 0) + 1
            return          # never copy data that does not verify; fsck -c reports it
        live = region[e.live_offset * BLOCK_SIZE:(e.live_offset + e.nblocks) * BLOCK_SIZE]
        inum = int.from_bytes(bp.pos[:8], "big")
        first_block = int.from_bytes(bp.pos[8:], "big")
        pos = 0
        t = eng.trans(Watermark.copygc)
        refs = []
        while pos < e.nblocks:
            off, n, gen, ref = self.alloc.alloc_data(inum, first_block + pos, e.nblocks - pos,
                                                     Watermark.copygc)
            refs.append(ref)
            chunk = live[pos * BLOCK_SIZE:(pos + n) * BLOCK_SIZE]
            eng.dev.pwrite(chunk, off)
            key = bp.pos if pos == 0 else (inum.to_bytes(8, "big")
                                          + (first_block + pos).to_bytes(8, "big"))
            t.set(bp.btree_id, key, Extent(dev_offset=off, region_blocks=n,
                                           csum=checksum(chunk), live_offset=0, nblocks=n,
                                           gen=gen).pack())
            pos += n
        t.commit()
        for ref in refs:
            ref.release()
        self.c["copygc_extents_moved"] += 1
        self.c["copygc_bytes_moved"] += len(live)

    def _move_node(self, bp: Backpointer, offset: int) -> None:
        bt = self.eng.btrees
        if bt.roots[bp.btree_id] is None:
            return
        level = bp.level - 1
        node = bt.path(bp.btree_id, bp.pos, level)[-1]
        if node.level != level or node.offset != offset:
            return
        bt.compact(node, "copygc")
        self.eng.alloc.apply_deferred(self.eng.journal.cur_seq)
        self.c["copygc_nodes_moved"] += 1
        self.c["copygc_bytes_moved"] += bt.node_size
