"""One IVF-PQ query searched in a single kernel call.

A one-query search made of separate calls paid more for the calls than for the work:
each numpy step and Numba dispatch costs microseconds, and there were about twenty
(validation, coarse step, tables, scan, id lookup for re-ranking, result conventions),
for ~200 us per query at glove-50 nprobe 32 where the arithmetic takes ~50 us. Here the
whole serial search path runs in one call, step by step with the very workers the
general path uses, so its results are bit-identical to ``IVFPQ.search`` of the same row
as a (1, d) batch:

1. ``list_scan.query_into``: value check (finite, within ``list_scan.value_limit``),
   float32, cosine normalisation;
2. ``list_scan.coarse_one_query``: the GEMV coarse step over the centroid panels (the
   general path's for a few queries), split over threads when the centroids are many
   (as IVFFlat's one-query kernel: the same keys either way); its keys are the lists' ``base`` (squared
   distance, or negated inner product, to the centroid) when encoding by residual;
3. ``pq_encode.query_table``: the query's table;
4. the serial scan worker: ``pq_scan.scan_query`` (8-bit) or
   ``fastscan_search.scan_query`` (4-bit), unfiltered (``_bits`` stand-ins);
5. with refine, ``refine.refine_rows`` (4-bit: the rows the scan kept; 8-bit: rows
   looked up from the ids, ``refine.rows_of_ids``); then ``topk.to_faiss``.

Status codes: ``DONE``; ``NOT_FINITE`` (NaN, inf or beyond the value limit: the caller
raises through the general path);
``TOO_BIG`` (8-bit) when the probed lists hold ``max_rows`` codes or more, where the
general path splits the scan over threads (checked after the coarse step, before any
scan); the 4-bit kernel splits such a scan itself (``fastscan_single``).

Filtered (one shared filter, prepared by the caller into its row bits ``fbits`` (1, nw)
and per-list counts ``fcount`` (1, nlist), ``_bits``): ``adc_search_one_filtered`` and
``fastscan_search_one_filtered`` replay ``IVFBase._filtered_probes`` on the coarse keys
computed once (top p lists from them, ``filter_bits.trim_probes_serial``, p grown 4x
while the allowed rows covered fall short), then scan the kept lists with the filter row
as ``IVFPQ.search`` does: serially, or with the ``*_single`` driver when the kept lists
hold ``max_rows`` codes or more (the general path's ``_choose_path``), so the results,
the 4-bit quantization scale included, are the general path's bit for bit.
``exact_search_one`` is the exact search over a small allowed set of a refine index
(``IVFBase._exact_stored`` for one query: ``list_scan.scan_bits_serial``'s keys, in its
order, with the rows prefetched ahead).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..._config import FASTMATH, FILTER_EXACT_PREFETCH_ROWS, REFINE_PREFETCH_LINES
from ..filtering._bits import no_filter_jit
from ..filtering.filter_bits import trim_probes_serial
from ..fastscan.fastscan_search import fastscan_single
from ..fastscan.fastscan_search import scan_query as fastscan_query
from ._rowkeys import key1_ip, key1_l2, lowest_bit, prefetch_span
from .list_scan import METRIC_L2, _select_lists, coarse_one_query, query_into
from ..encode.pq_encode import query_table
from .pq_scan import adc_scan_single
from .pq_scan import scan_query as adc_query
from .refine import refine_rows, rows_of_ids
from ..common.topk import heap_init, heap_push, heap_sort, res_capacity, to_faiss

__all__ = ["DONE", "NOT_FINITE", "TOO_BIG", "adc_search_one", "fastscan_search_one",
           "adc_search_one_filtered", "fastscan_search_one_filtered", "exact_search_one"]

DONE = 0
NOT_FINITE = 1
TOO_BIG = 2

_FM = set(FASTMATH)


@njit(nogil=True, cache=True, fastmath=_FM)
def _prologue(q, unit, panels, coarse_metric, min_run, max_runs, nprobe, by_residual,
              sizes, max_rows, codebooks_t, kind):
    """Steps 1-3: (status, qf, base, lists, qlut), the prepared row, the probed lists'
    keys and indices and the query's (m, ksub) table; DONE fills them all, TOO_BIG (the
    probed lists hold ``max_rows`` codes or more) all but the table."""
    m, _, ksub = codebooks_t.shape
    qf = np.empty(q.shape[0], dtype=np.float32)
    base = np.empty(nprobe, dtype=np.float32)
    lists = np.empty(nprobe, dtype=np.int64)
    qlut = np.empty((m, ksub), dtype=np.float32)
    if not query_into(q, unit, qf):
        return NOT_FINITE, qf, base, lists, qlut
    coarse_one_query(qf, panels, sizes.shape[0], coarse_metric, min_run, max_runs,
                     np.empty(panels.shape[0] * panels.shape[2], dtype=np.float32), base,
                     lists)
    rows = 0
    for p in range(lists.shape[0]):
        rows += sizes[lists[p]]
    if not by_residual:
        base[:] = 0.0
    if rows >= max_rows:
        return TOO_BIG, qf, base, lists, qlut
    query_table(qf, codebooks_t, kind, qlut)
    return DONE, qf, base, lists, qlut


@njit(nogil=True, cache=True, fastmath=_FM)
def _epilogue(qf, refine, data, cand_d, cand_i, cand_r, mkeys, mvlist, mvoff, mshift,
              starts, l2, out_d, out_i):
    """Step 5: exact re-ranking of the candidates (or the candidates themselves) into
    out_d, out_i (1, k) in FAISS's convention. ``cand_r``: the candidates' arena rows,
    or an empty array to look the ids up in the map."""
    if refine:
        if cand_r.shape[0] != cand_i.shape[0]:
            cand_r = np.empty(cand_i.shape[0], dtype=np.int64)
            rows_of_ids(cand_i, mkeys, mvlist, mvoff, mshift, starts, cand_r)
        refine_rows(qf, data, cand_r, cand_i, l2, out_d[0], out_i[0])
    else:
        out_d[0, :] = cand_d
        out_i[0, :] = cand_i
    to_faiss(out_d[0], out_i[0], l2)


@njit(nogil=True, cache=True, fastmath=_FM)
def adc_search_one(q, unit, panels, coarse_metric, min_run, max_runs, nprobe, by_residual,
                   max_rows, codes, ids, starts, sizes, codebooks_t, kind, term, use_term,
                   kk, refine, data, mkeys, mvlist, mvoff, mshift, l2, out_d, out_i):
    """One 8-bit IVF-PQ query (see the module docstring): ``kk`` candidates from the
    scan (k_factor * k with refine, else k), the best k = out_d.shape[1] returned."""
    m, _, ksub = codebooks_t.shape
    status, qf, base, lists, qlut = _prologue(q, unit, panels, coarse_metric, min_run,
                                              max_runs, nprobe, by_residual, sizes,
                                              max_rows, codebooks_t, kind)
    if status != DONE:          # TOO_BIG: the general path splits the scan
        return status
    cand_d = np.empty(kk, dtype=np.float32)
    cand_i = np.empty(kk, dtype=np.int64)
    fbits, fcount, _ = no_filter_jit()
    adc_query(codes, ids, starts, sizes, lists, fbits, fcount, 0, base, qlut, term,
              use_term, np.empty((m, ksub), dtype=np.float32), cand_d, cand_i)
    _epilogue(qf, refine, data, cand_d, cand_i, np.empty(0, dtype=np.int64), mkeys,
              mvlist, mvoff, mshift, starts, l2, out_d, out_i)
    return DONE


@njit(nogil=True, cache=True, fastmath=_FM)
def fastscan_search_one(q, unit, panels, coarse_metric, min_run, max_runs, nprobe,
                        by_residual, max_rows, packed, ids, starts, sizes, codebooks_t,
                        kind, term, use_term, kk, refine, data, mkeys, mvlist, mvoff,
                        mshift, l2, out_d, out_i, backend):
    """One 4-bit fast-scan IVF-PQ query; arguments as ``adc_search_one`` plus the
    fast-scan ``backend`` token. Probed lists holding ``max_rows`` codes or more are
    scanned here by ``fastscan_single`` in ``max_runs`` runs (never TOO_BIG): handing
    them back to the general path cost its several calls and parallel launches (glove-50
    nprobe 256, two threads: 327 us against 137 us for one thread here)."""
    m = codebooks_t.shape[0]
    m2 = (m + 1) // 2
    status, qf, base, lists, qlut = _prologue(q, unit, panels, coarse_metric, min_run,
                                              max_runs, nprobe, by_residual, sizes,
                                              max_rows, codebooks_t, kind)
    if status == NOT_FINITE:
        return status
    fbits, fcount, _ = no_filter_jit()
    if status == TOO_BIG:
        d = qf.shape[0]
        cd = np.empty((1, kk), dtype=np.float32)
        ci = np.empty((1, kk), dtype=np.int64)
        cr = np.empty((1, kk), dtype=np.int64)
        fastscan_single(packed, ids, starts, sizes, lists.reshape((1, nprobe)), fbits,
                        fcount, np.zeros(1, dtype=np.int64), base.reshape((1, nprobe)),
                        qf.reshape((1, d)), codebooks_t, kind, term, use_term, cd, ci, cr,
                        not refine, backend, max_runs)
        _epilogue(qf, refine, data, cd[0], ci[0], cr[0], mkeys, mvlist, mvoff, mshift,
                  starts, l2, out_d, out_i)
        return DONE
    cand_d = np.empty(kk, dtype=np.float32)
    cand_i = np.empty(kk, dtype=np.int64)
    cand_r = np.empty(kk, dtype=np.int64)
    cap = res_capacity(kk)
    fastscan_query(packed, ids, starts, sizes, lists, fbits, fcount, 0, base, qlut, term,
                   use_term, np.empty((nprobe, m), dtype=np.float32),
                   np.empty(m, dtype=np.float32),
                   np.zeros((2 * m2, 16), dtype=np.uint8), np.empty(32, dtype=np.uint16),
                   np.empty(cap, dtype=np.float32), np.empty(cap, dtype=np.int64),
                   np.empty(cap, dtype=np.int64), cand_d, cand_i, cand_r, not refine,
                   backend)
    _epilogue(qf, refine, data, cand_d, cand_i, cand_r, mkeys, mvlist, mvoff, mshift,
              starts, l2, out_d, out_i)
    return DONE


# -- one query under one shared filter ------------------------------------------------

@njit(nogil=True, cache=True)
def _filtered_lists(qf, panels, coarse_metric, min_run, max_runs, nprobe, need,
                    max_nprobe, fcount, n_allowed, by_residual):
    """The coarse step of a filtered query (``IVFBase._filtered_probes`` for one row):
    (base, lists) of the kept lists in coarse order.

    The coarse keys are computed once (``coarse_one_query``, the general path's keys);
    the top p lists are taken from them for p from the filter's selectivity, trimmed to
    the lists with an allowed row (the first nprobe, then more while fewer than
    ``need`` allowed rows are covered), and while the query is still short p grows 4x,
    up to max_nprobe. The top p of the same keys is a prefix of the top 4p (ties to the
    lower list), so this picks the lists the general path's repeated coarse calls pick.
    fcount (1, nlist) int64; n_allowed the filter's allowed rows.
    """
    nlist = fcount.shape[1]
    est = np.ceil(2.0 * need * nlist / max(n_allowed, 1))    # float64, as in Python
    p = max_nprobe if est >= max_nprobe else max(nprobe, np.int64(est))
    scores = np.empty(panels.shape[0] * panels.shape[2], dtype=np.float32)
    pd = np.empty((1, p), dtype=np.float32)
    pl = np.empty((1, p), dtype=np.int64)
    coarse_one_query(qf, panels, nlist, coarse_metric, min_run, max_runs, scores, pd[0],
                     pl[0])
    fslot = np.zeros(1, dtype=np.int64)
    covered = np.empty(1, dtype=np.int64)
    kept = np.empty((1, p), dtype=np.int64)
    kept_s = np.empty((1, p), dtype=np.float32)
    n = trim_probes_serial(pl, pd, fcount, fslot, nprobe, need, kept, kept_s, covered)
    while p < max_nprobe and covered[0] < need and covered[0] < n_allowed:
        p = min(max_nprobe, 4 * p)
        pd = np.empty((1, p), dtype=np.float32)
        pl = np.empty((1, p), dtype=np.int64)
        _select_lists(scores, nlist, pd[0], pl[0])
        kept = np.empty((1, p), dtype=np.int64)
        kept_s = np.empty((1, p), dtype=np.float32)
        n = trim_probes_serial(pl, pd, fcount, fslot, nprobe, need, kept, kept_s,
                               covered)
    # base: the coarse key (squared distance or negated inner product) by residual.
    base = np.empty(n, dtype=np.float32)
    lists = np.empty(n, dtype=np.int64)
    for j in range(n):
        base[j] = kept_s[0, j] if by_residual else 0.0
        lists[j] = kept[0, j]
    return base, lists


@njit(nogil=True, cache=True)
def _kept_rows(lists, sizes):
    """Codes in the kept lists: the general path's ``_choose_path`` measure."""
    rows = 0
    for j in range(lists.shape[0]):
        rows += sizes[lists[j]]
    return rows


@njit(nogil=True, cache=True, fastmath=_FM)
def adc_search_one_filtered(q, unit, panels, coarse_metric, min_run, max_runs, nprobe,
                            need, max_nprobe, by_residual, max_rows, codes, ids, starts,
                            sizes, fbits, fcount, n_allowed, codebooks_t, kind, term,
                            use_term, kk, refine, data, mkeys, mvlist, mvoff, mshift, l2,
                            out_d, out_i):
    """One 8-bit IVF-PQ query under the filter (fbits (1, nw) uint32, fcount (1, nlist)
    int64, n_allowed rows; ``_bits``), ``need`` allowed rows to cover in at most
    ``max_nprobe`` lists; other arguments as ``adc_search_one``. Returns DONE or
    NOT_FINITE (then nothing is written)."""
    m, _, ksub = codebooks_t.shape
    d = q.shape[0]
    qf = np.empty(d, dtype=np.float32)
    if not query_into(q, unit, qf):
        return NOT_FINITE
    base, lists = _filtered_lists(qf, panels, coarse_metric, min_run, max_runs, nprobe,
                                  need, max_nprobe, fcount, n_allowed, by_residual)
    n = lists.shape[0]
    cand_d = np.empty((1, kk), dtype=np.float32)
    cand_i = np.empty((1, kk), dtype=np.int64)
    if _kept_rows(lists, sizes) >= max_rows:
        adc_scan_single(codes, ids, starts, sizes, lists.reshape((1, n)), fbits, fcount,
                        np.zeros(1, dtype=np.int64), base.reshape((1, n)),
                        qf.reshape((1, d)), codebooks_t, kind, term, use_term, cand_d,
                        cand_i)
    else:
        qlut = np.empty((m, ksub), dtype=np.float32)
        query_table(qf, codebooks_t, kind, qlut)
        adc_query(codes, ids, starts, sizes, lists, fbits, fcount, 0, base, qlut, term,
                  use_term, np.empty((m, ksub), dtype=np.float32), cand_d[0], cand_i[0])
    _epilogue(qf, refine, data, cand_d[0], cand_i[0], np.empty(0, dtype=np.int64), mkeys,
              mvlist, mvoff, mshift, starts, l2, out_d, out_i)
    return DONE


@njit(nogil=True, cache=True, fastmath=_FM)
def fastscan_search_one_filtered(q, unit, panels, coarse_metric, min_run, max_runs,
                                 nprobe, need, max_nprobe, by_residual, max_rows, packed,
                                 ids, starts, sizes, fbits, fcount, n_allowed,
                                 codebooks_t, kind, term, use_term, kk, refine, data,
                                 mkeys, mvlist, mvoff, mshift, l2, out_d, out_i, backend):
    """One 4-bit fast-scan IVF-PQ query under the filter; arguments as
    ``adc_search_one_filtered`` plus the fast-scan ``backend`` token. The shared
    quantization scale is taken over the kept lists, as in the general path."""
    m, _, ksub = codebooks_t.shape
    m2 = (m + 1) // 2
    d = q.shape[0]
    qf = np.empty(d, dtype=np.float32)
    if not query_into(q, unit, qf):
        return NOT_FINITE
    base, lists = _filtered_lists(qf, panels, coarse_metric, min_run, max_runs, nprobe,
                                  need, max_nprobe, fcount, n_allowed, by_residual)
    n = lists.shape[0]
    cand_d = np.empty((1, kk), dtype=np.float32)
    cand_i = np.empty((1, kk), dtype=np.int64)
    cand_r = np.empty((1, kk), dtype=np.int64)
    if _kept_rows(lists, sizes) >= max_rows:
        fastscan_single(packed, ids, starts, sizes, lists.reshape((1, n)), fbits, fcount,
                        np.zeros(1, dtype=np.int64), base.reshape((1, n)),
                        qf.reshape((1, d)), codebooks_t, kind, term, use_term, cand_d,
                        cand_i, cand_r, not refine, backend, max_runs)
    else:
        qlut = np.empty((m, ksub), dtype=np.float32)
        query_table(qf, codebooks_t, kind, qlut)
        cap = res_capacity(kk)
        fastscan_query(packed, ids, starts, sizes, lists, fbits, fcount, 0, base, qlut,
                       term, use_term, np.empty((n, m), dtype=np.float32),
                       np.empty(m, dtype=np.float32),
                       np.zeros((2 * m2, 16), dtype=np.uint8),
                       np.empty(32, dtype=np.uint16), np.empty(cap, dtype=np.float32),
                       np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64),
                       cand_d[0], cand_i[0], cand_r[0], not refine, backend)
    _epilogue(qf, refine, data, cand_d[0], cand_i[0], cand_r[0], mkeys, mvlist, mvoff,
              mshift, starts, l2, out_d, out_i)
    return DONE


