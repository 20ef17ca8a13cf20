"""Every on-disk structure of pyfs, declared once.

An image is untrusted input: every decoder here validates what it reads and
raises FormatError carrying the byte offset of the bad structure. Struct
formats are named constants whose sizes are checked with struct.calcsize at
import time; enums are generated from one table of (name, stable id) each.
docs/FORMAT.md documents every field declared here.

Integers in structs are little-endian. Btree keys are big-endian so that they
sort correctly as plain bytes.
"""

from __future__ import annotations

import enum
import functools
import operator
import struct
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, fields

import xxhash

from .device import base as _device_units

# --------------------------------------------------------------------------
# Constants

MAGIC = b"PYFS\xf5\x5b\x1e\x07"
FORMAT_VERSION = 1
BLOCK_SIZE = 4096
SECTOR_SIZE = 512
# The device layer counts in the same units (it imports nothing of pyfs).
assert (BLOCK_SIZE, SECTOR_SIZE) == (_device_units.PAGE, _device_units.SECTOR)

SB_OFFSET = BLOCK_SIZE            # primary superblock; block 0 is left alone
SB_REGION = BLOCK_SIZE            # each superblock copy occupies one block

MIN_BUCKET_SIZE = 128 * 1024
MAX_BUCKET_SIZE = 2 * 1024 * 1024
DEFAULT_BTREE_NODE_SIZE = 256 * 1024
MIN_BTREE_NODE_SIZE = 16 * 1024
MAX_LABEL = 32
KEY_LEN = 16
ZERO_KEY = bytes(KEY_LEN)
MAX_KEY = b"\xff" * KEY_LEN
MAX_VALUE_LEN = 1 << 20           # no value (an xattr of 64 KiB included) comes near this


def checksum(*parts: bytes) -> int:
    """xxh3_64 over the concatenation of parts."""
    h = xxhash.xxh3_64()
    for p in parts:
        h.update(p)
    return h.intdigest()


class FormatError(ValueError):
    """A structure read from the device is malformed. `offset` is where it starts."""

    def __init__(self, what: str, offset: int | None = None):
        self.what = what
        self.offset = offset
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"{what}{where}")


# --------------------------------------------------------------------------
# Enums: one table each of (name, stable id); never renumber an entry.

def _make_enum(name: str, table: list[tuple[str, int]]) -> type[enum.IntEnum]:
    ids = [i for _, i in table]
    assert len(set(ids)) == len(ids), f"{name}: duplicate stable ids"
    assert all(0 <= i < 256 for i in ids), f"{name}: ids must fit one byte"
    return enum.IntEnum(name, table)


BTREE_ID_TABLE = [
    ("extents", 0),
    ("inodes", 1),
    ("dirents", 2),
    ("xattrs", 3),
    ("alloc", 4),
    ("backpointers", 5),
    ("freespace", 6),
    ("lru", 7),
]
BtreeId = _make_enum("BtreeId", BTREE_ID_TABLE)
BTREE_ID_NR = max(i for _, i in BTREE_ID_TABLE) + 1

KEY_TYPE_TABLE = [
    ("deleted", 0),        # a whiteout; never stored in memory as a live key
    ("btree_ptr", 1),      # interior node -> child node
    ("inode", 2),
    ("dirent", 3),
    ("extent", 4),
    ("xattr", 5),
    ("alloc", 6),
    ("backpointer", 7),
    ("inline_data", 8),
    ("lru", 9),
    ("raw", 10),           # opaque bytes, used by tests and benchmarks
]
KeyType = _make_enum("KeyType", KEY_TYPE_TABLE)

DATA_TYPE_TABLE = [
    ("free", 0),
    ("superblock", 1),
    ("journal", 2),
    ("btree", 3),
    ("user", 4),
    ("cached", 5),
    ("need_discard", 6),
]
DataType = _make_enum("DataType", DATA_TYPE_TABLE)

SB_STATE_TABLE = [
    ("dirty", 0),          # mounted, or not cleanly unmounted
    ("clean", 1),          # cleanly unmounted: nothing to replay
]
SbState = _make_enum("SbState", SB_STATE_TABLE)

# Incompatible feature bits: a reader that does not know a set bit refuses the image.
FEATURE_TABLE = [
    ("backpointers", 0),
    ("name_seed", 1),      # the name hash seed is in the superblock extension
]
Feature = _make_enum("Feature", FEATURE_TABLE)
KNOWN_FEATURES = sum(1 << f.value for f in Feature)


# --------------------------------------------------------------------------
# Keys: fixed 16 bytes, big-endian (hi, lo), sorting correctly as bytes.

KEY_FMT = ">QQ"
_key = struct.Struct(KEY_FMT)
assert _key.size == KEY_LEN
pack_key = _key.pack
unpack_key = _key.unpack


def key_to_text(key: bytes) -> str:
    hi, lo = unpack_key(key)
    return f"{hi}:{lo}"


# --------------------------------------------------------------------------
# Superblock

