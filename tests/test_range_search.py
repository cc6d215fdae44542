"""range_search: oracle parity for every index kind, brute-force parity at nprobe=nlist,
bit parity with search, edge cases (empty, everything, nq=0, 1-D, float64,
non-contiguous), radius errors, removal and filters."""

import copy

import numpy as np
import pytest

import numba_ivf
from numba_ivf._validation import check_vectors
from numba_ivf.ivf import _range
from numba_ivf.ivf.base import normalize_rows
from tests.naive import range as naive

D, NLIST, M, N = 16, 8, 8, 2000

# name -> (class, kwargs); PQ kinds cover every table kind (L2 by residual, L2 without,
# inner product) and both code layouts.
KINDS = {
    "flat-l2": ("flat", {"metric": "l2"}),
    "flat-ip": ("flat", {"metric": "ip"}),
    "flat-cosine": ("flat", {"metric": "cosine"}),
    "pq8-l2": ("pq", {"nbits": 8, "metric": "l2"}),
    "pq8-ip": ("pq", {"nbits": 8, "metric": "ip"}),
    "pq4-l2": ("pq", {"nbits": 4, "metric": "l2"}),
    "pq4-cosine-noresidual": ("pq", {"nbits": 4, "metric": "cosine", "by_residual": False}),
    "pq4-refine-l2": ("pq", {"nbits": 4, "metric": "l2", "refine": True}),
}


def _clustered(seed, n, d=D, centres=24):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)) * 3.0
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


def _build(name):
    family, kw = KINDS[name]
    if family == "flat":
        index = numba_ivf.IVFFlat(D, NLIST, kw["metric"], n_iter=8, seed=0)
    else:
        index = numba_ivf.IVFPQ(D, NLIST, M, kw["nbits"], kw["metric"],
                                kw.get("by_residual", True), kw.get("refine", False),
                                n_iter=8, seed=0)
    x = _clustered(1, N)
    index.train(x)
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    index.add(x, ids)
    return index, x, ids


_CACHE = {}


@pytest.fixture(scope="module")
def built():
    """name -> (index, x, ids), built once per module (k-means and JIT paid once)."""
    def get(name):
        if name not in _CACHE:
            _CACHE[name] = _build(name)
        return _CACHE[name]
    return get


@pytest.fixture(scope="module")
def queries():
    return _clustered(5, 7)   # > IVF_COARSE_SCAN_MAX_QUERIES: the tiled coarse step


def _prep(index, q):
    """The queries as range_search prepares them (float32, normalised for cosine)."""
    q = check_vectors(q, "q", d=index.d, allow_1d=True)
    return normalize_rows(q) if index.metric == "cosine" else q


def _probes(index, qp, nprobe):
    return index._coarse(qp, min(nprobe, index.nlist))[1]


def _exact(index):
    return index.kind == "IVFFlat" or index.refine


def _oracle(index, qp, probes, allowed=None):
    fn = naive.flat_values if _exact(index) else naive.pq_values
    return fn(index, qp, probes, allowed)


def _tols(index):
    return (1e-5, 1e-4) if _exact(index) else (1e-4, 1e-3)


def _quantile_radius(index, oracle, frac):
    """A radius keeping about ``frac`` of the candidates."""
    vals = np.array([v for o in oracle for v in o.values()])
    return float(np.quantile(vals, frac if index.metric == "l2" else 1 - frac))


def _check(index, lims, Dr, Ir, oracle, radius):
    rtol, atol = _tols(index)
    naive.check_range(lims, Dr, Ir, oracle, index.metric, radius, rtol=rtol, atol=atol)


def _segments(lims, Dr, Ir):
    return [(Dr[lims[i]:lims[i + 1]], Ir[lims[i]:lims[i + 1]])
            for i in range(lims.shape[0] - 1)]


