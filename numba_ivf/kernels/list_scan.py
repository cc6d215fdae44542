"""Inverted-list scan for IVF-Flat: three parallel plans, one per-pair distance.

Storage (see ``numba_ivf.ivf._lists``): every list is a run of rows ``[start, start +
size)`` in one float32 arena ``data`` of shape (capacity, d), with the int64 ids beside
it. Probes are given as list numbers per query.

All plans compute each (query, vector) key with the same inlined worker (``_l2`` or
``_ip``), so the three plans return bit-identical results; they differ only in how the
work is split and how the top-k heaps are owned:

* ``batch``      -- prange over queries; each query owns its heap (FAISS's plan).
* ``list_major`` -- prange over chunks of lists; a list is read once per tile while
  every query that probes it is served from cache. Each (query, probe-rank) pair owns a
  partial heap, so no two iterations write the same heap; a second prange over queries
  merges the partials.
* ``single``     -- for one query at a time: the probed lists are cut into equal runs of
  rows, prange over runs, each with its own heap, then one merge.

Keys are minimised: squared L2 distance, or the negated inner product (exact), with ties
to the lower id (see ``topk``). The Python wrappers in ``numba_ivf.ivf.flat`` validate;
these functions trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH
from .topk import heap_init, heap_push, heap_sort, merge_one

__all__ = ["METRIC_L2", "METRIC_IP", "scan_batch", "scan_serial", "scan_list_major", "scan_single",
           "list_groups"]

_FM = set(FASTMATH)  # numba wants a set, not a frozenset

METRIC_L2 = 0
METRIC_IP = 1


@njit(cache=True, fastmath=_FM, inline="always")
def _l2(q, data, row):
    # Direct differences: no cancellation, so near-ties resolve like the float64 oracle.
    s = np.float32(0.0)
    for t in range(q.shape[0]):
        diff = q[t] - data[row, t]
        s += diff * diff
    return s


@njit(cache=True, fastmath=_FM, inline="always")
def _ip(q, data, row):
    s = np.float32(0.0)
    for t in range(q.shape[0]):
        s += q[t] * data[row, t]
    return -s


@njit(cache=True, fastmath=_FM)
def _scan_rows(q, data, ids, lo, hi, metric, hd, hi_):
    """Offer rows [lo, hi) of the arena to the heap (hd, hi_). The serial worker."""
    if metric == METRIC_L2:
        for r in range(lo, hi):
            key = _l2(q, data, r)
            if key <= hd[0]:
                heap_push(hd, hi_, key, ids[r])
    else:
        for r in range(lo, hi):
            key = _ip(q, data, r)
            if key <= hd[0]:
                heap_push(hd, hi_, key, ids[r])


# -- batch: parallel over queries -------------------------------------------------------

@njit(cache=True, parallel=True, fastmath=_FM)
def scan_batch(q, data, ids, starts, sizes, probes, metric, out_d, out_i):
    """Top-k of each query over its probed lists; prange over queries.

    q (nq, d) float32; probes (nq, nprobe) int64 list numbers (-1 = skip);
    out_d (nq, k) float32 keys ascending, out_i (nq, k) int64 (ID_SENTINEL padding).
    """
    for qi in prange(q.shape[0]):
        hd = out_d[qi]
        hi_ = out_i[qi]
        heap_init(hd, hi_)
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0:
                continue
            s = starts[lst]
            _scan_rows(q[qi], data, ids, s, s + sizes[lst], metric, hd, hi_)
        heap_sort(hd, hi_)


@njit(cache=True, fastmath=_FM)
def scan_serial(q, data, ids, starts, sizes, probes, metric, out_d, out_i):
    """``scan_batch`` on the calling thread only: for work too small to pay for a
    parallel launch (one query over a few short lists)."""
    for qi in range(q.shape[0]):
        hd = out_d[qi]
        hi_ = out_i[qi]
        heap_init(hd, hi_)
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0:
                continue
            s = starts[lst]
            _scan_rows(q[qi], data, ids, s, s + sizes[lst], metric, hd, hi_)
        heap_sort(hd, hi_)


# -- single query: parallel over runs of its probed rows --------------------------------

@njit(cache=True, parallel=True, fastmath=_FM)
def scan_single(q, data, ids, starts, sizes, probes, metric, n_runs, out_d, out_i):
    """Like ``scan_batch`` but each query is split over ``n_runs`` parallel runs.

    The rows of a query's probed lists, taken in probe order, are cut into ``n_runs``
    runs of (nearly) equal length; run r keeps its own top-k in row r of a partial
    buffer, and the partials are merged. Queries are processed one after another.
    """
    nprobe = probes.shape[1]
    k = out_d.shape[1]
    part_d = np.empty((n_runs, k), dtype=np.float32)
    part_i = np.empty((n_runs, k), dtype=np.int64)
    cum = np.zeros(nprobe + 1, dtype=np.int64)
    for qi in range(q.shape[0]):
        for p in range(nprobe):
            lst = probes[qi, p]
            cum[p + 1] = cum[p] + (sizes[lst] if lst >= 0 else 0)
        total = cum[nprobe]
        for r in prange(n_runs):
            hd = part_d[r]
            hi_ = part_i[r]
            heap_init(hd, hi_)
            lo = total * r // n_runs
            hi = total * (r + 1) // n_runs
            p = 0
            while p < nprobe and cum[p + 1] <= lo:
                p += 1
            pos = lo
            while pos < hi:
                lst = probes[qi, p]
                take_hi = min(hi, cum[p + 1])
                if take_hi > pos:
                    s = starts[lst] + (pos - cum[p])
                    _scan_rows(q[qi], data, ids, s, s + (take_hi - pos), metric, hd, hi_)
                    pos = take_hi
                p += 1
        merge_one(part_d, part_i, out_d[qi], out_i[qi])


# -- list-major: parallel over lists, every probing query served per tile ---------------

def list_groups(probes: np.ndarray, nlist: int):
    """Group (query, probe-rank) pairs by list: CSR ``ptr`` (nlist+1,) and ``pairs``.

    ``pairs[ptr[l]:ptr[l+1]]`` are flat indices ``qi * nprobe + rank`` of the pairs that
    probe list l, in ascending query order. Skipped probes (-1) are left out.
    """
    flat = probes.ravel()
    valid = np.flatnonzero(flat >= 0)
    lists = flat[valid]
    order = np.argsort(lists, kind="stable")
    pairs = valid[order].astype(np.int64)
    ptr = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(lists, minlength=nlist), out=ptr[1:])
    return ptr, pairs


@njit(cache=True, parallel=True, fastmath=_FM)
def scan_list_major(q, data, ids, starts, sizes, chunk_ptr, chunk_lists, ptr, pairs,
                    nprobe, tile, metric, part_d, part_i):
    """Partial top-k of every (query, probe-rank) pair; prange over chunks of lists.

    chunk_lists[chunk_ptr[c]:chunk_ptr[c+1]] are the lists of chunk c (every list in
    exactly one chunk). For each list, rows are taken ``tile`` at a time and every query
    probing the list scans the tile while it is in cache. Pair f = qi * nprobe + rank
    writes only part_d[f], part_i[f] (shape (nq * nprobe, k)), which no other pair owns.
    """
    n_chunks = chunk_ptr.shape[0] - 1
    for f in prange(part_d.shape[0]):
        heap_init(part_d[f], part_i[f])
    for c in prange(n_chunks):
        for li in range(chunk_ptr[c], chunk_ptr[c + 1]):
            lst = chunk_lists[li]
            s = starts[lst]
            e = s + sizes[lst]
            for t0 in range(s, e, tile):
                t1 = min(t0 + tile, e)
                for g in range(ptr[lst], ptr[lst + 1]):
                    f = pairs[g]
                    qi = f // nprobe
                    _scan_rows(q[qi], data, ids, t0, t1, metric, part_d[f], part_i[f])


@njit(cache=True, parallel=True, fastmath=_FM)
def merge_pairs(part_d, part_i, nprobe, out_d, out_i):
    """Merge the nprobe partial top-ks of each query into out (prange over queries)."""
    for qi in prange(out_d.shape[0]):
        merge_one(part_d[qi * nprobe:(qi + 1) * nprobe],
                  part_i[qi * nprobe:(qi + 1) * nprobe], out_d[qi], out_i[qi])
