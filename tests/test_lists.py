"""InvertedLists storage: bulk adds spread the lists in place, small adds relocate, the
arena is resized in place, and every stored row stays what was added."""

import numpy as np
import pytest

from numba_ivf._config import IVF_LIST_MIN_CAPACITY, IVF_SPREAD_MIN_ADD_FRACTION
from numba_ivf.ivf._lists import (InvertedLists, _scatter_nibbles, _shift_nibble_runs,
                                  _shift_runs)

M = 5  # sub-quantizers of the nibble payload (odd: the last byte holds one code)


def _new(kind: str, nlist: int = 13) -> InvertedLists:
    if kind == "nibbles":
        return InvertedLists(nlist, {"codes": ("nibbles", M)})
    return InvertedLists(nlist, {"codes": (M, np.uint8), "data": (3, np.float32)})


class _Model:
    """What the lists should hold: id -> (list, codes, data)."""

    def __init__(self, lists: InvertedLists, rng):
        self.lists, self.rng, self.rows, self.next_id = lists, rng, {}, 0

    def add(self, n: int):
        L, rng = self.lists, self.rng
        labels = rng.integers(0, L.nlist, n).astype(np.int64)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        codes = rng.integers(0, 16, (n, M), dtype=np.uint8)
        data = rng.standard_normal((n, 3)).astype(np.float32)
        rows = {"codes": codes}
        if "data" in L.payload:
            rows["data"] = data
        L.add(labels, ids, rows)
        for j in range(n):
            self.rows[int(ids[j])] = (int(labels[j]), codes[j], data[j])
        self.next_id += n

    def remove(self, ids):
        assert self.lists.remove(np.asarray(ids, dtype=np.int64)) == len(ids)
        for i in ids:
            del self.rows[int(i)]

    def check(self):
        L = self.lists
        assert L.ntotal == len(self.rows) == int(L.sizes.sum())
        assert (L.caps >= L.sizes).all() and L.used <= L.ids.shape[0]
        assert (L.starts + L.caps <= L.used).all()
        live = L.caps > 0
        order = np.argsort(L.starts[live], kind="stable")
        ends = (L.starts[live] + L.caps[live])[order]
        assert (ends[:-1] <= L.starts[live][order][1:]).all()  # runs do not overlap
        seen = 0
        for lst in range(L.nlist):
            for off in range(int(L.sizes[lst])):
                row = int(L.starts[lst] + off)
                want_list, codes, data = self.rows[int(L.ids[row])]
                assert want_list == lst
                np.testing.assert_array_equal(L.codes_of_row("codes", row, M), codes)
                if "data" in L.payload:
                    np.testing.assert_array_equal(L.payload["data"][row], data)
                seen += 1
        assert seen == len(self.rows)


@pytest.mark.parametrize("kind", ["rows", "nibbles"])
def test_chunked_build_spreads_in_place_without_spare_room(kind):
    rng = np.random.default_rng(11)
    L = _new(kind)
    model = _Model(L, rng)
    model.add(700)
    # The same array objects afterwards: resized in place (a copy is made while the old
    # array is alive, so it would be a new object; a weakref would block the resize).
    before = (id(L.ids), id(L.payload["codes"]))
    for _ in range(6):
        model.add(int(rng.integers(100, 400)))
        model.check()
    # Every overflowing list got exactly its size (or the minimum), nothing else: the
    # arena ends at the last list's room, and it was resized, not replaced.
    want = np.where(L.sizes > 0, np.maximum(L.sizes, IVF_LIST_MIN_CAPACITY), L.caps)
    np.testing.assert_array_equal(L.caps, want)
    assert L.used == int(L.caps.sum()) == L.ids.shape[0]
    assert (id(L.ids), id(L.payload["codes"])) == before


@pytest.mark.parametrize("kind", ["rows", "nibbles"])
def test_small_adds_relocate_and_compaction_keeps_rows(kind):
    rng = np.random.default_rng(12)
    L = _new(kind, nlist=7)
    model = _Model(L, rng)
    model.add(3000)
    # Adds of fewer rows than the spread threshold move only the overflowing lists
    # (leaving holes, reclaimed by the in-place compaction) ...
    assert 1 < IVF_SPREAD_MIN_ADD_FRACTION * 3000
    holes = 0
    for step in range(400):
        model.add(int(rng.integers(1, 4)))
        holes = max(holes, L.used - int(L.caps.sum()))
        if step % 50 == 0:
            model.remove(rng.choice(sorted(model.rows), size=20, replace=False))
            model.check()
    assert holes > 0
    model.check()
    # ... and a bulk add after them spreads over the holes.
    model.add(2000)
    model.check()
    assert L.used == int(L.caps.sum())


def test_arena_referenced_elsewhere_is_copied():
    rng = np.random.default_rng(13)
    L = _new("nibbles")
    model = _Model(L, rng)
    model.add(500)
    held = L.payload["codes"][:2]          # a view: numpy must not move the buffer
    before = held.copy()
    model.add(600)
    model.check()
    np.testing.assert_array_equal(held, before)
    assert L.payload["codes"].base is None and held.base is not L.payload["codes"]


def _layout(rng, nrun, total):
    """Random non-overlapping runs in ascending order: (starts, caps, sizes)."""
    caps = rng.integers(0, 40, nrun)
    gaps = rng.integers(0, 30, nrun)
    starts = np.cumsum(gaps + np.concatenate(([0], caps[:-1])))
    sizes = np.array([rng.integers(0, c + 1) for c in caps])
    assert starts[-1] + caps[-1] <= total
    return starts.astype(np.int64), caps.astype(np.int64), sizes.astype(np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_shift_runs_matches_a_copy(seed):
    rng = np.random.default_rng(seed)
    nrun, total = 40, 5000
    old, caps, sizes = _layout(rng, nrun, total)
    # New room: each run's at least its size, packed with random gaps (some runs move
    # left, some right, some stay, targets overlap other runs' sources).
    new_caps = sizes + rng.integers(0, 50, nrun)
    new = np.cumsum(rng.integers(0, 20, nrun) + np.concatenate(([0], new_caps[:-1])))
    new = new.astype(np.int64)
    assert new[-1] + new_caps[-1] <= total
    arr = rng.integers(0, 1000, (total, 3)).astype(np.int64)
    want = arr.copy()
    for a, b, n in zip(old, new, sizes):
        want[b:b + n] = arr[a:a + n]
    got = arr.copy()
    _shift_runs(got, old, new, sizes)
    for b, n in zip(new, sizes):
        np.testing.assert_array_equal(got[b:b + n], want[b:b + n])
    # The nibble layout (vector r % 32 of block r // 32) moves the same rows.
    L = InvertedLists(1, {"codes": ("nibbles", M)})
    packed = L._alloc("codes", total)
    codes = rng.integers(0, 16, (total, M), dtype=np.uint8)
    _scatter_nibbles(packed, np.arange(total, dtype=np.int64), codes)
    _shift_nibble_runs(packed, old, new, sizes)
    L.payload["codes"] = packed
    for a, b, n in zip(old, new, sizes):
        for o in range(n):
            np.testing.assert_array_equal(L.codes_of_row("codes", int(b + o), M),
                                          codes[a + o])
