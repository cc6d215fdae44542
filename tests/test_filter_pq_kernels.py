"""Filtered IVF-PQ scans (8-bit ADC and 4-bit fast-scan): the row bitmaps of
``kernels.filtering._bits`` against an exact oracle built from the unfiltered scan.

Oracle: the unfiltered scan with k = every live row gives each candidate of the probed
lists its key; dropping the disallowed ids and keeping the first k (key, then id) must
give the filtered scan exactly (keys bit for bit, ids exactly). For the 4-bit scan by
residual the oracle probes only the lists the filtered scan does not skip: their tables
share one quantization scale, which skipped lists do not widen.
"""

import numpy as np
import pytest

import numba_ivf
from numba_ivf._config import FILTER_SPARSE_FRACTION
from numba_ivf.kernels.fastscan import fastscan
from numba_ivf.kernels.common.topk import ID_SENTINEL

D, NLIST, M, N = 16, 16, 8, 3000
NPROBE = 6
K = 10
PATHS = ("batch", "single", "serial")
BACKENDS = fastscan.available_backends()
# (nbits, metric, by_residual, refine): 4-bit "ip" without residual quantizes one table
# per query, the others one per (query, list) with a shared scale.
CONFIGS = [(8, "l2", True, False), (8, "l2", True, True), (4, "l2", True, False),
           (4, "l2", True, True), (4, "ip", False, False)]
CONFIG_IDS = [f"{b}bit-{m}-{'res' if r else 'nores'}{'-refine' if f else ''}"
              for b, m, r, f in CONFIGS]


