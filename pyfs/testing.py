"""Helpers for tests and benchmarks: file data written straight through the engine.

They follow the fs layer's data path (allocate, write, commit the extent,
release the open-bucket reference) without inodes or directories, so the
allocator can be exercised and measured on its own.
"""

from __future__ import annotations

from .alloc.foreground import Watermark
from .format import BLOCK_SIZE, BtreeId, Extent, checksum, pack_key

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
