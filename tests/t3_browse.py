"""Tier 3: `pyfs ls`, `cat`, `cp-out` and `du` on an unmounted image, read
through the in-process API (pyfs/browse.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from pyfs import cli
from pyfs.device import open_device
from pyfs.engine import Engine
from pyfs.fs import Filesystem

MiB = 1 << 20
T = 981_173_696_123_456_789          # 2001-02-03, with nanoseconds


def run(capsysbinary, *argv: str) -> tuple[int, bytes, str]:
    code = cli.main(list(argv))
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[str, dict]:
    """An image holding a small tree of every kind of file; returns it and the
    contents of its regular files."""
    path = str(tmp_path_factory.mktemp("browse") / "img")
    cli.main(["mkfs", "-q", "--size", "64M", path])
    eng = Engine(open_device(path))
    fs = Filesystem(eng)
    d = fs.mkdir(1, b"dir", 0o750, 7, 8).st_ino
    sub = fs.mkdir(d, b"sub", 0o755, 0, 0).st_ino
    files = {"/dir/big": os.urandom(3 * MiB + 123), "/dir/sub/small": b"hello\n",
             "/dir/odd\x01name": b"odd"}
    for path_, data in files.items():
        parent = sub if "/sub/" in path_ else d
        name = path_.rsplit("/", 1)[1].encode()
        ino = fs.create(parent, name, 0o640, 1000, 100).st_ino
        for off in range(0, len(data), MiB):
            fs.write(ino, off, data[off:off + MiB])
        fs.setattr(ino, atime_ns=T, mtime_ns=T)
    small = fs.lookup(sub, b"small").st_ino
    fs.link(small, d, b"hardlink")
    fs.symlink(d, b"rel", b"sub/small", 0, 0)
    fs.symlink(1, b"abs", b"/dir/sub", 0, 0)
    fs.symlink(1, b"loop", b"loop", 0, 0)
    fs.mknod(d, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
    fs.mknod(d, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), 0, 0)
    fs.setattr(d, mtime_ns=T)
    fs.shutdown()
    eng.close()
    return path, files


def test_ls(image, capsysbinary):
    img, _files = image
    code, out, err = run(capsysbinary, "ls", img)
    assert code == 0, err
    assert out.decode().splitlines() == ["abs", "dir", "loop", "lost+found"]
    code, out, err = run(capsysbinary, "ls", "-l", img, "/dir")
    assert code == 0, err
    lines = {ln.split()[-1] if "->" not in ln else ln.split()[-3]: ln
             for ln in out.decode().splitlines()}
    assert set(lines) == {"big", "fifo", "hardlink", "null", "odd\\x01name", "rel", "sub"}
    assert lines["big"].split()[:5] == ["-rw-r-----", "1", "1000", "100", str(3 * MiB + 123)]
    assert "2001-02-0" in lines["big"]              # local time of T
    assert lines["hardlink"].split()[1] == "2" and lines["sub"].startswith("drwxr-xr-x")
    assert lines["rel"].startswith("lrwxrwxrwx") and lines["rel"].endswith("rel -> sub/small")
    assert lines["null"].startswith("crw-rw-rw-") and " 1, 3 " in lines["null"]
    assert lines["fifo"].startswith("prw-------")
    code, out, _ = run(capsysbinary, "ls", img, "/abs/small")      # through a symlink
    assert code == 0 and out == b"/abs/small\n"
    code, out, _ = run(capsysbinary, "ls", img, "/dir/sub/../..")
    assert code == 0 and out.decode().split() == ["abs", "dir", "loop", "lost+found"]


def test_cat(image, capsysbinary):
    img, files = image
    for path, data in files.items():
        code, out, err = run(capsysbinary, "cat", img, path)
        assert code == 0 and out == data, (path, err)
    code, out, _ = run(capsysbinary, "cat", img, "/dir/rel")      # the link is followed
    assert code == 0 and out == b"hello\n"
    code, out, _ = run(capsysbinary, "cat", img, "/abs/../sub/small")     # .. of /dir/sub
    assert code == 0 and out == b"hello\n"


@pytest.mark.parametrize("argv, msg", [
    (["cat", "{img}", "/dir"], "{img}:/dir: is a directory"),
    (["cat", "{img}", "/nope"], "{img}:/nope: no such file or directory"),
    (["cat", "{img}", "/dir/fifo"], "{img}:/dir/fifo: not a regular file"),
    (["cat", "{img}", "/loop"], "{img}:/loop: too many levels of symbolic links"),
    (["ls", "{img}", "/dir/big/x"], "{img}:/dir/big/x: not a directory"),
    (["du", "{img}", "/missing"], "{img}:/missing: no such file or directory"),
    (["cp-out", "{img}", "/nope", "/tmp"], "{img}:/nope: no such file or directory"),
    (["cp-out", "{img}", "/dir", "/tmp/no-such-dir-for-pyfs/x"],
     "/tmp/no-such-dir-for-pyfs/x: No such file or directory"),
    (["ls", "/nonexistent.img"], "no such file"),
])
def test_errors_are_one_line(image, capsysbinary, argv, msg):
    img, _ = image
    code, out, err = run(capsysbinary, *(a.format(img=img) for a in argv))
    assert code == 1 and out == b""
    assert msg.format(img=img) in err and err.count("\n") == 1 and "Traceback" not in err


def test_cp_out_keeps_everything(image, tmp_path, capsysbinary):
    img, files = image
    dest = tmp_path / "out"
    dest.mkdir()
    code, out, err = run(capsysbinary, "cp-out", "-v", img, "/dir", str(dest))
    assert code == 0, err
    assert out.startswith(b"copied 7 files")
    root = dest / "dir"
    for path, data in files.items():
        p = root / path.removeprefix("/dir/")
        assert p.read_bytes() == data
        st = p.lstat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == \
            (0o640, 1000, 100, T)
    assert os.stat(root).st_mode & 0o777 == 0o750 and os.stat(root).st_mtime_ns == T
    assert (os.stat(root / "hardlink").st_ino == os.stat(root / "sub" / "small").st_ino)
    assert os.readlink(root / "rel") == "sub/small"
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert os.lstat(root / "null").st_rdev == os.makedev(1, 3)
    # One file, to a new name.
    code, _, err = run(capsysbinary, "cp-out", img, "/dir/big", str(tmp_path / "big.copy"))
    assert code == 0 and (tmp_path / "big.copy").read_bytes() == files["/dir/big"], err


def test_du(image, capsysbinary):
    img, files = image
    code, out, err = run(capsysbinary, "du", img)
    assert code == 0, err
    rows = {p: int(n) for n, p in (ln.split("\t") for ln in out.decode().splitlines())}
    assert set(rows) == {"/", "/dir", "/dir/sub", "/lost+found"}
    blocks = {p: -(-len(d) // 4096) * 4 for p, d in files.items()}      # KiB
    # small's other name, /dir/hardlink, comes first (as in du): counted there, once.
    assert rows["/dir/sub"] == 0
    assert rows["/dir"] == sum(blocks.values())
    assert rows["/"] == rows["/dir"]
    code, out, _ = run(capsysbinary, "du", "-s", "--apparent-size", img, "/dir")
    assert code == 0
    apparent = sum(len(d) for d in files.values()) + len(b"sub/small")
    assert out.decode() == f"{-(-apparent // 1024)}\t/dir\n"


def test_subprocess_no_traceback(image, tmp_path):
    img, _ = image
    for argv in (["cat", img], ["du", img, "/dir", "--bogus"], ["cp-out", img, "/dir"],
                 ["ls", str(tmp_path)]):
        r = subprocess.run([sys.executable, "-m", "pyfs.cli", *argv], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr, (argv, r.stderr)
