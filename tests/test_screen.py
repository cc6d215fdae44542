"""The int8-screened top-p (kernels.assign.screen) against the float64 oracle.

The screen must return exactly the oracle's top p (ties to the lower index) whatever
the data: its intervals are a proof, not a heuristic, so ids are compared exactly.
"""

import platform

import numpy as np
import pytest

from numba_ivf.kernels.assign import assign as A
from numba_ivf.kernels.assign import screen as S
from numba_ivf.kernels.assign._i8kernel import dot_block_portable, has_vnni
from numba_ivf._config import SCREEN_MR, SCREEN_NR
from tests.naive.assign import int8_codes, screen_bound, topk_exact

KERNELS = [k for k in S.KERNELS if k in S._DRIVERS]
CASES = [  # n, k, d, l2, p
    (1, 1, 1, True, 1),
    (37, 5, 3, True, 5),          # p = k, d < 4
    (103, 37, 13, True, 5),       # d not a multiple of 4, k not of NR
    (103, 300, 64, False, 32),
    (50, 70, 130, True, 1),
    (33, 33, 8, False, 33),
    (9, 65, 384, False, 64),
]


def _data(n, k, d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    c = (rng.standard_normal((k, d)) * scale).astype(np.float32)
    return x, c


def _check(x, c, l2, p, kernel):
    got_s, got_i = S.screened_topk(x, S.prepare_screen(c, l2), p, kernel)
    ref_s, ref_i = topk_exact(x, c, l2, p)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-6, atol=1e-6 * (1 + np.abs(ref_s).max()))
    return got_s, got_i


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n, k, d, l2, p", CASES)
def test_screened_topk_equals_oracle(n, k, d, l2, p, kernel):
    x, c = _data(n, k, d, seed=n * 1000 + k + d)
    _check(x, c, l2, p, kernel)


@pytest.mark.parametrize("kernel", KERNELS)
def test_exact_ties_go_to_the_lower_index(kernel):
    # Duplicate centroids and integer data: many scores tie exactly.
    rng = np.random.default_rng(3)
    c = rng.integers(-3, 4, (40, 12)).astype(np.float32)
    c = np.concatenate([c, c[::-1], c[:7]])
    x = rng.integers(-3, 4, (70, 12)).astype(np.float32)
    for l2 in (True, False):
        for p in (1, 2, 9, 40):
            _check(x, c, l2, p, kernel)


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_rows_constant_rows_and_large_values(kernel):
    x, c = _data(40, 50, 20, seed=5)
    x[0] = 0.0                    # scale 0: every code 0, the interval is exact
    x[1] = 3.0                    # constant row
    c[3] = 0.0
    _check(x, c, True, 7, kernel)
    _check(x, c, False, 7, kernel)
    big = 1e15                    # well inside the value limit at d=20
    _check(x * big, c * big, True, 4, kernel)
    for tiny in (1e-19, 1e-20, 1e-30):   # products near and below float32's normals
        _check(x * tiny, c * tiny, False, 4, kernel)
        _check(x * tiny, c * tiny, True, 4, kernel)


def test_bound_holds_for_every_pair():
    for seed, scale in ((0, 1.0), (1, 1e-3), (2, 1e6)):
        x, c = _data(64, 100, 50, seed, scale)
        approx, bound = screen_bound(x, c)
        exact = x.astype(np.float64) @ c.astype(np.float64).T
        assert np.all(np.abs(exact - approx) <= bound)


def test_quantize_row_codes_offsets_and_padding():
    rng = np.random.default_rng(7)
    v = rng.standard_normal((5, 10)).astype(np.float32)
    want, s_want = int8_codes(v)
    for offset, dtype in ((128, np.uint8), (0, np.int8)):
        for i in range(5):
            out = np.full(12, 99, dtype=dtype)
            s, r, h, n2 = S.quantize_row(v[i], out, offset)
            np.testing.assert_array_equal(out[:10].astype(np.int64) - offset, want[i])
            assert np.all(out[10:].astype(np.int64) == offset)
            assert s == pytest.approx(s_want[i], rel=1e-15)
            v64 = v[i].astype(np.float64)
            assert r == pytest.approx(np.linalg.norm(v64 - s * want[i]), rel=1e-12)
            assert h == pytest.approx(np.linalg.norm(s * want[i]), rel=1e-12)
            assert n2 == pytest.approx(v64 @ v64, rel=1e-12)