# Journal sequence ranges a crashed session may have used but never made
# durable; node bsets and journal entries with such sequences are ignored.
SB_BLACKLIST_MAX = 4
SB_FMT = "<8sHHI16s32sIIQQQQIIQQIQQQQIIQI" + "QQ" * SB_BLACKLIST_MAX + "Q"
SB_FIELDS = (
    "magic", "version", "sb_size", "block_size", "uuid", "label",
    "bucket_size", "btree_node_size", "nbuckets", "device_size",
    "first_data_bucket", "journal_bucket", "journal_nbuckets", "group_buckets",
    "features", "compat_features", "state", "clean_journal_seq",
    "ctime_ns", "mtime_ns", "wtime_ns", "mount_count", "write_count",
    "seq_reserved", "blacklist_nr",
    *(f"blacklist{i}_{end}" for i in range(SB_BLACKLIST_MAX) for end in ("start", "end")),
    "csum",
)
_sb = struct.Struct(SB_FMT)
SB_SIZE = 256
assert struct.calcsize(SB_FMT) == SB_SIZE and len(SB_FIELDS) == len(_sb.unpack(bytes(SB_SIZE)))
# The extension right after the struct, present with Feature.name_seed: the
# seed of the name hashes once the UUID (their seed until then) has changed,
# and a checksum over the struct and the seed.
SB_EXT_FMT = "<QQ"
SB_EXT_SIZE = 16
_sb_ext = struct.Struct(SB_EXT_FMT)
assert _sb_ext.size == SB_EXT_SIZE
SB_READ_SIZE = SB_SIZE + SB_EXT_SIZE      # what a reader reads of a superblock copy
assert SB_READ_SIZE <= SB_REGION


