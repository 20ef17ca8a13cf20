"""Tier 1: superblock read/write, mkfs layout and signatures, and the mkfs/show-super CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from pyfs import cli
from pyfs.device import MemDevice, RecordingDevice, open_device
from pyfs.format import (
    BLOCK_SIZE,
    MAGIC,
    SB_OFFSET,
    SB_SIZE,
    Feature,
    FormatError,
    SbState,
    Superblock,
    backup_sb_offset,
)
from pyfs.mkfs import (
    BCACHEFS_MAGIC,
    MkfsError,
    choose_layout,
    detect_signature,
    format_device,
    min_device_size,
)
from pyfs.superblock import read_superblock, sb_field_layout, write_superblock

REPO = Path(__file__).resolve().parent.parent
MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
MKFS_EXT4 = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"


def formatted(size: int = 64 * MiB, **kw) -> tuple[MemDevice, Superblock]:
    dev = MemDevice(size)
    return dev, format_device(dev, now_ns=123, **kw)


def flip(dev: MemDevice, offset: int) -> None:
    b = dev.pread(1, offset)
    dev.pwrite(bytes([b[0] ^ 0x10]), offset)


# --------------------------------------------------------------------------
# read_superblock / write_superblock

def test_round_trip_on_mem_device():
    dev, sb = formatted()
    got, warnings = read_superblock(dev)
    assert got == sb and warnings == []
    assert got.write_count == 1 and got.wtime_ns == 123 and got.ctime_ns == 123
    primary = dev.pread(BLOCK_SIZE, SB_OFFSET)
    assert dev.pread(BLOCK_SIZE, sb.backup_offset) == primary
    assert primary[SB_SIZE:] == bytes(BLOCK_SIZE - SB_SIZE)       # padded block


def test_write_bumps_count_and_time_and_flushes():
    dev, sb = formatted()
    flushes = dev.counters["flushes"]
    sb.mount_count += 1
    write_superblock(dev, sb)
    assert sb.write_count == 2 and sb.wtime_ns > 123
    assert dev.counters["flushes"] == flushes + 2
    assert read_superblock(dev)[0].mount_count == 1
    write_superblock(dev, sb, flush=False, now_ns=999)
    assert dev.counters["flushes"] == flushes + 2
    assert read_superblock(dev)[0].wtime_ns == 999


def test_write_makes_primary_durable_before_touching_backup():
    dev, sb = formatted()
    rec = RecordingDevice(dev)
    write_superblock(rec, sb)
    ops = [(op[0], op[1] if op[0] == "write" else None) for op in rec.log]
    assert ops == [("write", SB_OFFSET), ("flush", None),
                   ("write", sb.backup_offset), ("flush", None)]
    assert all(len(op[2]) == BLOCK_SIZE for op in rec.log if op[0] == "write")


def test_write_refuses_an_invalid_superblock():
    dev, sb = formatted()
    sb.bucket_size = 3000
    with pytest.raises(FormatError, match="refusing to write"):
        write_superblock(dev, sb)
    assert dev.counters["writes"] == 2              # only mkfs's two copies


def test_write_count_wraps_as_u32():
    dev, sb = formatted()
    sb.write_count = 2**32 - 1
    write_superblock(dev, sb)
    assert read_superblock(dev)[0].write_count == 0


def test_corrupt_primary_falls_back_to_backup_with_warning():
    dev, sb = formatted()
    flip(dev, SB_OFFSET + 70)
    got, warnings = read_superblock(dev)
    assert got == sb
    assert len(warnings) == 1
    w = warnings[0]
    assert "primary superblock at byte 4096 is bad" in w and "checksum mismatch" in w
    assert f"using the backup at byte {sb.backup_offset}" in w


def test_wiped_primary_falls_back_to_backup():
    dev, sb = formatted()
    dev.pwrite(bytes(BLOCK_SIZE), SB_OFFSET)
    got, warnings = read_superblock(dev)
    assert got == sb and "bad magic" in warnings[0]


def test_both_copies_corrupt_raises_explaining_both():
    dev, sb = formatted()
    flip(dev, SB_OFFSET + 100)
    flip(dev, sb.backup_offset + 5)
    with pytest.raises(FormatError) as ei:
        read_superblock(dev)
    msg = str(ei.value)
    assert "primary at byte 4096: checksum mismatch" in msg
    assert f"backup at byte {sb.backup_offset}: bad magic" in msg


def test_not_pyfs_at_all():
    with pytest.raises(FormatError, match="bad magic"):
        read_superblock(MemDevice(8 * MiB))


@pytest.mark.parametrize("size", [0, 100, SB_OFFSET, SB_OFFSET + SB_SIZE - 1])
def test_device_too_small_for_a_superblock(size):
    with pytest.raises(FormatError, match="too small"):
        read_superblock(MemDevice(size))


def test_device_smaller_than_two_copies_has_no_backup():
    dev = MemDevice(3 * BLOCK_SIZE - 1)       # its last block is the primary's
    with pytest.raises(FormatError, match="no backup"):
        read_superblock(dev)


def test_device_shrunk_since_mkfs():
    dev, sb = formatted(64 * MiB)
    small = MemDevice(dev.snapshot()[:48 * MiB])
    with pytest.raises(FormatError) as ei:
        read_superblock(small)
    msg = str(ei.value)
    assert "larger than the device" in msg and f"backup at byte {48 * MiB - 4096}" in msg


def test_device_grown_since_mkfs():
    dev, sb = formatted(64 * MiB)
    grown = MemDevice(dev.snapshot() + bytes(16 * MiB))
    assert read_superblock(grown) == (sb, [])
    # With the primary damaged, its recorded size still points at the old backup.
    flip(grown, SB_OFFSET + 150)
    got, warnings = read_superblock(grown)
    assert got == sb and f"backup at byte {sb.backup_offset}" in warnings[0]


def test_stale_backup_of_another_size_is_not_used():
    # A backup whose own size says it belongs elsewhere (e.g. left by an older,
    # bigger filesystem) must not be trusted.
    dev, sb = formatted(64 * MiB)
    other = MemDevice(80 * MiB)
    other.pwrite(dev.pread(BLOCK_SIZE, sb.backup_offset), backup_sb_offset(80 * MiB))
    with pytest.raises(FormatError, match="belongs to a filesystem of"):
        read_superblock(other)


def test_sb_field_layout_covers_struct():
    layout = sb_field_layout()
    assert [n for n, *_ in layout][0] == "magic" and layout[-1][0] == "csum"
    assert layout[-1][2] + layout[-1][3] == SB_SIZE


# --------------------------------------------------------------------------
# choose_layout

def test_layout_defaults_for_1_gib():
    lay = choose_layout(GiB)
    assert lay["bucket_size"] == 256 << 10 and lay["btree_node_size"] == 256 << 10
    assert lay["nbuckets"] == 4096
    assert lay["journal_bucket"] == 1 and lay["journal_nbuckets"] == 32    # 8 MiB
    assert lay["first_data_bucket"] == 33 and lay["group_buckets"] == 64
    assert lay["backup_sb_offset"] == GiB - BLOCK_SIZE


def test_layout_defaults_for_1_tib():
    lay = choose_layout(TiB)
    assert lay["bucket_size"] == 2 * MiB and lay["btree_node_size"] == 256 << 10
    assert lay["nbuckets"] == 1 << 19
    assert lay["journal_nbuckets"] == 512                                 # capped at 1 GiB
    assert lay["group_buckets"] == 1024


@pytest.mark.parametrize("size,bucket", [
    (4 * MiB, 128 << 10), (512 * MiB, 128 << 10), (513 * MiB, 256 << 10),
    (3 * GiB, 1 << 20), (8 * GiB, 2 * MiB), (16 * TiB, 2 * MiB)])
def test_bucket_size_scales_and_clamps(size, bucket):
    assert choose_layout(size)["bucket_size"] == bucket


def test_journal_at_least_8_buckets_and_1_mib():
    lay = choose_layout(100 * MiB, bucket_size=2 * MiB)
    assert lay["journal_nbuckets"] == 8
    lay = choose_layout(8 * MiB)
    assert lay["journal_nbuckets"] * lay["bucket_size"] == MiB


def test_layout_explicit_sizes():
    lay = choose_layout(GiB, bucket_size=MiB, btree_node_size=16 << 10)
    assert (lay["bucket_size"], lay["btree_node_size"], lay["nbuckets"]) == (MiB, 16 << 10, 1024)
    assert choose_layout(GiB, bucket_size=2 * MiB)["btree_node_size"] == 256 << 10


@pytest.mark.parametrize("kw,msg", [
    (dict(bucket_size=300 << 10), "power of two"),
    (dict(bucket_size=64 << 10), "between 128 KiB and 2 MiB"),
    (dict(bucket_size=4 * MiB), "between 128 KiB and 2 MiB"),
    (dict(btree_node_size=512 << 10), "btree node size"),           # > 256K bucket
    (dict(btree_node_size=8 << 10), "btree node size"),
    (dict(btree_node_size=48 << 10), "btree node size"),
])
def test_layout_rejects_bad_geometry(kw, msg):
    with pytest.raises(MkfsError, match=msg):
        choose_layout(GiB, **kw)


@pytest.mark.parametrize("bucket", [128 << 10, 256 << 10, 2 * MiB])
def test_minimum_size_is_exact_and_stated(bucket):
    lo = min_device_size(bucket)
    lay = choose_layout(lo, bucket_size=bucket)
    assert lay["nbuckets"] - lay["first_data_bucket"] - 1 == 16
    with pytest.raises(MkfsError) as ei:
        choose_layout(lo - 1, bucket_size=bucket)
    assert str(lo) in str(ei.value) and "too small" in str(ei.value)
    assert issubclass(MkfsError, ValueError)


def test_every_layout_validates():
    for size in (min_device_size(128 << 10), 5 * MiB + 12345, GiB + 4096, 7 * TiB):
        lay = choose_layout(size)
        fields = {k: v for k, v in lay.items() if k != "backup_sb_offset"}
        sb = Superblock(uuid=bytes(16), label="", **fields)
        assert sb.validate(size) is None, size


# --------------------------------------------------------------------------
# format_device

def test_format_fields():
    u = uuidlib.uuid4()
    dev, sb = formatted(label="data", uuid=u)
    assert sb.uuid == u.bytes and sb.label == "data"
    assert sb.state == SbState.clean and sb.clean_journal_seq == 0
    assert sb.features == 1 << Feature.backpointers
    assert sb.ctime_ns == 123 and sb.mount_count == 0 and sb.mtime_ns == 0
    assert sb.device_size == dev.size


def test_format_random_uuid_and_bad_label():
    _, a = formatted()
    _, b = formatted()
    assert a.uuid != b.uuid
    with pytest.raises(MkfsError, match="longer than 32 bytes"):
        formatted(label="x" * 33)
    with pytest.raises(MkfsError, match="NUL"):
        formatted(label="a\0b")


def test_format_erases_old_contents():
    dev = MemDevice(b"\xaa" * (16 * MiB))
    sb = format_device(dev)
    img = bytearray(dev.snapshot())
    img[SB_OFFSET:SB_OFFSET + BLOCK_SIZE] = bytes(BLOCK_SIZE)
    img[sb.backup_offset:sb.backup_offset + BLOCK_SIZE] = bytes(BLOCK_SIZE)
    assert img.count(0) == len(img)


class FakeBlockDevice(MemDevice):
    """A block device whose discard does nothing, as many do."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.is_block = True

    def discard(self, offset: int, length: int) -> None:
        self.counters["discards"] += 1


