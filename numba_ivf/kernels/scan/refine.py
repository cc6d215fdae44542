"""Exact re-ranking of approximate candidates (FAISS's IndexRefineFlat).

The approximate search returns ``k_factor * k`` candidate ids per query; each id is
found in the inverted lists' hash map (``idmap``) unless the scan kept its row, its
stored float32 vector (a row of
the arena ``data`` of shape (capacity, d)) is compared to the query exactly, with the
same row keys as the IVF-Flat scan (``_rowkeys``), and the best k are kept (ties to the
lower id).

Layers: ``refine`` (Python, checks shapes) -> ``refine_batch`` (prange over queries,
each owns its output row) or ``refine_serial`` (the calling thread: one query) -> the
serial workers ``rows_of_ids`` and ``refine_rows``, which the one-query search kernels
call too. The 4-bit fast-scan keeps each candidate's arena row, so its re-ranking skips
the id lookup (one cache miss per candidate instead of about four).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import FASTMATH, REFINE_PREFETCH_LINES
from ._rowkeys import key1_ip, key1_l2, prefetch_span
from ..common.idmap import map_row
from ..common.topk import ID_SENTINEL, heap_init, heap_push, heap_sort

__all__ = ["refine", "refine_batch", "refine_rows", "refine_serial", "rows_of_ids"]

_FM = set(FASTMATH)


@njit(nogil=True, cache=True)
def rows_of_ids(cand, keys, vlist, voff, shift, starts, rows):
    """rows[c] = arena row of id cand[c] (-1 for ID_SENTINEL or an absent id).

    A pass of its own: the lookups are independent, so their cache misses overlap;
    fused with the distance and heap step they formed one dependent chain per
    candidate (measured here: 1.6x slower).
    """
    for c in range(cand.shape[0]):
        id_ = cand[c]
        rows[c] = -1 if id_ == ID_SENTINEL else map_row(keys, vlist, voff, shift, starts,
                                                        id_)


@njit(nogil=True, cache=True, fastmath=_FM)
def refine_rows(q, data, rows, cand, l2, hd, hi_):
    """Sorted exact top-k (k = len(hd)) of one query among candidates with ids ``cand``
    stored at arena ``rows`` (-1 = none) into (hd, hi_): squared L2 keys, or negated
    inner products."""
    # Candidates sit at random rows: ask for all of them first, so that their cache
    # misses overlap instead of stalling one distance after another.
    row_bytes = data.shape[1] * 4
    nbytes = min(row_bytes, 64 * REFINE_PREFETCH_LINES)
    for c in range(cand.shape[0]):
        if rows[c] >= 0:
            prefetch_span(data, rows[c] * row_bytes, nbytes)
    heap_init(hd, hi_)
    for c in range(cand.shape[0]):
        r = rows[c]
        if r < 0:
            continue
        key = key1_l2(q, data, r) if l2 else key1_ip(q, data, r)
        if key <= hd[0]:
            heap_push(hd, hi_, key, cand[c])
    heap_sort(hd, hi_)


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def refine_batch(q, data, cand_ids, cand_rows, keys, vlist, voff, shift, starts, l2,
                 out_d, out_i):
    """Exact top-k of every query among its candidates; prange over queries. Rows are
    looked up from the ids (the map is only read) unless cand_rows has the candidates'
    shape (the scan knew them)."""
    by_id = cand_rows.shape != cand_ids.shape
    for qi in prange(q.shape[0]):
        if by_id:
            rows = np.empty(cand_ids.shape[1], dtype=np.int64)
            rows_of_ids(cand_ids[qi], keys, vlist, voff, shift, starts, rows)
            refine_rows(q[qi], data, rows, cand_ids[qi], l2, out_d[qi], out_i[qi])
        else:
            refine_rows(q[qi], data, cand_rows[qi], cand_ids[qi], l2, out_d[qi],
                        out_i[qi])


@njit(nogil=True, cache=True, fastmath=_FM)
def refine_serial(q, data, cand_ids, cand_rows, keys, vlist, voff, shift, starts, l2,
                  out_d, out_i):
    """``refine_batch`` on the calling thread: for one or two queries, waking the
    thread pool costs more than the k_factor * k distances."""
    by_id = cand_rows.shape != cand_ids.shape
    rows = np.empty(cand_ids.shape[1], dtype=np.int64)
    for qi in range(q.shape[0]):
        if by_id:
            rows_of_ids(cand_ids[qi], keys, vlist, voff, shift, starts, rows)
            refine_rows(q[qi], data, rows, cand_ids[qi], l2, out_d[qi], out_i[qi])
        else:
            refine_rows(q[qi], data, cand_rows[qi], cand_ids[qi], l2, out_d[qi],
                        out_i[qi])


def refine(q: np.ndarray, lists, cand_ids: np.ndarray, k: int, l2: bool,
           parallel: bool = True, cand_rows: np.ndarray | None = None):
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
    cand_rows : ndarray of shape (nq, kc), int64, optional
        The candidates' arena rows (-1 for none) when the scan kept them; otherwise
        each id is looked up in the lists' id map.

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
    if cand_rows is None:
        keys, vlist, voff, shift = lists.map_arrays()
        cand_rows = np.empty((0, 0), dtype=np.int64)
    else:
        keys = vlist = voff = np.empty(0, dtype=np.int64)
        shift = 0
    out_d = np.empty((q.shape[0], k), dtype=np.float32)
    out_i = np.empty((q.shape[0], k), dtype=np.int64)
    fn = refine_batch if parallel else refine_serial
    fn(q, data, np.ascontiguousarray(cand_ids, dtype=np.int64), cand_rows, keys, vlist,
       voff, shift, lists.starts, bool(l2), out_d, out_i)
    return out_d, out_i
