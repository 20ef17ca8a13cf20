"""Test and benchmark helpers at the engine level (not part of pyfs itself).

write_file/delete_file/read_file follow the fs layer's data path (allocate,
write, commit the extent, release the open-bucket reference) without inodes
or directories, so the allocator can be exercised and measured on its own.
check_alloc recounts allocation from extents and btree nodes and compares it
with the alloc keys and backpointers; tests run it after every workload.
"""

from __future__ import annotations

from pyfs.alloc.backpointers import at, extent_use
from pyfs.alloc.foreground import Watermark
from pyfs.format import (
    BLOCK_SIZE,
    BTREE_ID_NR,
    SECTOR_SIZE,
    Backpointer,
    BtreeId,
    DataType,
    Extent,
    KeyType,
    checksum,
    pack_key,
    unpack_key,
)

EXT = BtreeId.extents
MAX_LO = (1 << 64) - 1


def write_file(eng, inum: int, data: bytes, first_block: int = 0) -> int:
    """Write data at first_block as fresh extents; return the number of extents."""
    blocks = -(-len(data) // BLOCK_SIZE)
    fb = 0
    n_ext = 0
    while fb < blocks:
        off, n, gen, ref = eng.alloc.alloc_data(inum, first_block + fb, blocks - fb)
        chunk = data[fb * BLOCK_SIZE:(fb + n) * BLOCK_SIZE].ljust(n * BLOCK_SIZE, b"\0")
        eng.dev.pwrite(chunk, off)
        t = eng.trans()
        t.set(EXT, pack_key(inum, first_block + fb),
              Extent(dev_offset=off, region_blocks=n, csum=checksum(chunk), live_offset=0,
                     nblocks=n, gen=gen).pack())
        t.commit()
        ref.release()
        fb += n
        n_ext += 1
    return n_ext


def delete_file(eng, inum: int) -> None:
    t = eng.trans(Watermark.delete)
    for k, _v in t.iter(EXT, pack_key(inum, 0), pack_key(inum, MAX_LO)):
        t.delete(EXT, k)
    t.commit()


def file_extents(eng, inum: int) -> list[Extent]:
    return [Extent.unpack(v) for _k, v in
            eng.btrees.iter(EXT, pack_key(inum, 0), pack_key(inum, MAX_LO))]


def read_file(eng, inum: int) -> bytes:
    """Read a file's extents back (contiguous files), verifying checksums."""
    out = []
    bs = eng.sb.bucket_size
    for e in file_extents(eng, inum):
        if eng.alloc.state.is_stale(e.dev_offset // bs, e.gen):
            out.append(bytes(e.nblocks * BLOCK_SIZE))   # stale pointer: reads as absent
            continue
        region = eng.dev.pread(e.region_blocks * BLOCK_SIZE, e.dev_offset)
        if checksum(region) != e.csum:
            raise OSError(5, f"inode {inum}: extent data checksum mismatch")
        out.append(region[e.live_offset * BLOCK_SIZE:(e.live_offset + e.nblocks) * BLOCK_SIZE])
    return b"".join(out)


# --------------------------------------------------------------------------
# Recounting allocation (tests run it after every workload)



def expected_usage(eng) -> tuple[dict[int, tuple[int, int]], dict[bytes, tuple]]:
    """(bucket -> (data_type, sectors), backpointer key -> (btree, level, pos, length))."""
    bs = eng.sb.bucket_size
    usage: dict[int, tuple[int, int]] = {}
    bps: dict[bytes, tuple] = {}
    node_sectors = eng.node_size // SECTOR_SIZE
    for bid in range(BTREE_ID_NR):
        for node in eng.btrees.walk(bid):
            b, bp_key, n = at(node.offset, node_sectors, bs)
            dt, s = usage.get(b, (DataType.btree, 0))
            usage[b] = (DataType.btree, s + n)
            bps[bp_key] = (bid, node.level + 1, node.min_key, n)
    for k, v in eng.btrees.iter(BtreeId.extents):
        if v[0] != KeyType.extent:
            continue
        b, bp_key, n = extent_use(Extent.unpack(v), bs)
        dt, s = usage.get(b, (DataType.user, 0))
        usage[b] = (DataType.user, s + n)
        bps[bp_key] = (BtreeId.extents, 0, k, n)
    return usage, bps


def check_alloc(eng, *, backpointers: bool = True) -> list[str]:
    problems: list[str] = []
    usage, want_bps = expected_usage(eng)
    st = eng.alloc.state
    alloc = eng.alloc
    for b in range(alloc.first, alloc.end):
        a = st.get(b)
        dt, sectors = usage.get(b, (DataType.free, 0))
        if a.dirty_sectors != sectors:
            problems.append(f"bucket {b}: alloc key has {a.dirty_sectors} sectors, "
                            f"extents/nodes use {sectors}")
        elif sectors and a.data_type != dt:
            problems.append(f"bucket {b}: data type {DataType(a.data_type).name}, "
                            f"expected {DataType(dt).name}")
        in_use = sectors or b in st.open_refs or a.data_type == DataType.need_discard
        if in_use and alloc.index.is_free(b):
            problems.append(f"bucket {b}: in use but marked free in the free-space index")
        if not in_use and a.data_type == DataType.free and not alloc.index.is_free(b):
            problems.append(f"bucket {b}: free but missing from the free-space index")
    if backpointers and alloc.backpointers:
        have = {}
        for k, v in eng.btrees.iter(BtreeId.backpointers):
            bp = Backpointer.unpack(v)
            have[k] = (bp.btree_id, bp.level, bp.pos, bp.length)
        for k, want in want_bps.items():
            if have.get(k) != want:
                b, off = unpack_key(k)
                problems.append(f"backpointer bucket {b} offset {off}: have {have.get(k)}, "
                                f"expected {want}")
        for k in have.keys() - want_bps.keys():
            b, off = unpack_key(k)
            problems.append(f"backpointer bucket {b} offset {off}: points at nothing "
                            f"({have[k]})")
    return problems
