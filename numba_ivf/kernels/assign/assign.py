"""Coarse assignment: each point to its nearest centroid (argmax) or its top-p centroids.

Three variants of the argmax live side by side and are benchmarked against each other:

- ``scalar``: the oracle. Plain loops, float64, exact squared distances; no parallelism
  and no fastmath. Obviously correct, and slow.
- ``monolithic``: one (n, k) score matrix from numpy's BLAS GEMM, then argmax. The naive
  baseline: the matrix costs n*k*4 bytes of memory traffic twice.
- ``tiled``: prange over tiles of points; each tile is multiplied against panels of
  NR centroids by a register-blocked micro-kernel (``_microkernel.dot_block``) and every
  MR x NR block is reduced to the running per-row best at once, so no (n, k) matrix, not
  even a (tile, k) one, is ever written. No BLAS inside prange.

For L2 the score maximised is x.c - ||c||^2 / 2 (= (||x||^2 - ||x - c||^2) / 2), for
inner product x.c. Ties go to the lowest centroid index: blocks are visited in
increasing centroid order and only a strictly better score replaces the best.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._config import (ASSIGN_MR, ASSIGN_NR, ASSIGN_TILE_BYTES, ASSIGN_TILE_MAX,
                       ASSIGN_TILE_MIN, ASSIGN_TILES_PER_THREAD,
                       ASSIGN_TOPK_CUT_STEPS, ASSIGN_TOPK_SCORE_BYTES,
                       ASSIGN_TOPK_SCORES_MIN_P, FASTMATH, SCREEN_MAX_P,
                       SCREEN_MIN_ROWS)
from ..._threads import serialized_launches
from ..._validation import check_choice, check_int, check_metric, check_vectors
from ..common.topk import insert_best
from ._microkernel import dot_block

VARIANTS = ("scalar", "monolithic", "tiled", "screened")


# --------------------------------------------------------------------------- layout
class CentroidPanels(NamedTuple):
    """Centroids laid out for the micro-kernel.

    panels: float32 (npanel, d, NR), centroid ``p*NR + c`` in ``panels[p, :, c]``;
    bias: float32 (npanel*NR,) added to every dot product: -||c||^2/2 for L2, 0 for
    inner product, -inf for the padding columns so they never win; k: real count.
    """

    panels: np.ndarray
    bias: np.ndarray
    k: int
    l2: bool
    # The int8 screen (``screen.ScreenPanels``) where it is faster than the float32
    # kernel (``screen.worth_screening``); batches of rows then take it.
    screen: object = None


def prepare_centroids(centroids: np.ndarray, l2: bool,
                      screen: bool | None = None) -> CentroidPanels:
    """Lay out float32 C-contiguous centroids (k, d) in panels of NR columns, and the
    int8 screen if ``screen`` (default: where ``screen.worth_screening`` says)."""
    from . import screen as _screen
    k, d = centroids.shape
    npanel = -(-k // ASSIGN_NR)
    padded = np.zeros((npanel * ASSIGN_NR, d), dtype=np.float32)
    padded[:k] = centroids
    panels = np.ascontiguousarray(padded.reshape(npanel, ASSIGN_NR, d).transpose(0, 2, 1))
    bias = np.full(npanel * ASSIGN_NR, -np.inf, dtype=np.float32)
    if l2:
        c64 = centroids.astype(np.float64)
        bias[:k] = -0.5 * np.einsum("ij,ij->i", c64, c64)
    else:
        bias[:k] = 0.0
    if screen is None:
        screen = _screen.worth_screening(k, d)
    sp = _screen.prepare_screen(centroids, l2) if screen else None
    return CentroidPanels(panels, bias, k, l2, sp)


def tile_rows(n: int, d: int, n_threads: int) -> int:
    """Points per prange task: an L2-sized tile, but enough tiles for every thread."""
    tile = ASSIGN_TILE_BYTES // (4 * max(d, 1))
    tile = min(tile, -(-n // (ASSIGN_TILES_PER_THREAD * max(n_threads, 1))))
    tile = max(ASSIGN_TILE_MIN, min(ASSIGN_TILE_MAX, tile))
    return -(-tile // ASSIGN_MR) * ASSIGN_MR


# --------------------------------------------------------------------------- workers
@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _scores_to_sqdist(x, i, scores):
    """In place: L2 scores s = x.c - ||c||^2/2 of row i become ||x - c||^2 = ||x||^2 - 2s."""
    acc = np.float32(0.0)
    for j in range(x.shape[1]):
        acc += x[i, j] * x[i, j]
    for q in range(scores.shape[0]):
        scores[q] = max(acc - np.float32(2.0) * scores[q], np.float32(0.0))


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _tile_argmax(x, s0, s1, panels, bias, block, rowmax, best, labels):
    """Best (score, index) for rows s0..s1 over every centroid panel."""
    for i in range(s0, s1):
        best[i] = -np.inf
        labels[i] = 0
    for p in range(panels.shape[0]):
        for i0 in range(s0, s1, ASSIGN_MR):
            dot_block(x, i0, panels, p, bias, block, rowmax)
            for r in range(min(ASSIGN_MR, s1 - i0)):
                i = i0 + r
                if rowmax[r] > best[i]:
                    # The first column holding the block maximum: lowest index wins.
                    c = 0
                    while block[r, c] != rowmax[r]:
                        c += 1
                    best[i] = rowmax[r]
                    labels[i] = p * ASSIGN_NR + c


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _tile_topk(x, s0, s1, panels, bias, block, rowmax, top_s, top_i):
    """Sorted top-p (score desc, index asc) for rows s0..s1; p = top_s.shape[1]."""
    p_top = top_s.shape[1]
    for i in range(s0, s1):
        for t in range(p_top):
            top_s[i, t] = -np.inf
            top_i[i, t] = -1
    for p in range(panels.shape[0]):
        for i0 in range(s0, s1, ASSIGN_MR):
            dot_block(x, i0, panels, p, bias, block, rowmax)
            for r in range(min(ASSIGN_MR, s1 - i0)):
                i = i0 + r
                worst = top_s[i, p_top - 1]
                if not rowmax[r] > worst:
                    continue
                for c in range(ASSIGN_NR):
                    s = block[r, c]
                    if s > worst:
                        # Insertion; equal scores keep the earlier (lower) index first.
                        t = p_top - 1
                        while t > 0 and s > top_s[i, t - 1]:
                            top_s[i, t] = top_s[i, t - 1]
                            top_i[i, t] = top_i[i, t - 1]
                            t -= 1
                        top_s[i, t] = s
                        top_i[i, t] = p * ASSIGN_NR + c
                        worst = top_s[i, p_top - 1]


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _count_ge(s, t):
    c = 0
    for j in range(s.shape[0]):
        c += np.int64(s[j] >= t)
    return c


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def floor_at_least(s, p):
    """A value t with at least p finite entries of s >= t (every finite one when fewer),
    close below the p-th largest: bisection on the values, one vectorised count a step,
    until at most p + max(8, p/4) pass. -inf entries (padding columns) never count.
    Any such t lets a compaction of s >= t keep the exact top p."""
    n = s.shape[0]
    hi = s[0]
    lo = np.float32(np.inf)
    for j in range(n):
        hi = max(hi, s[j])
        if s[j] > -np.inf:
            lo = min(lo, s[j])
    if p == 1:
        return hi                            # the largest itself
    most = p + max(8, p // 4)
    t = lo                                   # count(>= lo) = every finite score
    if lo < np.inf and hi < np.inf and _count_ge(s, hi) < p:
        # Invariant: count(>= lo) >= p, count(>= hi) < p.
        for _ in range(ASSIGN_TOPK_CUT_STEPS):
            mid = np.float32(0.5 * (np.float64(lo) + np.float64(hi)))
            if mid == lo or mid == hi:
                break
            c = _count_ge(s, mid)
            if c < p:
                hi = mid
            else:
                lo = mid
                if c <= most:
                    break
        t = lo
    return t


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _row_topk(s, out_s, out_i, cs, ci):
    """Sorted top-p (score desc, index asc) of one row of scores ``s``; p = len(out_s).

    A score t with p <= #{s >= t} <= p + slack is found by bisection on the values
    (``floor_at_least``), the scores >= t are compacted without branches, and only
    those few are insertion-sorted. Ties at t keep every tied entry, and the stable
    insertion keeps lower indices first, so the result equals a full sort's.
    cs, ci: scratch of len(s).
    """
    p_top = out_s.shape[0]
    n = s.shape[0]
    t = floor_at_least(s, p_top)
    w = 0
    for j in range(n):
        v = s[j]
        cs[w] = v
        ci[w] = j
        w += np.int64(v >= t and v > -np.inf)
    # Stable insertion sort of the w candidates, keeping the first p.
    m = insert_best(cs, ci, w, out_s, out_i)
    for j in range(m, p_top):
        out_s[j] = -np.inf
        out_i[j] = -1


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _tile_topk_scores(x, s0, s1, panels, bias, block, rowmax, top_s, top_i, S, cs, ci):
    """``_tile_topk`` for larger p: the tile's (rows, k) scores are written to ``S``
    (sized to stay in L2) and each row is cut to its top p at once (``_row_topk``)."""
    for p in range(panels.shape[0]):
        c0 = p * ASSIGN_NR
        for i0 in range(s0, s1, ASSIGN_MR):
            dot_block(x, i0, panels, p, bias, block, rowmax)
            for r in range(min(ASSIGN_MR, s1 - i0)):
                t = i0 - s0 + r
                for c in range(ASSIGN_NR):
                    S[t, c0 + c] = block[r, c]
    for i in range(s0, s1):
        _row_topk(S[i - s0], top_s[i], top_i[i], cs, ci)


# --------------------------------------------------------------------------- drivers
@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def tiled_argmax(x, panels, bias, l2, tile):
    """Labels (int64) and winning distance (L2: squared distance; ip: score) per row."""
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float32)
    ntiles = (n + tile - 1) // tile
    for t in prange(ntiles):
        s0 = t * tile
        s1 = min(s0 + tile, n)
        block = np.empty((ASSIGN_MR, ASSIGN_NR), dtype=np.float32)
        rowmax = np.empty(ASSIGN_MR, dtype=np.float32)
        _tile_argmax(x, s0, s1, panels, bias, block, rowmax, best, labels)
        if l2:
            for i in range(s0, s1):
                _scores_to_sqdist(x, i, best[i:i + 1])
    return labels, best


@njit(nogil=True, cache=True, parallel=True, fastmath=FASTMATH)
def tiled_topk(x, panels, bias, l2, tile, p_top, score_block):
    """Top-p centroids per row, best first: (distances float32, indices int64).
    ``score_block`` picks the worker (``_tile_topk_scores`` or ``_tile_topk``); both
    give the same result."""
    n = x.shape[0]
    top_s = np.empty((n, p_top), dtype=np.float32)
    top_i = np.empty((n, p_top), dtype=np.int64)
    ntiles = (n + tile - 1) // tile
    for t in prange(ntiles):
        s0 = t * tile
        s1 = min(s0 + tile, n)
        block = np.empty((ASSIGN_MR, ASSIGN_NR), dtype=np.float32)
        rowmax = np.empty(ASSIGN_MR, dtype=np.float32)
        if score_block:
            kk = panels.shape[0] * ASSIGN_NR
            S = np.empty((s1 - s0, kk), dtype=np.float32)
            cs = np.empty(kk, dtype=np.float32)
            ci = np.empty(kk, dtype=np.int64)
            _tile_topk_scores(x, s0, s1, panels, bias, block, rowmax, top_s, top_i, S,
                              cs, ci)
        else:
            _tile_topk(x, s0, s1, panels, bias, block, rowmax, top_s, top_i)
        if l2:
            for i in range(s0, s1):
                _scores_to_sqdist(x, i, top_s[i])
    return top_s, top_i


@njit(nogil=True, cache=True)
def scalar_argmin_oracle(x, centroids, l2):
    """The oracle: exact float64 squared distance (L2) or score (ip), plain loops.

    Returns labels (int64) and float64 distances; ties to the lowest index.
    """
    n, d = x.shape
    k = centroids.shape[0]
    labels = np.zeros(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    for i in range(n):
        best = np.inf if l2 else -np.inf
        lab = 0
        for c in range(k):
            acc = 0.0
            for j in range(d):
                if l2:
                    diff = np.float64(x[i, j]) - np.float64(centroids[c, j])
                    acc += diff * diff
                else:
                    acc += np.float64(x[i, j]) * np.float64(centroids[c, j])
            if (l2 and acc < best) or (not l2 and acc > best):
                best = acc
                lab = c
        labels[i] = lab
        dist[i] = best
    return labels, dist


def monolithic_argmax(x: np.ndarray, centroids: np.ndarray, l2: bool):
    """The naive baseline: one (n, k) GEMM through numpy's BLAS, then argmax."""
    scores = x @ centroids.T
    if l2:
        scores -= 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    labels = np.argmax(scores, axis=1)  # first maximum: ties to the lowest index
    best = scores[np.arange(x.shape[0]), labels]
    if l2:
        best = np.maximum(np.einsum("ij,ij->i", x, x) - 2.0 * best, 0.0)
    return labels.astype(np.int64, copy=False), best.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- wrappers
