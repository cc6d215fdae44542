"""PQ training: the m sub-space k-means of a product quantizer in one kernel call.

``ProductQuantizer.train`` used to run ``KMeans`` once per sub-space: 16-256 centroids
in 1-16 dimensions, so every Lloyd iteration was a few small parallel launches (the
assignment, the centroid sums) and numpy calls, each parallel over the rows of a tiny
problem. Here one parallel region runs every sub-space's whole Lloyd loop:

- ``pq_train_batched`` (driver): ``prange`` over the sub-spaces; each iteration trains
  one sub-space and writes only that sub-space's slice of the outputs.
- ``_train_subspace`` (worker, serial): copies its columns, then the Lloyd loop:
  assignment, objective, early stop, centroid sums, update with empty-cluster splits.
- ``_update`` (worker, serial): the update step, float64 like ``KMeans._update``.

The result equals ``KMeans(ksub, bounds=False, max_points_per_centroid=None)`` fitted
on each sub-space with the same seed, bit for bit (``tests/test_pq_train.py``), because
every step repeats KMeans's arithmetic:

- The assignment is KMeans's own float32 tiled kernel (``assign._tile_argmax`` over the
  same ``dot_block`` micro-kernel): score x.c - ||c||^2/2 as a chain of float32 FMAs in
  feature order plus a float32 bias, ties to the lowest index. float32, not float64:
  that is what KMeans does, so the labels (near-ties included) are the same.
- The bias -||c||^2/2 is summed in float64 from exact float32 squares and rounded to
  float32, as ``assign.prepare_centroids`` (numpy's einsum may add the d <= 16 squares
  in another order: a last-bit float64 difference, which then changes the float32 bias
  only if it sits on a float32 rounding boundary; not seen in the tests).
- The centroid sums are float64 per chunk of rows, the chunk partials added in chunk
  order (``kmeans_update.centroid_sums`` with the same ``n_chunks``).
- Empty clusters are split as ``KMeans._update``: for each empty cluster in increasing
  order, a cluster cj is drawn with probability (count - 1) / sum(count - 1), which is
  ``Generator.choice(k, p=...)``: p = w / sum(w), cdf = cumsum(p) / cdf[-1], cj = the
  first index with cdf > u for one ``Generator.random()`` double u. The caller draws
  those doubles from the sub-space's generator beforehand (``u``, consumed in order;
  at most k - 1 per iteration), so the kernel needs no random number generator.
- The early stop is KMeans's: stop when an iteration's labels equal the previous ones
  and the previous update split nothing.

Nothing here uses fastmath: the float64 update must add in KMeans's order, and the
assignment's arithmetic is fixed by the micro-kernel's explicit FMAs anyway.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import ASSIGN_MR, ASSIGN_NR, KMEANS_SPLIT_EPS, PQ_TRAIN_TILE_ROWS
from ..assign.assign import _tile_argmax

# Status of a sub-space (``status`` output): trained, or the 0-based iteration whose
# update produced a NaN/inf centroid (training of that sub-space stopped there).
OK = -1


@njit(nogil=True, cache=True)
def _choose_split(counts, u):
    """``Generator.choice(k, p=w / w.sum())`` with w = max(counts - 1, 0), given the
    generator's next double u: the same float64 operations in the same order."""
    k = counts.shape[0]
    total = 0.0
    for c in range(k):
        total += max(counts[c] - 1, 0)          # integers: exact in any order
    cdf = np.empty(k, dtype=np.float64)
    acc = 0.0
    for c in range(k):
        acc += max(counts[c] - 1, 0) / total    # p.cumsum(), sequential
        cdf[c] = acc
    last = cdf[k - 1]
    # cdf /= cdf[-1]; searchsorted(u, side="right"): first index with cdf > u.
    for c in range(k):
        if cdf[c] / last > u:
            return c
    return k - 1


@njit(nogil=True, cache=True)
def _update(sums, counts, cent, u, u_pos, scale):
    """New float32 centroids (in ``cent``) from float64 sums; empty clusters split from
    large ones (``KMeans._update``). Returns (splits made, next unused index of u)."""
    k, d = sums.shape
    new = np.empty((k, d), dtype=np.float64)
    cnt = counts.copy()
    n_split = 0
    for c in range(k):
        if cnt[c] > 0:
            for t in range(d):
                new[c, t] = sums[c, t] / cnt[c]
        else:
            for t in range(d):
                new[c, t] = np.float64(cent[c, t])
    for ci in range(k):
        if counts[ci] > 0:
            continue
        cj = _choose_split(cnt, u[u_pos])
        u_pos += 1
        for t in range(d):
            # KMEANS_SPLIT_EPS * sign * (|c| + 1e-3 * scale), signs alternating.
            sign = 1.0 if t % 2 == 0 else -1.0
            nudge = (KMEANS_SPLIT_EPS * sign) * (abs(new[cj, t]) + 1e-3 * scale)
            new[ci, t] = new[cj, t] + nudge
            new[cj, t] = new[cj, t] - nudge
        cnt[ci] = cnt[cj] // 2
        cnt[cj] -= cnt[ci]
        n_split += 1
    for c in range(k):
        for t in range(d):
            cent[c, t] = np.float32(new[c, t])
    return n_split, u_pos


