"""Tier 1: every on-disk structure of pyfs/format.py round-trips and rejects damage."""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfs import format as F
from pyfs.format import FormatError, Superblock

U64 = st.integers(0, 2**64 - 1)
keys16 = st.binary(min_size=F.KEY_LEN, max_size=F.KEY_LEN)
key_types = st.sampled_from([k.value for k in F.KeyType])


def _bits(buf: bytes):
    """Every copy of buf with exactly one bit flipped: (offset, bit, damaged)."""
    for i in range(len(buf)):
        for bit in range(8):
            b = bytearray(buf)
            b[i] ^= 1 << bit
            yield i, bit, bytes(b)


# --------------------------------------------------------------------------
# Superblock

def make_sb(**kw) -> Superblock:
    """A valid superblock of a 1 GiB device with 128 KiB buckets."""
    base = dict(uuid=bytes(range(16)), label="test", bucket_size=128 << 10,
                btree_node_size=128 << 10, nbuckets=8192, device_size=1 << 30,
                first_data_bucket=65, journal_bucket=1, journal_nbuckets=64,
                group_buckets=128, features=1 << F.Feature.backpointers,
                ctime_ns=1, wtime_ns=2, write_count=3)
    base.update(kw)
    return Superblock(**base)


@st.composite
def superblocks(draw) -> Superblock:
    bshift = draw(st.integers(17, 21))
    bucket = 1 << bshift
    node = 1 << draw(st.integers(14, bshift))
    nbuckets = draw(st.integers(4, 1 << 24))
    device_size = nbuckets * bucket + draw(st.integers(0, bucket - 1))
    jn = draw(st.integers(2, nbuckets - 2))
    # At most 32 bytes of UTF-8: long ASCII, or up to 8 of any character.
    label = draw(st.one_of(st.text(st.characters(min_codepoint=1, max_codepoint=127),
                                   max_size=F.MAX_LABEL),
                           st.text(st.characters(exclude_characters="\0"), max_size=8)))
    return Superblock(
        uuid=draw(st.binary(min_size=16, max_size=16)), label=label, bucket_size=bucket,
        btree_node_size=node, nbuckets=nbuckets, device_size=device_size,
        first_data_bucket=1 + jn, journal_bucket=1, journal_nbuckets=jn,
        group_buckets=draw(st.integers(1, nbuckets)),
        features=draw(st.sampled_from([0, F.KNOWN_FEATURES])),
        compat_features=draw(U64), state=draw(st.sampled_from(list(F.SbState))),
        clean_journal_seq=draw(U64), ctime_ns=draw(U64), mtime_ns=draw(U64),
        wtime_ns=draw(U64), mount_count=draw(st.integers(0, 2**32 - 1)),
        write_count=draw(st.integers(0, 2**32 - 1)), name_seed=draw(U64))


@given(superblocks())
def test_superblock_round_trip(sb):
    if not sb.features & (1 << F.Feature.name_seed):
        sb.name_seed = 0                    # not stored without the feature
    raw = sb.pack()
    assert len(raw) == F.SB_SIZE + (F.SB_EXT_SIZE if sb.features & (1 << F.Feature.name_seed)
                                    else 0)
    back = Superblock.unpack(raw, device_size=sb.device_size)
    assert back == sb
    assert back.pack() == raw


def test_superblock_name_seed_extension():
    sb = make_sb()
    assert sb.hash_seed == int.from_bytes(sb.uuid[:8], "little")
    seeded = make_sb(features=sb.features | 1 << F.Feature.name_seed, name_seed=77,
                     uuid=bytes(range(16, 32)))
    raw = seeded.pack()
    back = Superblock.unpack(raw, device_size=1 << 30)
    assert back.hash_seed == 77 and back.uuid == bytes(range(16, 32))
    with pytest.raises(FormatError, match="short read of the extension"):
        Superblock.unpack(raw[:F.SB_SIZE], device_size=1 << 30)
    for i, _bit, bad in _bits(raw):
        if i >= F.SB_SIZE:
            with pytest.raises(FormatError, match="extension checksum"):
                Superblock.unpack(bad, device_size=1 << 30)
    # The checksum binds the extension to its struct: an older copy's does not fit.
    other = make_sb(features=seeded.features, name_seed=77, label="x").pack()
    with pytest.raises(FormatError, match="extension checksum"):
        Superblock.unpack(raw[:F.SB_SIZE] + other[F.SB_SIZE:], device_size=1 << 30)


