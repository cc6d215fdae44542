"""One query under one shared filter: the fused one-query kernels against the general
path (the same row searched as a (1, d) batch with an explicit path), which they must
match bit for bit.

IVFPQ: ``kernels.scan.pq_one.*_search_one_filtered`` and ``exact_search_one``.
"""

from unittest import mock

import numpy as np
import pytest

import numba_ivf
import numba_ivf.ivf.pq as ivf_pq
from numba_ivf import IDFilter

N, D, NLIST, K = 3000, 16, 16, 10
IDS = 3 * np.arange(N) + 1          # ids with gaps: masks by id differ from masks by row


@pytest.fixture(scope="module")
def pq_data():
    rng = np.random.default_rng(31)
    centres = rng.standard_normal((24, D)) * 3
    x = (centres[rng.integers(0, 24, N)] + rng.standard_normal((N, D))).astype(np.float32)
    q = (centres[rng.integers(0, 24, 8)] + rng.standard_normal((8, D))).astype(np.float32)
    return x, q


# kind: (nbits, refine)
PQ_KINDS = {"pq8": (8, False), "pq4": (4, False), "pq4r": (4, True), "pq8r": (8, True)}


def _build_pq(kind, x, metric):
    nbits, refine = PQ_KINDS[kind]
    index = numba_ivf.IVFPQ(D, NLIST, m=8, nbits=nbits, metric=metric, refine=refine)
    index.train(x)
    index.add(x, ids=IDS)
    return index


@pytest.fixture(scope="module")
def pq_indexes(pq_data):
    x, _ = pq_data
    out = {(kind, metric): _build_pq(kind, x, metric)
           for kind in PQ_KINDS for metric in ("l2", "ip")}
    out[("pq4r", "cosine")] = _build_pq("pq4r", x, "cosine")
    out[("pq8", "cosine")] = _build_pq("pq8", x, "cosine")
    return out


PQ_CASES = [*((kind, metric) for kind in PQ_KINDS for metric in ("l2", "ip")),
            ("pq4r", "cosine"), ("pq8", "cosine")]


def _mask(rng, frac):
    m = np.zeros(3 * N + 1, dtype=bool)
    m[IDS[rng.random(N) < frac]] = True
    return m


def _pq_fused(index, q, k, nprobe, **kw):
    """``index.search`` of one row that must stay in the fused kernel: the general
    filtered path raises if the call falls back to it."""
    with mock.patch.object(ivf_pq.IVFPQ, "_search_filtered_pq",
                           side_effect=AssertionError("fell back to the general path")):
        return index.search(q, k, nprobe, **kw)


def _assert_same(got, want):
    """Ids equal and distances equal bit for bit (inf and -inf included)."""
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == want[0].dtype == np.float32
    np.testing.assert_array_equal(got[0].view(np.int32), want[0].view(np.int32))


@pytest.mark.parametrize("kind,metric", PQ_CASES)
def test_pq_fused_equals_general(pq_indexes, pq_data, kind, metric):
    """Masks at 50 %, 5 %, 0.3 % (exact over the stored vectors with refine: nlist = 16
    rows at most) and none, with the probe rule's knobs: identical to the general
    path's serial and single plans."""
    _, q = pq_data
    index = pq_indexes[(kind, metric)]
    refine = PQ_KINDS[kind][1]
    rng = np.random.default_rng(41)
    for frac in (0.5, 0.05, 0.003, 0.0):
        mask = _mask(rng, frac)
        f = IDFilter.from_mask(mask)
        for qi in range(4):
            for k, nprobe, kw in ((K, 2, {}), (1, 1, {}), (K, 3, {"min_candidates": 1}),
                                  (K, 1, {"min_candidates": 500}),
                                  (K, 2, {"max_nprobe": 2}),
                                  (K, 1, {"min_candidates": 300, "max_nprobe": 5}),
                                  (K, NLIST, {}), (K, 2, {"min_candidates": 10 ** 12})):
                if refine:
                    kw = {**kw, "k_factor": 2 if qi % 2 else 4}
                got = _pq_fused(index, q[qi], k, nprobe, filter=f, **kw)
                for path in ("serial", "single"):
                    want = index.search(q[qi:qi + 1], k, nprobe, filter=f, path=path,
                                        **kw)
                    _assert_same(got, want)
                if frac == 0.0:
                    assert (got[1] == -1).all()
        # The other shared forms (a fresh mask, allowed ids) take the same kernel.
        want = index.search(q[:1], K, 2, filter=f, path="serial")
        _assert_same(_pq_fused(index, q[0], K, 2, filter=mask), want)
        _assert_same(_pq_fused(index, q[0], K, 2, filter=np.flatnonzero(mask)), want)


