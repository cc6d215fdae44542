"""Values whose squares overflow float32 (issue #11, 'Values'): refused at the limit of
``_config`` in train/add/search on every path, accepted just below it with all paths in
agreement; fast-scan LUT quantization safe whatever the values; k-means and PQ training
never return non-finite centroids."""

import math

import numpy as np
import pytest

import numba_ivf
from numba_ivf._validation import FLT_MAX, check_vectors, value_limit
from numba_ivf.kernels.fastscan import fastscan
from numba_ivf.kernels.fastscan import fastscan_search as fs
from numba_ivf.kernels.scan import list_scan
from numba_ivf.kernels.filtering._bits import no_filter
from numba_ivf.kernels.common.topk import ID_SENTINEL
from tests.naive.search import brute_force

D, NLIST, N, K = 8, 4, 400, 5
LIM = value_limit(D)
_f = np.float32(LIM)
BELOW = _f if float(_f) <= LIM else np.nextafter(_f, np.float32(0))   # largest accepted
ABOVE = np.nextafter(BELOW, np.float32(np.inf))                        # smallest refused
REFUSED = f"largest magnitude accepted with {D} features"

KINDS = {
    "flat-l2": lambda: numba_ivf.IVFFlat(D, NLIST, "l2", n_iter=5, seed=0),
    "flat-ip": lambda: numba_ivf.IVFFlat(D, NLIST, "ip", n_iter=5, seed=0),
    "flat-cosine": lambda: numba_ivf.IVFFlat(D, NLIST, "cosine", n_iter=5, seed=0),
    # m=2: sub-vectors of 4 features, whose own KMeans limit is below the residuals'.
    "pq8": lambda: numba_ivf.IVFPQ(D, NLIST, m=2, nbits=8, n_iter=5, seed=0),
    "pq4-refine": lambda: numba_ivf.IVFPQ(D, NLIST, m=4, nbits=4, refine=True, n_iter=5,
                                          seed=0),
    "rabitq4": lambda: numba_ivf.IVFRaBitQ(D, NLIST, bits=4, n_iter=5, seed=0),
    "rabitq2-refine": lambda: numba_ivf.IVFRaBitQ(D, NLIST, bits=2, refine=True, n_iter=5,
                                                  seed=0),
}
PATHS = {"flat": ("batch", "list_major", "single"), "pq": ("batch", "single", "serial"),
         "rabitq": ("batch", "serial")}


def _paths(kind):
    return PATHS[next(p for p in PATHS if kind.startswith(p))]


