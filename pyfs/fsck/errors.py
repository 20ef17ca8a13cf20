"""The table of fsck problems: stable id, name, severity, fix policy, summary.

One table generates the `Err` enum (as format.py's tables generate theirs);
docs/FSCK.md carries a copy that tests/t5_fsck_api.py keeps in sync. Never
renumber an entry: ids appear in output, corpus expect files and bug reports.

Severity:
  info   normal operation (journal replay, finishing a deletion a crash
         interrupted); shown with -v, never changes the exit status
  error  an inconsistency; fixed or not, it changes the exit status
  fatal  the check cannot go on (exit 8)

Policy (who may fix an error):
  preen  safe without asking: derived information is recomputed or an
         obviously dead reference dropped; -p fixes it
  ask    loses or moves something a human may care about; needs -y or a yes
  none   nothing to fix (or nothing fsck can do)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrInfo:
    id: int
    name: str
    severity: str       # info | error | fatal
    policy: str         # preen | ask | none
    pass_no: int        # the pass that reports it (0: before any pass)
    summary: str        # what it means and what fixing it does


_E = ErrInfo
ERROR_TABLE: list[ErrInfo] = [
    # 1: superblock and layout
    _E(1, "sb_primary_bad", "error", "preen", 1,
       "primary superblock invalid, backup good: the primary is rewritten from the backup"),
    _E(2, "sb_backup_bad", "error", "preen", 1,
       "backup superblock invalid or missing: it is rewritten from the primary"),
    _E(3, "sb_copies_differ", "error", "ask", 1,
       "both copies valid but with different geometry: the copy whose journal reads is "
       "kept and the other rewritten"),
    _E(4, "sb_none", "fatal", "none", 1,
       "no usable superblock (both copies bad, or the device is smaller than the filesystem)"),
    # 2: journal
    _E(10, "journal_replayed", "info", "none", 2,
       "the journal held entries newer than the btrees; they were replayed"),
    _E(11, "journal_tail_dropped", "info", "preen", 2,
       "entries after a torn or never-flushed entry were never acknowledged: ignored, and "
       "erased so that they cannot come back"),
    _E(12, "journal_entry_bad", "error", "ask", 2,
       "a journal entry needed for replay is missing or damaged although a later entry "
       "says it was durable; its keys are lost, replay continues around it"),
    _E(13, "journal_behind_clean", "error", "ask", 2,
       "the superblock says it was unmounted cleanly at a journal sequence the journal "
       "does not reach; the journal as found is used"),
    _E(14, "journal_key_bad", "error", "ask", 2,
       "a journal key cannot be replayed (bad btree, level or oversized value): skipped"),
    _E(15, "journal_roots_lost", "error", "ask", 2,
       "no valid journal entry although the filesystem was unmounted cleanly: the btree "
       "roots are gone; every btree is rebuilt from the newest nodes a scan of the device "
       "finds (files whose names are lost go to lost+found)"),
    # 2: btree topology
    _E(20, "btree_root_bad", "error", "ask", 2,
       "a btree root cannot be read; the btree is rebuilt from what can be salvaged"),
    _E(21, "btree_node_bad", "error", "ask", 2,
       "a node fails validation (header, bset checksum, key order); the keys of its good "
       "bsets are salvaged and the btree rebuilt"),
    _E(22, "btree_node_mismatch", "error", "ask", 2,
       "a node's header does not match its pointer (sequence, btree): the btree is rebuilt"),
    _E(23, "btree_node_range", "error", "ask", 2,
       "child key ranges do not tile the parent (gap, overlap, wrong min/max): the btree "
       "is rebuilt"),
    _E(24, "btree_key_range", "error", "ask", 2,
       "a node holds keys outside its range: those keys are dropped, the btree rebuilt"),
    _E(25, "btree_ptr_bad", "error", "ask", 2,
       "a child pointer is malformed or points outside the btree buckets: the btree is "
       "rebuilt"),
    _E(26, "btree_region_twice", "error", "ask", 2,
       "two pointers lead to the same node region: the btree is rebuilt"),
    _E(27, "btree_level_bad", "error", "ask", 2,
       "a child's level is not one below its parent's: the btree is rebuilt"),
    _E(28, "btree_interior_empty", "error", "ask", 2,
       "an interior node has no children: the btree is rebuilt"),
    # 3: keys valid for their type
    _E(30, "key_wrong_type", "error", "ask", 3,
       "a key's value type does not belong in its btree: the key is dropped"),
    _E(31, "inode_key_bad", "error", "ask", 3,
       "an inode key is malformed (low half set, reserved or too large inode number) or "
       "its value does not decode: dropped"),
    _E(32, "fs_info_bad", "error", "preen", 3,
       "the filesystem info record does not decode: rewritten"),
    _E(33, "orphan_key_bad", "error", "preen", 3,
       "an orphan index entry is malformed: dropped"),
    _E(34, "dirent_bad", "error", "ask", 3,
       "a directory entry does not decode or has out-of-range fields: replaced by a "
       "tombstone (probe chains stay intact)"),
    _E(35, "dirent_name_bad", "error", "ask", 3,
       "a directory entry's name is empty, too long, '.', '..' or contains '/' or NUL: "
       "renamed"),
    _E(36, "extent_bad", "error", "ask", 3,
       "an extent does not decode or its region is outside the data buckets, crosses a "
       "bucket or is empty: dropped"),
    _E(37, "extent_live_range", "error", "ask", 3,
       "an extent's live blocks run past its region: trimmed to the region"),
    _E(38, "xattr_bad", "error", "ask", 3,
       "an xattr does not decode (name length, namespace, fields): replaced by a tombstone"),
    _E(39, "alloc_key_bad", "error", "preen", 3,
       "an alloc key is malformed or for a bucket outside the data buckets: dropped (the "
       "alloc pass recreates what is needed)"),
    _E(40, "backpointer_bad", "error", "preen", 3,
       "a backpointer is malformed: dropped (the backpointer pass recreates it)"),
    # 4: allocation
    _E(50, "alloc_sectors_wrong", "error", "preen", 4,
       "a bucket's alloc key has the wrong sector count or is missing: rewritten from the "
       "recount of extents and nodes"),
    _E(51, "alloc_type_wrong", "error", "preen", 4,
       "a bucket's data type or state disagrees with what lives in it: rewritten"),
    _E(52, "alloc_gen_wrong", "error", "preen", 4,
       "a bucket's generation differs from its extents, whose data verifies: the bucket "
       "takes their generation"),
    _E(53, "extent_stale", "error", "preen", 4,
       "an extent's generation is not its bucket's and its data fails its checksum (the "
       "bucket was reused): dropped"),
    _E(54, "extent_gen_wrong", "error", "preen", 4,
       "an extent's generation differs from its bucket's but its data verifies: the "
       "extent takes the bucket's generation"),
    _E(55, "region_conflict", "error", "ask", 4,
       "an extent's data overlaps a btree node or another extent's data: the copy that "
       "fails its checksum is dropped, a verified shared region is copied"),
    # 5: backpointers
    _E(60, "backpointer_missing", "error", "preen", 5,
       "an extent or node has no backpointer: created"),
    _E(61, "backpointer_dangling", "error", "preen", 5,
       "a backpointer points at no extent or node: dropped"),
    _E(62, "backpointer_wrong", "error", "preen", 5,
       "a backpointer's fields disagree with its extent or node: rewritten"),
    # 6: inodes
    _E(70, "inode_mode_bad", "error", "ask", 6,
       "an inode's mode has an unknown file type or stray bits: the type is inferred "
       "from what the inode owns"),
    _E(71, "root_not_dir", "error", "ask", 6,
       "the root inode is not a directory: it is made one (its file data is dropped)"),
    _E(72, "symlink_bad", "error", "ask", 6,
       "a symlink's size differs from its target, or the target is empty or too long: "
       "the size is fixed, an unusable symlink deleted"),
    _E(73, "inode_tail_bad", "error", "preen", 6,
       "an inode that is not a symlink carries inline bytes: dropped"),
    _E(74, "inode_size_bad", "error", "ask", 6,
       "a file size beyond the maximum, or a size on a device/fifo/socket: fixed"),
    # 7: extents
    _E(80, "extent_no_inode", "error", "ask", 7,
       "extents of an inode that does not exist: a regular file is recreated to hold "
       "them (and reattached in lost+found)"),
    _E(81, "extent_bad_owner", "error", "ask", 7,
       "extents of an inode that is not a regular file or symlink: dropped"),
    _E(82, "extent_overlap", "error", "ask", 7,
       "extents of one file overlap: the earlier one is trimmed around the later one"),
    _E(83, "extent_csum_bad", "error", "ask", 7,
       "(-c) an extent's data fails its checksum: the checksum is recomputed so the "
       "file reads back (with the damage) instead of failing"),
    _E(84, "extent_past_eof", "error", "ask", 7,
       "extents reach past i_size: the size grows to cover them"),
    _E(85, "inode_blocks_wrong", "error", "preen", 7,
       "i_blocks disagrees with the file's extents: fixed"),
    _E(86, "truncate_completed", "info", "preen", 7,
       "a truncate a crash interrupted was finished"),
    # 8: dirents
    _E(90, "dirent_dangling", "error", "preen", 8,
       "a directory entry names an inode that does not exist: removed"),
    _E(91, "dirent_dtype_wrong", "error", "preen", 8,
       "a directory entry's d_type differs from its inode's type: fixed"),
    _E(92, "dirent_slot_wrong", "error", "preen", 8,
       "a directory entry is not where its name hashes to (wrong hash, slot before its "
       "home or a gap in its probe chain): moved"),
    _E(93, "dirent_dup_name", "error", "ask", 8,
       "two entries of a directory have the same name: the later one is renamed"),
    _E(94, "dirent_owner_not_dir", "error", "ask", 8,
       "directory entries owned by an inode that is not a directory: removed"),
    _E(95, "dir_missing", "error", "ask", 8,
       "directory entries of a directory inode that does not exist: the directory is "
       "recreated (and reattached in lost+found)"),
    _E(96, "dirent_to_root", "error", "ask", 8,
       "a directory entry names the root directory: removed"),
    # 9: xattrs
    _E(100, "xattr_no_inode", "error", "preen", 9,
       "xattrs of an inode that does not exist: removed"),
    _E(101, "xattr_slot_wrong", "error", "preen", 9,
       "an xattr is not where its name hashes to: moved"),
    _E(102, "xattr_dup_name", "error", "ask", 9,
       "an inode has two xattrs of the same name: the later one is removed"),
    # 10: root and lost+found
    _E(110, "root_missing", "error", "ask", 10,
       "the root directory does not exist: recreated"),
    _E(111, "lost_found_missing", "error", "preen", 10,
       "/lost+found does not exist: created"),
    _E(112, "lost_found_not_dir", "error", "ask", 10,
       "/lost+found is not a directory: its entry is unlinked (the inode goes to the new "
       "lost+found) and a directory created"),
    # 11: directory structure
    _E(120, "dir_unreachable", "error", "ask", 11,
       "a directory is not reachable from the root: reattached in lost+found as #INUM"),
    _E(121, "dir_loop", "error", "ask", 11,
       "directories form a loop detached from the root: the loop is cut and reattached "
       "in lost+found"),
    _E(122, "dir_multiple_parents", "error", "ask", 11,
       "a directory has entries in more than one place: the extra entries are removed"),
    _E(123, "inode_unattached", "error", "ask", 11,
       "an inode with data is in no directory: reattached in lost+found as #INUM"),
    _E(124, "inode_unattached_empty", "error", "preen", 11,
       "an empty inode is in no directory and not an orphan: deleted"),
    # 12: link counts and the orphan index
    _E(130, "nlink_wrong", "error", "preen", 12,
       "a file's link count differs from the entries naming it: fixed"),
    _E(131, "dir_nlink_wrong", "error", "preen", 12,
       "a directory's link count is not 2 + its subdirectories: fixed"),
    _E(132, "dir_size_wrong", "error", "preen", 12,
       "a directory's size is not its number of entries: fixed"),
    _E(133, "dir_parent_wrong", "error", "preen", 12,
       "a directory's parent field is not the directory holding it: fixed"),
    _E(134, "orphan_bad", "error", "preen", 12,
       "an orphan index entry for a missing or still linked inode: removed"),
    _E(135, "orphan_completed", "info", "preen", 12,
       "an unlinked inode a crash left in the orphan index was deleted"),
    _E(136, "inode_gen_limit", "error", "preen", 12,
       "an inode generation is not below the generation limit: the limit is raised"),
    _E(137, "inode_count_wrong", "error", "preen", 12,
       "the filesystem info record's inode count (what statfs reports) differs from the "
       "inodes in the inodes btree: it is recounted"),
    # anywhere
    _E(250, "internal_error", "fatal", "none", 0,
       "a pass failed unexpectedly; nothing more is checked or changed"),
]

Err = enum.IntEnum("Err", [(e.name, e.id) for e in ERROR_TABLE])
INFO: dict[int, ErrInfo] = {e.id: e for e in ERROR_TABLE}

assert len(INFO) == len(ERROR_TABLE), "duplicate fsck error ids"
assert all(e.severity in ("info", "error", "fatal") for e in ERROR_TABLE)
assert all(e.policy in ("preen", "ask", "none") for e in ERROR_TABLE)
assert all(e.policy == "none" for e in ERROR_TABLE if e.severity == "fatal")

PASS_NAMES = {
    0: "setup",
    1: "superblock and layout",
    2: "journal and btree topology",
    3: "keys valid for their type",
    4: "allocation info",
    5: "backpointers",
    6: "inodes",
    7: "extents",
    8: "directory entries",
    9: "xattrs",
    10: "root and lost+found",
    11: "directory structure",
    12: "link counts and orphans",
}


def table_markdown() -> str:
    """The error table as docs/FSCK.md shows it."""
    rows = ["| id | name | severity | fix | pass | meaning |", "|---|---|---|---|---|---|"]
    for e in ERROR_TABLE:
        rows.append(f"| {e.id} | `{e.name}` | {e.severity} | {e.policy} | {e.pass_no} | "
                    f"{e.summary} |")
    return "\n".join(rows)