def test_superblock_to_text_names_the_essentials():
    text = make_sb(label="hello").to_text()
    for needle in ("00010203-0405-0607-0809-0a0b0c0d0e0f", "hello", "131072",
                   "backpointers", "clean", f"byte {(1 << 30) - 4096}"):
        assert needle in text


def test_superblock_every_flipped_bit_is_rejected():
    raw = make_sb().pack()
    for i, bit, bad in _bits(raw):
        with pytest.raises(FormatError) as ei:
            Superblock.unpack(bad, device_size=1 << 30)
        assert ei.value.offset == F.SB_OFFSET, (i, bit)


def test_superblock_short_read_and_offset_reported():
    raw = make_sb().pack()
    with pytest.raises(FormatError, match="short read"):
        Superblock.unpack(raw[:-1])
    with pytest.raises(FormatError) as ei:
        Superblock.unpack(bytes(F.SB_SIZE), offset=12345)
    assert ei.value.offset == 12345 and "12345" in str(ei.value)


def test_superblock_trailing_bytes_ignored():
    # Each copy is padded to a whole block; only the first SB_SIZE bytes count.
    raw = make_sb().pack() + b"\xff" * 100
    assert Superblock.unpack(raw, device_size=1 << 30) == make_sb()


BAD_FIELDS = [
    (dict(bucket_size=(128 << 10) + 4096), "bucket size"),
    (dict(bucket_size=64 << 10, btree_node_size=64 << 10, nbuckets=16384), "bucket size"),
    (dict(bucket_size=4 << 20, btree_node_size=256 << 10, nbuckets=256), "bucket size"),
    (dict(btree_node_size=256 << 10), "btree node size"),
    (dict(btree_node_size=8 << 10), "btree node size"),
    (dict(btree_node_size=48 << 10), "btree node size"),
    (dict(nbuckets=8191), "bucket count"),
    (dict(nbuckets=8193), "bucket count"),
    (dict(device_size=256 << 10, nbuckets=2), "too small"),
    (dict(journal_bucket=0, first_data_bucket=64), "journal"),
    (dict(journal_nbuckets=1, first_data_bucket=2), "journal"),
    (dict(first_data_bucket=66), "journal does not end"),
    (dict(first_data_bucket=64), "journal does not end"),
    (dict(journal_nbuckets=8191, first_data_bucket=8192), "first data bucket"),
    (dict(group_buckets=0), "allocation group"),
    (dict(group_buckets=8193), "allocation group"),
    (dict(features=1 << 5), "unknown incompatible features"),
    (dict(features=1 << 63), "unknown incompatible features"),
    (dict(state=7), "unknown state"),
    (dict(block_size=512), "block size"),
]


@pytest.mark.parametrize("fields,msg", BAD_FIELDS, ids=[m for _, m in BAD_FIELDS])
def test_superblock_bad_field_rejected_despite_good_checksum(fields, msg):
    sb = make_sb(**fields)
    assert msg in (sb.validate() or "")
    with pytest.raises(FormatError, match=msg):
        Superblock.unpack(sb.pack())


def test_superblock_unknown_version_rejected():
    with pytest.raises(FormatError, match="unsupported format version 2"):
        Superblock.unpack(make_sb(version=2).pack())


def test_superblock_larger_than_device_rejected():
    raw = make_sb().pack()
    Superblock.unpack(raw, device_size=1 << 30)
    Superblock.unpack(raw, device_size=2 << 30)          # a grown device is fine
    with pytest.raises(FormatError, match="larger than the device"):
        Superblock.unpack(raw, device_size=(1 << 30) - 4096)


def test_superblock_uuid_and_label_checks():
    assert "uuid" in make_sb(uuid=b"short").validate()
    assert "label" in make_sb(label="x" * 33).validate()
    assert make_sb(label="é" * 16).validate() is None     # 32 bytes of UTF-8
    raw = bytearray(make_sb(label="").pack())
    label_off = struct.calcsize("<8sHHI16s")
    raw[label_off] = 0xFF                                   # not UTF-8
    raw[-8:] = struct.pack("<Q", F.checksum(bytes(raw[:-8])))
    with pytest.raises(FormatError, match="UTF-8"):
        Superblock.unpack(bytes(raw))