@njit(nogil=True, cache=True)
def _prepare(cent, panels, bias):
    """``assign.prepare_centroids`` in place: centroid c in panels[c // NR, :, c % NR],
    bias -||c||^2 / 2 (float64 sum, rounded to float32); padding keeps 0 and -inf."""
    k, d = cent.shape
    for c in range(k):
        p = c // ASSIGN_NR
        q = c - p * ASSIGN_NR
        acc = 0.0
        for t in range(d):
            v = np.float64(cent[c, t])
            panels[p, t, q] = cent[c, t]
            acc += v * v
        bias[c] = np.float32(-0.5 * acc)


@njit(nogil=True, cache=True)
def _train_subspace(x, j, init_rows, n_iter, u, n_chunks, scale, early_stop,
                    cent, objective):
    """Lloyd's k-means of sub-space j (columns j*dsub ..) of x, from the rows
    ``init_rows``. Writes the centroids to ``cent`` (k, dsub) and each run iteration's
    objective (sum of squared distances) to ``objective``; returns (iterations run,
    splits made, status: OK or the iteration whose update was not finite)."""
    n = x.shape[0]
    k, dsub = cent.shape
    j0 = j * dsub
    xs = np.empty((n, dsub), dtype=np.float32)
    for i in range(n):
        for t in range(dsub):
            xs[i, t] = x[i, j0 + t]
    for c in range(k):
        for t in range(dsub):
            cent[c, t] = xs[init_rows[c], t]
    xnorm = np.empty(n, dtype=np.float32)      # the objective's ||x||^2, float32
    for i in range(n):
        acc = np.float32(0.0)
        for t in range(dsub):
            acc += xs[i, t] * xs[i, t]
        xnorm[i] = acc

    npanel = (k + ASSIGN_NR - 1) // ASSIGN_NR
    panels = np.zeros((npanel, dsub, ASSIGN_NR), dtype=np.float32)
    bias = np.full(npanel * ASSIGN_NR, -np.inf, dtype=np.float32)
    block = np.empty((ASSIGN_MR, ASSIGN_NR), dtype=np.float32)
    rowmax = np.empty(ASSIGN_MR, dtype=np.float32)
    best = np.empty(n, dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    prev = np.empty(n, dtype=np.int64)
    sums = np.zeros((k, dsub), dtype=np.float64)
    part = np.zeros((k, dsub), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    # centroid_sums's chunking: n_chunks chunks of ceil(n / n_chunks) rows.
    chunks = max(1, min(n_chunks, n))
    step = (n + chunks - 1) // chunks
    tile = PQ_TRAIN_TILE_ROWS

    n_split = 0
    total_split = 0
    u_pos = 0
    for it in range(n_iter):
        _prepare(cent, panels, bias)
        for s0 in range(0, n, tile):
            _tile_argmax(xs, s0, min(n, s0 + tile), panels, bias, block, rowmax,
                         best, labels)
        obj = 0.0
        for i in range(n):
            obj += max(xnorm[i] - np.float32(2.0) * best[i], np.float32(0.0))
        objective[it] = obj
        if early_stop and it > 0 and n_split == 0:
            same = True
            for i in range(n):
                if labels[i] != prev[i]:
                    same = False
                    break
            if same:
                return it + 1, total_split, OK
        prev[:] = labels
        sums[:] = 0.0
        counts[:] = 0
        for t in range(chunks):
            part[:] = 0.0
            for i in range(t * step, min(n, (t + 1) * step)):
                c = labels[i]
                counts[c] += 1
                for q in range(dsub):
                    part[c, q] += xs[i, q]
            for c in range(k):
                for q in range(dsub):
                    sums[c, q] += part[c, q]
        n_split, u_pos = _update(sums, counts, cent, u, u_pos, scale)
        total_split += n_split
        for c in range(k):
            for q in range(dsub):
                if not np.isfinite(cent[c, q]):
                    return it + 1, total_split, it
    return n_iter, total_split, OK


@njit(nogil=True, cache=True, parallel=True)
def pq_train_batched(x, ksub, init_rows, n_iter, u, n_chunks, scales, early_stop):
    """Train the m sub-space codebooks of x (n, m * dsub) float32 C-contiguous.

    init_rows: int64 (m, ksub) initial rows per sub-space; u: float64 (m, >= n_iter *
    (ksub - 1)) each sub-space's generator doubles for its splits; n_chunks: int64 (m,)
    chunks of the centroid sums; scales: float64 (m,) split scale (KMeans's RMS).
    Returns codebooks float32 (m, ksub, dsub), objective float64 (m, n_iter) (NaN past
    the iterations run), n_iter_run, n_split and status int64 (m,) (OK = -1, else the
    0-based iteration whose update was not finite).
    """
    m = init_rows.shape[0]
    dsub = x.shape[1] // m
    codebooks = np.empty((m, ksub, dsub), dtype=np.float32)
    objective = np.full((m, n_iter), np.nan, dtype=np.float64)
    n_run = np.zeros(m, dtype=np.int64)
    n_split = np.zeros(m, dtype=np.int64)
    status = np.full(m, OK, dtype=np.int64)
    for j in prange(m):
        r, s, st = _train_subspace(x, j, init_rows[j], n_iter, u[j], n_chunks[j],
                                   scales[j], early_stop, codebooks[j], objective[j])
        n_run[j] = r
        n_split[j] = s
        status[j] = st
    return codebooks, objective, n_run, n_split, status
