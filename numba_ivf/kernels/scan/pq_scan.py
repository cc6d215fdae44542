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

Filters (``_bits``): per (query, list) the rule of ``list_mode`` decides. A list with
no allowed row is not read; a sparse one visits only the set bits of its row bitmap, one
row at a time; a dense one runs the unfiltered loop and admits only allowed rows. A
row's key is summed in the same order on every path (base, then j = 0..m-1, one float32
add each), so a row has the same key filtered or not.

Plans: ``adc_scan_batch`` prange over queries (each owns its heap);
``adc_scan_single`` for few queries, prange over the probed lists of one query (each
owns a partial heap), then one merge; ``adc_scan_serial`` on the calling thread. The
wrappers in ``numba_ivf.ivf.pq`` validate; these functions trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import FASTMATH, PQ_LUT_BUILD_MIN_ROWS, PQ_LUT_TWO_TABLES_MAX_BYTES
from ..filtering._bits import (MODE_DENSE, MODE_SKIP, MODE_SPARSE, admits, block_lanes,
                               is_filtered, row_list_count, row_list_mode)
from ._rowkeys import lowest_bit
from ..encode.pq_encode import query_table
from ..common.topk import heap_init, heap_push, heap_sort, merge_one

__all__ = ["adc_scan_batch", "adc_scan_serial", "adc_scan_single"]

_FM = set(FASTMATH)
# The table sums are plain float32 adds in code order (no reassociation), so a key's
# bits are fixed by the code; four rows are summed side by side for the parallelism.
_SUM_FM = {"contract"}


@njit(nogil=True, cache=True, inline="always")
def _entry(lut, term_l, two, j, c):
    return lut[j, c] + term_l[j, c] if two else lut[j, c]


@njit(nogil=True, cache=True, fastmath=_SUM_FM)
def _adc_rows(codes, ids, lo, hi, lut, term_l, two, base, hd, hi_, fb):
    """Offer rows [lo, hi) to the heap with key base + sum_j t[j, code_j] (in j order),
    t = lut + term_l if ``two`` (the sum taken per code: short lists) else lut; only
    the rows whose bit is set in the filter row fb (nw,) uint32, or every row if fb is
    None (the bit is tested only after a key passes the heap's bound, which few do).

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
        if a0 <= hd[0] and admits(fb, r):
            heap_push(hd, hi_, a0, ids[r])
        if a1 <= hd[0] and admits(fb, r + 1):
            heap_push(hd, hi_, a1, ids[r + 1])
        if a2 <= hd[0] and admits(fb, r + 2):
            heap_push(hd, hi_, a2, ids[r + 2])
        if a3 <= hd[0] and admits(fb, r + 3):
            heap_push(hd, hi_, a3, ids[r + 3])
        r += 4
    while r < hi:
        acc = base
        for j in range(m):
            acc += _entry(lut, term_l, two, j, codes[r, j])
        if acc <= hd[0] and admits(fb, r):
            heap_push(hd, hi_, acc, ids[r])
        r += 1


@njit(nogil=True, cache=True, fastmath=_SUM_FM)
def _adc_rows_sparse(codes, ids, lo, hi, lut, term_l, two, base, hd, hi_, fb):
    """``_adc_rows`` over the allowed rows of [lo, hi) only: the set bits of the filter
    row fb, word by word, each row's key summed as in ``_adc_rows``."""
    m = codes.shape[1]
    for w in range(lo >> 5, ((hi - 1) >> 5) + 1):
        r0 = w << 5
        bits = block_lanes(fb, w)
        if r0 < lo:              # the words at the ends hold other lists' rows
            bits &= ~((np.uint64(1) << np.uint64(lo - r0)) - np.uint64(1))
        if hi - r0 < 32:
            bits &= (np.uint64(1) << np.uint64(hi - r0)) - np.uint64(1)
        while bits != 0:
            r = r0 + lowest_bit(bits)
            bits &= bits - np.uint64(1)
            acc = base
            for j in range(m):
                acc += _entry(lut, term_l, two, j, codes[r, j])
            if acc <= hd[0]:
                heap_push(hd, hi_, acc, ids[r])


@njit(nogil=True, cache=True, fastmath=_SUM_FM, inline="always")
def _adc_list(codes, ids, lo, hi, lut, term_l, two, base, hd, hi_, fb, mode):
    """Rows [lo, hi) of one list under its filter ``mode`` (not MODE_SKIP)."""
    if mode == MODE_SPARSE:
        _adc_rows_sparse(codes, ids, lo, hi, lut, term_l, two, base, hd, hi_, fb)
    elif mode == MODE_DENSE:
        _adc_rows(codes, ids, lo, hi, lut, term_l, two, base, hd, hi_, fb)
    else:
        _adc_rows(codes, ids, lo, hi, lut, term_l, two, base, hd, hi_, None)