def test_superblock_magic_and_size_checked_before_fields():
    raw = bytearray(make_sb().pack())
    raw[0:8] = b"NOTPYFS!"
    with pytest.raises(FormatError, match="bad magic"):
        Superblock.unpack(bytes(raw))
    raw = bytearray(make_sb().pack())
    raw[10:12] = struct.pack("<H", 999)                     # sb_size
    raw[-8:] = struct.pack("<Q", F.checksum(bytes(raw[:-8])))
    with pytest.raises(FormatError, match="bad size"):
        Superblock.unpack(bytes(raw))


def test_backup_offset_is_last_whole_block():
    assert F.backup_sb_offset(1 << 30) == (1 << 30) - 4096
    assert F.backup_sb_offset((1 << 30) + 4095) == (1 << 30) - 4096
    assert make_sb().backup_offset == (1 << 30) - 4096


# --------------------------------------------------------------------------
# Keys

@given(st.lists(st.tuples(U64, U64), max_size=50))
def test_keys_sort_as_bytes_like_numeric_tuples(pairs):
    packed = [F.pack_key(hi, lo) for hi, lo in pairs]
    assert all(len(k) == F.KEY_LEN for k in packed)
    assert [F.unpack_key(k) for k in sorted(packed)] == sorted(pairs)


@given(U64, U64)
def test_key_round_trip_and_text(hi, lo):
    k = F.pack_key(hi, lo)
    assert F.unpack_key(k) == (hi, lo)
    assert F.key_to_text(k) == f"{hi}:{lo}"


def test_key_bounds():
    assert F.pack_key(0, 0) == F.ZERO_KEY
    assert F.pack_key(2**64 - 1, 2**64 - 1) == F.MAX_KEY


# --------------------------------------------------------------------------
# Enums

# Ids already on disk; new entries may be added, these may never change.
FROZEN = {
    "BTREE_ID_TABLE": {"extents": 0, "inodes": 1, "dirents": 2, "xattrs": 3, "alloc": 4,
                       "backpointers": 5, "freespace": 6, "lru": 7},
    "KEY_TYPE_TABLE": {"deleted": 0, "btree_ptr": 1, "inode": 2, "dirent": 3, "extent": 4,
                       "xattr": 5, "alloc": 6, "backpointer": 7, "inline_data": 8,
                       "lru": 9, "raw": 10},
    "DATA_TYPE_TABLE": {"free": 0, "superblock": 1, "journal": 2, "btree": 3, "user": 4,
                        "cached": 5, "need_discard": 6},
    "SB_STATE_TABLE": {"dirty": 0, "clean": 1},
    "FEATURE_TABLE": {"backpointers": 0},
}
ENUMS = {"BTREE_ID_TABLE": F.BtreeId, "KEY_TYPE_TABLE": F.KeyType,
         "DATA_TYPE_TABLE": F.DataType, "SB_STATE_TABLE": F.SbState,
         "FEATURE_TABLE": F.Feature}


@pytest.mark.parametrize("table", sorted(FROZEN))
def test_enum_ids_unique_and_stable(table):
    rows = getattr(F, table)
    names = [n for n, _ in rows]
    ids = [i for _, i in rows]
    assert len(set(names)) == len(names) and len(set(ids)) == len(ids)
    assert all(0 <= i < 256 for i in ids)
    assert FROZEN[table].items() <= dict(rows).items()
    assert {m.name: m.value for m in ENUMS[table]} == dict(rows)


def test_derived_enum_constants():
    assert F.BTREE_ID_NR == max(F.BtreeId) + 1
    assert F.KNOWN_FEATURES == sum(1 << f for f in F.Feature)
    assert F.Feature.backpointers < 64          # features is a u64 bitmap


def test_struct_sizes_match_formats():
    for fmt, size in ((F.SB_FMT, F.SB_SIZE), (F.NODE_HDR_FMT, F.NODE_HDR_SIZE),
                      (F.BSET_HDR_FMT, F.BSET_HDR_SIZE), (F.BTREE_PTR_FMT, F.BTREE_PTR_SIZE),
                      (F.JSET_HDR_FMT, F.JSET_HDR_SIZE), (F.JSET_ROOT_FMT, F.JSET_ROOT_SIZE),
                      (F.JSET_KEY_FMT, F.JSET_KEY_SIZE), (F.KEY_FMT, F.KEY_LEN)):
        assert struct.calcsize(fmt) == size
        assert fmt[0] in "<>"                   # explicit byte order, no padding
    assert F.SB_SIZE <= F.SB_REGION == F.BLOCK_SIZE


