"""Product quantizer kernels: decode, float distance tables, residuals.

Encoding reuses the tiled assignment kernel once per sub-space (see ``numba_ivf.pq``);
what is left here is the per-row gather and table arithmetic that has no GEMM shape.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import FASTMATH
from ._pqtable import table_rows


@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def pq_decode(codes, codebooks):
    """Reconstruction (n, m*dsub) float32: row i = concat_j codebooks[j, codes[i, j]]."""
    n, m = codes.shape
    dsub = codebooks.shape[2]
    out = np.empty((n, m * dsub), dtype=np.float32)
    for i in prange(n):
        for j in range(m):
            c = codes[i, j]
            for t in range(dsub):
                out[i, j * dsub + t] = codebooks[j, c, t]
    return out


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _tables_one(q, codebooks_t, l2, out):
    """out[j, c]: squared distance (l2) or inner product of the query's sub-vector j
    and centroid c; codebooks_t is (m, dsub, ksub), so the inner loop runs over the
    ksub centroids and vectorises (one sub-dimension at a time, in order)."""
    m, dsub, ksub = codebooks_t.shape
    for j in range(m):
        for c in range(ksub):
            out[j, c] = 0.0
        for t in range(dsub):
            qt = q[j * dsub + t]
            if l2:
                for c in range(ksub):
                    diff = qt - codebooks_t[j, t, c]
                    out[j, c] += diff * diff
            else:
                for c in range(ksub):
                    out[j, c] += qt * codebooks_t[j, t, c]


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _table(q, codebooks_t, l2, f, out):
    """out = the squared distances (l2) or f times the inner products of one query:
    ``_pqtable.table_rows`` (each group of 16 codes' sums kept in registers) when ksub
    is a multiple of 16 (PQ's 16 and 256), else the plain loop."""
    if codebooks_t.shape[2] % 16 == 0:
        table_rows(q, codebooks_t, l2, f, out)
        return
    _tables_one(q, codebooks_t, l2, out)
    if not l2 and f != 1.0:
        for j in range(out.shape[0]):
            for c in range(out.shape[1]):
                out[j, c] *= f


@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def pq_distance_tables(q, codebooks_t, l2):
    """Per query, sub-space and code: squared distance (l2) or inner product.

    q: float32 (nq, d); codebooks_t: float32 (m, dsub, ksub), the codebooks with the
    last two axes swapped (``ProductQuantizer.codebooks_t``); returns (nq, m, ksub).
    """
    nq = q.shape[0]
    m, _, ksub = codebooks_t.shape
    out = np.empty((nq, m, ksub), dtype=np.float32)
    for i in prange(nq):
        _table(q[i], codebooks_t, l2, np.float32(1.0), out[i])
    return out


# -- search tables: what an IVF-PQ scan adds up, "smaller is better" -------------------
# TABLE_L2: squared distances (L2 without residual); TABLE_M2IP: -2 q_j.r_jc (L2 by
# residual, FAISS's decomposition, to which the list's term table is added);
# TABLE_NIP: -q_j.r_jc (inner-product metrics). Scaling by -2 or -1 is exact, so a table
# has the same bits wherever it is built.
TABLE_L2 = 0
TABLE_M2IP = 1
TABLE_NIP = 2


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def query_table(q, codebooks_t, kind, out):
    """The search table (m, ksub) of one float32 query into ``out`` (C-contiguous).
    Every scan builds its tables here, so they have the same bits on every path."""
    f = np.float32(-2.0) if kind == TABLE_M2IP else np.float32(-1.0)
    _table(q, codebooks_t, kind == TABLE_L2, f, out)


@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def query_tables(q, codebooks_t, kind, out):
    """``query_table`` of every row of q into out (nq, m, ksub) float32; prange over
    queries. The caller allocates ``out`` with numpy: allocated here (7 MB per 1000
    queries at m=112) its first touch cost more page faults than the tables took (numpy
    asks for huge pages for large arrays, Numba's allocator does not): 47 vs 16 ms for
    10000 queries."""
    for i in prange(q.shape[0]):
        query_table(q[i], codebooks_t, kind, out[i])


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def query_tables_serial(q, codebooks_t, kind, out):
    """``query_tables`` on the calling thread (a few queries)."""
    for i in range(q.shape[0]):
        query_table(q[i], codebooks_t, kind, out[i])


@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def residuals(x, centroids, labels):
    """x[i] - centroids[labels[i]], float32 (n, d)."""
    n, d = x.shape
    out = np.empty((n, d), dtype=np.float32)
    for i in prange(n):
        c = labels[i]
        for j in range(d):
            out[i, j] = x[i, j] - centroids[c, j]
    return out
