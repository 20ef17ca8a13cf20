"""File handles through the kernel: name_to_handle_at / open_by_handle_at for
every inode type after the kernel's caches are dropped (the kernel then asks
the daemon for lookup(ino, ".")), and ESTALE once the inode is gone or its
number carries a new generation."""

from __future__ import annotations

import ctypes
import errno
import os
import stat

import pytest

MAX_HANDLE_SZ = 128
AT_FDCWD = -100

libc = ctypes.CDLL(None, use_errno=True)


class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


def name_to_handle(path: str) -> FileHandle:
    """The handle of path itself (a symlink is not followed)."""
    fh = FileHandle(handle_bytes=MAX_HANDLE_SZ)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh),
                              ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fh


def open_by_handle(mount_fd: int, fh: FileHandle, flags: int) -> int:
    fd = libc.open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def drop_caches() -> None:
    """Evict unused dentries and inodes: the kernel forgets our inodes."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@pytest.fixture
def mount_fd(mnt):
    fd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def stale(mount_fd: int, fh: FileHandle) -> None:
    with pytest.raises(OSError) as ei:
        os.close(open_by_handle(mount_fd, fh, os.O_RDONLY))
    assert ei.value.errno == errno.ESTALE, ei.value


def test_every_inode_type_after_drop_caches(mnt, mount_fd):
    os.mkdir(mnt.p("d"))
    with open(mnt.p("d", "f"), "wb") as f:
        f.write(b"file by handle")
    os.mkdir(mnt.p("d", "sub"))
    open(mnt.p("d", "sub", "inner"), "w").close()
    os.symlink("some/target", mnt.p("d", "ln"))
    os.mkfifo(mnt.p("d", "fifo"))
    os.mknod(mnt.p("d", "sock"), stat.S_IFSOCK | 0o600)
    os.mknod(mnt.p("d", "null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    names = ["f", "sub", "ln", "fifo", "sock", "null"]
    want = {n: os.lstat(mnt.p("d", n)) for n in names}
    handles = {n: name_to_handle(mnt.p("d", n)) for n in names}
    drop_caches()

    fd = open_by_handle(mount_fd, handles["f"], os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"file by handle"
    finally:
        os.close(fd)
    fd = open_by_handle(mount_fd, handles["sub"], os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.listdir(fd) == ["inner"]
    finally:
        os.close(fd)
    fd = open_by_handle(mount_fd, handles["ln"], os.O_PATH)
    try:
        assert os.readlink("", dir_fd=fd) == "some/target"
    finally:
        os.close(fd)
    fd = open_by_handle(mount_fd, handles["fifo"], os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.read(fd, 10) == b""          # an open FIFO without writers
    finally:
        os.close(fd)
    for n in names:
        fd = open_by_handle(mount_fd, handles[n], os.O_PATH)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        assert (st.st_ino, st.st_mode, st.st_rdev) == (
            want[n].st_ino, want[n].st_mode, want[n].st_rdev), n


def test_estale_after_delete_and_reuse(mnt):
    os.mkdir(mnt.p("d"))
    with open(mnt.p("d", "f"), "wb") as f:
        f.write(b"old")
    old_ino = os.stat(mnt.p("d", "f")).st_ino
    fh = name_to_handle(mnt.p("d", "f"))
    fh_dir = name_to_handle(mnt.p("d"))
    os.unlink(mnt.p("d", "f"))
    drop_caches()
    mount_fd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stale(mount_fd, fh)
    finally:
        os.close(mount_fd)
    # A new inode under the old number is another file: its generation differs.
    mnt.remount()
    with open(mnt.p("d", "g"), "wb") as f:
        f.write(b"new")
    assert os.stat(mnt.p("d", "g")).st_ino == old_ino         # the number was reused
    mount_fd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stale(mount_fd, fh)                                    # kernel cache hit
        drop_caches()
        stale(mount_fd, fh)                                    # lookup(ino, ".")
        os.close(open_by_handle(mount_fd, fh_dir, os.O_RDONLY | os.O_DIRECTORY))
    finally:
        os.close(mount_fd)


def test_unlinked_open_file_lives_until_last_reference(mnt, mount_fd):
    p = mnt.p("f")
    with open(p, "wb") as f:
        f.write(b"still here")
    fh = name_to_handle(p)
    keep = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        drop_caches()
        fd = open_by_handle(mount_fd, fh, os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"still here"
        finally:
            os.close(fd)
    finally:
        os.close(keep)
    drop_caches()
    stale(mount_fd, fh)
