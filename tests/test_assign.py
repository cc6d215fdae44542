"""Parity of the tiled and monolithic assignment kernels with the scalar oracle."""

import platform
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numba_ivf
from numba_ivf._config import ASSIGN_RTOL
from numba_ivf.kernels.assign import assign as A
from tests.naive.assign import best_two, tolerance

DIMS = [1, 2, 3, 7, 16, 50, 128, 384, 784]
KS = [1, 2, 17, 256, 1024]


def check_against_oracle(x, c, metric, labels, dist):
    """Labels equal where the oracle's best is clear; near-ties within tolerance."""
    best, best_val, second, scores = best_two(x, c, metric)
    tol = tolerance(x, c, metric, ASSIGN_RTOL)
    rows = np.arange(len(best))
    clear = np.abs(second - best_val) > tol
    np.testing.assert_array_equal(labels[clear], best[clear])
    chosen = scores[rows, labels]
    assert np.all(np.abs(chosen - best_val) <= tol), "a near-tie picked a worse centroid"
    np.testing.assert_array_less(np.abs(dist.astype(np.float64) - best_val), tol + 1e-6)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("k", KS)
def test_variants_match_oracle(d, k):
    rng = np.random.default_rng(1000 * d + k)
    n = 103  # not a multiple of the micro-kernel rows nor of any tile
    x = rng.standard_normal((n, d))  # float64 input
    c = rng.standard_normal((k, d)).astype(np.float32)
    for metric in ("l2", "ip"):
        for variant in ("scalar", "tiled", "monolithic"):
            xin = x if variant != "monolithic" else x.astype(np.float32)
            labels, dist = numba_ivf.assign_nearest(xin, c, metric, variant)
            assert labels.dtype == np.int64 and labels.shape == (n,)
            assert dist.dtype == np.float32 and dist.shape == (n,)
            check_against_oracle(x.astype(np.float32), c, metric, labels, dist)


def test_scalar_oracle_is_exact_on_small_case():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    c = rng.standard_normal((9, 5)).astype(np.float32)
    for metric, l2 in (("l2", True), ("ip", False)):
        labels, dist = A.scalar_argmin_oracle(x, c, l2)
        best, best_val, _, _ = best_two(x, c, metric)
        np.testing.assert_array_equal(labels, best)
        np.testing.assert_allclose(dist, best_val, rtol=1e-12)


def test_many_rows_across_tiles():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5003, 33)).astype(np.float32)
    c = rng.standard_normal((100, 33)).astype(np.float32)
    for metric in ("l2", "ip"):
        labels, dist = numba_ivf.assign_nearest(x, c, metric)
        check_against_oracle(x, c, metric, labels, dist)


@pytest.mark.parametrize("variant", A.VARIANTS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_exact_ties_pick_lowest_index(variant, metric):
    rng = np.random.default_rng(5)
    base = rng.integers(-3, 4, size=(7, 6)).astype(np.float32)
    # Every centroid appears three times (indices i, i+7, i+14): exact ties.
    c = np.concatenate([base, base, base])
    x = rng.integers(-3, 4, size=(301, 6)).astype(np.float32)
    labels, _ = numba_ivf.assign_nearest(x, c, metric, variant)
    best, _, _, _ = best_two(x, c, metric)
    np.testing.assert_array_equal(labels, best)
    assert labels.max() < 7
    # Equidistant distinct centroids: 0 is as far from -1 as from +1.
    labels, dist = numba_ivf.assign_nearest(np.zeros((5, 1)), [[1.0], [-1.0]], "l2",
                                            variant)
    assert labels.tolist() == [0] * 5 and dist.tolist() == [1.0] * 5


def test_cosine_metric_is_ip_on_normalised_rows():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((50, 10))
    c = rng.standard_normal((12, 10))
    labels, sims = numba_ivf.assign_nearest(x, c, "cosine")
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    np.testing.assert_array_equal(labels, np.argmax(xn @ cn.T, axis=1))
    np.testing.assert_allclose(sims, np.max(xn @ cn.T, axis=1), rtol=1e-5)


def test_non_contiguous_and_fortran_input():
    rng = np.random.default_rng(9)
    big = rng.standard_normal((200, 40))
    c = rng.standard_normal((20, 20))
    views = [big[::2, ::2], np.asfortranarray(big[:100, :20]), big[:100, :20].astype(np.float32)]
    for x in views:
        ref = numba_ivf.assign_nearest(np.ascontiguousarray(x, dtype=np.float32), c)
        got = numba_ivf.assign_nearest(x, c)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def test_contiguous_float32_is_not_copied():
    from numba_ivf._validation import check_vectors
    x = np.zeros((4, 3), dtype=np.float32)
    assert check_vectors(x) is x


@pytest.mark.parametrize("p", [1, 3, 17, 33, 40])
def test_coarse_topk_matches_sorted_oracle(p):
    rng = np.random.default_rng(p)
    x = rng.standard_normal((77, 12)).astype(np.float32)
    c = rng.standard_normal((40, 12)).astype(np.float32)
    for metric in ("l2", "ip"):
        dist, idx = numba_ivf.coarse_topk(x, c, p, metric)
        _, _, _, scores = best_two(x, c, metric)
        key = scores if metric == "l2" else -scores
        ref = np.argsort(key, axis=1, kind="stable")[:, :p]
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_allclose(dist, np.take_along_axis(scores, ref, 1),
                                   rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 130), d=st.integers(1, 20), k=st.integers(1, 300),
       p=st.integers(1, 300), seed=st.integers(0, 2**32 - 1), ints=st.booleans(),
       l2=st.booleans())
