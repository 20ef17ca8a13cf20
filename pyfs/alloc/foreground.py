"""The allocator's front: open buckets, write points, and the engine hooks.

Open buckets are the only buckets being written into. Each holds a reference
count: a data write takes one when it allocates and drops it once its extent
is committed (so a bucket can never be emptied and reused under a write in
flight, nor allocated twice: it left the free-space index when opened).
Write points: btree nodes have their own, carving node regions out of a
bucket in order; file data has a few, one per allocation group recently
written (Tux3 goals decide which), at most MAX_DATA_WPS.

Sector accounting comes from transaction triggers on the extents btree (and
from node allocation/free): the trigger gathers per-bucket deltas and
backpointer updates; the commit hook applies the deltas through the alloc key
cache in the same journal entry as the extent keys.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

from ..format import (
    BLOCK_SIZE,
    SECTOR_SIZE,
    BtreeId,
    DataType,
    Extent,
    KeyType,
)
from .backpointers import at, extent_backpointer, extent_use, node_backpointer
from .buckets import BucketState
from .freespace import FreeSpaceIndex
from .goal import Goals

_EXTENT = int(KeyType.extent)
_BACKPOINTERS = int(BtreeId.backpointers)
MAX_DATA_WPS = 8
# Btree nodes the structure changes one commit leaves behind may take (splits
# of the leaves it filled, with their parents): admitting a commit needs this
# much above its watermark's floor.
COMMIT_MARGIN_NODES = 6
# Node slots kept for btree maintenance (compaction, merges, splits) on a big
# filesystem; small ones keep 1/64 of their buckets, at least 4.
BTREE_RESERVE_NODES = 256
COPYGC_RESERVE_MAX = 256


class Watermark(enum.IntEnum):
    """Who allocates, most restricted first (bcachefs's allocation watermarks).

    Each may take space only while more than its floor stays free, so the
    classes below it always find some: users get ENOSPC while deleting,
    copygc and btree maintenance (and with them unmount, mount and fsck)
    still have room."""
    normal = 0      # user data and growing metadata: writes, creates, xattrs, renames
    copygc = 1      # copygc's moves: they make room
    delete = 2      # what frees space: unlink, rmdir, truncate, removexattr, orphans
    btree = 3       # btree maintenance: splits, merges, compaction; mount, unmount, fsck


class NoSpace(Exception):
    """No bucket can be had (ENOSPC)."""


class OpenBucket:
    __slots__ = ("alloc", "bucket", "gen", "pos", "end", "refs")

    def __init__(self, alloc: Allocator, bucket: int, gen: int, start: int, end: int):
        self.alloc = alloc
        self.bucket = bucket
        self.gen = gen
        self.pos = start        # next free byte offset
        self.end = end
        self.refs = 1           # the write point's own reference

    def release(self) -> None:
        """Drop one reference (a write whose extent is committed, or the write point)."""
        self.refs -= 1
        assert self.refs >= 0
        if not self.refs:
            self.alloc._closed(self)

    def room(self) -> int:
        return self.end - self.pos


class WritePoint:
    __slots__ = ("ob", "last_inum", "last_block", "last_bucket", "run")

    def __init__(self) -> None:
        self.ob: OpenBucket | None = None
        self.last_inum = -1
        self.last_block = -1
        self.last_bucket = -1
        self.run = 0


class Allocator:
    def __init__(self, sb, btrees, journal, dev, counters: dict, *, backpointers: bool = True):
        self.sb = sb
        self.bucket_size = sb.bucket_size
        self.node_size = sb.btree_node_size
        self.first = sb.first_data_bucket
        self.end = min(sb.nbuckets, sb.backup_offset // sb.bucket_size)
        self.index = FreeSpaceIndex(sb.nbuckets, sb.group_buckets)
        self.state = BucketState(btrees, journal, self.index, dev, sb.bucket_size, counters)
        self.goals = Goals(self.index, self.first, self.end, sb.bucket_size, counters)
        self.btrees = btrees
        self.journal = journal
        self.c = counters
        for n in ("alloc_buckets_opened", "alloc_data_blocks", "alloc_nodes", "alloc_enospc"):
            counters.setdefault(n, 0)
        self.backpointers = backpointers
        self.data_wps: OrderedDict[int, WritePoint] = OrderedDict()
        self.btree_wp: OpenBucket | None = None
        self.pending_bp: list[tuple[bytes, bytes | None]] = []
        self._size_reserves()
        self.copygc_wp = WritePoint()
        self.on_need_space = None   # engine: flush the journal so waiting buckets free up
        self.on_low_space = None    # engine: run copygc
        self._held_low_space = None # ... while hold() keeps copygc off
        self.low_space_mark = 0     # free buckets below which on_low_space runs

    def _size_reserves(self) -> None:
        """Reserves in buckets, from the bottom: btree maintenance, deletes,
        copygc; foreground allocation stops above all of them (docs/DESIGN.md)."""
        ndata = self.end - self.first
        npb = max(1, self.bucket_size // self.node_size)
        self.btree_reserve = max(4, min(ndata // 64, -(-BTREE_RESERVE_NODES // npb)))
        self.delete_reserve = max(2, self.btree_reserve // 2)
        self.copygc_reserve = max(2, min(ndata // 128, COPYGC_RESERVE_MAX))
        self.commit_margin = -(-COMMIT_MARGIN_NODES // npb)
        self.floors = {
            Watermark.btree: 0,
            Watermark.delete: self.delete_reserve,
            Watermark.copygc: self.btree_reserve,
            Watermark.normal: self.btree_reserve + self.copygc_reserve,
        }
        # Kept for callers that ask for "the reserve": what foreground may not use.
        self.reserve = self.floors[Watermark.normal] + self.commit_margin

    def free_total(self) -> int:
        """Buckets free now or once the journal is flushed and discards are done."""
        st = self.state
        return self.index.count + len(st.waiting) + len(st.discard_ready)

    def admits(self, wm: Watermark) -> bool:
        """Whether a commit at wm may start: after the structure changes it may
        cause, its floor still holds. Deleting is the way out of a full
        filesystem, so below its floor a delete is still admitted while one
        bucket is free for the merges it may call for (an image an older pyfs
        filled, or one that maintenance took down this far)."""
        if wm == Watermark.btree:
            return True
        free = self.free_total()
        return free >= self.floors[wm] + self.commit_margin or (
            wm == Watermark.delete and free >= 1)

    # ------------------------------------------------------------ mount

    def build(self, overlay: dict[int, bytes], durable_seq: int) -> None:
        self.state.overlay = overlay
        self.state.build(self.first, self.end, overlay, durable_seq)

    def rebuild_from_keys(self) -> None:
        """Rebuild the in-memory state (free-space index, waiting buckets) from the
        alloc btree, e.g. after fsck rewrote alloc keys. Write points are closed."""
        self.release_all()
        st = self.state
        st.flush_cache()
        st.waiting.clear()
        st.discard_ready.clear()
        st.orphans_at_mount = []
        self.index.clear_all()
        st.build(self.first, self.end, {}, self.journal.durable_seq)
        st.settle_mount()

    def tolerate_undercount(self, on: bool) -> None:
        """While fsck has not recounted them, alloc keys may claim fewer sectors
        than a bucket holds: a node or extent freed meanwhile clamps the count
        at zero instead of tripping the sanity check."""
        self.state.clamp_undercount = on

    def mark_taken(self, taken: bytes | bytearray) -> None:
        """Buckets known to be in use (taken[b] set) are never handed out,
        whatever their alloc keys say."""
        idx = self.index
        for b in range(self.first, self.end):
            if taken[b]:
                idx.set_used(b)

    def hold(self, taken: bytes | bytearray) -> None:
        """Until the alloc info is trusted (fsck): no bucket in taken is handed
        out, nothing emptied is freed or discarded, copygc stays off."""
        st = self.state
        st.discard_enabled = False
        st.waiting.clear()
        st.discard_ready.clear()
        self._held_low_space, self.on_low_space = self.on_low_space, None
        self.mark_taken(taken)

    def trust(self) -> None:
        """The alloc keys are right again (fsck recounted them): rebuild the
        in-memory state from them and work normally."""
        self.rebuild_from_keys()
        self.state.discard_enabled = True
        self.tolerate_undercount(False)
        if self.on_low_space is None:
            self.on_low_space = self._held_low_space

    def mount_done(self) -> None:
        self.state.overlay = None
        self.state.settle_mount()

    # ------------------------------------------------------------ buckets

    def _open(self, bucket: int) -> OpenBucket:
        self.index.set_used(bucket)
        self.state.open_refs[bucket] = 1
        a = self.state.get(bucket)
        self.c["alloc_buckets_opened"] += 1
        start = bucket * self.bucket_size
        return OpenBucket(self, bucket, a.gen, start, start + self.bucket_size)

    def _closed(self, ob: OpenBucket) -> None:
        self.state.open_refs.pop(ob.bucket, None)
        self.state.close_bucket(ob.bucket)

    def _find(self, inum: int, goal: int, wm: Watermark) -> int:
        """A free bucket for a new open bucket at watermark wm, making room
        (journal flush, discards, copygc) if there is none above its floor.

        Data allocations keep the commit margin above their floor too, so the
        commit of the extents they write is admitted (see admits)."""
        data = wm != Watermark.btree
        floor = self.floors[wm] + (self.commit_margin if data else 0)
        normal = wm == Watermark.normal
        if normal and self.on_low_space is not None and self.index.count < self.low_space_mark:
            self.on_low_space()         # copygc while there is still room to copy into
        for attempt in range(3):
            if self.index.count > floor:
                b, _ = self.goals.find(inum, goal, data=data)
                if b is not None:
                    return b
            if wm == Watermark.copygc:
                break
            if attempt == 0 and self.on_need_space is not None and (
                    self.state.waiting or self.state.discard_ready):
                self.c["alloc_journal_waits"] += 1
                self.on_need_space()
            elif normal and self.on_low_space is not None and self.state.frag.live:
                self.on_low_space()
            else:
                break
        self.c["alloc_enospc"] += 1
        raise NoSpace(f"no free bucket above the {wm.name} reserve")

    # ------------------------------------------------------------ data

    def alloc_data(self, inum: int, file_block: int, nblocks: int,
                   wm: Watermark = Watermark.normal) -> tuple[int, int, int, OpenBucket]:
        """Up to nblocks contiguous blocks in one bucket: (offset, nblocks, gen, ref).

        The caller writes the data, commits the extent, then calls ref.release().
        copygc's moves use their own write point, keeping foreground runs linear."""
        if wm == Watermark.copygc:
            return self._take_blocks(self.copygc_wp, inum, file_block, nblocks, wm)
        goals = self.goals
        cont = None
        for wp in self.data_wps.values():
            if (wp.last_inum == inum and wp.last_block == file_block) or (
                    wp.last_inum + 1 == inum and file_block == 0):
                cont = wp
        if cont is None:
            goal = goals.goal_bucket(inum, file_block)
            g = goal // goals.gb
            wp = self.data_wps.get(g)
            if wp is None:
                wp = self._new_wp(g)
        else:
            wp = cont
        return self._take_blocks(wp, inum, file_block, nblocks, wm, linear=cont is not None)

    def _take_blocks(self, wp: WritePoint, inum: int, file_block: int, nblocks: int,
                     wm: Watermark, *, linear: bool = False
                     ) -> tuple[int, int, int, OpenBucket]:
        ob = wp.ob
        if ob is None or ob.room() < BLOCK_SIZE:
            ob = self._refill(wp, inum, file_block, wm, linear=linear)
        n = min(nblocks, ob.room() // BLOCK_SIZE)
        off = ob.pos
        ob.pos += n * BLOCK_SIZE
        ob.refs += 1
        wp.last_inum = inum
        wp.last_block = file_block + n
        self.c["alloc_data_blocks"] += n
        return off, n, ob.gen, ob

    def _new_wp(self, g: int) -> WritePoint:
        if len(self.data_wps) >= MAX_DATA_WPS:
            _, old = self.data_wps.popitem(last=False)
            if old.ob is not None:
                old.ob.release()
        wp = WritePoint()
        self.data_wps[g] = wp
        return wp

    def _refill(self, wp: WritePoint, inum: int, file_block: int, wm: Watermark, *,
                linear: bool) -> OpenBucket:
        if wp.ob is not None:
            wp.ob.release()
            wp.ob = None
        b = None
        if linear and wp.last_bucket >= 0 and self.index.count >= self.low_space_mark and (
                self.index.count > self.floors[wm] + self.commit_margin):
            b = self.goals.next_linear(wp.last_bucket, wp.run)
        if b is None:
            b = self._find(inum, self.goals.goal_bucket(inum, file_block), wm)
            wp.run = 0
        else:
            wp.run += 1
        wp.ob = self._open(b)
        wp.last_bucket = b
        return wp.ob

    def release_all(self) -> None:
        """Close every write point (unmount)."""
        for wp in self.data_wps.values():
            if wp.ob is not None:
                wp.ob.release()
                wp.ob = None
        self.data_wps.clear()
        if self.copygc_wp.ob is not None:
            self.copygc_wp.ob.release()
            self.copygc_wp.ob = None
        if self.btree_wp is not None:
            self.btree_wp.release()
            self.btree_wp = None

    # ------------------------------------------------------------ btree nodes

    def ensure_nodes(self, n: int) -> bool:
        """Whether n btree nodes can be allocated now, flushing the journal first
        if that frees buckets. Structure changes ask before they start, so they
        never fail half-done; nodes may use every bucket (Watermark.btree)."""
        ob = self.btree_wp
        room = ob.room() // self.node_size if ob is not None else 0
        if n <= room:
            return True
        npb = max(1, self.bucket_size // self.node_size)
        need = -(-(n - room) // npb)
        if self.index.count < need and self.on_need_space is not None and (
                self.state.waiting or self.state.discard_ready):
            self.c["alloc_journal_waits"] += 1
            self.on_need_space()
        return self.index.count >= need

    def alloc_node(self, btree_id: int, level: int, min_key: bytes) -> int:
        ob = self.btree_wp
        if ob is None or ob.room() < self.node_size:
            goal = ob.bucket + 1 if ob is not None else self.first
            if ob is not None:
                self.btree_wp = None
                ob.release()
            self.btree_wp = ob = self._open(self._find(0, goal, Watermark.btree))
        off = ob.pos
        ob.pos += self.node_size
        self.c["alloc_nodes"] += 1
        self.state.add_sectors(ob.bucket, self.node_size // SECTOR_SIZE, DataType.btree,
                               ob.gen)
        if self.backpointers:
            sectors = self.node_size // SECTOR_SIZE
            self.pending_bp.append((at(off, sectors, self.bucket_size).bp_key,
                                    node_backpointer(btree_id, level, min_key, sectors, ob.gen)))
        return off

    def free_node(self, offset: int, seq: int) -> None:
        b = offset // self.bucket_size
        a = self.state.get(b)
        self.state.add_sectors(b, -(self.node_size // SECTOR_SIZE), DataType.btree, a.gen)
        if self.backpointers:
            self.pending_bp.append((at(offset, 0, self.bucket_size).bp_key, None))

    def apply_deferred(self, seq: int) -> None:
        """Insert node backpointers gathered while btree nodes were being restructured."""
        bt = self.btrees
        j = self.journal
        rounds = 0
        while self.pending_bp:
            rounds += 1
            assert rounds < 64
            todo, self.pending_bp = self.pending_bp, []
            for k, v in todo:
                j.add(BtreeId.backpointers, k, v or b"")
                if v is None:
                    bt.delete(BtreeId.backpointers, k, j.cur_seq)
                else:
                    bt.insert(BtreeId.backpointers, k, v, j.cur_seq)

    def durable(self, seq: int) -> None:
        self.state.durable(seq)

    # ------------------------------------------------------------ triggers

    def extent_trigger(self, t, bid: int, key: bytes, old: bytes | None, new: bytes | None) -> None:
        """Extents btree trigger: per-bucket sector deltas and backpointers."""
        if old and old[0] == _EXTENT:
            self._extent_changed(t, bid, key, old, -1)
        if new and new[0] == _EXTENT:
            self._extent_changed(t, bid, key, new, 1)

    def _extent_changed(self, t, bid: int, key: bytes, val: bytes, sign: int) -> None:
        extra = t.extra
        deltas = extra.get("alloc")
        if deltas is None:
            deltas = extra["alloc"] = {}
        e = Extent.unpack(val)
        use = extent_use(e, self.bucket_size)
        k = (use.bucket, e.gen)
        deltas[k] = deltas.get(k, 0) + sign * use.sectors
        if self.backpointers:
            derived = extra.get("derived")
            if derived is None:
                derived = extra["derived"] = {}
            bk = (_BACKPOINTERS, use.bp_key)
            if sign > 0:
                derived[bk] = extent_backpointer(bid, key, e)
            else:   # a delete never undoes a set made earlier in this transaction
                derived.setdefault(bk, None)

    def commit_hook(self, t, seq: int) -> None:
        deltas = t.extra.get("alloc")
        if deltas:
            add = self.state.add_sectors
            for (b, gen), d in deltas.items():
                if d:
                    add(b, d, DataType.user, gen)

    # ------------------------------------------------------------ reporting

    def usage(self) -> dict[str, int]:
        st = self.state
        return {
            "buckets": self.sb.nbuckets, "bucket_size": self.bucket_size,
            "data_buckets": self.end - self.first, "free": self.index.count,
            "waiting_journal": st.nwaiting, "need_discard": len(st.discard_ready),
            "open": len(st.open_refs), "reserve": self.reserve,
            "reserve_btree": self.btree_reserve, "reserve_delete": self.delete_reserve,
            "reserve_copygc": self.copygc_reserve, "commit_margin": self.commit_margin,
            "live_user_bytes": st.live[DataType.user] * SECTOR_SIZE,
            "live_btree_bytes": st.live[DataType.btree] * SECTOR_SIZE,
            "keycache": len(st.cache),
        }

    def space(self) -> tuple[int, int, int]:
        """(capacity, used, available to users) in bytes, for statfs.

        Used is what live data and btree nodes occupy; what is free but
        fragmented comes back through copygc, so it counts as free. Users
        get ENOSPC at the reserves (docs/DESIGN.md), so those never count
        as available."""
        st = self.state
        total = (self.end - self.first) * self.bucket_size
        used = min(total, (st.live[DataType.user] + st.live[DataType.btree]) * SECTOR_SIZE)
        reserved = self.reserve * self.bucket_size
        return total, used, max(0, total - used - reserved)
