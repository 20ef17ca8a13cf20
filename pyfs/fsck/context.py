"""What the passes share: the mounted engine, the reporter, options, and the
model of the filesystem the fs-level passes build (one small record per inode,
counters per directory), updated as repairs are made so that later passes
see the filesystem as it now is."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..format import BLOCK_SIZE, MAX_KEY, ZERO_KEY, BtreeId
from .repair import chunk_keys


@dataclass
class FsckOptions:
    mode: str = "no"            # no | yes | preen | ask
    force: bool = False         # check even a clean filesystem (-f)
    verbose: bool = False
    check_data: bool = False    # verify every extent's data checksum (-c)
    progress: bool = False


class Rec:
    """What the fs passes need of one inode."""
    __slots__ = ("mode", "nlink", "size", "blocks", "parent", "gen", "created")

    def __init__(self, mode: int, nlink: int, size: int, blocks: int, parent: int, gen: int,
                 created: bool = False):
        self.mode = mode
        self.nlink = nlink
        self.size = size
        self.blocks = blocks
        self.parent = parent
        self.gen = gen
        self.created = created


@dataclass
class Model:
    inodes: dict[int, Rec] = field(default_factory=dict)
    orphans: dict[int, bytes] = field(default_factory=dict)    # inum -> b"D" | b"T"
    gen_limit: int = 0
    ninodes: int | None = None      # the fs info record's inode count (None: version 1)
    inode_keys: int = 0             # inode records found before any repair (pass 3)
    maxg: int = -1                  # highest inode generation seen or handed out
    fs_info_rewrite: bool = False
    size_recompute: set[int] = field(default_factory=set)
    with_extents: set[int] = field(default_factory=set)
    with_xattrs: set[int] = field(default_factory=set)
    refs: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    subdirs: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    entries: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    # directory -> the (owner, slot) of every entry naming it
    holders: defaultdict[int, list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list))
    # directory -> child directories
    children: defaultdict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    root_names: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    dir_names: dict[int, bytes] = field(default_factory=dict)      # directory -> its name
    lost_found: int | None = None
    nextents: int = 0

    def max_gen(self) -> int:
        return max((r.gen for r in self.inodes.values()), default=-1)


@dataclass
class Ctx:
    dev: object
    sb: object
    eng: object
    rep: object
    opts: FsckOptions
    pre: object = None
    model: Model = field(default_factory=Model)
    overlay: bool = False
    alloc_frozen: bool = False      # pass 2 froze freeing until pass 4 checks alloc info
    # Keys pass 3 found invalid and did not repair (-n, or a fix declined): the
    # later passes skip them rather than decode them.
    bad_keys: set[tuple[int, bytes]] = field(default_factory=set)

    def __post_init__(self):
        self.seed = self.sb.hash_seed
        self.bs = self.sb.bucket_size
        self.chunk = chunk_keys(self.eng)
        self.block_sectors = BLOCK_SIZE // 512
        self.updates_at_start = self.eng.counters.get("btree_updates", 0)

    def changed_anything(self) -> bool:
        """Whether a repair has changed a btree since the checks began."""
        return self.eng.counters.get("btree_updates", 0) != self.updates_at_start

    @property
    def bt(self):
        return self.eng.btrees

    def items(self, bid: int, lo: bytes = ZERO_KEY, hi: bytes = MAX_KEY):
        """The btree's (key, value) pairs in [lo, hi], keys pass 3 left bad skipped.
        (Only pass 3 adds bad keys, and it does not read through here: with none,
        the btree's own iterator serves, without a filter step per key.)"""
        it = self.eng.btrees.iter(bid, lo, hi)
        bad = self.bad_keys
        if not bad:
            return it
        return ((k, v) for k, v in it if (bid, k) not in bad)

    def leaves(self, bid: int, lo: bytes = ZERO_KEY, hi: bytes = MAX_KEY):
        """items() a leaf at a time: (keys, values) lists."""
        bad = self.bad_keys
        for keys, vals in self.eng.btrees.leaves(bid, lo, hi):
            if bad:
                pairs = [(k, v) for k, v in zip(keys, vals) if (bid, k) not in bad]
                keys, vals = [k for k, _v in pairs], [v for _k, v in pairs]
            yield keys, vals

    def path(self, inum: int) -> str:
        """A directory's path from the root, when its entries are known ("?" where not)."""
        m = self.model
        parts: list[str] = []
        seen = set()
        cur = inum
        while cur != 1 and cur not in seen and len(parts) < 64:
            seen.add(cur)
            hs = m.holders.get(cur)
            name = m.dir_names.get(cur)
            if not hs or name is None:
                parts.append(f"#{cur}")
                break
            parts.append(name.decode("utf-8", "backslashreplace"))
            cur = hs[0][0]
        return "/" + "/".join(reversed(parts))

    def value(self, bid: int, key: bytes) -> bytes | None:
        if (bid, key) in self.bad_keys:
            return None
        return self.eng.btrees.get(bid, key)

    def name(self, bid: int) -> str:
        return BtreeId(bid).name
