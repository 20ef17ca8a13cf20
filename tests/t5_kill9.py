"""kill -9 of the mount daemon during fs_mark and during rm -rf.

After each kill: `pyfs fsck -f -y` must exit 0 (replaying the journal is
normal operation, not a repair), and after remounting every file whose fsync
returned must be there with its content. A verifier process writes files,
fsyncs each and only then records its name outside the mount; fs_mark runs
beside it for load. PYFS_KILL_ROUNDS sets the number of rounds (default 3 of
each kind). Failures print the round's seed.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYFS = [sys.executable, "-m", "pyfs.cli"]
ROUNDS = int(os.environ.get("PYFS_KILL_ROUNDS", "3"))

if os.environ.get("CI") != "true" and (os.geteuid() != 0 or not os.path.exists("/dev/fuse")):
    pytest.skip("needs root and /dev/fuse", allow_module_level=True)

VERIFIER = r"""
import hashlib, os, sys
mnt, log = sys.argv[1], sys.argv[2]
os.makedirs(f"{mnt}/v", exist_ok=True)
with open(log, "a") as out:
    i = 0
    while True:
        name = f"v/f{i:06d}"
        data = hashlib.sha256(name.encode()).digest() * (1 + i % 300)
        fd = os.open(f"{mnt}/{name}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        out.write(name + "\n")
        out.flush()
        i += 1
"""


def content(name: str) -> bytes:
    i = int(name.rsplit("f", 1)[1])
    return hashlib.sha256(name.encode()).digest() * (1 + i % 300)


def run(*args, check=True, timeout=120):
    return subprocess.run([*PYFS, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=check)


class Mount:
    def __init__(self, image: str, mnt: str):
        self.image, self.mnt = image, mnt
        self.proc = subprocess.Popen([*PYFS, "mount", image, mnt, "-f"], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mount failed: {self.proc.stderr.read()!r}")
            time.sleep(0.05)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)

    def umount(self) -> None:
        run("umount", self.mnt)
        self.proc.wait(timeout=60)


@pytest.fixture
def env(tmp_path):
    image = str(tmp_path / "k.img")
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    run("mkfs", image, "--size", "512M", "-q")
    yield image, mnt, str(tmp_path / "fsynced.log")
    subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)


def check_after_crash(image: str, mnt: str, log: str, seed: int) -> int:
    fsck = run("fsck", "-f", "-y", image, check=False)
    assert fsck.returncode == 0, f"seed {seed}: fsck after kill -9:\n{fsck.stdout}{fsck.stderr}"
    m = Mount(image, mnt)
    try:
        names = Path(log).read_text().split() if os.path.exists(log) else []
        for name in names:
            p = Path(mnt) / name
            assert p.exists(), f"seed {seed}: fsync'd {name} is gone"
            assert p.read_bytes() == content(name), f"seed {seed}: {name} has wrong content"
    finally:
        m.umount()
    return len(names)


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_kill9_during_fs_mark(env, seed):
    image, mnt, log = env
    rng = random.Random(seed)
    m = Mount(image, mnt)
    os.makedirs(f"{mnt}/fsm", exist_ok=True)
    fsm = subprocess.Popen(["fs_mark", "-d", "fsm", "-n", "100000", "-s", "4096", "-S", "1",
                            "-t", "1", "-L", "1"], cwd=mnt, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    ver = subprocess.Popen([sys.executable, "-c", VERIFIER, mnt, log])
    time.sleep(rng.uniform(0.3, 2.0))
    m.kill9()
    for p in (fsm, ver):
        p.kill()
        p.wait(timeout=30)
    n = check_after_crash(image, mnt, log, seed)
    assert n > 0, f"seed {seed}: the verifier fsync'd nothing before the kill"


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_kill9_during_rm_rf(env, seed):
    image, mnt, log = env
    rng = random.Random(1000 + seed)
    m = Mount(image, mnt)
    ver = subprocess.Popen([sys.executable, "-c", VERIFIER, mnt, log])
    os.makedirs(f"{mnt}/tree", exist_ok=True)
    subprocess.run(["fs_mark", "-d", "tree", "-n", "1500", "-s", "4096", "-S", "0", "-t", "1",
                    "-L", "1", "-k"], cwd=mnt, capture_output=True, timeout=300)
    rm = subprocess.Popen(["rm", "-rf", f"{mnt}/tree"])
    time.sleep(rng.uniform(0.05, 0.6))
    m.kill9()
    for p in (rm, ver):
        p.kill()
        p.wait(timeout=30)
    check_after_crash(image, mnt, log, seed)
    shutil.rmtree(mnt + "/tree", ignore_errors=True)
