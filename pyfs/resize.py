"""Changing a filesystem after mkfs: growing it (`pyfs resize`) and its label
and UUID (`pyfs tune`). Both work on an unmounted image only (they take the
exclusive lock, which a mount holds) and change nothing but the superblock
copies, plus, for a grow, the image file's size and the old backup block.

Growing needs no allocator change on disk: the allocator treats a bucket
without an alloc key as free and sizes itself from the superblock's
`nbuckets` at mount, so buckets past the old end are free space once the
superblock says they exist. The backup superblock moves to the new last
block. Order, so that a crash at any point leaves a valid filesystem:

1. extend the image file (the old superblocks still describe the old size;
   a bigger device is fine for them);
2. write the new backup superblock at the new end (nothing reads it while the
   primary still names the old size);
3. write both copies, primary first (write_superblock): from here on the
   filesystem is the new size;
4. zero the old backup block, which now lies in a free data bucket (a stale
   superblock there would only confuse tools that scan for signatures).

The journal keeps its size and the allocation groups their width (more groups
cover the new buckets); shrinking would have to move data and is refused.
"""

from __future__ import annotations

import dataclasses
import os
import uuid as uuidlib

from .device import Device, FileDevice
from .format import BLOCK_SIZE, SB_REGION, Feature, FormatError, SbState, Superblock
from .superblock import read_superblock, write_superblock


class ResizeError(Exception):
    """The change cannot be made; the message says why (one line)."""


def _usable_superblock(dev: Device) -> Superblock:
    try:
        sb, warnings = read_superblock(dev)
    except FormatError as e:
        raise ResizeError(f"{dev.path}: not a usable pyfs filesystem: {e}") from None
    if warnings:
        raise ResizeError(f"{dev.path}: a superblock copy is damaged ({warnings[0]}); "
                          "run fsck -y first")
    return sb


def grow(dev: Device, new_size: int | None = None) -> tuple[Superblock, Superblock]:
    """Grow the filesystem on dev (open exclusively, read-write) to new_size
    bytes, by default the whole device. Returns (old, new) superblocks; they
    are equal when there was nothing to do."""
    sb = _usable_superblock(dev)
    if sb.state != SbState.clean:
        raise ResizeError(f"{dev.path} was not unmounted cleanly: mount and unmount it "
                          "(or run fsck -y) first")
    target = dev.size if new_size is None else new_size
    if target < sb.device_size:
        raise ResizeError(f"{dev.path}: cannot shrink the filesystem from {sb.device_size} "
                          f"to {target} bytes: pyfs can only grow")
    if target == sb.device_size:
        return sb, sb
    if target > dev.size:
        _extend(dev, target)
    new = dataclasses.replace(sb, device_size=target, nbuckets=target // sb.bucket_size)
    problem = new.validate(dev.size)
    if problem:
        raise ResizeError(f"{dev.path}: cannot grow to {target} bytes: {problem}")
    old_backup = sb.backup_offset
    dev.pwrite(new.pack().ljust(SB_REGION, b"\0"), new.backup_offset)
    dev.flush()
    write_superblock(dev, new)
    if old_backup != new.backup_offset:
        dev.pwrite(bytes(BLOCK_SIZE), old_backup)
        dev.flush()
    return sb, new


def _extend(dev: Device, size: int) -> None:
    """Make an image file size bytes long (sparse), through the fd holding its lock."""
    if dev.is_block or not isinstance(dev, FileDevice):
        raise ResizeError(f"{dev.path} is a block device of {dev.size} bytes, smaller than "
                          f"{size}: grow the device first")
    try:
        os.ftruncate(dev.fd, size)
    except (OSError, OverflowError) as e:
        why = getattr(e, "strerror", None) or "too large"
        raise ResizeError(f"{dev.path}: cannot extend the image to {size} bytes: "
                          f"{why}") from None
    dev.size = size


def parse_uuid(text: str) -> uuidlib.UUID:
    if text == "random":
        return uuidlib.uuid4()
    try:
        return uuidlib.UUID(text)
    except ValueError:
        raise ResizeError(f"bad UUID {text!r}: expected random or a UUID such as "
                          f"{uuidlib.UUID(int=0x1234)}") from None


def tune(dev: Device, label: str | None = None, uuid: uuidlib.UUID | None = None,
         ) -> tuple[Superblock, Superblock]:
    """Set the label and/or UUID. The name hashes of every directory and xattr
    table are seeded from the UUID given at mkfs; the first UUID change keeps
    that seed in the superblock (Feature.name_seed) so nothing is rehashed."""
    sb = _usable_superblock(dev)
    old = dataclasses.replace(sb)
    if label is not None:
        sb.label = label
    if uuid is not None and uuid.bytes != sb.uuid:
        if not sb.features & (1 << Feature.name_seed):
            sb.name_seed = sb.hash_seed
            sb.features |= 1 << Feature.name_seed
        sb.uuid = uuid.bytes
    if (sb.label, sb.uuid) != (old.label, old.uuid):
        write_superblock(dev, sb)
    return old, sb
