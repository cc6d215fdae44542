"""Filtered search: every index and path against filtered oracles (tests/naive/filtered)."""

import numpy as np
import pytest

import numba_ivf
from numba_ivf import IDFilter
from numba_ivf.filters import as_filter, prepare
from tests.naive.filtered import _keys, filtered_brute_force, filtered_ivf

N, D, NLIST, K = 4000, 16, 32, 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((40, D)) * 3
    x = (centres[rng.integers(0, 40, N)] + rng.standard_normal((N, D))).astype(np.float32)
    q = (centres[rng.integers(0, 40, 24)] + rng.standard_normal((24, D))).astype(np.float32)
    return x, q


def _build(kind, x, metric="l2"):
    if kind == "flat":
        index = numba_ivf.IVFFlat(D, NLIST, metric)
    else:
        nbits = 8 if kind == "pq8" else 4
        index = numba_ivf.IVFPQ(D, NLIST, m=8, nbits=nbits, metric=metric,
                                refine=kind == "pq4r")
    index.train(x)
    # Ids with gaps: id = 3 * row + 1, so masks indexed by id differ from row masks.
    index.add(x, ids=3 * np.arange(N) + 1)
    return index


KINDS = ["flat", "pq8", "pq4", "pq4r"]


@pytest.fixture(scope="module")
def indexes(data):
    x, _ = data
    out = {kind: _build(kind, x) for kind in KINDS}
    out["flat-ip"] = _build("flat", x, "ip")
    return out


PATHS = {"flat": ["batch", "single", "list_major"], "flat-ip": ["batch", "list_major"],
         "pq8": ["batch", "single", "serial"], "pq4": ["batch", "single", "serial"],
         "pq4r": ["batch", "single", "serial"]}
IDS = 3 * np.arange(N) + 1


def _mask(rng, frac):
    m = np.zeros(3 * N + 1, dtype=bool)
    m[IDS[rng.random(N) < frac]] = True
    return m


def _kw(kind):
    return {"k_factor": 4} if kind == "pq4r" else {}


@pytest.mark.parametrize("kind", KINDS + ["flat-ip"])
def test_all_true_equals_unfiltered(indexes, data, kind):
    index = indexes[kind]
    _, q = data
    allow = np.ones(3 * N + 1, dtype=bool)
    for path in PATHS[kind]:
        D0, I0 = index.search(q, K, nprobe=4, path=path, **_kw(kind))
        D1, I1 = index.search(q, K, nprobe=4, path=path, filter=allow, min_candidates=1,
                              **_kw(kind))
        np.testing.assert_array_equal(I0, I1, err_msg=path)
        np.testing.assert_array_equal(D0, D1, err_msg=path)
    # One query as a (d,) row takes the general path when filtered: same as a batch row.
    D2, I2 = index.search(q[3], K, nprobe=4, filter=allow, min_candidates=1, **_kw(kind))
    D3, I3 = index.search(q[3:4], K, nprobe=4, **_kw(kind))
    np.testing.assert_array_equal(I2, I3)


@pytest.mark.parametrize("kind", KINDS)
def test_all_false_returns_nothing(indexes, data, kind):
    _, q = data
    D_, I_ = indexes[kind].search(q, K, nprobe=4, filter=np.zeros(5, dtype=bool),
                                  **_kw(kind))
    assert (I_ == -1).all()
    assert np.isinf(D_).all()
    _, I_ = indexes[kind].search(q, K, nprobe=4, filter=np.array([], dtype=np.int64))
    assert (I_ == -1).all()