def test_format_block_device_zeroes_what_readers_look_at():
    dev = FakeBlockDevice(b"\xaa" * (16 * MiB))
    sb = format_device(dev)
    bs = sb.bucket_size
    head = dev.pread(128 << 10, 0)
    assert head[:SB_OFFSET] == bytes(SB_OFFSET)
    assert head[SB_OFFSET + SB_SIZE:] == bytes(len(head) - SB_OFFSET - SB_SIZE)
    for b in range(sb.journal_bucket, sb.first_data_bucket):
        assert dev.pread(BLOCK_SIZE, b * bs) == bytes(BLOCK_SIZE), b
    assert read_superblock(dev) == (sb, [])
    assert detect_signature(dev) == "pyfs filesystem"


def test_format_too_small_device():
    with pytest.raises(MkfsError, match="too small"):
        format_device(MemDevice(MiB))


# --------------------------------------------------------------------------
# detect_signature

def _dev_with(size: int, *patches: tuple[int, bytes]) -> MemDevice:
    dev = MemDevice(size)
    for off, data in patches:
        dev.pwrite(data, off)
    return dev


SIGNATURES = [
    ([(0, b"LUKS\xba\xbe")], "LUKS encrypted volume"),
    ([(0, b"XFSB")], "xfs filesystem"),
    ([(65600, b"_BHRfS_M")], "btrfs filesystem"),
    ([(4096 + 24, BCACHEFS_MAGIC)], "bcachefs filesystem"),
    ([(1080, b"\x53\xef")], "ext2 filesystem"),
    ([(1080, b"\x53\xef"), (1024 + 0x5C, b"\x04")], "ext3 filesystem"),
    ([(1080, b"\x53\xef"), (1024 + 0x60, b"\x40")], "ext4 filesystem"),
    ([(4086, b"SWAPSPACE2")], "swap area"),
    ([(4086, b"SWAP-SPACE")], "swap area"),
    ([(32769, b"CD001")], "iso9660 filesystem"),
    ([(54, b"FAT12   "), (510, b"\x55\xaa")], "vfat filesystem"),
    ([(82, b"FAT32   "), (510, b"\x55\xaa")], "vfat filesystem"),
    ([(510, b"\x55\xaa"), (512, b"EFI PART")], "GPT partition table"),
    ([(510, b"\x55\xaa")], "DOS/MBR partition table or boot sector"),
    ([(SB_OFFSET, MAGIC)], "pyfs filesystem"),
    ([(8 * MiB - 4096, MAGIC)], "pyfs filesystem (backup superblock)"),
    ([(54, b"FAT16   ")], None),                # no boot signature: not FAT
    ([(1081, b"\x53\xef")], None),
]


