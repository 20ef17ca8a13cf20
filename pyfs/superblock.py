"""Reading and writing the two superblock copies.

The primary lives at SB_OFFSET and the backup in the last whole block of the
filesystem. Readers prefer the primary and fall back to the backup with a
warning; writers update the primary first, then the backup, so a crash in the
middle always leaves at least one intact copy.
"""

from __future__ import annotations

import re
import struct
import time

from pyfs.device import Device
from pyfs.format import (
    BLOCK_SIZE,
    SB_FIELDS,
    SB_FMT,
    SB_OFFSET,
    SB_READ_SIZE,
    SB_REGION,
    SB_SIZE,
    FormatError,
    Superblock,
    backup_sb_offset,
)


def sb_field_layout() -> list[tuple[str, str, int, int]]:
    """(name, struct code, byte offset, size) of every packed superblock field."""
    codes = re.findall(r"\d*[a-zA-Z?]", SB_FMT.lstrip("<>=!@"))
    assert len(codes) == len(SB_FIELDS)
    out, off = [], 0
    for name, code in zip(SB_FIELDS, codes, strict=True):
        size = struct.calcsize("<" + code)
        out.append((name, code, off, size))
        off += size
    assert off == SB_SIZE
    return out


# Where device_size sits in a packed superblock, so that a primary with a bad
# checksum can still hint where the backup of a grown device is.
_DEVICE_SIZE_OFF = next(off for n, _, off, _ in sb_field_layout() if n == "device_size")


def _read_copy(dev: Device, offset: int) -> Superblock:
    """Read and fully validate the superblock copy at offset."""
    if offset < 0 or offset + SB_SIZE > dev.size:
        raise FormatError("superblock: beyond the end of the device", offset)
    raw = dev.pread(min(SB_READ_SIZE, dev.size - offset), offset)
    return Superblock.unpack(raw, offset, device_size=dev.size)


def _backup_candidates(dev: Device) -> list[int]:
    """Offsets where a backup may be: the device's last block, then the last
    block of the size the (possibly damaged) primary records, if different."""
    offsets = []
    if dev.size >= SB_OFFSET + 2 * BLOCK_SIZE:
        offsets.append(backup_sb_offset(dev.size))
    if dev.size >= SB_OFFSET + SB_SIZE:
        raw = dev.pread(8, SB_OFFSET + _DEVICE_SIZE_OFF)
        if len(raw) == 8:
            hinted = backup_sb_offset(struct.unpack("<Q", raw)[0])
            if SB_OFFSET < hinted and hinted + SB_SIZE <= dev.size and hinted not in offsets:
                offsets.append(hinted)
    return offsets


def _why(err: FormatError) -> str:
    return err.what.removeprefix("superblock: ")


def read_superblock(dev: Device) -> tuple[Superblock, list[str]]:
    """Return the valid superblock and warnings about any copy that was not used.

    Raises FormatError when neither copy is usable.
    """
    if dev.size < SB_OFFSET + SB_SIZE:
        raise FormatError(f"no pyfs superblock: the device ({dev.size} bytes) is too "
                          "small to hold one")
    try:
        return _read_copy(dev, SB_OFFSET), []
    except FormatError as e:
        primary_err = e
    failures = [f"primary at byte {SB_OFFSET}: {_why(primary_err)}"]
    for off in _backup_candidates(dev):
        try:
            sb = _read_copy(dev, off)
        except FormatError as e:
            failures.append(f"backup at byte {off}: {_why(e)}")
            continue
        if sb.backup_offset != off:
            # A stale copy left by some other, differently sized filesystem.
            failures.append(f"backup at byte {off}: belongs to a filesystem of "
                            f"{sb.device_size} bytes")
            continue
        return sb, [f"primary superblock at byte {SB_OFFSET} is bad ({_why(primary_err)}); "
                    f"using the backup at byte {off}"]
    if len(failures) == 1:
        failures.append(f"no backup: device of {dev.size} bytes is too small to hold one")
    # The message names every offset it tried, so the error carries none.
    raise FormatError("no valid superblock: " + "; ".join(failures))


def write_superblock(dev: Device, sb: Superblock, *, flush: bool = True,
                     now_ns: int | None = None) -> None:
    """Write both copies of sb (bumping write_count and wtime_ns).

    With flush, the primary is made durable before the backup is touched, so a
    crash can tear at most one copy.
    """
    problem = sb.validate(dev.size)
    if problem:
        raise FormatError(f"superblock: refusing to write: {problem}")
    sb.write_count = (sb.write_count + 1) & 0xFFFFFFFF     # a u32 on disk
    sb.wtime_ns = time.time_ns() if now_ns is None else now_ns
    block = sb.pack().ljust(SB_REGION, b"\0")
    dev.pwrite(block, SB_OFFSET)
    if flush:
        dev.flush()
    dev.pwrite(block, sb.backup_offset)
    if flush:
        dev.flush()