# -- oracle parity -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("nprobe", [1, 3])
def test_matches_oracle(name, nprobe, built, queries):
    index, _, _ = built(name)
    qp = _prep(index, queries)
    probes = _probes(index, qp, nprobe)
    oracle = _oracle(index, qp, probes)
    radius = _quantile_radius(index, oracle, 0.05)
    lims, Dr, Ir = index.range_search(queries, radius, nprobe)
    _check(index, lims, Dr, Ir, oracle, radius)
    assert lims[-1] > 0


@pytest.mark.parametrize("name", ["flat-l2", "pq8-l2", "pq4-l2"])
def test_few_queries_match_oracle(name, built, queries):
    """Two queries: the coarse step takes the GEMV path (few queries)."""
    index, _, _ = built(name)
    q = queries[:2]
    qp = _prep(index, q)
    oracle = _oracle(index, qp, _probes(index, qp, 2))
    radius = _quantile_radius(index, oracle, 0.1)
    _check(index, *index.range_search(q, radius, 2), oracle, radius)


def _gap_radius(values, frac, rel=1e-3):
    """A radius near the ``frac`` quantile of ``values`` with no value within ``rel``
    of it (relative), so float32 and float64 agree on which side every value falls."""
    v = np.sort(np.asarray(values))
    j0 = int(frac * (len(v) - 1))
    for j in sorted(range(1, len(v)), key=lambda j: abs(j - j0)):
        r = 0.5 * (v[j - 1] + v[j])
        if v[j] - v[j - 1] > 2 * rel * (1 + abs(r)):
            return float(r)
    raise AssertionError("no gap")


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_flat_nprobe_nlist_equals_brute_force(metric, built, queries):
    index, x, ids = built(f"flat-{metric}")
    q64 = queries.astype(np.float64)
    x64 = x.astype(np.float64)
    if metric == "cosine":
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    for qi in range(queries.shape[0]):
        vals = (((x64 - q64[qi]) ** 2).sum(1) if metric == "l2" else x64 @ q64[qi])
        radius = _gap_radius(vals, 0.03 if metric == "l2" else 0.97)
        want = set(ids[naive.inside(metric, vals, radius)].tolist())
        lims, Dr, Ir = index.range_search(queries[qi], radius, nprobe=NLIST)
        assert set(Ir.tolist()) == want
        pos = {int(i): j for j, i in enumerate(ids)}
        np.testing.assert_allclose(Dr, vals[[pos[int(i)] for i in Ir]], rtol=1e-5,
                                   atol=1e-4)
        # nprobe above nlist is clamped
        l2_, D2, I2 = index.range_search(queries[qi], radius, nprobe=10 * NLIST)
        assert (l2_ == lims).all() and (D2 == Dr).all() and (I2 == Ir).all()


@pytest.mark.parametrize("name,k", [("flat-l2", 50), ("flat-ip", 50), ("pq8-l2", 50),
                                    ("pq8-ip", 50), ("pq4-refine-l2", 50)])
def test_distances_bit_identical_to_search(name, k, built, queries):
    """IVFFlat and 8-bit PQ share the search scan's key formulas, 4-bit + refine its
    exact re-ranking keys: a row's distance is the same float32 in both."""
    index, _, _ = built(name)
    kw = {"k_factor": 64} if name.startswith("pq4-refine") else {}
    Ds, Is = index.search(queries, k, nprobe=3, **kw)
    big = 1e30 if index.metric == "l2" else -1e30
    lims, Dr, Ir = index.range_search(queries, big, nprobe=3)
    for qi, (d, i) in enumerate(_segments(lims, Dr, Ir)):
        got = dict(zip(i.tolist(), d.tolist()))
        for dv, id_ in zip(Ds[qi].tolist(), Is[qi].tolist()):
            assert got[id_] == dv, (qi, id_)


def test_pq4_float_tables_close_to_fastscan_search(built, queries):
    """4-bit without refine: float-table keys, close to (not equal to) the quantized
    fast-scan keys of search."""
    index, _, _ = built("pq4-l2")
    Ds, Is = index.search(queries, 20, nprobe=3)
    lims, Dr, Ir = index.range_search(queries, 1e30, nprobe=3)
    for qi, (d, i) in enumerate(_segments(lims, Dr, Ir)):
        got = dict(zip(i.tolist(), d.tolist()))
        ref = np.array([got[int(id_)] for id_ in Is[qi]])
        np.testing.assert_allclose(Ds[qi], ref, rtol=2e-2, atol=0.1)