@pytest.mark.parametrize("patches,expect", SIGNATURES, ids=[str(e) for _, e in SIGNATURES])
def test_detect_signature(patches, expect):
    assert detect_signature(_dev_with(8 * MiB, *patches)) == expect


@pytest.mark.parametrize("size", [0, 1, 511, 1082, 4096, 12288, 65601])
def test_detect_signature_on_tiny_devices(size):
    assert detect_signature(MemDevice(size)) is None
    if size > 1082:
        assert detect_signature(_dev_with(size, (1080, b"\x53\xef"))) == "ext2 filesystem"


def test_detect_pyfs_after_format():
    dev, _ = formatted()
    assert detect_signature(dev) == "pyfs filesystem"
    assert detect_signature(MemDevice(64 * MiB)) is None


@pytest.fixture
def ext4_image(tmp_path) -> Path:
    if not os.path.exists(MKFS_EXT4):
        pytest.skip("mkfs.ext4 not installed")
    path = tmp_path / "ext4.img"
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run([MKFS_EXT4, "-q", "-F", str(path)], check=True)
    return path


def test_detect_real_ext4(ext4_image):
    with open_device(str(ext4_image), read_only=True, exclusive=False) as dev:
        assert detect_signature(dev) == "ext4 filesystem"


# --------------------------------------------------------------------------
# CLI: pyfs mkfs

