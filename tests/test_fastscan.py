"""Tests of the 4-bit PQ fast-scan kernels (numba_ivf.kernels.fastscan.fastscan).

Layered as FAISS's fast-scan tests are: packing round trip against a plain-loop
packer; the portable uint16 kernel bit-exact with a plain-loop oracle; every SIMD
backend available on this CPU bit-exact with the portable kernel; LUT quantization
against its reference and its error and overflow bounds.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numba_ivf.kernels.fastscan import fastscan as fs
from tests.naive import fastscan as naive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVAILABLE = fs.available_backends()
SIMD = [b for b in AVAILABLE if b != "portable"]
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")


def _random_case(seed, n, m, lut_kind="random"):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, size=(n, m), dtype=np.uint8)
    m2 = (m + 1) // 2
    lut_u8 = np.zeros((2 * m2, 16), dtype=np.uint8)
    if lut_kind == "random":
        lut_u8[:m] = rng.integers(0, 256, size=(m, 16))
    elif lut_kind == "equal":
        lut_u8[:m] = 7
    elif lut_kind == "bound":          # 257 * 255 = 65535: the largest sum that fits
        lut_u8[:m] = 255
    elif lut_kind == "wrap":           # sums beyond 65535 wrap identically everywhere
        lut_u8[:m] = rng.integers(200, 256, size=(m, 16))
    return codes, lut_u8


# (seed, n, M, table kind): odd M, n not a multiple of 32, n < 32, the overflow bound,
# an odd pair count (AVX-512 tail step) and M large enough that sums wrap.
CASES = [
    (1, 77, 3, "random"),
    (2, 5, 1, "random"),
    (3, 96, 16, "random"),
    (4, 100, 33, "random"),
    (5, 64, 8, "equal"),
    (6, 70, 257, "bound"),
    (7, 40, 400, "wrap"),
    (8, 33, 6, "random"),
]
CASE_IDS = [f"{k}-n{n}-M{m}" for _, n, m, k in CASES]


@pytest.fixture(scope="session", params=CASES, ids=CASE_IDS)
def case(request):
    seed, n, m, kind = request.param
    codes, lut_u8 = _random_case(seed, n, m, kind)
    packed = fs.pack_codes(codes)
    portable = fs.accumulate_list(packed, lut_u8, "portable")
    return codes, lut_u8, packed, portable


# ------------------------------------------------------------------ packing --------

@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 77])
@pytest.mark.parametrize("m", [1, 2, 3, 16, 33])
def test_pack_matches_oracle_and_round_trips(n, m):
    rng = np.random.default_rng(100 + 7 * n + m)
    codes = rng.integers(0, 16, size=(n, m), dtype=np.uint8)
    packed = fs.pack_codes(codes)
    assert packed.shape == ((n + 31) // 32, (m + 1) // 2, 32)
    np.testing.assert_array_equal(packed, naive.pack_codes(codes))
    np.testing.assert_array_equal(fs.unpack_codes(packed, n, m), codes)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 100), m=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_pack_round_trip_property(n, m, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, size=(n, m)).astype(np.int64)   # any integer dtype
    np.testing.assert_array_equal(fs.unpack_codes(fs.pack_codes(codes), n, m), codes)


def test_pack_codes_into_appends_batches():
    rng = np.random.default_rng(11)
    codes = rng.integers(0, 16, size=(90, 5), dtype=np.uint8)
    packed = np.zeros(fs.packed_shape(128, 5), dtype=np.uint8)  # capacity 128 vectors
    for lo, hi in [(0, 13), (13, 40), (40, 90)]:
        fs.pack_codes_into(codes[lo:hi], packed, lo)
    np.testing.assert_array_equal(packed[:3], fs.pack_codes(codes))
    assert not packed[3].any()
    with pytest.raises(ValueError, match="exceeds the capacity"):
        fs.pack_codes_into(codes[:50], packed, 90)


@pytest.mark.parametrize("bad, exc, match", [
    (np.full((3, 2), 16), ValueError, r"0\.\.15; got 16 at row 0, column 0"),
    (np.full((3, 2), -1), ValueError, r"0\.\.15; got -1"),
    (np.zeros(4, np.uint8), ValueError, r"2-D array of shape \(n, M\); got ndim=1"),
    (np.zeros((3, 2), np.float32), TypeError, r"integers in 0\.\.15 .*float32"),
    (np.zeros((3, 0), np.uint8), ValueError, r"at least 1 sub-quantizer"),
])
def test_pack_codes_errors(bad, exc, match):
    with pytest.raises(exc, match=match):
        fs.pack_codes(bad)


def test_unpack_codes_errors():
    packed = fs.pack_codes(np.zeros((40, 3), np.uint8))
    with pytest.raises(ValueError, match=r"n must be an integer in \[0, 64\]"):
        fs.unpack_codes(packed, 65, 3)
    with pytest.raises(ValueError, match=r"M must be 3 or 4 .* got 5"):
        fs.unpack_codes(packed, 40, 5)


# ------------------------------------------------------------------ accumulate -----

def test_portable_matches_oracle(case):
    codes, lut_u8, packed, portable = case
    n = codes.shape[0]
    np.testing.assert_array_equal(portable[:n], naive.lut_sums_u16(codes, lut_u8))
    # padding rows are code 0 in every sub-quantizer
    pad = int(lut_u8[:codes.shape[1], 0].astype(np.int64).sum()) % 65536
    assert (portable[n:] == pad).all()


@pytest.mark.parametrize("backend", SIMD)
def test_simd_matches_portable(case, backend):
    codes, lut_u8, packed, portable = case
    np.testing.assert_array_equal(fs.accumulate_list(packed, lut_u8, backend), portable)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_batch_matches_list(backend):
    codes, lut_u8 = _random_case(21, 150, 7)
    rng = np.random.default_rng(22)
    luts = rng.integers(0, 256, size=(3,) + lut_u8.shape).astype(np.uint8)
    packed = fs.pack_codes(codes)
    got = fs.accumulate_batch(packed, luts, backend)
    assert got.shape == (3, 160) and got.dtype == np.uint16
    for q in range(3):
        np.testing.assert_array_equal(got[q], fs.accumulate_list(packed, luts[q], "portable"))


@pytest.mark.parametrize("backend", AVAILABLE)
def test_block_and_below_mask(case, backend):
    codes, lut_u8, packed, portable = case
    token = fs.get_backend(backend)
    out = np.empty(32, dtype=np.uint16)
    med = int(np.median(portable))
    for b in range(packed.shape[0]):
        fs.accumulate_block(packed, b, lut_u8, out, token)
        np.testing.assert_array_equal(out, portable[32 * b:32 * b + 32])
        for thr in (-5, 0, 1, med, med + 1, 65535, 65536, 10**6):
            out[:] = 0
            mask = fs.accumulate_block_below(packed, b, lut_u8, thr, out, token)
            np.testing.assert_array_equal(out, portable[32 * b:32 * b + 32])
            bits = (int(mask) >> np.arange(32)) & 1
            np.testing.assert_array_equal(bits.astype(bool), out.astype(np.int64) < thr,
                                          err_msg=f"block {b}, threshold {thr}")
            if thr >= 1:              # the unchecked form the search's inner loop uses
                t = np.uint16(min(thr - 1, 65535))
                assert fs.block_sums_below(packed, b, lut_u8, out, t, token) == mask


def test_accumulate_block_errors():
    codes, lut_u8 = _random_case(31, 40, 4)
    packed = fs.pack_codes(codes)
    with pytest.raises(ValueError, match="at least 32 entries"):
        fs.check_block_operands(packed, lut_u8, np.empty(16, np.uint16))
    with pytest.raises(ValueError, match=r"lut_u8 must have shape \(2\*M2, 16\)"):
        fs.check_block_operands(packed, lut_u8[:2], np.empty(32, np.uint16))
    with pytest.raises(IndexError, match="block index b out of range"):
        fs.accumulate_block(packed, 2, lut_u8, np.empty(32, np.uint16))
    with pytest.raises(ValueError, match="at least 32 entries"):
        fs.accumulate_block(packed, 0, lut_u8, np.empty(16, np.uint16))
    with pytest.raises(ValueError, match=r"lut_u8 must have shape \(2\*M2, 16\)"):
        fs.accumulate_block(packed, 0, lut_u8[:2], np.empty(32, np.uint16))
    with pytest.raises(ValueError, match=r"lut_u8 must be a uint8 array of shape \(2\*M2, "
                                         r"16\) with M2 = packed.shape\[1\] = 2"):
        fs.accumulate_list(packed, lut_u8.astype(np.int16))
    with pytest.raises(ValueError, match=r"packed must be a uint8 array of shape "
                                         r"\(nblocks, M2, 32\)"):
        fs.accumulate_list(codes, lut_u8)


# ------------------------------------------------------------------ LUT quantization --

def test_quantize_lut_matches_reference_and_error_bound():
    rng = np.random.default_rng(41)
    for m in (1, 4, 7, 16, 32):
        lut = (rng.standard_normal((m, 16)) * rng.uniform(0.1, 10)).astype(np.float32)
        lut_u8, bias, scale = fs.quantize_lut(lut)
        ref_u8, ref_bias, ref_scale = naive.quantize_lut(lut)
        np.testing.assert_array_equal(lut_u8, ref_u8)
        assert bias == pytest.approx(ref_bias, rel=1e-12, abs=1e-12)
        assert scale == pytest.approx(ref_scale, rel=1e-12)
        codes = rng.integers(0, 16, size=(200, m), dtype=np.uint8)
        exact = naive.pq_distances(codes, lut)
        approx = bias + naive.lut_sums_u16(codes, lut_u8).astype(np.float64) / scale
        bound = m * 0.5 / scale
        assert np.abs(exact - approx).max() <= bound * (1 + 1e-9) + 1e-9 * np.abs(exact).max()


@settings(max_examples=40, deadline=None)
@given(lut=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.just(16)),
                      elements=st.floats(-1e4, 1e4, width=32)),
       seed=st.integers(0, 2**32 - 1))
def test_quantize_lut_error_and_overflow_bounds_property(lut, seed):
    m = lut.shape[0]
    lut_u8, bias, scale = fs.quantize_lut(lut)
    assert lut_u8.shape == (2 * ((m + 1) // 2), 16) and not lut_u8[m:].any()
    assert int(lut_u8.max(axis=1).astype(np.int64).sum()) <= 65535
    codes = np.random.default_rng(seed).integers(0, 16, size=(20, m), dtype=np.uint8)
    exact = naive.pq_distances(codes, lut)
    approx = bias + naive.lut_sums_u16(codes, lut_u8).astype(np.float64) / scale
    tol = m * 0.5 / scale * (1 + 1e-9) + 1e-9 * (np.abs(lut).sum() + 1.0)
    assert np.abs(exact - approx).max() <= tol


def test_quantize_lut_all_equal_table():
    lut = np.full((5, 16), 3.25, dtype=np.float32)
    lut_u8, bias, scale = fs.quantize_lut(lut)
    assert scale == 1.0 and bias == pytest.approx(5 * 3.25)
    assert not lut_u8.any()
    row_const = np.repeat(np.arange(5, dtype=np.float32)[:, None], 16, axis=1)
    lut_u8, bias, scale = fs.quantize_lut(row_const)   # each row constant, rows differ
    assert scale == 1.0 and bias == pytest.approx(10.0) and not lut_u8.any()


@pytest.mark.parametrize("m", [16, 257, 300, 1000])
def test_quantize_lut_overflow_bound_case(m):
    # Every row spans [0, 1]: the worst case for the bound (all rows maxed at once).
    rng = np.random.default_rng(51 + m)
    lut = rng.uniform(0, 1, size=(m, 16)).astype(np.float32)
    lut[:, 0], lut[:, 1] = 0.0, 1.0
    lut_u8, bias, scale = fs.quantize_lut(lut)
    worst = int(lut_u8.max(axis=1).astype(np.int64).sum())
    assert worst <= 65535
    if m <= 257:
        assert worst == 255 * m            # the uint8 cap binds: 255 * 257 = 65535
    else:
        assert worst >= 65535 - m           # the sum cap binds, with at most M/2 slack
    # the accumulators reach the worst sum without wrapping, in every backend
    codes = np.zeros((40, m), dtype=np.uint8)
    codes[:] = lut_u8[:m].argmax(axis=1)
    packed = fs.pack_codes(codes)
    for backend in AVAILABLE:
        got = fs.accumulate_list(packed, lut_u8, backend)[:40]
        assert (got.astype(np.int64) == worst).all(), backend


def test_quantize_luts_batch_and_errors():
    rng = np.random.default_rng(61)
    luts = rng.standard_normal((4, 5, 16))          # float64 input is converted
    out, bias, scale = fs.quantize_luts(luts)
    for q in range(4):
        u8, b, s = fs.quantize_lut(luts[q])
        np.testing.assert_array_equal(out[q], u8)
        assert bias[q] == b and scale[q] == s
    with pytest.raises(ValueError, match=r"lut must have shape \(M, 16\) .* got shape "
                                         r"\(5, 8\)"):
        fs.quantize_lut(np.zeros((5, 8)))
    bad = np.zeros((3, 16))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="lut contains NaN or infinity"):
        fs.quantize_lut(bad)


def test_lut_threshold_keeps_every_true_candidate():
    rng = np.random.default_rng(71)
    m = 12
    lut = rng.standard_normal((m, 16)).astype(np.float32)
    lut_u8, bias, scale = fs.quantize_lut(lut)
    codes = rng.integers(0, 16, size=(500, m), dtype=np.uint8)
    exact = naive.pq_distances(codes, lut)
    sums = naive.lut_sums_u16(codes, lut_u8).astype(np.int64)
    for dist in np.quantile(exact, [0.0, 0.01, 0.1, 0.5]):
        t = fs.lut_threshold(dist, bias, scale, m)
        assert (sums[exact < dist] < t).all()
        assert (sums < t).sum() < len(sums)          # it still prunes something
    assert fs.lut_threshold(np.inf, bias, scale, m) == 65536


# ------------------------------------------------------------------ backends -------

def test_backend_selection_errors():
    with pytest.raises(ValueError, match=r"must be one of portable, avx2, avx512, neon, "
                                         r"auto; got 'sse'"):
        fs._select_backend("sse")
    other = "neon" if IS_X86 else "avx2"
    with pytest.raises(ValueError, match=rf"'{other}' is not supported on this CPU"):
        fs._select_backend(other)
    with pytest.raises(ValueError, match=r"backend must be None or one of"):
        fs.get_backend("fast")
    assert fs._select_backend("auto") == AVAILABLE[0]
    assert fs._select_backend("portable") == "portable"
    assert fs.BACKEND.name == fs.FASTSCAN_BACKEND in AVAILABLE


_X86_ASM = [("avx2", "ymm"), ("avx512", "zmm")]


@pytest.mark.skipif(not IS_X86, reason="x86 SIMD backends")
@pytest.mark.parametrize("backend, reg", _X86_ASM)
def test_simd_machine_code_uses_vpshufb(backend, reg):
    if backend not in AVAILABLE:
        pytest.skip(f"{backend} not available on this CPU")
    from numba import njit

    # A fresh, uncached compile of the backend's block kernel (inspect_asm is disabled
    # for code loaded from the on-disk cache).
    kernel = njit(fs._BLOCK_KERNELS[backend].py_func)
    codes, lut_u8 = _random_case(81, 64, 6)
    packed = fs.pack_codes(codes)
    out = np.empty(32, np.uint16)
    kernel(packed, 1, lut_u8, out, np.uint16(100))
    asm = kernel.inspect_asm(kernel.signatures[0])
    shuffles = [ln for ln in asm.splitlines() if "vpshufb" in ln]
    assert shuffles and any(reg in ln for ln in shuffles)
    assert "gather" not in asm


_CACHE_PROBE = textwrap.dedent("""
    import json, numpy as np
    from numba_ivf.kernels.fastscan import fastscan as fs
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 16, size=(70, 5), dtype=np.uint8)
    packed = fs.pack_codes(codes)
    lut_u8 = rng.integers(0, 256, size=(6, 16)).astype(np.uint8)
    out = np.empty(96, np.uint16)
    ran = fs._accumulate_list_driver(packed, lut_u8, out, fs.BACKEND)
    blk = np.empty(32, np.uint16)
    fs.accumulate_block(packed, 0, lut_u8, blk)         # backend omitted: default token
    print(json.dumps({
        "selected": fs.FASTSCAN_BACKEND, "ran": fs.BACKENDS[ran],
        "hits": sum(fs._accumulate_list_driver.stats.cache_hits.values()),
        "block_sigs": [str(s[-1]) for s in fs.accumulate_block.signatures],
        "sums": out.tolist()}))
