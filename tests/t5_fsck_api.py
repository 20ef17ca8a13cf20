"""fsck's interfaces: options and exit codes, answer modes, the error table and its
documentation, the live-engine check, robustness of a run that fails inside."""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from pathlib import Path

import pytest
from craft import (
    MiB,
    base_image,
    crash_copy,
    deterministic,
    dirent_slot,
    flip,
    mount,
    new_image,
    populate,
    seed_of,
    set_key,
)

from pyfs import cli
from pyfs.device import MemDevice, open_device
from pyfs.engine import Engine
from pyfs.format import SB_OFFSET, BtreeId, DataType, Dirent, pack_key
from pyfs.fs import Filesystem, FSError
from pyfs.fs import dir as hashtab
from pyfs.fs.inode import inode_key
from pyfs.fsck import FsckOptions, check_engine, fsck_device, fsck_path
from pyfs.fsck import cli as fsck_cli
from pyfs.fsck.errors import ERROR_TABLE, INFO, Err, table_markdown
from pyfs.fsck.passes import resolve_overlaps
from pyfs.fsck.report import Reporter
from pyfs.fsck.topology import TopologyCheck
from pyfs.journal.read import read_chain
from pyfs.superblock import read_superblock

DOC = Path(__file__).resolve().parent.parent / "docs" / "FSCK.md"


@pytest.fixture(scope="module")
def clean_img() -> bytes:
    with deterministic(3):
        return base_image(size=8 * MiB)[0].snapshot()


def _dangling(img: bytes) -> MemDevice:
    """A clean image plus a preen-fixable problem (dangling entry) and, in the same
    directory, an ask-only one (a duplicate name for another inode)."""
    dev = MemDevice(img)
    seed = seed_of(dev)
    home = hashtab.name_hash(seed, b"ghost")
    set_key(dev, BtreeId.dirents, pack_key(1, home),
            Dirent(inum=999999, d_type=8, hash=home, tail=b"ghost").pack())
    return dev


def _run(dev, mode="yes", **kw):
    out = io.StringIO()
    res = fsck_device(dev, FsckOptions(mode=mode, force=True, **kw), out=out)
    return res, out.getvalue()


# --------------------------------------------------------------------------
# The error table and its documentation


def test_error_table_is_consistent():
    ids = [e.id for e in ERROR_TABLE]
    assert len(ids) == len(set(ids))
    assert all(Err[e.name] == e.id for e in ERROR_TABLE)
    for e in ERROR_TABLE:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", e.name)
        assert e.summary and e.pass_no in range(13)


def test_docs_carry_the_error_table():
    text = DOC.read_text()
    assert table_markdown() in text, "docs/FSCK.md's error table is out of date: paste " \
        "pyfs.fsck.errors.table_markdown()"


# --------------------------------------------------------------------------
# Modes and exit codes


def test_clean_image_exits_0(clean_img):
    res, out = _run(MemDevice(clean_img), "no")
    assert res.exit_code == 0 and out.splitlines()[-1].startswith("image: clean")


def test_n_reports_and_changes_nothing(clean_img):
    dev = _dangling(clean_img)
    before = dev.snapshot()
    res, out = _run(dev, "no")
    assert res.exit_code == 4
    assert "[90 dirent_dangling]" in out and "not fixed" in out
    assert dev.snapshot() == before


def test_y_fixes_then_clean(clean_img):
    dev = _dangling(clean_img)
    res, out = _run(dev, "yes")
    assert res.exit_code == 1 and ": fixed" in out
    assert _run(dev, "no")[0].exit_code == 0


def test_preen_fixes_safe_problems(clean_img):
    dev = _dangling(clean_img)
    res, _out = _run(dev, "preen")
    assert res.exit_code == 1
    assert _run(dev, "no")[0].exit_code == 0


def test_preen_stops_at_a_problem_needing_a_human(clean_img):
    dev = MemDevice(clean_img)
    flip(dev, dirent_node_offset(dev) + 64 + 30)    # the first bset's header: a rebuild
    res, out = _run(dev, "preen")
    assert res.exit_code & 4
    assert "not fixed" in out
    assert _run(dev, "yes")[0].exit_code == 1
    assert _run(dev, "no")[0].exit_code == 0