def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def mkfs(capsys, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, "mkfs", *argv)


def test_mkfs_creates_image_and_prints_summary(capsys, tmp_path):
    img = tmp_path / "a.img"
    rc, out, err = mkfs(capsys, str(img), "--size", "64M")
    assert rc == 0 and err == ""
    assert img.stat().st_size == 64 * MiB
    with open_device(str(img), read_only=True, exclusive=False) as dev:
        sb, warnings = read_superblock(dev)
    assert warnings == []
    for needle in (str(uuidlib.UUID(bytes=sb.uuid)), "64 MiB", "512 x 128 KiB", "Journal"):
        assert needle in out


def test_mkfs_quiet(capsys, tmp_path):
    assert mkfs(capsys, str(tmp_path / "q.img"), "--size", "8M", "-q") == (0, "", "")


@pytest.mark.parametrize("argv,msg", [
    (["--size", "12Q"], "bad size '12Q'"),
    (["--size", "-5"], "bad size '-5'"),
    (["--size", "0"], "greater than zero"),
    (["--size", "1.5"], "not a whole number"),
    (["--size", ""], "bad size"),
    (["--size", "5iB"], "bad size"),
    (["--size", "1M"], "too small"),
    (["--size", "1G", "--bucket-size", "200K"], "power of two"),
    (["--size", "1G", "--bucket-size", "4M"], "between 128 KiB and 2 MiB"),
    (["--size", "1G", "--bucket-size", "abc"], "bad bucket size"),
    (["--size", "1G", "--btree-node-size", "256K", "--bucket-size", "128K"],
     "btree node size"),
    (["--size", "1G", "--uuid", "not-a-uuid"], "bad UUID"),
    (["--size", "1G", "--label", "x" * 40], "longer than 32 bytes"),
    ([], "does not exist; give --size to create it"),
])
def test_mkfs_argument_errors(capsys, tmp_path, argv, msg):
    img = tmp_path / "bad.img"
    rc, out, err = mkfs(capsys, str(img), *argv)
    assert rc == 1 and out == ""
    assert err.startswith("mkfs.pyfs: ") and err.count("\n") == 1 and msg in err
    assert not img.exists()               # nothing left behind


