"""KMeans: Lloyd invariants, blob recovery, empty clusters, FAISS parity, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numba_ivf
from numba_ivf.kernels.assign.kmeans_update import centroid_sums, update_min_sqdist


def test_centroid_sums_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1001, 7)).astype(np.float32)
    labels = rng.integers(0, 13, size=1001).astype(np.int64)
    for chunks in (1, 3, 64, 5000):
        sums, counts = centroid_sums(x, labels, 13, chunks)
        ref = np.zeros((13, 7))
        np.add.at(ref, labels, x.astype(np.float64))
        np.testing.assert_allclose(sums, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(counts, np.bincount(labels, minlength=13))


def test_update_min_sqdist_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    m = np.full(300, np.inf)
    c1, c2 = x[3].astype(np.float64), x[50].astype(np.float64)
    update_min_sqdist(x, c1, m, 4)
    total = update_min_sqdist(x, c2, m, 4)
    x64 = x.astype(np.float64)
    ref = np.minimum(((x64 - c1) ** 2).sum(1), ((x64 - c2) ** 2).sum(1))
    np.testing.assert_allclose(m, ref, rtol=1e-12)
    assert total == pytest.approx(ref.sum(), rel=1e-12)


@pytest.mark.parametrize("variant", ["tiled", "monolithic", "scalar"])
def test_objective_never_increases(variant):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((800, 6)).astype(np.float32)
    km = numba_ivf.KMeans(12, n_iter=15, seed=3, variant=variant, early_stop=False).fit(x)
    obj = np.array(km.objective)
    assert len(obj) == km.n_iter_ == 15
    assert np.all(np.diff(obj) <= 1e-6 * obj[0]), obj


def test_ip_objective_never_decreases():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    km = numba_ivf.KMeans(10, n_iter=12, metric="ip", spherical=True, seed=0).fit(x)
    obj = np.array(km.objective)
    assert np.all(np.diff(obj) >= -1e-6 * abs(obj[0])), obj
    np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_blobs_are_recovered(blobs, init):
    x, centres = blobs
    km = numba_ivf.KMeans(5, n_iter=20, init=init, seed=0).fit(x)
    # Every true centre has a fitted centroid within a fraction of the blob spread.
    d = np.linalg.norm(centres[:, None, :] - km.centroids[None], axis=2)
    assert np.all(d.min(axis=1) < 1.0), d.min(axis=1)
    labels = km.predict(x)
    truth = np.repeat(np.arange(5), 200)
    for b in range(5):
        assert len(np.unique(labels[truth == b])) == 1


def test_duplicate_rows_still_give_k_distinct_centroids():
    rng = np.random.default_rng(5)
    distinct = rng.standard_normal((6, 4)).astype(np.float32)
    distinct[0] = 0.0  # a zero row: a multiplicative nudge alone would not separate it
    x = np.repeat(distinct, 40, axis=0)
    km = numba_ivf.KMeans(15, n_iter=10, seed=1).fit(x)
    assert km.n_split_ > 0
    assert len(np.unique(km.centroids, axis=0)) == 15
    assert np.all(np.isfinite(km.centroids))


def test_same_seed_same_centroids_and_different_seed_differs():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((700, 9))
    a = numba_ivf.KMeans(10, n_iter=8, seed=42).fit(x).centroids
    b = numba_ivf.KMeans(10, n_iter=8, seed=42).fit(x).centroids
    c = numba_ivf.KMeans(10, n_iter=8, seed=43).fit(x).centroids
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_float64_fortran_and_strided_input_give_same_result():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 10))
    ref = numba_ivf.KMeans(6, n_iter=5, seed=0).fit(x.astype(np.float32)).centroids
    for view in (x, np.asfortranarray(x)):
        np.testing.assert_array_equal(numba_ivf.KMeans(6, n_iter=5, seed=0).fit(view).centroids, ref)
    big = np.zeros((800, 20))
    big[::2, ::2] = x
    got = numba_ivf.KMeans(6, n_iter=5, seed=0).fit(big[::2, ::2]).centroids
    np.testing.assert_array_equal(got, ref)


def test_subsampling_warns_and_uses_the_cap():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3000, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="sampling 400 of 3000 training rows"):
        km = numba_ivf.KMeans(4, n_iter=3, max_points_per_centroid=100).fit(x)
    assert km.centroids.shape == (4, 4)


def test_cosine_is_spherical():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((500, 6)) * rng.uniform(0.1, 10, size=(500, 1))
    km = numba_ivf.KMeans(7, n_iter=6, metric="cosine").fit(x)
    np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1.0, rtol=1e-5)
    labels = km.predict(x)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(labels, np.argmax(xn @ km.centroids.T, axis=1))


def test_variants_agree_on_separated_data(blobs):
    x, _ = blobs
    init = x[[0, 200, 400, 600, 800]]
    cents = [numba_ivf.KMeans(5, n_iter=5, variant=v).fit(x, init_centroids=init).centroids
             for v in ("tiled", "monolithic", "scalar")]
    np.testing.assert_allclose(cents[0], cents[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cents[0], cents[2], rtol=1e-5, atol=1e-5)


def test_objective_within_one_percent_of_faiss():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(10)
    centres = rng.standard_normal((40, 16)) * 4
    x = (centres[rng.integers(0, 40, 4000)] + rng.standard_normal((4000, 16))).astype(np.float32)
    init = x[rng.choice(4000, 32, replace=False)]
    ours = numba_ivf.KMeans(32, n_iter=20, max_points_per_centroid=None).fit(x, init_centroids=init)
    fk = faiss.Kmeans(16, 32, niter=20, max_points_per_centroid=10**9, seed=1)
    fk.train(x, init_centroids=init)
    assert ours.objective[-1] == pytest.approx(fk.obj[-1], rel=0.01)
    assert ours.objective[0] == pytest.approx(fk.obj[0], rel=1e-4)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 8))
def test_property_fit_gives_finite_centroids_and_valid_labels(seed, k):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(k, 60))
    x = rng.integers(-2, 3, size=(n, 3)).astype(np.float32)  # many duplicates
    km = numba_ivf.KMeans(k, n_iter=4, seed=seed % 1000).fit(x)
    assert km.centroids.shape == (k, 3) and np.all(np.isfinite(km.centroids))
    labels = km.predict(x)
    assert labels.min() >= 0 and labels.max() < k


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n_clusters=0), ValueError, "n_clusters must be >= 1; got 0"),
    (dict(n_clusters=2.5), TypeError, "n_clusters must be an integer; got 2.5"),
    (dict(n_clusters=2, metric="cos"), ValueError, "metric must be one of .*got 'cos'"),
    (dict(n_clusters=2, variant="gpu"), ValueError, "variant must be one of .*got 'gpu'"),
    (dict(n_clusters=2, init="kmeans++"), ValueError,
     "init must be one of 'random', 'k-means\\+\\+'; got 'kmeans\\+\\+'"),
    (dict(n_clusters=2, n_iter=-1), ValueError, "n_iter must be >= 0; got -1"),
    (dict(n_clusters=2, max_points_per_centroid=0), ValueError,
     "max_points_per_centroid must be >= 1; got 0"),
    (dict(n_clusters=2, spherical="yes"), TypeError, "spherical must be True or False"),
])
def test_bad_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        numba_ivf.KMeans(**kwargs).fit(np.ones((10, 2)))


def test_bad_data_is_rejected_and_fitted_model_unchanged():
    rng = np.random.default_rng(11)
    km = numba_ivf.KMeans(3, n_iter=3).fit(rng.standard_normal((50, 4)))
    before = km.centroids.copy()
    bad = rng.standard_normal((50, 4))
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN or infinity \(first at row 7, column 2"):
        km.fit(bad)
    with pytest.raises(ValueError, match="x has 2 rows, but n_clusters=3"):
        km.fit(np.ones((2, 4)))
    with pytest.raises(ValueError, match="ndim=3"):
        km.fit(np.ones((5, 4, 1)))
    with pytest.raises(ValueError, match=r"x has 5 features, but KMeans fitted on d=4 expects 4"):
        km.predict(np.ones((3, 5)))
    with pytest.raises(ValueError, match="init_centroids has 2 rows, but n_clusters=3"):
        km.fit(np.ones((10, 4)), init_centroids=np.ones((2, 4)))
    np.testing.assert_array_equal(km.centroids, before)


def test_predict_before_fit():
    with pytest.raises(RuntimeError, match="not fitted yet"):
        numba_ivf.KMeans(2).predict(np.ones((3, 2)))


@pytest.mark.parametrize("metric, spherical", [("l2", False), ("cosine", True), ("ip", True)])
def test_bounds_give_lloyds_result(metric, spherical):
    # Hamerly's bounds only skip rows whose assignment is certain: the run must match a
    # plain Lloyd run iteration by iteration.
    rng = np.random.default_rng(12)
    centres = rng.standard_normal((20, 12)) * 3
    x = (centres[rng.integers(0, 20, 3000)] + rng.standard_normal((3000, 12))).astype(np.float32)
    kw = dict(n_iter=12, seed=4, metric=metric, spherical=spherical, early_stop=False)
    fast = numba_ivf.KMeans(20, bounds=True, **kw).fit(x)
    slow = numba_ivf.KMeans(20, bounds=False, **kw).fit(x)
    np.testing.assert_allclose(fast.objective, slow.objective, rtol=1e-5)
    np.testing.assert_allclose(fast.centroids, slow.centroids, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(fast.predict(x), slow.predict(x))
    assert fast.n_recomputed_[0] == 3000 and slow.n_recomputed_ == [3000] * 12
    assert fast.n_recomputed_[-1] < 1500, fast.n_recomputed_  # the bounds do prune


def test_bounds_on_random_data_and_single_cluster():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1500, 30)).astype(np.float32)
    fast = numba_ivf.KMeans(25, n_iter=10, seed=1).fit(x)
    slow = numba_ivf.KMeans(25, n_iter=10, seed=1, bounds=False).fit(x)
    np.testing.assert_allclose(fast.objective, slow.objective, rtol=1e-5)
    one = numba_ivf.KMeans(1, n_iter=3, max_points_per_centroid=None,
                           early_stop=False).fit(x)
    np.testing.assert_allclose(one.centroids[0], x.mean(0), rtol=1e-5, atol=1e-6)
    assert one.n_recomputed_ == [1500, 0, 0]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_early_stop_returns_the_full_runs_centroids(metric):
    # A fixed point is detected, not approximated: the stopped fit has exactly the
    # centroids of the full run, whose later objectives all repeat the last one (up to
    # the rounding of distances that the bounds take from a different kernel).
    rng = np.random.default_rng(21)
    centres = rng.standard_normal((6, 5)) * 8
    x = (centres[rng.integers(0, 6, 900)] + rng.standard_normal((900, 5))).astype(np.float32)
    kw = dict(n_iter=30, seed=2, metric=metric)
    full = numba_ivf.KMeans(6, early_stop=False, **kw).fit(x)
    stop = numba_ivf.KMeans(6, **kw).fit(x)
    assert full.n_iter_ == 30 and 2 <= stop.n_iter_ < 30
    assert len(stop.objective) == stop.n_iter_
    np.testing.assert_array_equal(stop.centroids, full.centroids)
    assert stop.objective == full.objective[:stop.n_iter_]
    np.testing.assert_allclose(full.objective[stop.n_iter_ - 1:], stop.objective[-1],
                               rtol=1e-6)
    with pytest.raises(TypeError, match="early_stop must be True or False; got 1"):
        numba_ivf.KMeans(6, early_stop=1).fit(x)
