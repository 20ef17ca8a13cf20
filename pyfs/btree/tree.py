"""The btrees: roots, descent, updates, splits, merges, node cache, node writes.

One BtreeSet holds every btree of a filesystem (one root per BtreeId) and the
node cache they share. It knows nothing of what keys mean. It relies on two
collaborators passed in by the engine:

  journal: .cur_seq (the open entry's sequence, which pins dirty nodes),
           .durable_seq, .mount_seq (the newest durable seq found at mount),
           .add_interior(btree_id, level, key, val) to journal
           a pointer change, and .node_written() to note a node write that
           the next journal write must be ordered after.
  space:   .alloc_node() -> byte offset of a free region,
           .free_node(offset, seq): the region may be reused once seq is durable,
           and .ensure_nodes(n) -> whether n nodes can be allocated now: every
           structure change asks first, so none fails half-done.

Node writes: dirty keys are buffered in memory and a node is written when
journal reclaim asks (the normal path), when the cache must evict it, when its
dirty bytes exceed `write_buffer`, or at once when the node is new (a split,
merge or compaction made it and a pointer to it is about to be journaled).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterator

from ..format import (
    BTREE_ID_NR,
    MAX_KEY,
    NODE_HDR_SIZE,
    ZERO_KEY,
    BtreeId,
    FormatError,
    NodeHeader,
    SeqBlacklist,
    pack_btree_ptr,
    unpack_btree_ptr,
)
from .io import encode_append, encode_first, parse_node, round_up
from .node import ENTRY_OVERHEAD, Node

COUNTERS = (
    "btree_node_reads", "btree_node_read_bytes",
    "btree_node_writes", "btree_node_write_bytes", "btree_bsets_written",
    "btree_node_writes_reclaim", "btree_node_writes_evict", "btree_node_writes_buffer",
    "btree_node_writes_new", "btree_node_writes_flush", "btree_node_writes_copygc",
    "btree_whiteouts_written", "btree_whiteouts_avoided",
    "btree_compactions", "btree_splits", "btree_merges",
    "btree_cache_hits", "btree_cache_misses", "btree_cache_evictions",
    "btree_updates",
)


def key_before(key: bytes) -> bytes:
    return (int.from_bytes(key, "big") - 1).to_bytes(len(key), "big")


def key_after(key: bytes) -> bytes:
    return (int.from_bytes(key, "big") + 1).to_bytes(len(key), "big")


class BtreeError(Exception):
    """A btree node read from disk is inconsistent with the tree above it."""


class BtreeSpaceError(Exception):
    """A node must be written but no space can be had to split or rewrite it.
    The reserves exist so that this never happens (docs/DESIGN.md)."""


# The node cache holds about this many bytes of nodes (its bound is a node
# count): 128 nodes of 256 KiB. A walk of 1,000,000 files ran as fast with
# it as with 512 nodes, and the daemon peaked at 197 MiB instead of 284.
NODE_CACHE_BYTES = 32 << 20


class BtreeSet:
    def __init__(self, dev, node_size: int, space, journal, counters: dict,
                 *, write_buffer: int | None = None, cache_nodes: int | None = None):
        self.dev = dev
        self.node_size = node_size
        self.space = space
        self.journal = journal
        self.c = counters
        for name in COUNTERS:
            counters.setdefault(name, 0)
        # Bound on dirty bytes per node; 4096 reproduces write-every-4-KiB.
        self.write_buffer = write_buffer or node_size // 2
        self.split_bytes = node_size * 3 // 4 - NODE_HDR_SIZE
        # Merge a node under 1/3 full with a sibling when the two fit in 7/12
        # of a node (bcachefs's threshold and hysteresis): deletes give space
        # back, and a fresh split (two 3/8 halves) never merges straight back.
        self.merge_bytes = node_size // 3
        self.merged_max = node_size * 7 // 12
        # A value must fit a node whatever it is split beside.
        self.max_value = node_size // 2 - 4096
        if cache_nodes is None:
            cache_nodes = max(64, NODE_CACHE_BYTES // node_size)
        self.cache_nodes = max(cache_nodes, 16)
        self.roots: list[Node | None] = [None] * BTREE_ID_NR
        self.roots_gen = 0                     # bumped whenever a root changes
        self._records: tuple[int, list] = (-1, [])
        self.cache: dict[bytes, Node] = {}
        self.dirty: dict[Node, None] = {}      # insertion order == pin order
        self.frozen = False                    # set by Engine.fail: write nothing more
        # Journal seqs a crashed session used but never made durable (the
        # superblock's blacklist): bsets carrying them are ignored.
        self.seq_blacklisted = None
        # Regions written by this session. Their bsets are all good however
        # new: the journal-seq cut-off when reading applies only to bsets an
        # earlier session wrote (see _read).
        self.written_regions: set[int] = set()
        self.tick = 0
        # While a commit applies its keys, nodes that need a split, merge or
        # write collect here instead (see defer()): nothing inside a commit
        # allocates, so a commit can never fail half-applied for want of space.
        self.deferred: dict[Node, None] | None = None
        # Nodes whose deferred change found no space; retried at the next chance.
        self.retry: dict[Node, None] = {}

    # ------------------------------------------------------------ node cache

    def _node(self, ptr: bytes, btree_id: int, level: int, min_key: bytes,
              max_key: bytes) -> Node:
        node = self.cache.get(ptr)
        if node is not None:
            self.c["btree_cache_hits"] += 1
            return node
        self.c["btree_cache_misses"] += 1
        node = self._read(ptr, btree_id, level, min_key, max_key)
        self.cache[ptr] = node
        return node

    def _read(self, ptr: bytes, btree_id: int, level: int, min_key: bytes,
              max_key: bytes) -> Node:
        offset, node_seq = unpack_btree_ptr(ptr)
        if offset % 4096 or offset + self.node_size > self.dev.size:
            raise BtreeError(f"btree pointer to offset {offset} outside the device")
        buf = self.dev.pread(self.node_size, offset)
        self.c["btree_node_reads"] += 1
        self.c["btree_node_read_bytes"] += len(buf)
        # Bsets an earlier session wrote after its last durable journal entry
        # never became durable: ignore them (cut off at the seq found at mount).
        # This session's own writes are good even before a journal flush: a
        # node written and evicted before the flush must read back whole.
        limit = None if offset in self.written_regions else self.journal.mount_seq
        try:
            img = parse_node(buf, offset, limit, self.seq_blacklisted)
        except FormatError as e:
            raise BtreeError(f"{BtreeId(btree_id).name} level {level}: {e}") from e
        h = img.header
        if (h.node_seq != node_seq or h.btree_id != btree_id or h.level != level
                or h.min_key != min_key or h.max_key != max_key):
            raise BtreeError(
                f"{BtreeId(btree_id).name} level {level}: node at offset {offset} does not "
                f"match its pointer (seq {h.node_seq:#x}/{node_seq:#x}, btree {h.btree_id}, "
                f"level {h.level})")
        node = Node(btree_id, level, min_key, max_key, offset, node_seq, ptr)
        node.set_written(img.keys, img.vals)
        node.written_bytes = img.written_bytes
        node.max_seq = img.max_journal_seq
        node.new = False
        node.rewrite = img.stale_tail
        node.gen = h.gen
        return node

    def maybe_evict(self) -> int:
        """Shrink the cache to its bound, least recently used leaves first.

        Called only between operations (never during a descent), so no caller
        holds a node that is being dropped. Dirty victims are written first.
        Interior nodes stay: they are few and every descent needs them."""
        if len(self.cache) <= self.cache_nodes:
            return 0
        victims = sorted((n for n in self.cache.values() if n.level == 0
                          and n is not self.roots[n.btree_id]), key=lambda n: n.last_used)
        target = len(self.cache) - self.cache_nodes * 7 // 8
        for node in victims[:max(target, 0)]:
            if node.dirty:
                self.write_node(node, "evict")
            if self.cache.get(node.ptr) is node:
                del self.cache[node.ptr]
                self.c["btree_cache_evictions"] += 1
        return max(target, 0)

    # ------------------------------------------------------------ roots

    def new_root(self, btree_id: int) -> Node:
        """An empty leaf root, written at once so a journal entry may point at it."""
        node = self._new_node(btree_id, 0, ZERO_KEY, MAX_KEY)
        self.roots[btree_id] = node
        self.roots_gen += 1
        self.write_node(node, "new")
        return node

    def set_root(self, btree_id: int, level: int, offset: int, node_seq: int) -> None:
        ptr = pack_btree_ptr(offset, node_seq)
        self.roots[btree_id] = self._node(ptr, btree_id, level, ZERO_KEY, MAX_KEY)
        self.roots_gen += 1

    def root_records(self) -> list[tuple[int, int, int, int]]:
        """(btree, level, offset, node_seq) of every root; the same list object
        until a root changes (every journal entry asks)."""
        gen, records = self._records
        if gen != self.roots_gen:
            records = [(r.btree_id, r.level, r.offset, r.node_seq)
                       for r in self.roots if r is not None]
            self._records = (self.roots_gen, records)
        return records

    def _new_node(self, btree_id: int, level: int, min_key: bytes, max_key: bytes,
                  gen: int = 1) -> Node:
        offset = self.space.alloc_node(btree_id, level, min_key)
        node_seq = int.from_bytes(os.urandom(8), "little") | 1
        ptr = pack_btree_ptr(offset, node_seq)
        node = Node(btree_id, level, min_key, max_key, offset, node_seq, ptr)
        node.gen = gen
        self.cache[ptr] = node
        return node

    # ------------------------------------------------------------ descent

    def leaf(self, btree_id: int, key: bytes) -> Node:
        node = self.roots[btree_id]
        cache = self.cache
        while node.level:
            # _child inlined for cached children: every update descends.
            keys, vals = node.view or node.merged()
            child = cache.get(vals[bisect_right(keys, key) - 1])
            node = child if child is not None else self._child(node, key)
        self.tick += 1
        node.last_used = self.tick
        return node

    def _child(self, node: Node, key: bytes) -> Node:
        keys, vals = node.merged()
        i = bisect_right(keys, key) - 1
        ptr = vals[i]
        child = self.cache.get(ptr)
        if child is None:
            hi = key_before(keys[i + 1]) if i + 1 < len(keys) else node.max_key
            child = self._node(ptr, node.btree_id, node.level - 1, keys[i], hi)
        return child

    def path(self, btree_id: int, key: bytes, level: int = 0) -> list[Node]:
        """Nodes from the root down to `level` on the way to key."""
        node = self.roots[btree_id]
        out = [node]
        while node.level > level:
            node = self._child(node, key)
            out.append(node)
        return out

    # ------------------------------------------------------------ lookups

    def get(self, btree_id: int, key: bytes) -> bytes | None:
        if self.roots[btree_id] is None:
            return None         # not created yet (mount of a fresh image)
        return self.leaf(btree_id, key).get(key)

    def iter(self, btree_id: int, start: bytes = ZERO_KEY, end: bytes = MAX_KEY,
             ) -> Iterator[tuple[bytes, bytes]]:
        """Live (key, value) pairs with start <= key <= end, in order.

        Each leaf's slice is copied before it is yielded, so callers may update
        the tree while iterating; they see the leaves after the current one as
        they are when reached."""
        if self.roots[btree_id] is None:
            return
        while True:
            node = self.leaf(btree_id, start)
            yield from node.items(start, min(end, node.max_key))
            if node.max_key >= end:
                return
            start = key_after(node.max_key)

    def leaves(self, btree_id: int, start: bytes = ZERO_KEY, end: bytes = MAX_KEY,
               ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """iter() a leaf at a time: (keys, values) in [start, end], copies made as
        each leaf is reached. For walks of a whole btree (fsck): no step per key."""
        if self.roots[btree_id] is None:
            return
        while True:
            node = self.leaf(btree_id, start)
            yield node.range_lists(start, min(end, node.max_key))
            if node.max_key >= end:
                return
            start = key_after(node.max_key)

    def first(self, btree_id: int, start: bytes, end: bytes) -> tuple[bytes, bytes] | None:
        for kv in self.iter(btree_id, start, end):
            return kv
        return None

    def last_before(self, btree_id: int, key: bytes, lo: bytes = ZERO_KEY
                    ) -> tuple[bytes, bytes] | None:
        """The greatest live key in [lo, key], or None."""
        if self.roots[btree_id] is None:
            return None         # not created yet (a read-only mount of a fresh image)
        while True:
            node = self.leaf(btree_id, key)
            kv = node.last_le(key, max(lo, node.min_key))
            if kv is not None:
                return kv
            if node.min_key <= lo:
                return None
            key = key_before(node.min_key)

    # ------------------------------------------------------------ updates

    def _pin(self, node: Node, seq: int) -> None:
        if not node.pin_seq:
            node.pin_seq = seq
            self.dirty[node] = None
        node.max_seq = seq

    def insert(self, btree_id: int, key: bytes, val: bytes, seq: int) -> bytes | None:
        """Insert or overwrite; return the previous value."""
        if len(val) > self.max_value:
            raise ValueError(f"value of {len(val)} bytes exceeds the {self.max_value} limit")
        node = self.leaf(btree_id, key)
        old = node.insert(key, val)
        self.c["btree_updates"] += 1
        if not node.pin_seq:
            node.pin_seq = seq
            self.dirty[node] = None
        node.max_seq = seq
        if node.live_bytes > self.split_bytes or node.dirty_bytes > self.write_buffer:
            self._changed(node)
        return old

    def delete(self, btree_id: int, key: bytes, seq: int) -> bytes | None:
        """Delete; return the previous value (None if there was none)."""
        node = self.leaf(btree_id, key)
        old = node.pop(key)
        if old is not None and key not in node.whiteouts:
            self.c["btree_whiteouts_avoided"] += 1
        self.c["btree_updates"] += 1
        self._pin(node, seq)
        if (node.live_bytes < self.merge_bytes and node is not self.roots[btree_id]) or (
                node.dirty_bytes > self.write_buffer):
            self._changed(node)
        return old

    def _changed(self, node: Node) -> None:
        """A leaf is overfull, underfull or holds many dirty bytes: split, merge
        or write it now, or after the commit being applied."""
        if self.deferred is not None:
            self.deferred[node] = None
        else:
            self.maintain(node)

    def maintain(self, node: Node) -> None:
        """Split, merge or write a node that needs it (it may need none by now)."""
        if self.cache.get(node.ptr) is not node:
            return                  # retired by a split or merge meanwhile
        if node.live_bytes > self.split_bytes:
            self.split(node)
            return
        while node is not None and node.live_bytes < self.merge_bytes and (
                node is not self.roots[node.btree_id]):
            node = self.maybe_merge(node)   # the merged node may take another sibling
        if node is not None and node.dirty_bytes > self.write_buffer:
            self.write_node(node, "buffer")

    def defer(self) -> None:
        """Start collecting structure changes (a commit is being applied)."""
        self.deferred = {}

    def run_deferred(self) -> int:
        """Do the structure changes collected since defer(), and earlier ones that
        found no space. Returns how many still wait for space."""
        todo = self.retry
        if self.deferred:
            todo.update(self.deferred)
        self.deferred = None
        self.retry = {}
        for node in todo:
            self.maintain(node)
        return len(self.retry)

    def apply_interior(self, btree_id: int, level: int, key: bytes, val: bytes, seq: int) -> None:
        """Replay a journaled pointer change into the node at `level` covering key."""
        root = self.roots[btree_id]
        if root is None or root.level < level:
            return
        node = self.path(btree_id, key, level)[-1]
        if val:
            node.insert(key, val)
        else:
            node.delete(key)
        self._pin(node, seq)

    # ------------------------------------------------------------ structure

    def _set_ptr(self, parent: Node | None, child: Node) -> None:
        """Point the parent (or the root slot) at child's current region."""
        seq = self.journal.cur_seq
        if parent is None:
            self.roots[child.btree_id] = child
            self.roots_gen += 1
            return
        parent.insert(child.min_key, child.ptr)
        self._pin(parent, seq)
        self.journal.add_interior(parent.btree_id, parent.level, child.min_key, child.ptr)

    def _del_ptr(self, parent: Node, key: bytes) -> None:
        parent.delete(key)
        self._pin(parent, self.journal.cur_seq)
        self.journal.add_interior(parent.btree_id, parent.level, key, b"")

    def _parent(self, node: Node) -> Node | None:
        if node is self.roots[node.btree_id]:
            return None
        p = self.path(node.btree_id, node.min_key, node.level + 1)[-1]
        assert p.level == node.level + 1
        return p

    def _retire(self, node: Node) -> None:
        """Forget a node whose region no longer holds live data."""
        if self.cache.get(node.ptr) is node:
            del self.cache[node.ptr]
        self.dirty.pop(node, None)
        node.pin_seq = 0
        self.space.free_node(node.offset, self.journal.cur_seq)

    def _pieces(self, vals: list[bytes], live: int) -> list[int]:
        """Cut points splitting a node's entries into pieces of equal bytes, each
        with room to grow: two, or more for a node a commit filled past its size."""
        n = max(2, -(-live // (self.split_bytes * 2 // 3)))
        cuts = []
        acc = 0
        for i, v in enumerate(vals):
            acc += ENTRY_OVERHEAD + len(v)
            if acc * n >= live * (len(cuts) + 1) and len(cuts) < n - 1:
                cuts.append(i + 1)
        cuts = sorted({min(max(c, 1), len(vals) - 1) for c in cuts})
        return cuts or [1]

    def split(self, node: Node) -> bool:
        """Split node into pieces; False (nothing changed) if no space for them."""
        if node.nlive < 2:
            return False            # one key always fits (max_value); nothing to split
        parent = self._parent(node)
        keys, vals = node.all_live()
        cuts = self._pieces(vals, node.live_bytes)
        new_root = parent is None
        if not self.space.ensure_nodes(len(cuts) + 1 + new_root):
            self._wait_for_space(node)
            return False
        # The allocator reads alloc keys through these btrees, so every
        # allocation and free must find the tree whole: allocate while the
        # old node is still in place, free once the parent points past it.
        gen = node.gen + 1          # the pieces descend from node (see NodeHeader.gen)
        if new_root:
            parent = self._new_node(node.btree_id, node.level + 1, ZERO_KEY, MAX_KEY, gen)
            parent.new = True
        bounds = [0, *cuts, len(keys)]
        pieces = []
        for i in range(len(bounds) - 1):
            a, b = bounds[i], bounds[i + 1]
            hi = key_before(keys[b]) if b < len(keys) else node.max_key
            n = self._new_node(node.btree_id, node.level, node.min_key if a == 0 else keys[a],
                               hi, gen)
            n.set_written(keys[a:b], vals[a:b])
            n.max_seq = node.max_seq
            self.write_node(n, "new")
            pieces.append(n)
        self.c["btree_splits"] += 1
        for n in pieces:
            self._set_ptr(parent, n)
        if new_root:
            self.roots[node.btree_id] = parent
            self.roots_gen += 1
        self._retire(node)
        if parent.new:
            self.write_node(parent, "new")
        elif parent.live_bytes > self.split_bytes:
            self.split(parent)
        return True

    def _wait_for_space(self, node: Node) -> None:
        """A structure change found no space: the node stays as it is (valid in
        memory) and the change is tried again at the next chance."""
        self.retry[node] = None
        self.c["btree_maintenance_enospc"] = self.c.get("btree_maintenance_enospc", 0) + 1

    def maybe_merge(self, node: Node) -> Node | None:
        """Merge an underfull node with a sibling when the result stays small;
        return the merged node (None if nothing was merged)."""
        parent = self._parent(node)
        if parent is None:
            return None
        pkeys, pvals = parent.merged()
        i = bisect_right(pkeys, node.min_key) - 1
        if len(pkeys) == 1:
            if parent is self.roots[node.btree_id]:
                self._collapse_root(parent, node)
            return None
        j = i + 1 if i + 1 < len(pkeys) else i - 1
        lo, hi = sorted((i, j))
        left = node if lo == i else self._child_at(parent, lo)
        right = node if hi == i else self._child_at(parent, hi)
        both = left.live_bytes + right.live_bytes
        if both > self.merged_max and not (
                min(left.live_bytes, right.live_bytes) < self.node_size // 16
                and both <= self.split_bytes):
            return None             # (a nearly empty node goes into any sibling it fits)
        if not self.space.ensure_nodes(1):
            return None             # a merge is never needed: skip it while space is short
        lk, lv = left.all_live()
        rk, rv = right.all_live()
        merged = self._new_node(node.btree_id, node.level, left.min_key, right.max_key,
                                max(left.gen, right.gen) + 1)
        merged.set_written(lk + rk, lv + rv)
        merged.max_seq = max(left.max_seq, right.max_seq)
        self.write_node(merged, "new")
        self.c["btree_merges"] += 1
        self._del_ptr(parent, right.min_key)
        self._set_ptr(parent, merged)
        self._retire(left)          # after the parent points past them (see split)
        self._retire(right)
        if parent is self.roots[node.btree_id]:
            if parent.nlive == 1:
                self._collapse_root(parent, merged)
        elif parent.live_bytes < self.merge_bytes:
            self.maybe_merge(parent)
        return merged

    def _child_at(self, parent: Node, i: int) -> Node:
        keys, _ = parent.merged()
        return self._child(parent, keys[i])

    def _collapse_root(self, root: Node, child: Node) -> None:
        """A root with one child hands the root slot to that child."""
        self.roots[root.btree_id] = child
        self.roots_gen += 1
        self._retire(root)

    # ------------------------------------------------------------ writing

    def write_node(self, node: Node, cause: str) -> None:
        """Append the node's unwritten keys as a bset, compacting if it is full.

        An overfull node (replay, pointer updates, a big commit) is split
        instead; if no space can be had for that, it is written whole as long
        as it fits its region."""
        if node.live_bytes > self.split_bytes and self.split(node):
            return
        if node.new:
            self._write_whole(node, cause)
            return
        keys, vals = node.unwritten()
        data = encode_append(node.node_seq, node.max_seq, keys, vals)
        if node.written_bytes + len(data) > self.node_size or node.rewrite:
            self.compact(node, cause)
            return
        self._write(node, data, node.written_bytes, cause)
        # Count what the bset holds: a whiteout of a key re-inserted since
        # was superseded by the value and never reached the disk.
        self.c["btree_whiteouts_written"] += vals.count(b"")
        node.mark_written()
        self.dirty.pop(node, None)

    def _write_whole(self, node: Node, cause: str) -> None:
        """Write every live key of a node into its fresh region as one bset."""
        keys, vals = node.all_live()
        data = encode_first(self._header(node), node.max_seq, keys, vals)
        if len(data) > self.node_size:
            raise BtreeSpaceError(f"{BtreeId(node.btree_id).name} level {node.level}: node "
                                  f"of {len(data)} bytes exceeds the node size and there "
                                  "is no space to split it")
        self._write(node, data, 0, cause)
        # Pending whiteouts a fresh region does not need (a key deleted and
        # re-inserted since is live, not a whiteout avoided).
        self.c["btree_whiteouts_avoided"] += sum(1 for k in node.whiteouts
                                                 if node.get(k) is None)
        node.mark_written()
        self.dirty.pop(node, None)

    def _header(self, node: Node) -> NodeHeader:
        return NodeHeader(node.btree_id, node.level, node.node_seq, node.min_key, node.max_key,
                          node.gen)

    def _write(self, node: Node, data: bytes, pos: int, cause: str) -> None:
        if self.frozen:
            raise OSError(5, "btree writes stopped after an engine failure")
        self.dev.pwrite(data, node.offset + pos)
        self.written_regions.add(node.offset)
        node.written_bytes = pos + round_up(len(data))
        c = self.c
        c["btree_node_writes"] += 1
        c["btree_node_write_bytes"] += len(data)
        c["btree_bsets_written"] += 1
        c["btree_node_writes_" + cause] += 1
        self.journal.node_written()

    def compact(self, node: Node, cause: str) -> None:
        """Rewrite a full node into a fresh region (copy-on-write) and repoint it."""
        if node.live_bytes > self.split_bytes and self.split(node):
            return                  # overfull (replay, pointer updates): split, not copy
        if not self.space.ensure_nodes(1):
            raise BtreeSpaceError(f"{BtreeId(node.btree_id).name} level {node.level}: no "
                                  "space to rewrite a full node")
        parent = self._parent(node)
        old_offset, old_ptr = node.offset, node.ptr
        # Allocate while the parent still reaches the node under its old
        # pointer, and keep that cache entry until the parent is repointed:
        # the allocator may read alloc keys through this very node (see split).
        offset = self.space.alloc_node(node.btree_id, node.level, node.min_key)
        node.offset = offset
        node.node_seq = int.from_bytes(os.urandom(8), "little") | 1
        node.ptr = pack_btree_ptr(node.offset, node.node_seq)
        self.cache[node.ptr] = node
        node.new = True
        node.rewrite = False
        node.gen += 1               # the new region descends from the old
        self.c["btree_compactions"] += 1
        self._write_whole(node, cause)
        self._set_ptr(parent, node)
        if self.cache.get(old_ptr) is node:
            del self.cache[old_ptr]
        self.space.free_node(old_offset, self.journal.cur_seq)

    def flush_all(self, cause: str = "flush") -> int:
        """Write every dirty node (unmount, sync of btree state). Returns nodes written."""
        n = 0
        while self.dirty:
            node = next(iter(self.dirty))
            self.write_node(node, cause)
            n += 1
        return n

    def oldest_pin(self) -> int:
        for node in self.dirty:
            return node.pin_seq
        return 0

    def reclaim(self, upto_seq: int) -> int:
        """Write dirty nodes pinning journal sequences < upto_seq, oldest first."""
        n = 0
        while self.dirty:
            node = next(iter(self.dirty))
            if node.pin_seq >= upto_seq:
                break
            self.write_node(node, "reclaim")
            n += 1
        return n

    # ------------------------------------------------------------ walking

    def walk(self, btree_id: int) -> Iterator[Node]:
        """Every node of a btree, parents before children."""
        root = self.roots[btree_id]
        if root is None:
            return
        stack = [root]
        while stack:
            node = stack.pop()
            yield node
            if node.level:
                keys, vals = node.merged()
                for i in range(len(keys) - 1, -1, -1):
                    stack.append(self._child(node, keys[i]))

    def node_pointers(self, btree_id: int) -> Iterator[tuple[int, int, bytes]]:
        """(level, offset, min key) of every node of a btree, reading only the
        interior nodes (the leaves are known from their parents' pointers)."""
        root = self.roots[btree_id]
        if root is None:
            return
        yield root.level, root.offset, root.min_key
        stack = [root]
        while stack:
            node = stack.pop()
            if node.level == 0:
                continue
            keys, vals = node.merged()
            for k, v in zip(keys, vals):
                off, _seq = unpack_btree_ptr(v)
                yield node.level - 1, off, k
                if node.level > 1:
                    stack.append(self._child(node, k))

    def mark_all_for_rewrite(self, seq: int) -> None:
        """Every node is moved to a fresh region at its next write."""
        for bid in range(BTREE_ID_NR):
            for node in list(self.walk(bid)):
                node.rewrite = True
                self._pin(node, seq)

    def sort_dirty_by_pin(self) -> None:
        """Restore the dirty list's pin order (replay pins level by level)."""
        self.dirty = dict.fromkeys(sorted(self.dirty, key=lambda n: n.pin_seq))

    def set_blacklist(self, space: SeqBlacklist) -> None:
        """Journal seqs whose bsets are ignored (a crashed session's)."""
        self.seq_blacklisted = space.blacklisted if space else None

    def to_text(self, btree_id: int) -> str:
        return "\n".join(("  " * (self.roots[btree_id].level - n.level)) + n.to_text()
                         for n in self.walk(btree_id))
