"""ProductQuantizer: encode/decode/tables against the plain-loop oracle, errors."""

import numpy as np
import pytest

import numba_ivf
from tests.naive import pq as naive


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    pqs = {}
    for nbits in (4, 8):
        pq = numba_ivf.ProductQuantizer(24, 6, nbits=nbits)
        pq.train(x, n_iter=8)
        pqs[nbits] = pq
    return x, pqs


@pytest.mark.parametrize("nbits", [4, 8])
def test_encode_matches_oracle(trained, nbits):
    x, pqs = trained
    pq = pqs[nbits]
    assert pq.codebooks.shape == (6, 2**nbits, 4)
    codes = pq.encode(x[:200])
    ref = naive.encode(x[:200], pq.codebooks)
    # Near-ties may differ by float32 rounding: compare the chosen code's distance.
    sub = x[:200].reshape(200, 6, 4).astype(np.float64)
    cb = pq.codebooks.astype(np.float64)
    got_d = ((sub - cb[np.arange(6), codes]) ** 2).sum(-1)
    ref_d = ((sub - cb[np.arange(6), ref]) ** 2).sum(-1)
    assert (codes == ref).mean() > 0.99
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nbits", [4, 8])
def test_decode_and_tables_match_oracle(trained, nbits):
    x, pqs = trained
    pq = pqs[nbits]
    codes = pq.encode(x[:50])
    np.testing.assert_allclose(pq.decode(codes), naive.decode(codes, pq.codebooks), rtol=0, atol=0)
    for metric in ("l2", "ip"):
        t = pq.distance_tables(x[:7], metric)
        ref = naive.tables(x[:7], pq.codebooks, metric)
        np.testing.assert_allclose(t, ref, rtol=1e-5, atol=1e-5)
        # ADC through the tables equals the distance to the decoded vector.
        rec = pq.decode(codes).astype(np.float64)
        q = x[3].astype(np.float64)
        want = ((rec - q) ** 2).sum(1) if metric == "l2" else rec @ q
        np.testing.assert_allclose(naive.adc(t[3], codes), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nbits, bound", [(4, 0.55), (8, 0.35)])
def test_reconstruction_error_is_bounded(trained, nbits, bound):
    x, pqs = trained
    rec = pqs[nbits].decode(pqs[nbits].encode(x))
    rel = ((x - rec) ** 2).sum() / (x ** 2).sum()
    assert rel < bound, rel


def test_codes_are_deterministic_and_accept_float64(trained):
    x, pqs = trained
    a = pqs[8].encode(x[:30])
    b = pqs[8].encode(np.asfortranarray(x[:30].astype(np.float64)))
    np.testing.assert_array_equal(a, b)


def test_errors():
    with pytest.raises(ValueError, match=r"d=10 is not divisible by m=3; .*divisors of 10: 1, 2, 5, 10"):
        numba_ivf.ProductQuantizer(10, 3)
    with pytest.raises(ValueError, match="nbits must be 4 or 8; got 6"):
        numba_ivf.ProductQuantizer(8, 2, nbits=6)
    pq = numba_ivf.ProductQuantizer(8, 2, nbits=8)
    with pytest.raises(RuntimeError, match="not trained"):
        pq.encode(np.ones((2, 8)))
    with pytest.raises(ValueError, match="x has 100 rows, but .* trains 256 centroids"):
        pq.train(np.ones((100, 8)))
    with pytest.raises(ValueError, match="x has 7 features, but ProductQuantizer"):
        pq.train(np.ones((300, 7)))
    pq.set_codebooks(np.zeros((2, 256, 4)))
    with pytest.raises(ValueError, match=r"codes must be integers in \[0, 256\)"):
        pq.decode(np.array([[0, -1]]))
    with pytest.raises(ValueError, match=r"codes must have shape \(n, 2\)"):
        pq.decode(np.zeros((3, 5), np.uint8))
    with pytest.raises(ValueError, match=r"codebooks must have shape \(2, 256, 4\)"):
        pq.set_codebooks(np.zeros((2, 16, 4)))
    with pytest.raises(ValueError, match="metric must be one of 'l2', 'ip'; got 'cosine'"):
        pq.distance_tables(np.ones((1, 8)), "cosine")


@pytest.mark.parametrize("ksub", [16, 256, 12])
def test_query_tables_equal_float64_sums(ksub):
    # The search tables (the IR kernel for ksub % 16 == 0, the loop otherwise) against
    # float64 sums, for each table kind, with strided query rows.
    from numba_ivf.kernels.encode import pq_encode as pe
    rng = np.random.default_rng(ksub)
    m, dsub = 5, 3
    cbt = rng.standard_normal((m, dsub, ksub)).astype(np.float32)
    q = rng.standard_normal((4, 2 * m * dsub)).astype(np.float32)[:, ::2]
    qr = q.astype(np.float64).reshape(4, m, dsub, 1)
    cb = cbt.astype(np.float64)[None]
    want = {pe.TABLE_L2: ((qr - cb) ** 2).sum(2), pe.TABLE_M2IP: -2 * (qr * cb).sum(2),
            pe.TABLE_NIP: -(qr * cb).sum(2)}
    for kind, ref in want.items():
        for fn in (pe.query_tables, pe.query_tables_serial):
            out = np.full((4, m, ksub), np.nan, dtype=np.float32)
            fn(q, cbt, kind, out)
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
