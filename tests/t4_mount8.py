"""pyfs through mount(8), umount(8), fsck(8) and mkfs(8), and an fstab line,
as an admin runs them: in a private mount namespace whose /sbin shows this
checkout's helpers (`pyfs install-helpers`, what scripts/setup.sh runs for
/sbin) over the system's. Commands run with an empty environment, as mount(8)
may run its helpers."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import pyfs_cli, require_fuse

from pyfs.cli import HELPERS
from pyfs.device import open_device
from pyfs.format import SbState
from pyfs.mount import _alive, read_pid_file
from pyfs.superblock import read_superblock

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MOUNT, UMOUNT, FSCK, MKFS = (shutil.which(n, path=SYSTEM_PATH) or n
                             for n in ("mount", "umount", "fsck", "mkfs"))


def sb_state(image: str) -> int:
    with open_device(image, read_only=True, exclusive=False) as dev:
        return read_superblock(dev)[0].state


class Namespace:
    """A private mount namespace, kept alive by a sleeping process."""

    def __init__(self, helpers: Path):
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                      "sleep", "600"])
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.proc.pid}/ns/mnt") == ours:
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.01)
        sbin = os.path.realpath("/sbin")
        self.run(MOUNT, "-t", "overlay", "overlay", "-o", f"lowerdir={helpers}:{sbin}", sbin,
                 check=True)

    def run(self, *argv: str, check: bool = False, path: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        env = {**({"PATH": path} if path else {}), **(env or {})}
        r = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "--", *argv],
                           capture_output=True, text=True, env=env, timeout=120)
        assert not check or r.returncode == 0, (argv, r.returncode, r.stderr)
        return r

    def p(self, *parts: str) -> str:
        """A path as the namespace sees it (pyfs mounts live only there)."""
        return f"/proc/{self.proc.pid}/root" + os.path.join(*parts)

    def mount_line(self, mnt: str) -> list[str] | None:
        with open(f"/proc/{self.proc.pid}/mountinfo") as f:
            found = [ln.split() for ln in f if ln.split()[4] == mnt]
        return found[-1] if found else None

    def close(self, mnt: str) -> None:
        while self.mount_line(mnt):
            self.run(UMOUNT, "-l", mnt)
        info = read_pid_file(mnt)
        if info and _alive(info["pid"]):
            wait_gone(info["pid"], kill=True)
        self.proc.kill()
        self.proc.wait()


def wait_gone(pid: int, kill: bool = False) -> None:
    deadline = time.monotonic() + 30
    while _alive(pid):
        if time.monotonic() > deadline:
            assert kill, f"daemon {pid} did not exit"
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@pytest.fixture
def ns(tmp_path):
    require_fuse()
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    pyfs_cli("install-helpers", "--dir", str(helpers), "-q")
    mnt = tempfile.mkdtemp(prefix="pyfs-t4m8-", dir="/tmp")
    n = Namespace(helpers)
    n.mnt = mnt
    try:
        yield n
    finally:
        n.close(mnt)
        os.rmdir(mnt)


def unmount_and_wait(ns: Namespace, mnt: str) -> None:
    pid = read_pid_file(mnt)["pid"]
    r = ns.run(UMOUNT, mnt)
    assert r.returncode == 0, r.stderr
    wait_gone(pid)


def test_setup_installed_the_helpers():
    """scripts/setup.sh links them into /sbin (CI runs it on a fresh machine)."""
    for name, script in HELPERS.items():
        link = Path("/sbin") / name
        if not link.is_symlink():
            if os.environ.get("CI") == "true":
                pytest.fail(f"{link} is missing: scripts/setup.sh must install it")
            pytest.skip(f"{link} not installed (run scripts/setup.sh --install-only)")
        target = Path(os.readlink(link))
        assert target.name == script and target.parent.name == "bin", target
        assert os.access(link, os.X_OK), link


def test_mkfs_fsck_mount_remount_umount(ns, tmp_path):
    img, mnt = str(tmp_path / "img"), ns.mnt
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    # mkfs(8) finds mkfs.pyfs through PATH, which for root holds /usr/sbin.
    r = ns.run(MKFS, "-t", "pyfs", img, path=SYSTEM_PATH)
    assert r.returncode == 0 and "Created a pyfs filesystem" in r.stdout, r.stderr
    r = ns.run(FSCK, "-t", "pyfs", img)
    assert r.returncode == 0 and "clean (cleanly unmounted" in r.stdout, r.stdout + r.stderr

    # Generic options: libfuse refuses lazytime and [no]diratime; fstab noise.
    r = ns.run(MOUNT, "-t", "fuse.pyfs", "-o", "lazytime,nodiratime,diratime,noatime,nodev,"
               "nosuid,_netdev,nofail,errors=continue", img, mnt)
    assert r.returncode == 0, r.stderr
    line = ns.mount_line(mnt)
    assert line[line.index("-") + 1] == "fuse.pyfs"
    assert {"rw", "nosuid", "nodev", "noatime"} <= set(line[5].split(","))
    Path(ns.p(mnt, "f")).write_text("one")
    assert "errors=continue" in pyfs_in_ns(ns, "stats", mnt).stdout

    # remount,ro while a file is open for writing: the kernel says busy, and
    # the daemon, told first, goes back to writing.
    with open(ns.p(mnt, "held"), "w") as held:
        r = ns.run(MOUNT, "-o", "remount,ro", mnt)
        assert r.returncode == 32 and "busy" in r.stderr, r.stderr
        held.write("still writable")
    assert Path(ns.p(mnt, "held")).read_text() == "still writable"

    r = ns.run(MOUNT, "-o", "remount,ro", mnt)
    assert r.returncode == 0, r.stderr
    assert ns.mount_line(mnt)[5].startswith("ro,")
    assert sb_state(img) == SbState.clean, "remount,ro writes everything back"
    with pytest.raises(OSError) as ei:
        Path(ns.p(mnt, "g")).write_text("two")
    assert ei.value.errno == errno.EROFS
    assert "read-only: remounted read-only" in pyfs_in_ns(ns, "stats", mnt).stdout

    r = ns.run(MOUNT, "-o", "remount,rw", mnt)
    assert r.returncode == 0, r.stderr
    assert ns.mount_line(mnt)[5].startswith("rw,")
    Path(ns.p(mnt, "g")).write_text("two")
    assert sb_state(img) == SbState.dirty
    unmount_and_wait(ns, mnt)                   # plain umount(8): no helper involved
    assert sb_state(img) == SbState.clean

    # A read-only mount cannot become read-write (its image is open read-only).
    r = ns.run(MOUNT, "-t", "pyfs", "-o", "ro", img, mnt)
    assert r.returncode == 0, r.stderr
    r = ns.run(MOUNT, "-o", "remount,rw", mnt)
    assert r.returncode == 32 and "mounted read-only (ro)" in r.stderr, r.stderr
    assert ns.mount_line(mnt)[5].startswith("ro,")
    unmount_and_wait(ns, mnt)

    for opts, msg in (("errors=panic", "errors=panic is not supported"),
                      ("bogus", "unknown mount option 'bogus'")):
        r = ns.run(MOUNT, "-t", "pyfs", "-o", opts, img, mnt)
        assert r.returncode == 32 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert ns.mount_line(mnt) is None
    r = ns.run(FSCK, "-t", "pyfs", "-f", "-n", img)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fstab_line(ns, tmp_path):
    img, mnt = str(tmp_path / "img"), ns.mnt
    pyfs_cli("mkfs", "-q", "--size", "64M", img)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# pyfs\n{img} {mnt} fuse.pyfs noauto,nofail,_netdev,x-systemd.automount,"
                     f"x-systemd.device-timeout=10s,flush_delay_ms=200,errors=remount-ro 0 2\n")
    r = ns.run(MOUNT, "-a", "-T", str(fstab))
    assert r.returncode == 0 and ns.mount_line(mnt) is None, "noauto: mount -a skips it"
    r = ns.run(MOUNT, "-T", str(fstab), mnt)
    assert r.returncode == 0, r.stderr
    Path(ns.p(mnt, "f")).write_text("from fstab")
    r = ns.run(MOUNT, "-T", str(fstab), "-o", "remount,ro", mnt)
    assert r.returncode == 0, r.stderr
    unmount_and_wait(ns, mnt)
    r = ns.run(MOUNT, "-T", str(fstab), mnt)
    assert r.returncode == 0, r.stderr
    assert Path(ns.p(mnt, "f")).read_text() == "from fstab"
    unmount_and_wait(ns, mnt)
    # fsck -A checks a pass-2 line with fsck.fuse.pyfs, its stdin closed (with
    # nofail it would skip the image: not a block device).
    fstab.write_text(f"{img} {mnt} fuse.pyfs noauto 0 2\n")
    r = ns.run(FSCK, "-A", env={"FSTAB_FILE": str(fstab)})
    assert r.returncode == 0 and "clean (cleanly unmounted" in r.stdout, r.stdout + r.stderr
    r = ns.run(FSCK, "-A", "-f", "-n", env={"FSTAB_FILE": str(fstab)})
    assert r.returncode == 0 and f"{img}: clean; " in r.stdout, r.stdout + r.stderr


def pyfs_in_ns(ns: Namespace, *args: str) -> subprocess.CompletedProcess:
    r = ns.run(sys.executable, "-m", "pyfs.cli", *args)
    assert r.returncode == 0, r.stderr
    return r
