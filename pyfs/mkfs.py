"""Creating a filesystem: choosing the layout, wiping the device, writing superblocks.

Layout, in buckets: bucket 0 holds the primary superblock (block 0 is left
alone for boot loaders and partition tools), the journal follows from bucket
1, then the data buckets. The backup superblock sits in the device's last
whole block, so the bucket holding it is never used for data.
"""

from __future__ import annotations

import time
import uuid as uuidlib

from pyfs.device import Device
from pyfs.format import (
    BLOCK_SIZE,
    DEFAULT_BTREE_NODE_SIZE,
    MAGIC,
    MAX_BUCKET_SIZE,
    MAX_LABEL,
    MIN_BTREE_NODE_SIZE,
    MIN_BUCKET_SIZE,
    SB_OFFSET,
    Feature,
    SbState,
    Superblock,
    backup_sb_offset,
)
from pyfs.superblock import write_superblock

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

MIN_DATA_BUCKETS = 16
MIN_JOURNAL_BUCKETS = 8
MIN_JOURNAL_BYTES = 1 * MiB
MAX_JOURNAL_BYTES = 1 * GiB
MIN_GROUP_BUCKETS = 8
MAX_GROUP_BUCKETS = 1024
# Zeroed on block devices, where discard may not zero: covers every foreign
# signature detect_signature knows (btrfs's sits at 64 KiB + 64), and always
# lies inside bucket 0.
WIPE_HEAD_BYTES = MIN_BUCKET_SIZE


class MkfsError(ValueError):
    """The requested filesystem cannot be made; the message says why."""


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def _human(n: int) -> str:
    """Binary-unit size for messages: 3407872 -> '3.25 MiB'."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.6g} {unit}"
    return f"{n} bytes"


def default_bucket_size(device_size: int) -> int:
    # About 4096 buckets on small devices, so from 1 GiB up a bucket holds a
    # full 256 KiB btree node (and so a 64 KiB xattr value); capped at 2 MiB,
    # which bounds a 1 TiB device to 512K buckets.
    return _clamp(_next_pow2(device_size >> 12), MIN_BUCKET_SIZE, MAX_BUCKET_SIZE)


def _check_bucket_size(bucket_size: int) -> None:
    if not _pow2(bucket_size) or not MIN_BUCKET_SIZE <= bucket_size <= MAX_BUCKET_SIZE:
        raise MkfsError(f"bucket size {bucket_size} must be a power of two between "
                        f"{_human(MIN_BUCKET_SIZE)} and {_human(MAX_BUCKET_SIZE)}")


def _check_node_size(node_size: int, bucket_size: int) -> None:
    if not _pow2(node_size) or not MIN_BTREE_NODE_SIZE <= node_size <= bucket_size:
        raise MkfsError(f"btree node size {node_size} must be a power of two between "
                        f"{_human(MIN_BTREE_NODE_SIZE)} and the bucket size "
                        f"({_human(bucket_size)})")


def journal_buckets(device_size: int, bucket_size: int) -> int:
    """Journal length: ~1/128 of the device within [1 MiB, 1 GiB], whole buckets."""
    nbytes = _clamp(device_size // 128, MIN_JOURNAL_BYTES, MAX_JOURNAL_BYTES)
    return max(MIN_JOURNAL_BUCKETS, -(-nbytes // bucket_size))


def min_device_size(bucket_size: int) -> int:
    """Smallest device that holds bucket 0, the journal, MIN_DATA_BUCKETS and
    the backup superblock's bucket, for this bucket size."""
    # Near the minimum, device_size // 128 is far below 1 MiB, so the journal
    # is at its floor size.
    nj = journal_buckets(0, bucket_size)
    return (1 + nj + MIN_DATA_BUCKETS + 1) * bucket_size