def backup_sb_offset(device_size: int) -> int:
    """The backup superblock lives in the last whole block of the device."""
    return (device_size // BLOCK_SIZE - 1) * BLOCK_SIZE


class SeqBlacklist:
    """Journal sequence numbers a crashed session reserved but never made
    durable (the superblock's blacklist ranges): no journal entry or node bset
    carrying one counts, and sequence continuity steps over them. The one
    blacklist test of the package."""

    def __init__(self, ranges=()):
        self.ranges = sorted((int(a), int(b)) for a, b in ranges if a <= b)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def blacklisted(self, seq: int) -> bool:
        return any(a <= seq <= b for a, b in self.ranges)

    def next(self, seq: int) -> int:
        """The sequence after seq."""
        n = seq + 1
        for a, b in self.ranges:
            if a <= n <= b:
                n = b + 1
        return n

    def count(self, lo: int, hi: int) -> int:
        """How many seqs of [lo, hi] are not blacklisted."""
        n = hi - lo + 1
        for a, b in self.ranges:
            n -= max(0, min(b, hi) - max(a, lo) + 1)
        return max(n, 0)

    def missing(self, seqs: list[int], lo: int, hi: int, limit: int | None = None) -> list[int]:
        """Seqs of the chain lo..hi absent from the sorted list seqs, in order (up
        to limit). Callers bound the chain's length first: a hostile entry's
        seq can be huge."""
        have = seqs[bisect_left(seqs, lo):bisect_right(seqs, hi)]
        out: list[int] = []
        expect = lo if not self.blacklisted(lo) else self.next(lo)
        i = 0
        while expect <= hi and (limit is None or len(out) < limit):
            if i < len(have) and have[i] == expect:
                i += 1
            else:
                out.append(expect)
            expect = self.next(expect)
        return out


@dataclass
class Superblock:
    uuid: bytes
    label: str
    bucket_size: int
    btree_node_size: int
    nbuckets: int
    device_size: int
    first_data_bucket: int
    journal_bucket: int
    journal_nbuckets: int
    group_buckets: int
    features: int = 0
    compat_features: int = 0
    state: int = SbState.clean
    clean_journal_seq: int = 0
    ctime_ns: int = 0
    mtime_ns: int = 0
    wtime_ns: int = 0
    mount_count: int = 0
    write_count: int = 0
    version: int = FORMAT_VERSION
    block_size: int = BLOCK_SIZE
    seq_reserved: int = 0           # journal seqs up to this may be in use by a session
    blacklist: list = field(default_factory=list)   # [(first, last)] seqs never durable
    name_seed: int = 0              # with Feature.name_seed: in the extension
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def hash_seed(self) -> int:
        """Seed of the dirent and xattr name hashes: the UUID's first 8 bytes
        until the UUID changes (pyfs tune), which keeps the old seed."""
        if self.features & (1 << Feature.name_seed):
            return self.name_seed
        return int.from_bytes(self.uuid[:8], "little")

    def pack(self) -> bytes:
        vals = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("extra", "blacklist", "name_seed")}
        vals.update(magic=MAGIC, sb_size=SB_SIZE, csum=0,
                    label=self.label.encode("utf-8"), blacklist_nr=len(self.blacklist))
        for i in range(SB_BLACKLIST_MAX):
            a, b = self.blacklist[i] if i < len(self.blacklist) else (0, 0)
            vals[f"blacklist{i}_start"], vals[f"blacklist{i}_end"] = a, b
        raw = _sb.pack(*(vals[n] for n in SB_FIELDS))
        csum = checksum(raw[:-8])
        raw = raw[:-8] + struct.pack("<Q", csum)
        if self.features & (1 << Feature.name_seed):
            seed = struct.pack("<Q", self.name_seed)
            raw += seed + struct.pack("<Q", checksum(raw, seed))
        return raw

    @classmethod
    def unpack(cls, raw: bytes, offset: int = SB_OFFSET,
               device_size: int | None = None) -> Superblock:
        """Decode and validate every field; raise FormatError on anything wrong."""
        if len(raw) < SB_SIZE:
            raise FormatError("superblock: short read", offset)
        raw, raw_ext = raw[:SB_SIZE], raw[SB_SIZE:]
        vals = dict(zip(SB_FIELDS, _sb.unpack(raw), strict=True))
        if vals["magic"] != MAGIC:
            raise FormatError("superblock: bad magic (not a pyfs image)", offset)
        if checksum(raw[:-8]) != vals["csum"]:
            raise FormatError("superblock: checksum mismatch", offset)
        if vals["version"] != FORMAT_VERSION:
            raise FormatError(f"superblock: unsupported format version {vals['version']}", offset)
        if vals["sb_size"] != SB_SIZE:
            raise FormatError(f"superblock: bad size {vals['sb_size']}", offset)
        try:
            label = vals["label"].rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("superblock: label is not UTF-8", offset) from None
        vals["label"] = label
        nbl = vals.pop("blacklist_nr")
        if nbl > SB_BLACKLIST_MAX:
            raise FormatError(f"superblock: {nbl} blacklist ranges (at most "
                              f"{SB_BLACKLIST_MAX})", offset)
        ranges = [(vals.pop(f"blacklist{i}_start"), vals.pop(f"blacklist{i}_end"))
                  for i in range(SB_BLACKLIST_MAX)]
        if any(r != (0, 0) for r in ranges[nbl:]):
            raise FormatError("superblock: unused blacklist slots are not zero", offset)
        vals["blacklist"] = ranges[:nbl]
        for n in ("magic", "sb_size", "csum"):
            del vals[n]
        sb = cls(**vals)
        problem = sb.validate(device_size)
        if problem:
            raise FormatError(f"superblock: {problem}", offset)
        if sb.features & (1 << Feature.name_seed):
            sb.name_seed = cls._unpack_ext(raw_ext, raw, offset)
        return sb

    @staticmethod
    def _unpack_ext(ext: bytes, raw: bytes, offset: int) -> int:
        if len(ext) < SB_EXT_SIZE:
            raise FormatError("superblock: short read of the extension", offset)
        seed, csum = _sb_ext.unpack(ext[:SB_EXT_SIZE])
        if checksum(raw, ext[:8]) != csum:
            raise FormatError("superblock: extension checksum mismatch", offset)
        return seed

    def validate(self, device_size: int | None = None) -> str | None:
        """Return a description of the first inconsistent field, or None."""
        def pow2(x: int) -> bool:
            return x > 0 and x & (x - 1) == 0
        if self.block_size != BLOCK_SIZE:
            return f"block size {self.block_size} is not {BLOCK_SIZE}"
        if not pow2(self.bucket_size) or not MIN_BUCKET_SIZE <= self.bucket_size <= MAX_BUCKET_SIZE:
            return f"bucket size {self.bucket_size} out of range"
        if (not pow2(self.btree_node_size) or self.btree_node_size < MIN_BTREE_NODE_SIZE
                or self.btree_node_size > self.bucket_size):
            return f"btree node size {self.btree_node_size} invalid for bucket size {self.bucket_size}"
        if self.device_size < self.bucket_size * 4:
            return f"device size {self.device_size} too small"
        if self.nbuckets != self.device_size // self.bucket_size:
            return f"bucket count {self.nbuckets} does not match device size"
        if device_size is not None and self.device_size > device_size:
            return (f"filesystem size {self.device_size} is larger than the device "
                    f"({device_size} bytes)")
        if self.journal_bucket < 1 or self.journal_nbuckets < 2:
            return f"journal at bucket {self.journal_bucket} x{self.journal_nbuckets} invalid"
        if self.journal_bucket + self.journal_nbuckets != self.first_data_bucket:
            return "journal does not end where data buckets start"
        if self.first_data_bucket >= self.nbuckets:
            return f"first data bucket {self.first_data_bucket} beyond the device"
        if not 1 <= self.group_buckets <= self.nbuckets:
            return f"allocation group size {self.group_buckets} invalid"
        if self.features & ~KNOWN_FEATURES:
            return f"unknown incompatible features {self.features & ~KNOWN_FEATURES:#x}"
        if self.state not in SbState._value2member_map_:
            return f"unknown state {self.state}"
        if len(self.uuid) != 16:
            return "uuid is not 16 bytes"
        if len(self.label.encode()) > MAX_LABEL:
            return "label too long"
        prev = 0
        for a, b in self.blacklist:
            if not prev < a <= b or b > self.seq_reserved:
                return f"journal seq blacklist range {a}..{b} out of order or beyond the reservation"
            prev = b
        if len(self.blacklist) > SB_BLACKLIST_MAX:
            return "too many journal seq blacklist ranges"
        return None

    def seq_blacklist(self) -> SeqBlacklist:
        return SeqBlacklist(self.blacklist)

    @property
    def backup_offset(self) -> int:
        return backup_sb_offset(self.device_size)

    def to_text(self) -> str:
        import uuid as _uuid
        feats = [f.name for f in Feature if self.features & (1 << f.value)]
        lines = [
            ("UUID", str(_uuid.UUID(bytes=self.uuid))),
            ("Label", self.label or "(none)"),
            ("Version", self.version),
            ("Block size", self.block_size),
            ("Bucket size", self.bucket_size),
            ("Buckets", self.nbuckets),
            ("Device size", self.device_size),
            ("Btree node size", self.btree_node_size),
            ("Journal", f"buckets {self.journal_bucket}..{self.journal_bucket + self.journal_nbuckets - 1}"
                        f" ({self.journal_nbuckets * self.bucket_size} bytes)"),
            ("First data bucket", self.first_data_bucket),
            ("Allocation group", f"{self.group_buckets} buckets"),
            ("Features", ",".join(feats) or "(none)"),
            ("State", SbState(self.state).name),
            ("Clean journal seq", self.clean_journal_seq),
            ("Journal seq reserved", self.seq_reserved),
            ("Journal seq blacklist", ", ".join(f"{a}..{b}" for a, b in self.blacklist)
             or "(none)"),
            ("Created", _fmt_ns(self.ctime_ns)),
            ("Last mounted", _fmt_ns(self.mtime_ns)),
            ("Last written", _fmt_ns(self.wtime_ns)),
            ("Mount count", self.mount_count),
            ("Superblock writes", self.write_count),
            ("Primary superblock", f"byte {SB_OFFSET}"),
            ("Backup superblock", f"byte {self.backup_offset}"),
        ]
        return "\n".join(f"{k + ':':<22}{v}" for k, v in lines)


