"""Pass 1: the two superblock copies and the layout they describe.

Superblock.unpack validates every field against the device (layout included:
bucket and node sizes, journal position, first data bucket, device size), so
this pass decides which copy to trust and repairs the other:

- both valid with the same geometry: fine (counters and times may differ
  after a crash between the two writes);
- one valid: the other is rewritten from it;
- both valid, different geometry: the copy under which the journal holds
  valid entries wins (the primary on a tie) and the other is rewritten;
- neither: nothing can be checked (exit 8).
"""

from __future__ import annotations

import struct

from ..format import (
    SB_OFFSET,
    SB_READ_SIZE,
    SB_SIZE,
    FormatError,
    Superblock,
    backup_sb_offset,
)
from ..journal.read import RingReader
from ..superblock import sb_field_layout, write_superblock
from .errors import Err

GEOMETRY = ("uuid", "bucket_size", "btree_node_size", "nbuckets", "device_size",
            "first_data_bucket", "journal_bucket", "journal_nbuckets", "group_buckets",
            "features", "version", "block_size", "name_seed")
_DEVICE_SIZE_AT = next(off for n, _c, off, _s in sb_field_layout() if n == "device_size")


def _read(dev, offset: int) -> tuple[Superblock | None, str]:
    if offset < 0 or offset + SB_SIZE > dev.size:
        return None, "beyond the end of the device"
    try:
        raw = dev.pread(min(SB_READ_SIZE, dev.size - offset), offset)
        return Superblock.unpack(raw, offset, device_size=dev.size), ""
    except FormatError as e:
        return None, e.what.removeprefix("superblock: ")


def _backup_offsets(dev, primary: Superblock | None) -> list[int]:
    out = [primary.backup_offset] if primary is not None else []
    if dev.size >= SB_OFFSET + 2 * 4096 and backup_sb_offset(dev.size) not in out:
        out.append(backup_sb_offset(dev.size))
    if primary is None and dev.size >= SB_OFFSET + SB_SIZE:
        hinted = backup_sb_offset(struct.unpack("<Q", dev.pread(
            8, SB_OFFSET + _DEVICE_SIZE_AT))[0])
        if SB_OFFSET < hinted and hinted + SB_SIZE <= dev.size and hinted not in out:
            out.append(hinted)
    return out


def _same_geometry(a: Superblock, b: Superblock) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in GEOMETRY)


def _journal_entries(dev, sb: Superblock) -> int:
    try:
        r = RingReader(dev, sb)
        r.scan(range(r.nbuckets))
    except Exception:
        return 0
    return len(r.good)


def check_superblock(dev, rep) -> Superblock:
    """Return the superblock to use; report (and repair) the copies."""
    if dev.size < SB_OFFSET + SB_SIZE:
        rep.fatal(Err.sb_none, f"device of {dev.size} bytes is too small to hold a superblock")
    primary, perr = _read(dev, SB_OFFSET)
    backup, berr, boff = None, "", None
    for off in _backup_offsets(dev, primary):
        sb, why = _read(dev, off)
        if sb is not None and sb.backup_offset != off:
            sb, why = None, f"belongs to a filesystem of {sb.device_size} bytes"
        if sb is not None:
            backup, boff = sb, off
            break
        berr, boff = berr or why, boff if boff is not None else off
    if primary is None and backup is None:
        where = f"; backup at byte {boff}: {berr}" if boff is not None else "; no backup found"
        rep.fatal(Err.sb_none, f"no valid superblock: primary at byte {SB_OFFSET}: {perr}"
                               f"{where}")
    if primary is None:
        rep.problem(Err.sb_primary_bad, f"primary superblock at byte {SB_OFFSET}: {perr}; "
                    f"the backup at byte {boff} is good",
                    lambda: write_superblock(dev, backup))
        return backup
    if backup is None:
        rep.problem(Err.sb_backup_bad, f"backup superblock at byte {primary.backup_offset}: "
                    f"{berr or 'missing'}", lambda: write_superblock(dev, primary))
        return primary
    if _same_geometry(primary, backup):
        return primary
    use, other = primary, "backup"
    if _journal_entries(dev, backup) > _journal_entries(dev, primary):
        use, other = backup, "primary"
    diff = [f for f in GEOMETRY if getattr(primary, f) != getattr(backup, f)]
    rep.problem(Err.sb_copies_differ, f"superblock copies differ in {', '.join(diff)}; "
                f"the {other} copy is rewritten", lambda: write_superblock(dev, use))
    return use