# --------------------------------------------------------------------------
# Btree node headers and pointers

node_headers = st.builds(
    lambda bid, level, seq, a, b, gen: F.NodeHeader(bid, level, seq, min(a, b), max(a, b),
                                                     gen),
    st.sampled_from(list(F.BtreeId)), st.integers(0, F.MAX_BTREE_DEPTH), U64,
    keys16, keys16, st.integers(0, 2**32 - 1))


@given(node_headers)
def test_node_header_round_trip(h):
    raw = h.pack()
    assert len(raw) == F.NODE_HDR_SIZE
    assert F.NodeHeader.unpack(raw + b"junk", 8192) == h


def test_node_header_every_flipped_bit_is_rejected():
    raw = F.NodeHeader(F.BtreeId.inodes, 1, 42, F.pack_key(1, 2), F.pack_key(3, 4)).pack()
    for i, bit, bad in _bits(raw):
        with pytest.raises(FormatError) as ei:
            F.NodeHeader.unpack(bad, 8192)
        assert ei.value.offset == 8192, (i, bit)


@pytest.mark.parametrize("kw,msg", [
    (dict(btree_id=F.BTREE_ID_NR), "unknown btree id"),
    (dict(level=F.MAX_BTREE_DEPTH + 1), "too deep"),
    (dict(min_key=F.MAX_KEY, max_key=F.ZERO_KEY), "min key above max key"),
])
def test_node_header_bad_fields_rejected(kw, msg):
    fields = dict(btree_id=0, level=0, node_seq=1, min_key=F.ZERO_KEY, max_key=F.MAX_KEY)
    fields.update(kw)
    raw = F.NodeHeader(**fields).pack()
    with pytest.raises(FormatError, match=msg):
        F.NodeHeader.unpack(raw, 0)
    with pytest.raises(FormatError, match="short header"):
        F.NodeHeader.unpack(raw[:-1], 0)


@given(U64, U64)
def test_btree_ptr_round_trip(off, seq):
    val = F.pack_btree_ptr(off, seq)
    assert len(val) == F.BTREE_PTR_SIZE and val[0] == F.KeyType.btree_ptr
    assert F.unpack_btree_ptr(val) == (off, seq)
    assert "node@" in F.value_to_text(val)


def test_btree_ptr_malformed():
    val = F.pack_btree_ptr(4096, 7)
    for bad in (val[:-1], val + b"\0", bytes([F.KeyType.raw]) + val[1:]):
        with pytest.raises(FormatError):
            F.unpack_btree_ptr(bad)


# --------------------------------------------------------------------------
# Bsets

@st.composite
def bset_contents(draw):
    keys = sorted(set(draw(st.lists(keys16, max_size=30))))
    vals = [draw(st.one_of(st.just(b""),
                           st.tuples(key_types, st.binary(max_size=40))
                           .map(lambda t: bytes([t[0]]) + t[1])))
            for _ in keys]
    return keys, vals


@given(bset_contents(), U64, U64, st.integers(0, 200))
def test_bset_round_trip(kv, node_seq, jseq, pos):
    keys, vals = kv
    raw = F.pack_bset(node_seq, jseq, keys, vals)
    buf = bytes(pos) + raw + bytes(64)
    hdr = F.unpack_bset_header(buf, pos)
    assert hdr is not None and hdr.size == len(raw)
    assert (hdr.node_seq, hdr.journal_seq, hdr.nkeys) == (node_seq, jseq, len(keys))
    assert F.unpack_bset(buf, pos, hdr, 1000) == (keys, vals)


def _sample_bset() -> bytes:
    keys = [F.pack_key(1, i) for i in range(5)]
    vals = [bytes([F.KeyType.raw]) + b"v" * i for i in range(4)] + [b""]
    return F.pack_bset(9, 11, keys, vals)


def test_bset_every_flipped_bit_is_rejected():
    raw = _sample_bset()
    for i, bit, bad in _bits(raw):
        buf = bad + bytes(256)        # room for a longer claimed payload
        hdr = F.unpack_bset_header(buf, 0)
        if hdr is None:
            continue                  # magic/version damaged: seen as "no bset here"
        with pytest.raises(FormatError) as ei:
            F.unpack_bset(buf, 0, hdr, 777)
        assert ei.value.offset == 777, (i, bit)


