"""Top-k selection (kernels/common/topk.py): the heap and the reservoir against sorting."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from numba_ivf.kernels.common.topk import (ID_SENTINEL, heap_init, heap_push, heap_sort,
                                    merge_topk, res_capacity, res_cut, res_finish,
                                    res_push)


@njit(cache=True)
def _by_heap(keys, ids, k):
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    heap_init(hd, hi)
    for j in range(keys.shape[0]):
        if keys[j] <= hd[0]:
            heap_push(hd, hi, keys[j], ids[j])
    heap_sort(hd, hi)
    return hd, hi


@njit(cache=True)
def _by_reservoir(keys, ids, k, ordered=True):
    # The payload is the arrival position: it must stay with its (key, id).
    rd = np.empty(res_capacity(k), np.float32)
    ri = np.empty(res_capacity(k), np.int64)
    rr = np.empty(res_capacity(k), np.int64)
    n = 0
    thr = np.float32(np.inf)
    for j in range(keys.shape[0]):
        if keys[j] <= thr:
            n, thr = res_push(rd, ri, rr, n, thr, k, keys[j], ids[j], j)
    out_d = np.empty(k, np.float32)
    out_i = np.empty(k, np.int64)
    out_r = np.empty(k, np.int64)
    res_finish(rd, ri, rr, n, out_d, out_i, out_r, ordered)
    return out_d, out_i, out_r


def _reservoir_checked(keys, ids, k):
    # Unordered output: the same set (re-ranking's input), in any order.
    du, iu, _ = _by_reservoir(keys, ids, k, False)
    d, i, r = _by_reservoir(keys, ids, k, True)
    order = np.lexsort((iu, du))
    np.testing.assert_array_equal(iu[order], i)
    np.testing.assert_array_equal(du[order], d)
    found = r >= 0
    np.testing.assert_array_equal(ids[r[found]], i[found])
    np.testing.assert_array_equal(keys[r[found]], d[found])
    assert (i[~found] == ID_SENTINEL).all()
    return d, i


def _oracle(keys, ids, k):
    best = sorted(zip(keys.tolist(), ids.tolist()))[:k]
    best += [(np.inf, ID_SENTINEL)] * (k - len(best))
    return (np.array([b[0] for b in best], np.float32),
            np.array([b[1] for b in best], np.int64))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 700), k=st.integers(1, 90),
       distinct=st.integers(1, 50),
       order=st.sampled_from(["random", "ascending", "descending"]))
def test_heap_and_reservoir_equal_sorting(seed, n, k, distinct, order):
    # Few distinct keys force ties (broken by id); descending arrival makes every pair
    # an admission, ascending almost none; n < k leaves sentinel padding.
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, distinct, n).astype(np.float32)
    if order != "random":
        keys = np.sort(keys)[::1 if order == "ascending" else -1].copy()
    ids = rng.permutation(10 * n + 1)[:n].astype(np.int64)
    ref_d, ref_i = _oracle(keys, ids, k)
    for fn in (_by_heap, _reservoir_checked):
        d, i = fn(keys, ids, k)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(d, ref_d)


def test_reservoir_random_order_many_compactions():
    rng = np.random.default_rng(3)
    keys = rng.standard_normal(20000).astype(np.float32)
    ids = rng.permutation(20000).astype(np.int64)
    for k in (1, 2, 10, 80):
        d, i = _reservoir_checked(keys, ids, k)
        ref_d, ref_i = _oracle(keys, ids, k)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(d, ref_d)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 300), distinct=st.integers(1, 400),
       special=st.sampled_from(["none", "inf", "-inf", "equal"]), data=st.data())
def test_reservoir_cut_keeps_the_k_best(seed, n, distinct, special, data):
    # The cut's contract: between k and `most` entries survive, the k best among them,
    # every survivor <= the returned key and every dropped entry above it; infinite
    # keys and all-equal keys (no cut exists) take the exact quickselect instead.
    rng = np.random.default_rng(seed)
    k = data.draw(st.integers(1, n - 1))
    most = data.draw(st.integers(k, n - 1))
    keys = (rng.integers(0, distinct, n) * 0.37).astype(np.float32)
    if special == "inf":
        keys[rng.integers(0, n)] = np.inf
    elif special == "-inf":
        keys[rng.integers(0, n)] = -np.inf
    elif special == "equal":
        keys[:] = 1.5
    ids = rng.permutation(n).astype(np.int64)
    rd, ri, rr = keys.copy(), ids.copy(), np.arange(n, dtype=np.int64)
    kept, thr = res_cut(rd, ri, rr, n, k, most)
    assert k <= kept <= max(most, k)
    np.testing.assert_array_equal(keys[rr[:kept]], rd[:kept])
    np.testing.assert_array_equal(ids[rr[:kept]], ri[:kept])
    assert thr == rd[:kept].max()
    dropped = np.setdiff1d(np.arange(n), rr[:kept])
    assert (keys[dropped] >= thr).all()
    best = set(_oracle(keys, ids, k)[1].tolist())
    assert best <= set(ri[:kept].tolist())


def test_merge_topk_checks_shapes():
    with pytest.raises(ValueError, match=r"part_d and part_i must both have shape"):
        merge_topk(np.zeros((2, 3)), np.zeros((2, 3), np.int64), 2)
    d, i = merge_topk(np.array([[[3.0, 1.0], [2.0, np.inf]]]),
                      np.array([[[7, 9], [4, -1]]]), 3)
    np.testing.assert_array_equal(i, [[9, 4, 7]])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 700), p=st.integers(1, 300),
       distinct=st.sampled_from([3, 40, 10**6]), special=st.booleans())
def test_coarse_list_selection_equals_sorting(seed, n, p, distinct, special):
    # _select_lists: a heap up to COARSE_SELECT_HEAP_MAX_P lists, a bisection cut and a
    # stable insertion beyond; both must give the sort's (key, index) order, ties to
    # the lower list, NaN never chosen, +inf last, padding (inf, ID_SENTINEL).
    from numba_ivf.kernels.scan.list_scan import _select_lists
    from tests.naive.search import smallest
    rng = np.random.default_rng(seed)
    s = (rng.integers(0, distinct, n) / 7.0 - 3.0).astype(np.float32)
    if special:
        s[rng.integers(0, n, max(1, n // 5))] = rng.choice([np.nan, np.inf, -0.0, 0.0])
    pd = np.empty(p, np.float32)
    pl = np.empty(p, np.int64)
    _select_lists(np.concatenate([s, np.zeros(5, np.float32)]), n, pd, pl)  # padding cols
    ref_d, ref_i = smallest(s, p, ID_SENTINEL)
    np.testing.assert_array_equal(pl, ref_i)
    np.testing.assert_array_equal(pd, ref_d.astype(np.float32))