# -- edge cases ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["flat-l2", "flat-ip", "pq8-l2", "pq4-l2",
                                  "pq4-refine-l2"])
def test_tiny_radius_gives_empty_result(name, built, queries):
    index, _, _ = built(name)
    radius = 0.0 if index.metric == "l2" else 1e6   # no squared distance < 0
    lims, Dr, Ir = index.range_search(queries, radius, nprobe=NLIST)
    assert lims.tolist() == [0] * (queries.shape[0] + 1)
    assert Dr.shape == (0,) and Dr.dtype == np.float32
    assert Ir.shape == (0,) and Ir.dtype == np.int64


@pytest.mark.parametrize("name", list(KINDS))
def test_huge_radius_returns_every_probed_row(name, built, queries):
    index, _, _ = built(name)
    qp = _prep(index, queries)
    probes = _probes(index, qp, 3)
    radius = 1e30 if index.metric == "l2" else -1e30
    lims, Dr, Ir = index.range_search(queries, radius, nprobe=3)
    L = index._lists
    for qi, (d, i) in enumerate(_segments(lims, Dr, Ir)):
        want = set()
        for lst in probes[qi]:
            s, n = int(L.starts[lst]), int(L.sizes[lst])
            want |= set(L.ids[s:s + n].tolist())
        assert sorted(i.tolist()) == sorted(want)
    _check(index, lims, Dr, Ir, _oracle(index, qp, probes), radius)


def test_query_equal_to_stored_vector(built):
    index, x, ids = built("flat-l2")
    lims, Dr, Ir = index.range_search(x[:3], 1e-6, nprobe=NLIST)
    assert lims.tolist() == [0, 1, 2, 3]
    assert Ir.tolist() == ids[:3].tolist() and (Dr == 0).all()


@pytest.mark.parametrize("name", ["flat-l2", "pq8-l2", "pq4-refine-l2"])
def test_no_queries(name, built):
    index, _, _ = built(name)
    lims, Dr, Ir = index.range_search(np.empty((0, D), np.float32), 1.0, 2)
    assert lims.tolist() == [0] and Dr.shape == (0,) and Ir.shape == (0,)
    assert lims.dtype == np.int64 and Dr.dtype == np.float32 and Ir.dtype == np.int64


@pytest.mark.parametrize("name", ["flat-l2", "pq4-l2"])
def test_empty_index(name, built, queries):
    index, _, ids = built(name)
    empty = copy.deepcopy(index)
    empty.remove(ids)
    assert len(empty) == 0
    lims, Dr, Ir = empty.range_search(queries, 1e30, nprobe=NLIST)
    assert lims.tolist() == [0] * (queries.shape[0] + 1)
    assert Dr.shape == (0,) and Ir.shape == (0,)


def test_untrained_raises():
    with pytest.raises(RuntimeError, match="range_search: the index is not trained"):
        numba_ivf.IVFFlat(D, NLIST).range_search(np.zeros(D), 1.0)
    with pytest.raises(RuntimeError, match="not trained"):
        numba_ivf.IVFPQ(D, NLIST, M, 4).range_search(np.zeros(D), 1.0)