""")


def _probe(env_backend, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    env.pop("NUMBA_IVF_FASTSCAN", None)
    if env_backend is not None:
        env["NUMBA_IVF_FASTSCAN"] = env_backend
    res = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not SIMD, reason="needs a SIMD backend to differ from portable")
def test_cache_is_not_reused_across_backends(tmp_path):
    first = _probe(None, tmp_path)                 # default backend, fills the cache
    forced = _probe("portable", tmp_path)          # same cache dir, other backend
    again = _probe(None, tmp_path)                 # default again: served from cache
    assert first["selected"] == first["ran"] == AVAILABLE[0] != "portable"
    assert forced["selected"] == forced["ran"] == "portable"
    assert forced["block_sigs"] == ["omitted(default=fastscan.Backend('portable'))"]
    assert again["ran"] == AVAILABLE[0] and again["hits"] >= 1
    assert first["sums"] == forced["sums"] == again["sums"]


def test_import_compiles_nothing():
    code = ("import numba_ivf.kernels.fastscan.fastscan as fs\n"
            "ds = [fs._block_portable, fs._block_avx2, fs._block_avx512, fs._block_neon,\n"
            "      fs.accumulate_block, fs._accumulate_list_driver, fs.quantize_lut_into]\n"
            "print(sum(len(d.signatures) for d in ds))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"
