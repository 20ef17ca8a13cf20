"""The node cache: nodes come in by being read (checked against the pointer
that led to them) or made, and leave by eviction, least recently used first.

CacheMixin is a part of BtreeSet (pyfs/btree/tree.py), written against its
state: dev, node_size, journal, space, c (counters), cache, cache_nodes,
roots, written_regions, seq_blacklisted; it calls write_node (write.py).
"""

from __future__ import annotations

import os

from ..format import BtreeId, FormatError, pack_btree_ptr, unpack_btree_ptr
from .io import parse_node
from .node import Node

# The node cache holds about this many bytes of nodes (its bound is a node
# count): 128 nodes of 256 KiB. A walk of 1,000,000 files ran as fast with
# it as with 512 nodes, and the daemon peaked at 197 MiB instead of 284.
NODE_CACHE_BYTES = 32 << 20


class BtreeError(Exception):
    """A btree node read from disk is inconsistent with the tree above it."""


def new_node_seq() -> int:
    """A random, odd node sequence: tells a region's bsets from a previous
    occupant's (tests/craft.py seeds it through this module's os)."""
    return int.from_bytes(os.urandom(8), "little") | 1


class CacheMixin:
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

    def _new_node(self, btree_id: int, level: int, min_key: bytes, max_key: bytes,
                  gen: int = 1) -> Node:
        offset = self.space.alloc_node(btree_id, level, min_key)
        node_seq = new_node_seq()
        ptr = pack_btree_ptr(offset, node_seq)
        node = Node(btree_id, level, min_key, max_key, offset, node_seq, ptr)
        node.gen = gen
        self.cache[ptr] = node
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
