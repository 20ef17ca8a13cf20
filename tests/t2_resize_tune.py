"""Tier 2: `pyfs resize` (grow) and `pyfs tune` (label, UUID) on image files
and a loop device: the filesystem stays valid (fsck clean) and the new space
is used."""

from __future__ import annotations

import os
import subprocess
import uuid as uuidlib

import fsck_lite
import pytest

from pyfs import cli
from pyfs.device import open_device
from pyfs.engine import Engine
from pyfs.format import BLOCK_SIZE, SB_REGION, Feature, SbState, backup_sb_offset
from pyfs.fs import Filesystem
from pyfs.fsck import FsckOptions, fsck_path
from pyfs.superblock import read_superblock

MiB = 1 << 20


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sb_of(path: str):
    with open_device(path, read_only=True, exclusive=False) as dev:
        sb, warnings = read_superblock(dev)
    assert not warnings
    return sb


def fill(path: str, names: list[str], size: int) -> None:
    """Write files of size bytes (content from the name) and unmount cleanly."""
    eng = Engine(open_device(path))
    fs = Filesystem(eng)
    for name in names:
        ino = fs.create(1, name.encode(), 0o644, 0, 0).st_ino
        data = name.encode() * (size // len(name))
        for off in range(0, len(data), 1 << 20):
            fs.write(ino, off, data[off:off + (1 << 20)])
    fs.shutdown()
    eng.close()


def check(path: str, names: list[str], size: int) -> None:
    """Every file reads back, and fsck (the real one and the test one) is clean."""
    res = fsck_path(path, FsckOptions(mode="no", force=True), out=open(os.devnull, "w"))
    assert res.exit_code == 0, res.summary
    eng = Engine(open_device(path, read_only=True, exclusive=False), read_only=True)
    fs = Filesystem(eng)
    for name in names:
        data = name.encode() * (size // len(name))
        assert fs.read(fs.lookup(1, name.encode()).st_ino, 0, len(data)) == data
    assert fsck_lite.check(eng) == []
    eng.dev.close()


def test_grow_an_image_file_and_use_the_new_space(tmp_path, capsys):
    img = str(tmp_path / "img")
    assert run(capsys, "mkfs", "-q", "--size", "24M", img)[0] == 0
    fill(img, ["before"], 8 * MiB)
    old = sb_of(img)
    code, out, err = run(capsys, "resize", img, "--size", "64M")
    assert code == 0 and "grown from 24 MiB (192 buckets) to 64 MiB (512 buckets)" in out, err
    new = sb_of(img)
    assert (new.device_size, new.nbuckets, new.state) == (64 * MiB, 512, SbState.clean)
    assert os.path.getsize(img) == 64 * MiB
    with open(img, "rb") as f:
        f.seek(new.backup_offset)
        assert f.read(8) == b"PYFS\xf5\x5b\x1e\x07", "the backup moved to the new end"
        f.seek(old.backup_offset)
        assert f.read(BLOCK_SIZE) == bytes(BLOCK_SIZE), "the old backup is gone"
    # More than the old filesystem could hold goes in after the grow.
    fill(img, ["after"], 36 * MiB)
    check(img, ["before", "after"], 8 * MiB)
    check(img, ["after"], 36 * MiB)
    code, out, _ = run(capsys, "resize", img)
    assert code == 0 and "is already 64 MiB" in out


def test_grow_crash_states_are_valid(tmp_path):
    """A crash between the steps leaves the old or the new filesystem, both valid."""
    img = str(tmp_path / "img")
    cli.main(["mkfs", "-q", "--size", "24M", img])
    fill(img, ["f"], MiB)
    with open_device(img) as dev:
        sb = read_superblock(dev)[0]
        os.ftruncate(dev.fd, 40 * MiB)
        dev.size = 40 * MiB
        new_backup = backup_sb_offset(40 * MiB)
        new = sb.__class__(**{**sb.__dict__, "device_size": 40 * MiB, "nbuckets": 320})
        dev.pwrite(new.pack().ljust(SB_REGION, b"\0"), new_backup)      # step 2 only
    assert sb_of(img).device_size == 24 * MiB
    check(img, ["f"], MiB)
    with open_device(img) as dev:                   # and if the primary is lost then
        dev.pwrite(bytes(BLOCK_SIZE), 4096)
        got, warnings = read_superblock(dev)
    assert got.device_size == 40 * MiB and warnings
    res = fsck_path(img, FsckOptions(mode="yes", force=True), out=open(os.devnull, "w"))
    assert res.exit_code == 1                       # the primary is rewritten
    check(img, ["f"], MiB)


def test_resize_refusals(tmp_path, capsys):
    img = str(tmp_path / "img")
    cli.main(["mkfs", "-q", "--size", "24M", img])
    for argv, msg in ((["resize", img, "--size", "16M"], "cannot shrink the filesystem from "
                       f"{24 * MiB} to {16 * MiB} bytes: pyfs can only grow"),
                      (["resize", img, "--size", "1X"], "bad size '1X'"),
                      (["resize", img, "--size", "8E"], f"{img}: cannot extend the image to "
                       f"{8 << 60} bytes: too large"),
                      (["resize", str(tmp_path / "none"), "--size", "32M"], "no such file"),
                      (["resize", str(tmp_path)], "is a directory")):
        code, out, err = run(capsys, *argv)
        assert code == 1 and msg in err and err.count("\n") == 1, (argv, err)
    holder = open_device(img)                       # as a mount holds it
    try:
        code, _, err = run(capsys, "resize", img, "--size", "32M")
        assert code == 1 and "in use" in err and "unmount it first" in err
    finally:
        holder.close()
    eng = Engine(open_device(img))                  # a crashed session: dirty
    eng.dev.close()
    code, _, err = run(capsys, "resize", img, "--size", "32M")
    assert code == 1 and "was not unmounted cleanly" in err
    junk = tmp_path / "junk"
    junk.write_bytes(bytes(4 * MiB))
    code, _, err = run(capsys, "resize", str(junk))
    assert code == 1 and "not a usable pyfs filesystem" in err


def test_grow_a_loop_device(loop_device, capsys):
    loop, backing = loop_device
    assert run(capsys, "mkfs", "-q", loop)[0] == 0
    fill(loop, ["g"], MiB)
    os.truncate(backing, 24 * MiB)
    subprocess.run(["losetup", "-c", loop], check=True, timeout=30)
    code, out, err = run(capsys, "resize", loop, "--size", "32M")
    assert code == 1 and "grow the device first" in err
    code, out, err = run(capsys, "resize", loop)
    assert code == 0 and "to 24 MiB" in out, err
    fill(loop, ["h"], 14 * MiB)
    check(loop, ["g"], MiB)
    check(loop, ["h"], 14 * MiB)


def test_tune_label_and_uuid_keeps_names_findable(tmp_path, capsys):
    img = str(tmp_path / "img")
    cli.main(["mkfs", "-q", "--size", "24M", "-L", "old", img])
    fill(img, ["a", "b"], 4096)
    seed = sb_of(img).hash_seed
    code, out, err = run(capsys, "tune", img, "--label", "new label", "--uuid", "random")
    assert code == 0, err
    sb = sb_of(img)
    assert sb.label == "new label" and f"UUID {uuidlib.UUID(bytes=sb.uuid)}" in out
    assert sb.features & (1 << Feature.name_seed) and sb.hash_seed == seed
    check(img, ["a", "b"], 4096)                    # dirents hashed with the mkfs seed
    fixed = "12345678-1234-5678-1234-567812345678"
    assert run(capsys, "tune", img, "-U", fixed)[0] == 0
    sb = sb_of(img)
    assert str(uuidlib.UUID(bytes=sb.uuid)) == fixed and sb.hash_seed == seed
    fill(img, ["c"], 4096)
    check(img, ["a", "b", "c"], 4096)
    code, out, _ = run(capsys, "show-super", img)
    assert fixed in out and "name_seed" in out and "new label" in out
    for argv, msg, want in ((["tune", img], "nothing to change", 2),
                            (["tune", img, "-L", "x" * 33], "longer than 32 bytes", 2),
                            (["tune", img, "-U", "nope"], "bad UUID 'nope'", 2),
                            (["tune", str(tmp_path / "none"), "-L", "x"], "no such file", 1)):
        code, _, err = run(capsys, *argv)
        assert code == want and msg in err and err.count("\n") == 1, (argv, err)
    holder = open_device(img)
    try:
        code, _, err = run(capsys, "tune", img, "-L", "busy")
        assert code == 1 and "in use" in err
    finally:
        holder.close()
    assert sb_of(img).label == "new label"


@pytest.mark.parametrize("cmd", ["resize", "tune"])
def test_no_traceback_for_bad_arguments(tmp_path, cmd):
    r = subprocess.run([cli.sys.executable, "-m", "pyfs.cli", cmd, str(tmp_path / "x"),
                        "--size" if cmd == "resize" else "-L", "-5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.count("\n") <= 3