def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    norms[norms == 0] = 1.0  # a zero vector stays zero: its cosine with anything is 0
    return x / norms[:, None]


def _check_pair(x, centroids, metric):
    metric = check_metric(metric)
    c = check_vectors(centroids, "centroids", min_rows=1)
    x = check_vectors(x, "x", allow_1d=False)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features, but centroids have "
                         f"{c.shape[1]}; both must have the same number of columns.")
    if metric == "cosine":
        x, c = _normalize_rows(x), _normalize_rows(c)
    return x, c, metric


def _threads() -> int:
    import numba
    return numba.get_num_threads()


@serialized_launches
def assign_nearest(x, centroids, metric: str = "l2", variant: str = "tiled"):
    """Assign each row of ``x`` to its nearest centroid.

    Parameters
    ----------
    x : array-like of shape (n, d)
        Points, float32 or float64, any memory order (converted to float32 once).
    centroids : array-like of shape (k, d)
    metric : {"l2", "ip", "cosine"}, default "l2"
        "l2": smallest squared Euclidean distance; "ip": largest inner product;
        "cosine": largest cosine similarity (rows normalised first).
    variant : {"tiled", "monolithic", "scalar", "screened"}, default "tiled"
        Which kernel computes it (all give the same labels up to float rounding of
        near-ties): the parallel register-blocked kernel, one numpy GEMM plus argmax,
        the plain-loop float64 oracle, or the int8 screen with an exact float64
        re-score of the centroids it cannot rule out (``kernels.assign.screen``).

    Returns
    -------
    labels : ndarray of shape (n,), int64
        Index of the winning centroid; ties go to the lowest index.
    distances : ndarray of shape (n,), float32
        Squared distance for "l2", inner product for "ip", cosine similarity for
        "cosine".

    Examples
    --------
    >>> import numpy as np, numba_ivf
    >>> x = np.array([[0.0, 0.0], [10.0, 10.0]])
    >>> labels, dist = numba_ivf.assign_nearest(x, [[9.0, 9.0], [1.0, 0.0]])
    >>> labels.tolist(), dist.tolist()
    ([1, 0], [1.0, 2.0])
    """
    check_choice("variant", variant, VARIANTS)
    x, c, metric = _check_pair(x, centroids, metric)
    l2 = metric == "l2"
    if x.shape[0] == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if variant == "scalar":
        labels, dist = scalar_argmin_oracle(x, c, l2)
        return labels, dist.astype(np.float32)
    if variant == "monolithic":
        return monolithic_argmax(x, c, l2)
    if variant == "screened":
        from .screen import prepare_screen, screened_topk
        dist, labels = screened_topk(x, prepare_screen(c, l2), 1, n_threads=_threads())
        return labels[:, 0], dist[:, 0]
    prepared = prepare_centroids(c, l2, screen=False)
    return tiled_argmax(x, prepared.panels, prepared.bias, l2,
                        tile_rows(x.shape[0], x.shape[1], _threads()))


