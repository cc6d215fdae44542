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
``TOO_BIG`` when the probed lists hold ``max_rows`` codes or more, where the general
path splits the scan over threads (checked after the coarse step, before any scan).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..._config import FASTMATH
from ..filtering._bits import no_filter_jit
from ..fastscan.fastscan_search import scan_query as fastscan_query
from .list_scan import coarse_one_query, query_into
from ..encode.pq_encode import query_table
from .pq_scan import scan_query as adc_query
from .refine import refine_rows, rows_of_ids
from ..common.topk import res_capacity, to_faiss

__all__ = ["DONE", "NOT_FINITE", "TOO_BIG", "adc_search_one", "fastscan_search_one"]

DONE = 0
NOT_FINITE = 1
TOO_BIG = 2

_FM = set(FASTMATH)


@njit(nogil=True, cache=True, fastmath=_FM)
def _prologue(q, unit, panels, coarse_metric, min_run, max_runs, nprobe, by_residual,
              sizes, max_rows, codebooks_t, kind):
    """Steps 1-3: (status, qf, base, lists, qlut), the prepared row, the probed lists'
    keys and indices and the query's (m, ksub) table; only DONE fills them all."""
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
    if rows >= max_rows:
        return TOO_BIG, qf, base, lists, qlut
    if not by_residual:
        base[:] = 0.0
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
    if status != DONE:
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
    fast-scan ``backend`` token."""
    m = codebooks_t.shape[0]
    m2 = (m + 1) // 2
    status, qf, base, lists, qlut = _prologue(q, unit, panels, coarse_metric, min_run,
                                              max_runs, nprobe, by_residual, sizes,
                                              max_rows, codebooks_t, kind)
    if status != DONE:
        return status
    cand_d = np.empty(kk, dtype=np.float32)
    cand_i = np.empty(kk, dtype=np.int64)
    cand_r = np.empty(kk, dtype=np.int64)
    cap = res_capacity(kk)
    fbits, fcount, _ = no_filter_jit()
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