@pytest.mark.parametrize("kind,metric", PQ_CASES)
def test_pq_fused_far_filter_grows_probes(pq_indexes, pq_data, kind, metric):
    """Only rows far from the query allowed: the nearest lists of the first estimate
    hold none of them, so the probe rule grows p (4x at a time) before it finds them."""
    x, q = pq_data
    index = pq_indexes[(kind, metric)]
    for qi in range(4):
        dist = ((x - q[qi]) ** 2).sum(axis=1)
        mask = np.zeros(3 * N + 1, dtype=bool)
        mask[IDS[dist > np.quantile(dist, 0.7)]] = True
        f = IDFilter.from_mask(mask)
        for kw in ({}, {"max_nprobe": 4}, {"min_candidates": 50}):
            got = _pq_fused(index, q[qi], K, 1, filter=f, **kw)
            _assert_same(got, index.search(q[qi:qi + 1], K, 1, filter=f, path="serial",
                                           **kw))
            if not kw:
                assert (got[1] >= 0).all() and mask[got[1]].all()


@pytest.mark.parametrize("kind", ["pq8", "pq4", "pq4r"])
def test_pq_fused_single_plan_equals_general(pq_indexes, pq_data, kind, monkeypatch):
    """With the thread-split threshold lowered, the fused kernels run the general
    path's ``*_single`` drivers over the kept lists (as ``_choose_path`` picks them)."""
    _, q = pq_data
    index = pq_indexes[(kind, "l2")]
    monkeypatch.setattr(ivf_pq, "PQ_SINGLE_MIN_ROWS", 1)
    rng = np.random.default_rng(43)
    with numba_ivf.threads(2):
        for frac in (0.5, 0.05):
            f = IDFilter.from_mask(_mask(rng, frac))
            for qi in range(4):
                got = _pq_fused(index, q[qi], K, 3, filter=f)
                for path in ("serial", "single"):
                    _assert_same(got, index.search(q[qi:qi + 1], K, 3, filter=f,
                                                   path=path))


@pytest.mark.parametrize("kind", ["pq8r", "pq4"])
def test_pq_prebuilt_filter_reused_and_mutated(pq_data, kind):
    """A prebuilt IDFilter caches its row bits per index version: reused calls agree
    with the general path, and add / remove are reflected at once."""
    x, q = pq_data
    index = _build_pq(kind, x, "l2")
    f = IDFilter.range(0, 3 * N + 10)          # every id, including ones added later
    sel = IDFilter.from_ids(IDS[::2]) | IDFilter.range(3 * N, 3 * N + 10)

    def check(flt, qi=0):
        got = _pq_fused(index, q[qi], K, 2, filter=flt)
        _assert_same(got, index.search(q[qi:qi + 1], K, 2, filter=flt, path="serial"))
        return got

    for _ in range(3):
        for qi in range(3):
            check(f, qi)
            check(sel, qi)
    _, before = check(f)
    assert index.remove(before[0, :3]) == 3
    _, after = check(f)
    assert not np.isin(after, before[0, :3]).any()
    index.add(q[:1], ids=np.array([3 * N + 2]))   # the query itself, allowed by both
    _, again = check(f)
    assert 3 * N + 2 in again
    _, again = check(sel)
    assert 3 * N + 2 in again
    index.remove(np.array([3 * N + 2]))
    _, gone = check(sel)
    assert 3 * N + 2 not in gone


