"""Smoke test of bench/compare.py: one quick repetition with pyfs and fuse2fs.

Needs root and /dev/fuse (FUSE mounts, drop_caches); without them it skips,
unless CI is set: in CI nothing is skipped, a missing prerequisite fails.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPARE = REPO / "bench" / "compare.py"
PEERS = ["pyfs", "fuse2fs"]

sys.path.insert(0, str(REPO / "bench"))
import compare  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (FUSE mounts of images, drop_caches)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    return None


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    why = _missing()
    if why and not IN_CI:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results"
    env = dict(os.environ, PYFS_BENCH_DIR=str(tmp / "work"))
    proc = subprocess.run(
        [sys.executable, str(COMPARE), "--quick", "--reps", "1", "--peers", ",".join(PEERS),
         "--results-dir", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"compare.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    latest = out / "latest.json"
    assert latest.exists(), proc.stdout[-3000:]
    data = json.loads(latest.read_text())
    data["_stdout"] = proc.stdout
    data["_out"] = out
    return data


def test_every_peer_has_every_number(result):
    errors = "\n".join(f"{e['peer']} {e['workload']}: {e['error']}" for e in result["errors"])
    missing = []
    for peer in PEERS:
        for wname, w in compare.WORKLOADS.items():
            for m in w.metrics:
                v = result["medians"].get(peer, {}).get(wname, {}).get(m.key)
                if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    missing.append(f"{peer} {wname}.{m.key} = {v!r}")
    assert not missing, "missing figures:\n" + "\n".join(missing) + "\nerrors:\n" + errors


def test_ratios_targets_and_table(result):
    ratios = result["ratios"]
    for wname, w in compare.WORKLOADS.items():
        for m in w.metrics:
            r = ratios[wname][m.key]["fuse2fs"]
            assert isinstance(r, float) and r > 0, (wname, m.key, r)
    statuses = {t["status"] for t in result["targets"]}
    assert statuses <= {"PASS", "MISS"} and result["targets"]
    out = result["_stdout"]
    assert "pyfs/fuse2fs" in out and "targets:" in out
    # pyfs counters were sampled around the pyfs runs
    deltas = result["stats_medians"]["pyfs"]["fsmark_s1_t1"]
    assert "btree_node_writes" in deltas and "journal_writes" in deltas
    phases = result["stats_phase_medians"]["pyfs"]["fsmark_s1_t1"]
    assert set(phases) == {"fsmark", "rm"}
    assert phases["fsmark"]["journal_writes"] > 0      # fs_mark -S 1 fsyncs every file


def test_files_written(result):
    out: Path = result["_out"]
    stamp = result["meta"]["timestamp"]
    assert (out / f"compare-{stamp}.json").exists()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / f"compare-{stamp}.png").exists()
        assert (out / "latest.png").exists()
    assert not result["meta"]["interrupted"]


def _run_quick(name: str, tmp_path: Path, *extra: str
               ) -> tuple[subprocess.CompletedProcess, dict]:
    """bench/<name>.py --quick with its images under tmp_path; its output and JSON."""
    why = _missing()
    if why and not IN_CI:
        pytest.skip(why)
    out = tmp_path / "results"
    env = dict(os.environ, PYFS_BENCH_DIR=str(tmp_path / "work"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick", *extra, "--results-dir",
         str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name}.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads((out / f"{name}-latest.json").read_text())


def test_scale_quick(tmp_path):
    """bench/scale.py --quick: real mounts of 1 GiB and 1 TiB images and a
    populated image walked through the mount, every figure present."""
    proc, data = _run_quick("scale", tmp_path)
    assert [(r["peer"], r["size"]) for r in data["images"]] == [("pyfs", "1G"), ("pyfs", "1T")]
    for r in data["images"]:
        assert r["mount_s"] > 0 and r["VmRSS"] > 0 and r["engine_mount_s"] > 0
    files = data["files"]
    assert files["files"] == files["walked"] == 2000       # every file came back through FUSE
    assert files["fsck_exit"] == 0
    assert {t["what"] for t in data["targets"]} == {"1 TiB mount s", "1 TiB mount RSS MiB"}
    assert "1 TiB mount s" in proc.stdout
    assert not list((tmp_path / "work").iterdir())          # images and mounts cleaned up


def test_requests_quick(tmp_path):
    """bench/requests.py --quick: per-request and per-syscall costs of pyfs and fuse2fs."""
    proc, data = _run_quick("requests", tmp_path)
    for peer in ("pyfs", "fuse2fs"):
        assert {"anywhere", "same CPU"} <= set(data[peer]["getxattr_us"])
        assert all(v > 0 for v in data[peer]["getxattr_us"].values())
        steps = data[peer]["steps_us"]
        assert all(steps[s] > 0 for s in ("mkdir", "open", "write", "fsync", "close"))
    assert "fuse2fs/pyfs" in proc.stdout
    assert not list((tmp_path / "work").iterdir())


def _fuse_tracepoint() -> bool:
    root = Path("/sys/kernel/tracing")
    if not (root / "instances").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)], capture_output=True)
    return (root / "events/fuse/fuse_request_send").is_dir()


def test_requests_trace_counts_fuse_requests(tmp_path):
    """bench/requests.py --trace: the kernel's FUSE requests per file, by opcode."""
    if not _fuse_tracepoint():
        pytest.skip("no tracefs, or a kernel without the fuse_request_send tracepoint")
    proc, data = _run_quick("requests", tmp_path, "--trace", "--peers", "pyfs")
    files = data["args"]["files"]
    tr = data["trace"]["pyfs"]
    create, rm = tr["tree create"]["requests"], tr["rm -rf tree"]["requests"]
    assert create["FUSE_CREATE"] == files and create["FUSE_WRITE"] == files
    assert rm["FUSE_UNLINK"] == files
    assert tr["fs_mark -S 1"]["requests"]["FUSE_FSYNC"] == files
    assert all(t["cpu_us_per_request"] > 0 and t["seconds"] > 0 for t in tr.values())
    assert "FUSE requests per file" in proc.stdout
    assert not list((tmp_path / "work").iterdir())
