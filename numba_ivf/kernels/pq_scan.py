"""IVF-PQ list scan with 8-bit codes: asymmetric distances from float32 lookup tables.

Storage (see ``numba_ivf.ivf._lists``): list l is the run of rows ``[starts[l],
starts[l] + sizes[l])`` of a uint8 code arena ``codes`` of shape (capacity, m), ids beside
it. The key of a code row ``c`` for query q probing list l is

    key = base[q, p] + sum_j lut[j, c_j]

minimised, ties to the lower id (``topk``). The caller chooses what the tables mean:

* L2, by residual (FAISS's decomposition, ``use_term``): base = ||q - c_l||^2 and
  ``lut = qlut + term[l]`` with ``qlut[j, c] = -2 q_j.r_jc`` (one table per query)
  and ``term[l, j, c] = ||r_jc||^2 + 2 c_l,j.r_jc`` (precomputed per list).
  A list shorter than ``PQ_LUT_BUILD_MIN_ROWS * ksub`` rows sums the two tables on the
  fly (2 loads per code) instead of paying m * ksub adds to build their sum, if both
  tables fit in L1 together (``PQ_LUT_TWO_TABLES_MAX_BYTES``).
* inner product (by residual or not) and L2 without residual: one table per query,
  shared by every list (``use_term`` False); base = -q.c_l (ip by residual) or 0.

Each query's table is built inside the scan (``pq_encode.query_table``, from the query
and the transposed codebooks) in a per-thread buffer that stays in cache: a
materialised (nq, m, 256) array cost more to write (51 MB for 2000 queries at m=25,
page faults included) than the scan that read it.

Plans: ``adc_scan_batch`` prange over queries (each owns its heap);
``adc_scan_single`` for few queries, prange over the probed lists of one query (each
owns a partial heap), then one merge; ``adc_scan_serial`` on the calling thread. The
wrappers in ``numba_ivf.ivf.pq`` validate; these functions trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH, PQ_LUT_BUILD_MIN_ROWS, PQ_LUT_TWO_TABLES_MAX_BYTES
from .pq_encode import query_table
from .topk import heap_init, heap_push, heap_sort, merge_one

__all__ = ["adc_scan_batch", "adc_scan_serial", "adc_scan_single"]

_FM = set(FASTMATH)
# The table sums are plain float32 adds in code order (no reassociation), so a key's
# bits are fixed by the code; four rows are summed side by side for the parallelism.
_SUM_FM = {"contract"}


@njit(nogil=True, cache=True, inline="always")
def _entry(lut, term_l, two, j, c):
    return lut[j, c] + term_l[j, c] if two else lut[j, c]


@njit(nogil=True, cache=True, fastmath=_SUM_FM)
def _adc_rows(codes, ids, lo, hi, lut, term_l, two, base, hd, hi_):
    """Offer rows [lo, hi) to the heap with key base + sum_j t[j, code_j] (in j order),
    t = lut + term_l if ``two`` (the sum taken per code: short lists) else lut.

    Four rows at a time: four independent add chains instead of one (the chain's
    latency, not the table loads, bounded the one-row loop)."""
    m = codes.shape[1]
    r = lo
    while r + 4 <= hi:
        a0 = base
        a1 = base
        a2 = base
        a3 = base
        for j in range(m):
            a0 += _entry(lut, term_l, two, j, codes[r, j])
            a1 += _entry(lut, term_l, two, j, codes[r + 1, j])
            a2 += _entry(lut, term_l, two, j, codes[r + 2, j])
            a3 += _entry(lut, term_l, two, j, codes[r + 3, j])
        if a0 <= hd[0]:
            heap_push(hd, hi_, a0, ids[r])
        if a1 <= hd[0]:
            heap_push(hd, hi_, a1, ids[r + 1])
        if a2 <= hd[0]:
            heap_push(hd, hi_, a2, ids[r + 2])
        if a3 <= hd[0]:
            heap_push(hd, hi_, a3, ids[r + 3])
        r += 4
    while r < hi:
        acc = base
        for j in range(m):
            acc += _entry(lut, term_l, two, j, codes[r, j])
        if acc <= hd[0]:
            heap_push(hd, hi_, acc, ids[r])
        r += 1


@njit(nogil=True, cache=True, fastmath=_SUM_FM)
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
        _adc_rows(codes, ids, s, s + n, qlut, qlut, False, base, hd, hi_)
    elif n < PQ_LUT_BUILD_MIN_ROWS * ksub and 8 * m * ksub <= PQ_LUT_TWO_TABLES_MAX_BYTES:
        _adc_rows(codes, ids, s, s + n, qlut, term[lst], True, base, hd, hi_)
    else:
        for j in range(m):
            for c in range(ksub):
                scratch[j, c] = qlut[j, c] + term[lst, j, c]
        _adc_rows(codes, ids, s, s + n, scratch, scratch, False, base, hd, hi_)


@njit(nogil=True, cache=True, fastmath=_FM)
def scan_query(codes, ids, starts, sizes, probes_q, base_q, qlut, term, use_term,
               scratch, hd, hi_):
    """All probed lists of one query into its heap (hd, hi_), sorted at the end."""
    heap_init(hd, hi_)
    for p in range(probes_q.shape[0]):
        lst = probes_q[p]
        if lst >= 0:
            scan_pair(codes, ids, starts, sizes, lst, qlut, term, use_term, base_q[p],
                      scratch, hd, hi_)
    heap_sort(hd, hi_)


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def adc_scan_batch(codes, ids, starts, sizes, probes, base, q, codebooks_t, kind, term,
                   use_term, out_d, out_i):
    """Top-k keys of every query over its probed lists; prange over queries.

    codes (cap, m) uint8; ids (cap,) int64; starts/sizes (nlist,) int64;
    probes (nq, nprobe) int64 (-1 = skip); base (nq, nprobe) float32; q (nq, d)
    float32 and codebooks_t (m, dsub, ksub) with ``kind`` (``pq_encode.TABLE_*``) make
    each query's table; term (nlist, m, ksub) float32 (ignored unless use_term);
    out_d (nq, k) float32 keys ascending, out_i (nq, k) int64 (ID_SENTINEL padding).
    """
    m, _, ksub = codebooks_t.shape
    for qi in prange(q.shape[0]):
        qlut = np.empty((m, ksub), dtype=np.float32)
        scratch = np.empty((m, ksub), dtype=np.float32)
        query_table(q[qi], codebooks_t, kind, qlut)
        scan_query(codes, ids, starts, sizes, probes[qi], base[qi], qlut, term, use_term,
                   scratch, out_d[qi], out_i[qi])


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def adc_scan_single(codes, ids, starts, sizes, probes, base, q, codebooks_t, kind, term,
                    use_term, out_d, out_i):
    """``adc_scan_batch`` for few queries: each query prange's over its probed lists.

    Probe p owns row p of a partial top-k buffer; the nprobe partials are merged.
    """
    nq, nprobe = probes.shape
    m, _, ksub = codebooks_t.shape
    k = out_d.shape[1]
    part_d = np.empty((nprobe, k), dtype=np.float32)
    part_i = np.empty((nprobe, k), dtype=np.int64)
    scratch = np.empty((nprobe, m, ksub), dtype=np.float32)
    qlut = np.empty((m, ksub), dtype=np.float32)
    for qi in range(nq):
        query_table(q[qi], codebooks_t, kind, qlut)
        for p in prange(nprobe):
            heap_init(part_d[p], part_i[p])
            lst = probes[qi, p]
            if lst >= 0:
                scan_pair(codes, ids, starts, sizes, lst, qlut, term, use_term,
                          base[qi, p], scratch[p], part_d[p], part_i[p])
        merge_one(part_d, part_i, out_d[qi], out_i[qi])


@njit(nogil=True, cache=True, fastmath=_FM)
def adc_scan_serial(codes, ids, starts, sizes, probes, base, q, codebooks_t, kind, term,
                    use_term, out_d, out_i):
    """``adc_scan_batch`` on the calling thread: one query over a few short lists does
    not pay for waking the other threads."""
    m, _, ksub = codebooks_t.shape
    qlut = np.empty((m, ksub), dtype=np.float32)
    scratch = np.empty((m, ksub), dtype=np.float32)
    for qi in range(q.shape[0]):
        query_table(q[qi], codebooks_t, kind, qlut)
        scan_query(codes, ids, starts, sizes, probes[qi], base[qi], qlut, term, use_term,
                   scratch, out_d[qi], out_i[qi])