def test_mkfs_too_small_states_minimum(capsys, tmp_path):
    rc, _, err = mkfs(capsys, str(tmp_path / "s.img"), "--size", "1M")
    assert rc == 1 and str(min_device_size(128 << 10)) in err


def test_mkfs_unwritable_path(capsys):
    rc, _, err = mkfs(capsys, "/proc/nonexistent/x.img", "--size", "64M")
    assert rc == 1 and err.startswith("mkfs.pyfs: ") and "/proc/nonexistent" in err


def test_mkfs_read_only_directory(capsys, tmp_path):
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    if os.geteuid() != 0:
        rc, _, err = mkfs(capsys, str(d / "x.img"), "--size", "64M")
        assert rc == 1 and "not writable" in err
        return
    # Root writes anywhere: run mkfs as root without the capability that lets it.
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE"
    proc = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--",
                           sys.executable, "-m", "pyfs.cli", "mkfs", str(d / "x.img"),
                           "--size", "64M"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "not writable" in proc.stderr, proc.stderr
    assert not (d / "x.img").exists()


def test_mkfs_usage_errors_exit_2(capsys, tmp_path):
    assert cli.main(["mkfs"]) == 2
    assert cli.main(["mkfs", str(tmp_path / "x"), "--bogus"]) == 2
    assert cli.main([]) == 2
    assert cli.main(["no-such-command"]) == 2
    assert "usage" in capsys.readouterr().err
    assert cli.mkfs_main([]) == 2
    assert "mkfs.pyfs" in capsys.readouterr().err


def test_mkfs_refuses_existing_pyfs_without_force(capsys, tmp_path):
    img = tmp_path / "p.img"
    assert mkfs(capsys, str(img), "--size", "64M", "-q", "-L", "first")[0] == 0
    rc, _, err = mkfs(capsys, str(img), "-L", "second")
    assert rc == 1 and "pyfs filesystem" in err and "--force" in err
    assert "first" in run_cli(capsys, "show-super", str(img))[1]
    assert mkfs(capsys, str(img), "-L", "second", "--force", "-q")[0] == 0
    assert "second" in run_cli(capsys, "show-super", str(img))[1]


def test_mkfs_refuses_ext4_without_force(capsys, ext4_image):
    before = ext4_image.read_bytes()
    rc, _, err = mkfs(capsys, str(ext4_image))
    assert rc == 1 and "an ext4 filesystem" in err and "--force" in err
    assert ext4_image.read_bytes() == before
    rc, _, err = mkfs(capsys, str(ext4_image), "--force", "-q")
    assert rc == 0 and err == ""
    with open_device(str(ext4_image), read_only=True, exclusive=False) as dev:
        assert detect_signature(dev) == "pyfs filesystem"
        read_superblock(dev)


