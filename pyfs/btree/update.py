"""Key updates: insert and delete into leaves, pinning the journal seq on each
node they dirty, and the structure changes they call for (split, merge,
write), done at once or deferred past the commit being applied.

UpdateMixin is a part of BtreeSet (pyfs/btree/tree.py), written against its
state: roots, cache, dirty, deferred, retry, split_bytes, merge_bytes,
write_buffer, max_value, c (counters); it calls leaf and path (lookup.py),
split and maybe_merge (interior.py), write_node (write.py).
"""

from __future__ import annotations

from .node import Node


class UpdateMixin:
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

    def _wait_for_space(self, node: Node) -> None:
        """A structure change found no space: the node stays as it is (valid in
        memory) and the change is tried again at the next chance."""
        self.retry[node] = None
        self.c["btree_maintenance_enospc"] = self.c.get("btree_maintenance_enospc", 0) + 1

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