def dirent_node_offset(dev) -> int:
    from craft import nodes
    return nodes(dev, BtreeId.dirents)[0].offset


def test_preen_skips_a_clean_filesystem_unless_forced(clean_img):
    out = io.StringIO()
    res = fsck_device(MemDevice(clean_img), FsckOptions(mode="preen"), out=out)
    assert res.exit_code == 0 and "use -f" in out.getvalue()
    res, out2 = _run(MemDevice(clean_img), "preen")
    assert "use -f" not in out2


def test_ask_mode_answers(clean_img):
    dev = _dangling(clean_img)
    _k, _v = dirent_slot(dev, 1, b"ghost")
    out = io.StringIO()
    res = fsck_device(dev, FsckOptions(mode="ask", force=True), out=out,
                      ask_in=io.StringIO("maybe\nn\n"))
    assert "Fix? [y/n/a]" in out.getvalue() and "please answer" in out.getvalue()
    assert res.exit_code == 4
    out = io.StringIO()
    res = fsck_device(dev, FsckOptions(mode="ask", force=True), out=out,
                      ask_in=io.StringIO("a\n"))
    assert res.exit_code == 1
    assert _run(dev, "no")[0].exit_code == 0


def test_ask_mode_end_of_input_means_no(clean_img):
    dev = _dangling(clean_img)
    res = fsck_device(dev, FsckOptions(mode="ask", force=True), out=io.StringIO(),
                      ask_in=io.StringIO(""))
    assert res.exit_code == 4
    res, out = _run(dev, "no")
    assert res.exit_code == 4 and "[90 dirent_dangling]" in out


def test_crash_replay_is_not_an_error():
    with deterministic(5):
        dev = new_image(size=8 * MiB)
        eng, fs = mount(dev)
        populate(fs, 10)
        eng.flush()
        crashed = crash_copy(dev)
    res, out = _run(crashed, "no", verbose=True)
    assert res.exit_code == 0
    assert "[10 journal_replayed]" in out
    res, _out = _run(crashed, "yes")
    assert res.exit_code == 0


def test_unrecoverable_image_exits_8(clean_img):
    dev = MemDevice(clean_img)
    dev.pwrite(bytes(4096), SB_OFFSET)
    dev.pwrite(bytes(4096), dev.size - 4096)
    res, out = _run(dev, "yes")
    assert res.exit_code == 8 and "[4 sb_none]" in out


def test_internal_error_is_reported_not_raised(clean_img, monkeypatch):
    from pyfs import fsck

    def boom(ctx):
        raise RuntimeError("simulated bug")
    monkeypatch.setitem(fsck.ENGINE_CHECKS, "check_keys", boom)
    res, out = _run(MemDevice(clean_img), "yes")
    assert res.exit_code & 8
    assert "[250 internal_error] pass 3" in out and "simulated bug" in out


def test_fsck_that_cannot_finish_leaves_the_image_as_it_was(clean_img, monkeypatch):
    """Repairs are staged: a dangling entry fixed in pass 8, then a pass that
    fails; nothing of the repair may reach the image."""
    from pyfs import fsck

    def boom(ctx):
        raise RuntimeError("simulated bug after repairs")
    dev = _dangling(clean_img)
    before = dev.snapshot()
    monkeypatch.setitem(fsck.ENGINE_CHECKS, "check_dirs", boom)
    res, out = _run(dev, "yes")
    assert res.exit_code & 8 and "fixed" in out
    assert "nothing was written" in out
    assert dev.snapshot() == before


