"""Reporting problems, deciding whether to fix them, and the exit status.

Every problem goes through Reporter.problem(err, message, fix). The answer
mode decides whether `fix` runs: -y always, -n never, -p when the error's
policy is "preen" (after the first error that needs a human, preen stops
fixing and only reports), and the interactive mode asks on the terminal.

Output is one line per problem, "[ID name] message: fixed" (or "not fixed"),
sorted within each pass so that runs are reproducible; info events are shown
with -v only. The exit status is e2fsck's bit set: 1 errors corrected,
4 errors left, 8 operational error, 32 cancelled.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from .errors import INFO, PASS_NAMES, Err

EXIT_OK = 0
EXIT_FIXED = 1
EXIT_UNCORRECTED = 4
EXIT_OPERATIONAL = 8
EXIT_USAGE = 16
EXIT_CANCELLED = 32

MODE_NO, MODE_YES, MODE_PREEN, MODE_ASK = "no", "yes", "preen", "ask"


class FsckAbort(Exception):
    """Stop checking: a fatal problem was reported."""


@dataclass
class Problem:
    err: Err
    message: str
    fixed: bool
    pass_no: int

    def line(self) -> str:
        info = INFO[self.err]
        if info.severity == "info":
            status = "done" if self.fixed else "pending"
        elif info.severity == "fatal":
            status = "fatal"
        else:
            status = "fixed" if self.fixed else "not fixed"
        return f"[{int(self.err)} {self.err.name}] {self.message}: {status}"


def _natural(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("inode 9" < "inode 10")."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


@dataclass
class Reporter:
    mode: str = MODE_NO
    verbose: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    ask_in: TextIO | None = None
    progress_out: TextIO | None = None
    progress_lines: bool = False        # -C fd: e2fsck's lines for front ends, not a bar
    device: str = ""                    # named in those lines
    problems: list[Problem] = field(default_factory=list)
    pass_no: int = 0
    _pending: list[Problem] = field(default_factory=list)
    _yes_to_all: bool = False
    preen_stopped: bool = False
    _progress: Progress | None = None

    # ------------------------------------------------------------ problems

    def problem(self, err: Err, message: str, fix: Callable[[], object] | None = None) -> bool:
        """Report a problem; run fix if the mode allows it. Returns whether it was fixed
        (fix may return False to say it could not be done after all)."""
        info = INFO[err]
        if info.severity == "fatal":
            self._record(Problem(err, message, False, self.pass_no))
            raise FsckAbort(message)
        if info.severity == "info":
            done = fix is not None and self.mode != MODE_NO
            if done:
                fix()
            self._record(Problem(err, message, done, self.pass_no))
            return done
        fixed = False
        if fix is not None and info.policy != "none" and self._allowed(err, message):
            fixed = fix() is not False      # a fix returns False when it could not

        p = Problem(err, message, fixed, self.pass_no)
        self._record(p)
        return fixed

    def fatal(self, err: Err, message: str) -> None:
        self.problem(err, message)

    def would_fix(self, err: Err) -> bool:
        """Whether a fix of err could run in this mode (to skip preparing it)."""
        if self.mode == MODE_NO:
            return False
        if self.mode == MODE_PREEN:
            return not self.preen_stopped and INFO[err].policy == "preen"
        return True

    def _allowed(self, err: Err, message: str) -> bool:
        if self.mode == MODE_YES:
            return True
        if self.mode == MODE_NO:
            return False
        if self.mode == MODE_PREEN:
            if self.preen_stopped:
                return False
            if INFO[err].policy == "preen":
                return True
            self.preen_stopped = True       # a human is needed: stop changing things
            return False
        return self._ask(err, message)

    def _ask(self, err: Err, message: str) -> bool:
        if self._yes_to_all:
            return True
        stream = self.ask_in or sys.stdin
        self.clear_progress()
        self.out.write(f"[{int(err)} {err.name}] {message}. Fix? [y/n/a] ")
        self.out.flush()
        while True:
            line = stream.readline()
            if not line:                    # end of input: no to everything
                self.out.write("\n")
                self.mode = MODE_NO
                return False
            ans = line.strip().lower()
            if ans in ("y", "yes"):
                return True
            if ans in ("n", "no"):
                return False
            if ans in ("a", "all"):
                self._yes_to_all = True
                return True
            self.out.write("please answer y (yes), n (no) or a (yes to all): ")
            self.out.flush()

    def _record(self, p: Problem) -> None:
        self.problems.append(p)
        if self.mode == MODE_ASK:
            self._print(p)
        else:
            self._pending.append(p)

    # ------------------------------------------------------------ passes

    def start_pass(self, pass_no: int) -> None:
        self.end_pass()
        self.pass_no = pass_no
        if self.verbose:
            self.clear_progress()
            self.out.write(f"Pass {pass_no}: {PASS_NAMES[pass_no]}\n")
        self.progress(PASS_NAMES[pass_no], 0, 0)

    def end_pass(self) -> None:
        """Print the pass's problems in a stable order."""
        pend = sorted(self._pending, key=lambda p: (int(p.err), _natural(p.message)))
        self._pending = []
        for p in pend:
            self._print(p)

    def _print(self, p: Problem) -> None:
        if INFO[p.err].severity == "info" and not self.verbose:
            return
        self.clear_progress()
        self.out.write(p.line() + "\n")
        self.out.flush()

    # ------------------------------------------------------------ results

    def counts(self) -> tuple[int, int, int]:
        """(errors, fixed, not fixed), info events excluded."""
        errs = [p for p in self.problems if INFO[p.err].severity != "info"]
        fixed = sum(p.fixed for p in errs)
        return len(errs), fixed, len(errs) - fixed

    def undo_fixes(self) -> None:
        """The repairs were not written after all (the check could not finish)."""
        for p in self.problems:
            p.fixed = False

    def exit_code(self) -> int:
        code = EXIT_OK
        for p in self.problems:
            sev = INFO[p.err].severity
            if sev == "fatal":
                code |= EXIT_OPERATIONAL
            elif sev == "error":
                code |= EXIT_FIXED if p.fixed else EXIT_UNCORRECTED
        return code

    # ------------------------------------------------------------ progress

    def progress(self, what: str, done: int, total: int) -> None:
        if self.progress_out is None:
            return
        if self._progress is None:
            self._progress = (LineProgress(self.progress_out, self.device)
                              if self.progress_lines else Progress(self.progress_out))
        self._progress.show(self.pass_no, what, done, total)

    def clear_progress(self) -> None:
        if self._progress is not None:
            self._progress.clear()