def _at_limit(seed, n=N):
    """Clustered rows scaled so that the largest magnitude is exactly BELOW."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((12, D)) * 3.0
    x = c[rng.integers(0, 12, n)] + rng.standard_normal((n, D))
    x = np.clip(x / np.abs(x).max() * float(BELOW), -float(BELOW), float(BELOW))
    x = x.astype(np.float32)
    x[0, 0] = BELOW
    x[1, 1] = -BELOW
    return x


X = _at_limit(0)


def _queries():
    q = _at_limit(1, 6)
    q[2, 3] = BELOW
    return q


@pytest.fixture(scope="module", params=list(KINDS))
def built(request):
    idx = KINDS[request.param]()
    idx.train(X)
    idx.add(X)
    return request.param, idx


def _search(idx, q, k, path=None):
    kw = {} if path is None else {"path": path}
    return idx.search(q, k, nprobe=NLIST, **kw)


def _state(idx):
    q = _queries()
    return (len(idx), idx.list_sizes.copy(), np.array(idx.centroids), _search(idx, q, K))


def _assert_same_state(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3][0], b[3][0])
    np.testing.assert_array_equal(a[3][1], b[3][1])


# -- the limit ------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 7, 8, 128, 784, 10**6])
def test_limit_is_the_same_in_python_and_in_the_kernels(d):
    assert value_limit(d) == list_scan.value_limit(d)
    assert value_limit(d) == math.sqrt(FLT_MAX / (32 * d))
    # Every float32 sum the library forms stays finite: 16 d B^2 (see _config) at most.
    assert 16 * d * value_limit(d) ** 2 <= FLT_MAX / 2 * (1 + 1e-12)


def test_check_vectors_limits():
    assert float(BELOW) <= LIM < float(ABOVE)
    ok = np.full((2, D), BELOW, dtype=np.float32)
    assert check_vectors(ok, "x") is ok                  # no copy, accepted
    for bad in (np.full((2, D), ABOVE, dtype=np.float32),
                np.full((2, D), -ABOVE, dtype=np.float32),
                np.full((2, D), 2**62, dtype=np.int64)):   # integers are checked too
        with pytest.raises(ValueError, match=REFUSED) as info:
            check_vectors(bad, "x")
        assert "NaN" not in str(info.value)
        assert "row 0, column 0" in str(info.value)
    # Beyond float32's range is infinity (as documented), NaN is NaN.
    for bad in (np.full((1, D), 1e300), np.full((1, D), np.nan)):
        with pytest.raises(ValueError, match="x contains NaN or infinity"):
            check_vectors(bad, "x")
    # A float64 value just above the limit that rounds to BELOW as float32 is accepted:
    # the check is on the converted values (as in the one-query kernels).
    v = LIM * (1 + 2**-40)
    if np.float32(v) == BELOW and v > LIM:
        assert check_vectors(np.full((1, D), v), "x")[0, 0] == BELOW


# -- just below the limit: every path works and agrees ---------------------------------

def test_training_at_the_limit_is_finite(built):
    kind, idx = built
    assert np.isfinite(idx.centroids).all()
    if kind.startswith("pq"):
        assert np.isfinite(idx.pq.codebooks).all()


def test_below_limit_all_paths_agree(built):
    kind, idx = built
    q = _queries()
    ref_d, ref_i = _search(idx, q, K)
    assert np.isfinite(ref_d).all()
    for row in ref_i:
        assert (row >= 0).all() and len(set(row.tolist())) == K
    for path in _paths(kind):
        d_, i_ = _search(idx, q, K, path)
        np.testing.assert_array_equal(i_, ref_i, err_msg=path)
        np.testing.assert_allclose(d_, ref_d, rtol=1e-5, err_msg=path)
    if kind.startswith("flat"):                              # exact search
        od, oi = brute_force(X, np.arange(N), q, K, idx.metric)
        np.testing.assert_array_equal(ref_i, oi)
        np.testing.assert_allclose(ref_d, od, rtol=1e-4)
    if kind in ("pq4-refine", "rabitq2-refine"):             # exact re-ranked distances
        exact = ((q[:, None, :].astype(np.float64) - X[ref_i]) ** 2).sum(-1)
        np.testing.assert_allclose(ref_d, exact, rtol=1e-4)
    for i in range(q.shape[0]):
        one_d, one_i = _search(idx, q[i], K)                  # one-query fast path
        for other in [_search(idx, q[i], np.int64(K)),        # general path
                      _search(idx, q[i:i + 1].astype(np.float64), K)] + \
                     [_search(idx, q[i:i + 1], K, p) for p in _paths(kind)]:
            np.testing.assert_array_equal(other[1], one_i)
            np.testing.assert_allclose(other[0], one_d, rtol=1e-5)
        np.testing.assert_array_equal(one_i[0], ref_i[i])


# -- just above: refused everywhere, with the message, the index unchanged -------------

def _refused_queries():
    q = _queries()
    a = q.copy()
    a[3, 4] = ABOVE
    b = q.copy()
    b[0, 7] = -ABOVE
    return a, b


def test_above_limit_search_refused_on_every_path(built):
    kind, idx = built
    before = _state(idx)
    for bad in _refused_queries():
        row = bad[3] if bad[3, 4] == ABOVE else bad[0]
        calls = [lambda: _search(idx, bad, K), lambda: _search(idx, row, K),
                 lambda: _search(idx, row, np.int64(3)),
                 lambda: _search(idx, row[None], K),
                 lambda: _search(idx, row.astype(np.float64), K),
                 lambda: _search(idx, bad, np.int64(3))]
        calls += [lambda p=p: _search(idx, bad, K, p) for p in _paths(kind)]
        calls += [lambda p=p: _search(idx, row, np.int64(3), p) for p in _paths(kind)]
        for call in calls:
            with pytest.raises(ValueError, match=REFUSED) as info:
                call()
            assert "q holds" in str(info.value) and "NaN" not in str(info.value)
    _assert_same_state(before, _state(idx))


def test_nan_and_inf_keep_their_message(built):
    kind, idx = built
    for v in (np.nan, np.inf):
        q = _queries()
        q[1, 2] = v
        for call in (lambda: _search(idx, q, K), lambda: _search(idx, q[1], K),
                     lambda: _search(idx, q[1], np.int64(K), _paths(kind)[-1])):
            with pytest.raises(ValueError, match="q contains NaN or infinity"):
                call()


def test_above_limit_add_and_train_refused_index_unchanged(built):
    kind, idx = built
    before = _state(idx)
    bad = _at_limit(5, 20)
    bad[7, 2] = ABOVE
    with pytest.raises(ValueError, match="x holds .* " + REFUSED):
        idx.add(bad)
    with pytest.raises(ValueError, match=REFUSED):
        idx.add(bad, ids=np.arange(10_000, 10_020))
    with pytest.raises(ValueError, match=REFUSED):
        idx.train(np.concatenate([X, bad]))
    _assert_same_state(before, _state(idx))
    fresh = KINDS[kind]()
    with pytest.raises(ValueError, match=REFUSED):
        fresh.train(np.concatenate([X, bad]))
    assert not fresh.is_trained


def test_save_load_at_the_limit(built, tmp_path):
    kind, idx = built
    path = tmp_path / f"{kind}.nivf"
    idx.save(path)
    back = numba_ivf.load(path)
    q = _queries()
    for a, b in zip(_search(idx, q, K), _search(back, q, K)):
        np.testing.assert_array_equal(a, b)


# -- the reports --------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: numba_ivf.IVFFlat(16, 4),
                                  lambda: numba_ivf.IVFPQ(16, 4, m=8, nbits=8),
                                  lambda: numba_ivf.KMeans(4)])
def test_huge_finite_training_data_refused(make):
    x = (np.random.default_rng(0).standard_normal((600, 16)) * 1e20).astype(np.float32)
    model = make()
    fit = model.fit if isinstance(model, numba_ivf.KMeans) else model.train
    with pytest.raises(ValueError, match="x holds .* largest magnitude accepted with 16 "
                                         "features is 8.15239e"):
        fit(x)


@pytest.fixture(scope="module")
def fastscan_indexes():
    x = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    out = []
    for refine in (False, True):
        idx = numba_ivf.IVFPQ(16, 4, m=8, nbits=4, refine=refine, n_iter=5, seed=0)
        idx.train(x)
        idx.add(x)
        out.append(idx)
    return out


def test_4bit_query_of_3e38_refused_on_every_path(fastscan_indexes, monkeypatch):
    # Used to segfault (path="single"; "auto" with k=np.int64 over long lists) or raise
    # ZeroDivisionError / SystemError.
    import numba_ivf.ivf.pq as ivfpq
    monkeypatch.setattr(ivfpq, "PQ_SINGLE_MIN_ROWS", 0)   # "auto" -> "single" for 1 query
    q = np.full((1, 16), 3e38, dtype=np.float32)
    for idx in fastscan_indexes:
        for k in (3, np.int64(3)):
            for path in ("auto", "batch", "single", "serial"):
                with pytest.raises(ValueError, match="largest magnitude accepted"):
                    idx.search(q, k, nprobe=4, path=path)
            with pytest.raises(ValueError, match="largest magnitude accepted"):
                idx.search(q[0], k, nprobe=4)


# -- fast-scan kernels: safe whatever the values (no validation in front) ---------------

def test_fastscan_scans_survive_any_values(fastscan_indexes):
    for idx in fastscan_indexes:
        L = idx._lists
        valid = {int(ID_SENTINEL)}
        for lst in range(idx.nlist):
            s0 = int(L.starts[lst])
            valid |= set(L.ids[s0:s0 + int(L.sizes[lst])].tolist())
        probes = np.tile(np.arange(4, dtype=np.int64), (2, 1))
        for val in (3e38, -3e38, np.inf, np.nan):
            q = np.full((2, 16), val, dtype=np.float32)
            q[1, ::2] = 1.0
            for base_val in (0.0, 3e38, np.inf, np.nan):
                base, kind, term, use_term = idx._table_spec(
                    np.full((2, 4), base_val, dtype=np.float32))
                for fn, extra in ((fs.fastscan_single, (3,)), (fs.fastscan_batch, ()),
                                  (fs.fastscan_serial, ())):
                    keys = np.empty((2, 5), np.float32)
                    ids = np.empty((2, 5), np.int64)
                    rows = np.empty((2, 5), np.int64)
                    fn(L.payload["codes"], L.ids, L.starts, L.sizes, probes,
                       *no_filter(), base, q, idx.pq.codebooks_t, kind, term, use_term,
                       keys, ids, rows, True, fastscan.BACKEND, *extra)
                    assert set(ids.ravel().tolist()) <= valid


def test_shared_scale_always_positive_and_finite():
    assert fs.shared_scale(0.0, 0.0, 8) == 1.0
    assert fs.shared_scale(np.inf, np.inf, 8) == 1.0
    assert fs.shared_scale(np.nan, np.nan, 8) == 1.0
    s = fs.shared_scale(2 * FLT_MAX, 4096 * 2 * FLT_MAX, 4096)   # widest finite spans
    assert 0.0 < s < np.inf and np.float32(s) == s


def test_quantize_lut_degenerate_tables():
    # All entries equal: exact, zero entries, scale 1.
    u8, bias, scale = fastscan.quantize_lut(np.full((5, 16), 7.0, dtype=np.float32))
    assert (u8 == 0).all() and bias == 35.0 and scale == 1.0
    # Spans near 2 * FLT_MAX: in range, the uint16 bound holds.
    lut = np.tile(np.linspace(-3e38, 3e38, 16, dtype=np.float32), (9, 1))
    u8, bias, scale = fastscan.quantize_lut(lut)
    assert 0.0 < scale < np.inf
    assert int(u8.max(axis=1).astype(np.int64).sum()) <= 65535
    # NaN / inf tables (refused by quantize_lut, fed to the kernel directly): defined
    # entries (clamped: NaN -> 255) and a usable scale, for the IR (float32) and the
    # loop (float64) conversions.
    for dtype in (np.float32, np.float64):
        for v in (np.nan, np.inf):
            out = np.empty((6, 16), dtype=np.uint8)
            bias, scale = fastscan.quantize_lut_into(np.full((5, 16), v, dtype=dtype), out)
            assert scale == 1.0
            assert (out[:5] == 255).all() and (out[5] == 0).all()
    with pytest.raises(ValueError, match="lut contains NaN or infinity"):
        fastscan.quantize_lut(np.full((2, 16), np.inf))


def test_pair_quantization_clamps_overflowing_entries():
    # x - lo overflows float32 to inf: clamped to 255 (an unclamped fptosi gave 0).
    qlut = np.tile(np.array([-3e38, 3e38] * 8, dtype=np.float32), (4, 1))
    term = np.zeros((4, 16), dtype=np.float32)
    lo = np.full(4, -3e38, dtype=np.float32)
    out = np.zeros((4, 16), dtype=np.uint8)
    fs._quantize_pair(qlut, term, lo, 1e-36, out)
    assert (out[:, 1::2] == 255).all() and (out[:, 0::2] == 0).all()
    fs._quantize_pair(np.full((4, 16), np.nan, dtype=np.float32), term, lo, 1.0, out)
    assert (out == 255).all()


# -- k-means and PQ training -----------------------------------------------------------

def test_kmeans_splits_at_the_limit_stay_finite():
    # Many rows at the limit overflow the float32 sum of squares of the split scale;
    # the splits (3 distinct rows, 8 clusters) were infinite.
    rng = np.random.default_rng(3)
    base = rng.standard_normal((3, D))
    base = (base / np.abs(base).max() * float(BELOW) * 0.99).astype(np.float32)
    x = np.repeat(base, 600, axis=0)
    km = numba_ivf.KMeans(8, n_iter=4, seed=0).fit(x)
    assert km.n_split_ > 0 and np.isfinite(km.centroids).all()


def test_kmeans_and_pq_raise_on_non_finite_centroids(monkeypatch):
    # Validated input cannot get here; input that bypassed the checks raises instead of
    # being returned (or saved in an index).
    x = np.random.default_rng(0).standard_normal((300, D)).astype(np.float32)
    x[17, 3] = np.nan
    with pytest.raises(FloatingPointError, match=r"centroid \d+ became NaN or infinite in "
                                                  r"iteration 1 \(x holds NaN"):
        numba_ivf.KMeans(4, n_iter=3, seed=0)._fit_validated(x)
    import numba_ivf.pq as pqmod
    monkeypatch.setattr(pqmod, "check_vectors",
                        lambda a, *args, **kw: np.ascontiguousarray(a, np.float32))
    with pytest.raises(FloatingPointError, match="codebook of sub-space 0 is not finite"):
        numba_ivf.ProductQuantizer(D, 2, 4).train(x, n_iter=3)


def test_pq_accepts_residuals_of_accepted_vectors():
    pq = numba_ivf.ProductQuantizer(D, 2, 4)
    x = _at_limit(2) * np.float32(2.0)      # residuals x - c reach twice the limit
    pq.train(x, n_iter=3)
    assert np.isfinite(pq.codebooks).all()
    assert np.isfinite(pq.distance_tables(x[:3])).all()
    bad = x[:3].copy()
    bad[1, 1] = np.nextafter(np.float32(2 * LIM), np.float32(np.inf))
    with pytest.raises(ValueError, match="x holds .* " + REFUSED):
        pq.encode(bad)
