"""Batched PQ training (kernels/encode/pq_train) against its oracle: one KMeans per
sub-space with the seeds ProductQuantizer.train draws (method="per_subspace").

The batched kernel repeats KMeans's arithmetic (same float32 assignment micro-kernel,
same float64 update order, same generator draws for init rows and splits), so the
codebooks are compared for exact equality, and so are the training set's codes.
"""

import contextlib
import io

import numpy as np
import pytest

import numba_ivf
from numba_ivf.kmeans import KMeans


def _train(x, d, m, nbits, method, **kw):
    pq = numba_ivf.ProductQuantizer(d, m, nbits)
    pq.train(x, method=method, **kw)
    return pq


def _assert_same(x, d, m, nbits, **kw):
    a = _train(x, d, m, nbits, "batched", **kw)
    b = _train(x, d, m, nbits, "per_subspace", **kw)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    return a


def _n_split(x, d, m, nbits, j, n_iter, seed=1234):
    """Empty clusters KMeans splits in sub-space j under train's seeding."""
    rng = np.random.default_rng(seed)
    seeds = [int(rng.integers(2**31)) for _ in range(m)]
    dsub = d // m
    sub = np.ascontiguousarray(x[:, j * dsub:(j + 1) * dsub], dtype=np.float32)
    km = KMeans(2**nbits, n_iter=n_iter, seed=seeds[j], max_points_per_centroid=None,
                bounds=False)
    return km._fit_validated(sub).n_split_


@pytest.mark.parametrize("nbits", [4, 8])
@pytest.mark.parametrize("dsub", [1, 2, 3, 8])
def test_batched_equals_per_subspace(nbits, dsub):
    rng = np.random.default_rng(100 + 10 * nbits + dsub)
    m = 3
    n = 3 * 2**nbits + 17
    # Clustered rows (a few blobs), so that clusters move and some iterations split.
    centers = rng.standard_normal((5, m * dsub)) * 3
    x = (centers[rng.integers(5, size=n)] + rng.standard_normal((n, m * dsub)))
    _assert_same(x.astype(np.float32), m * dsub, m, nbits, n_iter=12)


@pytest.mark.parametrize("nbits", [4, 8])
def test_duplicate_rows_force_splits(nbits):
    rng = np.random.default_rng(7 + nbits)
    ksub = 2**nbits
    d, m = 6, 3
    # Fewer distinct rows than centroids: the init picks duplicates, and coincident
    # centroids leave the higher-index copies empty (ties go to the lowest index).
    distinct = rng.standard_normal((ksub // 2 + 3, d)).astype(np.float32)
    x = distinct[rng.integers(distinct.shape[0], size=4 * ksub)]
    assert _n_split(x, d, m, nbits, 0, 10) > 0
    _assert_same(x, d, m, nbits, n_iter=10)


@pytest.mark.parametrize("nbits", [4, 8])
def test_n_equals_ksub(nbits):
    rng = np.random.default_rng(20 + nbits)
    ksub = 2**nbits
    x = rng.standard_normal((ksub, 8)).astype(np.float32)
    pq = _assert_same(x, 8, 4, nbits, n_iter=5)
    # Every row is its own centroid: the codes of the training set are a permutation.
    codes = pq.encode(x)
    for j in range(4):
        assert np.unique(codes[:, j]).size == ksub
    # Duplicates with n == ksub: half the clusters start empty and are split.
    x2 = np.repeat(x[: ksub // 2], 2, axis=0)
    assert _n_split(x2, 8, 4, nbits, 0, 5) > 0
    _assert_same(x2, 8, 4, nbits, n_iter=5)


def test_float64_input_and_subsampling():
    rng = np.random.default_rng(31)
    x = rng.standard_normal((1500, 12))
    a = _assert_same(x, 12, 4, 4, n_iter=8, max_points_per_centroid=40)
    b = _train(x.astype(np.float32), 12, 4, 4, "batched", n_iter=8,
               max_points_per_centroid=40)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)


def test_zero_iterations_and_all_zero_rows():
    rng = np.random.default_rng(32)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    a = _assert_same(x, 4, 2, 4, n_iter=0)
    # No iteration: the codebooks are the sorted random init rows.
    r = np.random.default_rng(int(np.random.default_rng(1234).integers(2**31)))
    rows = np.sort(r.choice(200, size=16, replace=False))
    np.testing.assert_array_equal(a.codebooks[0], x[rows, :2])
    # All-zero sub-space: one distinct row, splits nudge by the fallback scale 1.0.
    z = x.copy()
    z[:, :2] = 0.0
    _assert_same(z, 4, 2, 4, n_iter=4)


def test_auto_matches_both_methods_and_thread_count():
    rng = np.random.default_rng(33)
    x = rng.standard_normal((700, 8)).astype(np.float32)
    a = _train(x, 8, 1, 8, "auto", n_iter=6)
    b = _train(x, 8, 1, 8, "per_subspace", n_iter=6)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    with numba_ivf.threads(1):
        c = _train(x, 8, 4, 4, "batched", n_iter=6)
        e = _train(x, 8, 4, 4, "per_subspace", n_iter=6)
    np.testing.assert_array_equal(c.codebooks, e.codebooks)


def test_verbose_reports_every_subspace():
    rng = np.random.default_rng(34)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _train(x, 6, 3, 4, "batched", n_iter=5, verbose=True)
    text = out.getvalue()
    for j in (1, 2, 3):
        assert f"sub-space {j}/3 trained, objective " in text
    assert "iterations" in text and "empty split" in text


def test_non_finite_codebook_raises(monkeypatch):
    # Validated input cannot get here; input that bypassed the checks raises.
    import numba_ivf.pq as pqmod
    x = np.random.default_rng(35).standard_normal((300, 8)).astype(np.float32)
    x[17, 5] = np.nan                      # sub-space 1 of m=2
    monkeypatch.setattr(pqmod, "check_vectors",
                        lambda a, *args, **kw: np.ascontiguousarray(a, np.float32))
    for method in ("batched", "per_subspace"):
        with pytest.raises(FloatingPointError,
                           match=r"codebook of sub-space 1 is not finite \(KMeans: "
                                 r"centroid \d+ became NaN or infinite in iteration 1 "
                                 r"\(x holds NaN"):
            numba_ivf.ProductQuantizer(8, 2, 4).train(x, n_iter=3, method=method)


def test_bad_method_and_n_iter():
    x = np.random.default_rng(36).standard_normal((64, 4)).astype(np.float32)
    pq = numba_ivf.ProductQuantizer(4, 2, 4)
    with pytest.raises(ValueError, match=r"method must be one of 'auto', 'batched', "
                                         r"'per_subspace'; got 'fast'"):
        pq.train(x, method="fast")
    with pytest.raises(ValueError, match=r"n_iter must be >= 0; got -1"):
        pq.train(x, n_iter=-1)
    assert not pq.is_trained


def test_parallel_sized_subspaces_with_splits():
    # 2 n dsub ksub above KMEANS_PARALLEL_MIN_FLOP: KMeans then sums in 2 chunks per
    # thread (not 2), and the batched kernel must add its float64 sums in that order.
    rng = np.random.default_rng(37)
    distinct = rng.standard_normal((200, 16)).astype(np.float32)
    x = distinct[rng.integers(200, size=5000)]
    assert 2.0 * 5000 * 8 * 256 >= numba_ivf._config.KMEANS_PARALLEL_MIN_FLOP
    assert _n_split(x, 16, 2, 8, 0, 6) > 0
    _assert_same(x, 16, 2, 8, n_iter=6)
