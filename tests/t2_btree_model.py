"""Tier 2: the btrees against a dict model (hypothesis state machine), with an
in-memory node invariant checker shared by the other tier-2 btree tests.

Small nodes (16 KiB) make splits, merges and compactions frequent; rules force
node writes (flush_all, reclaim, single node writes, cache eviction) and
reopen the image from disk, after a crash (journal replay) or a clean close.
"""

from __future__ import annotations

import os
import random
from bisect import bisect_left, bisect_right

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pyfs.btree.lookup import key_after, key_before
from pyfs.btree.node import ENTRY_OVERHEAD, Node
from pyfs.btree.tree import BtreeSet
from pyfs.device import MemDevice
from pyfs.engine import Engine
from pyfs.format import BTREE_ID_NR, MAX_KEY, ZERO_KEY, KeyType, pack_key, unpack_btree_ptr
from pyfs.mkfs import format_device

KiB, MiB = 1 << 10, 1 << 20
SMALL = {"bucket_size": 128 * KiB, "btree_node_size": 16 * KiB}
BTREES = (0, 1, 2, 3)       # extents, inodes, dirents, xattrs (alloc and backpointers are the allocator's)


def raw(payload: bytes) -> bytes:
    return bytes([KeyType.raw]) + payload


def small_image(size: int = 16 * MiB, **kw) -> MemDevice:
    dev = MemDevice(size)
    format_device(dev, **(SMALL | kw))
    return dev


def reopen(dev: MemDevice, **kw) -> tuple[MemDevice, Engine]:
    """A new engine on a copy of dev's current bytes (dev itself is left alone)."""
    copy = MemDevice(dev.snapshot())
    return copy, Engine(copy, **kw)


# --------------------------------------------------------------------------
# Invariant checker


class InvariantError(AssertionError):
    pass


def _check(cond: bool, node: Node | None, what: str) -> None:
    if not cond:
        where = node.to_text() if node is not None else ""
        raise InvariantError(f"{what}\n  {where}")


def check_node(node: Node) -> None:
    """One node's in-memory invariants."""
    sets = (("w", node.wk, node.wv), ("o", node.ok, node.ov), ("n", node.nk, node.nv))
    _check(node.nsets() <= 3, node, "more than three key sets")
    _check(node.min_key <= node.max_key, node, "min_key above max_key")
    for name, keys, vals in sets:
        _check(len(keys) == len(vals), node, f"set {name}: {len(keys)} keys, {len(vals)} values")
        _check(all(a < b for a, b in zip(keys, keys[1:])), node,
               f"set {name} not strictly sorted")
        _check(all(vals), node, f"set {name} holds an empty value (a whiteout in a live set)")
        if keys:
            _check(node.min_key <= keys[0] and keys[-1] <= node.max_key, node,
                   f"set {name} has keys outside the node's range")
    _check(all(node.min_key <= k <= node.max_key for k in node.whiteouts), node,
           "whiteout outside the node's range")
    # Recompute the merged view: newest set wins.
    d = dict(zip(node.wk, node.wv))
    d.update(zip(node.ok, node.ov))
    d.update(zip(node.nk, node.nv))
    keys = sorted(d)
    mk, mv = node.merged()
    _check(list(mk) == keys and list(mv) == [d[k] for k in keys], node,
           "merged view differs from the sets")
    _check(node.nlive == len(keys), node, f"nlive {node.nlive} but {len(keys)} live keys")
    _check(node.idx == d, node, "the point lookup index differs from the live keys")
    live_bytes = sum(ENTRY_OVERHEAD + len(v) for v in d.values())
    _check(node.live_bytes == live_bytes, node,
           f"live_bytes {node.live_bytes} but the live keys take {live_bytes}")
    # A written (w) key never doubles as a whiteout: deleting it removed it from w.
    _check(not (node.whiteouts & set(node.wk)), node, "a whiteout key is still in the written set")
    if node.level:
        _check(bool(keys), node, "interior node without children")
        for v in mv:
            unpack_btree_ptr(v)


