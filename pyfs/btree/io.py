"""Reading and encoding btree node regions.

A region is the node header, the first bset right after it, and later bsets
each starting on a block boundary. Reading merges the bsets in order, newest
winning, a whiteout (empty value) deleting. Reading stops at the first place
that holds no bset of this node (another node_seq, no magic), at a bset whose
checksum fails (a torn write), or at a bset that contains journal sequences
newer than the last durable journal entry (its keys never became durable).

Bsets of this node found past the point where reading stopped (a torn or
never-durable append, or an append that landed while an earlier one did not)
are a stale tail: the next append would land in front of them and a later
read could resume into them, so such a node must be rewritten to a fresh
region (a new node_seq) instead of appended to; NodeImage.stale_tail says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..format import (
    BLOCK_SIZE,
    NODE_HDR_SIZE,
    FormatError,
    NodeHeader,
    pack_bset,
    unpack_bset,
    unpack_bset_header,
)


def round_up(n: int, to: int = BLOCK_SIZE) -> int:
    return n + (-n % to)


@dataclass
class NodeImage:
    """What a node region holds: its header and merged live keys."""
    header: NodeHeader
    keys: list[bytes]
    vals: list[bytes]
    written_bytes: int      # where the next bset goes
    nbsets: int
    max_journal_seq: int
    stop_reason: str        # why reading stopped: "end", "torn", "newer", "bad"
    stale_tail: bool = False  # bsets of this node lie at or past written_bytes


def parse_node(buf: bytes, offset: int, durable_seq: int | None = None,
               blacklisted=None) -> NodeImage:
    """Decode a whole region read from device offset `offset`.

    Raises FormatError if the header is bad. A bad bset after at least one
    good one ends the node (it is a torn or never-durable append)."""
    hdr = NodeHeader.unpack(buf, offset)
    bsets: list[tuple[list[bytes], list[bytes]]] = []
    pos = NODE_HDR_SIZE
    nbsets = 0
    max_jseq = 0
    written = 0
    reason = "end"
    while True:
        bh = unpack_bset_header(buf, pos)
        if bh is None or bh.node_seq != hdr.node_seq:
            break
        if (durable_seq is not None and bh.journal_seq > durable_seq) or (
                blacklisted is not None and blacklisted(bh.journal_seq)):
            reason = "newer"
            break
        try:
            keys, vals = unpack_bset(buf, pos, bh, offset + pos)
        except FormatError:
            if nbsets == 0:
                raise
            reason = "torn"
            break
        bsets.append((keys, vals))
        nbsets += 1
        max_jseq = max(max_jseq, bh.journal_seq)
        pos = round_up(pos + bh.size)
        written = pos
        if pos >= len(buf):
            break
    if nbsets == 0:
        raise FormatError("btree node: no valid bset", offset)
    stale = any(h is not None and h.node_seq == hdr.node_seq
                for h in (unpack_bset_header(buf, p) for p in range(written, len(buf), BLOCK_SIZE)))
    keys, vals = _merge_bsets(bsets)
    for k in keys[:1] + keys[-1:]:
        if not hdr.min_key <= k <= hdr.max_key:
            raise FormatError("btree node: key outside the node's range", offset)
    return NodeImage(hdr, keys, vals, written, nbsets, max_jseq, reason, stale)


def _merge_bsets(bsets: list[tuple[list[bytes], list[bytes]]]
                 ) -> tuple[list[bytes], list[bytes]]:
    """The live keys and values of a node's bsets: a later bset's value or
    whiteout (empty value) wins. One bset (most nodes) is in order already."""
    if len(bsets) == 1:
        keys, vals = bsets[0]
        if b"" not in vals:
            return keys, vals
    live: dict[bytes, bytes] = {}
    for keys, vals in bsets:
        live.update(zip(keys, vals))
    ks = sorted(k for k, v in live.items() if v)
    return ks, [live[k] for k in ks]


def encode_first(header: NodeHeader, journal_seq: int, keys: list[bytes],
                 vals: list[bytes]) -> bytes:
    """Header plus the first bset, padded to whole blocks."""
    data = header.pack() + pack_bset(header.node_seq, journal_seq, keys, vals)
    return data + bytes(-len(data) % BLOCK_SIZE)


def encode_append(node_seq: int, journal_seq: int, keys: list[bytes], vals: list[bytes]) -> bytes:
    data = pack_bset(node_seq, journal_seq, keys, vals)
    return data + bytes(-len(data) % BLOCK_SIZE)