def test_mkfs_refusal_does_not_resize(capsys, ext4_image):
    rc, _, _ = mkfs(capsys, str(ext4_image), "--size", "64M")
    assert rc == 1 and ext4_image.stat().st_size == 16 * MiB


@pytest.mark.parametrize("new", ["32M", "128M"])
def test_mkfs_size_resizes_existing_file(capsys, tmp_path, new):
    img = tmp_path / "r.img"
    img.write_bytes(b"")                        # blank, no signature
    os.truncate(img, 64 * MiB)
    assert mkfs(capsys, str(img), "--size", new, "-q")[0] == 0
    size = cli.parse_size(new)
    assert img.stat().st_size == size
    with open_device(str(img), read_only=True, exclusive=False) as dev:
        assert read_superblock(dev)[0].device_size == size


def test_mkfs_existing_file_without_size_uses_its_size(capsys, tmp_path):
    img = tmp_path / "e.img"
    with open(img, "wb") as f:
        f.truncate(40 * MiB)
    assert mkfs(capsys, str(img), "-q")[0] == 0
    assert img.stat().st_size == 40 * MiB


def test_mkfs_existing_empty_file_is_too_small(capsys, tmp_path):
    img = tmp_path / "empty.img"
    img.touch()
    rc, _, err = mkfs(capsys, str(img))
    assert rc == 1 and "too small" in err and img.exists()


def test_mkfs_label_and_uuid(capsys, tmp_path):
    img = tmp_path / "l.img"
    u = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    rc, out, _ = mkfs(capsys, str(img), "--size", "32MiB", "--label", "my disk", "--uuid", u)
    assert rc == 0 and u in out and "my disk" in out
    rc, out, err = run_cli(capsys, "show-super", str(img))
    assert rc == 0 and err == ""
    assert u in out and "my disk" in out and "Bucket size:" in out and "131072" in out


def test_mkfs_geometry_options(capsys, tmp_path):
    img = tmp_path / "g.img"
    rc, _, _ = mkfs(capsys, str(img), "--size", "1g", "--bucket-size", "1MiB",
                    "--btree-node-size", "64k", "-q")
    assert rc == 0
    with open_device(str(img), read_only=True, exclusive=False) as dev:
        sb = read_superblock(dev)[0]
    assert (sb.bucket_size, sb.btree_node_size, sb.nbuckets) == (MiB, 64 << 10, 1024)


def test_mkfs_1_tib_sparse_image(capsys, tmp_path):
    img = tmp_path / "big.img"
    t0 = time.perf_counter()
    rc, _, err = mkfs(capsys, str(img), "--size", "1T", "-q")
    elapsed = time.perf_counter() - t0
    print(f"mkfs of a 1 TiB sparse image took {elapsed:.3f} s")
    assert rc == 0, err
    st = img.stat()
    assert st.st_size == TiB
    assert st.st_blocks * 512 < 10 * MiB
    assert elapsed < 5


def test_mkfs_refuses_locked_image(capsys, tmp_path):
    img = tmp_path / "busy.img"
    assert mkfs(capsys, str(img), "--size", "64M", "-q")[0] == 0
    with open_device(str(img)):
        rc, _, err = mkfs(capsys, str(img), "--force")
        assert rc == 1 and err.startswith("mkfs.pyfs: ") and "in use" in err
        # Inspection still works on a held (mounted) image.
        assert run_cli(capsys, "show-super", str(img))[0] == 0


# --------------------------------------------------------------------------
# CLI: show-super, version, stubs

def test_show_super_falls_back_with_warning(capsys, tmp_path):
    img = tmp_path / "w.img"
    assert mkfs(capsys, str(img), "--size", "64M", "-q", "-L", "bk")[0] == 0
    with open(img, "r+b") as f:
        f.seek(SB_OFFSET + 64)
        f.write(b"\xff\xff")
    rc, out, err = run_cli(capsys, "show-super", str(img))
    assert rc == 0 and "bk" in out
    assert "warning" in err and "using the backup" in err


