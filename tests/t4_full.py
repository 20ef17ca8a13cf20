"""Full is not fatal, through the kernel: fill a 16 MiB image until ENOSPC, delete
on the full filesystem, create again, unmount cleanly, fsck -f -n exits 0,
and a remount shows exactly the files created. The API-level variants (each
kind of thing, 64 MiB) are tests/t3_fs_full.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import pytest
from conftest import Mount, pyfs_cli, require_fuse

PER_DIR = 1000


@pytest.fixture
def small_mnt(tmp_path):
    require_fuse()
    image = str(tmp_path / "img")
    pyfs_cli("mkfs", "-q", "--size", "16M", image)
    path = tempfile.mkdtemp(prefix="pyfs-t4-full-", dir="/tmp")
    m = Mount(image, path)
    try:
        m.mount()
        yield m
    finally:
        m.force_unmount()
        os.rmdir(path)


def fill(root: str, made: set[str], data: bytes = b"") -> int:
    """Create files (with data) until ENOSPC; return how many."""
    n = 0
    base = len(made)
    while True:
        i = base + n
        d = os.path.join(root, f"d{i // PER_DIR}")
        try:
            if i % PER_DIR == 0 or not os.path.isdir(d):
                os.makedirs(d, exist_ok=True)
            p = os.path.join(d, f"f{i}")
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return n
        try:
            made.add(p)
            n += 1
            if data:
                os.write(fd, data)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return n
        finally:
            os.close(fd)


def listing(root: str) -> set[str]:
    out = set()
    for d, _subdirs, files in os.walk(root):
        out.update(os.path.join(d, f) for f in files)
    return out


@pytest.mark.parametrize("data", [False, True], ids=["empty", "1MiB-then-empty"])
def test_fill_to_enospc_through_the_kernel(small_mnt, data):
    m = small_mnt
    made: set[str] = set()
    if data:
        assert fill(m.path, made, os.urandom(1 << 20)) >= 4
    assert fill(m.path, made) > (1000 if not data else 10)
    st = os.statvfs(m.path)
    assert st.f_bavail == 0, "df says full when users get ENOSPC"
    assert st.f_files - st.f_ffree == len(made) + len({os.path.dirname(p) for p in made}) + 2
    # Delete on the full filesystem (a whole directory, like rm -rf), then create again.
    victim = os.path.join(m.path, "d0")
    gone = {p for p in made if p.startswith(victim + "/")}
    shutil.rmtree(victim)
    made -= gone
    assert os.statvfs(m.path).f_bavail > 0
    assert fill(m.path, made) > 0
    assert listing(m.path) == made
    m.umount()                                          # clean, or umount fails
    r = pyfs_cli("fsck", "-f", "-n", m.image, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    m.mount()
    assert listing(m.path) == made
    m.umount()
