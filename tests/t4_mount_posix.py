"""POSIX behaviour through the kernel: a fresh image mounted with `pyfs mount`
per test (fixture `mnt` in conftest.py), unmounted and fsck'd afterwards."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import subprocess
import threading

import pytest
from conftest import pyfs_cli

MiB = 1 << 20


def err(e: int, fn, *args):
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno == e, f"{ei.value} is not {errno.errorcode[e]}"


def as_user(cmd: str, uid: int = 1000) -> subprocess.CompletedProcess:
    """Run a shell command as uid/gid `uid` with no supplementary groups."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "sh", "-c", cmd], capture_output=True, text=True, timeout=60)


def test_files_read_write_stat(mnt):
    p = mnt.p("f")
    with open(p, "wb") as f:
        f.write(b"hello ")
    with open(p, "ab") as f:
        f.write(b"world")
    with open(p, "rb") as f:
        assert f.read() == b"hello world"
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 11 and st.st_nlink == 1
    assert st.st_blocks == 8
    fd = os.open(p, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"W", 6) == 1
        assert os.pread(fd, 100, 0) == b"hello World"
        os.ftruncate(fd, 5)
        assert os.pread(fd, 100, 0) == b"hello"
        os.ftruncate(fd, 8)
        assert os.pread(fd, 100, 0) == b"hello\0\0\0"
        os.fsync(fd)
    finally:
        os.close(fd)
    data = os.urandom(5 * MiB + 123)
    with open(mnt.p("big"), "wb") as f:
        f.write(data)
    with open(mnt.p("big"), "rb") as f:
        assert f.read() == data
    os.truncate(mnt.p("big"), 4096)
    assert os.stat(mnt.p("big")).st_size == 4096


def test_directories_and_errors(mnt):
    d = mnt.p("d")
    os.mkdir(d, 0o750)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o750
    assert os.stat(d).st_nlink == 2
    os.mkdir(os.path.join(d, "sub"))
    assert os.stat(d).st_nlink == 3
    open(os.path.join(d, "file"), "w").close()
    assert sorted(os.listdir(d)) == ["file", "sub"]
    err(errno.EEXIST, os.mkdir, d)
    err(errno.ENOTEMPTY, os.rmdir, d)
    err(errno.ENOENT, os.stat, mnt.p("missing"))
    err(errno.EISDIR, os.unlink, d)
    err(errno.ENOTDIR, os.listdir, os.path.join(d, "file"))
    err(errno.ENOTDIR, os.rmdir, os.path.join(d, "file"))
    err(errno.ENAMETOOLONG, open, mnt.p("x" * 256), "w")
    open(mnt.p("y" * 255), "w").close()
    err(errno.EINVAL, os.rename, d, os.path.join(d, "sub", "inside"))
    err(errno.EPERM, os.link, d, mnt.p("dlink"))
    os.rmdir(os.path.join(d, "sub"))
    os.unlink(os.path.join(d, "file"))
    os.rmdir(d)
    assert not os.path.exists(d)


def test_big_directory_listing(mnt):
    d = mnt.p("many")
    os.mkdir(d)
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(1500)}
    for n in names:
        os.close(os.open(os.path.join(d, n), os.O_CREAT | os.O_WRONLY))
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:
        assert sum(1 for e in it if e.is_file()) == 1500
    r = subprocess.run(["ls", "-a", d], capture_output=True, text=True)
    assert r.stdout.split()[:2] == [".", ".."]


def test_rename_link_symlink(mnt):
    a, b = mnt.p("a"), mnt.p("b")
    with open(a, "w") as f:
        f.write("A")
    os.link(a, b)
    assert os.stat(a).st_nlink == 2 and os.stat(a).st_ino == os.stat(b).st_ino
    os.rename(a, mnt.p("c"))
    assert open(mnt.p("c")).read() == "A"
    with open(mnt.p("d"), "w") as f:
        f.write("D")
    os.rename(mnt.p("d"), mnt.p("c"))          # replaces
    assert open(mnt.p("c")).read() == "D"
    assert os.stat(b).st_nlink == 1
    os.symlink("c", mnt.p("s"))
    assert os.readlink(mnt.p("s")) == "c"
    assert open(mnt.p("s")).read() == "D"
    assert stat.S_ISLNK(os.lstat(mnt.p("s")).st_mode)
    os.symlink("/nowhere/at/all", mnt.p("dangling"))
    err(errno.ENOENT, os.stat, mnt.p("dangling"))
    os.mkdir(mnt.p("dir1"))
    os.mkdir(mnt.p("dir2"))
    os.rename(mnt.p("dir1"), mnt.p("dir2", "moved"))
    assert os.stat(mnt.p("dir2")).st_nlink == 3
    assert os.stat(mnt.p("dir2", "moved", "..")).st_ino == os.stat(mnt.p("dir2")).st_ino


