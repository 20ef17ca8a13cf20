"""Allocation goals (seed 004, Tux3): where a new bucket should come from.

The goal is tied to the inode number: inode numbers map to allocation groups
(fixed runs of buckets), and a file's data goes to its inode's group,
extrapolated by file offset. A request that continues the previous one (same
inode, next block; or the next inode from its start) continues linearly after
the last bucket used, skipping a bucket now and then as slack for rewrites.
If the goal group is short of space the search bounces to other groups in an
order generated from the inode number, getting progressively further away,
then falls back to a wrapping first-fit over the whole device, so free space
is never missed. Groups nearly full are skipped by data (per-group free
counts), leaving their last buckets to btree nodes.
"""

from __future__ import annotations

from ..format import BLOCK_SIZE

MAX_BOUNCES = 8
# After this many buckets of linear allocation, leave one free (slack).
SLACK_RUN = 16


class Goals:
    def __init__(self, index, first: int, end: int, bucket_size: int, counters: dict):
        self.index = index
        self.first = first
        self.end = end
        self.bucket_size = bucket_size
        self.gb = index.group_buckets
        self.ngroups = index.ngroups
        self.first_group = first // self.gb
        self.data_groups = max(1, -(-end // self.gb) - self.first_group)
        # Inode numbers per group: a group's bytes over a 16 KiB average file.
        self.inodes_per_group = max(64, self.gb * bucket_size // 16384)
        # Data stays out of a group with fewer free buckets than this.
        self.data_slack = max(1, self.gb // 16)
        self.c = counters
        for n in ("alloc_bounces", "alloc_goal_hits", "alloc_linear", "alloc_wraps",
                  "alloc_requests"):
            counters.setdefault(n, 0)

    def inum_group(self, inum: int) -> int:
        return self.first_group + (inum // self.inodes_per_group) % self.data_groups

    def goal_bucket(self, inum: int, file_block: int) -> int:
        """The inode's group start, extrapolated by the file offset."""
        g = self.inum_group(inum)
        b = max(g * self.gb, self.first) + file_block * BLOCK_SIZE // self.bucket_size
        return self.first + (b - self.first) % (self.end - self.first)

    def bounce_order(self, inum: int, g0: int):
        """g0, then groups further and further away, on a side chosen by inum bits."""
        yield g0
        h = (inum * 0x9E3779B97F4A7C15) >> 13
        lo, n = self.first_group, self.data_groups
        for i in range(1, MAX_BOUNCES + 1):
            step = ((i + 1) // 2) ** 2
            sign = 1 if (h >> i) & 1 else -1
            yield lo + (g0 - lo + sign * step) % n

    def find(self, inum: int, goal: int, *, data: bool) -> tuple[int | None, int]:
        """A free bucket near goal: (bucket or None, bounces taken)."""
        idx = self.index
        self.c["alloc_requests"] += 1
        slack = self.data_slack if data else 0
        g0 = goal // self.gb
        bounces = 0
        for g in self.bounce_order(inum, g0):
            if idx.free_in_group(g) > slack:
                b = idx.find_free_in_group(g, goal if g == g0 else None)
                if b is not None and self.first <= b < self.end:
                    self.c["alloc_bounces"] += bounces
                    if not bounces:
                        self.c["alloc_goal_hits"] += 1
                    return b, bounces
            bounces += 1
        self.c["alloc_bounces"] += bounces
        self.c["alloc_wraps"] += 1
        b = idx.find_free(goal)
        return (b if b is not None and self.first <= b < self.end else None), bounces

    def next_linear(self, last: int, run: int) -> int | None:
        """The bucket after `last` for a continuing request, with periodic slack."""
        start = last + 1 + (1 if run and run % SLACK_RUN == 0 else 0)
        b = self.index.find_free_in(start, self.end)
        if b is not None:
            self.c["alloc_linear"] += 1
        return b