def _screened(x, prepared, p=1) -> bool:
    return (prepared.screen is not None and x.shape[0] >= SCREEN_MIN_ROWS
            and p <= SCREEN_MAX_P)


def assign_prepared(x: np.ndarray, prepared: CentroidPanels):
    """Argmax of validated float32 rows against prepared centroids: the int8 screen
    where it was prepared, else the tiled kernel. Returns (labels, distances)."""
    if _screened(x, prepared):
        from .screen import screened_topk
        dist, labels = screened_topk(x, prepared.screen, 1, n_threads=_threads())
        return labels[:, 0], dist[:, 0]
    return tiled_argmax(x, prepared.panels, prepared.bias, prepared.l2,
                        tile_rows(x.shape[0], x.shape[1], _threads()))


def topk_prepared(x: np.ndarray, prepared: CentroidPanels, p: int,
                  score_block: bool | None = None):
    """Tiled top-p of validated float32 rows against prepared centroids, best first.

    Returns (distances float32 (n, p), indices int64 (n, p)); p <= k. The int8 screen
    answers instead where it was prepared (``prepare_centroids``), x has at least
    SCREEN_MIN_ROWS rows and p <= SCREEN_MAX_P. ``score_block`` forces one float32 worker (benchmarks compare
    them); by default p >= ASSIGN_TOPK_SCORES_MIN_P takes the score block.
    """
    if score_block is None and _screened(x, prepared, p):
        from .screen import screened_topk
        return screened_topk(x, prepared.screen, p, n_threads=_threads())
    if score_block is None:
        score_block = p >= ASSIGN_TOPK_SCORES_MIN_P
    tile = tile_rows(x.shape[0], x.shape[1], _threads())
    if score_block:
        # The tile's score block must stay in L2 beside the panel being read.
        kk = prepared.panels.shape[0] * ASSIGN_NR
        fit = max(ASSIGN_MR, ASSIGN_TOPK_SCORE_BYTES // (4 * kk) // ASSIGN_MR * ASSIGN_MR)
        tile = min(tile, fit)
    return tiled_topk(x, prepared.panels, prepared.bias, prepared.l2, tile, p,
                      bool(score_block))


@serialized_launches
def coarse_topk(q, centroids, nprobe: int, metric: str = "l2"):
    """The ``nprobe`` nearest centroids of each query, best first.

    Parameters
    ----------
    q : array-like of shape (nq, d)
    centroids : array-like of shape (k, d)
    nprobe : int
        How many centroids per query; clamped to k.
    metric : {"l2", "ip", "cosine"}

    Returns
    -------
    distances : ndarray of shape (nq, nprobe), float32
        Squared distances ascending ("l2"), scores descending ("ip", "cosine").
    lists : ndarray of shape (nq, nprobe), int64
        Centroid indices; ties to the lower index.
    """
    nprobe = check_int("nprobe", nprobe, min_value=1)
    x, c, metric = _check_pair(q, centroids, metric)
    nprobe = min(nprobe, c.shape[0])
    return topk_prepared(x, prepare_centroids(c, metric == "l2"), nprobe)