def test_topk_score_block_equals_sorted_insertion(n, d, k, p, seed, ints, l2):
    # The two top-p workers (score block + cut for p >= ASSIGN_TOPK_SCORES_MIN_P, sorted
    # insertion below) must agree bit for bit, ties (integer data) included.
    from numba_ivf.kernels.assign import assign as A
    p = min(p, k)
    rng = np.random.default_rng(seed)
    if ints:
        x = rng.integers(-2, 3, (n, d)).astype(np.float32)
        c = rng.integers(-2, 3, (k, d)).astype(np.float32)
    else:
        x = rng.standard_normal((n, d)).astype(np.float32)
        c = rng.standard_normal((k, d)).astype(np.float32)
    P = A.prepare_centroids(c, l2)
    s_a, i_a = A.topk_prepared(x, P, p, score_block=False)
    s_b, i_b = A.topk_prepared(x, P, p, score_block=True)
    np.testing.assert_array_equal(i_b, i_a)
    np.testing.assert_array_equal(s_b, s_a)


def test_coarse_topk_clamps_and_orders_ties():
    c = np.array([[1.0], [-1.0], [1.0], [3.0]])
    dist, idx = numba_ivf.coarse_topk(np.zeros((2, 1)), c, 10, "l2")
    assert idx.tolist() == [[0, 1, 2, 3]] * 2
    assert dist.tolist() == [[1.0, 1.0, 1.0, 9.0]] * 2


@given(n=st.integers(1, 60), d=st.integers(1, 20), k=st.integers(1, 40),
       seed=st.integers(0, 2**32 - 1), metric=st.sampled_from(["l2", "ip"]))
def test_property_tiled_matches_oracle(n, d, k, seed, metric):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    c = rng.standard_normal((k, d)).astype(np.float32)
    labels, dist = numba_ivf.assign_nearest(x, c, metric)
    check_against_oracle(x, c, metric, labels, dist)


@given(seed=st.integers(0, 2**32 - 1), extra=st.integers(1, 5))
def test_property_appended_duplicates_never_win(seed, extra):
    # Appending copies of existing centroids creates exact ties that must go to the
    # original (lower) index, so labels cannot change.
    rng = np.random.default_rng(seed)
    x = rng.integers(-5, 6, size=(64, 4)).astype(np.float32)
    c = rng.integers(-5, 6, size=(10, 4)).astype(np.float32)
    before, _ = numba_ivf.assign_nearest(x, c)
    dup = np.concatenate([c, c[rng.integers(0, 10, size=extra)]])
    after, _ = numba_ivf.assign_nearest(x, dup)
    np.testing.assert_array_equal(before, after)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, exc, match", [
    (np.array([[np.nan, 1.0]]), ValueError, "x contains NaN or infinity"),
    (np.array([[np.inf, 1.0]]), ValueError, "x contains NaN or infinity"),
    (np.array([[1e300, 1.0]]), ValueError, "beyond float32"),
    (np.ones(2), ValueError, r"x must be a 2-D array .* ndim=1"),
    (np.ones((2, 2, 2)), ValueError, "ndim=3"),
    (np.ones((2, 3)), ValueError, "x has 3 features, but centroids have 2"),
    (np.array([["a", "b"]]), TypeError, "x must hold real numbers"),
    (np.ones((2, 2), dtype=complex), TypeError, "complex128"),
])
def test_bad_x_is_rejected(bad, exc, match):
    with pytest.raises(exc, match=match):
        numba_ivf.assign_nearest(bad, np.ones((3, 2)))


def test_bad_parameters_are_rejected():
    x = np.ones((4, 2))
    with pytest.raises(ValueError, match=r"metric must be one of 'l2', 'ip', 'cosine'; "
                                         r"got 'L1'"):
        numba_ivf.assign_nearest(x, x, metric="L1")
    with pytest.raises(ValueError, match="variant must be one of .*; got 'fast'"):
        numba_ivf.assign_nearest(x, x, variant="fast")
    with pytest.raises(ValueError, match="centroids must have at least 1 rows; got 0"):
        numba_ivf.assign_nearest(x, np.ones((0, 2)))
    with pytest.raises(ValueError, match="nprobe must be >= 1; got 0"):
        numba_ivf.coarse_topk(x, x, 0)
    with pytest.raises(TypeError, match="nprobe must be an integer; got 1.5"):
        numba_ivf.coarse_topk(x, x, 1.5)


def test_input_is_not_modified():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 5))
    c = rng.standard_normal((4, 5))
    x0, c0 = x.copy(), c.copy()
    numba_ivf.assign_nearest(x, c, "cosine")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(c, c0)


# ----------------------------------------------------------------- machine code
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 asm check")
def test_tiled_inner_loop_is_packed_fma():
    # Cached dispatchers cannot be inspected: compile an uncached twin of the driver.
    from numba import njit
    from numba_ivf._config import FASTMATH
    twin = njit(parallel=True, fastmath=FASTMATH)(A.tiled_argmax.py_func)
    prep = A.prepare_centroids(np.ones((3, 4), np.float32), True)
    twin(np.ones((8, 4), np.float32), prep.panels, prep.bias, True, 24)
    asm = twin.inspect_asm(twin.signatures[0])
    reg = "zmm" if A.ASSIGN_NR == 32 else "ymm"
    packed = re.findall(rf"vfmadd\d+ps\s+[^\n]*{reg}", asm)
    # MR rows x NR/VW vectors of packed FMAs per feature step, nothing scalar.
    assert len(packed) >= A.ASSIGN_MR * 2, asm[:2000]


def test_import_compiles_nothing():
    code = ("import sys, numba_ivf; assert 'numba' not in sys.modules, 'numba imported'; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