def _fmt_ns(ns: int) -> str:
    if not ns:
        return "never"
    import datetime
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------
# Btree nodes
#
# A node occupies btree_node_size bytes. Block 0 starts with the node header,
# followed directly by the first bset. Every later bset starts on a block
# boundary, so appending a bset never rewrites blocks already written.

NODE_MAGIC = b"PYFSBTND"
NODE_HDR_FMT = "<8sHBBIQ16s16sQ"
NODE_HDR_FIELDS = ("magic", "version", "btree_id", "level", "gen", "node_seq",
                   "min_key", "max_key", "csum")
_node_hdr = struct.Struct(NODE_HDR_FMT)
NODE_HDR_SIZE = 64
assert struct.calcsize(NODE_HDR_FMT) == NODE_HDR_SIZE


@dataclass(frozen=True)
class NodeHeader:
    btree_id: int
    level: int
    node_seq: int
    min_key: bytes
    max_key: bytes
    # Lineage generation: a node made from others (a split, merge, compaction)
    # has a higher gen than each of them, so of overlapping nodes a scan takes
    # the descendant (0 in nodes older images wrote: the field was unused).
    gen: int = 0

    def pack(self) -> bytes:
        raw = _node_hdr.pack(NODE_MAGIC, FORMAT_VERSION, self.btree_id, self.level,
                             self.gen & 0xFFFFFFFF, self.node_seq, self.min_key,
                             self.max_key, 0)
        return raw[:-8] + struct.pack("<Q", checksum(raw[:-8]))

    @classmethod
    def unpack(cls, raw: bytes, offset: int) -> NodeHeader:
        if len(raw) < NODE_HDR_SIZE:
            raise FormatError("btree node: short header", offset)
        magic, ver, bid, level, gen, nseq, mn, mx, csum = _node_hdr.unpack_from(raw)
        if magic != NODE_MAGIC:
            raise FormatError("btree node: bad magic", offset)
        if checksum(raw[:NODE_HDR_SIZE - 8]) != csum:
            raise FormatError("btree node: header checksum mismatch", offset)
        if ver != FORMAT_VERSION:
            raise FormatError(f"btree node: unsupported version {ver}", offset)
        if bid >= BTREE_ID_NR:
            raise FormatError(f"btree node: unknown btree id {bid}", offset)
        if level > MAX_BTREE_DEPTH:
            raise FormatError(f"btree node: level {level} too deep", offset)
        if mn > mx:
            raise FormatError("btree node: min key above max key", offset)
        return cls(bid, level, nseq, mn, mx, gen)


MAX_BTREE_DEPTH = 8