def check_tree(bt: BtreeSet, btree_id: int) -> int:
    """Walk one btree checking every node and how interior nodes tile; return node count."""
    root = bt.roots[btree_id]
    if root is None:
        return 0
    _check(root.min_key == ZERO_KEY and root.max_key == MAX_KEY, root, "root does not cover all")
    n = 0
    stack = [root]
    while stack:
        node = stack.pop()
        n += 1
        check_node(node)
        _check(node.btree_id == btree_id, node, "node of another btree")
        _check(bt.cache.get(node.ptr) is node, node, "reachable node not cached under its ptr")
        if not node.level:
            continue
        keys, vals = node.merged()
        _check(keys[0] == node.min_key, node, "first child does not start at min_key")
        for i, (k, v) in enumerate(zip(keys, vals)):
            hi = key_before(keys[i + 1]) if i + 1 < len(keys) else node.max_key
            child = bt._child(node, k)
            _check(child.ptr == v, child, "child reached by a different pointer")
            _check(child.level == node.level - 1, child, "child level is not parent level - 1")
            _check(child.min_key == k and child.max_key == hi, child,
                   f"child range does not tile its parent ({node.to_text()})")
            stack.append(child)
    return n


def check_btrees(eng: Engine) -> None:
    """Every btree's nodes, the dirty list, the cache and journal pins."""
    bt = eng.btrees
    for bid in range(BTREE_ID_NR):
        check_tree(bt, bid)
    pins = [n.pin_seq for n in bt.dirty]
    _check(all(pins), None, "a clean node on the dirty list")
    _check(pins == sorted(pins), None, f"dirty list not in pin order: {pins}")
    for node in bt.dirty:
        _check(bt.cache.get(node.ptr) is node, node, "dirty node not in the cache")
    for ptr, node in bt.cache.items():
        _check(node.ptr == ptr, node, "cache key differs from the node's pointer")
        _check(node.dirty == (node in bt.dirty), node, "pin_seq disagrees with the dirty list")
    j = eng.journal
    oldest = bt.oldest_pin()
    _check(not oldest or j.durable_last_seq <= oldest, None,
           f"durable last_seq {j.durable_last_seq} is past the oldest pin {oldest}")
    _check(not oldest or oldest <= j.cur_seq, None, "pin from the future")


def btree_items(eng: Engine, btree_id: int) -> dict[bytes, bytes]:
    return dict(eng.btrees.iter(btree_id))


# --------------------------------------------------------------------------
# The state machine

keys_lo = st.integers(0, 399)
his = st.integers(0, 2)
vlens = st.one_of(st.integers(1, 40), st.integers(40, 600))
btree_ids = st.sampled_from(BTREES)


