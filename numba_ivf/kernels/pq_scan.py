"""IVF-PQ list scan with 8-bit codes: asymmetric distances from float32 lookup tables.

Storage (see ``numba_ivf.ivf._lists``): list l is the run of rows ``[starts[l],
starts[l] + sizes[l])`` of a uint8 code arena ``codes`` of shape (capacity, m), ids beside
it. The key of a code row ``c`` for query q probing list l is

    key = base[q, p] + sum_j lut[j, c_j]

minimised, ties to the lower id (``topk``). The caller chooses what the tables mean:

* L2, by residual (FAISS's decomposition, ``use_term``): base = ||q - c_l||^2 and
  ``lut = qlut[q] + term[l]`` with ``qlut[q, j, c] = -2 q_j.r_jc`` (one table per query)
  and ``term[l, j, c] = ||r_jc||^2 + 2 c_l,j.r_jc`` (precomputed per list).
  A list shorter than ``PQ_LUT_BUILD_MIN_ROWS * ksub`` rows sums the two tables on the
  fly (2 loads per code) instead of paying m * ksub adds to build their sum.
* inner product (by residual or not) and L2 without residual: one table per query,
  shared by every list (``use_term`` False); base = -q.c_l (ip by residual) or 0.

Plans: ``adc_scan_batch`` prange over queries (each owns its heap);
``adc_scan_single`` for few queries, prange over the probed lists of one query (each
owns a partial heap), then one merge. The wrappers in ``numba_ivf.ivf.pq`` validate;
these functions trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH, PQ_LUT_BUILD_MIN_ROWS
from .._config import ASSIGN_MR, ASSIGN_NR
from .assign import _scores_to_sqdist, _tile_topk
from .pq_encode import _tables_one
from .topk import heap_init, heap_push, heap_sort, merge_one

__all__ = ["adc_scan_batch", "adc_scan_serial", "adc_scan_single", "distance_tables_serial",
           "coarse_serial"]

_FM = set(FASTMATH)


@njit(cache=True, fastmath=_FM)
def _adc_rows(codes, ids, lo, hi, lut, base, hd, hi_):
    """Offer rows [lo, hi) to the heap with key base + sum_j lut[j, code_j]."""
    m = codes.shape[1]
    for r in range(lo, hi):
        acc = base
        for j in range(m):
            acc += lut[j, codes[r, j]]
        if acc <= hd[0]:
            heap_push(hd, hi_, acc, ids[r])


@njit(cache=True, fastmath=_FM)
def _adc_rows_two(codes, ids, lo, hi, lut, term_l, base, hd, hi_):
    """Like ``_adc_rows`` with the table lut + term_l summed per code (short lists)."""
    m = codes.shape[1]
    for r in range(lo, hi):
        acc = base
        for j in range(m):
            c = codes[r, j]
            acc += lut[j, c] + term_l[j, c]
        if acc <= hd[0]:
            heap_push(hd, hi_, acc, ids[r])


@njit(cache=True, fastmath=_FM)
def scan_pair(codes, ids, starts, sizes, lst, qlut, term, use_term, base, scratch,
              hd, hi_):
    """Scan list ``lst`` for one query (its table ``qlut`` (m, ksub)). The serial worker.

    ``scratch`` (m, ksub) float32 receives ``qlut + term[lst]`` when that sum is built.
    """
    n = sizes[lst]
    if n == 0:
        return
    s = starts[lst]
    m, ksub = qlut.shape
    if not use_term:
        _adc_rows(codes, ids, s, s + n, qlut, base, hd, hi_)
    elif n < PQ_LUT_BUILD_MIN_ROWS * ksub:
        _adc_rows_two(codes, ids, s, s + n, qlut, term[lst], base, hd, hi_)
    else:
        for j in range(m):
            for c in range(ksub):
                scratch[j, c] = qlut[j, c] + term[lst, j, c]
        _adc_rows(codes, ids, s, s + n, scratch, base, hd, hi_)


@njit(cache=True, parallel=True, fastmath=_FM)
def adc_scan_batch(codes, ids, starts, sizes, probes, base, qluts, term, use_term,
                   out_d, out_i):
    """Top-k keys of every query over its probed lists; prange over queries.

    codes (cap, m) uint8; ids (cap,) int64; starts/sizes (nlist,) int64;
    probes (nq, nprobe) int64 (-1 = skip); base (nq, nprobe) float32;
    qluts (nq, m, ksub) float32; term (nlist, m, ksub) float32 (ignored unless
    use_term); out_d (nq, k) float32 keys ascending, out_i (nq, k) int64 (ID_SENTINEL
    padding).
    """
    nq, nprobe = probes.shape
    m, ksub = qluts.shape[1], qluts.shape[2]
    for qi in prange(nq):
        scratch = np.empty((m, ksub), dtype=np.float32)
        hd = out_d[qi]
        hi_ = out_i[qi]
        heap_init(hd, hi_)
        for p in range(nprobe):
            lst = probes[qi, p]
            if lst < 0:
                continue
            scan_pair(codes, ids, starts, sizes, lst, qluts[qi], term, use_term,
                      base[qi, p], scratch, hd, hi_)
        heap_sort(hd, hi_)


@njit(cache=True, parallel=True, fastmath=_FM)
def adc_scan_single(codes, ids, starts, sizes, probes, base, qluts, term, use_term,
                    out_d, out_i):
    """``adc_scan_batch`` for few queries: each query prange's over its probed lists.

    Probe p owns row p of a partial top-k buffer; the nprobe partials are merged.
    """
    nq, nprobe = probes.shape
    m, ksub = qluts.shape[1], qluts.shape[2]
    k = out_d.shape[1]
    part_d = np.empty((nprobe, k), dtype=np.float32)
    part_i = np.empty((nprobe, k), dtype=np.int64)
    scratch = np.empty((nprobe, m, ksub), dtype=np.float32)
    for qi in range(nq):
        for p in prange(nprobe):
            heap_init(part_d[p], part_i[p])
            lst = probes[qi, p]
            if lst >= 0:
                scan_pair(codes, ids, starts, sizes, lst, qluts[qi], term, use_term,
                          base[qi, p], scratch[p], part_d[p], part_i[p])
        merge_one(part_d, part_i, out_d[qi], out_i[qi])


@njit(cache=True, fastmath=_FM)
def adc_scan_serial(codes, ids, starts, sizes, probes, base, qluts, term, use_term,
                    out_d, out_i):
    """``adc_scan_batch`` on the calling thread: one query over a few short lists does
    not pay for waking the other threads."""
    nq, nprobe = probes.shape
    m, ksub = qluts.shape[1], qluts.shape[2]
    scratch = np.empty((m, ksub), dtype=np.float32)
    for qi in range(nq):
        hd = out_d[qi]
        hi_ = out_i[qi]
        heap_init(hd, hi_)
        for p in range(nprobe):
            lst = probes[qi, p]
            if lst < 0:
                continue
            scan_pair(codes, ids, starts, sizes, lst, qluts[qi], term, use_term,
                      base[qi, p], scratch, hd, hi_)
        heap_sort(hd, hi_)


@njit(cache=True, fastmath=_FM)
def distance_tables_serial(q, codebooks, l2):
    """``pq_encode.pq_distance_tables`` on the calling thread (same worker, so the same
    tables): the "serial" search path of one or two queries does not wake the pool."""
    m, ksub, _ = codebooks.shape
    out = np.empty((q.shape[0], m, ksub), dtype=np.float32)
    for i in range(q.shape[0]):
        _tables_one(q[i], codebooks, l2, out[i])
    return out


@njit(cache=True, fastmath=_FM)
def coarse_serial(x, panels, bias, l2, p_top):
    """``assign.tiled_topk`` for a few rows on the calling thread: the same worker over
    one tile (tiled_topk's smallest tile holds more rows than this is used for), so the
    same lists and distances, without waking the thread pool for one query."""
    n = x.shape[0]
    top_s = np.empty((n, p_top), dtype=np.float32)
    top_i = np.empty((n, p_top), dtype=np.int64)
    block = np.empty((ASSIGN_MR, ASSIGN_NR), dtype=np.float32)
    rowmax = np.empty(ASSIGN_MR, dtype=np.float32)
    _tile_topk(x, 0, n, panels, bias, block, rowmax, top_s, top_i)
    if l2:
        for i in range(n):
            _scores_to_sqdist(x, i, top_s[i])
    return top_s, top_i
