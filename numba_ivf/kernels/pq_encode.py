"""Product quantizer kernels: decode, float distance tables, residuals.

Encoding reuses the tiled assignment kernel once per sub-space (see ``numba_ivf.pq``);
what is left here is the per-row gather and table arithmetic that has no GEMM shape.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH


@njit(cache=True, parallel=True, fastmath=FASTMATH)
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


@njit(cache=True, fastmath=FASTMATH)
def _tables_one(q, codebooks, l2, out):
    m, ksub, dsub = codebooks.shape
    for j in range(m):
        for c in range(ksub):
            acc = np.float32(0.0)
            if l2:
                for t in range(dsub):
                    diff = q[j * dsub + t] - codebooks[j, c, t]
                    acc += diff * diff
            else:
                for t in range(dsub):
                    acc += q[j * dsub + t] * codebooks[j, c, t]
            out[j, c] = acc


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def pq_distance_tables(q, codebooks, l2):
    """Per query, sub-space and code: squared distance (l2) or inner product.

    q: float32 (nq, d); codebooks: float32 (m, ksub, dsub); returns (nq, m, ksub).
    """
    nq = q.shape[0]
    m, ksub, _ = codebooks.shape
    out = np.empty((nq, m, ksub), dtype=np.float32)
    for i in prange(nq):
        _tables_one(q[i], codebooks, l2, out[i])
    return out


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def residuals(x, centroids, labels):
    """x[i] - centroids[labels[i]], float32 (n, d)."""
    n, d = x.shape
    out = np.empty((n, d), dtype=np.float32)
    for i in prange(n):
        c = labels[i]
        for j in range(d):
            out[i, j] = x[i, j] - centroids[c, j]
    return out
