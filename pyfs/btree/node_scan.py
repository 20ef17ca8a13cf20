"""Node scan: find btree nodes on the device without a tree to reach them.

When a root is lost or unreadable, or a subtree is (a zeroed journal, a
destroyed interior node), the nodes are still on the device: every node
region starts with a checksummed header naming its btree, level, key range
and node_seq, and its bsets carry the journal seq they were written at. The
scan reads the header of every node slot of the data buckets (or of the
buckets the caller names), parses each valid node whole, and keeps the
newest write of each region; newest_cover() then picks, for a btree and a
key range, the newest leaves that cover it without overlapping, which is
what a rebuild of that btree starts from (as bcachefs's node scan does).

A region that a split, merge or compaction retired may still hold an older
version of keys now in a newer node: a node's header records its lineage
generation (a split's pieces, a merge's result, a compacted copy each have a
higher one than what they replaced), and of overlapping nodes the descendant
wins, whole, then the newer journal seq; so a key is never taken from a node
older than one covering it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..format import FormatError, NodeHeader
from .io import parse_node

HEADER_PROBE = 64           # bytes of a slot read to see whether a node header is there


@dataclass
class ScannedNode:
    """A valid node found on the device."""
    offset: int
    btree_id: int
    level: int
    node_seq: int
    gen: int                # lineage generation: a descendant's is higher
    min_key: bytes
    max_key: bytes
    max_seq: int            # newest journal seq of its bsets
    keys: list[bytes]
    vals: list[bytes]


def node_slots(first_bucket: int, end_bucket: int, bucket_size: int, node_size: int,
               buckets: Iterable[int] | None = None) -> list[int]:
    """Byte offsets of every node slot of the data buckets (or of `buckets`)."""
    per = bucket_size // node_size
    bs = range(first_bucket, end_bucket) if buckets is None else sorted(buckets)
    return [b * bucket_size + i * node_size for b in bs for i in range(per)]


def scan_nodes(dev, slots: Iterable[int], node_size: int, *, limit: int | None = None,
               blacklisted: Callable[[int], bool] | None = None,
               want: Callable[[NodeHeader], bool] | None = None) -> Iterator[ScannedNode]:
    """Every valid node among the slots whose header `want` accepts. Bsets past
    `limit` (a journal seq) or blacklisted are not part of what a node holds."""
    for off in slots:
        if off + node_size > dev.size:
            continue
        try:
            h = NodeHeader.unpack(dev.pread(HEADER_PROBE, off), off)
        except FormatError:
            continue
        if want is not None and not want(h):
            continue
        try:
            img = parse_node(dev.pread(node_size, off), off, limit, blacklisted)
        except FormatError:
            continue
        yield ScannedNode(off, h.btree_id, h.level, h.node_seq, h.gen, h.min_key, h.max_key,
                          img.max_journal_seq, img.keys, img.vals)


def newest_cover(nodes: Iterable[ScannedNode]) -> list[ScannedNode]:
    """Of nodes that may overlap, the newest that do not overlap one already
    taken, in key order. Newest: the higher lineage generation (a split's
    pieces, a merge's result and a compacted copy descend from what they
    replaced, whose region may still hold it), then the newer journal seq."""
    taken: list[ScannedNode] = []
    for n in sorted(nodes, key=lambda n: (-n.gen, -n.max_seq, n.offset)):
        if any(not (n.max_key < t.min_key or t.max_key < n.min_key) for t in taken):
            continue
        taken.append(n)
    return sorted(taken, key=lambda n: n.min_key)
