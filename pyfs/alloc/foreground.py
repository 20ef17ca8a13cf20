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

from collections import OrderedDict

from ..format import (
    BLOCK_SIZE,
    SECTOR_SIZE,
    Backpointer,
    BtreeId,
    DataType,
    Extent,
    KeyType,
    pack_key,
)
from .buckets import BucketState
from .freespace import FreeSpaceIndex
from .goal import Goals

MAX_DATA_WPS = 8
BLOCK_SECTORS = BLOCK_SIZE // SECTOR_SIZE


class NoSpace(Exception):
    """No bucket can be had (ENOSPC)."""


class OpenBucket:
    __slots__ = ("alloc", "bucket", "gen", "pos", "end", "refs", "closed")

    def __init__(self, alloc: Allocator, bucket: int, gen: int, start: int, end: int):
        self.alloc = alloc
        self.bucket = bucket
        self.gen = gen
        self.pos = start        # next free byte offset
        self.end = end
        self.refs = 1           # the write point's own reference
        self.closed = False

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


def backpointer_key(bucket: int, offset_in_bucket: int) -> bytes:
    return pack_key(bucket, offset_in_bucket)


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
        # Buckets kept back for btree nodes so that deletes can always commit,
        # and above that for copygc, so it can always make room.
        self.reserve = max(4, (self.end - self.first) // 64)
        self.copygc_reserve = max(2, (self.end - self.first) // 128)
        self.copygc_wp = WritePoint()
        self.on_need_space = None   # engine: flush the journal so waiting buckets free up
        self.on_low_space = None    # engine: run copygc
        self.low_space_mark = 0     # free buckets below which on_low_space runs

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

    def _find(self, inum: int, goal: int, *, data: bool, copygc: bool = False) -> int:
        """A free bucket for a new open bucket, making room if there is none.

        Foreground data stops at the copygc + btree reserves; copygc data at the
        btree reserve; btree nodes may use everything."""
        floor = 0 if not data else self.reserve + (0 if copygc else self.copygc_reserve)
        if (data and not copygc and self.on_low_space is not None
                and self.index.count < self.low_space_mark):
            self.on_low_space()         # copygc while there is still room to copy into
        for attempt in range(3):
            if self.index.count > floor:
                b, _ = self.goals.find(inum, goal, data=data)
                if b is not None:
                    return b
            if copygc:
                break
            if attempt == 0 and self.on_need_space is not None and (
                    self.state.waiting or self.state.discard_ready):
                self.c["alloc_journal_waits"] += 1
                self.on_need_space()
            elif data and self.on_low_space is not None and self.state.frag.live:
                self.on_low_space()
            else:
                break
        self.c["alloc_enospc"] += 1
        raise NoSpace("no free bucket")

    # ------------------------------------------------------------ data

    def alloc_data(self, inum: int, file_block: int, nblocks: int, *, copygc: bool = False
                   ) -> tuple[int, int, int, OpenBucket]:
        """Up to nblocks contiguous blocks in one bucket: (offset, nblocks, gen, ref).

        The caller writes the data, commits the extent, then calls ref.release().
        copygc's moves use their own write point, keeping foreground runs linear."""
        if copygc:
            return self._take_blocks(self.copygc_wp, inum, file_block, nblocks, copygc=True)
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
        return self._take_blocks(wp, inum, file_block, nblocks, linear=cont is not None)

    def _take_blocks(self, wp: WritePoint, inum: int, file_block: int, nblocks: int, *,
                     linear: bool = False, copygc: bool = False
                     ) -> tuple[int, int, int, OpenBucket]:
        ob = wp.ob
        if ob is None or ob.room() < BLOCK_SIZE:
            ob = self._refill(wp, inum, file_block, linear=linear, copygc=copygc)
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

    def _refill(self, wp: WritePoint, inum: int, file_block: int, *, linear: bool,
                copygc: bool = False) -> OpenBucket:
        if wp.ob is not None:
            wp.ob.release()
            wp.ob = None
        b = None
        if linear and wp.last_bucket >= 0 and self.index.count >= self.low_space_mark and (
                self.index.count > self.reserve + self.copygc_reserve):
            b = self.goals.next_linear(wp.last_bucket, wp.run)
        if b is None:
            b = self._find(inum, self.goals.goal_bucket(inum, file_block), data=True,
                           copygc=copygc)
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

    def alloc_node(self, btree_id: int, level: int, min_key: bytes) -> int:
        ob = self.btree_wp
        if ob is None or ob.room() < self.node_size:
            if ob is not None:
                ob.release()
            goal = self.btree_wp.bucket + 1 if self.btree_wp is not None else self.first
            self.btree_wp = ob = self._open(self._find(0, goal, data=False))
        off = ob.pos
        ob.pos += self.node_size
        self.c["alloc_nodes"] += 1
        self.state.add_sectors(ob.bucket, self.node_size // SECTOR_SIZE, DataType.btree,
                               ob.gen)
        if self.backpointers:
            self.pending_bp.append((backpointer_key(ob.bucket, off - ob.bucket * self.bucket_size),
                                    Backpointer(btree_id=btree_id, level=level + 1, pos=min_key,
                                                length=self.node_size // SECTOR_SIZE,
                                                gen=ob.gen).pack()))
        return off

    def free_node(self, offset: int, seq: int) -> None:
        b = offset // self.bucket_size
        a = self.state.get(b)
        self.state.add_sectors(b, -(self.node_size // SECTOR_SIZE), DataType.btree, a.gen)
        if self.backpointers:
            self.pending_bp.append((backpointer_key(b, offset - b * self.bucket_size), None))

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
        deltas = t.extra.setdefault("alloc", {})
        derived = t.extra.setdefault("derived", {})
        bs = self.bucket_size
        for val, sign in ((old, -1), (new, 1)):
            if not val or val[0] != KeyType.extent:
                continue
            e = Extent.unpack(val)
            start = e.dev_offset + e.live_offset * BLOCK_SIZE
            b = start // bs
            k = (b, e.gen)
            deltas[k] = deltas.get(k, 0) + sign * e.nblocks * BLOCK_SECTORS
            if self.backpointers:
                bk = backpointer_key(b, start - b * bs)
                if sign > 0:
                    derived[(BtreeId.backpointers, bk)] = Backpointer(
                        btree_id=bid, level=0, pos=key, length=e.nblocks * BLOCK_SECTORS,
                        gen=e.gen).pack()
                else:   # a delete never undoes a set made earlier in this transaction
                    derived.setdefault((BtreeId.backpointers, bk), None)

    def commit_hook(self, t, seq: int) -> None:
        deltas = t.extra.get("alloc")
        if deltas:
            add = self.state.add_sectors
            for (b, gen), d in deltas.items():
                if d:
                    add(b, d, DataType.user, gen)

    # ------------------------------------------------------------ reporting

    def free_buckets(self) -> int:
        """Free now, or soon (waiting on the journal or on discard)."""
        return self.index.count + self.state.nwaiting + len(self.state.discard_ready)

    def usage(self) -> dict[str, int]:
        st = self.state
        return {
            "buckets": self.sb.nbuckets, "bucket_size": self.bucket_size,
            "data_buckets": self.end - self.first, "free": self.index.count,
            "waiting_journal": st.nwaiting, "need_discard": len(st.discard_ready),
            "open": len(st.open_refs), "reserve": self.reserve,
            "keycache": len(st.cache),
        }