# A bset: header, then columns: nkeys keys of KEY_LEN bytes, nkeys u32 value
# lengths, then the values concatenated. A value of length 0 is a whiteout;
# any other value starts with its KeyType byte.
BSET_MAGIC = b"BSET"
BSET_HDR_FMT = "<4sHHQQIIQ"
BSET_HDR_FIELDS = ("magic", "version", "flags", "node_seq", "journal_seq",
                   "nkeys", "payload_len", "csum")
_bset_hdr = struct.Struct(BSET_HDR_FMT)
BSET_HDR_SIZE = 40
assert struct.calcsize(BSET_HDR_FMT) == BSET_HDR_SIZE


def pack_bset(node_seq: int, journal_seq: int, keys: list[bytes], vals: list[bytes]) -> bytes:
    """Encode one sorted key set (keys strictly increasing) with its header."""
    from array import array
    lens = array("I", map(len, vals))
    payload = b"".join((b"".join(keys), lens.tobytes(), b"".join(vals)))
    hdr = _bset_hdr.pack(BSET_MAGIC, FORMAT_VERSION, 0, node_seq, journal_seq,
                         len(keys), len(payload), 0)
    csum = checksum(hdr[:-8], payload)
    return hdr[:-8] + struct.pack("<Q", csum) + payload


@dataclass(frozen=True)
class BsetHeader:
    node_seq: int
    journal_seq: int
    nkeys: int
    payload_len: int
    csum: int

    @property
    def size(self) -> int:
        return BSET_HDR_SIZE + self.payload_len


def unpack_bset_header(buf: bytes, pos: int) -> BsetHeader | None:
    """Return the header at pos, or None if there is no bset there (end of node)."""
    if pos + BSET_HDR_SIZE > len(buf):
        return None
    magic, ver, _flags, nseq, jseq, nkeys, plen, csum = _bset_hdr.unpack_from(buf, pos)
    if magic != BSET_MAGIC or ver != FORMAT_VERSION:
        return None
    return BsetHeader(nseq, jseq, nkeys, plen, csum)


def unpack_bset(buf: bytes, pos: int, hdr: BsetHeader,
                offset: int) -> tuple[list[bytes], list[bytes]]:
    """Decode and validate a bset's payload; offset is its byte offset on the device."""
    from array import array
    from itertools import accumulate
    end = pos + hdr.size
    if end > len(buf):
        raise FormatError("bset: runs past the end of its node", offset)
    payload = buf[pos + BSET_HDR_SIZE:end]
    hdr_raw = buf[pos:pos + BSET_HDR_SIZE - 8]
    if checksum(hdr_raw, payload) != hdr.csum:
        raise FormatError("bset: checksum mismatch", offset)
    n = hdr.nkeys
    klen = n * KEY_LEN
    if klen + 4 * n > len(payload):
        raise FormatError(f"bset: {n} keys do not fit its payload", offset)
    keys = list(_keys_struct(n).unpack_from(payload))
    lens = array("I")
    lens.frombytes(payload[klen:klen + 4 * n])
    vstart = klen + 4 * n
    if vstart + sum(lens) != len(payload):
        raise FormatError("bset: value lengths do not match its payload", offset)
    ends = list(accumulate(lens, initial=vstart))
    vals = list(map(payload.__getitem__, map(slice, ends, ends[1:])))
    # Both checks run per key on every node read: C-level loops (map, all,
    # set) decide, and only a failure is looked at key by key for its message.
    if not all(map(_lt, keys, keys[1:])):
        i = next(i for i in range(1, n) if keys[i - 1] >= keys[i])
        raise FormatError(f"bset: keys out of order at index {i}", offset)
    types = set(map(_first_byte, filter(None, vals)))
    if not types <= _KNOWN_TYPES:
        v = next(v for v in vals if v and v[0] not in _KNOWN_TYPES)
        raise FormatError(f"bset: unknown key type {v[0]}", offset)
    return keys, vals


@functools.lru_cache(maxsize=64)
def _keys_struct(n: int) -> struct.Struct:
    """n keys in a row: one C call cuts them apart (a tenth of a slice per key)."""
    return struct.Struct(f"{KEY_LEN}s" * n)


_lt = operator.lt
_first_byte = operator.itemgetter(0)
_KNOWN_TYPES = frozenset(KeyType._value2member_map_)


# Interior node values: a pointer to a child node.
BTREE_PTR_FMT = "<BQQ"     # key type, node offset in bytes, node_seq
_btree_ptr = struct.Struct(BTREE_PTR_FMT)
BTREE_PTR_SIZE = 17
assert struct.calcsize(BTREE_PTR_FMT) == BTREE_PTR_SIZE


def pack_btree_ptr(offset: int, node_seq: int) -> bytes:
    return _btree_ptr.pack(KeyType.btree_ptr, offset, node_seq)


