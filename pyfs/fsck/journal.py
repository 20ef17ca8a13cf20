"""The journal for fsck: the shared reader over the whole ring, and erasing.

fsck reads every bucket (mount reads only the window its chain lies in) so
that it finds damaged, bogus and unacknowledged entries anywhere; the chain
rule is the one mount applies (pyfs/journal/read.py).
"""

from __future__ import annotations

from ..format import SECTOR_SIZE
from ..journal.read import Found, JournalScan, read_chain


def read_view(dev, sb) -> JournalScan:
    """The journal chain fsck replays, with what it leaves out classified."""
    return read_chain(dev, sb, whole_ring=True)


def erase_entries(dev, sb, found: list[Found]) -> None:
    """Zero the first sector of each entry (its header) so that no later scan
    finds it; the next entry may start in the sector after."""
    start = sb.journal_bucket * sb.bucket_size
    zero = bytes(SECTOR_SIZE)
    for f in found:
        dev.pwrite(zero, start + f.pos)
