"""POSIX ACLs through the kernel (FUSE_POSIX_ACL): cp -a and rsync -a keep modes
and ACLs exactly, setfacl/getfacl, the kernel's permission checks honour the
ACL, chmod reaches the ACL, default ACLs are inherited."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest


def run(*cmd: str, umask: int = 0o022) -> str:
    r = subprocess.run(["sh", "-c", f"umask {umask:03o} && exec \"$@\"", "sh", *cmd],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return r.stdout


def as_user(uid: int, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           *cmd], capture_output=True, text=True, timeout=60)


def getfacl(path: str) -> str:
    return run("getfacl", "-c", "-n", path)


def tree(root: str) -> dict[str, tuple]:
    """Every path under root: its type and permission bits, owner, ACLs."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in [*dirs, *files, "."] if d == root else [*dirs, *files]:
            p = os.path.normpath(os.path.join(d, name))
            st = os.lstat(p)
            acls = "" if stat.S_ISLNK(st.st_mode) else getfacl(p)
            out[os.path.relpath(p, root)] = (oct(st.st_mode), st.st_uid, st.st_gid, acls)
    return out


def make_source(src: str) -> None:
    """A tree on the host's ext4 with every mode cp must carry, and ACLs."""
    os.makedirs(src)
    for mode in (0o644, 0o600, 0o755, 0o444, 0o4755, 0o2750, 0o640):
        p = os.path.join(src, f"f{mode:o}")
        with open(p, "w") as f:
            f.write(f"{mode:o}\n")
        os.chmod(p, mode)
    for mode in (0o700, 0o750, 0o2775, 0o1777):
        os.mkdir(os.path.join(src, f"d{mode:o}"))
        os.chmod(os.path.join(src, f"d{mode:o}"), mode)
    with open(os.path.join(src, "d700", "inner"), "w") as f:
        f.write("in")
    os.chmod(os.path.join(src, "d700", "inner"), 0o604)
    os.symlink("f644", os.path.join(src, "ln"))
    os.mkfifo(os.path.join(src, "fifo"), 0o620)
    os.chown(os.path.join(src, "f600"), 1000, 1000)
    run("setfacl", "-m", "u:1000:rwx,g:50:r", os.path.join(src, "f640"))
    run("setfacl", "-d", "-m", "u:1000:rwx", os.path.join(src, "d750"))


def test_cp_a_and_rsync_a_keep_modes_and_acls(mnt, tmp_path):
    src = str(tmp_path / "src")
    make_source(src)
    want = tree(src)
    assert "user:1000:rwx" in want["f640"][3]                 # the host keeps ACLs
    run("cp", "-a", src, mnt.p("cp-a"))
    run("cp", "-rp", src, mnt.p("cp-p"))
    run("rsync", "-a", src + "/", mnt.p("rsync-a"))
    run("rsync", "-aA", src + "/", mnt.p("rsync-aA"))
    for copy in ("cp-a", "rsync-aA"):
        assert tree(mnt.p(copy)) == want, copy
    plain = {p: (m, u, g) for p, (m, u, g, _acl) in want.items()}
    # cp -p and rsync -a do not copy ACLs: modes (the ACL's mask as group bits) must match.
    for copy in ("cp-p", "rsync-a"):
        got = {p: (m, u, g) for p, (m, u, g, _acl) in tree(mnt.p(copy)).items()}
        assert {p: v[0] for p, v in got.items()} == {p: v[0] for p, v in plain.items()}, copy
    mnt.remount()
    assert tree(mnt.p("cp-a")) == want


def test_setfacl_getfacl_permissions_and_chmod(mnt):
    p = mnt.p("f")
    with open(p, "w") as f:
        f.write("secret\n")
    os.chmod(p, 0o600)
    assert as_user(1000, "cat", p).returncode != 0
    run("setfacl", "-m", "u:1000:r", p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640      # the mask is the group bits
    r = as_user(1000, "cat", p)
    assert r.returncode == 0 and r.stdout == "secret\n", r.stderr
    assert as_user(1001, "cat", p).returncode != 0
    os.chmod(p, 0o600)                                    # the mask follows: no read
    assert "mask::---" in getfacl(p)
    assert as_user(1000, "cat", p).returncode != 0
    os.chmod(p, 0o644)
    assert as_user(1000, "cat", p).returncode == 0
    run("setfacl", "-b", p)               # back to a plain mode: group from group::---
    assert os.listxattr(p) == [] and stat.S_IMODE(os.stat(p).st_mode) == 0o604
    with pytest.raises(OSError) as ei:                    # the kernel validates too
        os.setxattr(p, "system.posix_acl_access", b"\x02\0\0\0bad")
    assert ei.value.errno == errno.EINVAL


def test_default_acl_inheritance(mnt):
    d = mnt.p("shared")
    os.mkdir(d, 0o755)
    run("setfacl", "-d", "-m", "u:1000:rwx,g::rwx,o::r-x", d)
    run("mkdir", mnt.p("shared", "sub"), umask=0)
    run("touch", mnt.p("shared", "f"), umask=0)
    assert stat.S_IMODE(os.stat(mnt.p("shared", "f")).st_mode) == 0o664
    assert getfacl(mnt.p("shared", "f")).split() == [
        "user::rw-", "user:1000:rwx", "#effective:rw-", "group::rwx", "#effective:rw-",
        "mask::rw-", "other::r--"]
    assert stat.S_IMODE(os.stat(mnt.p("shared", "sub")).st_mode) == 0o775
    assert "default:user:1000:rwx" in getfacl(mnt.p("shared", "sub"))
    r = as_user(1000, "sh", "-c", f"echo hi > {mnt.p('shared', 'sub', 'by1000')}")
    assert r.returncode == 0, r.stderr
    # The kernel applies the umask before pyfs sees the mode (pyfuse3 cannot ask
    # for FUSE_DONT_MASK), so with a default ACL the umask still narrows it.
    run("touch", mnt.p("shared", "g"), umask=0o027)
    assert stat.S_IMODE(os.stat(mnt.p("shared", "g")).st_mode) == 0o640
