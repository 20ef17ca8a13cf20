"""Interim space allocator, until the bucket allocator (pyfs/alloc) takes over.

Hands out btree node regions and file data blocks from whole buckets, bump
style. Used space is found at mount by walking the interior nodes and the
extents btree. A freed node region is reused only once the journal sequence
that freed it is durable. File data is never reused by this allocator.
"""

from __future__ import annotations

import heapq

from ..format import BLOCK_SIZE


class NoSpace(Exception):
    """No free bucket."""


class DataRef:
    """A write's hold on allocated space, released once its extent is committed."""
    __slots__ = ("bucket",)

    def __init__(self, bucket: int):
        self.bucket = bucket

    def release(self) -> None:
        pass


class InterimSpace:
    def __init__(self, first_bucket: int, end_bucket: int, bucket_size: int, node_size: int):
        self.first_bucket = first_bucket
        self.end_bucket = end_bucket
        self.bucket_size = bucket_size
        self.node_size = node_size
        self.used_buckets: set[int] = set()
        self.next_bucket = first_bucket
        self.node_free: list[int] = []        # heap of reusable node offsets
        self.node_pending: list[tuple[int, int]] = []   # heap of (seq, offset)
        self.node_used: set[int] = set()
        self.node_cur: tuple[int, int] | None = None    # (next offset, end) in a node bucket
        self.data_cur: tuple[int, int] | None = None

    # ------------------------------------------------------------ mount

    def mark_used(self, offset: int) -> None:
        self.node_used.add(offset)
        self.used_buckets.add(offset // self.bucket_size)

    def mark_data(self, offset: int, length: int) -> None:
        for b in range(offset // self.bucket_size, (offset + length - 1) // self.bucket_size + 1):
            self.used_buckets.add(b)

    # ------------------------------------------------------------ buckets

    def _bucket(self) -> int:
        while self.next_bucket < self.end_bucket:
            b = self.next_bucket
            self.next_bucket += 1
            if b not in self.used_buckets:
                self.used_buckets.add(b)
                return b
        raise NoSpace("no free bucket")

    # ------------------------------------------------------------ nodes

    def alloc_node(self) -> int:
        while self.node_free:
            off = heapq.heappop(self.node_free)
            if off not in self.node_used:
                self.node_used.add(off)
                return off
        while True:
            if self.node_cur is None or self.node_cur[0] >= self.node_cur[1]:
                b = self._bucket()
                self.node_cur = (b * self.bucket_size, (b + 1) * self.bucket_size)
            off, end = self.node_cur
            self.node_cur = (off + self.node_size, end)
            if off not in self.node_used:
                self.node_used.add(off)
                return off

    def free_node(self, offset: int, seq: int) -> None:
        heapq.heappush(self.node_pending, (seq, offset))

    def durable(self, seq: int) -> None:
        while self.node_pending and self.node_pending[0][0] <= seq:
            _, off = heapq.heappop(self.node_pending)
            self.node_used.discard(off)
            heapq.heappush(self.node_free, off)

    # ------------------------------------------------------------ data

    def alloc_data(self, inum: int, file_block: int, nblocks: int) -> tuple[int, int, int, DataRef]:
        """Up to nblocks contiguous blocks within one bucket: (offset, nblocks, gen, ref)."""
        if self.data_cur is None or self.data_cur[0] >= self.data_cur[1]:
            b = self._bucket()
            self.data_cur = (b * self.bucket_size, (b + 1) * self.bucket_size)
        off, end = self.data_cur
        n = min(nblocks, (end - off) // BLOCK_SIZE)
        self.data_cur = (off + n * BLOCK_SIZE, end)
        return off, n, 0, DataRef(off // self.bucket_size)