def unpack_btree_ptr(val: bytes) -> tuple[int, int]:
    if len(val) != BTREE_PTR_SIZE or val[0] != KeyType.btree_ptr:
        raise FormatError("btree pointer: malformed value")
    _, off, nseq = _btree_ptr.unpack(val)
    return off, nseq


# --------------------------------------------------------------------------
# Journal
#
# Journal buckets form a ring. An entry never crosses a bucket boundary. A
# version 2 entry starts on a 512-byte sector and occupies whole sectors (the
# daemon writes one per request burst); version 1 entries (older images) start
# on 4 KiB blocks and occupy whole blocks. The payload is the btree roots,
# then the keys of the transactions the entry commits.

JOURNAL_MAGIC = b"PYFSJRNL"
JSET_HDR_FMT = "<8sHHQQQIIIQ"
JSET_HDR_FIELDS = ("magic", "version", "flags", "seq", "last_seq", "flushed_seq", "nroots",
                   "nkeys", "payload_len", "csum")
_jset_hdr = struct.Struct(JSET_HDR_FMT)
JSET_HDR_SIZE = 56
assert struct.calcsize(JSET_HDR_FMT) == JSET_HDR_SIZE

JSET_ROOT_FMT = "<BBQQ16s"  # btree id, level, node offset, node_seq, (reserved)
_jset_root = struct.Struct(JSET_ROOT_FMT)
JSET_ROOT_SIZE = 34
assert struct.calcsize(JSET_ROOT_FMT) == JSET_ROOT_SIZE

JSET_VERSION = 2
JSET_ALIGN = {1: BLOCK_SIZE, 2: SECTOR_SIZE}    # entry alignment by version

JSET_KEY_FMT = "<BB16sI"     # btree id, level, key, value length (0 = delete)
_jset_key = struct.Struct(JSET_KEY_FMT)
JSET_KEY_SIZE = 22
assert struct.calcsize(JSET_KEY_FMT) == JSET_KEY_SIZE
pack_jset_key = _jset_key.pack


@dataclass
class JournalEntry:
    seq: int
    last_seq: int
    roots: list[tuple[int, int, int, int]]         # (btree_id, level, offset, node_seq)
    keys: list[tuple[int, int, bytes, bytes]]      # (btree_id, level, key, value)
    size: int = 0                                  # bytes on disk (whole sectors; blocks in v1)
    offset: int = 0                                # byte offset on the device
    flushed_seq: int = 0                           # newest seq known durable when sealed

    def to_text(self) -> str:
        roots = " ".join(f"{BtreeId(b).name}@{off}/L{lv}" for b, lv, off, _ in self.roots)
        return (f"seq {self.seq} last_seq {self.last_seq} offset {self.offset} "
                f"size {self.size} keys {len(self.keys)} roots [{roots}]")


def encode_jset_keys(records) -> bytes:
    """Encode journal key records [(btree_id, level, key, val)] for an entry payload."""
    out = []
    append = out.append
    for bid, level, key, val in records:
        append(pack_jset_key(bid, level, key, len(val)))
        append(val)
    return b"".join(out)


def pack_jset_roots(roots) -> bytes:
    return b"".join(_jset_root.pack(b, lv, off, nseq, bytes(16)) for b, lv, off, nseq in roots)


def pack_jset(seq: int, last_seq: int, roots, nkeys: int, keys_payload: bytes,
              flushed_seq: int = 0, root_bytes: bytes | None = None) -> bytes:
    """Encode a whole journal entry padded to whole sectors (root_bytes: roots
    already packed with pack_jset_roots)."""
    if root_bytes is None:
        root_bytes = pack_jset_roots(roots)
    payload = root_bytes + keys_payload
    hdr = _jset_hdr.pack(JOURNAL_MAGIC, JSET_VERSION, 0, seq, last_seq, flushed_seq,
                         len(roots), nkeys, len(payload), 0)
    csum = checksum(hdr[:-8], payload)
    raw = hdr[:-8] + struct.pack("<Q", csum) + payload
    return raw + bytes(-len(raw) % SECTOR_SIZE)


def jset_size(nroots: int, keys_payload_len: int) -> int:
    n = JSET_HDR_SIZE + nroots * JSET_ROOT_SIZE + keys_payload_len
    return n + (-n % SECTOR_SIZE)


def unpack_jset_header(buf: bytes, offset: int) -> tuple[int, int, int, int, int, int] | None:
    """(seq, last_seq, nroots, nkeys, payload_len, csum) or None if no entry starts here."""
    if len(buf) < JSET_HDR_SIZE:
        return None
    magic, ver, _fl, seq, last_seq, _fs, nroots, nkeys, plen, csum = _jset_hdr.unpack_from(buf)
    if magic != JOURNAL_MAGIC or ver not in JSET_ALIGN:
        return None
    return seq, last_seq, nroots, nkeys, plen, csum


