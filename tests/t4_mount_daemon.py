"""The mount daemon and CLI: readiness, busy images, signals, umount waiting,
options, read-only mounts, kill -9 and replay; plus the FUSE edge in-process
(group commit, errors=ro) without a kernel mount."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import fsck_lite
import pyfuse3
import pytest
import trio
from conftest import FsEnv, Mount, pyfs_cli, require_fuse

from pyfs import cli
from pyfs.btree.cache import BtreeError
from pyfs.device import MemDevice
from pyfs.format import SbState
from pyfs.fs import FSError
from pyfs.fuse import Operations
from pyfs.group_commit import Flusher, FlushThread
from pyfs.mount import (
    MountFailed,
    _alive,
    is_mounted,
    parse_options,
    parse_remount_options,
    split_options,
)


def sb_state(image: str) -> int:
    from pyfs.device import open_device
    from pyfs.superblock import read_superblock
    with open_device(image, read_only=True, exclusive=False) as dev:
        return read_superblock(dev)[0].state


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.05)


@pytest.fixture
def scratch_dir():
    d = tempfile.mkdtemp(prefix="pyfs-t4d-", dir="/tmp")
    yield d
    if is_mounted(d):
        subprocess.run(["fusermount3", "-u", "-z", d], capture_output=True)
    os.rmdir(d)


# ---------------------------------------------------------------- daemon

def test_mount_refuses_busy_image(mnt, scratch_dir, tmp_path):
    r = pyfs_cli("mount", mnt.image, scratch_dir, check=False)
    assert r.returncode != 0
    assert "in use" in r.stderr
    assert not is_mounted(scratch_dir)
    other = str(tmp_path / "other")
    pyfs_cli("mkfs", "-q", "--size", "64M", other)
    r = pyfs_cli("mount", other, mnt.path, check=False)
    assert r.returncode != 0 and "already a pyfs mount" in r.stderr


def test_sigterm_unmounts_cleanly(mnt):
    with open(mnt.p("f"), "w") as f:
        f.write("before the signal")
    pid = mnt.daemon_pid()
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not is_mounted(mnt.path)
    assert sb_state(mnt.image) == SbState.clean
    mnt.mounted = False
    mnt.mount()
    assert open(mnt.p("f")).read() == "before the signal"


def test_umount_waits_for_clean_image(mnt):
    data = os.urandom(4 << 20)
    with open(mnt.p("f"), "wb") as f:
        f.write(data)
    pid = mnt.daemon_pid()
    mnt.umount()
    assert not _alive(pid)                       # umount returned after the daemon exited
    assert sb_state(mnt.image) == SbState.clean
    r = pyfs_cli("umount", mnt.path, check=False)
    assert r.returncode != 0 and "not mounted" in r.stderr


def test_umount_busy_then_ok(mnt):
    f = open(mnt.p("held"), "w")
    try:
        os.chdir(mnt.path)
        r = pyfs_cli("umount", mnt.path, check=False)
        assert r.returncode != 0 and "busy" in r.stderr.lower()
        assert is_mounted(mnt.path)
    finally:
        os.chdir("/")
        f.close()
    mnt.umount()


def test_kill9_then_replay(mnt):
    with open(mnt.p("durable"), "wb") as f:
        f.write(b"fsynced data")
        f.flush()                                # out of Python's buffer first
        os.fsync(f.fileno())
    pid = mnt.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    r = pyfs_cli("umount", mnt.path, check=False)         # cleans up the dead mount
    assert "not unmounted cleanly" in r.stderr
    assert not is_mounted(mnt.path)
    mnt.mounted = False
    mnt.mount()
    with open(mnt.p("durable"), "rb") as f:
        assert f.read() == b"fsynced data"


def test_read_only_mount(mnt):
    with open(mnt.p("f"), "w") as f:
        f.write("keep")
    mnt.umount()
    mnt.options = "allow_other,ro"
    mnt.mount()
    assert open(mnt.p("f")).read() == "keep"
    with pytest.raises(OSError) as ei:
        open(mnt.p("g"), "w")
    assert ei.value.errno == errno.EROFS
    mnt.umount()
    mnt.options = "allow_other"
    mnt.mount()


def test_bad_options_and_paths(tmp_path, scratch_dir):
    require_fuse()
    image = str(tmp_path / "img")
    pyfs_cli("mkfs", "-q", "--size", "64M", image)
    r = pyfs_cli("mount", image, scratch_dir, "-o", "bogus", check=False)
    assert r.returncode != 0 and "unknown mount option 'bogus'" in r.stderr
    r = pyfs_cli("mount", image, scratch_dir, "-o", "flush_delay_ms=zero", check=False)
    assert r.returncode != 0 and "flush_delay_ms" in r.stderr
    r = pyfs_cli("mount", image, str(tmp_path / "nodir"), check=False)
    assert r.returncode != 0 and "not a directory" in r.stderr
    r = pyfs_cli("mount", str(tmp_path / "noimage"), scratch_dir, check=False)
    assert r.returncode != 0 and "no such file" in r.stderr
    (tmp_path / "junk").write_bytes(bytes(1 << 20))
    r = pyfs_cli("mount", str(tmp_path / "junk"), scratch_dir, check=False)
    assert r.returncode != 0 and "cannot mount" in r.stderr
    assert not is_mounted(scratch_dir)


def test_tools_refuse_what_is_not_pyfs(tmp_path, scratch_dir, capsys):
    """umount, stats and every command taking a mount point check that it is
    a pyfs mount (issue 13: `pyfs umount` used to unmount anything)."""
    require_fuse()
    ext4 = str(tmp_path / "ext4.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", ext4, "16M"], check=True, capture_output=True)
    every = (["umount", "-l", scratch_dir], ["stats", "--json", scratch_dir],
             ["show-super", scratch_dir], ["dump", scratch_dir, "-b", "inodes"],
             ["journal", scratch_dir], ["du", scratch_dir], ["cat", scratch_dir, "/f"])
    common = (["umount", scratch_dir], ["stats", scratch_dir], ["usage", scratch_dir],
              ["ls", scratch_dir])
    for mount_cmd, kind, commands in (
            (["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", scratch_dir], "tmpfs",
             common + every),
            (["fuse2fs", ext4, scratch_dir], "fuse.ext4", common)):
        subprocess.run(mount_cmd, check=True, capture_output=True)
        try:
            for args in commands:
                assert cli.main(args) == 1, args
                err = capsys.readouterr().err
                assert f"{scratch_dir} is not a pyfs mount: it is a {kind} mount" in err
                assert err.count("\n") == 1
                assert is_mounted(scratch_dir)
        finally:
            subprocess.run(["umount", scratch_dir], check=True)
    r = pyfs_cli("stats", scratch_dir, check=False)
    assert r.returncode == 1 and "is not mounted" in r.stderr


def test_mount_helper_and_foreground(tmp_path, scratch_dir):
    require_fuse()
    image = str(tmp_path / "img")
    pyfs_cli("mkfs", "-q", "--size", "64M", image)
    m = Mount(image, scratch_dir)
    try:
        helper = [sys.executable, "-c", "import sys; from pyfs.cli import mount_main; "
                  "sys.exit(mount_main())"]
        r = subprocess.run(helper + [image, scratch_dir, "-o", "rw,nosuid,x-systemd.foo,"
                                     "flush_delay_ms=200,cache_nodes=64"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert is_mounted(scratch_dir)
        with open(os.path.join(scratch_dir, "f"), "w") as f:
            f.write("via mount.pyfs")
        m.umount()
        # Foreground: serves until SIGINT, then unmounts cleanly.
        p = subprocess.Popen([sys.executable, "-m", "pyfs.cli", "mount", "-f", image,
                              scratch_dir], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not is_mounted(scratch_dir):
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert open(os.path.join(scratch_dir, "f")).read() == "via mount.pyfs"
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 0
        assert not is_mounted(scratch_dir)
        assert sb_state(image) == SbState.clean
    finally:
        m.force_unmount()
    assert m.fsck() == []


def test_parse_options():
    o = parse_options(["ro,allow_other,debug,flush_delay_ms=250", "node_dirty_bytes=64K,"
                       "cache_nodes=100,fsname=disk1,noatime,nodiscard,nosuid,defaults"])
    assert (o.ro, o.allow_other, o.debug, o.flush_delay_ms, o.node_dirty_bytes,
            o.cache_nodes, o.fsname, o.noatime, o.discard, o.errors) == \
        (True, True, True, 250, 65536, 100, "disk1", True, False, "remount-ro")
    assert parse_options("btree_write_buffer=4096").node_dirty_bytes == 4096   # the old name
    fo = o.fuse_options("/x/img")
    assert {"ro", "allow_other", "fsname=disk1", "subtype=pyfs", "default_permissions",
            "nosuid", "noatime"} <= fo
    assert "suid" not in fo
    for bad in ("nope", "cache_nodes=1", "errors=panic", "errors=sometimes",
                "flush_delay_ms=-5", "remount"):
        with pytest.raises(MountFailed):
            parse_options(bad)
    with pytest.raises(MountFailed, match="errors=panic is not supported"):
        parse_options("errors=panic")
    assert parse_options("nope,errors=ro", sloppy=True).errors == "remount-ro"


def test_generic_options_never_reach_libfuse_when_it_refuses_them():
    # libfuse 3's mount fails on these (fuse_session_new); mount.fuse3's
    # ignore list (_netdev, nofail, auto, ...) is dropped the same way.
    o = parse_options("rw,lazytime,nolazytime,diratime,nodiratime,relatime,strictatime,"
                      "_netdev,nofail,noauto,users,x-systemd.automount,comment=x,"
                      "errors=continue,nodev,noexec,sync")
    fo = o.fuse_options("/img")
    assert not fo & {"lazytime", "nolazytime", "diratime", "nodiratime", "relatime",
                     "strictatime", "_netdev", "nofail", "noauto", "users", "errors=continue"}
    assert {"nodev", "noexec", "sync"} <= fo and not o.noatime and o.errors == "continue"
    assert parse_options("noatime,relatime").noatime is False       # the last one wins


def test_parse_remount_options():
    # What mount(8) hands a helper for `mount -o remount,ro DIR`.
    items = split_options("ro,relatime,remount,user_id=0,group_id=0,default_permissions,"
                          "flush_delay_ms=200,errors=continue,allow_other")
    assert parse_remount_options(items) == {"ro": True, "noatime": False, "errors": "continue"}
    assert parse_remount_options(["rw", "noatime", "remount"]) == {"ro": False, "noatime": True}


# ---------------------------------------------------------------- FUSE edge in-process

class Ctx:
    def __init__(self, uid: int = 0, gid: int = 0):
        self.uid, self.gid, self.pid, self.umask = uid, gid, 1, 0o022


def make_ops(slow_flush: float = 0.0) -> tuple[FsEnv, Operations]:
    env = FsEnv()

    async def run_sync(fn):
        await trio.sleep(slow_flush)
        return fn()
    return env, Operations(env.fs, Flusher(env.eng, run_sync=run_sync))


def test_group_commit_shares_flushes():
    env, ops = make_ops(slow_flush=0.02)
    eng = env.eng
    n = 12

    async def main():
        async with trio.open_nursery() as nursery:
            for i in range(n):
                fi, e = await ops.create(1, b"f%d" % i, 0o644, os.O_WRONLY, Ctx())
                await ops.write(fi.fh, 0, b"data %d" % i)
                nursery.start_soon(ops.fsync, fi.fh, False)
                await trio.sleep(0.004)
    flushes0 = eng.counters["journal_flushes"]
    trio.run(main)
    flushes = eng.counters["journal_flushes"] - flushes0
    assert eng.counters["journal_flush_waiters"] == n
    assert flushes < n // 2, flushes
    assert eng.journal.durable_seq >= env.fs.fsync(env.fs.lookup(1, b"f%d" % (n - 1)).st_ino)
    env.close()


def test_flush_thread_runs_jobs_off_the_loop_and_waits_them_out():
    ft = FlushThread()
    loop_thread = threading.get_ident()
    ran: list[int] = []

    def job():
        time.sleep(0.05)
        ran.append(threading.get_ident())
        return 7

    def bad():
        raise OSError(errno.EIO, "flush failed")

    async def main():
        assert await ft.run_sync(job) == 7
        with pytest.raises(OSError) as ei:
            await ft.run_sync(bad)
        assert ei.value.errno == errno.EIO
        # Cancelled while the job runs: the caller still waits for it to end.
        with trio.move_on_after(0.01) as scope:
            await ft.run_sync(job)
            assert len(ran) == 2
        assert scope.cancel_called and len(ran) == 2
    trio.run(main)
    assert ran and all(t != loop_thread for t in ran)
    ft.stop()
    assert not ft.thread.is_alive()


def test_fsync_of_durable_inode_needs_no_flush():
    env, ops = make_ops()

    async def main():
        fi, e = await ops.create(1, b"f", 0o644, os.O_WRONLY, Ctx())
        await ops.fsync(fi.fh, False)
        f0 = env.eng.counters["journal_flushes"]
        await ops.fsync(fi.fh, True)
        assert env.eng.counters["journal_flushes"] == f0
    trio.run(main)
    env.close()


def test_errors_ro_after_fatal_error(monkeypatch):
    env, ops = make_ops()

    def broken(*a, **kw):
        raise BtreeError("injected inconsistency")

    async def main():
        fi, e = await ops.create(1, b"f", 0o644, os.O_WRONLY, Ctx())
        await ops.write(fi.fh, 0, b"ok")
        monkeypatch.setattr(env.fs, "_write_chunk", broken)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.write(fi.fh, 0, b"boom")
        assert ei.value.errno == errno.EIO
        assert ops.failed is not None and env.fs.read_only
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.mkdir(1, b"d", 0o755, Ctx())
        assert ei.value.errno == errno.EROFS
        # What was committed before the error was flushed as writing stopped:
        # the fsync of it has nothing left to do and does not fail.
        assert env.eng.journal.durable_seq >= env.fs.fsync(e.st_ino)
        await ops.fsync(fi.fh, False)
        assert (await ops.getattr(e.st_ino)).st_size == 2       # reads still work
        assert await ops.read(fi.fh, 0, 10) == b"ok"
    trio.run(main)
    env.eng.close(clean=False)


def test_errors_continue_keeps_writing_unless_a_commit_broke(monkeypatch):
    env, ops = make_ops()
    ops.errors = "continue"
    orig = env.fs._write_chunk

    def broken(*a, **kw):
        raise BtreeError("injected before any commit")

    async def main():
        fi, e = await ops.create(1, b"f", 0o644, os.O_WRONLY, Ctx())
        monkeypatch.setattr(env.fs, "_write_chunk", broken)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.write(fi.fh, 0, b"boom")
        assert ei.value.errno == errno.EIO
        assert ops.failed is None and not env.fs.read_only        # still writable
        monkeypatch.setattr(env.fs, "_write_chunk", orig)
        assert await ops.write(fi.fh, 0, b"ok") == 2
        await ops.mkdir(1, b"d", 0o755, Ctx())
        env.eng.flush()
        st = ops.state()
        assert st["errors_seen"] == 1 and "injected" in st["last_error"]
        assert not st["read_only"] and st["errors"] == "continue"
        # A commit that fails part way stops the engine: read-only even so.
        monkeypatch.setattr(env.eng.committer, "_apply", broken)
        with pytest.raises(pyfuse3.FUSEError):
            await ops.mkdir(1, b"e", 0o755, Ctx())
        assert ops.failed is not None and env.fs.read_only
        assert ops.state()["read_only_reason"].startswith("stopped after an error")
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.control("rw")
        assert ei.value.errno == errno.EIO
    trio.run(main)
    env.eng.close(clean=False)
    env.remount(clean=False)        # nothing of the broken commit reached the disk
    assert env.fs.lookup(1, b"d") and env.fs.read(env.fs.lookup(1, b"f").st_ino, 0, 9) == b"ok"
    assert env.fsck() == []
    with pytest.raises(FSError):
        env.fs.lookup(1, b"e")
    env.close()


def test_remount_ro_writes_back_then_rw_resumes():
    env, ops = make_ops()

    async def main():
        fi, e = await ops.create(1, b"f", 0o644, os.O_WRONLY, Ctx())
        await ops.write(fi.fh, 0, b"before")
        await ops.release(fi.fh)
        await ops.control("ro")
        assert env.eng.sb.state == SbState.clean and not env.eng.btrees.dirty
        snap = env.dev.snapshot()                   # what a power cut now leaves
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.mkdir(1, b"d", 0o755, Ctx())
        assert ei.value.errno == errno.EROFS
        assert ops.state()["read_only_reason"] == "remounted read-only"
        await ops.control("ro")                     # again: nothing to do
        await ops.control("rw")
        assert env.eng.sb.state == SbState.dirty and not env.fs.read_only
        await ops.mkdir(1, b"d", 0o755, Ctx())
        for bad in ("frob", "errors=panic"):
            with pytest.raises(pyfuse3.FUSEError) as ei:
                await ops.control(bad)
            assert ei.value.errno == errno.EINVAL
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.setxattr(1, b"pyfs.control", b"ro", Ctx(uid=1000))
        assert ei.value.errno == errno.EPERM
        return snap
    snap = trio.run(main)
    frozen = FsEnv.__new__(FsEnv)
    frozen.dev = MemDevice(snap)
    fs = frozen.remount(clean=False)
    assert frozen.eng.replayed_keys == 0, "clean: nothing to replay"
    assert fs.read(fs.lookup(1, b"f").st_ino, 0, 10) == b"before"
    assert fsck_lite.check(frozen.eng) == []
    env.close()
    env.remount()
    assert env.fs.lookup(1, b"d")


def test_lookup_counts_through_readdirplus():
    env, ops = make_ops()
    fs = env.fs

    async def main():
        d = await ops.mkdir(1, b"d", 0o755, Ctx())
        for i in range(5):
            await ops.mknod(d.st_ino, b"n%d" % i, 0o100644, 0, Ctx())
        neg = await ops.lookup(d.st_ino, b"missing", Ctx())
        assert neg.st_ino == 0                                 # cached negative entry
        fh = await ops.opendir(d.st_ino, Ctx())

        class Token:
            pass
        replies = []
        orig = pyfuse3.readdir_reply

        def fake_reply(token, name, attr, off):
            replies.append((name, attr.st_ino, off))
            return len(replies) <= 4                           # the buffer fills up
        pyfuse3.readdir_reply = fake_reply
        try:
            await ops.readdir(fh, 0, Token())
        finally:
            pyfuse3.readdir_reply = orig
        await ops.releasedir(fh)
        names = [r[0] for r in replies]
        assert names[:2] == [b".", b".."] and len(names) == 5
        counted = {r[1] for r in replies[2:4]}
        for inum in counted:
            assert fs.lookups[inum] == 2                       # mknod + readdirplus
        st = ops.stats_json()
        assert '"discards"' in st and '"bounces"' in st
    trio.run(main)
    env.close()


def test_inspection_of_a_mount_point(mnt, tmp_path, capsysbinary):
    """Every inspection command takes the mount point: structure commands read
    the image after the daemon synced its journal, file commands read through
    the kernel."""
    def out(*argv: str, code: int = 0) -> str:
        assert cli.main(list(argv)) == code, argv
        o, e = capsysbinary.readouterr()
        return (o if code == 0 else e).decode()

    os.makedirs(mnt.p("d/e"))
    data = os.urandom(200_000)
    with open(mnt.p("d/e/f"), "wb") as f:
        f.write(data)                       # no fsync: `sync` through pyfs.control
    r = out("dump", mnt.path, "-b", "dirents")
    assert "'f' -> " in r and "(file)" in r
    assert "inode mode=-rw-r--r-- (100644)" in out("dump", mnt.path, "-b", "inodes")
    assert "entries, seq " in out("journal", mnt.path)
    assert "Label:" in out("show-super", mnt.path)
    assert "Live data + metadata:" in out("usage", mnt.path)
    assert out("ls", mnt.path, "/d") == "e\n"
    assert cli.main(["cat", mnt.path, "/d/e/f"]) == 0
    assert capsysbinary.readouterr().out == data
    assert out("du", "-s", mnt.path, "/d") == "196\t/d\n"
    out("cp-out", mnt.path, "/d", str(tmp_path))
    assert (tmp_path / "d" / "e" / "f").read_bytes() == data
    assert "is not mounted" in out("ls", mnt.p("d"), code=1)     # inside, not the root
    err = out("fsck", "-n", mnt.path, code=8)
    assert f"{mnt.path} is the mount point of {mnt.image}; unmount it" in err


def test_stats_summary(mnt, capsys):
    with open(mnt.p("f"), "wb") as f:
        f.write(b"x" * 100_000)
        os.fsync(f.fileno())
    assert cli.main(["stats", mnt.path]) == 0
    out = capsys.readouterr().out
    head, _, counters = out.partition("\nCounters:\n")
    rows = dict(line.split(":", 1) for line in head.splitlines())
    assert rows["State"].strip() == "read-write"
    assert rows["Image"].strip() == mnt.image and rows["Daemon"].strip().startswith("pid ")
    assert rows["Errors"].strip() == "errors=remount-ro, 0 errors"
    assert "used)" in rows["Free space"] and "% full of 8 MiB" in rows["Journal"]
    assert rows["Dirty btree nodes"].strip().isdigit()
    assert rows["Last journal flush"].strip().endswith(" s ago")
    assert "journal_flushes" in counters and "fs_errors" in counters
    assert cli.main(["stats", "--json", mnt.path]) == 0
    s = json.loads(capsys.readouterr().out)
    assert all(isinstance(v, int | float) for v in s.values()) and "State" not in s