def _renameat2(old: str, new: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD = -100
    if libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_rename_flags(mnt):
    for n in ("x", "y"):
        with open(mnt.p(n), "w") as f:
            f.write(n)
    err(errno.EEXIST, _renameat2, mnt.p("x"), mnt.p("y"), 1)        # RENAME_NOREPLACE
    _renameat2(mnt.p("x"), mnt.p("y"), 2)                           # RENAME_EXCHANGE
    assert open(mnt.p("x")).read() == "y" and open(mnt.p("y")).read() == "x"
    err(errno.ENOENT, _renameat2, mnt.p("x"), mnt.p("zz"), 2)


def test_special_files(mnt):
    os.mkfifo(mnt.p("fifo"), 0o640)
    assert stat.S_ISFIFO(os.stat(mnt.p("fifo")).st_mode)
    os.mknod(mnt.p("null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.stat(mnt.p("null"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    with open(mnt.p("null"), "wb") as f:               # the device node works
        f.write(b"discarded")
    # A fifo carries data between processes.
    r = subprocess.Popen(["cat", mnt.p("fifo")], stdout=subprocess.PIPE)
    with open(mnt.p("fifo"), "w") as f:
        f.write("through the pipe")
    assert r.communicate(timeout=30)[0] == b"through the pipe"


def test_xattrs(mnt):
    p = mnt.p("f")
    open(p, "w").close()
    os.setxattr(p, "user.color", b"blue")
    os.setxattr(p, "user.empty", b"")
    os.setxattr(p, "trusted.t", b"t")
    assert os.getxattr(p, "user.color") == b"blue"
    assert os.getxattr(p, "user.empty") == b""
    assert sorted(os.listxattr(p)) == ["trusted.t", "user.color", "user.empty"]
    os.setxattr(p, "user.color", b"red", os.XATTR_REPLACE)
    err(errno.EEXIST, os.setxattr, p, "user.color", b"x", os.XATTR_CREATE)
    err(errno.ENODATA, os.setxattr, p, "user.new", b"x", os.XATTR_REPLACE)
    os.removexattr(p, "user.color")
    err(errno.ENODATA, os.getxattr, p, "user.color")
    big = os.urandom(65536)
    os.setxattr(p, "user.big", big)                    # 1 GiB image: 256 KiB nodes
    assert os.getxattr(p, "user.big") == big
    err(errno.E2BIG, os.setxattr, p, "user.toobig", big + b"x")
    err(errno.ERANGE, os.setxattr, p, "user." + "n" * 251, b"x")
    # Size probing (getxattr/listxattr with a 0 size, then a too-small buffer).
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.getxattr(p.encode(), b"user.big", None, 0) == 65536
    buf = ctypes.create_string_buffer(10)
    assert libc.getxattr(p.encode(), b"user.big", buf, 10) == -1
    assert ctypes.get_errno() == errno.ERANGE
    n = libc.listxattr(p.encode(), None, 0)
    assert n == len(b"trusted.t\0user.empty\0user.big\0")


def test_chmod_chown_utime_truncate(mnt):
    p = mnt.p("f")
    with open(p, "w") as f:
        f.write("0123456789")
    os.chmod(p, 0o4755)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4755
    os.chown(p, 1000, 1000)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert not st.st_mode & stat.S_ISUID                 # chown drops setuid
    os.utime(p, ns=(1_234_567_890_123_456_789, 1_111_111_111_222_333_444))
    st = os.stat(p)
    assert st.st_atime_ns == 1_234_567_890_123_456_789
    assert st.st_mtime_ns == 1_111_111_111_222_333_444
    c0 = st.st_ctime_ns
    os.utime(p)                                           # UTIME_NOW
    st = os.stat(p)
    assert st.st_mtime_ns > 1_111_111_111_222_333_444 and st.st_ctime_ns >= c0
    os.truncate(p, 3)
    assert open(p).read() == "012"
    os.truncate(p, 6)
    assert open(p, "rb").read() == b"012\0\0\0"


def test_non_root_permissions(mnt):
    os.mkdir(mnt.p("private"), 0o700)
    with open(mnt.p("private", "secret"), "w") as f:
        f.write("s")
    os.mkdir(mnt.p("shared"))
    os.chmod(mnt.p("shared"), 0o777)          # mkdir is subject to the umask
    r = as_user(f"ls {mnt.p('private')}")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = as_user(f"cat {mnt.p('private', 'secret')}")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = as_user(f"echo mine > {mnt.p('shared', 'mine')} && cat {mnt.p('shared', 'mine')}")
    assert r.returncode == 0 and r.stdout == "mine\n", r.stderr
    st = os.stat(mnt.p("shared", "mine"))
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    r = as_user(f"touch {mnt.p('rootfile')}")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    # A write by a non-root user drops setuid/setgid (group-exec) bits.
    p = mnt.p("shared", "suid")
    with open(p, "w") as f:
        f.write("x")
    os.chmod(p, 0o6777)
    r = as_user(f"echo more >> {p}")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o777


def test_sparse_1g_file(mnt):
    p = mnt.p("sparse")
    with open(p, "wb") as f:
        f.truncate(1 << 30)
        f.seek((1 << 30) - 5)
        f.write(b"tail!")
    st = os.stat(p)
    assert st.st_size == 1 << 30 and st.st_blocks <= 16
    with open(p, "rb") as f:
        f.seek(512 * MiB)
        assert f.read(MiB) == bytes(MiB)
        f.seek((1 << 30) - 5)
        assert f.read() == b"tail!"
    assert os.statvfs(mnt.path).f_bfree > 100 * MiB // 4096


def test_persistence_across_remount(mnt):
    os.makedirs(mnt.p("a", "b"))
    data = os.urandom(300_000)
    with open(mnt.p("a", "b", "f"), "wb") as f:
        f.write(data)
    os.setxattr(mnt.p("a"), "user.k", b"v")
    os.symlink("b/f", mnt.p("a", "link"))
    ino = os.stat(mnt.p("a", "b", "f")).st_ino
    mnt.remount()
    with open(mnt.p("a", "link"), "rb") as f:
        assert f.read() == data
    assert os.stat(mnt.p("a", "b", "f")).st_ino == ino
    assert os.getxattr(mnt.p("a"), "user.k") == b"v"


def test_concurrent_writers(mnt):
    n_threads, size = 8, 2 * MiB
    blobs = [os.urandom(size) for _ in range(n_threads)]
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with open(mnt.p(f"w{i}"), "wb") as f:
                for off in range(0, size, 64 * 1024):
                    f.write(blobs[i][off:off + 64 * 1024])
                    if off % (512 * 1024) == 0:
                        f.flush()
                        os.fsync(f.fileno())
        except BaseException as e:          # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(n_threads):
        with open(mnt.p(f"w{i}"), "rb") as f:
            assert f.read() == blobs[i]
    stats = pyfs_cli("stats", "--json", mnt.path).stdout
    assert '"journal_flush_waiters"' in stats


def test_fs_mark_and_rm_rf(mnt):
    r = subprocess.run(["fs_mark", "-d", mnt.p("fsm"), "-n", "200", "-s", "4096", "-S", "1",
                        "-t", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Files/sec" in r.stdout
    # One directory per thread: fs_mark's forked threads can draw the same
    # random names, and in a shared directory they would overwrite each other.
    os.mkdir(mnt.p("fsk"))
    r = subprocess.run(["fs_mark", "-d", mnt.p("fsk/a"), "-d", mnt.p("fsk/b"), "-n", "300",
                        "-s", "4096", "-S", "1", "-t", "2", "-k"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    kept = sum(len(files) for _d, _s, files in os.walk(mnt.p("fsk")))
    assert kept == 600
    subprocess.run(["rm", "-rf", mnt.p("fsm"), mnt.p("fsk")], check=True, timeout=600)
    assert sorted(os.listdir(mnt.path)) == ["lost+found"]
    mnt.umount()                            # the fixture then fsck's the image


def test_stats_command(mnt):
    with open(mnt.p("f"), "wb") as f:
        f.write(b"x" * 10000)
        f.flush()
        os.fsync(f.fileno())
    r = pyfs_cli("stats", mnt.path)
    for key in ("btree_node_writes", "btree_node_write_bytes", "journal_writes",
                "journal_write_bytes", "journal_flushes", "discards", "bounces"):
        assert key in r.stdout
    import json
    s = json.loads(pyfs_cli("stats", "--json", mnt.path).stdout)
    assert s["journal_flushes"] >= 1 and s["data_write_bytes"] >= 12288
    r = pyfs_cli("stats", "/tmp", check=False)
    assert r.returncode != 0 and "not" in r.stderr


def test_close_sends_no_flush_after_the_first(mnt):
    # FLUSH answers ENOSYS once; the kernel then closes files without asking us.
    for i in range(5):
        with open(mnt.p(f"c{i}"), "wb") as f:
            f.write(b"data %d" % i)
    import json
    s = json.loads(pyfs_cli("stats", "--json", mnt.path).stdout)
    assert s["fuse_flush_requests"] == 1
    for i in range(5):
        with open(mnt.p(f"c{i}"), "rb") as f:
            assert f.read() == b"data %d" % i


def test_statfs(mnt):
    s = os.statvfs(mnt.path)
    assert s.f_bsize == 4096 and s.f_namemax == 255
    assert 0 < s.f_bavail <= s.f_bfree < s.f_blocks
    with open(mnt.p("f"), "wb") as f:
        f.write(os.urandom(8 * MiB))
        f.flush()
        os.fsync(f.fileno())
    assert os.statvfs(mnt.path).f_bfree < s.f_bfree
    r = subprocess.run(["df", mnt.path], capture_output=True, text=True)
    assert "pyfs" in r.stdout or mnt.path in r.stdout


def test_unsupported_ops(mnt):
    p = mnt.p("f")
    open(p, "w").close()
    r = subprocess.run(["fallocate", "-l", "1M", p], capture_output=True, text=True)
    assert r.returncode != 0 and "not supported" in r.stderr
    with open(p, "rb") as f:
        with pytest.raises(OSError) as ei:
            fcntl.ioctl(f.fileno(), 0x80086601, bytes(8))       # FS_IOC_GETFLAGS
        assert ei.value.errno in (errno.ENOTTY, errno.ENOSYS, errno.EOPNOTSUPP)