def test_bset_no_header_at_end_of_node():
    assert F.unpack_bset_header(bytes(100), 0) is None
    assert F.unpack_bset_header(_sample_bset(), 10) is None
    assert F.unpack_bset_header(b"BSET", 0) is None


def _repacked(keys, vals) -> bytes:
    """A bset whose checksum is correct but whose contents break a rule."""
    return F.pack_bset(1, 1, keys, vals)


@pytest.mark.parametrize("keys,vals,msg", [
    ([F.pack_key(0, 2), F.pack_key(0, 1)], [b"", b""], "out of order"),
    ([F.pack_key(0, 1), F.pack_key(0, 1)], [b"", b""], "out of order"),
    ([F.pack_key(0, 1)], [b"\xee"], "unknown key type"),
])
def test_bset_bad_contents_rejected(keys, vals, msg):
    raw = _repacked(keys, vals)
    hdr = F.unpack_bset_header(raw, 0)
    with pytest.raises(FormatError, match=msg):
        F.unpack_bset(raw, 0, hdr, 0)


def test_bset_truncated_rejected():
    raw = _sample_bset()
    hdr = F.unpack_bset_header(raw, 0)
    with pytest.raises(FormatError, match="past the end"):
        F.unpack_bset(raw[:-1], 0, hdr, 0)


# --------------------------------------------------------------------------
# Journal entries

jset_roots = st.lists(st.tuples(st.sampled_from(list(F.BtreeId)),
                                st.integers(0, F.MAX_BTREE_DEPTH), U64, U64),
                      max_size=F.BTREE_ID_NR)
jset_keys = st.lists(st.tuples(st.sampled_from(list(F.BtreeId)),
                               st.integers(0, F.MAX_BTREE_DEPTH), keys16,
                               st.one_of(st.just(b""),
                                         st.tuples(key_types, st.binary(max_size=60))
                                         .map(lambda t: bytes([t[0]]) + t[1]))),
                     max_size=20)


@given(U64, st.integers(0, 2**64 - 1), jset_roots, jset_keys)
def test_jset_round_trip(seq, back, roots, keys):
    last_seq = seq - back % (seq + 1)
    payload = F.encode_jset_keys(keys)
    raw = F.pack_jset(seq, last_seq, roots, len(keys), payload)
    assert len(raw) % F.SECTOR_SIZE == 0            # version 2: whole sectors
    assert len(raw) == F.jset_size(len(roots), len(payload))
    e = F.unpack_jset(raw, 65536)
    assert (e.seq, e.last_seq, e.offset, e.size) == (seq, last_seq, 65536, len(raw))
    assert e.roots == [tuple(r) for r in roots]
    assert e.keys == [tuple(k) for k in keys]
    assert f"seq {seq}" in e.to_text()


def test_version_1_jset_occupies_whole_blocks():
    """Entries of older images (version 1) were padded to 4 KiB blocks, and the
    reader walks the ring by the size that says."""
    raw, _ = _sample_jset()
    v1 = bytearray(raw[:8] + (1).to_bytes(2, "little") + raw[10:])
    hdr = bytes(v1[:F.JSET_HDR_SIZE - 8])
    plen = int.from_bytes(v1[44:48], "little")
    v1[F.JSET_HDR_SIZE - 8:F.JSET_HDR_SIZE] = F.checksum(
        hdr, bytes(v1[F.JSET_HDR_SIZE:F.JSET_HDR_SIZE + plen])).to_bytes(8, "little")
    v1 += bytes(-len(v1) % F.BLOCK_SIZE)
    assert F.unpack_jset(bytes(v1), 0).size == F.BLOCK_SIZE
    assert F.unpack_jset(raw, 0).size == len(raw) < F.BLOCK_SIZE


def _sample_jset() -> tuple[bytes, int]:
    roots = [(F.BtreeId.inodes, 0, 1 << 20, 5), (F.BtreeId.extents, 1, 2 << 20, 6)]
    keys = [(F.BtreeId.inodes, 0, F.pack_key(1, 0), bytes([F.KeyType.raw]) + b"abc"),
            (F.BtreeId.dirents, 0, F.pack_key(1, 1), b"")]
    payload = F.encode_jset_keys(keys)
    raw = F.pack_jset(10, 8, roots, len(keys), payload)
    return raw, F.JSET_HDR_SIZE + 2 * F.JSET_ROOT_SIZE + len(payload)