class Progress:
    """A one-line progress bar redrawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self, out: TextIO):
        self.out = out
        self.last = 0.0
        self.shown = False

    def show(self, pass_no: int, label: str, done: int, total: int) -> None:
        """Overall progress by pass, refined by done/total within it when known."""
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        within = min(1.0, done / total) if total > 0 else 0.0
        frac = min(1.0, (max(pass_no, 1) - 1 + within) / 12)
        bar = "#" * int(frac * self.WIDTH)
        self.out.write(f"\rPass {pass_no:>2}/12 [{bar:<{self.WIDTH}}] {label[:24]:<24} "
                       f"{done:>10}")
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r" + " " * (self.WIDTH + 52) + "\r")
            self.out.flush()
            self.shown = False


class LineProgress:
    """fsck -C fd: one line `pass done total device` per update, e2fsck's format
    for front ends (total 0: not known). Every pass announces itself; updates
    within a pass come at most 10 times a second."""

    def __init__(self, out: TextIO, device: str):
        self.out = out
        self.device = device
        self.last = 0.0
        self.pass_no = -1

    def show(self, pass_no: int, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if pass_no == self.pass_no and now - self.last < 0.1:
            return
        self.pass_no, self.last = pass_no, now
        try:
            self.out.write(f"{pass_no} {done} {total} {self.device}\n")
            self.out.flush()
        except OSError:
            pass                        # the front end went away: check on regardless

    def clear(self) -> None:
        pass
