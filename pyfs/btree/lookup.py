"""Descent and lookups: the leaf or path for a key, point lookups, ordered
iteration, and walks over every node of a btree.

LookupMixin is a part of BtreeSet (pyfs/btree/tree.py), written against its
state: roots, cache, tick; it reads missing nodes through _node (cache.py).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

from ..format import MAX_KEY, ZERO_KEY, unpack_btree_ptr
from .node import Node


def key_before(key: bytes) -> bytes:
    return (int.from_bytes(key, "big") - 1).to_bytes(len(key), "big")


def key_after(key: bytes) -> bytes:
    return (int.from_bytes(key, "big") + 1).to_bytes(len(key), "big")


class LookupMixin:
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
