"""Structure changes: n-way splits, merges of underfull siblings, root
collapse, and the journaled parent pointer changes they make.

Every change asks the allocator for the nodes it needs first (ensure_nodes),
so it is whole or not done. The allocator reads alloc keys through these
btrees, so new nodes are allocated while the old ones are still in place and
old regions freed only once the parent points past them.

InteriorMixin is a part of BtreeSet (pyfs/btree/tree.py), written against its
state: roots, roots_gen, cache, dirty, space, journal, split_bytes,
merge_bytes, merged_max, node_size, c (counters); it calls _new_node
(cache.py), path and _child (lookup.py), _pin and _wait_for_space
(update.py), write_node (write.py).
"""

from __future__ import annotations

from bisect import bisect_right

from ..format import MAX_KEY, ZERO_KEY
from .lookup import key_before
from .node import ENTRY_OVERHEAD, Node


class InteriorMixin:
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