@pytest.mark.parametrize("name", ["flat-cosine", "pq8-ip", "pq4-l2"])
def test_query_forms_agree(name, built, queries):
    """1-D q, float64 q and non-contiguous q give the float32 batch's results."""
    index, _, _ = built(name)
    qp = _prep(index, queries)
    radius = _quantile_radius(index, _oracle(index, qp[:1], _probes(index, qp[:1], 2)),
                              0.2)
    ref = index.range_search(queries, radius, 2)
    one = index.range_search(queries[0], radius, 2)
    seg = _segments(*ref)[0]
    assert one[0].tolist() == [0, seg[0].shape[0]]
    assert (one[1] == seg[0]).all() and (one[2] == seg[1]).all()
    as64 = index.range_search(queries.astype(np.float64), radius, 2)
    wide = np.zeros((queries.shape[0], 2 * D), dtype=np.float32)
    wide[:, ::2] = queries
    strided = index.range_search(wide[:, ::2], radius, 2)
    fortran = index.range_search(np.asfortranarray(queries), radius, 2)
    for got in (as64, strided, fortran):
        for a, b in zip(got, ref):
            assert a.dtype == b.dtype and (a == b).all()


@pytest.mark.parametrize("bad,exc,match", [
    (float("nan"), ValueError, r"radius must be finite; got nan"),
    (float("inf"), ValueError, r"radius must be finite; got inf"),
    (-np.inf, ValueError, r"radius must be finite; got -inf"),
    ("1.0", TypeError, r"radius must be a real number .*got '1.0' of type str"),
    (None, TypeError, r"radius must be a real number .*got None"),
    (True, TypeError, r"radius must be a real number .*got True"),
    (1 + 2j, TypeError, r"radius must be a real number"),
])
def test_radius_errors(bad, exc, match, built, queries):
    index, _, _ = built("flat-l2")
    with pytest.raises(exc, match=match):
        index.range_search(queries, bad, 2)


def test_radius_numpy_scalars_and_ints(built, queries):
    index, _, _ = built("flat-l2")
    ref = index.range_search(queries, 20.0, 2)
    for r in (np.float32(20.0), np.float64(20.0), 20, np.int64(20)):
        got = index.range_search(queries, r, 2)
        assert all((a == b).all() for a, b in zip(got, ref))


@pytest.mark.parametrize("nprobe,exc,match", [
    (0, ValueError, "nprobe must be >= 1; got 0"),
    (1.5, TypeError, "nprobe must be an integer"),
])
def test_nprobe_errors(nprobe, exc, match, built, queries):
    index, _, _ = built("flat-l2")
    with pytest.raises(exc, match=match):
        index.range_search(queries, 1.0, nprobe)


def test_query_errors(built):
    index, _, _ = built("pq8-l2")
    with pytest.raises(ValueError, match="q has 3 features, but IVFPQ"):
        index.range_search(np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="q contains NaN or infinity"):
        index.range_search(np.full(D, np.nan), 1.0)