def _check_against(D_, I_, ref_keys, ref_ids, allowed, x, q, metric, rtol=1e-4):
    """Tie-aware: every id allowed and real, as many results as the oracle, and the
    float64 key of each returned neighbour within tolerance of the oracle's."""
    assert (I_ == -1).sum() == (ref_ids == -1).sum()
    got = I_[I_ >= 0]
    assert allowed(got).all()
    for qi in range(q.shape[0]):
        ids = I_[qi][I_[qi] >= 0]
        keys = _keys(x[(ids - 1) // 3], q[qi:qi + 1], metric)[0]
        ref = ref_keys[qi][ref_ids[qi] >= 0]
        scale = np.abs(ref).max() + 1
        np.testing.assert_allclose(np.sort(keys), ref, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("frac", [0.5, 0.1, 0.02, 0.003])
@pytest.mark.parametrize("path", ["batch", "single", "list_major"])
def test_flat_equals_numpy_filtered_ivf(indexes, data, frac, path):
    x, q = data
    index = indexes["flat"]
    rng = np.random.default_rng(int(frac * 1000))
    mask = _mask(rng, frac)
    f = IDFilter.from_mask(mask)
    D_, I_ = index.search(q, K, nprobe=3, filter=f, path=path)
    allowed = f.allows
    if mask.sum() <= NLIST:     # exact over the allowed rows
        ref_k, ref_i = filtered_brute_force(x, IDS, q, K, allowed, "l2")
    else:
        ref_k, ref_i = filtered_ivf(index, q, K, allowed, 3, 10 * K, NLIST)
    _check_against(D_, I_, ref_k, ref_i, allowed, x, q, "l2")


@pytest.mark.parametrize("kind", ["pq8", "pq4", "pq4r"])
@pytest.mark.parametrize("frac", [0.3, 0.02, 0.002])
def test_pq_filtered_is_unfiltered_restricted(indexes, data, kind, frac):
    """Over the same probed lists, the filtered PQ scan returns what the unfiltered
    scan of every candidate returns once disallowed ids are dropped."""
    _, q = data
    index = indexes[kind]
    rng = np.random.default_rng(5 + int(frac * 1000))
    mask = _mask(rng, frac)
    nprobe = NLIST     # every list: the filtered probes are the unfiltered ones
    D_, I_ = index.search(q, K, nprobe=nprobe, filter=mask, **_kw(kind))
    assert ((I_ == -1) | mask[np.maximum(I_, 0)]).all()
    n_allowed = int(mask[IDS].sum())
    assert ((I_ >= 0).sum(axis=1) == min(K, n_allowed)).all()
    if kind == "pq4r" and n_allowed <= NLIST:
        ref_k, ref_i = filtered_brute_force(data[0], IDS, q, K, lambda i: mask[i], "l2")
        _check_against(D_, I_, ref_k, ref_i, lambda i: mask[i], data[0], q, "l2")
    elif kind != "pq4r":
        D0, I0 = index.search(q, N, nprobe=nprobe)
        for qi in range(q.shape[0]):
            keep = (I0[qi] >= 0) & mask[np.maximum(I0[qi], 0)]
            want = I0[qi][keep][:K]
            np.testing.assert_array_equal(I_[qi][:want.size], want)
            if kind == "pq8":
                np.testing.assert_array_equal(D_[qi][:want.size], D0[qi][keep][:K])
            else:   # 4-bit: the tables' quantization scale covers only read lists
                ref = D0[qi][keep][:K]
                np.testing.assert_allclose(D_[qi][:want.size], ref, rtol=0,
                                           atol=0.02 * np.abs(ref).max())


@pytest.mark.parametrize("kind", KINDS)
def test_restrictive_filter_still_returns_k(indexes, data, kind):
    _, q = data
    rng = np.random.default_rng(3)
    allowed_ids = rng.choice(IDS, size=60, replace=False)   # 1.5 %, > nlist rows
    D_, I_ = indexes[kind].search(q, K, nprobe=1, filter=allowed_ids, **_kw(kind))
    assert (I_ >= 0).all()
    assert np.isin(I_, allowed_ids).all()
    # max_nprobe caps the lists looked at, then fewer than k may come back.
    _, I2 = indexes[kind].search(q, K, nprobe=1, filter=allowed_ids, max_nprobe=1,
                                 **_kw(kind))
    assert np.isin(I2[I2 >= 0], allowed_ids).all()


@pytest.mark.parametrize("kind", KINDS)
def test_per_query_equals_one_by_one(indexes, data, kind):
    _, q = data
    index = indexes[kind]
    rng = np.random.default_rng(8)
    masks = [_mask(rng, frac) for frac in rng.choice([0.5, 0.05, 0.004], q.shape[0])]
    D_, I_ = index.search(q, K, nprobe=2, filter=masks, **_kw(kind))
    rows = [np.flatnonzero(m) for m in masks]
    indptr = np.concatenate(([0], np.cumsum([r.size for r in rows])))
    Dc, Ic = index.search(q, K, nprobe=2, filter=IDFilter.per_query(indptr,
                                                                     np.concatenate(rows)),
                          **_kw(kind))
    np.testing.assert_array_equal(I_, Ic)
    np.testing.assert_array_equal(D_, Dc)
    for qi in range(q.shape[0]):
        d1, i1 = index.search(q[qi:qi + 1], K, nprobe=2, filter=masks[qi], **_kw(kind))
        np.testing.assert_array_equal(I_[qi:qi + 1], i1)
        # A batch's coarse scores come from the tiled kernel, one query's from a GEMV:
        # PQ keys add them, so they agree to rounding.
        np.testing.assert_allclose(D_[qi:qi + 1], d1, rtol=1e-5)


def test_filter_forms_agree(indexes, data):
    _, q = data
    index = indexes["flat"]
    rng = np.random.default_rng(2)
    mask = _mask(rng, 0.2)
    ids = np.flatnonzero(mask)
    dup = np.concatenate([ids[::-1], ids[:10], [10 ** 9]])   # any order, dups, absent
    short = mask[:IDS[N // 2]]                                # shorter than the largest id
    ref = index.search(q, K, nprobe=2, filter=mask)
    for f in (ids, dup, list(ids), IDFilter(mask), IDFilter.from_ids(dup),
              IDFilter.from_mask(mask), IDFilter.from_ids(ids) | IDFilter.from_ids([])):
        np.testing.assert_array_equal(index.search(q, K, nprobe=2, filter=f)[1], ref[1])
    D_, I_ = index.search(q, K, nprobe=2, filter=short)
    assert (I_[I_ >= 0] < short.shape[0]).all()
    np.testing.assert_array_equal(I_, index.search(q, K, nprobe=2,
                                                   filter=ids[ids < short.shape[0]])[1])
    # Combinations equal the numpy evaluation of the same predicate.
    a = IDFilter.range(100, 9000)
    b = IDFilter.from_mask(mask)
    for f in (a & b, a | b, ~b, ~(a & ~b)):
        allowed = f.allows(np.arange(3 * N + 2))
        np.testing.assert_array_equal(index.search(q, K, nprobe=2, filter=f)[1],
                                      index.search(q, K, nprobe=2, filter=allowed)[1])


def test_removed_ids_never_come_back(data):
    x, q = data
    index = _build("flat", x)
    mask = np.ones(3 * N + 1, dtype=bool)
    gone = IDS[::2]
    index.remove(gone)
    for f in (mask, IDS, IDFilter.range(0, 3 * N + 1)):
        _, I_ = index.search(q, K, nprobe=4, filter=f)
        assert not np.isin(I_, gone).any()
    _, I_ = index.search(q, K, nprobe=1, filter=gone[:50])   # only removed ids allowed
    assert (I_ == -1).all()


def test_prepare_bits_and_counts(indexes):
    L = indexes["pq4"]._lists
    rng = np.random.default_rng(4)
    mask = _mask(rng, 0.3)
    rf = prepare(mask, L, 3)
    bits = np.unpackbits(rf.fbits[0].view(np.uint8), bitorder="little")[:L.ids.shape[0]]
    want = np.zeros(L.ids.shape[0], dtype=np.uint8)
    for lst in range(L.nlist):
        r = np.arange(L.starts[lst], L.starts[lst] + L.sizes[lst])
        want[r] = mask[L.ids[r]]
        assert rf.fcount[0, lst] == want[r].sum()
    np.testing.assert_array_equal(bits, want)
    np.testing.assert_array_equal(rf.fslot, [0, 0, 0])


def test_bad_filters_raise(indexes, data):
    _, q = data
    index = indexes["flat"]
    with pytest.raises(TypeError, match="boolean|integers"):
        index.search(q, K, filter=np.ones(10, dtype=np.float32))
    with pytest.raises(ValueError, match="one row per query"):
        index.search(q, K, filter=np.ones((3, 10), dtype=bool))
    with pytest.raises(ValueError, match=">= 0"):
        index.search(q, K, filter=np.array([3, -1]))
    with pytest.raises(ValueError, match="one filter per query"):
        index.search(q, K, filter=[np.ones(5, bool)] * (q.shape[0] - 1))
    with pytest.raises(ValueError, match="min_candidates"):
        index.search(q, K, filter=np.ones(5, bool), min_candidates=0)
    with pytest.raises(ValueError, match="max_nprobe must be >= nprobe"):
        index.search(q, K, nprobe=4, filter=np.ones(5, bool), max_nprobe=2)
    with pytest.raises(ValueError, match="only to a filtered"):
        index.search(q, K, min_candidates=5)
    with pytest.raises(ValueError, match="indptr"):
        IDFilter.per_query([0, 5, 3], np.arange(3))
    with pytest.raises(TypeError, match="per-query"):
        IDFilter.range(0, 5) & IDFilter.per_query([0, 1], [1])
    with pytest.raises(TypeError, match="IDFilter.range: start must be an integer"):
        IDFilter.range(0.5, 10)
    with pytest.raises(TypeError, match="entry of the per-query sequence is None"):
        index.search(q[:2], K, filter=[np.ones(5, bool), None])
    with pytest.raises(ValueError, match="as a mask must be 1-D"):
        index.search(q, K, filter=np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="as allowed ids must be 1-D"):
        IDFilter.from_ids(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="as allowed ids must be integers"):
        IDFilter.from_ids(np.ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match="as a mask must be a boolean array"):
        IDFilter.from_mask(np.ones(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="filter has one row per query for 2 queries"):
        index.search(q[:3], K, filter=IDFilter.per_query([0, 1, 2], [4, 7]))
    assert as_filter(None, 3) is None
    # uint64 ids past int64 are never stored: dropped, not wrapped round to negatives.
    big = np.array([2 ** 64 - 1, 4], dtype=np.uint64)
    np.testing.assert_array_equal(IDFilter.from_ids(big).allows(np.array([4, -1])),
                                  [True, False])


def test_hypothesis_random_masks(indexes, data):
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    x, q = data
    index = indexes["flat"]

    @hyp.given(seed=st.integers(0, 2 ** 31), frac=st.sampled_from([0.9, 0.3, 0.05, 0.005]),
               nprobe=st.integers(1, 6), k=st.integers(1, 20))
    def check(seed, frac, nprobe, k):
        rng = np.random.default_rng(seed)
        mask = _mask(rng, frac)
        D_, I_ = index.search(q[:6], k, nprobe=nprobe, filter=mask)
        if mask.sum() <= NLIST:
            ref = filtered_brute_force(x, IDS, q[:6], k, lambda i: mask[i], "l2")
        else:
            ref = filtered_ivf(index, q[:6], k, lambda i: mask[i], nprobe, 10 * k, NLIST)
        _check_against(D_, I_, *ref, lambda i: mask[i], x, q[:6], "l2")

    check()


@pytest.mark.parametrize("kind", ["flat", "flat-ip"])
def test_flat_one_query_fused_equals_general(indexes, data, kind):
    """One row under a shared filter takes ``list_scan.search_one_filtered``; it must
    return what the general path returns for the same row as a (1, d) batch."""
    _, q = data
    index = indexes[kind]
    rng = np.random.default_rng(21)
    for frac in (0.6, 0.1, 0.01, 0.003, 0.0):
        f = IDFilter.from_mask(_mask(rng, frac))
        for qi in range(6):
            for kw in ({}, {"min_candidates": 1}, {"max_nprobe": 2},
                       {"min_candidates": 500}):
                want = index.search(q[qi:qi + 1], K, nprobe=2, filter=f, path="batch",
                                    **kw)
                got = index.search(q[qi], K, nprobe=2, filter=f, **kw)
                np.testing.assert_array_equal(got[1], want[1])
                np.testing.assert_array_equal(got[0], want[0])


def test_prebuilt_filter_follows_mutation(data):
    """A reused IDFilter caches its row bits per index version: add and remove must
    invalidate them."""
    x, q = data
    index = _build("flat", x)
    f = IDFilter.range(0, 3 * N + 1)      # every id, including ones added later
    _, before = index.search(q[0], K, nprobe=1, filter=f, min_candidates=1)
    index.remove(before[0, :3])
    _, after = index.search(q[0], K, nprobe=1, filter=f, min_candidates=1)
    assert not np.isin(after, before[0, :3]).any()
    index.add(q[:1], ids=np.array([3 * N]))      # the query itself, id within range
    _, again = index.search(q[0], K, nprobe=1, filter=f, min_candidates=1)
    assert again[0, 0] == 3 * N
    _, batch = index.search(q[:2], K, nprobe=1, filter=f, min_candidates=1)
    assert batch[0, 0] == 3 * N