def unpack_jset(buf: bytes, offset: int) -> JournalEntry:
    """Decode and validate a journal entry starting at buf[0]."""
    h = unpack_jset_header(buf, offset)
    if h is None:
        raise FormatError("journal entry: bad magic", offset)
    seq, last_seq, nroots, nkeys, plen, csum = h
    if JSET_HDR_SIZE + plen > len(buf):
        raise FormatError("journal entry: runs past its space", offset)
    payload = buf[JSET_HDR_SIZE:JSET_HDR_SIZE + plen]
    if checksum(buf[:JSET_HDR_SIZE - 8], payload) != csum:
        raise FormatError("journal entry: checksum mismatch", offset)
    if last_seq > seq:
        raise FormatError("journal entry: last_seq after seq", offset)
    flushed_seq = _jset_hdr.unpack_from(buf)[5]
    if flushed_seq and flushed_seq >= seq:
        raise FormatError("journal entry: flushed_seq not before seq", offset)
    if nroots > BTREE_ID_NR:
        raise FormatError(f"journal entry: {nroots} roots", offset)
    roots = []
    pos = 0
    for _ in range(nroots):
        if pos + JSET_ROOT_SIZE > plen:
            raise FormatError("journal entry: truncated roots", offset)
        b, lv, off, nseq, _r = _jset_root.unpack_from(payload, pos)
        if b >= BTREE_ID_NR or lv > MAX_BTREE_DEPTH:
            raise FormatError(f"journal entry: bad root for btree {b} level {lv}", offset)
        roots.append((b, lv, off, nseq))
        pos += JSET_ROOT_SIZE
    keys = []
    unpack = _jset_key.unpack_from
    for _ in range(nkeys):
        if pos + JSET_KEY_SIZE > plen:
            raise FormatError("journal entry: truncated key", offset)
        b, lv, key, vlen = unpack(payload, pos)
        pos += JSET_KEY_SIZE
        if b >= BTREE_ID_NR or lv > MAX_BTREE_DEPTH or pos + vlen > plen or vlen > MAX_VALUE_LEN:
            raise FormatError("journal entry: bad key record", offset)
        val = payload[pos:pos + vlen]
        if val and val[0] not in KeyType._value2member_map_:
            raise FormatError(f"journal entry: unknown key type {val[0]}", offset)
        keys.append((b, lv, key, val))
        pos += vlen
    if pos != plen:
        raise FormatError("journal entry: trailing bytes", offset)
    size = JSET_HDR_SIZE + plen
    align = JSET_ALIGN[_jset_hdr.unpack_from(buf)[1]]
    return JournalEntry(seq, last_seq, roots, keys, size + (-size % align), offset,
                        flushed_seq)


def value_to_text(val: bytes) -> str:
    """Readable form of a btree value, dispatched on its key type byte."""
    if not val:
        return "whiteout"
    kt = val[0]
    fn = VALUE_TO_TEXT.get(kt)
    name = KeyType(kt).name if kt in KeyType._value2member_map_ else f"type{kt}"
    if fn is None:
        return f"{name} {val[1:].hex()}" if len(val) < 40 else f"{name} ({len(val) - 1} bytes)"
    return f"{name} {fn(val)}"


def _btree_ptr_text(val: bytes) -> str:
    off, nseq = unpack_btree_ptr(val)
    return f"node@{off} seq {nseq:#x}"


VALUE_TO_TEXT = {KeyType.btree_ptr: _btree_ptr_text}


# --------------------------------------------------------------------------
# Btree values. Each is a struct whose first byte is its KeyType, declared
# as a table of (field, struct code); a Record class with pack/unpack/to_text
# is generated from each table.
#
# Records are packed and unpacked on every operation (an inode per request,
# an extent per write), so each class gets its own __init__, pack, unpack and
# replace, generated from the table with one statement per field, instead of
# generic loops over FIELDS (which cost 2-4 times as much).

class Record:
    """Base for fixed-layout btree values; subclasses are made by _record()."""
    __slots__ = ()
    KEY_TYPE: int
    FIELDS: tuple[str, ...]
    TABLE: tuple[tuple[str, str], ...]
    STRUCT: struct.Struct
    SIZE: int

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.pack() == other.pack()

    def to_text(self) -> str:
        parts = [f"{f}={getattr(self, f)}" for f in self.FIELDS]
        if self.tail:
            parts.append(f"tail={self.tail[:32]!r}")
        return " ".join(parts)

    __repr__ = to_text


def _malformed(cls: type, val: bytes) -> FormatError:
    return FormatError(f"{cls.__name__}: malformed value ({len(val)} bytes, "
                       f"type {val[0] if val else None})")


_RECORD_TEMPLATE = """
def __init__(self, {init_args}, tail=b""):
    {init_body}
    self.tail = tail

def pack(self):
    return _pack(_KT, {self_fields}) + self.tail

def unpack(cls, val):
    if len(val) < {size} or val[0] != _KT:
        raise _malformed(cls, val)
    obj = _new(cls)
    {obj_fields}, = _unpack_from(val, 1)
    obj.tail = val[{size}:]
    return obj

def replace(self, **kw):
    obj = _new(type(self))
    {copy_body}
    obj.tail = self.tail
    for k, v in kw.items():
        setattr(obj, k, v)
    return obj
"""


