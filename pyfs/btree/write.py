"""Node writes: appending a node's unwritten keys as a bset, writing a fresh
region whole, compaction into a new region, and journal reclaim's writes of
the nodes pinning the oldest seqs.

WriteMixin is a part of BtreeSet (pyfs/btree/tree.py), written against its
state: dev, node_size, split_bytes, space, journal, cache, dirty, frozen,
written_regions, c (counters); it calls split, _parent and _set_ptr
(interior.py), walk (lookup.py) and _pin (update.py).
"""

from __future__ import annotations

from ..format import BTREE_ID_NR, BtreeId, NodeHeader, pack_btree_ptr
from .cache import new_node_seq
from .io import encode_append, encode_first, round_up
from .node import Node


class BtreeSpaceError(Exception):
    """A node must be written but no space can be had to split or rewrite it.
    The reserves exist so that this never happens (docs/DESIGN.md)."""


class WriteMixin:
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
        node.node_seq = new_node_seq()
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

    def mark_stale_for_rewrite(self, seq: int) -> int:
        """Every node whose region holds bsets past its valid ones (a crashed
        session's, which only the blacklist keeps out) is moved to a fresh
        region at its next write, which seq's pin brings about. Reading a node
        flags such a tail (parse_node's stale_tail), so this reads every node
        and moves only those: the space it needs is what crashed sessions
        touched, not the whole btree. Returns how many."""
        n = 0
        for bid in range(BTREE_ID_NR):
            for node in list(self.walk(bid)):
                if node.rewrite:
                    self._pin(node, seq)
                    n += 1
        return n
