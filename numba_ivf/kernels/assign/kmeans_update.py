"""k-means update step: centroid sums and counts, and k-means++ seeding distances.

The update is a scatter (each point adds into its centroid's row), so the driver gives
every chunk of points its own (k, d) partial-sum buffer and reduces the buffers in a
fixed order afterwards: no races, and the result depends only on the chunking, which
depends only on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import FASTMATH


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _chunk_sums(x, labels, s0, s1, sums, counts):
    d = x.shape[1]
    for i in range(s0, s1):
        c = labels[i]
        counts[c] += 1
        for j in range(d):
            sums[c, j] += x[i, j]


@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def centroid_sums(x, labels, k, n_chunks):
    """Per-centroid float64 sums (k, d) and int64 counts (k,) of the rows of x."""
    n, d = x.shape
    n_chunks = max(1, min(n_chunks, n))
    step = (n + n_chunks - 1) // n_chunks
    part_sums = np.zeros((n_chunks, k, d), dtype=np.float64)
    part_counts = np.zeros((n_chunks, k), dtype=np.int64)
    for t in prange(n_chunks):
        _chunk_sums(x, labels, t * step, min(n, (t + 1) * step), part_sums[t], part_counts[t])
    sums = np.zeros((k, d), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    # Reduce over chunks in a fixed order, parallel over centroids (each row is owned
    # by one iteration).
    for c in prange(k):
        for t in range(n_chunks):
            counts[c] += part_counts[t, c]
            for j in range(d):
                sums[c, j] += part_sums[t, c, j]
    return sums, counts


@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def update_min_sqdist(x, center, min_d2, n_chunks):
    """min_d2[i] = min(min_d2[i], ||x_i - center||^2); returns the new total (float64)."""
    n, d = x.shape
    n_chunks = max(1, min(n_chunks, n))
    step = (n + n_chunks - 1) // n_chunks
    partial = np.zeros(n_chunks, dtype=np.float64)
    for t in prange(n_chunks):
        acc_total = 0.0
        for i in range(t * step, min(n, (t + 1) * step)):
            acc = 0.0
            for j in range(d):
                diff = np.float64(x[i, j]) - center[j]
                acc += diff * diff
            if acc < min_d2[i]:
                min_d2[i] = acc
            acc_total += min_d2[i]
        partial[t] = acc_total
    total = 0.0
    for t in range(n_chunks):
        total += partial[t]
    return total


@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def own_sqdist(x, centroids, labels):
    """Squared distance (float64 accumulation) of each row to its own centroid."""
    n, d = x.shape
    out = np.empty(n, dtype=np.float64)
    for i in prange(n):
        c = labels[i]
        acc = 0.0
        for j in range(d):
            diff = np.float64(x[i, j]) - centroids[c, j]
            acc += diff * diff
        out[i] = acc
    return out
