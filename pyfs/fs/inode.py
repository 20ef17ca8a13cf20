"""Inode records: limits, the attribute view handed to callers, a decoded-inode cache.

Key (inum, 0) in the inodes btree holds an `Inode` (pyfs/format.py). Key hi 0
is not an inode: (0, 0) is the fs info record and (0, inum) marks an orphan,
see FsInfo and ORPHAN_* below and docs/FS.md.
"""

from __future__ import annotations

import stat
import struct
import time

from ..format import BLOCK_SIZE, BtreeId, Inode, KeyType, pack_key

NAME_MAX = 255                  # bytes in one file name
SYMLINK_MAX = 4095              # PATH_MAX - 1
LINK_MAX = 65000                # nlink bound (dirs: 2 + subdirs)
MAX_FILE_SIZE = 1 << 44         # 16 TiB; file blocks then fit 32 bits
SECTORS_PER_BLOCK = BLOCK_SIZE // 512
ROOT_INUM = 1                   # pyfuse3.ROOT_INODE
FIRST_INUM = 16                 # below: reserved, only the root is used

FS_INFO_KEY = pack_key(0, 0)
ORPHAN_DELETE = b"D"            # nlink 0: delete the inode and its data
ORPHAN_TRUNCATE = b"T"          # a chunked truncate: drop extents beyond i_size


# Timestamps are signed 64-bit nanoseconds since the epoch (1677-09-21 to
# 2262-04-11, bcachefs's range at nanosecond precision). Linux can pass any
# 64-bit seconds; like ext4 with its narrower fields, pyfs clamps what does
# not fit, and what stat shows before a remount is what it shows after.
TIME_MIN_NS = -(1 << 63)
TIME_MAX_NS = (1 << 63) - 1
ID_MAX = (1 << 32) - 1          # uid_t, gid_t
RDEV_MAX = (1 << 64) - 1        # dev_t


def now_ns() -> int:
    return time.time_ns()


def clamp_time_ns(t: int) -> int:
    return min(max(t, TIME_MIN_NS), TIME_MAX_NS)


def inode_key(inum: int) -> bytes:
    return pack_key(inum, 0)


def orphan_key(inum: int) -> bytes:
    return pack_key(0, inum)


def orphan_val(kind: bytes) -> bytes:
    return bytes((KeyType.raw,)) + kind


def dtype_of(mode: int) -> int:
    """DT_* value of a mode (the S_IFMT bits shifted down, as Linux defines them)."""
    return stat.S_IFMT(mode) >> 12


def is_dir(ino: Inode) -> bool:
    return stat.S_ISDIR(ino.mode)


# --------------------------------------------------------------------------
# The fs info record: (0, 0) -> raw type byte, u32 version, u64 generation
# limit (generations below it may have been handed out), and since version 2
# u64 inode count (inode records in the inodes btree, kept exact by every
# transaction that creates or deletes one: what statfs reports as used).

_FS_INFO_V1 = struct.Struct("<BIQ")
_FS_INFO = struct.Struct("<BIQQ")
FS_INFO_VERSION = 2


def pack_fs_info(gen_limit: int, inodes: int) -> bytes:
    return _FS_INFO.pack(KeyType.raw, FS_INFO_VERSION, gen_limit, inodes)


def unpack_fs_info(val: bytes | None) -> tuple[int, int | None]:
    """(generation limit, inode count); a fresh filesystem has neither (0, 0),
    a version 1 record has no count (None)."""
    if val is None:
        return 0, 0
    if len(val) < _FS_INFO_V1.size:
        return 0, None
    _t, version, gen_limit = _FS_INFO_V1.unpack_from(val)
    if version >= 2 and len(val) >= _FS_INFO.size:
        return gen_limit, _FS_INFO.unpack_from(val)[3]
    return gen_limit, None


# --------------------------------------------------------------------------
# Attributes as callers see them (an `os.stat_result` look-alike, nanoseconds)

class Attr:
    __slots__ = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                 "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_birthtime_ns",
                 "generation")

    def __init__(self, inum: int, ino: Inode):
        self.st_ino = inum
        self.st_mode = ino.mode
        self.st_nlink = ino.nlink
        self.st_uid = ino.uid
        self.st_gid = ino.gid
        self.st_rdev = ino.rdev
        self.st_size = ino.size
        self.st_blocks = ino.blocks
        self.st_atime_ns = ino.atime_ns
        self.st_mtime_ns = ino.mtime_ns
        self.st_ctime_ns = ino.ctime_ns
        self.st_birthtime_ns = ino.btime_ns
        self.generation = ino.generation

    def __repr__(self) -> str:
        return (f"Attr(ino={self.st_ino} mode={self.st_mode:o} nlink={self.st_nlink} "
                f"size={self.st_size} blocks={self.st_blocks})")


def new_inode(mode: int, uid: int, gid: int, *, rdev: int = 0, parent: int = 0,
              generation: int = 0, nlink: int = 1, tail: bytes = b"", size: int = 0,
              t: int | None = None) -> Inode:
    t = now_ns() if t is None else t
    return Inode(mode=mode, uid=uid, gid=gid, nlink=nlink, flags=0, size=size, blocks=0,
                 atime_ns=t, mtime_ns=t, ctime_ns=t, btime_ns=t, generation=generation,
                 rdev=rdev, parent=parent, tail=tail)


def kill_priv_mode(mode: int) -> int:
    """Linux should_remove_suid: drop S_ISUID, and S_ISGID when group-exec is set
    (S_ISGID without S_IXGRP means mandatory locking, which is kept)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


class InodeCache:
    """Decoded Inode records of hot inodes. Only the fs layer writes inodes, and
    it updates this cache after each commit, so entries never go stale."""

    def __init__(self, btrees, limit: int = 65536):
        self.btrees = btrees
        self.limit = limit
        self.map: dict[int, Inode] = {}

    def get(self, inum: int) -> Inode | None:
        ino = self.map.get(inum)
        if ino is not None:
            return ino
        val = self.btrees.get(BtreeId.inodes, pack_key(inum, 0))
        if val is None:
            return None
        ino = Inode.unpack(val)
        self.put(inum, ino)
        return ino

    def put(self, inum: int, ino: Inode) -> None:
        m = self.map
        if len(m) >= self.limit and inum not in m:
            # Drop the older half (dict order is insertion order).
            for k in list(m)[: self.limit // 2]:
                del m[k]
        m[inum] = ino

    def drop(self, inum: int) -> None:
        self.map.pop(inum, None)
