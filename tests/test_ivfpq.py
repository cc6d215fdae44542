"""IVFPQ: ADC and fast-scan oracles, refine, FAISS recall parity, mutation, persistence,
backends, memory, errors."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import numba_ivf
from tests.naive import ivfpq as naive
from tests.naive.pq import decode
from tests.naive.search import brute_force

D, NLIST, M = 16, 8, 8


def _clustered(seed, n, d=D, centres=24):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)) * 3.0
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


_BASE = {}


def _trained(nbits, metric, by_residual=True, refine=False):
    """Trained, empty index (session cache: the JIT and k-means are paid once)."""
    key = (nbits, metric, by_residual, refine)
    if key not in _BASE:
        idx = numba_ivf.IVFPQ(D, NLIST, M, nbits, metric, by_residual, refine, n_iter=8,
                              seed=0, max_points_per_centroid=10_000)
        idx.train(_clustered(1, 2000))
        _BASE[key] = idx
    return copy.deepcopy(_BASE[key])


@pytest.fixture(scope="session")
def data():
    return _clustered(2, 1200), _clustered(3, 20)


def _filled(nbits, metric, by_residual=True, refine=False, n=1200):
    idx = _trained(nbits, metric, by_residual, refine)
    x = _clustered(2, n)
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    idx.add(x, ids)
    return idx, x, ids


CASES = [(8, "l2", True), (8, "ip", True), (8, "cosine", True), (8, "l2", False),
         (4, "l2", True), (4, "ip", True), (4, "cosine", False)]


@pytest.mark.parametrize("nbits,metric,by_residual",
                         [c for c in CASES if c[0] == 8])
def test_float_tables_equal_adc_oracle(nbits, metric, by_residual, data):
    idx, _, _ = _filled(nbits, metric, by_residual)
    q = data[1]
    Dref, Iref = naive.adc_search(idx, q, 10)
    for path in ("batch", "single", "serial"):
        Dk, Ik = idx.search(q, 10, nprobe=NLIST, path=path)
        np.testing.assert_allclose(Dk, Dref, rtol=1e-4, atol=1e-3)
        # exact ids wherever the oracle's neighbours are not near-tied
        gap = np.abs(np.diff(Dref, axis=1)) > 1e-3 * (1 + np.abs(Dref[:, 1:]))
        clean = np.concatenate([gap[:, :1], gap[:, 1:] & gap[:, :-1], gap[:, -1:]], 1)
        assert (Ik[clean] == Iref[clean]).all()


@pytest.mark.parametrize("nbits,metric,by_residual",
                         [c for c in CASES if c[0] == 4])
@pytest.mark.parametrize("nprobe", [3, NLIST])
def test_fastscan_equals_quantized_oracle(nbits, metric, by_residual, nprobe, data):
    idx, _, _ = _filled(nbits, metric, by_residual, n=700)
    q = data[1][:8]
    qn = idx._check_search(q, 10, nprobe)[0]
    scores, probes = idx._coarse(qn, nprobe)
    base, qluts, term, use_term = idx._tables(qn, scores)
    keys, ids = naive.fastscan_search(idx, qn, probes, base, qluts, term, use_term, 10)
    for path in ("batch", "single", "serial"):
        Dk, Ik = idx.search(q, 10, nprobe=nprobe, path=path)
        assert (Ik == ids).all()
        expect = keys if metric == "l2" else -keys
        np.testing.assert_array_equal(Dk, expect)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 300), nprobe=st.integers(1, 5),
       spread=st.floats(1e-3, 1e4), constant=st.booleans())
@example(seed=4_294_967_295, m=120, nprobe=2, spread=9833.65625, constant=False)
def test_shared_scale_tables_equal_oracle_and_never_overflow(seed, m, nprobe, spread,
                                                             constant):
    # The per-query shared scale (L2 by residual): same row minima, codes, biases and
    # scale as the oracle, entries <= 255 and every code's sum <= 65535 (m up to 300:
    # both terms of the scale's min bind somewhere; the float32 quantization's rounding
    # must stay inside the bound); constant rows give scale 1 and zero tables.
    from numba_ivf.kernels.fastscan import fastscan_search as fs
    rng = np.random.default_rng(seed)
    qlut = (rng.standard_normal((m, 16)) * spread).astype(np.float32)
    term = (rng.standard_normal((nprobe, m, 16)) * spread
            * rng.uniform(0, 2, (nprobe, 1, 1))).astype(np.float32)
    if constant:
        qlut[:] = qlut[:, :1]
        term[:] = term[:, :, :1]
    probes = np.arange(nprobe, dtype=np.int64)
    sizes = np.ones(nprobe, dtype=np.int64)
    lo = np.empty((nprobe, m), dtype=np.float32)
    hi = np.empty(m, dtype=np.float32)
    scale = fs.query_scale(qlut, term, probes, sizes, None, lo, hi)
    u8s, biases, ref_scale = naive.shared_scale_tables([qlut + term[p]
                                                         for p in range(nprobe)])
    assert scale == ref_scale
    if constant:
        assert scale == 1.0
    for p in range(nprobe):
        out = np.zeros((2 * ((m + 1) // 2), 16), dtype=np.uint8)
        np.testing.assert_array_equal(lo[p], (qlut + term[p]).min(axis=1))
        fs._quantize_pair(qlut, term[p], lo[p], scale, out)
        # Equal but for rare entries off by one: the kernel's vectorised
        # fl(fl(x - lo) * s) + 0.5 and the oracle's may round one value sitting next to
        # a .5 boundary differently (seen once in CI, seed 4294967295, m=120, not
        # reproducible here). The bound checks below are what must hold exactly.
        diff = out.astype(np.int64) - u8s[p].astype(np.int64)
        assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) <= max(1, out.size // 200), \
            f"quantized tables differ from the oracle at {np.argwhere(diff)[:5].tolist()}"
        assert fs._pair_bias(lo[p]) == biases[p]
        assert int(out.max(axis=1).astype(np.int64).sum()) <= 65535
        if constant:
            assert not out.any()


def test_scan_list_blocks_rejects_rows_outside_the_arena():
    # The lane loop runs the unchecked block kernel: a list past the arena must raise.
    from numba_ivf.kernels.fastscan import fastscan as fsc
    from numba_ivf.kernels.fastscan import fastscan_search as fs
    codes = np.random.default_rng(3).integers(0, 16, (40, 6), dtype=np.uint8)
    packed = fsc.pack_codes(codes)
    lut_u8 = np.zeros((6, 16), dtype=np.uint8)
    ids = np.arange(64, dtype=np.int64)
    rd = np.empty(20, np.float32)
    ri = np.empty(20, np.int64)
    rr = np.empty(20, np.int64)
    acc = np.empty(32, np.uint16)
    args = (None, lut_u8, 0.0, 1.0, np.float32(0), rd, ri, rr, 0,
            np.float32(np.inf), 10, acc, fsc.BACKEND)
    # Rows 8..39 (in range), every key 0: the top 10 are the 10 lowest ids (ties by id).
    from numba_ivf.kernels.common.topk import res_finish
    n, _ = fs.scan_list_blocks(packed, ids, 8, 32, *args)
    out_d = np.empty(10, np.float32)
    out_i = np.empty(10, np.int64)
    out_r = np.empty(10, np.int64)
    res_finish(rd, ri, rr, n, out_d, out_i, out_r, True)
    np.testing.assert_array_equal(out_i, np.arange(8, 18))
    assert not out_d.any()
    with pytest.raises(IndexError, match="list rows out of the packed arena"):
        fs.scan_list_blocks(packed, ids, 40, 30, *args)
    with pytest.raises(ValueError, match="at least 32 entries"):
        fs.scan_list_blocks(packed, ids, 0, 8, *args[:11], np.empty(8, np.uint16),
                            fsc.BACKEND)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), base=st.floats(-1e3, 1e3),
       bias=st.floats(-1e3, 1e3), log_scale=st.floats(-6, 6), where=st.floats(-0.1, 1.1))
def test_key_threshold_is_exact(seed, base, bias, log_scale, where):
    # s < t exactly for the sums whose dequantized key is admitted (key <= thr), at
    # every s in [0, 65535]: thresholds below, inside and above the list's key range.
    from numba_ivf.kernels.fastscan import fastscan_search as fs
    scale = 10.0 ** log_scale
    base = np.float32(base)
    s = np.arange(65536, dtype=np.float64)
    keys = (np.float64(base) + (bias + s / scale)).astype(np.float32)  # dequantize
    thr = np.float32(keys[0] + where * (keys[-1] - keys[0]))
    if np.random.default_rng(seed).random() < 0.2:
        thr = keys[np.random.default_rng(seed).integers(65536)]   # exactly a key
    t = fs.key_threshold(thr, base, bias, scale)
    assert fs.dequantize(base, bias, scale, 123) == keys[123]
    np.testing.assert_array_equal(keys <= thr, s < t)
    assert fs.key_threshold(np.float32(np.inf), base, bias, scale) == 65536


def test_residual_decomposition_equals_plain_residual_tables(data):
    # FAISS's L2 decomposition: base + sum_j (qlut + term[l])[j, c_j] must equal the ADC
    # distance sum_j ||(q - c_l)_j - r_j,c_j||^2 from plain residual tables.
    idx, _, _ = _filled(4, "l2", n=64)
    q = data[1][:3]
    scores, probes = idx._coarse(q, 2)
    base, qluts, term, use_term = idx._tables(q, scores)
    assert use_term
    cent = np.asarray(idx.centroids, dtype=np.float64)
    cb = idx.pq.codebooks.astype(np.float64)
    dsub = D // M
    rng = np.random.default_rng(9)
    for qi in range(3):
        for p in range(2):
            lst = probes[qi, p]
            r = q[qi] - cent[lst]
            plain = np.array([[((r[j * dsub:(j + 1) * dsub] - cb[j, c]) ** 2).sum()
                               for c in range(16)] for j in range(M)])
            ours = qluts[qi].astype(np.float64) + term[lst]
            for c in rng.integers(0, 16, size=(20, M)):
                np.testing.assert_allclose(base[qi, p] + ours[np.arange(M), c].sum(),
                                           plain[np.arange(M), c].sum(), rtol=1e-4,
                                           atol=1e-3)


@pytest.mark.parametrize("nbits,metric", [(8, "l2"), (4, "cosine"), (4, "l2")])
def test_refine_is_brute_force_on_candidates(nbits, metric, data):
    idx, x, ids = _filled(nbits, metric, refine=True)
    q = data[1]
    D1, I1 = idx.search(q, 5, nprobe=4, k_factor=3)
    idx._refine = False
    _, cand = idx.search(q, 15, nprobe=4)
    idx._refine = True
    pos = {int(i): j for j, i in enumerate(ids)}
    for qi in range(len(q)):
        c = cand[qi][cand[qi] >= 0]
        Dref, Iref = brute_force(x[[pos[int(i)] for i in c]], c, q[qi:qi + 1], 5, metric)
        np.testing.assert_allclose(D1[qi], Dref[0], rtol=1e-5, atol=1e-4)
        assert (I1[qi] == Iref[0]).all()


@pytest.mark.parametrize("nbits", [8, 4])
def test_recall_matches_faiss(nbits):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(11)
    d, nlist, m, n = 32, 16, 8, 5000
    c = rng.standard_normal((64, d)) * 2.0
    x = (c[rng.integers(0, 64, n)] + rng.standard_normal((n, d))).astype(np.float32)
    q = (c[rng.integers(0, 64, 300)] + rng.standard_normal((300, d))).astype(np.float32)
    gt = np.argsort(((q[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :10]
    ours = numba_ivf.IVFPQ(d, nlist, m, nbits, n_iter=10, seed=0)
    ours.train(x)
    ours.add(x)
    quant = faiss.IndexFlatL2(d)
    quant.add(np.asarray(ours.centroids))
    if nbits == 8:
        ref = faiss.IndexIVFPQ(quant, d, nlist, m, 8)
    else:
        ref = faiss.IndexIVFPQFastScan(quant, d, nlist, m, 4)
    ref.train(x)      # the quantizer is already trained: FAISS trains only its PQ
    ref.add(x)

    def recall(I):
        return np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(I, gt)])

    for nprobe in (2, 8):
        ref.nprobe = nprobe
        r_ours = recall(ours.search(q, 10, nprobe=nprobe)[1])
        r_ref = recall(ref.search(q, 10)[1])
        assert r_ours >= r_ref - 0.02, (nprobe, r_ours, r_ref)


def test_portable_backend_bit_exact(data):
    idx, _, _ = _filled(4, "l2")
    q = data[1]
    Dp, Ip = idx.search(q, 10, nprobe=4, _backend="portable")
    Dd, Id = idx.search(q, 10, nprobe=4)
    assert (Ip == Id).all()
    np.testing.assert_array_equal(Dp, Dd)


def test_portable_backend_end_to_end_subprocess():
    code = ("import numpy as np, numba_ivf\n"
            "from numba_ivf.kernels.fastscan import fastscan\n"
            "assert fastscan.FASTSCAN_BACKEND == 'portable'\n"
            "x = np.random.default_rng(0).standard_normal((600, 8)).astype(np.float32)\n"
            "i = numba_ivf.IVFPQ(8, 4, 4, 4, refine=True, n_iter=3)\n"
            "i.train(x); i.add(x)\n"
            "D, I = i.search(x[:5], 3, nprobe=4, k_factor=8)\n"
            "assert (I[:, 0] == np.arange(5)).all(), I\n")
    env = dict(os.environ, NUMBA_IVF_FASTSCAN="portable")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("nbits", [8, 4])
def test_remove_add_sequence_equals_fresh_build(nbits, data):
    rng = np.random.default_rng(5)
    x = _clustered(2, 900)
    y = _clustered(4, 100)
    ids = np.arange(900, dtype=np.int64)
    a = _trained(nbits, "l2")
    a.add(x, ids)
    gone = rng.choice(900, 300, replace=False)
    assert a.remove(gone) == 300
    assert a.remove(gone[:5]) == 0
    a.add(y, np.arange(1000, 1100))
    keep = np.setdiff1d(ids, gone)
    b = _trained(nbits, "l2")
    b.add(x[keep], keep)
    b.add(y, np.arange(1000, 1100))
    assert len(a) == len(b) == 700
    q = data[1]
    Da, Ia = a.search(q, 20, nprobe=NLIST)
    Db, Ib = b.search(q, 20, nprobe=NLIST)
    assert (Ia == Ib).all()
    np.testing.assert_array_equal(Da, Db)
    assert not np.isin(Ia, gone).any()
    for i in (int(keep[0]), int(keep[-1]), 1050):
        np.testing.assert_array_equal(a.reconstruct(i), b.reconstruct(i))


@pytest.mark.parametrize("nbits,by_residual", [(8, True), (4, True), (4, False)])
def test_reconstruct_is_decoded_code(nbits, by_residual):
    idx, x, ids = _filled(nbits, "l2", by_residual, n=300)
    codes = naive.stored_codes(idx)
    cent = np.asarray(idx.centroids, dtype=np.float64)
    for i in ids[[0, 77, 299]]:
        lst, c = codes[int(i)]
        expect = decode(c[None].astype(np.int64), idx.pq.codebooks)[0]
        if by_residual:
            expect = expect + cent[lst]
        np.testing.assert_allclose(idx.reconstruct(int(i)), expect, rtol=1e-6, atol=1e-6)
    with pytest.raises(KeyError, match="not in the index"):
        idx.reconstruct(1)


@pytest.mark.parametrize("nbits,refine", [(8, False), (4, False), (4, True)])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(nbits, refine, mmap, tmp_path, data):
    idx, x, ids = _filled(nbits, "cosine", refine=refine, n=500)
    idx.remove(ids[::5])
    q = data[1]
    kw = {"k_factor": 2} if refine else {}
    D0, I0 = idx.search(q, 10, nprobe=3, **kw)
    path = tmp_path / "pq.nivf"
    idx.save(path)
    back = numba_ivf.load(path, mmap=mmap)
    assert isinstance(back, numba_ivf.IVFPQ) and len(back) == len(idx)
    assert (back.nbits, back.m, back.metric, back.refine) == (nbits, M, "cosine", refine)
    D1, I1 = back.search(q, 10, nprobe=3, **kw)
    assert (I0 == I1).all()
    np.testing.assert_array_equal(D0, D1)
    back.add(x[:3], [10**6, 10**6 + 1, 10**6 + 2])     # copy-on-write after mmap
    assert back.remove([10**6]) == 1 and len(back) == len(idx) + 2


def test_memory_of_fastscan_lists():
    idx = _trained(4, "l2")
    n = 5000
    idx.add(_clustered(6, n))
    mem = idx.memory_bytes
    lists = mem["ids"] + mem["codes"] + mem["refine"] + mem["id_map"]
    # Lists are not padded to whole 32-vector blocks (they share boundary blocks), so
    # the bound holds without a per-list allowance.
    assert lists <= 1.1 * n * (M / 2 + 8)
    assert (idx._lists.starts % 32).any()                       # some list starts inside a block


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batches=st.lists(st.integers(1, 90), min_size=1,
                                                         max_size=6),
       removals=st.integers(0, 60))
def test_fastscan_lists_under_adds_and_removes_equal_fresh_build(seed, batches, removals):
    # Small batches make lists outgrow their room again and again: runs that start and
    # end inside blocks are moved vector by vector (and compacted); the result must be
    # exactly a fresh index holding the same vectors.
    rng = np.random.default_rng(seed)
    a = _trained(4, "l2")
    xs, ids, next_id = [], [], 0
    for size in batches:
        x = _clustered(int(rng.integers(1 << 30)), size)
        new = np.arange(next_id, next_id + size, dtype=np.int64) * 3
        a.add(x, new)
        xs.append(x)
        ids.append(new)
        next_id += size
    x, ids = np.concatenate(xs), np.concatenate(ids)
    gone = rng.choice(ids, min(removals, len(ids)), replace=False)
    assert a.remove(gone) == len(gone)
    keep = ~np.isin(ids, gone)
    b = _trained(4, "l2")
    b.add(x[keep], ids[keep])
    q = _clustered(9, 5)
    Da, Ia = a.search(q, 15, nprobe=NLIST)
    Db, Ib = b.search(q, 15, nprobe=NLIST)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_array_equal(Da, Db)
    for i in ids[keep][:3]:
        np.testing.assert_array_equal(a.reconstruct(int(i)), b.reconstruct(int(i)))


def test_padding_lanes_and_k_larger_than_index():
    idx, _, ids = _filled(4, "l2", n=37)       # 37 rows: lists end inside blocks
    D, I = idx.search(_clustered(2, 37)[:2], 50, nprobe=NLIST)
    assert set(I[0][I[0] >= 0].tolist()) == set(ids.tolist())
    assert (I[:, 37:] == -1).all() and np.isinf(D[:, 37:]).all()
    assert (np.diff(D[:, :37], axis=1) >= 0).all()


def test_float64_noncontiguous_and_1d_queries(data):
    idx, _, _ = _filled(8, "ip")
    q = data[1]
    D0, I0 = idx.search(q, 5, nprobe=2)
    q64 = np.asfortranarray(q.astype(np.float64))
    D1, I1 = idx.search(q64, 5, nprobe=2)
    assert (I0 == I1).all()
    D2, I2 = idx.search(q[0], 5, nprobe=2)
    assert (I2[0] == I0[0]).all()


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"d": 16, "nlist": 4, "m": 5}, ValueError, "not divisible by m=5"),
    ({"d": 16, "nlist": 4, "m": 4, "nbits": 6}, ValueError, "nbits must be 4 or 8"),
    ({"d": 16, "nlist": 0, "m": 4}, ValueError, "nlist must be >= 1"),
    ({"d": 16, "nlist": 4, "m": 4, "metric": "cos"}, ValueError, "metric must be one"),
    ({"d": 16, "nlist": 4, "m": 4, "refine": 1}, TypeError, "refine must be True or"),
    ({"d": 16, "nlist": 4, "m": 4, "by_residual": "no"}, TypeError, "by_residual must"),
])
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        numba_ivf.IVFPQ(**kwargs)


def test_usage_errors_leave_index_unchanged(data):
    fresh = numba_ivf.IVFPQ(D, NLIST, M)
    with pytest.raises(RuntimeError, match="not trained; call train"):
        fresh.search(data[1], 3)
    with pytest.raises(RuntimeError, match="not trained"):
        fresh.add(data[0])
    with pytest.raises(ValueError, match="needs at least 256 rows"):
        numba_ivf.IVFPQ(D, 4, M).train(data[0][:100])
    idx, x, ids = _filled(8, "l2", refine=True, n=200)
    before = idx.search(data[1], 5, nprobe=2)
    with pytest.raises(ValueError, match="k_factor must be >= 1"):
        idx.search(data[1], 5, k_factor=0)
    with pytest.raises(ValueError, match="q has 3 features, but IVFPQ"):
        idx.search(np.zeros((2, 3)), 5)
    with pytest.raises(ValueError, match="NaN or infinity"):
        bad = x[:2].copy()
        bad[1, 3] = np.nan
        idx.add(bad, [10**6, 10**6 + 1])
    with pytest.raises(ValueError, match="must not already be in the index"):
        idx.add(x[:2], ids[:2])
    with pytest.raises(ValueError, match="path must be one of"):
        idx.search(data[1], 5, path="list_major")
    assert len(idx) == 200
    after = idx.search(data[1], 5, nprobe=2)
    assert (before[1] == after[1]).all()
    plain, _, _ = _filled(8, "l2", n=50)
    with pytest.raises(ValueError, match="k_factor applies only"):
        plain.search(data[1], 5, k_factor=2)


@pytest.fixture
def count_one_query_calls(monkeypatch):
    """Counts calls of the fused one-query kernels (so a test knows the path was taken)."""
    from numba_ivf.kernels.scan import pq_one
    calls = []
    for name in ("adc_search_one", "fastscan_search_one"):
        real = getattr(pq_one, name)

        def counting(*args, _real=real):
            calls.append(1)
            return _real(*args)

        monkeypatch.setattr(pq_one, name, counting)
    return calls


@pytest.mark.parametrize("nbits,metric,by_residual,refine",
                         [c + (False,) for c in CASES] + [(8, "l2", True, True),
                                                           (4, "cosine", True, True),
                                                           (4, "l2", True, True)])
def test_one_query_kernel_equals_batch_bit_for_bit(nbits, metric, by_residual, refine,
                                                   data, count_one_query_calls):
    idx, _, _ = _filled(nbits, metric, by_residual, refine, n=700)
    q = data[1][:6]
    kw = {"k_factor": 3} if refine else {}
    for nprobe, k in ((1, 5), (3, 9), (NLIST, 4), (5 * NLIST, 2)):
        for i in range(q.shape[0]):
            refs = [idx.search(q[i:i + 1], k, nprobe=nprobe, path=p, **kw)
                    for p in ("serial", "batch")]
            for row in (q[i], q[i:i + 1], q[i].astype(np.float64)):
                D, I = idx.search(row, k, nprobe=nprobe, **kw)
                for ref in refs:
                    np.testing.assert_array_equal(I, ref[1])
                    np.testing.assert_array_equal(D, ref[0])
    assert len(count_one_query_calls) == 4 * 6 * 3


def test_one_query_kernel_declines_bad_and_big_queries(data, count_one_query_calls,
                                                       monkeypatch):
    import numba_ivf.ivf.pq as pqmod
    idx, _, _ = _filled(4, "l2", refine=True, n=700)
    row = np.array(data[1][0])
    row[3] = np.inf
    with pytest.raises(ValueError, match="q contains NaN or infinity"):
        idx.search(row, 3, nprobe=2)
    assert len(count_one_query_calls) == 1          # the kernel saw inf and declined
    with pytest.raises(TypeError, match="k_factor must be an integer"):
        idx.search(data[1][0], 3, nprobe=2, k_factor=2.0)
    assert len(count_one_query_calls) == 1          # not even tried
    # Lists long enough to split over threads: the 4-bit kernel splits its scan itself
    # (fastscan_single), with the same results as the general path's "single" plan.
    monkeypatch.setattr(pqmod, "PQ_SINGLE_MIN_ROWS", 1)
    with numba_ivf.threads(2):
        D, I = idx.search(data[1][1], 6, nprobe=4, k_factor=2)
        ref = idx.search(data[1][1:2], 6, nprobe=4, k_factor=2, path="single")
    np.testing.assert_array_equal(I, ref[1])
    np.testing.assert_array_equal(D, ref[0])
    assert len(count_one_query_calls) == 2


@pytest.mark.parametrize("metric,by_residual", [("l2", True), ("ip", True),
                                               ("l2", False)])
@pytest.mark.parametrize("runs_per_thread", [1, 3, 64])
def test_fastscan_single_runs_equal_serial(metric, by_residual, runs_per_thread, data,
                                           monkeypatch):
    # The one-query plan interleaves the probes over runs, each into its own reservoir
    # (its own admission key and floor skips), then merges: the serial scan's top-k, to
    # the bit, for any number of runs (64 per thread: more runs than probes), filtered
    # or not, one query inside the fused kernel or several through the general path.
    import numba_ivf.ivf.pq as pqmod
    idx, _, ids = _filled(4, metric, by_residual, refine=False, n=700)
    q = data[1][:4]
    allowed = np.zeros(int(ids.max()) + 1, dtype=bool)
    allowed[ids[::3]] = True
    refs = [idx.search(q, 9, nprobe=NLIST, path="serial"),
            idx.search(q, 9, nprobe=NLIST, path="serial", filter=allowed)]
    monkeypatch.setattr(pqmod, "IVF_SINGLE_RUNS_PER_THREAD", runs_per_thread)
    monkeypatch.setattr(pqmod, "PQ_SINGLE_MIN_ROWS", 1)
    with numba_ivf.threads(2):
        for flt, (Dr, Ir) in zip((None, allowed), refs):
            D, I = idx.search(q, 9, nprobe=NLIST, path="single", filter=flt)
            np.testing.assert_array_equal(I, Ir)
            np.testing.assert_array_equal(D, Dr)
            for i in range(len(q)):
                D1, I1 = idx.search(q[i], 9, nprobe=NLIST, filter=flt)
                np.testing.assert_array_equal(I1[0], Ir[i])
                np.testing.assert_array_equal(D1[0], Dr[i])


@pytest.mark.parametrize("nbits", [8, 4])
def test_one_query_kernel_with_split_coarse_step_equals_batch(nbits, data, monkeypatch,
                                                              count_one_query_calls):
    # Tiny runs force the thread-split coarse step of the fused kernel.
    import numba_ivf.ivf.pq as pqmod
    idx, _, _ = _filled(nbits, "l2", refine=nbits == 4, n=700)
    q = data[1][:5]
    kw = {"k_factor": 2} if nbits == 4 else {}
    refs = [idx.search(q[i:i + 1], 7, nprobe=3, path="serial", **kw) for i in range(5)]
    monkeypatch.setattr(pqmod, "IVF_ONE_QUERY_MIN_RUN", 1)
    with numba_ivf.threads(2):
        for i in range(5):
            D, I = idx.search(q[i], 7, nprobe=3, **kw)
            np.testing.assert_array_equal(I, refs[i][1])
            np.testing.assert_array_equal(D, refs[i][0])
    assert len(count_one_query_calls) == 5


@pytest.mark.parametrize("nbits", [8, 4])
def test_one_query_plan_follows_mutation_threads_and_pickle(nbits, data):
    # The fused kernel's arguments are cached per index (IVFPQ._one_plan): every add,
    # remove, thread count and pickle round trip must give the general path's answer.
    import pickle
    idx, x, ids = _filled(nbits, "l2", refine=True, n=700)
    q = data[1][:3]

    def check():
        for i in range(len(q)):
            D1, I1 = idx.search(q[i], 6, nprobe=3, k_factor=2)
            D, I = idx.search(q[i:i + 1], 6, nprobe=3, k_factor=2, path="serial")
            np.testing.assert_array_equal(I1, I)
            np.testing.assert_array_equal(D1, D)

    check()
    assert "_one_plan_cache" in idx.__dict__
    idx.add(x[:300] + 0.01, ids=ids.max() + 1 + np.arange(300))
    assert "_one_plan_cache" not in idx.__dict__      # dropped, so arenas resize in place
    check()
    idx.remove(ids[::2])
    check()
    with numba_ivf.threads(1):
        check()
    check()
    idx2 = pickle.loads(pickle.dumps(idx))
    assert "_one_plan_cache" not in idx2.__dict__
    for i in range(len(q)):
        np.testing.assert_array_equal(idx2.search(q[i], 6, nprobe=3, k_factor=2)[1],
                                      idx.search(q[i], 6, nprobe=3, k_factor=2)[1])


@pytest.mark.parametrize("nbits", [8, 4])
def test_one_query_entry_points_by_query_type(nbits, data):
    # The one-query plan calls the kernel's compiled entry point, one per query type
    # (dtype, writeable, aligned: ``_dispatch.row_key``), found on the first call of
    # that type through the dispatcher. Each must give the batch path's bits; a type
    # it has not seen goes through the dispatcher first, never an entry point of
    # another type.
    from numba_ivf._dispatch import row_key
    idx, _, _ = _filled(nbits, "l2", refine=True, n=700)
    q = data[1][:3]
    ro = q.copy()
    ro.flags.writeable = False
    buf = np.zeros(q.nbytes + 1, dtype=np.uint8)
    unaligned = np.frombuffer(buf[1:].data, dtype=np.float32).reshape(q.shape)
    unaligned[...] = q
    assert not unaligned.flags.aligned
    rows = [q, q.astype(np.float64), ro, unaligned, q]
    keys = {row_key(r[0]) for r in rows}
    assert len(keys) == 4
    for r in rows:
        for i in range(len(q)):
            D1, I1 = idx.search(r[i], 6, nprobe=3, k_factor=2)
            D, I = idx.search(q[i:i + 1], 6, nprobe=3, k_factor=2, path="serial")
            np.testing.assert_array_equal(I1, I)
            np.testing.assert_array_equal(D1, D)
    plan = idx._one_plan()
    assert set(plan.calls) == keys
    assert all(c is not plan.kernel for c in plan.calls.values())   # entry points
    assert row_key(q[0].astype(np.float16)) is None
    assert row_key(q[:, ::2][0]) is None               # not C-contiguous


def test_compiled_entry_matches_dispatch():
    from numba import njit

    from numba_ivf._dispatch import compiled_entry

    @njit
    def f(a, n):
        return a.sum() * n

    a = np.arange(5, dtype=np.float32)
    assert f(a, 2) == 20.0
    ep = compiled_entry(f, (a, 2))
    assert ep is not f and ep(a, 3) == 30.0
    assert compiled_entry(f, (a.astype(np.float64), 2)) is f     # no such overload
    assert compiled_entry(f, (object(), 2)) is f                  # untypable
    assert compiled_entry(len, (a,)) is len                       # not a dispatcher
