"""Tier 2: `pyfs dump` and `pyfs journal` (pyfs/inspect.py) on image files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyfs import cli
from pyfs.device import MemDevice, OverlayDevice, open_device
from pyfs.engine import Engine
from pyfs.format import (
    MAX_KEY,
    Alloc,
    Backpointer,
    DataType,
    Dirent,
    Inode,
    KeyType,
    Xattr,
    key_to_text,
    pack_key,
)
from pyfs.inspect import InspectError, decoded, open_image, parse_pos, when
from pyfs.mkfs import format_device

REPO = Path(__file__).resolve().parent.parent
KiB, MiB = 1 << 10, 1 << 20


def make_image(path: Path, *, crash: bool, n: int = 120, big_replay: bool = False) -> dict:
    """An image with inodes (i, j) -> Inode(size=i*j); crashed (journal to
    replay) or cleanly closed. Returns {key: value} of what it holds."""
    dev = open_device(str(path), create_size=16 * MiB)
    format_device(dev, bucket_size=128 * KiB, btree_node_size=16 * KiB)
    eng = Engine(dev)
    if big_replay:
        eng.sync_all()          # later keys only in the journal: replay splits nodes
    want = {}
    for i in range(n):
        t = eng.trans()
        for j in range(10):
            k, v = pack_key(i, j), Inode(mode=0o100644, nlink=1, size=i * j).pack()
            t.set(1, k, v)
            want[k] = v
        t.commit()
    t = eng.trans()
    t.set(3, pack_key(7, 7), bytes([KeyType.raw]) + b"xattr-ish")
    t.commit()
    eng.flush()
    if crash:
        dev.close()
    else:
        eng.close()
    return want


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("crash", [False, True], ids=["clean", "crashed"])
def test_dump_lists_keys(tmp_path, capsys, crash):
    img = tmp_path / "img"
    want = make_image(img, crash=crash)
    code, out, err = run(["dump", str(img), "--btree", "inodes"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(want)
    assert lines[0].startswith("0:0 inode mode=-rw-r--r-- (100644) uid=0 gid=0 nlink=1 ")
    assert f"{key_to_text(pack_key(5, 3))} inode " in out and " size=15 " in out
    assert " mtime=1970-01-01 00:00:00.000000000 " in lines[0]
    code, out, _ = run(["dump", str(img), "-b", "xattrs"], capsys)
    assert code == 0 and out.splitlines() == ["7:7 raw 9 bytes"]
    code, out, _ = run(["dump", str(img), "-b", "inodes", "--raw", "--end", "0:0"], capsys)
    assert code == 0 and out.startswith("0:0 inode mode=33188 uid=0 ")


def test_dump_range(tmp_path, capsys):
    img = tmp_path / "img"
    make_image(img, crash=True)
    code, out, err = run(["dump", str(img), "--btree", "inodes", "--start", "3:8",
                          "--end", "4:1"], capsys)
    assert code == 0, err
    assert [ln.split()[0] for ln in out.splitlines()] == ["3:8", "3:9", "4:0", "4:1"]
    code, out, _ = run(["dump", str(img), "-b", "inodes", "--start", "119:9",
                        "--end", "max:max"], capsys)
    assert code == 0 and [ln.split()[0] for ln in out.splitlines()] == ["119:9"]


def test_dump_nodes(tmp_path, capsys):
    img = tmp_path / "img"
    make_image(img, crash=False, n=300)
    code, out, err = run(["dump", str(img), "--btree", "inodes", "--nodes"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("inodes L1 node@")
    assert len(lines) > 3 and all(ln.startswith("  inodes L0 node@") for ln in lines[1:])
    assert "[0:0 .. " in lines[1]


def test_dump_replays_in_memory_only(tmp_path, capsys):
    """A replay that splits nodes must not write the image (or fail on it)."""
    img = tmp_path / "img"
    want = make_image(img, crash=True, n=300, big_replay=True)
    before = sha(img)
    os.chmod(img, 0o444)
    try:
        code, out, err = run(["dump", str(img), "-b", "inodes"], capsys)
    finally:
        os.chmod(img, 0o644)
    assert code == 0, err
    assert len(out.splitlines()) == len(want)
    assert sha(img) == before
    # A replay that writes nodes (here: every 4 KiB of dirty keys) writes
    # them into the overlay, never the image.
    dev = open_image(str(img))
    eng = Engine(dev, read_only=True, write_buffer=4096)
    assert eng.dev.blocks and eng.counters["btree_node_writes"] > 0
    assert sha(img) == before
    assert dict(eng.btrees.iter(1)) == want
    dev.close()


def test_dump_works_on_a_locked_image(tmp_path, capsys):
    img = tmp_path / "img"
    make_image(img, crash=False)
    holder = open_device(str(img))          # as a mount holds it
    try:
        code, out, err = run(["dump", str(img), "-b", "inodes", "--end", "0:2"], capsys)
        assert code == 0, err
        assert len(out.splitlines()) == 3
        code, out, err = run(["journal", str(img)], capsys)
        assert code == 0, err
    finally:
        holder.close()


@pytest.mark.parametrize("crash", [False, True], ids=["clean", "crashed"])
def test_journal_lists_entries(tmp_path, capsys, crash):
    img = tmp_path / "img"
    make_image(img, crash=crash)
    code, out, err = run(["journal", str(img)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    entries = [ln for ln in lines if ln.startswith("seq ")]
    assert entries and all(" last_seq " in ln and " offset " in ln and " size " in ln
                           and " keys " in ln and " roots [" in ln for ln in entries)
    assert "inodes@" in entries[-1]
    assert lines[-1].startswith(f"{len(entries)} entries, seq ")
    if crash:
        assert len(entries) >= 1 and sum(int(ln.split(" keys ")[1].split()[0])
                                         for ln in entries) >= 1200
    else:
        assert " keys 0 " in entries[-1], "a clean unmount ends with a keyless entry"
    code, out, err = run(["journal", str(img), "-v"], capsys)
    assert code == 0, err
    if crash:
        assert "  inodes 5:3 inode mode=-rw-r--r-- (100644) " in out
        assert "  xattrs 7:7 raw 9 bytes" in out
        code, out, err = run(["journal", str(img), "-v", "--raw"], capsys)
        assert code == 0 and "  inodes 5:3 inode mode=33188 " in out


def test_journal_of_a_fresh_image(tmp_path, capsys):
    img = tmp_path / "img"
    dev = open_device(str(img), create_size=16 * MiB)
    format_device(dev, bucket_size=128 * KiB, btree_node_size=16 * KiB)
    dev.close()
    code, out, err = run(["journal", str(img)], capsys)
    assert code == 0, err
    assert out.strip() == "journal empty"
    code, out, err = run(["dump", str(img), "-b", "inodes"], capsys)
    assert code == 0, err
    assert out == ""
    code, out, err = run(["dump", str(img), "-b", "inodes", "--nodes"], capsys)
    assert code == 0 and "no root" in out


@pytest.mark.parametrize("cmd", [["dump", "-b", "inodes"], ["journal"], ["dump", "-b", "inodes",
                                                                          "--nodes"]])
def test_not_pyfs_is_a_clear_error(tmp_path, capsys, cmd):
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(4 * MiB))
    code, out, err = run([cmd[0], str(junk), *cmd[1:]], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"pyfs {cmd[0]}: ") and "not a usable pyfs filesystem" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_arguments(tmp_path, capsys):
    img = tmp_path / "img"
    make_image(img, crash=False, n=5)
    for argv, msg in ((["dump", str(img), "-b", "nosuch"], "unknown btree 'nosuch'"),
                      (["dump", str(img), "-b", "inodes", "--start", "12"], "bad position"),
                      (["dump", str(img), "-b", "inodes", "--start", "2:0", "--end", "1:0"],
                       "is after end"),
                      (["dump", str(tmp_path / "missing"), "-b", "inodes"], "no such file"),
                      (["journal", str(tmp_path / "missing")], "no such file")):
        code, out, err = run(argv, capsys)
        assert code == 1 and msg in err, (argv, err)
        assert "Traceback" not in err


def test_subprocess_no_traceback(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * (1 * MiB))
    for args in (["dump", str(junk), "--btree", "inodes"], ["journal", str(junk)]):
        r = subprocess.run([sys.executable, "-c", "import sys; from pyfs.cli import main; "
                            "sys.exit(main(sys.argv[1:]))", *args],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and "not a usable pyfs filesystem" in r.stderr


def test_decoded_values():
    ino = Inode(mode=0o40755, uid=7, gid=8, nlink=2, size=3, atime_ns=1_700_000_000_123456789,
                mtime_ns=-1, rdev=os.makedev(8, 1), tail=b"t\xffx").pack()
    t = decoded(ino)
    assert t.startswith("inode mode=drwxr-xr-x (040755) uid=7 gid=8 nlink=2 size=3 ")
    assert "atime=2023-11-14 22:13:20.123456789 " in t and "rdev=8:1" in t
    assert "mtime=1969-12-31 23:59:59.999999999 " in t and "target='t\\xffx'" in t
    assert decoded(Dirent(inum=16, d_type=4, hash=9, tail="é'\n".encode()).pack()) == \
        "dirent 'é\\'\\n' -> 16 (dir) home=9"
    assert decoded(Dirent(inum=0, d_type=0, hash=5).pack()) == "dirent tombstone home=5"
    x = Xattr(name_len=6, hash=3, tail=b"user.a" + b"v" * 70).pack()
    assert decoded(x) == f"xattr 'user.a' = '{'v' * 64}'... (70 bytes) home=3"
    a = Alloc(gen=2, data_type=DataType.user, flags=1, dirty_sectors=8, journal_seq=4).pack()
    assert decoded(a) == ("alloc user gen=2 dirty_sectors=8 cached_sectors=0 journal_seq=4 "
                          "flags=need_discard")
    bp = Backpointer(btree_id=0, level=0, pos=pack_key(16, 0), length=8, gen=2).pack()
    assert decoded(bp) == "backpointer extents L0 16:0 length=8 gen=2"
    assert when(10**40) == f"{10**40}ns"


def test_parse_pos():
    assert parse_pos("1:2") == pack_key(1, 2)
    assert parse_pos(" 4096 : 0 ") == pack_key(4096, 0)
    assert parse_pos("max") == MAX_KEY and parse_pos("max:max") == MAX_KEY
    assert parse_pos("5:max") == pack_key(5, (1 << 64) - 1)
    for bad in ("", "1", "1:2:3", "-1:0", "a:b", f"{1 << 64}:0"):
        with pytest.raises(InspectError):
            parse_pos(bad)


def test_overlay_device_keeps_writes_in_memory():
    inner = MemDevice(64 * KiB + 100)
    inner.pwrite(b"A" * (64 * KiB + 100), 0)
    ro = MemDevice(inner.snapshot(), read_only=True)
    ov = OverlayDevice(ro)
    ov.pwrite(b"xyz", 4094)                         # straddles a block boundary
    ov.pwrite(b"tail", 64 * KiB + 96)               # the partial last block
    assert ov.pread(7, 4092) == b"AAxyzAA"
    assert ov.pread(4, 64 * KiB + 96) == b"tail"
    ov.discard(8192, 4096)
    assert ov.pread(4096, 8192) == bytes(4096) and ov.pread(2, 8190) == b"AA"
    whole = ov.pread(ov.size, 0)
    assert whole[4094:4097] == b"xyz" and whole[-4:] == b"tail"
    assert ro.snapshot() == inner.snapshot(), "the inner device is untouched"
    with pytest.raises(OSError):
        ov.pwrite(b"x", ov.size)