@pytest.mark.parametrize("content", [b"", b"hello world" * 1000, bytes(8 * MiB)])
def test_show_super_rejects_non_pyfs(capsys, tmp_path, content):
    img = tmp_path / "n.img"
    img.write_bytes(content)
    rc, out, err = run_cli(capsys, "show-super", str(img))
    assert rc == 1 and out == ""
    assert err.startswith("pyfs show-super: ") and err.count("\n") == 1


def test_show_super_missing_file(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "show-super", str(tmp_path / "missing.img"))
    assert rc == 1 and "missing.img" in err


def test_version(capsys):
    rc, out, _ = run_cli(capsys, "version")
    assert rc == 0 and out.startswith("pyfs ") and "format 1" in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == out


def test_mount_helper_usage_error(capsys):
    # mount(8) calls `mount.pyfs IMAGE DIR -o OPTS`; missing arguments are a usage error.
    assert cli.mount_main([]) == 1          # mount(8): 1 is incorrect invocation
    assert "IMAGE" in capsys.readouterr().err


def test_command_registry_accepts_new_commands(capsys):
    seen = []

    @cli.command("t1-probe", help="test", setup=lambda p: p.add_argument("x"))
    def run(args):
        seen.append(args.x)
        raise cli.CliError("probe failed", code=3)

    try:
        assert cli.main(["t1-probe", "42"]) == 3
        assert seen == ["42"]
        assert capsys.readouterr().err == "pyfs t1-probe: probe failed\n"
    finally:
        del cli.COMMANDS["t1-probe"]


@pytest.mark.parametrize("text,value", [
    ("4096", 4096), ("512K", 512 << 10), ("512k", 512 << 10), ("1M", MiB), ("1MiB", MiB),
    ("1mib", MiB), ("1MB", MiB), ("2G", 2 * GiB), ("1T", TiB), ("1.5G", 3 * GiB // 2),
    ("100B", 100), (" 8M ", 8 * MiB),
])
def test_parse_size(text, value):
    assert cli.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "12Q", "-5", "1.5", "0", "1 G G", "0x10", "5iB"])
def test_parse_size_rejects(text):
    with pytest.raises(cli.CliError):
        cli.parse_size(text)


# --------------------------------------------------------------------------
# The scripts, as a user runs them

def run_script(*argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_mkfs_script(tmp_path):
    img = tmp_path / "s.img"
    proc = run_script("mkfs.py", str(img), "--size", "64M")
    assert proc.returncode == 0 and "Created a pyfs filesystem" in proc.stdout
    proc = run_script("mkfs.py", str(img))
    assert proc.returncode == 1 and proc.stderr.startswith("mkfs.pyfs: ")
    assert "--force" in proc.stderr


@pytest.mark.parametrize("argv", [
    ["--size", "12Q"], ["--size", "-5"], ["--size", "1M"], [],
    ["--size", "1G", "--bucket-size", "100K"],
    ["--size", "1G", "--bucket-size", "128K", "--btree-node-size", "1M"],
])
def test_mkfs_script_errors(tmp_path, argv):
    proc = run_script("mkfs.py", str(tmp_path / "x.img"), *argv)
    assert proc.returncode == 1
    assert proc.stderr.startswith("mkfs.pyfs: ") and proc.stderr.count("\n") == 1


def test_mkfs_script_unwritable_and_usage(tmp_path):
    proc = run_script("mkfs.py", "/proc/nonexistent/x.img", "--size", "1G")
    assert proc.returncode == 1 and proc.stderr.startswith("mkfs.pyfs: ")
    proc = run_script("mkfs.py")
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_pyfs_module_entry_point(tmp_path):
    img = tmp_path / "m.img"
    assert run_script("mkfs.py", str(img), "--size", "64M", "-q").stdout == ""
    proc = run_script("-m", "pyfs.cli", "show-super", str(img))
    assert proc.returncode == 0 and "Bucket size:" in proc.stdout
    proc = run_script("-m", "pyfs.cli", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("pyfs ")
