"""The exact row keys of the IVF-Flat scans and refine (kernels/scan/_rowkeys.py)."""

import re

import numpy as np
import pytest
from numba import njit

from numba_ivf._config import ASSIGN_VW
from numba_ivf.kernels.scan._rowkeys import key1_ip, key1_l2, keys4_ip, keys4_l2
from tests.naive.search import brute_force

DIMS = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 50, 128, 784]


def _fours(q, data, l2):
    n = data.shape[0]
    out = np.empty(n, np.float32)
    for r in range(0, n, 4):
        ks = keys4_l2(q, data, r) if l2 else keys4_ip(q, data, r)
        for u in range(4):
            if r + u < n:
                out[r + u] = ks[u]
    return out


def _ones(q, data, l2):
    out = np.empty(data.shape[0], np.float32)
    for r in range(data.shape[0]):
        out[r] = key1_l2(q, data, r) if l2 else key1_ip(q, data, r)
    return out


fours = njit(cache=True)(_fours)
ones = njit(cache=True)(_ones)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("l2", [True, False])
def test_keys_match_float64_oracle_and_each_other(d, l2):
    rng = np.random.default_rng(d)
    data = rng.standard_normal((23, d)).astype(np.float32)   # 23: a ragged last four
    q = rng.standard_normal(d).astype(np.float32)
    a, b = fours(q, data, l2), ones(q, data, l2)
    # One key, one summation order: the four-row and one-row kernels agree bit for bit.
    np.testing.assert_array_equal(a, b)
    ref, order = brute_force(data, np.arange(23), q[None], 23, "l2" if l2 else "ip")
    expect = np.empty(23)
    expect[order[0]] = ref[0] if l2 else -ref[0]
    np.testing.assert_allclose(a, expect, rtol=2e-6 * np.sqrt(d), atol=1e-5 * np.sqrt(d))


def test_last_rows_are_clamped_not_read_past_the_end():
    # Rows r+1.. past the arena's end take the last row's key: no out-of-bounds read.
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    q = np.zeros(4, np.float32)
    ks = njit(lambda q, x: keys4_l2(q, x, 2))(q, data)
    assert ks == (float((data[2] ** 2).sum()),) * 4


def test_integer_data_keys_are_exact():
    rng = np.random.default_rng(0)
    data = rng.integers(-8, 9, (40, 50)).astype(np.float32)
    q = rng.integers(-8, 9, 50).astype(np.float32)
    np.testing.assert_array_equal(fours(q, data, True),
                                  ((data.astype(np.int64) - q.astype(np.int64)) ** 2).sum(1))
    np.testing.assert_array_equal(fours(q, data, False), -(data.astype(np.int64) @ q))


@pytest.mark.skipif(not re.match(r"x86|amd64", __import__("platform").machine().lower()),
                    reason="x86 machine code")
def test_machine_code_is_packed_fma():
    fn = njit(_fours)        # uncached: inspect_asm needs a fresh compile
    fn(np.ones(50, np.float32), np.ones((8, 50), np.float32), False)
    asm = fn.inspect_asm(fn.signatures[0])
    reg = "zmm" if ASSIGN_VW == 16 else "ymm"
    assert len(re.findall(rf"vfmadd\d+ps\s+[^\n]*{reg}", asm)) >= 4


@pytest.mark.parametrize("d, n", [(1, 1), (3, 7), (5, 63), (50, 130), (16, 1024), (784, 70)])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_panel_keys_match_oracle_and_do_not_depend_on_the_range(d, n, metric):
    # The coarse GEMV of a few queries over the tiled kernel's centroid panels: groups of
    # four panels and single panels must give the same bits for a centroid whatever
    # range of panels holds it.
    from numba_ivf.kernels.assign.assign import prepare_centroids
    from numba_ivf.kernels.scan.list_scan import METRIC_IP, METRIC_L2, _coarse_scores
    code = METRIC_L2 if metric == "l2" else METRIC_IP
    rng = np.random.default_rng(d * 1000 + n)
    cent = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal(d).astype(np.float32)
    panels = prepare_centroids(cent, metric == "l2").panels
    npanel, _, nr = panels.shape
    full = np.empty(npanel * nr, np.float32)
    _coarse_scores(q, panels, code, full, 0)
    c64 = cent.astype(np.float64)
    ref = ((c64 - q) ** 2).sum(1) if metric == "l2" else -(c64 @ q)
    np.testing.assert_allclose(full[:n], ref, rtol=2e-6 * np.sqrt(d),
                               atol=1e-5 * np.sqrt(d))
    for p0 in sorted({0, min(1, npanel - 1), npanel // 2, npanel - 1}):
        for p1 in sorted({p0 + 1, min(p0 + 5, npanel), npanel}):
            part = np.empty((p1 - p0) * nr, np.float32)
            _coarse_scores(q, panels, code, part, p0)
            np.testing.assert_array_equal(part, full[p0 * nr:p1 * nr])
