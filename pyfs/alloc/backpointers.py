"""What a pointer into a bucket implies, derived in one place: the bucket it
counts against, the sectors it adds there and its backpointer (the key in the
backpointers btree and the value naming the pointer). The extents trigger,
the allocator's node writes, fsck's recount and the tests' model all use
these, so the rule cannot drift between them."""

from __future__ import annotations

from typing import NamedTuple

from ..format import BLOCK_SIZE, SECTOR_SIZE, Backpointer, Extent, pack_key, unpack_key

BLOCK_SECTORS = BLOCK_SIZE // SECTOR_SIZE


class PointerUse(NamedTuple):
    bucket: int
    bp_key: bytes       # backpointers btree key: (bucket, byte offset in it)
    sectors: int


def backpointer_key(bucket: int, offset_in_bucket: int) -> bytes:
    return pack_key(bucket, offset_in_bucket)


def at(offset: int, sectors: int, bucket_size: int) -> PointerUse:
    """The use of `sectors` starting at device byte `offset`."""
    b = offset // bucket_size
    return PointerUse(b, pack_key(b, offset - b * bucket_size), sectors)


def extent_start(e: Extent) -> int:
    """Device byte where an extent's live blocks start: what its backpointer names."""
    return e.dev_offset + e.live_offset * BLOCK_SIZE


def extent_use(e: Extent, bucket_size: int) -> PointerUse:
    """An extent's live blocks (its region never crosses a bucket)."""
    return at(extent_start(e), e.nblocks * BLOCK_SECTORS, bucket_size)


def bucket_keys(bucket: int) -> tuple[bytes, bytes]:
    """First and last possible backpointer key of a bucket."""
    return pack_key(bucket, 0), pack_key(bucket, (1 << 64) - 1)


def pointed_at(bp_key: bytes, bucket_size: int) -> int:
    """Device byte a backpointer key names."""
    bucket, off = unpack_key(bp_key)
    return bucket * bucket_size + off


def extent_backpointer(btree_id: int, key: bytes, e: Extent) -> bytes:
    return Backpointer(btree_id=btree_id, level=0, pos=key, length=e.nblocks * BLOCK_SECTORS,
                       gen=e.gen).pack()


def node_backpointer(btree_id: int, level: int, min_key: bytes, sectors: int, gen: int) -> bytes:
    """A btree node at `level` is pointed at from level + 1 (the root from the
    journal's root record, counted the same way)."""
    return Backpointer(btree_id=btree_id, level=level + 1, pos=min_key, length=sectors,
                       gen=gen).pack()
