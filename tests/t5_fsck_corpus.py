"""The fsck corpus (images/fsck/<case>/, made by scripts/make_fsck_corpus.py).

Each case's image is decompressed to a file, checked with `fsck -y` (or the
options in its args file) and the output plus exit status compared with
expect.1; a second run must match expect.2, which is clean unless the image
is beyond repair. Paths are normalized to IMAGE.
"""

from __future__ import annotations

import io
import lzma
import re
from pathlib import Path

import pytest

from pyfs.fsck import FsckOptions, fsck_path
from pyfs.fsck.errors import ERROR_TABLE

CORPUS = Path(__file__).resolve().parent.parent / "images" / "fsck"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "image.xz").exists()) \
    if CORPUS.exists() else []
UNRECOVERABLE = {"sb_none"}
NOT_IN_CORPUS = {"internal_error"}      # a pass failing is a bug: no image may cause it


def _args(case: str) -> list[str]:
    f = CORPUS / case / "args"
    return f.read_text().split() if f.exists() else ["-y"]


def _options(args: list[str]) -> FsckOptions:
    mode = {"-y": "yes", "-n": "no", "-p": "preen"}
    return FsckOptions(mode=next((mode[a] for a in args if a in mode), "yes"),
                       verbose="-v" in args, check_data="-c" in args, force="-f" in args)


def run(path: Path, args: list[str]) -> str:
    out = io.StringIO()
    res = fsck_path(str(path), _options(args), out=out)
    text = out.getvalue().replace(str(path), "IMAGE")
    return text + f"exit status {res.exit_code}\n"


@pytest.mark.parametrize("case", CASES)
def test_corpus_case(case, tmp_path):
    d = CORPUS / case
    img = tmp_path / "image"
    img.write_bytes(lzma.decompress((d / "image.xz").read_bytes()))
    args = _args(case)
    assert run(img, args) == (d / "expect.1").read_text(), f"{case}: first run differs"
    assert run(img, args) == (d / "expect.2").read_text(), f"{case}: second run differs"


def test_corpus_size():
    for case in CASES:
        assert (CORPUS / case / "image.xz").stat().st_size < 200 * 1024, case


def test_second_runs_are_clean():
    for case in CASES:
        last = (CORPUS / case / "expect.2").read_text().splitlines()[-1]
        want = "exit status 8" if case in UNRECOVERABLE else "exit status 0"
        assert last == want, case


def test_every_error_id_has_a_case():
    seen = set()
    for case in CASES:
        for line in (CORPUS / case / "expect.1").read_text().splitlines():
            m = re.match(r"\[(\d+) ", line)
            if m:
                seen.add(int(m[1]))
    missing = [e.name for e in ERROR_TABLE if e.id not in seen and e.name not in NOT_IN_CORPUS]
    assert not missing, f"error ids without a corpus case: {missing}"


def test_named_cases_show_their_error():
    names = {e.name: e.id for e in ERROR_TABLE}
    for case in CASES:
        if case in names:
            text = (CORPUS / case / "expect.1").read_text()
            assert f"[{names[case]} {case}]" in text, case
