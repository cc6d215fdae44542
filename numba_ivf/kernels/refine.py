"""Exact re-ranking of approximate candidates (FAISS's IndexRefineFlat).

The approximate search returns ``k_factor * k`` candidate ids per query; each id is
found in the inverted lists' hash map (``idmap``), its stored float32 vector (a row of
the arena ``data`` of shape (capacity, d)) is compared to the query exactly, with the
same row keys as the IVF-Flat scan (``_rowkeys``), and the best k are kept (ties to the
lower id).

Layers: ``refine`` (Python, checks shapes) -> ``refine_batch`` (prange over queries,
each owns its output row) or ``refine_serial`` (the calling thread: one query) -> the
serial worker ``refine_one``, which the one-query search kernels call too.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH
from ._rowkeys import key1_ip, key1_l2
from .idmap import map_row
from .topk import ID_SENTINEL, heap_init, heap_push, heap_sort

__all__ = ["refine", "refine_batch", "refine_one", "refine_serial"]

_FM = set(FASTMATH)


@njit(cache=True, fastmath=_FM)
def refine_one(q, data, cand, keys, vlist, voff, shift, starts, l2, rows, hd, hi_):
    """Sorted exact top-k (k = len(hd)) of one query among its candidate ids ``cand``
    (ID_SENTINEL = none) into (hd, hi_): squared L2 keys, or negated inner products.

    Two passes: every id's arena row first (``rows``, scratch of len(cand)), then the
    distances. The lookups are independent, so their cache misses overlap; fused with
    the distance and heap step they formed one dependent chain per candidate (measured
    here: 1.6x slower).
    """
    for c in range(cand.shape[0]):
        id_ = cand[c]
        rows[c] = -1 if id_ == ID_SENTINEL else map_row(keys, vlist, voff, shift, starts,
                                                        id_)
    heap_init(hd, hi_)
    for c in range(cand.shape[0]):
        r = rows[c]
        if r < 0:
            continue
        key = key1_l2(q, data, r) if l2 else key1_ip(q, data, r)
        if key <= hd[0]:
            heap_push(hd, hi_, key, cand[c])
    heap_sort(hd, hi_)


@njit(cache=True, parallel=True, fastmath=_FM)
def refine_batch(q, data, cand_ids, keys, vlist, voff, shift, starts, l2, out_d, out_i):
    """``refine_one`` for every query; prange over queries (the map is only read)."""
    for qi in prange(q.shape[0]):
        rows = np.empty(cand_ids.shape[1], dtype=np.int64)
        refine_one(q[qi], data, cand_ids[qi], keys, vlist, voff, shift, starts, l2, rows,
                   out_d[qi], out_i[qi])


@njit(cache=True, fastmath=_FM)
def refine_serial(q, data, cand_ids, keys, vlist, voff, shift, starts, l2, out_d, out_i):
    """``refine_batch`` on the calling thread: for one or two queries, waking the
    thread pool costs more than the k_factor * k distances."""
    rows = np.empty(cand_ids.shape[1], dtype=np.int64)
    for qi in range(q.shape[0]):
        refine_one(q[qi], data, cand_ids[qi], keys, vlist, voff, shift, starts, l2, rows,
                   out_d[qi], out_i[qi])


def refine(q: np.ndarray, lists, cand_ids: np.ndarray, k: int, l2: bool,
           parallel: bool = True):
    """Exact top-k of each query among its candidate ids.

    Parameters
    ----------
    q : ndarray of shape (nq, d), float32, C-contiguous
    lists : numba_ivf.ivf._lists.InvertedLists
        Holds the vectors (payload ``"data"``) and the id map.
    cand_ids : ndarray of shape (nq, kc), int64
        Candidate ids, ``ID_SENTINEL`` for none.
    k : int
        Results per query.
    l2 : bool
        Squared L2 keys if True, else negated inner products.
    parallel : bool, default True
        Threads over queries; False runs on the calling thread (same results).

    Returns
    -------
    keys : ndarray of shape (nq, k), float32, ascending.
    ids : ndarray of shape (nq, k), int64, ``ID_SENTINEL`` padding.
    """
    data = lists.payload["data"]
    if cand_ids.ndim != 2 or cand_ids.shape[0] != q.shape[0]:
        raise ValueError(f"cand_ids must have shape (nq, kc) with nq = {q.shape[0]}; got "
                         f"{cand_ids.shape}.")
    if data.ndim != 2 or data.shape[1] != q.shape[1]:
        raise ValueError(f"data must have shape (n, {q.shape[1]}) to match q; got "
                         f"{data.shape}.")
    keys, vlist, voff, shift = lists.map_arrays()
    out_d = np.empty((q.shape[0], k), dtype=np.float32)
    out_i = np.empty((q.shape[0], k), dtype=np.int64)
    fn = refine_batch if parallel else refine_serial
    fn(q, data, np.ascontiguousarray(cand_ids, dtype=np.int64), keys, vlist, voff, shift,
       lists.starts, bool(l2), out_d, out_i)
    return out_d, out_i