def test_jset_every_flipped_bit_is_rejected():
    raw, used = _sample_jset()
    # Header and payload; the zero padding up to the block is not covered.
    for i, bit, bad in _bits(raw[:used]):
        with pytest.raises(FormatError) as ei:
            F.unpack_jset(bad + raw[used:], 4096)
        assert ei.value.offset == 4096, (i, bit)


def _jset_with(seq=10, last_seq=8, roots=(), key_bytes=b"", nkeys=0) -> bytes:
    return F.pack_jset(seq, last_seq, list(roots), nkeys, key_bytes)


@pytest.mark.parametrize("raw,msg", [
    (_jset_with(seq=5, last_seq=6), "last_seq after seq"),
    (_jset_with(roots=[(F.BTREE_ID_NR, 0, 0, 0)]), "bad root"),
    (_jset_with(roots=[(0, F.MAX_BTREE_DEPTH + 1, 0, 0)]), "bad root"),
    (_jset_with(roots=[(0, 0, 0, 0)] * (F.BTREE_ID_NR + 1)), "roots"),
    (_jset_with(key_bytes=F.encode_jset_keys([(0, 0, F.ZERO_KEY, b"\xee")]), nkeys=1),
     "unknown key type"),
    (_jset_with(key_bytes=F.encode_jset_keys([(F.BTREE_ID_NR, 0, F.ZERO_KEY, b"")]),
                nkeys=1), "bad key record"),
    (_jset_with(key_bytes=F.encode_jset_keys([(0, 0, F.ZERO_KEY, b"")]), nkeys=2),
     "truncated key"),
    (_jset_with(key_bytes=F.encode_jset_keys([(0, 0, F.ZERO_KEY, b"")]) + b"x", nkeys=1),
     "trailing bytes"),
    (bytes(4096), "bad magic"),
])
def test_jset_bad_contents_rejected(raw, msg):
    with pytest.raises(FormatError, match=msg):
        F.unpack_jset(raw, 0)


def test_jset_header_probe():
    raw, used = _sample_jset()
    assert F.unpack_jset_header(raw, 0)[:4] == (10, 8, 2, 2)
    assert F.unpack_jset_header(bytes(4096), 0) is None
    assert F.unpack_jset_header(raw[:10], 0) is None
    with pytest.raises(FormatError, match="runs past"):
        F.unpack_jset(raw[:used - 1], 0)


def test_value_to_text():
    assert F.value_to_text(b"") == "whiteout"
    assert F.value_to_text(bytes([F.KeyType.raw]) + b"\x01") == "raw 1 bytes"
    assert "bytes" in F.value_to_text(bytes([F.KeyType.raw]) + bytes(100))
    assert F.value_to_text(b"\xee").startswith("type238")


# --------------------------------------------------------------------------
# docs/FORMAT.md documents every superblock field at its real offset

FORMAT_MD = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


def _sb_layout() -> list[tuple[str, int, int]]:
    codes = re.findall(r"\d*[a-zA-Z?]", F.SB_FMT[1:])
    out, off = [], 0
    for name, code in zip(F.SB_FIELDS, codes, strict=True):
        size = struct.calcsize("<" + code)
        out.append((name, off, size))
        off += size
    return out


def test_format_md_superblock_table_matches_struct():
    rows = {}
    for line in FORMAT_MD.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in F.SB_FIELDS:
            rows[cells[0]] = cells
    assert set(rows) == set(F.SB_FIELDS)
    for name, off, size in _sb_layout():
        assert rows[name][2:4] == [str(off), str(size)], name


@settings(max_examples=25)
@given(superblocks())
def test_superblock_dataclass_fields_all_packed(sb):
    # Every dataclass field except the in-memory extras reaches the disk; the
    # blacklist list is packed as blacklist_nr plus fixed range slots.
    slots = {n for n in F.SB_FIELDS if n.startswith("blacklist")}
    packed = set(F.SB_FIELDS) - {"magic", "sb_size", "csum"} - slots | {"blacklist"}
    assert {f.name for f in dataclasses.fields(sb)} - {"extra", "name_seed"} == packed