def _block_inputs(seed, n=11, d=37, k=70):
    x, c = _data(n, k, d, seed)
    sp = S.prepare_screen(c, False)
    groups = sp.panels.shape[1]
    xu = np.empty((n, 4 * groups), dtype=np.uint8)
    for i in range(n):
        S.quantize_row(x[i], xu[i], 128)
    return xu, sp


def test_portable_block_is_the_exact_integer_product():
    xu, sp = _block_inputs(11)
    n = xu.shape[0]
    out = np.zeros(((n + SCREEN_MR - 1) // SCREEN_MR * SCREEN_MR, sp.panels.shape[0] * SCREEN_NR),
                   dtype=np.int32)
    for p in range(sp.panels.shape[0]):
        for i0 in range(0, n, SCREEN_MR):
            dot_block_portable(xu, i0, sp.panels, p, sp.init, out)
    # Centroid c's codes, unpacked from the panel layout.
    npanel, groups, _ = sp.panels.shape
    cq = sp.panels.reshape(npanel, groups, SCREEN_NR, 4).transpose(0, 2, 1, 3).reshape(
        npanel * SCREEN_NR, groups * 4).astype(np.int64)
    want = (xu.astype(np.int64) - 128) @ cq.T
    np.testing.assert_array_equal(out[:n], want)


@pytest.mark.skipif(not has_vnni(), reason="needs AVX-512 VNNI")
def test_vnni_block_equals_portable_bit_for_bit():
    from numba import njit
    from numba_ivf.kernels.assign._i8kernel import dot_block_u8s8

    @njit
    def run(fn_id, xu, panels, init, out):
        for p in range(panels.shape[0]):
            for i0 in range(0, xu.shape[0], SCREEN_MR):
                if fn_id == 0:
                    dot_block_u8s8(xu, i0, panels, p, init, out)
                else:
                    dot_block_portable(xu, i0, panels, p, init, out)

    for seed in range(3):
        xu, sp = _block_inputs(seed, n=13 + seed, d=3 + 61 * seed, k=33 + 40 * seed)
        rows = (xu.shape[0] + SCREEN_MR - 1) // SCREEN_MR * SCREEN_MR
        a = np.zeros((rows, sp.panels.shape[0] * SCREEN_NR), dtype=np.int32)
        b = np.zeros_like(a)
        run(0, xu, sp.panels, sp.init, a)
        run(1, xu, sp.panels, sp.init, b)
        np.testing.assert_array_equal(a[:xu.shape[0]], b[:xu.shape[0]])


@pytest.mark.skipif(len(KERNELS) < 2, reason="needs AVX-512 VNNI")
def test_kernels_give_identical_results():
    x, c = _data(90, 200, 100, seed=9)
    sp = S.prepare_screen(c, True)
    a = S.screened_topk(x, sp, 16, "vnni")
    b = S.screened_topk(x, sp, 16, "portable")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.skipif(not has_vnni() or platform.machine() not in ("x86_64", "AMD64"),
                    reason="x86 VNNI asm check")
def test_vnni_kernel_uses_vpdpbusd():
    # Cached dispatchers cannot be inspected: compile an uncached twin of the driver.
    import re
    from numba import njit
    twin = njit(parallel=True)(S._driver_vnni.py_func)
    x, c = _data(20, 40, 16, seed=1)
    sp = S.prepare_screen(c, False)
    twin(x, sp.panels, sp.init, sp.coef, sp.bias64, sp.cent, False, 8, 3)
    asm = twin.inspect_asm(twin.signatures[0])
    # MR rows x NR/16 vectors of zmm dot-product steps per group of four features.
    steps = re.findall(r"vpdpbusd\s+[^\n]*zmm", asm)
    assert len(steps) >= SCREEN_MR * SCREEN_NR // 16, asm[:2000]


def test_prepared_centroids_route_batches_through_the_screen():
    x, c = _data(120, 90, 140, seed=13)
    with_screen = A.prepare_centroids(c, True, screen=True)
    without = A.prepare_centroids(c, True, screen=False)
    assert with_screen.screen is not None and without.screen is None
    s1, i1 = A.topk_prepared(x, with_screen, 10)
    s2, i2 = A.topk_prepared(x, without, 10)
    ref_s, ref_i = topk_exact(x, c, True, 10)
    np.testing.assert_array_equal(i1, ref_i)
    # The float32 kernel may order near-ties differently; its sets agree here.
    assert (np.sort(i1, 1) == np.sort(i2, 1)).mean() > 0.99
    np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-3)
    lab, dist = A.assign_prepared(x, with_screen)
    np.testing.assert_array_equal(lab, ref_i[:, 0])
    np.testing.assert_allclose(dist, ref_s[:, 0], rtol=1e-6, atol=1e-5)