def test_fatal_after_a_superblock_repair_writes_nothing(clean_img, monkeypatch):
    """Pass 1 repairs the primary superblock from the backup (a write before
    anything is mounted), a later pass fails: the image keeps its damaged
    primary too, and the exit status claims no repair."""
    from pyfs import fsck

    def boom(ctx):
        raise RuntimeError("simulated bug")
    dev = MemDevice(clean_img)
    dev.pwrite(b"\xff" * 64, SB_OFFSET + 64)
    before = dev.snapshot()
    monkeypatch.setitem(fsck.ENGINE_CHECKS, "check_keys", boom)
    res, out = _run(dev, "yes")
    assert res.exit_code & 8 and not res.exit_code & 1     # nothing was corrected after all
    assert "[1 sb_primary_bad]" in out and "[250 internal_error]" in out
    assert dev.snapshot() == before


def test_damaged_later_bset_is_an_error(clean_img):
    """A bset after the first that fails its checksum is a torn append only while the
    journal still holds its keys; in a cleanly unmounted image it is damage."""
    from pyfs.btree.io import parse_node
    dev = MemDevice(clean_img)
    off = dirent_node_offset(dev)
    img = parse_node(dev.pread(16384, off), off)
    assert img.nbsets >= 2
    flip(dev, off + img.written_bytes - 4096 + 100)
    res, out = _run(dev, "yes")
    assert re.search(r"\[2[01] btree_(node|root)_bad\]", out)
    assert "no longer in the journal" in out
    assert _run(dev, "no")[0].exit_code == 0


def test_progress_bar(clean_img):
    err = io.StringIO()
    res = fsck_device(MemDevice(clean_img), FsckOptions(mode="no", force=True),
                      out=io.StringIO(), progress_out=err)
    assert res.exit_code == 0


def test_reporter_sorts_within_a_pass():
    out = io.StringIO()
    rep = Reporter(out=out)
    rep.start_pass(12)
    rep.problem(Err.nlink_wrong, "inode 10: x")
    rep.problem(Err.nlink_wrong, "inode 9: x")
    rep.problem(Err.dir_nlink_wrong, "directory 2: x")
    rep.end_pass()
    lines = out.getvalue().splitlines()
    assert [ln.split("]")[1][:9] for ln in lines] == [" inode 9:", " inode 10", " director"]
    assert rep.exit_code() == 4


def test_exit_bits_combine():
    rep = Reporter(mode="yes", out=io.StringIO())
    rep.problem(Err.nlink_wrong, "fixed one", lambda: None)
    rep.problem(Err.nlink_wrong, "unfixable one")
    assert rep.exit_code() == 5
    assert INFO[Err.journal_replayed].severity == "info"


# --------------------------------------------------------------------------
# The command line


@pytest.fixture
def img_file(tmp_path, clean_img):
    p = tmp_path / "fs.img"
    p.write_bytes(clean_img)
    return p


def test_cli_usage_errors_exit_16(img_file, capsys):
    assert cli.fsck_main(["-n", "-y", str(img_file)]) == 16
    assert cli.fsck_main([]) == 16
    assert cli.fsck_main(["--bogus", str(img_file)]) == 16
    assert cli.main(["fsck", "--bogus", str(img_file)]) == 16
    assert cli.main(["fsck"]) == 16
    assert cli.fsck_main(["--help"]) == 0
    capsys.readouterr()


def test_cli_runs(img_file, capsys):
    assert cli.fsck_main(["-n", str(img_file)]) == 0
    assert "clean" in capsys.readouterr().out
    assert cli.main(["fsck", "-fy", str(img_file)]) == 0
    assert cli.fsck_main(["-p", str(img_file)]) == 0