@pytest.mark.parametrize("name", ["flat-ip", "pq8-l2", "pq4-refine-l2", "pq4-l2"])
def test_removed_ids_never_returned(name, built, queries):
    index, _, ids = built(name)
    index = copy.deepcopy(index)
    gone = np.random.default_rng(11).choice(ids, size=N // 3, replace=False)
    assert index.remove(gone) == gone.size
    radius = 1e30 if index.metric == "l2" else -1e30
    lims, Dr, Ir = index.range_search(queries, radius, nprobe=NLIST)
    assert not np.isin(Ir, gone).any()
    for _, i in _segments(lims, Dr, Ir):
        assert sorted(i.tolist()) == sorted(set(ids.tolist()) - set(gone.tolist()))
    qp = _prep(index, queries)
    probes = _probes(index, qp, 3)
    oracle = _oracle(index, qp, probes)
    radius = _quantile_radius(index, oracle, 0.1)
    _check(index, *index.range_search(queries, radius, 3), oracle, radius)


@pytest.mark.parametrize("name", ["flat-l2", "pq4-l2"])
def test_memory_mapped_index(name, built, queries, tmp_path):
    """A loaded index served from a read-only memory map gives the same results."""
    index, _, _ = built(name)
    path = tmp_path / "index.nivf"
    index.save(path)
    loaded = numba_ivf.load(path, mmap=True)
    big = 1e30 if index.metric == "l2" else -1e30
    for radius in (big, 60.0):
        got = loaded.range_search(queries, radius, 3)
        want = index.range_search(queries, radius, 3)
        assert all((a == b).all() for a, b in zip(got, want))


# -- filters (row bits built here from a mask over arena rows) ---------------------------

def _row_bits(index, row_masks):
    """fbits (nf, nw) uint32, fcount (nf, nlist) int64 of boolean masks over arena rows
    (``_bits`` contract: a bit per live allowed row)."""
    L = index._lists
    cap = L.ids.shape[0]
    live = np.zeros(cap, dtype=bool)
    for lst in range(index.nlist):
        live[L.starts[lst]:L.starts[lst] + L.sizes[lst]] = True
    nw = -(-cap // 32)
    fbits = np.zeros((len(row_masks), nw), dtype=np.uint32)
    fcount = np.zeros((len(row_masks), index.nlist), dtype=np.int64)
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    for f, mask in enumerate(row_masks):
        allowed = np.zeros(nw * 32, dtype=bool)
        allowed[:cap] = live & mask
        fbits[f] = (allowed.reshape(nw, 32) * weights).sum(1).astype(np.uint32)
        for lst in range(index.nlist):
            s = int(L.starts[lst])
            fcount[f, lst] = allowed[s:s + int(L.sizes[lst])].sum()
    return fbits, fcount


def _run_filtered(index, queries, radius, nprobe, fbits, fcount, fslot):
    qp = _prep(index, queries)
    scores, probes = index._coarse(qp, nprobe)
    return _range.scan(index, qp, radius, scores, probes, (fbits, fcount, fslot))


@pytest.mark.parametrize("name", ["flat-l2", "flat-cosine", "pq8-ip", "pq4-l2",
                                  "pq4-refine-l2"])
def test_filter_all_true_equals_unfiltered(name, built, queries):
    index, _, _ = built(name)
    qp = _prep(index, queries)
    radius = _quantile_radius(index, _oracle(index, qp, _probes(index, qp, 3)), 0.1)
    ref = index.range_search(queries, radius, 3)
    cap = index._lists.ids.shape[0]
    fbits, fcount = _row_bits(index, [np.ones(cap, dtype=bool)])
    got = _run_filtered(index, queries, radius, 3, fbits, fcount,
                        np.zeros(queries.shape[0], dtype=np.int64))
    assert all((a == b).all() for a, b in zip(got, ref))


@pytest.mark.parametrize("name", ["flat-l2", "flat-ip", "pq8-l2", "pq4-l2",
                                  "pq4-cosine-noresidual", "pq4-refine-l2"])
@pytest.mark.parametrize("frac", [0.5, 0.05])
def test_filter_drops_disallowed_ids(name, frac, built, queries):
    """Per-query filters (two filter rows, alternating): the unfiltered result with the
    disallowed ids dropped, in the same order; the oracle agrees."""
    index, _, _ = built(name)
    L = index._lists
    rng = np.random.default_rng(int(frac * 100))
    masks = [rng.random(L.ids.shape[0]) < frac for _ in range(2)]
    masks[1][:L.ids.shape[0] // 2] = False    # a filter with empty lists (fcount 0)
    fbits, fcount = _row_bits(index, masks)
    assert (fcount == 0).any()
    fslot = np.arange(queries.shape[0], dtype=np.int64) % 2
    radius = 1e30 if index.metric == "l2" else -1e30
    ref = index.range_search(queries, radius, 3)
    got = _run_filtered(index, queries, radius, 3, fbits, fcount, fslot)
    qp = _prep(index, queries)
    probes = _probes(index, qp, 3)
    for qi, ((dr, ir), (dg, ig)) in enumerate(zip(_segments(*ref), _segments(*got))):
        ok = set(L.ids[masks[fslot[qi]]].tolist())
        keep = np.array([int(i) in ok for i in ir], dtype=bool)
        assert (ig == ir[keep]).all() and (dg == dr[keep]).all()
        allowed = {int(i) for i in ok}
        oracle = _oracle(index, qp[qi:qi + 1], probes[qi:qi + 1], allowed)
        r = _quantile_radius(index, oracle, 0.3) if oracle[0] else radius
        one = _range.scan(index, qp[qi:qi + 1], r, *index._coarse(qp[qi:qi + 1], 3),
                          (fbits, fcount, fslot[qi:qi + 1]))
        _check(index, *one, oracle, r)


def _assert_dropped(ref, got, allowed_of):
    """``got`` is ``ref`` with the ids that ``allowed_of(qi)`` (a bool array over ids)
    disallows dropped, in the same order and with the same distances."""
    for qi, ((dr, ir), (dg, ig)) in enumerate(zip(_segments(*ref), _segments(*got))):
        keep = allowed_of(qi)[ir]
        assert (ig == ir[keep]).all() and (dg == dr[keep]).all()


@pytest.mark.parametrize("name", ["flat-l2", "pq8-ip", "pq4-refine-l2"])
def test_public_filter_argument(name, built, queries):
    """Through ``filter=``: a mask over ids, allowed ids, an IDFilter, per-query masks."""
    index, _, ids = built(name)
    radius = 1e30 if index.metric == "l2" else -1e30
    mask = np.zeros(int(ids.max()) + 1, dtype=bool)
    mask[ids[::3]] = True
    ref = index.range_search(queries, radius, 3)
    _assert_dropped(ref, index.range_search(queries, radius, 3, filter=mask),
                    lambda qi: mask)
    _assert_dropped(ref, index.range_search(queries, radius, 3, filter=ids[::3]),
                    lambda qi: mask)
    flt = numba_ivf.IDFilter.range(0, int(ids[N // 2])) & ~numba_ivf.IDFilter(ids[::5])
    allowed = flt.allows(np.arange(mask.shape[0]))
    _assert_dropped(ref, index.range_search(queries, radius, 3, filter=flt),
                    lambda qi: allowed)
    rng = np.random.default_rng(3)
    rows = rng.random((queries.shape[0], mask.shape[0])) < 0.3
    _assert_dropped(ref, index.range_search(queries, radius, 3, filter=rows),
                    lambda qi: rows[qi])
    every = index.range_search(queries, radius, 3, filter=np.ones(mask.shape, bool))
    assert all((a == b).all() for a, b in zip(every, ref))
    none = index.range_search(queries, radius, 3, filter=np.zeros(mask.shape, bool))
    assert none[0].tolist() == [0] * (queries.shape[0] + 1) and none[1].shape == (0,)


def test_filter_errors(built, queries):
    index, _, _ = built("flat-l2")
    with pytest.raises(TypeError, match="filter must be None"):
        index.range_search(queries, 1.0, 2, filter="abc")
    with pytest.raises(ValueError, match="one row per query"):
        index.range_search(queries, 1.0, 2, filter=np.ones((3, 10), dtype=bool))
    with pytest.raises(ValueError, match="one filter per query"):
        index.range_search(queries, 1.0, 2, filter=[np.ones(10, bool)] * 2)


def test_chunked_buffers_and_bitmaps(built, queries, monkeypatch):
    """Buffers bounded to one query per kernel call, per-query bitmaps to one query per
    prepare: the same results."""
    from numba_ivf.kernels.scan import range_scan
    index, _, ids = built("pq8-l2")
    rows = np.random.default_rng(4).random((queries.shape[0], int(ids.max()) + 1)) < 0.5
    qp = _prep(index, queries)
    r = _quantile_radius(index, _oracle(index, qp, _probes(index, qp, 3)), 0.2)
    ref = index.range_search(queries, r, 3)
    ref_f = index.range_search(queries, r, 3, filter=rows)
    monkeypatch.setattr(range_scan, "RANGE_BUFFER_MAX_BYTES", 1)
    monkeypatch.setattr(_range, "FILTER_BITMAP_MAX_BYTES", 1)
    for got, want in ((index.range_search(queries, r, 3), ref),
                      (index.range_search(queries, r, 3, filter=rows), ref_f)):
        assert all((a == b).all() for a, b in zip(got, want))
    assert ref[0][-1] > ref_f[0][-1] > 0
