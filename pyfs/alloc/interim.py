"""Interim btree node region allocator, until the bucket allocator owns nodes.

Regions of btree_node_size bytes are handed out from the data buckets. Used
regions are found at mount by walking the interior nodes; a freed region is
reused only once the journal sequence that freed it is durable (the pointer
that replaced it can then never be rolled back).
"""

from __future__ import annotations

import heapq


class NoSpace(Exception):
    """No free region for a btree node."""


class InterimNodeSpace:
    def __init__(self, first: int, end: int, node_size: int):
        self.first = first              # byte offset of the first region
        self.node_size = node_size
        self.nregions = (end - first) // node_size
        self.used: set[int] = set()     # region indexes in use
        self.free: list[int] = []       # heap of freed, reusable region indexes
        self.pending: list[tuple[int, int]] = []  # heap of (seq, region) awaiting durability
        self.bump = 0

    def mark_used(self, offset: int) -> None:
        r = (offset - self.first) // self.node_size
        self.used.add(r)

    def alloc_node(self) -> int:
        while self.free:
            r = heapq.heappop(self.free)
            if r not in self.used:
                return self._take(r)
        while self.bump < self.nregions:
            r = self.bump
            self.bump += 1
            if r not in self.used:
                return self._take(r)
        raise NoSpace("no free region for a btree node")

    def _take(self, r: int) -> int:
        self.used.add(r)
        return self.first + r * self.node_size

    def free_node(self, offset: int, seq: int) -> None:
        r = (offset - self.first) // self.node_size
        heapq.heappush(self.pending, (seq, r))

    def durable(self, seq: int) -> None:
        while self.pending and self.pending[0][0] <= seq:
            _, r = heapq.heappop(self.pending)
            self.used.discard(r)
            heapq.heappush(self.free, r)
