"""Offline inspection of an image: btree keys and nodes, journal entries.

`pyfs dump` lists a btree's keys (as `bcachefs list` does) or its node tree;
`pyfs journal` lists the journal entries a mount would replay (as `bcachefs
list_journal` does). Both open the image read-only without taking the lock,
so they work on a mounted image too (showing what is on disk).

Dumping mounts the image with a read-only Engine, which replays the journal
in memory. Replay can split, merge or compact nodes, and those writes must
not reach the image: the engine works on an OverlayDevice that keeps every
write in memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from .device import Device, open_device
from .format import (
    MAX_KEY,
    ZERO_KEY,
    BtreeId,
    FormatError,
    key_to_text,
    pack_key,
    value_to_text,
)


class InspectError(Exception):
    """The image cannot be inspected; the message says why (one line)."""


# --------------------------------------------------------------------------
# A copy-on-write view of a device


# --------------------------------------------------------------------------
# Opening


def open_image(path: str) -> Device:
    """The image, read-only and without the exclusive lock."""
    try:
        return open_device(path, read_only=True, exclusive=False)
    except OSError as e:
        raise InspectError(e.strerror or str(e)) from None


def mount_readonly(dev: Device):
    """A read-only Engine on dev; journal replay happens in memory only."""
    from .btree.tree import BtreeError
    from .engine import Engine, MountError
    from .journal.read import JournalError
    try:
        return Engine(dev, read_only=True)     # replays onto an in-memory overlay
    except (MountError, BtreeError, JournalError, FormatError) as e:
        raise InspectError(f"{dev.path}: not a usable pyfs filesystem: {e}") from None


# --------------------------------------------------------------------------
# Arguments

_POS = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
_U64 = (1 << 64) - 1


def parse_pos(text: str) -> bytes:
    """'HI:LO' (decimal u64s, 'max' for all ones) -> a packed key."""
    t = text.strip().lower()
    if t in ("max", "u64_max"):
        return MAX_KEY
    t = t.replace("max", str(_U64))
    m = _POS.fullmatch(t)
    if m is None:
        raise InspectError(f"bad position {text!r}: expected HI:LO, e.g. 4096:0")
    hi, lo = int(m[1]), int(m[2])
    if hi > _U64 or lo > _U64:
        raise InspectError(f"bad position {text!r}: each part must fit 64 bits")
    return pack_key(hi, lo)


def btree_id(name: str) -> int:
    try:
        return BtreeId[name.strip().lower()]
    except KeyError:
        names = ", ".join(b.name for b in BtreeId)
        raise InspectError(f"unknown btree {name!r}; one of: {names}") from None


# --------------------------------------------------------------------------
# Listing


def key_line(key: bytes, val: bytes) -> str:
    try:
        text = value_to_text(val)
    except (FormatError, ValueError) as e:
        text = f"(bad value: {e}) {val[:32].hex()}"
    return f"{key_to_text(key)} {text}"


def dump_keys(eng, bid: int, start: bytes = ZERO_KEY, end: bytes = MAX_KEY) -> Iterator[str]:
    """One line per live key of btree bid in [start, end]: `hi:lo type fields`."""
    if start > end:
        raise InspectError(f"start {key_to_text(start)} is after end {key_to_text(end)}")
    for k, v in eng.btrees.iter(bid, start, end):
        yield key_line(k, v)


def dump_nodes(eng, bid: int) -> str:
    """The node tree of btree bid, parents before children (BtreeSet.to_text)."""
    if eng.btrees.roots[bid] is None:
        return f"{BtreeId(bid).name}: no root (never mounted read-write)"
    return eng.btrees.to_text(bid)


def journal_lines(dev: Device, verbose: bool = False) -> Iterator[str]:
    """The entries a mount would replay (last_seq .. newest), then a summary."""
    from .journal.read import JournalError, read_journal
    from .superblock import read_superblock
    try:
        sb, _warnings = read_superblock(dev)
    except FormatError as e:
        raise InspectError(f"{dev.path}: not a usable pyfs filesystem: {e}") from None
    start = sb.journal_bucket * sb.bucket_size
    try:
        scan = read_journal(dev, start, sb.bucket_size, sb.journal_nbuckets)
    except JournalError as e:
        raise InspectError(f"{dev.path}: {e}") from None
    for e in scan.entries:
        yield e.to_text()
        if verbose:
            for b, lv, k, v in e.keys:
                name = BtreeId(b).name + (f" L{lv}" if lv else "")
                yield f"  {name} {key_line(k, v) if v else key_to_text(k) + ' delete'}"
    if scan.newest is None:
        yield "journal empty"
        return
    first, newest = scan.entries[0], scan.newest
    nkeys = sum(len(e.keys) for e in scan.entries)
    yield (f"{len(scan.entries)} entries, seq {first.seq}..{newest.seq}, {nkeys} keys; "
           f"ring {sb.journal_nbuckets} x {sb.bucket_size} bytes at byte {start}, "
           f"head at ring offset {scan.head}; journal ends: {scan.end_reason}")