def _data(seed, n):
    # Clusters of uneven weight, so that some lists are longer than 256 rows (the
    # 8-bit scan then builds the summed table) and some shorter (it sums two tables).
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((6, D)) * 3.0
    lab = rng.choice(6, size=n, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    return (c[lab] + rng.standard_normal((n, D))).astype(np.float32)


_INDEXES = {}


def _index(cfg):
    """An index with ids 7 i + 3 and 200 rows removed (holes, moved rows); cached."""
    if cfg not in _INDEXES:
        nbits, metric, by_residual, refine = cfg
        idx = numba_ivf.IVFPQ(D, NLIST, M, nbits, metric, by_residual, refine, n_iter=6,
                              seed=0)
        x = _data(1, N)
        idx.train(x)
        ids = np.arange(N, dtype=np.int64) * 7 + 3
        idx.add(x[:N // 2], ids[:N // 2])
        idx.add(x[N // 2:], ids[N // 2:])
        idx.remove(np.random.default_rng(2).choice(ids, 200, replace=False))
        _INDEXES[cfg] = idx
    return _INDEXES[cfg]


@pytest.fixture(scope="module", params=CONFIGS, ids=CONFIG_IDS)
def index(request):
    return _index(request.param)


def _live_rows(L):
    live = np.zeros(L.ids.shape[0], dtype=bool)
    for lst in range(L.nlist):
        s = int(L.starts[lst])
        live[s:s + int(L.sizes[lst])] = True
    return live


def _filters(L, allowed_rows):
    """fbits (nf, nw) uint32, fcount (nf, nlist) int64 from a boolean (nf, capacity)
    over arena rows (dead rows are cleared, as ``_bits`` requires)."""
    a = np.atleast_2d(allowed_rows) & _live_rows(L)
    nf, cap = a.shape
    nw = -(-cap // 32)
    padded = np.zeros((nf, nw * 32), dtype=np.uint64)
    padded[:, :cap] = a
    fbits = (padded.reshape(nf, nw, 32) << np.arange(32, dtype=np.uint64)).sum(-1)
    fcount = np.array([[a[f, L.starts[lst]:L.starts[lst] + L.sizes[lst]].sum()
                        for lst in range(L.nlist)] for f in range(nf)], dtype=np.int64)
    return fbits.astype(np.uint32), fcount


def _random_filters(L, fractions, seed):
    """Filters allowing each live id with the given probabilities (one filter each)."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.random(L.ids.shape[0]) < p for p in fractions])
    return _filters(L, rows)


def _queries(idx, seed, nq=7, with_holes=True):
    """Prepared queries, coarse scores and probes (some probes -1, as the filtered
    orchestration leaves them)."""
    rng = np.random.default_rng(seed)
    q = _data(seed, nq) + rng.standard_normal((nq, D)).astype(np.float32)
    qn = idx._check_search(q, K, NPROBE)[0]
    scores, probes = idx._coarse(qn, NPROBE)
    probes = np.ascontiguousarray(probes, dtype=np.int64)
    if with_holes:
        probes[rng.random(probes.shape) < 0.2] = -1
    return qn, np.ascontiguousarray(scores), probes


def _scan(idx, path, qn, scores, probes, k, backend, flt=None):
    """``IVFPQ._scan`` into fresh arrays: (keys, ids, rows or None)."""
    nq = qn.shape[0]
    keys = np.full((nq, k), np.nan, dtype=np.float32)
    ids = np.full((nq, k), -7, dtype=np.int64)
    rows = idx._scan(path, qn, scores, probes, keys, ids, fastscan.get_backend(backend),
                     path == "serial", flt)
    return keys, ids, rows


def _canonical(keys, ids, rows=None):
    """Each row sorted by (key, id) (the refine scans return an unordered set)."""
    order = np.lexsort((ids, keys), axis=-1)
    take = np.take_along_axis
    return (take(keys, order, 1), take(ids, order, 1),
            None if rows is None else take(rows, order, 1))


def _oracle(idx, qn, scores, probes, flt, allowed_ids, k, backend):
    """The exact filtered top-k from the unfiltered scan over every candidate."""
    L = idx._lists
    fbits, fcount, fslot = flt
    tp = probes.copy()
    for qi in range(tp.shape[0]):
        for p in range(tp.shape[1]):
            if tp[qi, p] >= 0 and fcount[fslot[qi], tp[qi, p]] == 0:
                tp[qi, p] = -1
    total = int(L.sizes.sum())
    keys, ids, _ = _canonical(*_scan(idx, "serial", qn, scores, tp, total, backend)[:2])
    out_k = np.full((qn.shape[0], k), np.inf, dtype=np.float32)
    out_i = np.full((qn.shape[0], k), ID_SENTINEL, dtype=np.int64)
    for qi in range(qn.shape[0]):
        keep = (ids[qi] != ID_SENTINEL) & np.isin(ids[qi], allowed_ids[fslot[qi]])
        kk, ii = keys[qi][keep][:k], ids[qi][keep][:k]
        out_k[qi, :kk.size] = kk
        out_i[qi, :ii.size] = ii
    return out_k, out_i


def _allowed_ids(L, fbits):
    """Per filter, the ids of the rows whose bit is set."""
    cap = L.ids.shape[0]
    bits = ((fbits[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool)
    bits = bits.reshape(fbits.shape[0], -1)[:, :cap]
    return [L.ids[b] for b in bits]


def _kk(idx):
    return K * 4 if idx.refine else K


def _check_rows(idx, ids, rows):
    """4-bit: each candidate's arena row holds its id; padding rows are -1."""
    if rows is None:
        return
    L = idx._lists
    real = ids != ID_SENTINEL
    assert (rows[~real] == -1).all()
    assert (L.ids[rows[real]] == ids[real]).all()
    assert _live_rows(L)[rows[real]].all()


def _assert_same(got, want):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0].view(np.uint32), want[0].view(np.uint32))


def _modes(idx, probes, fcount, fslot):
    """The set of ``_bits`` modes the probed lists take: 'skip', 'sparse', 'dense'."""
    sizes = idx._lists.sizes
    seen = set()
    for qi, row in enumerate(probes):
        for lst in row[row >= 0]:
            c, n = fcount[fslot[qi], lst], sizes[lst]
            if n:
                seen.add("skip" if c == 0 else
                         "sparse" if c < n * FILTER_SPARSE_FRACTION else "dense")
    return seen


def _backends(idx):
    return BACKENDS if idx.nbits == 4 else (fastscan.FASTSCAN_BACKEND,)


# ---------------------------------------------------------------------------------


def test_index_layout_covers_both_table_paths_and_holes():
    idx = _index(CONFIGS[0])
    sizes = idx._lists.sizes
    assert sizes.max() >= 256 > sizes.min()       # 8-bit: summed and two-table paths
    assert (idx._lists.caps > sizes).any()        # removed rows left dead arena rows


@pytest.mark.parametrize("path", PATHS)
def test_all_allowed_equals_unfiltered(index, path):
    qn, scores, probes = _queries(index, 11)
    L = index._lists
    fbits, fcount = _filters(L, np.ones(L.ids.shape[0], dtype=bool))
    flt = (fbits, fcount, np.zeros(qn.shape[0], dtype=np.int64))
    for backend in _backends(index):
        want = _scan(index, path, qn, scores, probes, _kk(index), backend)
        got = _scan(index, path, qn, scores, probes, _kk(index), backend, flt)
        _assert_same(got, want)                   # order too: the same scan
        if index.nbits == 4:
            np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("path", PATHS)
def test_nothing_allowed_gives_sentinels(index, path):
    qn, scores, probes = _queries(index, 12)
    L = index._lists
    fbits, fcount = _filters(L, np.zeros(L.ids.shape[0], dtype=bool))
    assert not fbits.any() and not fcount.any()
    flt = (fbits, fcount, np.zeros(qn.shape[0], dtype=np.int64))
    for backend in _backends(index):
        keys, ids, rows = _scan(index, path, qn, scores, probes, _kk(index), backend, flt)
        assert (ids == ID_SENTINEL).all()
        assert np.isposinf(keys).all()
        if rows is not None:
            assert (rows == -1).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fraction", [0.5, 0.05, 0.005])
def test_shared_filter_equals_oracle(index, path, fraction):
    qn, scores, probes = _queries(index, 13)
    L = index._lists
    fbits, fcount = _random_filters(L, [fraction], seed=int(fraction * 1000))
    fslot = np.zeros(qn.shape[0], dtype=np.int64)
    flt = (fbits, fcount, fslot)
    allowed = _allowed_ids(L, fbits)
    # 50 % leaves every probed list dense; 5 % sparse; 0.5 % sparse and skipped lists.
    expect = {0.5: {"dense"}, 0.05: {"sparse"}, 0.005: {"sparse", "skip"}}[fraction]
    assert expect <= _modes(index, probes, fcount, fslot)
    for backend in _backends(index):
        want = _oracle(index, qn, scores, probes, flt, allowed, _kk(index), backend)
        got = _scan(index, path, qn, scores, probes, _kk(index), backend, flt)
        _check_rows(index, got[1], got[2])
        if not index.refine:                      # sorted as returned
            _assert_same(got, _canonical(*got[:2]))
        _assert_same(_canonical(*got[:2]), want)


@pytest.mark.parametrize("path", PATHS)
def test_per_query_filters_equal_oracle(index, path):
    qn, scores, probes = _queries(index, 14, nq=9)
    L = index._lists
    fbits, fcount = _random_filters(L, [0.5, 0.05, 0.005, 1.0], seed=5)
    fslot = np.random.default_rng(6).integers(0, 4, qn.shape[0]).astype(np.int64)
    fslot[:4] = [0, 1, 2, 3]                      # every filter row is used
    flt = (fbits, fcount, fslot)
    allowed = _allowed_ids(L, fbits)
    assert {"dense", "sparse", "skip"} <= _modes(index, probes, fcount, fslot)
    for backend in _backends(index):
        want = _oracle(index, qn, scores, probes, flt, allowed, _kk(index), backend)
        got = _scan(index, path, qn, scores, probes, _kk(index), backend, flt)
        _check_rows(index, got[1], got[2])
        _assert_same(_canonical(*got[:2]), want)


@pytest.mark.parametrize("path", PATHS)
def test_list_with_zero_count_is_not_read(index, path):
    # fcount says list `lst` has no allowed row, though its bits say otherwise: a scan
    # that read the list would admit those rows (here, every row of it).
    qn, scores, probes = _queries(index, 15, with_holes=False)
    L = index._lists
    lst = int(probes[0, 0])
    rows = np.zeros(L.ids.shape[0], dtype=bool)
    rows[L.starts[lst]:L.starts[lst] + L.sizes[lst]] = True
    fbits, fcount = _filters(L, rows)
    fcount[0, lst] = 0
    flt = (fbits, fcount, np.zeros(qn.shape[0], dtype=np.int64))
    for backend in _backends(index):
        keys, ids, _ = _scan(index, path, qn, scores, probes, _kk(index), backend, flt)
        assert (ids == ID_SENTINEL).all()


def test_filtered_refine_returns_allowed_ids():
    # End to end through the exact re-ranking: the candidates' rows (4-bit) or ids
    # (8-bit) lead to the right vectors, and only allowed ids come back.
    for cfg in (c for c in CONFIGS if c[3]):
        idx = _index(cfg)
        qn, scores, probes = _queries(idx, 16)
        L = idx._lists
        fbits, fcount = _random_filters(L, [0.05], seed=8)
        flt = (fbits, fcount, np.zeros(qn.shape[0], dtype=np.int64))
        keys, ids, rows = _scan(idx, "batch", qn, scores, probes, _kk(idx),
                                fastscan.FASTSCAN_BACKEND, flt)
        D, I = idx._refine_exact(qn, keys, ids, K, False, rows)
        got = I[I != ID_SENTINEL]
        assert got.size and np.isin(got, _allowed_ids(L, fbits)[0]).all()
        # each returned distance is the exact one of its vector
        live = _live_rows(L)
        for qi in range(qn.shape[0]):
            for key, i in zip(D[qi], I[qi]):
                if i != ID_SENTINEL:
                    x = L.payload["data"][np.flatnonzero(live & (L.ids == i))[0]]
                    np.testing.assert_allclose(key, ((qn[qi] - x) ** 2).sum(),
                                               rtol=1e-5, atol=1e-5)


def test_scan_rejects_malformed_filters():
    idx = _index(CONFIGS[0])
    qn, scores, probes = _queries(idx, 17)
    L = idx._lists
    fbits, fcount = _random_filters(L, [0.5], seed=9)
    fslot = np.zeros(qn.shape[0], dtype=np.int64)
    bad = [(fbits[:, :1], fcount, fslot), (fbits.astype(np.int64), fcount, fslot),
           (fbits, fcount[:, :3], fslot), (fbits, fcount, fslot + 1),
           (fbits, fcount, fslot[:2])]
    for flt in bad:
        with pytest.raises(ValueError, match=r"flt must be \(fbits uint32"):
            _scan(idx, "serial", qn, scores, probes, K, fastscan.FASTSCAN_BACKEND, flt)