@njit(nogil=True, cache=True, inline="always")
def _offer_row(qf, data, ids, r, l2, hd, hi_):
    key = key1_l2(qf, data, r) if l2 else key1_ip(qf, data, r)
    if key <= hd[0]:
        heap_push(hd, hi_, key, ids[r])


@njit(nogil=True, cache=True, fastmath=_FM)
def _exact_rows(qf, data, ids, fb, l2, hd, hi_):
    """Sorted exact top-k of one query over the rows whose bit is set in fb (nw,)
    uint32, in place: ``list_scan.scan_bits_serial``'s keys (``key1_*``) offered in the
    same (ascending row) order, each row prefetched ``FILTER_EXACT_PREFETCH_ROWS`` rows early."""
    heap_init(hd, hi_)
    row_bytes = data.shape[1] * 4
    nbytes = min(row_bytes, 64 * REFINE_PREFETCH_LINES)
    ring = np.empty(FILTER_EXACT_PREFETCH_ROWS, dtype=np.int64)
    n = 0
    for w in range(fb.shape[0]):
        bits = fb[w]
        while bits:
            r = (w << 5) + lowest_bit(bits)
            bits &= bits - np.uint32(1)
            prefetch_span(data, r * row_bytes, nbytes)
            slot = n & (FILTER_EXACT_PREFETCH_ROWS - 1)
            if n >= FILTER_EXACT_PREFETCH_ROWS:
                _offer_row(qf, data, ids, ring[slot], l2, hd, hi_)
            ring[slot] = r
            n += 1
    for j in range(max(0, n - FILTER_EXACT_PREFETCH_ROWS), n):
        _offer_row(qf, data, ids, ring[j & (FILTER_EXACT_PREFETCH_ROWS - 1)], l2, hd, hi_)
    heap_sort(hd, hi_)


@njit(nogil=True, cache=True, fastmath=_FM)
def exact_search_one(q, unit, data, ids, fbits, metric, out_d, out_i):
    """Exact top-k of one query over the rows allowed by fbits (1, nw) uint32, read in
    place from the stored vectors ``data`` (``_exact_rows``): ``IVFBase._exact_stored``
    for one query, in FAISS's convention. DONE or NOT_FINITE (nothing written)."""
    d = q.shape[0]
    qf = np.empty(d, dtype=np.float32)
    if not query_into(q, unit, qf):
        return NOT_FINITE
    l2 = metric == METRIC_L2
    _exact_rows(qf, data, ids, fbits[0], l2, out_d[0], out_i[0])
    to_faiss(out_d[0], out_i[0], l2)
    return DONE
