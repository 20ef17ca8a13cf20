"""Filesystem API without the kernel: namespace operations, attributes, errors,
lookup counting and deferred deletion, persistence. Every test ends with a
remount and fsck_lite (see conftest.fsenv)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from pyfs.format import BtreeId, pack_key
from pyfs.fs import FSError
from pyfs.fs.inode import LINK_MAX, ROOT_INUM, orphan_key
from pyfs.fs.inum import DIR_STRIDES

ROOT = ROOT_INUM


def names(fs, inum: int) -> list[bytes]:
    return [n for n, _a, _o in fs.readdir(inum)]


def raises(err: int, fn, *args, **kw):
    with pytest.raises(FSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == err, f"{ei.value} is not {errno.errorcode[err]}"


# ---------------------------------------------------------------- basics

def test_fresh_root_and_lost_found(fsenv):
    fs = fsenv.fs
    root = fs.getattr(ROOT)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o755
    assert root.st_nlink == 3            # ".", "..", lost+found's ".."
    lf = fs.lookup(ROOT, b"lost+found")
    assert stat.S_IMODE(lf.st_mode) == 0o700 and lf.st_nlink == 2
    assert names(fs, ROOT) == [b".", b"..", b"lost+found"]
    fs2 = fsenv.remount()
    assert fs2.lookup(ROOT, b"lost+found").st_ino == lf.st_ino
    assert fs2.getattr(ROOT).st_nlink == 3


def test_create_lookup_getattr(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"f", 0o640, uid=7, gid=8)
    assert stat.S_ISREG(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o640
    assert (a.st_uid, a.st_gid, a.st_nlink, a.st_size) == (7, 8, 1, 0)
    b = fs.lookup(ROOT, b"f")
    assert b.st_ino == a.st_ino and b.generation == a.generation
    assert fs.getattr(a.st_ino).st_mode == a.st_mode
    raises(errno.EEXIST, fs.create, ROOT, b"f", 0o644)
    raises(errno.ENOENT, fs.lookup, ROOT, b"nope")
    raises(errno.ENOTDIR, fs.lookup, a.st_ino, b"x")
    raises(errno.ENOTDIR, fs.create, a.st_ino, b"x", 0o644)
    raises(errno.ENOENT, fs.getattr, 999999)


def test_name_limits(fsenv):
    fs = fsenv.fs
    fs.create(ROOT, b"n" * 255, 0o644)
    raises(errno.ENAMETOOLONG, fs.create, ROOT, b"n" * 256, 0o644)
    raises(errno.ENAMETOOLONG, fs.lookup, ROOT, b"n" * 256)
    raises(errno.ENAMETOOLONG, fs.mkdir, ROOT, b"d" * 256, 0o755)
    raises(errno.EINVAL, fs.create, ROOT, b"a/b", 0o644)
    raises(errno.EINVAL, fs.create, ROOT, b"", 0o644)
    raises(errno.EEXIST, fs.mkdir, ROOT, b"..", 0o755)
    assert fs.lookup(ROOT, b"n" * 255).st_size == 0


def test_mkdir_nlink_and_parent_times(fsenv):
    fs = fsenv.fs
    before = fs.getattr(ROOT)
    d = fs.mkdir(ROOT, b"d", 0o755, uid=1, gid=2)
    assert stat.S_ISDIR(d.st_mode) and d.st_nlink == 2
    root = fs.getattr(ROOT)
    assert root.st_nlink == before.st_nlink + 1
    assert root.st_mtime_ns >= before.st_mtime_ns and root.st_ctime_ns >= before.st_ctime_ns
    fs.mkdir(d.st_ino, b"e", 0o755)
    fs.create(d.st_ino, b"f", 0o644)
    assert fs.getattr(d.st_ino).st_nlink == 3
    assert fs.lookup(d.st_ino, b"..").st_ino == ROOT
    e = fs.lookup(d.st_ino, b"e")
    assert fs.lookup(e.st_ino, b"..").st_ino == d.st_ino
    assert fs.lookup(e.st_ino, b".").st_ino == e.st_ino


def test_mknod_types(fsenv):
    fs = fsenv.fs
    fifo = fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(fifo.st_mode) and fifo.st_rdev == 0
    chr_ = fs.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))
    assert stat.S_ISCHR(chr_.st_mode) and chr_.st_rdev == os.makedev(1, 3)
    sock = fs.mknod(ROOT, b"sock", stat.S_IFSOCK | 0o644)
    assert stat.S_ISSOCK(sock.st_mode)
    reg = fs.mknod(ROOT, b"reg", 0o644)
    assert stat.S_ISREG(reg.st_mode)
    raises(errno.EPERM, fs.mknod, ROOT, b"dir", stat.S_IFDIR | 0o755)
    d_types = {n: a.st_mode for n, a, _o in fs.readdir(ROOT)}
    assert stat.S_ISFIFO(d_types[b"fifo"])
    raises(errno.EINVAL, fs.write, fifo.st_ino, 0, b"x")


def test_symlink_readlink(fsenv):
    fs = fsenv.fs
    s = fs.symlink(ROOT, b"l", b"/some/where", uid=3, gid=4)
    assert stat.S_ISLNK(s.st_mode) and s.st_size == len(b"/some/where")
    assert fs.readlink(s.st_ino) == b"/some/where"
    raises(errno.EINVAL, fs.readlink, ROOT)
    raises(errno.ENAMETOOLONG, fs.symlink, ROOT, b"l2", b"x" * 4096)
    raises(errno.ENOENT, fs.symlink, ROOT, b"l3", b"")
    fs.symlink(ROOT, b"long", b"y" * 4095)
    fs2 = fsenv.remount()
    assert fs2.readlink(fs2.lookup(ROOT, b"long").st_ino) == b"y" * 4095


def test_link_unlink(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    d = fs.mkdir(ROOT, b"d", 0o755)
    b = fs.link(a.st_ino, d.st_ino, b"b")
    assert b.st_ino == a.st_ino and b.st_nlink == 2
    assert fs.getattr(a.st_ino).st_nlink == 2
    raises(errno.EEXIST, fs.link, a.st_ino, ROOT, b"a")
    raises(errno.EPERM, fs.link, d.st_ino, ROOT, b"dlink")
    fs.write(a.st_ino, 0, b"data")
    fs.unlink(ROOT, b"a")
    assert fs.getattr(a.st_ino).st_nlink == 1
    assert fs.read(a.st_ino, 0, 10) == b"data"
    raises(errno.ENOENT, fs.unlink, ROOT, b"a")
    raises(errno.EISDIR, fs.unlink, ROOT, b"d")
    raises(errno.ENOTDIR, fs.rmdir, d.st_ino, b"b")
    fs.unlink(d.st_ino, b"b")
    raises(errno.ENOENT, fs.getattr, a.st_ino)      # no open file: deleted at once
    raises(errno.ENOENT, fs.link, a.st_ino, ROOT, b"again")


def test_link_max(fsenv, monkeypatch):
    import pyfs.fs.filesystem as fsmod
    monkeypatch.setattr(fsmod, "LINK_MAX", 5)
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    for i in range(4):
        fs.link(a.st_ino, ROOT, b"l%d" % i)
    raises(errno.EMLINK, fs.link, a.st_ino, ROOT, b"l9")
    d = fs.mkdir(ROOT, b"d", 0o755)
    for i in range(3):
        fs.mkdir(d.st_ino, b"s%d" % i, 0o755)
    raises(errno.EMLINK, fs.mkdir, d.st_ino, b"s9", 0o755)
    assert LINK_MAX == 65000


def test_rmdir(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755)
    fs.create(d.st_ino, b"f", 0o644)
    raises(errno.ENOTEMPTY, fs.rmdir, ROOT, b"d")
    fs.unlink(d.st_ino, b"f")
    nl = fs.getattr(ROOT).st_nlink
    fs.rmdir(ROOT, b"d")
    assert fs.getattr(ROOT).st_nlink == nl - 1
    raises(errno.ENOENT, fs.lookup, ROOT, b"d")
    raises(errno.ENOENT, fs.rmdir, ROOT, b"d")
    f = fs.create(ROOT, b"f", 0o644)
    raises(errno.ENOTDIR, fs.rmdir, ROOT, b"f")
    raises(errno.EINVAL, fs.rmdir, ROOT, b".")
    raises(errno.ENOTEMPTY, fs.rmdir, ROOT, b"..")
    assert f.st_ino


def test_removed_dir_refuses_entries(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755)
    fs.rmdir(ROOT, b"d")
    raises(errno.ENOENT, fs.create, d.st_ino, b"x", 0o644)
    fs.forget(d.st_ino, 1)
    raises(errno.ENOENT, fs.getattr, d.st_ino)


# ---------------------------------------------------------------- attributes

def test_setattr_chmod_chown_times(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    c0 = a.st_ctime_ns
    b = fs.setattr(a.st_ino, mode=0o600)
    assert stat.S_IMODE(b.st_mode) == 0o600 and stat.S_ISREG(b.st_mode)
    assert b.st_ctime_ns >= c0
    b = fs.setattr(a.st_ino, uid=1000, gid=100)
    assert (b.st_uid, b.st_gid) == (1000, 100)
    b = fs.setattr(a.st_ino, atime_ns=123_456_789_012, mtime_ns=987_654_321_098)
    assert (b.st_atime_ns, b.st_mtime_ns) == (123_456_789_012, 987_654_321_098)
    b = fs.setattr(a.st_ino, ctime_ns=5)
    assert b.st_ctime_ns == 5
    fs2 = fsenv.remount()
    b = fs2.getattr(a.st_ino)
    assert (b.st_uid, b.st_mtime_ns, b.st_atime_ns) == (1000, 987_654_321_098, 123_456_789_012)


def test_chown_kills_setuid(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o6755)
    assert stat.S_IMODE(fs.getattr(a.st_ino).st_mode) == 0o6755
    b = fs.setattr(a.st_ino, uid=1)
    assert stat.S_IMODE(b.st_mode) == 0o755      # both go: sgid with group exec
    c = fs.create(ROOT, b"c", 0o2644)             # sgid without group exec: locking, kept
    assert stat.S_IMODE(fs.setattr(c.st_ino, gid=5).st_mode) == 0o2644
    d = fs.mkdir(ROOT, b"d", 0o2755)             # directories keep theirs
    assert stat.S_IMODE(fs.setattr(d.st_ino, uid=3).st_mode) == 0o2755
    e = fs.create(ROOT, b"e", 0o4755)            # an explicit mode wins
    assert stat.S_IMODE(fs.setattr(e.st_ino, uid=3, mode=0o4755).st_mode) == 0o4755


def test_write_kills_setuid_for_non_root(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o6775)
    fs.write(a.st_ino, 0, b"root writes")
    assert stat.S_IMODE(fs.getattr(a.st_ino).st_mode) == 0o6775
    fs.write(a.st_ino, 0, b"user writes", kill_priv=True)
    assert stat.S_IMODE(fs.getattr(a.st_ino).st_mode) == 0o775
    b = fs.create(ROOT, b"b", 0o4644)
    fs.setattr(b.st_ino, size=0, kill_priv=True)
    assert stat.S_IMODE(fs.getattr(b.st_ino).st_mode) == 0o644


def test_setgid_directory_inheritance(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o2775, uid=0, gid=50)
    f = fs.create(d.st_ino, b"f", 0o644, uid=1, gid=1)
    assert f.st_gid == 50
    sub = fs.mkdir(d.st_ino, b"sub", 0o755, uid=1, gid=1)
    assert sub.st_gid == 50 and sub.st_mode & stat.S_ISGID


def test_times_follow_posix(fsenv):
    fs = fsenv.fs
    f = fs.create(ROOT, b"f", 0o644)
    fs.setattr(f.st_ino, atime_ns=1, mtime_ns=1, ctime_ns=1)
    fs.setattr(ROOT, atime_ns=1, mtime_ns=1, ctime_ns=1)
    fs.write(f.st_ino, 0, b"x")
    a = fs.getattr(f.st_ino)
    assert a.st_mtime_ns > 1 and a.st_ctime_ns > 1 and a.st_atime_ns == 1
    fs.read(f.st_ino, 0, 1)                      # relatime: atime older than mtime
    assert fs.getattr(f.st_ino).st_atime_ns > 1
    fs.setattr(f.st_ino, ctime_ns=1, mtime_ns=1)
    fs.setxattr(f.st_ino, b"user.k", b"v")
    a = fs.getattr(f.st_ino)
    assert a.st_ctime_ns > 1 and a.st_mtime_ns == 1
    fs.setattr(f.st_ino, ctime_ns=1)
    fs.link(f.st_ino, ROOT, b"g")
    assert fs.getattr(f.st_ino).st_ctime_ns > 1
    r = fs.getattr(ROOT)
    assert r.st_mtime_ns > 1 and r.st_ctime_ns > 1
    fs.setattr(ROOT, mtime_ns=1, ctime_ns=1)
    fs.setattr(f.st_ino, ctime_ns=1)
    fs.unlink(ROOT, b"g")
    assert fs.getattr(ROOT).st_mtime_ns > 1 and fs.getattr(f.st_ino).st_ctime_ns > 1


# ---------------------------------------------------------------- lookup counts

def test_unlinked_file_without_open_goes_at_once_its_number_at_forget(fsenv, monkeypatch):
    """Only an open file can reach an unlinked regular file: without one it is
    deleted in the unlink's transaction, and its number is not reused until
    the kernel forgets it."""
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755)
    a = fs.create(d.st_ino, b"a", 0o644)        # lookup count 1
    fs.lookup(d.st_ino, b"a")                   # 2
    fs.write(a.st_ino, 0, b"z" * 10000)
    fs.setxattr(a.st_ino, b"user.x", b"1")
    commits = []
    commit = fs.eng.committer.commit
    monkeypatch.setattr(fs.eng.committer, "commit", lambda t: commits.append(t) or commit(t))
    fs.unlink(d.st_ino, b"a")
    assert len(commits) == 1                    # name, inode, data, xattr: one transaction
    monkeypatch.undo()
    bt = fsenv.eng.btrees
    assert bt.get(BtreeId.inodes, orphan_key(a.st_ino)) is None
    assert bt.first(BtreeId.extents, pack_key(a.st_ino, 0), pack_key(a.st_ino, 2**64 - 1)) is None
    raises(errno.ENOENT, fs.getattr, a.st_ino)
    raises(errno.ENOENT, fs.lookup, a.st_ino, b".")     # a file handle: ESTALE
    fs.inums.last_in_dir.clear()                # aim the next create at a's number
    b = fs.create(d.st_ino, b"b", 0o644)
    assert b.st_ino != a.st_ino                 # held: the kernel still names it
    fs.forget(a.st_ino, 1)
    fs.forget(a.st_ino, 1)
    assert a.st_ino not in fs.lookups and a.st_ino not in fs.inums.held
    fs.inums.last_in_dir.clear()
    assert fs.create(d.st_ino, b"c", 0o644).st_ino == a.st_ino
    assert fsenv.fsck() == []


def test_removed_directory_waits_for_forget(fsenv):
    """A removed directory can still be someone's cwd: it stays (nlink 0, an
    orphan) until the kernel forgets it."""
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755)
    fs.rmdir(ROOT, b"d")
    bt = fsenv.eng.btrees
    assert bt.get(BtreeId.inodes, orphan_key(d.st_ino)) is not None
    assert fs.getattr(d.st_ino).st_nlink == 0
    fs.forget(d.st_ino, 1)
    raises(errno.ENOENT, fs.getattr, d.st_ino)
    assert bt.get(BtreeId.inodes, orphan_key(d.st_ino)) is None


def test_open_file_keeps_unlinked_inode(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    fs.open(a.st_ino, os.O_RDWR)
    fs.forget(a.st_ino, 1)
    fs.unlink(ROOT, b"a")
    fs.write(a.st_ino, 0, b"still here")
    assert fs.read(a.st_ino, 0, 100) == b"still here"
    fs.release(a.st_ino)
    raises(errno.ENOENT, fs.getattr, a.st_ino)


def test_unreferenced_unlink_deletes_at_once(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    fs.write(a.st_ino, 0, b"q" * 9000)
    fs.setxattr(a.st_ino, b"user.x", b"1")
    fs.forget(a.st_ino, 1)
    fs.unlink(ROOT, b"a")
    raises(errno.ENOENT, fs.getattr, a.st_ino)
    assert fsenv.eng.counters["fs_inodes_deleted"] == 1


def test_orphans_deleted_at_mount(fsenv):
    fs = fsenv.fs
    inums = []
    for i in range(5):
        a = fs.create(ROOT, b"f%d" % i, 0o644)
        fs.write(a.st_ino, 0, b"x" * 5000)
        fs.open(a.st_ino, os.O_RDONLY)          # an open file keeps it
        fs.unlink(ROOT, b"f%d" % i)
        inums.append(a.st_ino)
    fs.eng.flush()
    fs2 = fsenv.crash()                         # lookups die with the old mount
    assert fs2.eng.counters["fs_orphans_at_mount"] == 5
    for inum in inums:
        raises(errno.ENOENT, fs2.getattr, inum)
    assert fsenv.fsck() == []


def test_big_orphan_deleted_in_chunks(fsenv):
    fs = fsenv.fs
    fs.chunk = 8
    a = fs.create(ROOT, b"big", 0o644)
    for i in range(40):                         # 40 separate extents
        fs.write(a.st_ino, i * 8192, b"b" * 4096)
    fs.forget(a.st_ino, 1)
    seq0 = fs.eng.journal.cur_seq
    fs.unlink(ROOT, b"big")
    assert fs.eng.journal.cur_seq >= seq0      # several transactions ran
    raises(errno.ENOENT, fs.getattr, a.st_ino)


def test_forget_underflow_is_counted(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    fs.forget(a.st_ino, 3)
    assert fs.eng.counters["fs_forget_underflows"] == 1
    assert fs.getattr(a.st_ino).st_nlink == 1


# ---------------------------------------------------------------- persistence

def test_persistence_after_flush_without_unmount(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"dir", 0o755)
    f = fs.create(d.st_ino, b"file", 0o600)
    fs.write(f.st_ino, 0, b"persist me" * 500)
    fs.setxattr(f.st_ino, b"user.k", b"v")
    fs.symlink(d.st_ino, b"sym", b"file")
    seq = fs.fsync(f.st_ino)
    assert seq > 0
    fs.sync(f.st_ino)
    assert fs.eng.journal.durable_seq >= seq
    fs2 = fsenv.crash()
    d2 = fs2.lookup(ROOT, b"dir")
    f2 = fs2.lookup(d2.st_ino, b"file")
    assert f2.st_ino == f.st_ino and f2.st_size == 5000
    assert fs2.read(f2.st_ino, 0, 5000) == b"persist me" * 500
    assert fs2.getxattr(f2.st_ino, b"user.k") == b"v"
    assert fsenv.fsck() == []


def test_fsync_seq_tracks_last_commit(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    s1 = fs.fsync(a.st_ino)
    fs.create(ROOT, b"b", 0o644)
    assert fs.fsync(a.st_ino) == s1
    assert fs.fsync(ROOT) >= s1
    fs.write(a.st_ino, 0, b"x")
    assert fs.fsync(a.st_ino) >= s1
    assert fs.fsync(12345) == 0


def test_generation_persists_and_grows(fsenv):
    fs = fsenv.fs
    g = [fs.create(ROOT, b"g%d" % i, 0o644).generation for i in range(3)]
    assert g == sorted(set(g))
    fs2 = fsenv.remount()
    assert fs2.create(ROOT, b"later", 0o644).generation > g[-1]


# ---------------------------------------------------------------- inode numbers

def test_inum_allocation_clusters_by_directory(fsenv):
    fs = fsenv.fs
    d1 = fs.mkdir(ROOT, b"d1", 0o755)
    d2 = fs.mkdir(ROOT, b"d2", 0o755)
    assert d1.st_ino % DIR_STRIDES[0] == 0 and d2.st_ino > d1.st_ino
    a = [fs.create(d1.st_ino, b"a%d" % i, 0o644).st_ino for i in range(5)]
    b = [fs.create(d2.st_ino, b"b%d" % i, 0o644).st_ino for i in range(5)]
    a += [fs.create(d1.st_ino, b"c%d" % i, 0o644).st_ino for i in range(5)]
    assert a == list(range(d1.st_ino + 1, d1.st_ino + 11))
    assert b == list(range(d2.st_ino + 1, d2.st_ino + 6))
    sub = fs.mkdir(d1.st_ino, b"sub", 0o755)
    assert sub.st_ino % DIR_STRIDES[1] == 0
    # After a remount (no history) files still land right after their parent's run.
    fs2 = fsenv.remount()
    nxt = fs2.create(d1.st_ino, b"later", 0o644).st_ino
    assert nxt == d1.st_ino + 11


def test_inum_never_reuses_live_numbers(fsenv):
    fs = fsenv.fs
    d = fs.mkdir(ROOT, b"d", 0o755)
    seen = set()
    for i in range(50):
        seen.add(fs.create(d.st_ino, b"f%d" % i, 0o644).st_ino)
    for i in range(0, 50, 2):
        inum = fs.lookup(d.st_ino, b"f%d" % i).st_ino
        fs.unlink(d.st_ino, b"f%d" % i)
        fs.forget(inum, 2)
    fs.inums.last_in_dir.clear()
    live = {fs.lookup(d.st_ino, b"f%d" % i).st_ino for i in range(1, 50, 2)}
    for i in range(40):
        n = fs.create(d.st_ino, b"n%d" % i, 0o644).st_ino
        assert n not in live
        live.add(n)


# ---------------------------------------------------------------- misc

def test_statfs(fsenv):
    fs = fsenv.fs
    s = fs.statfs()
    assert s.f_bsize == 4096 and s.f_namemax == 255
    assert 0 < s.f_bfree <= s.f_blocks
    a = fs.create(ROOT, b"a", 0o644)
    fs.write(a.st_ino, 0, os.urandom(1 << 20))
    assert fs.statfs().f_bfree < s.f_bfree


def test_read_only_engine_refuses_changes(fsenv):
    fs = fsenv.fs
    fs.create(ROOT, b"a", 0o644)
    fs.set_read_only()
    raises(errno.EROFS, fs.create, ROOT, b"b", 0o644)
    raises(errno.EROFS, fs.unlink, ROOT, b"a")
    raises(errno.EROFS, fs.setxattr, ROOT, b"user.a", b"")
    assert fs.lookup(ROOT, b"a").st_nlink == 1


def test_open_trunc(fsenv):
    fs = fsenv.fs
    a = fs.create(ROOT, b"a", 0o644)
    fs.write(a.st_ino, 0, b"abc")
    fs.open(a.st_ino, os.O_RDONLY | os.O_TRUNC)
    assert fs.getattr(a.st_ino).st_size == 3
    fs.open(a.st_ino, os.O_WRONLY | os.O_TRUNC)
    assert fs.getattr(a.st_ino).st_size == 0
    fs.release(a.st_ino)
    fs.release(a.st_ino)
