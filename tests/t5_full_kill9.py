"""A full disk, rm storms and kill -9: the image stays sound.

A client fills a 16 MiB image with files of mixed sizes (ENOSPC is expected:
it counts them outside the mount) and deletes batches of them now and then;
the daemon is killed at a random moment. After every kill `pyfs fsck -f -n`
must exit 0 and the image must mount again; the same image goes on to the
next round, so the filesystem stays full and crashes pile up (the fifth
one's blacklist overflow included). At the end, deleting everything on the
full filesystem works and gives the space back.

PYFS_FULL_KILL_ROUNDS sets the number of kills (default 6). A failure
prints the round's seed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

from conftest import require_fuse
from t5_kill9_acked import Daemon, pyfs

ROUNDS = int(os.environ.get("PYFS_FULL_KILL_ROUNDS", "6"))

CLIENT = r"""
import errno, os, random, sys
mnt, seed, tally = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
os.makedirs(f"{mnt}/s", exist_ok=True)
for i in range(1_000_000):
    d = f"{mnt}/s/d{rng.randrange(20)}"
    try:
        if rng.random() < 0.93:
            os.makedirs(d, exist_ok=True)
            with open(f"{d}/f{seed}_{i}", "wb") as f:
                f.write(rng.randbytes(rng.choice([0, 100, 4096, 20000, 70000, 300000, 1 << 20])))
                if rng.random() < 0.1:
                    os.fsync(f.fileno())
        else:
            for n in (os.listdir(d) if os.path.isdir(d) else [])[:rng.randrange(1, 60)]:
                os.unlink(f"{d}/{n}")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            with open(tally, "a") as t:
                t.write("x")
        elif e.errno not in (errno.ENOENT, errno.EEXIST):
            sys.exit(0)     # the daemon is gone (ENOTCONN, ECONNABORTED)
"""


def test_full_disk_rm_storms_and_kills_leave_a_sound_image(tmp_path):
    require_fuse()
    image, mnt, tally = str(tmp_path / "img"), str(tmp_path / "mnt"), str(tmp_path / "enospc")
    os.mkdir(mnt)
    pyfs("mkfs", image, "--size", "16M", "-q")
    for rnd in range(ROUNDS):
        seed = 104729 * rnd + 7
        d = Daemon(image, mnt)
        client = subprocess.Popen([sys.executable, "-c", CLIENT, mnt, str(seed), tally])
        time.sleep(random.Random(seed).uniform(1.0, 4.0))
        d.kill9()
        client.wait(timeout=60)
        fsck = pyfs("fsck", "-f", "-n", image, check=False)
        if fsck.returncode != 0:
            shutil.copy(image, f"/tmp/pyfs-full-kill9-{seed}.img")
        assert fsck.returncode == 0, (f"seed {seed}: fsck -n after kill -9 on a full "
                                      f"filesystem:\n{fsck.stdout}{fsck.stderr}")
    assert os.path.exists(tally), "the client never filled the filesystem"
    d = Daemon(image, mnt)
    try:
        before = shutil.disk_usage(mnt)
        shutil.rmtree(f"{mnt}/s")                   # deleting works on a full filesystem
        assert os.listdir(mnt) == ["lost+found"]
        after = shutil.disk_usage(mnt)
        assert after.free > before.free and after.used < (2 << 20), (before, after)
    finally:
        d.umount()
    fsck = pyfs("fsck", "-f", "-n", image, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