def _record(name: str, key_type: int, table: list[tuple[str, str]], size: int) -> type[Record]:
    codes = "".join(code for _, code in table)
    st = struct.Struct("<B" + codes)
    assert st.size == size, (name, st.size)
    fields_ = tuple(f for f, _ in table)
    src = _RECORD_TEMPLATE.format(
        init_args=", ".join(f"{f}=0" for f in fields_),
        init_body="; ".join(f"self.{f} = {f}" for f in fields_),
        self_fields=", ".join(f"self.{f}" for f in fields_),
        obj_fields=", ".join(f"obj.{f}" for f in fields_),
        copy_body="; ".join(f"obj.{f} = self.{f}" for f in fields_),
        size=size)
    ns: dict = {"_pack": st.pack, "_unpack_from": struct.Struct("<" + codes).unpack_from,
                "_KT": key_type, "_new": object.__new__, "_malformed": _malformed}
    exec(compile(src, f"<record {name}>", "exec"), ns)
    cls = type(name, (Record,), {"__slots__": fields_ + ("tail",), "KEY_TYPE": key_type,
                                 "FIELDS": fields_, "TABLE": tuple(table), "STRUCT": st,
                                 "SIZE": size,
                                 "__init__": ns["__init__"], "pack": ns["pack"],
                                 "unpack": classmethod(ns["unpack"]),
                                 "replace": ns["replace"]})
    VALUE_TO_TEXT[key_type] = lambda v, c=cls: c.unpack(v).to_text()
    return cls


def field_reader(cls: type[Record], *names: str):
    """unpack_from for some fields of a record's value (named in table order):
    one struct call, no object, for checks that run on every key (fsck).
    Built from the record's table, so it follows any change of layout."""
    want = set(names)
    assert tuple(f for f, _ in cls.TABLE if f in want) == names, names
    codes = "".join(code if f in want else f"{struct.calcsize('<' + code)}x"
                    for f, code in cls.TABLE)
    return struct.Struct("<x" + codes).unpack_from


# Inode: key (inum, 0). A symlink's target follows the struct as its tail.
INODE_TABLE = [
    ("mode", "I"), ("uid", "I"), ("gid", "I"), ("nlink", "I"), ("flags", "I"),
    ("size", "Q"), ("blocks", "Q"), ("atime_ns", "q"), ("mtime_ns", "q"),
    ("ctime_ns", "q"), ("btime_ns", "q"), ("generation", "Q"), ("rdev", "Q"),
    ("parent", "Q"),
]
Inode = _record("Inode", KeyType.inode, INODE_TABLE, 93)

# Dirent: key (dir inum, name hash slot). The name is the tail.
DIRENT_TABLE = [("inum", "Q"), ("d_type", "B"), ("hash", "Q")]
Dirent = _record("Dirent", KeyType.dirent, DIRENT_TABLE, 18)

# Extent: key (inum, first file block). Data lives in one checksummed region
# of a single bucket; the extent covers nblocks of it starting live_offset
# blocks in (a split extent keeps its region and checksum).
EXTENT_TABLE = [
    ("dev_offset", "Q"),      # byte offset of the checksummed region
    ("region_blocks", "I"),   # region length in 4 KiB blocks
    ("csum", "Q"),            # xxh3_64 of the region's bytes
    ("live_offset", "I"),     # first live block within the region
    ("nblocks", "I"),         # live length in blocks
    ("gen", "I"),             # bucket generation when written; stale if it differs
]
Extent = _record("Extent", KeyType.extent, EXTENT_TABLE, 33)

# Xattr: key (inum, name hash slot). Tail: name then value.
XATTR_TABLE = [("name_len", "B"), ("hash", "Q")]
Xattr = _record("Xattr", KeyType.xattr, XATTR_TABLE, 10)

# Alloc key: key (0, bucket). One per bucket that is not plain free.
ALLOC_FLAG_TABLE = [("need_discard", 0), ("need_inc_gen", 1)]
AllocFlag = _make_enum("AllocFlag", ALLOC_FLAG_TABLE)
ALLOC_TABLE = [
    ("gen", "I"), ("data_type", "B"), ("flags", "B"), ("dirty_sectors", "I"),
    ("cached_sectors", "I"), ("journal_seq", "Q"),
]
Alloc = _record("Alloc", KeyType.alloc, ALLOC_TABLE, 23)

# Backpointer: key (bucket, byte offset in bucket) -> what lives there.
BACKPOINTER_TABLE = [
    ("btree_id", "B"), ("level", "B"), ("pos", "16s"), ("length", "I"), ("gen", "I"),
]
Backpointer = _record("Backpointer", KeyType.backpointer, BACKPOINTER_TABLE, 27)

# Opaque test payloads.
VALUE_TO_TEXT.setdefault(KeyType.raw, lambda v: f"{len(v) - 1} bytes")