def test_pq_exact_path_follows_mutation(pq_data):
    """refine and a small allowed set: the exact path reads the stored vectors in
    place, so rows added under an allowed id are found and removed ones are not."""
    x, q = pq_data
    index = _build_pq("pq4r", x, "l2")
    f = IDFilter.from_ids([IDS[5], IDS[77], 3 * N + 2])
    for _ in range(2):
        got = _pq_fused(index, q[0], K, 2, filter=f)
        _assert_same(got, index.search(q[:1], K, 2, filter=f, path="serial"))
    assert sorted(got[1][0, :2]) == sorted([IDS[5], IDS[77]])
    assert (got[1][0, 2:] == -1).all()
    index.add(q[:1], ids=np.array([3 * N + 2]))
    check = _pq_fused(index, q[0], K, 2, filter=f)
    _assert_same(check, index.search(q[:1], K, 2, filter=f, path="serial"))
    assert check[1][0, 0] == 3 * N + 2 and check[0][0, 0] == 0.0
    index.remove(np.array([IDS[5]]))
    check = _pq_fused(index, q[0], K, 2, filter=f)
    assert IDS[5] not in check[1] and (check[1][0, 2:] == -1).all()


@pytest.mark.parametrize("kind", ["pq8", "pq4r"])
def test_pq_bad_values_raise_the_general_error(pq_indexes, pq_data, kind):
    """NaN, inf and values past the value limit leave the fused kernel; the general
    path raises its own messages (the filter is valid)."""
    _, q = pq_data
    index = pq_indexes[(kind, "l2")]
    f = IDFilter.from_mask(_mask(np.random.default_rng(47), 0.5))
    tiny = IDFilter.from_ids(IDS[:3])          # the exact path with refine
    for flt in (f, tiny):
        for bad, match in ((np.nan, "contains NaN or infinity"),
                           (np.inf, "contains NaN or infinity"),
                           (1e30, "the largest magnitude accepted")):
            row = q[1].copy()
            row[5] = bad
            for r in (row, row.astype(np.float64)):
                with pytest.raises(ValueError, match=match):
                    index.search(r, K, 2, filter=flt)


def test_pq_bad_filter_arguments_raise_the_general_error(pq_indexes, pq_data):
    _, q = pq_data
    index = pq_indexes[("pq4", "l2")]
    mask = _mask(np.random.default_rng(53), 0.5)
    with pytest.raises(ValueError, match="max_nprobe must be >= nprobe"):
        index.search(q[0], K, 3, filter=mask, max_nprobe=2)
    with pytest.raises(ValueError, match="min_candidates must be >= 1"):
        index.search(q[0], K, 3, filter=mask, min_candidates=0)
    with pytest.raises(TypeError, match="max_nprobe must be an integer"):
        index.search(q[0], K, 3, filter=mask, max_nprobe=2.5)
    with pytest.raises(TypeError, match="filter must be None, a boolean mask"):
        index.search(q[0], K, 3, filter=mask.astype(np.float32))
    # A NaN query with a bad filter: the general path's order (the query first).
    row = q[0].copy()
    row[0] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        index.search(row, K, 3, filter=mask.astype(np.float32))


def test_pq_per_query_filter_of_one_row_takes_the_general_path(pq_indexes, pq_data):
    """A per-query filter (2-D mask, sequence of one filter) is not a shared filter:
    the general path answers, with the shared filter's results."""
    _, q = pq_data
    index = pq_indexes[("pq8", "l2")]
    mask = _mask(np.random.default_rng(59), 0.2)
    want = _pq_fused(index, q[2], K, 2, filter=mask)
    for flt in (mask[None, :], [mask], [IDFilter.from_mask(mask)]):
        _assert_same(index.search(q[2], K, 2, filter=flt), want)


@pytest.mark.parametrize("kind", ["pq8", "pq4r"])
def test_pq_fused_empty_index(pq_data, kind):
    """A trained index with no vectors: nothing allowed anywhere, no result."""
    x, q = pq_data
    nbits, refine = PQ_KINDS[kind]
    index = numba_ivf.IVFPQ(D, NLIST, m=8, nbits=nbits, refine=refine)
    index.train(x)
    got = _pq_fused(index, q[0], K, 2, filter=IDFilter.range(0, 100))
    _assert_same(got, index.search(q[:1], K, 2, filter=IDFilter.range(0, 100),
                                   path="serial"))
    assert (got[1] == -1).all() and np.isinf(got[0]).all()