def test_cli_without_mode_and_without_a_terminal_is_n(img_file, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.fsck_main([str(img_file)]) == 0


def test_cli_with_stdin_closed_is_n(img_file, capsys, monkeypatch):
    # fsck -A runs checkers with stdin closed: Python then has no sys.stdin.
    monkeypatch.setattr("sys.stdin", None)
    assert cli.fsck_main(["-f", str(img_file)]) == 0
    assert " inodes (" in capsys.readouterr().out


def test_cli_refuses_a_mounted_image(img_file, capsys):
    holder = open_device(str(img_file), exclusive=True)
    try:
        assert cli.fsck_main(["-y", str(img_file)]) == 8
        err = capsys.readouterr().err
        assert "is in use (mounted?); refusing to check/repair it" in err
    finally:
        holder.close()


def test_cli_missing_image(tmp_path, capsys):
    assert cli.fsck_main(["-n", str(tmp_path / "nope")]) == 8
    assert "nope" in capsys.readouterr().err


def test_cli_interrupt_exits_32(img_file, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(fsck_cli, "fsck_path", interrupted)
    assert cli.fsck_main(["-fy", str(img_file)]) == 32


def test_console_scripts(img_file):
    """The installed entry points, as a user or fsck(8) runs them."""
    import subprocess
    import sys
    bindir = Path(sys.executable).parent
    for argv, code in ((["fsck.pyfs", "-n", str(img_file)], 0),
                       (["pyfs", "fsck", "-fy", str(img_file)], 0),
                       (["fsck.pyfs", "-x", str(img_file)], 16)):
        exe = bindir / argv[0]
        if not exe.exists():
            pytest.skip(f"{exe} not installed")
        r = subprocess.run([str(exe), *argv[1:]], capture_output=True, text=True, timeout=120)
        assert r.returncode == code, (argv, r.stdout, r.stderr)


def test_fsck_path_n_opens_read_only(img_file):
    before = img_file.read_bytes()
    res = fsck_path(str(img_file), FsckOptions(mode="no", force=True), out=io.StringIO())
    assert res.exit_code == 0 and img_file.read_bytes() == before


# --------------------------------------------------------------------------
# The live-engine check (tests/fsck_lite.py)


def test_check_engine_on_a_live_filesystem():
    dev = new_image(size=8 * MiB)
    eng = Engine(dev)
    fs = Filesystem(eng)
    t = populate(fs, 5)
    assert check_engine(eng, verify_data=True) == []
    tr = eng.trans()
    tr.delete(BtreeId.inodes, inode_key(t.small))
    tr.commit()
    problems = check_engine(eng)
    assert any("[90 dirent_dangling]" in p for p in problems)
    assert any("[80 extent_no_inode]" in p for p in problems)
    assert eng.btrees.get(BtreeId.inodes, inode_key(t.small)) is None   # changed nothing


# --------------------------------------------------------------------------
# Repair logic in isolation


def test_resolve_overlaps_keeps_the_later_extent():
    from pyfs.format import Extent

    def ext(n, lo=0):
        return Extent(dev_offset=1 << 20, region_blocks=64, csum=0, live_offset=lo, nblocks=n,
                      gen=0)
    out = resolve_overlaps([(0, ext(10)), (3, ext(2, 40)), (8, ext(4, 50))])
    assert [(f, e.nblocks, e.live_offset) for f, e in out] == [
        (0, 3, 0), (3, 2, 40), (5, 3, 5), (8, 4, 50)]


def test_mode_of_recreated_root_is_a_directory(clean_img):
    dev = MemDevice(clean_img)
    set_key(dev, BtreeId.inodes, inode_key(1), None)
    assert _run(dev, "yes")[0].exit_code == 1
    eng = Engine(dev, read_only=True)
    fs = Filesystem(eng)
    assert stat.S_ISDIR(fs.getattr(1).st_mode)
    names = {n for n, _a, _o in fs.readdir(1)}
    assert {b"docs", b"lost+found", b"many"} <= names


def test_cli_skips_a_cleanly_unmounted_image_unless_forced(img_file, capsys):
    """As e2fsck: a clean image is not checked without -f (every mode)."""
    for mode in ("-n", "-y", "-p"):
        assert cli.fsck_main([mode, str(img_file)]) == 0
        assert capsys.readouterr().out == (f"{img_file}: clean (cleanly unmounted; use -f to "
                                           "check anyway)\n")
    assert cli.fsck_main(["-f", "-n", str(img_file)]) == 0
    assert " inodes (" in capsys.readouterr().out           # the full check ran
    # A damaged backup copy is not clean: fully checked and repaired.
    with open(img_file, "r+b") as f:
        f.seek(-4096, 2)
        f.write(bytes(64))
    assert cli.fsck_main(["-y", str(img_file)]) == 1
    assert "backup" in capsys.readouterr().out
    # Nor is an image a crash left dirty.
    Engine(open_device(str(img_file))).dev.close()
    assert cli.fsck_main(["-n", str(img_file)]) == 0
    assert "use -f" not in capsys.readouterr().out


def test_cli_progress_fd_lines(img_file, capsys, tmp_path):
    r, w = os.pipe()
    try:
        assert cli.fsck_main(["-f", "-n", "-C", str(w), str(img_file)]) == 0
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        lines = f.read().splitlines()
    passes = [int(ln.split()[0]) for ln in lines]
    assert passes == sorted(passes) and set(passes) == set(range(1, 13))
    assert all(len(ln.split()) == 4 and ln.endswith(f" {img_file}") for ln in lines)
    capsys.readouterr()
    assert cli.fsck_main(["-f", "-n", "-C", "97", str(img_file)]) == 16
    assert "-C 97: not an open file descriptor" in capsys.readouterr().err


def test_every_recovery_pass_has_one_implementation():
    """The pass table generates both runners: a mount pass is a method of
    Recovery, an fsck-only pass a method of fsck's Run or one of its engine
    checks, never both; ids and names are unique and fsck pass numbers rise."""
    from pyfs import fsck
    from pyfs.recovery import RECOVERY_PASSES, Recovery, RunsAt
    ids = [p.stable_id for p in RECOVERY_PASSES]
    assert len(set(ids)) == len(ids) and len({p.name for p in RECOVERY_PASSES}) == len(ids)
    numbers = [p.fsck_pass for p in RECOVERY_PASSES]
    assert numbers == sorted(numbers) and set(numbers) == set(range(1, 13))
    for p in RECOVERY_PASSES:
        in_mount = callable(getattr(Recovery, p.name, None))
        in_fsck = callable(getattr(fsck.Run, p.name, None)) or p.name in fsck.ENGINE_CHECKS
        if p.runs_at & RunsAt.MOUNT:
            assert in_mount, p.name
            assert not in_fsck or p.name == "journal_read", p.name
        else:
            assert in_fsck and not in_mount, p.name
        assert p.fsck_pass in fsck.PASS_NAMES


# --------------------------------------------------------------------------
# A full filesystem after an rm storm


def test_extents_the_journal_deletes_do_not_hold_their_buckets():
    """Fill the filesystem, write the nodes, delete everything in the journal
    only, cut the power. The nodes still hold the deleted extents; fsck must
    not count their buckets as taken (it did, and its own mount then found no
    room for a node on a full filesystem that mount opened fine)."""
    dev = new_image(size=16 * MiB, bucket_size=128 << 10)
    eng, fs = mount(dev)
    names = []
    for i in range(10_000):
        try:
            a = fs.create(1, b"f%05d" % i, stat.S_IFREG | 0o644)
            fs.write(a.st_ino, 0, bytes(64 << 10))
        except FSError as e:
            assert e.errno == errno.ENOSPC
            break
        fs.forget(a.st_ino, 1)
        names.append(b"f%05d" % i)
    eng.sync_all()                      # the nodes hold every extent
    for n in names:
        fs.unlink(1, n)                 # deleted in the journal only
    eng.flush()
    crashed = crash_copy(dev)
    ro = Engine(MemDevice(crashed.snapshot()), read_only=True)
    empty = (DataType.free, DataType.need_discard)
    free = {b for b in range(ro.alloc.first, ro.alloc.end)
            if ro.alloc.state.get(b).data_type in empty}
    ro.close()
    assert len(free) > len(names) // 4  # the deletes gave space back
    sb, _ = read_superblock(crashed)
    pre = TopologyCheck(crashed, sb, read_chain(crashed, sb), Reporter(out=io.StringIO())).run()
    assert not [b for b in free if pre.used[b]]
    res, out = _run(crashed, mode="no")
    assert res.exit_code == 0, out