def choose_layout(device_size: int, *, bucket_size: int | None = None,
                  btree_node_size: int | None = None) -> dict:
    """Pick every geometry field of a new superblock; raise MkfsError if impossible."""
    bs = default_bucket_size(device_size) if bucket_size is None else bucket_size
    _check_bucket_size(bs)
    ns = min(DEFAULT_BTREE_NODE_SIZE, bs) if btree_node_size is None else btree_node_size
    _check_node_size(ns, bs)
    nbuckets = device_size // bs
    nj = journal_buckets(device_size, bs)
    first_data = 1 + nj
    if nbuckets < first_data + MIN_DATA_BUCKETS + 1:
        raise MkfsError(f"device of {device_size} bytes ({_human(device_size)}) is too small: "
                        f"with {_human(bs)} buckets it must be at least "
                        f"{min_device_size(bs)} bytes ({_human(min_device_size(bs))})")
    return {
        "device_size": device_size,
        "bucket_size": bs,
        "btree_node_size": ns,
        "nbuckets": nbuckets,
        "journal_bucket": 1,
        "journal_nbuckets": nj,
        "first_data_bucket": first_data,
        "group_buckets": _clamp(nbuckets // 64, MIN_GROUP_BUCKETS, MAX_GROUP_BUCKETS),
        "backup_sb_offset": backup_sb_offset(device_size),
    }


def check_label(label: str) -> None:
    if len(label.encode("utf-8")) > MAX_LABEL:
        raise MkfsError(f"label {label!r} is longer than {MAX_LABEL} bytes")
    if "\0" in label:
        # Trailing NULs are padding on disk, so a label cannot contain one.
        raise MkfsError("label must not contain NUL characters")


def _wipe(dev: Device, layout: dict) -> None:
    """Make old contents unreadable: discard everything, and on a block device
    (where discard may be a no-op) zero whatever a reader would look at."""
    dev.discard(0, dev.size)
    if not dev.is_block:
        return
    zero = bytes(BLOCK_SIZE)
    bs = layout["bucket_size"]
    dev.pwrite(bytes(WIPE_HEAD_BYTES), 0)
    first_j = layout["journal_bucket"]
    for b in range(first_j, first_j + layout["journal_nbuckets"]):
        dev.pwrite(zero, b * bs)
    dev.pwrite(zero, layout["backup_sb_offset"])


def format_device(dev: Device, *, bucket_size: int | None = None,
                  btree_node_size: int | None = None, label: str = "",
                  uuid: bytes | uuidlib.UUID | None = None,
                  now_ns: int | None = None) -> Superblock:
    """Make a new, empty, clean filesystem on dev and return its superblock."""
    layout = choose_layout(dev.size, bucket_size=bucket_size, btree_node_size=btree_node_size)
    check_label(label)
    if uuid is None:
        uuid = uuidlib.uuid4()
    raw_uuid = uuid.bytes if isinstance(uuid, uuidlib.UUID) else bytes(uuid)
    if len(raw_uuid) != 16:
        raise MkfsError("uuid must be 16 bytes")
    now = time.time_ns() if now_ns is None else now_ns
    sb = Superblock(
        uuid=raw_uuid, label=label,
        **{k: v for k, v in layout.items() if k != "backup_sb_offset"},
        features=1 << Feature.backpointers,
        state=SbState.clean, clean_journal_seq=0, ctime_ns=now,
    )
    _wipe(dev, layout)
    write_superblock(dev, sb, flush=False, now_ns=now)
    dev.flush()
    return sb


# --------------------------------------------------------------------------
# Signatures of existing data, so mkfs can refuse to overwrite it.

BCACHEFS_MAGIC = uuidlib.UUID("c68573f6-4e1a-45ca-8265-f57f48ba6d81").bytes
_HEAD_BYTES = 65600 + 8           # enough for every signature below (btrfs is last)


def _ext_flavour(sb: bytes) -> str:
    """ext2, ext3 or ext4 from the feature words of an ext superblock at 1024."""
    def word(off: int) -> int:
        return int.from_bytes(sb[1024 + off:1024 + off + 4], "little")
    compat, incompat, ro_compat = word(0x5C), word(0x60), word(0x64)
    # extents, 64bit, flex_bg, mmp, inline_data | huge_file, gdt_csum,
    # dir_nlink, extra_isize, metadata_csum: features ext3 never had.
    if incompat & 0x83C0 or ro_compat & 0x478:
        return "ext4"
    return "ext3" if compat & 0x4 else "ext2"


def _at(buf: bytes, off: int, sig: bytes) -> bool:
    return buf[off:off + len(sig)] == sig


def _foreign_signature(head: bytes) -> str | None:
    """Name a non-pyfs signature in the first bytes of a device."""
    if _at(head, 0, b"LUKS\xba\xbe"):
        return "LUKS encrypted volume"
    if _at(head, 0, b"XFSB"):
        return "xfs filesystem"
    if _at(head, 65600, b"_BHRfS_M"):
        return "btrfs filesystem"
    if _at(head, SB_OFFSET + 24, BCACHEFS_MAGIC):
        return "bcachefs filesystem"
    if _at(head, 1080, b"\x53\xef"):
        return f"{_ext_flavour(head)} filesystem"
    if _at(head, 4086, b"SWAPSPACE2") or _at(head, 4086, b"SWAP-SPACE"):
        return "swap area"
    if _at(head, 32769, b"CD001"):
        return "iso9660 filesystem"
    boot_sig = _at(head, 510, b"\x55\xaa")
    if boot_sig and (_at(head, 54, b"FAT") or _at(head, 82, b"FAT")):
        return "vfat filesystem"
    if _at(head, 512, b"EFI PART"):
        return "GPT partition table"
    if boot_sig:
        return "DOS/MBR partition table or boot sector"
    return None


def detect_signature(dev: Device) -> str | None:
    """Describe existing data on dev (e.g. 'ext4 filesystem'), or None if it looks blank."""
    head = dev.pread(min(dev.size, _HEAD_BYTES), 0)
    if _at(head, SB_OFFSET, MAGIC):
        return "pyfs filesystem"
    if dev.size >= SB_OFFSET + 2 * BLOCK_SIZE:
        backup = backup_sb_offset(dev.size)
        if dev.pread(len(MAGIC), backup) == MAGIC:
            return "pyfs filesystem (backup superblock)"
    return _foreign_signature(head)