class BtreeModel(RuleBasedStateMachine):
    """Updates, lookups, range iteration, forced writes and reopens vs. a dict."""

    @initialize(write_buffer=st.sampled_from([None, 4096]), tiny_cache=st.booleans())
    def setup(self, write_buffer, tiny_cache):
        self.dev = small_image()
        self.kw = {"write_buffer": write_buffer, "cache_nodes": 16 if tiny_cache else 512}
        self.eng = Engine(self.dev, **self.kw)
        self.model: dict[int, dict[bytes, bytes]] = {b: {} for b in BTREES}
        self.counter = 0
        self.since_flush = [self._snapshot()]

    def _snapshot(self) -> dict[int, dict[bytes, bytes]]:
        return {b: dict(m) for b, m in self.model.items()}

    def teardown(self):
        eng = getattr(self, "eng", None)
        if eng is not None:
            eng.close(clean=False)

    # ------------------------------------------------------------ updates

    def _value(self, n: int) -> bytes:
        self.counter += 1
        return raw(self.counter.to_bytes(4, "little") * (n // 4 + 1))[:n + 1]

    def _commit(self, ups: list[tuple[int, bytes, bytes | None]]) -> None:
        for i in range(0, len(ups), 20):
            t = self.eng.trans()
            for bid, key, val in ups[i:i + 20]:
                if val is None:
                    t.delete(bid, key)
                else:
                    t.set(bid, key, val)
            t.commit()
            for bid, key, val in ups[i:i + 20]:
                if val is None:
                    self.model[bid].pop(key, None)
                else:
                    self.model[bid][key] = val
            self.since_flush.append(self._snapshot())

    @rule(bid=btree_ids, hi=his, lo=keys_lo, n=vlens)
    def insert(self, bid, hi, lo, n):
        self._commit([(bid, pack_key(hi, lo), self._value(n))])

    @rule(bid=btree_ids, hi=his, lo=keys_lo, count=st.integers(1, 150), step=st.integers(1, 3),
          n=vlens)
    def insert_run(self, bid, hi, lo, count, step, n):
        self._commit([(bid, pack_key(hi, lo + i * step), self._value(n)) for i in range(count)])

    @rule(bid=btree_ids, hi=his, lo=keys_lo)
    def delete(self, bid, hi, lo):
        self._commit([(bid, pack_key(hi, lo), None)])

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def delete_existing(self, data):
        bid = data.draw(st.sampled_from([b for b in BTREES if self.model[b]]))
        key = data.draw(st.sampled_from(sorted(self.model[bid])))
        self._commit([(bid, key, None)])

    @rule(bid=btree_ids, hi=his, lo=keys_lo, span=st.integers(1, 400), keep=st.integers(0, 4))
    def delete_range(self, bid, hi, lo, span, keep):
        """Delete most keys of a range (all but every keep-th): makes nodes underfull."""
        a, b = pack_key(hi, lo), pack_key(hi, lo + span)
        victims = [k for k in sorted(self.model[bid]) if a <= k <= b]
        if keep:
            victims = [k for i, k in enumerate(victims) if i % (keep + 1)]
        self._commit([(bid, k, None) for k in victims])

    @rule(bid=btree_ids, hi=his, lo=keys_lo, n=vlens)
    def set_delete_set_in_one_trans(self, bid, hi, lo, n):
        key = pack_key(hi, lo)
        t = self.eng.trans()
        t.set(bid, key, self._value(n))
        t.delete(bid, key)
        last = self._value(n)
        t.set(bid, key, last)
        t.commit()
        self.model[bid][key] = last
        self.since_flush.append(self._snapshot())

    # ------------------------------------------------------------ lookups

    @rule(bid=btree_ids, hi=his, lo=keys_lo)
    def lookup(self, bid, hi, lo):
        key = pack_key(hi, lo)
        assert self.eng.btrees.get(bid, key) == self.model[bid].get(key)
        assert self.eng.trans().get(bid, key) == self.model[bid].get(key)

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def lookup_existing(self, data):
        bid = data.draw(st.sampled_from([b for b in BTREES if self.model[b]]))
        key = data.draw(st.sampled_from(sorted(self.model[bid])))
        assert self.eng.btrees.get(bid, key) == self.model[bid][key]

    @rule(bid=btree_ids, a=st.tuples(his, keys_lo), b=st.tuples(his, keys_lo))
    def iterate(self, bid, a, b):
        start, end = sorted((pack_key(*a), pack_key(*b)))
        bt = self.eng.btrees
        keys = sorted(self.model[bid])
        want = [(k, self.model[bid][k]) for k in keys[bisect_left(keys, start):
                                                         bisect_right(keys, end)]]
        assert list(bt.iter(bid, start, end)) == want
        assert bt.first(bid, start, end) == (want[0] if want else None)
        # last_before: greatest key in [start, end]
        assert bt.last_before(bid, end, start) == (want[-1] if want else None)
        below = keys[:bisect_right(keys, end)]
        assert bt.last_before(bid, end) == ((below[-1], self.model[bid][below[-1]])
                                            if below else None)
        # iteration from just past a key (how callers resume)
        if want:
            rest = list(bt.iter(bid, key_after(want[0][0]), end))
            assert rest == want[1:]

    @rule(bid=btree_ids, a=st.tuples(his, keys_lo), b=st.tuples(his, keys_lo),
          ups=st.lists(st.tuples(his, keys_lo, st.booleans()), max_size=12),
          commit=st.booleans())
    def trans_reads_its_own_updates(self, bid, a, b, ups, commit):
        """Trans.get/iter see the transaction's pending updates over the tree."""
        start, end = sorted((pack_key(*a), pack_key(*b)))
        t = self.eng.trans()
        want = dict(self.model[bid])
        for hi, lo, is_set in ups:
            key = pack_key(hi, lo)
            if is_set:
                val = self._value(lo % 50)
                t.set(bid, key, val)
                want[key] = val
            else:
                t.delete(bid, key)
                want.pop(key, None)
        for hi, lo, _ in ups:
            assert t.get(bid, pack_key(hi, lo)) == want.get(pack_key(hi, lo))
        assert list(t.iter(bid, start, end)) == sorted(
            (k, v) for k, v in want.items() if start <= k <= end)
        if commit:
            t.commit()
            self.model[bid] = want
            self.since_flush.append(self._snapshot())

    # ------------------------------------------------------------ forcing writes

    @rule()
    def flush_all(self):
        self.eng.btrees.flush_all()
        assert not self.eng.btrees.dirty

    @rule()
    def reclaim(self):
        self.eng.reclaim()

    @rule(data=st.data())
    def write_random_dirty_node(self, data):
        bt = self.eng.btrees
        if not bt.dirty:
            return
        nodes = list(bt.dirty)
        node = nodes[data.draw(st.integers(0, len(nodes) - 1))]
        bt.write_node(node, "flush")

    @rule()
    def evict(self):
        bt = self.eng.btrees
        bt.cache_nodes = 16
        bt.maybe_evict()

    @rule()
    def journal_flush(self):
        durable = self.eng.flush()
        assert durable == self.eng.journal.cur_seq - 1
        self.since_flush = [self._snapshot()]

    # ------------------------------------------------------------ reopen

    @rule(clean=st.booleans())
    def reopen(self, clean):
        if clean:
            self.eng.close()
            self.dev, self.eng = reopen(self.dev, **self.kw)
            assert self.eng.replayed_entries == 0
        else:
            self.eng.flush()
            self.dev, self.eng = reopen(self.dev, **self.kw)   # no close: replay
        self.since_flush = [self._snapshot()]

    @rule()
    def crash_copy_without_flush(self):
        """A crash (of a copy of the image) without a flush loses at most the
        transactions committed since the last flush: the copy recovers the
        state after some commit since then. The original engine carries on."""
        _, other = reopen(self.dev, **self.kw)
        got = {bid: btree_items(other, bid) for bid in BTREES}
        assert got in self.since_flush, "recovered state is no prefix since the last flush"
        check_btrees(other)
        other.close(clean=False)

    # ------------------------------------------------------------ invariants

    @invariant()
    def trees_match_model(self):
        if not hasattr(self, "eng"):
            return
        check_btrees(self.eng)
        for bid in BTREES:
            assert btree_items(self.eng, bid) == self.model[bid]


LONG = os.environ.get("PYFS_LONG") == "1"
BtreeModel.TestCase.settings = settings(
    max_examples=2000 if LONG else 150, stateful_step_count=100 if LONG else 60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestBtreeModel = BtreeModel.TestCase


# --------------------------------------------------------------------------
# Deterministic: splits, merges and compactions all happen (and counters say so)


def run_churn(eng: Engine, rng: random.Random, model: dict, rounds: int, bid: int = 0,
              nkeys: int = 1500) -> None:
    for _ in range(rounds):
        t = eng.trans()
        for _ in range(rng.randint(1, 20)):
            key = pack_key(0, rng.randrange(nkeys))
            if rng.random() < 0.35:
                t.delete(bid, key)
                model.pop(key, None)
            else:
                val = raw(rng.randbytes(rng.randrange(1, 120)))
                t.set(bid, key, val)
                model[key] = val
        t.commit()


def test_splits_merges_compactions_happen():
    dev = small_image()
    eng = Engine(dev, cache_nodes=16)
    rng = random.Random(7)
    model: dict[bytes, bytes] = {}
    run_churn(eng, rng, model, 800, nkeys=3000)
    check_btrees(eng)
    assert btree_items(eng, 0) == model
    # Delete almost everything: leaves underflow and merge, the root collapses.
    keys = sorted(model)
    for i in range(0, len(keys), 20):
        t = eng.trans()
        for k in keys[i:i + 20]:
            if k[-1] % 50:
                t.delete(0, k)
                del model[k]
        t.commit()
        check_btrees(eng)
    assert btree_items(eng, 0) == model
    c = eng.counters
    assert c["btree_splits"] > 5, c
    assert c["btree_merges"] > 3, c
    assert c["btree_compactions"] > 3, c
    assert c["btree_cache_evictions"] > 0, c
    eng.flush()
    dev2, eng2 = reopen(dev)
    assert btree_items(eng2, 0) == model
    check_btrees(eng2)
    eng.close()
    dev3, eng3 = reopen(dev)
    assert eng3.replayed_entries == 0
    assert btree_items(eng3, 0) == model
    check_btrees(eng3)


def test_tree_grows_to_three_levels_and_back():
    """Large values make a three-level tree quickly; deleting shrinks it again."""
    dev = small_image(32 * MiB)
    eng = Engine(dev)
    model: dict[bytes, bytes] = {}
    rng = random.Random(3)
    i = 0
    while eng.btrees.roots[0].level < 2:
        t = eng.trans()
        for _ in range(10):
            key = pack_key(1, rng.randrange(1 << 40))
            val = raw(rng.randbytes(rng.randrange(1500, 3000)))
            t.set(0, key, val)
            model[key] = val
        t.commit()
        i += 1
        assert i < 2000
    check_btrees(eng)
    assert btree_items(eng, 0) == model
    for k in sorted(model)[::-1][: len(model) - 5]:
        t = eng.trans()
        t.delete(0, k)
        t.commit()
        del model[k]
    check_btrees(eng)
    assert btree_items(eng, 0) == model
    assert eng.btrees.roots[0].level <= 1
    eng.close()
    _, eng2 = reopen(dev)
    assert btree_items(eng2, 0) == model
    check_btrees(eng2)


def test_evicted_unflushed_node_reads_back():
    """A node written (and evicted) before the journal is flushed must read back
    whole: its bsets are newer than the durable journal, but this session wrote them."""
    dev = small_image()
    eng = Engine(dev, cache_nodes=16)
    rng = random.Random(11)
    model: dict[bytes, bytes] = {}
    run_churn(eng, rng, model, 300)
    eng.flush()
    run_churn(eng, rng, model, 50)
    bt = eng.btrees
    bt.flush_all()
    # Nodes now hold bsets newer than the durable journal.
    assert any(n.max_seq > eng.journal.durable_seq for n in bt.cache.values())
    for node in list(bt.cache.values()):
        if node.level == 0 and node not in bt.roots:
            del bt.cache[node.ptr]
    assert btree_items(eng, 0) == model
    check_btrees(eng)


def test_invariant_checker_catches_damage():
    dev = small_image()
    eng = Engine(dev)
    model: dict[bytes, bytes] = {}
    run_churn(eng, random.Random(1), model, 200)
    check_btrees(eng)
    leaf = next(n for n in eng.btrees.cache.values() if n.level == 0 and n.nlive > 2)
    leaf.nlive += 1
    try:
        check_btrees(eng)
    except InvariantError as e:
        assert "nlive" in str(e)
    else:
        raise AssertionError("damaged nlive not caught")
    leaf.nlive -= 1
    if leaf.wk:
        leaf.wv[0] = b""
        leaf.view = None
        try:
            check_node(leaf)
        except InvariantError as e:
            assert "empty value" in str(e)
        else:
            raise AssertionError("whiteout in a live set not caught")


def test_allocator_reads_alloc_keys_while_nodes_restructure():
    """Big values, a three-level tree and bucket churn: the allocator reads alloc
    keys through the alloc btree while splits, merges and compactions (of that
    btree too) allocate and free node regions. Each must find the tree whole."""
    dev = small_image(64 * MiB)
    eng = Engine(dev)
    rng = random.Random(5)
    model: dict[bytes, bytes] = {}
    for i in range(2500):
        t = eng.trans()
        for _ in range(5):
            key = pack_key(1, rng.randrange(4000))
            if rng.random() < 0.15:
                t.delete(1, key)
                model.pop(key, None)
            else:
                val = raw(rng.randbytes(rng.randrange(500, 3000)))
                t.set(1, key, val)
                model[key] = val
        t.commit()
        if i % 7 == 0:
            eng.flush()
    assert eng.btrees.roots[1].level >= 2
    check_btrees(eng)
    assert btree_items(eng, 1) == model
    eng.flush()
    _, eng2 = reopen(dev)
    assert btree_items(eng2, 1) == model
    check_btrees(eng2)
