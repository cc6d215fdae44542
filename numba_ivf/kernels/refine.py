"""Exact re-ranking of approximate candidates (FAISS's IndexRefineFlat).

The approximate search returns ``k_factor * k`` candidate ids per query; their stored
float32 vectors (a row arena ``data`` of shape (capacity, d)) are compared to the query
exactly, with the same row keys as the IVF-Flat scan (``_rowkeys``), and the best k
kept (ties to the lower id).

Layers: ``refine`` (Python, checks shapes) -> ``refine_driver`` (prange over queries,
each owns its output row) -> the inlined per-pair workers.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH
from ._rowkeys import key1_ip, key1_l2
from .topk import ID_SENTINEL, heap_init, heap_push, heap_sort

__all__ = ["refine", "refine_driver", "refine_serial"]

_FM = set(FASTMATH)


@njit(cache=True, parallel=True, fastmath=_FM)
def refine_driver(q, data, rows, cand_ids, l2, out_d, out_i):
    """Best ``out_d.shape[1]`` candidates of each query by exact key.

    q (nq, d) float32; data (cap, d) float32; rows (nq, kc) int64 arena rows of the
    candidates (-1 = none); cand_ids (nq, kc) int64; l2: squared L2 keys, else negated
    inner products. out_d (nq, k) float32 keys ascending, out_i (nq, k) int64
    (ID_SENTINEL padding).
    """
    for qi in prange(q.shape[0]):
        hd = out_d[qi]
        hi_ = out_i[qi]
        heap_init(hd, hi_)
        for c in range(rows.shape[1]):
            r = rows[qi, c]
            if r < 0:
                continue
            key = key1_l2(q[qi], data, r) if l2 else key1_ip(q[qi], data, r)
            heap_push(hd, hi_, key, cand_ids[qi, c])
        heap_sort(hd, hi_)


@njit(cache=True, fastmath=_FM)
def refine_serial(q, data, rows, cand_ids, l2, out_d, out_i):
    """``refine_driver`` on the calling thread: for one or two queries, waking the
    thread pool costs more than the k_factor * k distances."""
    for qi in range(q.shape[0]):
        hd = out_d[qi]
        hi_ = out_i[qi]
        heap_init(hd, hi_)
        for c in range(rows.shape[1]):
            r = rows[qi, c]
            if r < 0:
                continue
            key = key1_l2(q[qi], data, r) if l2 else key1_ip(q[qi], data, r)
            heap_push(hd, hi_, key, cand_ids[qi, c])
        heap_sort(hd, hi_)


def refine(q: np.ndarray, data: np.ndarray, rows: np.ndarray, cand_ids: np.ndarray,
           k: int, l2: bool, parallel: bool = True):
    """Exact top-k of each query among its candidate rows.

    Parameters
    ----------
    q : ndarray of shape (nq, d), float32, C-contiguous
    data : ndarray of shape (capacity, d), float32
        Stored vectors; candidate ``c`` of query ``i`` is ``data[rows[i, c]]``.
    rows : ndarray of shape (nq, kc), int64
        Arena rows of the candidates, -1 where there is none.
    cand_ids : ndarray of shape (nq, kc), int64
        Ids reported for the candidates.
    k : int
        Results per query.
    l2 : bool
        Squared L2 keys if True, else negated inner products.
    parallel : bool, default True
        Threads over queries; False runs on the calling thread (same results).

    Returns
    -------
    keys : ndarray of shape (nq, k), float32, ascending (+inf padding)
    ids : ndarray of shape (nq, k), int64 (``ID_SENTINEL`` padding)
    """
    if rows.shape != cand_ids.shape or rows.ndim != 2 or rows.shape[0] != q.shape[0]:
        raise ValueError(f"rows and cand_ids must both have shape (nq={q.shape[0]}, kc); "
                         f"got {rows.shape} and {cand_ids.shape}.")
    if data.ndim != 2 or data.shape[1] != q.shape[1]:
        raise ValueError(f"data must have shape (capacity, {q.shape[1]}); got "
                         f"{data.shape}.")
    out_d = np.empty((q.shape[0], k), dtype=np.float32)
    out_i = np.full((q.shape[0], k), ID_SENTINEL, dtype=np.int64)
    fn = refine_driver if parallel else refine_serial
    fn(q, data, np.ascontiguousarray(rows, dtype=np.int64),
       np.ascontiguousarray(cand_ids, dtype=np.int64), bool(l2), out_d, out_i)
    return out_d, out_i