def test_worth_screening_follows_the_thresholds():
    from numba_ivf._config import SCREEN_MIN_D, SCREEN_MIN_K
    assert not S.worth_screening(SCREEN_MIN_K, SCREEN_MIN_D - 1)
    assert not S.worth_screening(SCREEN_MIN_K - 1, SCREEN_MIN_D)
    assert S.worth_screening(SCREEN_MIN_K, SCREEN_MIN_D) == ("vnni" in S._DRIVERS)


def test_bad_arguments_are_rejected():
    x, c = _data(4, 5, 6, seed=2)
    sp = S.prepare_screen(c, True)
    with pytest.raises(ValueError, match=r"p must be in \[1, k=5\]; got 6"):
        S.screened_topk(x, sp, 6)
    with pytest.raises(ValueError, match=r"p must be in \[1, k=5\]; got 0"):
        S.screened_topk(x, sp, 0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        S.screened_topk(x, sp, 1, "gpu")
    with pytest.raises(ValueError, match=r"the int8 screen takes d <= 65000 \(int32 sums\); "
                                         r"got d=65001"):
        S.prepare_screen(np.zeros((1, 65001), np.float32), True)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_ivf_coarse_step_takes_the_screen_and_stays_exact(metric):
    import numba_ivf
    rng = np.random.default_rng(17)
    d, nlist = 136, 64
    x = rng.standard_normal((3000, d)).astype(np.float32)
    q = rng.standard_normal((40, d)).astype(np.float32)
    index = numba_ivf.IVFFlat(d, nlist, metric, n_iter=3, seed=0)
    index.train(x)
    assert (index._prepared.screen is not None) == S.worth_screening(nlist, d)
    qq = q / np.linalg.norm(q, axis=1, keepdims=True) if metric == "cosine" else q
    keys, lists = index._coarse(qq, 8)
    ref_s, ref_i = topk_exact(qq, index.centroids, metric == "l2", 8)
    np.testing.assert_array_equal(lists, ref_i)
    np.testing.assert_allclose(keys, ref_s, rtol=1e-5, atol=1e-4)


def test_screened_index_pickles_and_round_trips_through_save(tmp_path):
    import pickle

    import numba_ivf
    rng = np.random.default_rng(23)
    d, nlist = 132, 64
    x = rng.standard_normal((2500, d)).astype(np.float32)
    q = rng.standard_normal((30, d)).astype(np.float32)
    index = numba_ivf.IVFPQ(d, nlist, m=33, nbits=4, refine=True, n_iter=3, seed=0)
    index.train(x)
    index.add(x)
    want = index.search(q, 5, nprobe=6, k_factor=4)
    for other in (pickle.loads(pickle.dumps(index)),
                  (index.save(tmp_path / "i.nivf"), numba_ivf.load(tmp_path / "i.nivf"))[1]):
        assert (other._prepared.screen is not None) == (index._prepared.screen is not None)
        got = other.search(q, 5, nprobe=6, k_factor=4)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
