"""The consistency check the t3 tests run after every workload: a thin wrapper
around pyfs fsck's check of a live engine (pyfs/fsck, check_engine).

check(eng) runs fsck's passes 3..12 over the mounted engine without changing
anything and returns the problems found, one line each (empty when
consistent): keys valid for their type, alloc keys and backpointers against
a recount, inodes, extents (with verify_data, every region's checksum),
directory entries and their hash slots, xattrs, root and lost+found,
reachability from the root, link counts, directory sizes and the orphan index.
"""

from __future__ import annotations

from pyfs.fsck import check_engine


def check(eng, verify_data: bool = True) -> list[str]:
    return check_engine(eng, verify_data=verify_data)
