"""Offline inspection of an image: btree keys and nodes, journal entries.

`pyfs dump` lists a btree's keys (as `bcachefs list` does) or its node tree;
`pyfs journal` lists the journal entries a mount would replay (as `bcachefs
list_journal` does). Values are decoded: modes as `ls -l` shows them, times as
dates, names and xattr values as text (`--raw` gives the fields as stored).

Both open the image read-only without taking the lock, so they work on a
mounted image too. Given the mount point of a pyfs mount instead of an image,
they first ask the daemon to make everything it committed durable (its
journal), then read its image the same way: what is on disk then, without
disturbing the mount. A busy mount keeps writing meanwhile, so a long listing
may meet a node rewritten under it and fail; running it again helps.

Dumping mounts the image with a read-only Engine, which replays the journal
in memory. Replay can split, merge or compact nodes, and those writes must
not reach the image: the engine works on an OverlayDevice that keeps every
write in memory.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from collections.abc import Iterator

from .device import Device, open_device
from .format import (
    MAX_KEY,
    ZERO_KEY,
    Alloc,
    AllocFlag,
    Backpointer,
    BtreeId,
    DataType,
    Dirent,
    FormatError,
    Inode,
    KeyType,
    Xattr,
    key_to_text,
    pack_key,
    unpack_key,
    value_to_text,
)


class InspectError(Exception):
    """The image cannot be inspected; the message says why (one line)."""


# --------------------------------------------------------------------------
# A copy-on-write view of a device


# --------------------------------------------------------------------------
# Opening


def image_of(target: str) -> str:
    """IMAGE, or the image of the pyfs mount on MOUNTPOINT after the daemon
    made everything committed durable (see the module docstring)."""
    if not os.path.isdir(target):
        return target
    from .mount import MountFailed, read_pid_file, require_pyfs_mount, sync
    try:
        e = require_pyfs_mount(target)
        sync(e.mountpoint)
    except MountFailed as err:
        raise InspectError(str(err)) from None
    info = read_pid_file(e.mountpoint)
    return info["image"] if info else e.source


def open_image(path: str) -> Device:
    """The image (or a pyfs mount point's), read-only, without the exclusive lock."""
    path = image_of(path)
    try:
        return open_device(path, read_only=True, exclusive=False)
    except OSError as e:
        raise InspectError(e.strerror or str(e)) from None


def mount_readonly(dev: Device):
    """A read-only Engine on dev; journal replay happens in memory only."""
    from .btree.cache import BtreeError
    from .engine import Engine
    from .recovery import MountError
    try:
        return Engine(dev, read_only=True)     # replays onto an in-memory overlay
    except (MountError, BtreeError, FormatError) as e:
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


def key_line(key: bytes, val: bytes, raw: bool = False) -> str:
    try:
        text = value_to_text(val) if raw else decoded(val)
    except (FormatError, ValueError) as e:
        text = f"(bad value: {e}) {val[:32].hex()}"
    return f"{key_to_text(key)} {text}"


def dump_keys(eng, bid: int, start: bytes = ZERO_KEY, end: bytes = MAX_KEY,
              raw: bool = False) -> Iterator[str]:
    """One line per live key of btree bid in [start, end]: `hi:lo type fields`."""
    if start > end:
        raise InspectError(f"start {key_to_text(start)} is after end {key_to_text(end)}")
    for k, v in eng.btrees.iter(bid, start, end):
        yield key_line(k, v, raw)


# --------------------------------------------------------------------------
# Decoding values for people


def when(ns: int) -> str:
    """Nanoseconds since the epoch as a UTC date with all nine digits."""
    try:
        t = datetime.datetime.fromtimestamp(ns // 10**9, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{ns}ns"
    return f"{t:%Y-%m-%d %H:%M:%S}.{ns % 10**9:09d}"


def text(name: bytes) -> str:
    """A name as readable text in quotes: bytes that are not printable UTF-8
    appear as \\xNN."""
    s = name.decode("utf-8", "surrogateescape")
    out = []
    for ch in s:
        if "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable() and ch not in "'\\":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode() if ch != "'" else "\\'")
    return "'" + "".join(out) + "'"


def _inode(v: bytes) -> str:
    i = Inode.unpack(v)
    parts = [f"mode={stat.filemode(i.mode)} ({i.mode:06o})", f"uid={i.uid}", f"gid={i.gid}",
             f"nlink={i.nlink}", f"size={i.size}", f"blocks={i.blocks}"]
    if i.flags:
        parts.append(f"flags={i.flags:#x}")
    parts += [f"{n}={when(getattr(i, n + '_ns'))}" for n in ("atime", "mtime", "ctime", "btime")]
    parts += [f"gen={i.generation}", f"parent={i.parent}"]
    if i.rdev:
        parts.append(f"rdev={os.major(i.rdev)}:{os.minor(i.rdev)}")
    if i.tail:
        parts.append(f"target={text(i.tail)}")
    return " ".join(parts)


_D_TYPES = {stat.S_IFREG >> 12: "file", stat.S_IFDIR >> 12: "dir", stat.S_IFLNK >> 12: "symlink",
            stat.S_IFCHR >> 12: "chardev", stat.S_IFBLK >> 12: "blockdev",
            stat.S_IFIFO >> 12: "fifo", stat.S_IFSOCK >> 12: "socket"}


def _dirent(v: bytes) -> str:
    d = Dirent.unpack(v)
    if not d.inum and not d.tail:
        return f"tombstone home={d.hash}"
    kind = _D_TYPES.get(d.d_type, f"type {d.d_type}")
    return f"{text(d.tail)} -> {d.inum} ({kind}) home={d.hash}"


def _xattr(v: bytes) -> str:
    x = Xattr.unpack(v)
    if not x.name_len:
        return f"tombstone home={x.hash}"
    name, value = x.tail[:x.name_len], x.tail[x.name_len:]
    shown = text(value[:64]) + ("..." if len(value) > 64 else "")
    return f"{text(name)} = {shown} ({len(value)} bytes) home={x.hash}"


def _alloc(v: bytes) -> str:
    a = Alloc.unpack(v)
    flags = [f.name for f in AllocFlag if a.flags & (1 << f.value)]
    kind = DataType(a.data_type).name if a.data_type in DataType._value2member_map_ \
        else f"type {a.data_type}"
    return (f"{kind} gen={a.gen} dirty_sectors={a.dirty_sectors} "
            f"cached_sectors={a.cached_sectors} journal_seq={a.journal_seq}"
            + (f" flags={','.join(flags)}" if flags else ""))


def _backpointer(v: bytes) -> str:
    b = Backpointer.unpack(v)
    tree = BtreeId(b.btree_id).name if b.btree_id in BtreeId._value2member_map_ \
        else f"btree {b.btree_id}"
    hi, lo = unpack_key(b.pos)
    return f"{tree} L{b.level} {hi}:{lo} length={b.length} gen={b.gen}"


DECODERS = {KeyType.inode: _inode, KeyType.dirent: _dirent, KeyType.xattr: _xattr,
            KeyType.alloc: _alloc, KeyType.backpointer: _backpointer}


def decoded(val: bytes) -> str:
    """value_to_text, with modes, times, names and types spelled out."""
    fn = DECODERS.get(val[0]) if val else None
    if fn is None:
        return value_to_text(val)
    return f"{KeyType(val[0]).name} {fn(val)}"


def dump_nodes(eng, bid: int) -> str:
    """The node tree of btree bid, parents before children (BtreeSet.to_text)."""
    if eng.btrees.roots[bid] is None:
        return f"{BtreeId(bid).name}: no root (never mounted read-write)"
    return eng.btrees.to_text(bid)


def journal_lines(dev: Device, verbose: bool = False, raw: bool = False) -> Iterator[str]:
    """The entries a mount would replay (last_seq .. newest), then a summary."""
    from .journal.read import read_chain
    from .superblock import read_superblock
    try:
        sb, _warnings = read_superblock(dev)
    except FormatError as e:
        raise InspectError(f"{dev.path}: not a usable pyfs filesystem: {e}") from None
    start = sb.journal_bucket * sb.bucket_size
    scan = read_chain(dev, sb)
    if scan.damaged or scan.bogus:
        yield f"journal damaged: {scan.problems_text()} (run fsck)"
    for e in scan.entries:
        yield e.to_text()
        if verbose:
            for b, lv, k, v in e.keys:
                name = BtreeId(b).name + (f" L{lv}" if lv else "")
                yield f"  {name} {key_line(k, v, raw) if v else key_to_text(k) + ' delete'}"
    if scan.newest is None:
        yield "journal empty"
        return
    first, newest = scan.entries[0], scan.newest
    nkeys = sum(len(e.keys) for e in scan.entries)
    yield (f"{len(scan.entries)} entries, seq {first.seq}..{newest.seq}, {nkeys} keys; "
           f"ring {sb.journal_nbuckets} x {sb.bucket_size} bytes at byte {start}, "
           f"head at ring offset {scan.head}; journal ends: {scan.end_reason}")