@njit(nogil=True, cache=True, fastmath=_SUM_FM)
def scan_pair(codes, ids, starts, sizes, lst, fb, fc, qlut, term, use_term, base,
              scratch, hd, hi_):
    """Scan list ``lst`` for one query (its table ``qlut`` (m, ksub)) under its filter
    row: fb = fbits[f], fc = fcount[f] (``_bits``), both None if unfiltered (then
    compiled apart, as the unfiltered scan). The serial worker.

    ``scratch`` (m, ksub) float32 receives ``qlut + term[lst]`` when that sum is built.
    """
    n = sizes[lst]
    if n == 0:
        return
    mode = row_list_mode(fc, lst, n)
    if mode == MODE_SKIP:
        return
    s = starts[lst]
    m, ksub = qlut.shape
    # A sparse list builds the summed table only if its allowed rows pay for it.
    rows = row_list_count(fc, lst, n) if mode == MODE_SPARSE else n
    if not use_term:
        _adc_list(codes, ids, s, s + n, qlut, qlut, False, base, hd, hi_, fb, mode)
    elif rows < PQ_LUT_BUILD_MIN_ROWS * ksub and \
            8 * m * ksub <= PQ_LUT_TWO_TABLES_MAX_BYTES:
        _adc_list(codes, ids, s, s + n, qlut, term[lst], True, base, hd, hi_, fb, mode)
    else:
        for j in range(m):
            for c in range(ksub):
                scratch[j, c] = qlut[j, c] + term[lst, j, c]
        _adc_list(codes, ids, s, s + n, scratch, scratch, False, base, hd, hi_, fb, mode)


@njit(nogil=True, cache=True, fastmath=_FM)
def scan_query(codes, ids, starts, sizes, probes_q, fbits, fcount, f, base_q, qlut, term,
               use_term, scratch, hd, hi_):
    """All probed lists of one query (filter row ``f`` of fbits/fcount, see ``_bits``)
    into its heap (hd, hi_), sorted at the end."""
    heap_init(hd, hi_)
    if is_filtered(fbits):
        _scan_lists(codes, ids, starts, sizes, probes_q, fbits[f], fcount[f], base_q,
                    qlut, term, use_term, scratch, hd, hi_)
    else:
        _scan_lists(codes, ids, starts, sizes, probes_q, None, None, base_q, qlut, term,
                    use_term, scratch, hd, hi_)
    heap_sort(hd, hi_)


@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_lists(codes, ids, starts, sizes, probes_q, fb, fc, base_q, qlut, term,
                use_term, scratch, hd, hi_):
    for p in range(probes_q.shape[0]):
        lst = probes_q[p]
        if lst >= 0:
            scan_pair(codes, ids, starts, sizes, lst, fb, fc, qlut, term, use_term,
                      base_q[p], scratch, hd, hi_)


@njit(nogil=True, cache=True, inline="always")
def _slot(fbits, fslot, qi):
    """Filter row of query qi (0 unfiltered: fslot is not read)."""
    return fslot[qi] if is_filtered(fbits) else 0


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def adc_scan_batch(codes, ids, starts, sizes, probes, fbits, fcount, fslot, base, q,
                   codebooks_t, kind, term, use_term, out_d, out_i):
    """Top-k keys of every query over the allowed rows of its probed lists; prange over
    queries.

    codes (cap, m) uint8; ids (cap,) int64; starts/sizes (nlist,) int64;
    probes (nq, nprobe) int64 (-1 = skip); fbits (nf, nw) uint32, fcount (nf, nlist)
    int64, fslot (nq,) int64: the filters (``_bits``; ``_bits.no_filter()`` for none);
    base (nq, nprobe) float32; q (nq, d) float32 and codebooks_t (m, dsub, ksub) with
    ``kind`` (``pq_encode.TABLE_*``) make each query's table; term (nlist, m, ksub)
    float32 (ignored unless use_term); out_d (nq, k) float32 keys ascending, out_i
    (nq, k) int64 (ID_SENTINEL padding).
    """
    m, _, ksub = codebooks_t.shape
    for qi in prange(q.shape[0]):
        qlut = np.empty((m, ksub), dtype=np.float32)
        scratch = np.empty((m, ksub), dtype=np.float32)
        query_table(q[qi], codebooks_t, kind, qlut)
        scan_query(codes, ids, starts, sizes, probes[qi], fbits, fcount,
                   _slot(fbits, fslot, qi), base[qi], qlut, term, use_term, scratch,
                   out_d[qi], out_i[qi])


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def adc_scan_single(codes, ids, starts, sizes, probes, fbits, fcount, fslot, base, q,
                    codebooks_t, kind, term, use_term, out_d, out_i):
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
        f = _slot(fbits, fslot, qi)
        filtered = is_filtered(fbits)
        for p in prange(nprobe):
            heap_init(part_d[p], part_i[p])
            lst = probes[qi, p]
            if lst >= 0 and filtered:
                scan_pair(codes, ids, starts, sizes, lst, fbits[f], fcount[f], qlut, term,
                          use_term, base[qi, p], scratch[p], part_d[p], part_i[p])
            elif lst >= 0:
                scan_pair(codes, ids, starts, sizes, lst, None, None, qlut, term,
                          use_term, base[qi, p], scratch[p], part_d[p], part_i[p])
        merge_one(part_d, part_i, out_d[qi], out_i[qi])


@njit(nogil=True, cache=True, fastmath=_FM)
def adc_scan_serial(codes, ids, starts, sizes, probes, fbits, fcount, fslot, base, q,
                    codebooks_t, kind, term, use_term, out_d, out_i):
    """``adc_scan_batch`` on the calling thread: one query over a few short lists does
    not pay for waking the other threads."""
    m, _, ksub = codebooks_t.shape
    qlut = np.empty((m, ksub), dtype=np.float32)
    scratch = np.empty((m, ksub), dtype=np.float32)
    for qi in range(q.shape[0]):
        query_table(q[qi], codebooks_t, kind, qlut)
        scan_query(codes, ids, starts, sizes, probes[qi], fbits, fcount,
                   _slot(fbits, fslot, qi), base[qi], qlut, term, use_term, scratch,
                   out_d[qi], out_i[qi])
