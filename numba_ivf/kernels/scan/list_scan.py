"""Inverted-list scan for IVF-Flat: three parallel plans, one per-pair distance.

Storage (see ``numba_ivf.ivf._lists``): every list is a run of rows ``[start, start +
size)`` in one float32 arena ``data`` of shape (capacity, d), with the int64 ids beside
it. Probes are given as list numbers per query.

All plans compute each (query, vector) key with the same row-key kernel
(``_rowkeys``, whose summation order is fixed), so the three plans return bit-identical
results; they differ only in how the work is split and how the top-k heaps are owned:

* ``batch``      -- prange over queries; each query owns its heap (FAISS's plan).
* ``list_major`` -- prange over groups of queries; within a group the (query, list)
  pairs are sorted by list, so each list is read once for all the group's queries that
  probe it, and each query still owns its heap.
* ``single``     -- for one query at a time: the probed lists are cut into equal runs of
  rows, prange over runs, each with its own heap, then one merge.

``search_one`` is the one-query path in a single call: value check (finite, within
``value_limit``), float32 conversion, cosine normalisation, the coarse scan over the
centroids, the list scan (serial, or the ``single`` plan when the probed rows are many)
and the FAISS-convention result. Every step uses the same workers as the batch path, so
the results are identical to searching the same row as a (1, d) batch.

Keys are minimised: squared L2 distance, or the negated inner product (exact), with ties
to the lower id (see ``topk``). The Python wrappers in ``numba_ivf.ivf.flat`` validate;
these functions trust their inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import COARSE_SELECT_HEAP_MAX_P, FASTMATH, VALUE_LIMIT_FACTOR
from ..assign.assign import floor_at_least
from ..filtering._bits import (MODE_ALL, MODE_DENSE, MODE_SKIP, is_filtered, list_mode,
                               lowest_bit)
from ._rowkeys import key1_ip, key1_l2, keys4_ip, keys4_l2, panelkeys_ip, panelkeys_l2
from ..common.topk import (ID_SENTINEL, heap_init, heap_push, heap_sort, insert_best,
                           merge_one, to_faiss)
from ..filtering.filter_bits import _trim_one

__all__ = ["METRIC_L2", "METRIC_IP", "scan_batch", "scan_serial", "scan_list_major",
           "scan_single", "scan_bits", "scan_bits_serial", "normalize_rows_into",
           "coarse_few", "query_into", "search_one",
           "search_one_filtered",
           "value_limit", "count_within"]

_FM = set(FASTMATH)  # numba wants a set, not a frozenset
_FLT_MAX = float(np.finfo(np.float32).max)

METRIC_L2 = 0
METRIC_IP = 1


@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_rows(q, data, ids, lo, hi, metric, hd, hi_):
    """Offer rows [lo, hi) of the arena to the heap (hd, hi_). The serial worker.

    Keys come four rows at a time from ``_rowkeys`` (a ragged end computes clamped rows
    and drops their keys), so each key's bits do not depend on the run it is in.
    """
    for r in range(lo, hi, 4):
        if metric == METRIC_L2:
            k0, k1, k2, k3 = keys4_l2(q, data, r)
        else:
            k0, k1, k2, k3 = keys4_ip(q, data, r)
        if k0 <= hd[0]:
            heap_push(hd, hi_, k0, ids[r])
        if r + 1 < hi and k1 <= hd[0]:
            heap_push(hd, hi_, k1, ids[r + 1])
        if r + 2 < hi and k2 <= hd[0]:
            heap_push(hd, hi_, k2, ids[r + 2])
        if r + 3 < hi and k3 <= hd[0]:
            heap_push(hd, hi_, k3, ids[r + 3])


@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_rows_masked(q, data, ids, lo, hi, metric, fb, hd, hi_):
    """``_scan_rows`` admitting only rows whose bit is set in fb (a dense filter)."""
    for r in range(lo, hi, 4):
        bits = (np.uint64(fb[r >> 5]) | (np.uint64(fb[min((r >> 5) + 1, fb.shape[0] - 1)])
                                         << np.uint64(32))) >> np.uint64(r & 31)
        if (bits & np.uint64(15)) == 0:
            continue
        if metric == METRIC_L2:
            k0, k1, k2, k3 = keys4_l2(q, data, r)
        else:
            k0, k1, k2, k3 = keys4_ip(q, data, r)
        if bits & np.uint64(1) and k0 <= hd[0]:
            heap_push(hd, hi_, k0, ids[r])
        if r + 1 < hi and bits & np.uint64(2) and k1 <= hd[0]:
            heap_push(hd, hi_, k1, ids[r + 1])
        if r + 2 < hi and bits & np.uint64(4) and k2 <= hd[0]:
            heap_push(hd, hi_, k2, ids[r + 2])
        if r + 3 < hi and bits & np.uint64(8) and k3 <= hd[0]:
            heap_push(hd, hi_, k3, ids[r + 3])


@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_rows_sparse(q, data, ids, lo, hi, metric, fb, hd, hi_):
    """Offer only the rows of [lo, hi) whose bit is set in fb, one key each
    (``key1_*`` has the bits of ``keys4_*``): a list with few allowed rows."""
    w = lo >> 5
    while (w << 5) < hi:
        bits = fb[w]
        base = w << 5
        if base < lo:
            bits &= np.uint32(0xFFFFFFFF) << np.uint32(lo - base)
        if hi - base < 32:
            bits &= np.uint32((np.uint64(1) << np.uint64(hi - base)) - np.uint64(1))
        while bits:
            r = base + lowest_bit(bits)
            bits &= bits - np.uint32(1)
            key = key1_l2(q, data, r) if metric == METRIC_L2 else key1_ip(q, data, r)
            if key <= hd[0]:
                heap_push(hd, hi_, key, ids[r])
        w += 1


@njit(nogil=True, cache=True)
def _scan_span(q, data, ids, lo, hi, metric, mode, fb, hd, hi_):
    """Rows [lo, hi) of one list scanned as its filter mode says (``_bits``)."""
    if mode == MODE_ALL:
        _scan_rows(q, data, ids, lo, hi, metric, hd, hi_)
    elif mode == MODE_DENSE:
        _scan_rows_masked(q, data, ids, lo, hi, metric, fb, hd, hi_)
    elif mode != MODE_SKIP:
        _scan_rows_sparse(q, data, ids, lo, hi, metric, fb, hd, hi_)


# -- batch: parallel over queries -------------------------------------------------------

@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_query(q, data, ids, starts, sizes, lists, metric, fbits, fcount, f, hd, hi_):
    """Sorted top-k of one query over its probed ``lists`` (-1 = skip) into (hd, hi_),
    under filter row f of (fbits, fcount) when filtered."""
    heap_init(hd, hi_)
    fb = fbits[f]
    for p in range(lists.shape[0]):
        lst = lists[p]
        if lst < 0:
            continue
        s = starts[lst]
        mode = list_mode(fbits, fcount, f, lst, sizes[lst])
        _scan_span(q, data, ids, s, s + sizes[lst], metric, mode, fb, hd, hi_)
    heap_sort(hd, hi_)


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def scan_batch(q, data, ids, starts, sizes, probes, fbits, fcount, fslot, metric, out_d,
               out_i):
    """Top-k of each query over its probed lists; prange over queries.

    q (nq, d) float32; probes (nq, nprobe) int64 list numbers (-1 = skip);
    (fbits, fcount, fslot) the row filter (``_bits``; stand-ins when unfiltered);
    out_d (nq, k) float32 keys ascending, out_i (nq, k) int64 (ID_SENTINEL padding).
    """
    for qi in prange(q.shape[0]):
        f = fslot[qi] if is_filtered(fbits) else 0
        _scan_query(q[qi], data, ids, starts, sizes, probes[qi], metric, fbits, fcount, f,
                    out_d[qi], out_i[qi])


@njit(nogil=True, cache=True, fastmath=_FM)
def scan_serial(q, data, ids, starts, sizes, probes, fbits, fcount, fslot, metric, out_d,
                out_i):
    """``scan_batch`` on the calling thread only: for work too small to pay for a
    parallel launch (one query over a few short lists)."""
    for qi in range(q.shape[0]):
        f = fslot[qi] if is_filtered(fbits) else 0
        _scan_query(q[qi], data, ids, starts, sizes, probes[qi], metric, fbits, fcount, f,
                    out_d[qi], out_i[qi])


# -- single query: parallel over runs of its probed rows --------------------------------

@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_run(q, data, ids, starts, sizes, lists, cum, lo, hi, metric, fbits, fcount, f,
              hd, hi_):
    """Top-k of rows [lo, hi) of the concatenation of the probed ``lists`` (in probe
    order; cum[p] rows precede probe p; a skipped list counts 0 rows) into a fresh heap
    (hd, hi_). Serial worker of the run-split plans; a run may begin or end inside a
    list."""
    heap_init(hd, hi_)
    fb = fbits[f]
    nprobe = lists.shape[0]
    p = 0
    while p < nprobe and cum[p + 1] <= lo:
        p += 1
    pos = lo
    while pos < hi:
        take_hi = min(hi, cum[p + 1])
        if take_hi > pos:
            lst = lists[p]
            s = starts[lst] + (pos - cum[p])
            mode = list_mode(fbits, fcount, f, lst, sizes[lst])
            _scan_span(q, data, ids, s, s + (take_hi - pos), metric, mode, fb, hd, hi_)
            pos = take_hi
        p += 1


@njit(nogil=True, cache=True)
def _cum_rows(lists, sizes, fbits, fcount, f, cum):
    """cum[p + 1] = rows of lists[:p + 1] a run-split scan reads (0 for -1 and for
    lists the filter skips); cum[0] is 0."""
    cum[0] = 0
    for p in range(lists.shape[0]):
        lst = lists[p]
        n = 0
        if lst >= 0 and list_mode(fbits, fcount, f, lst, sizes[lst]) != MODE_SKIP:
            n = sizes[lst]
        cum[p + 1] = cum[p] + n


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def scan_single(q, data, ids, starts, sizes, probes, fbits, fcount, fslot, metric, n_runs,
                out_d, out_i):
    """Like ``scan_batch`` but each query is split over ``n_runs`` parallel runs.

    The rows of a query's probed lists, taken in probe order, are cut into ``n_runs``
    runs of (nearly) equal length; run r keeps its own top-k in row r of a partial
    buffer, and the partials are merged. Queries are processed one after another.
    """
    nprobe = probes.shape[1]
    k = out_d.shape[1]
    part_d = np.empty((n_runs, k), dtype=np.float32)
    part_i = np.empty((n_runs, k), dtype=np.int64)
    cum = np.empty(nprobe + 1, dtype=np.int64)  # not np.zeros: see search_one
    cum[0] = 0
    for qi in range(q.shape[0]):
        f = fslot[qi] if is_filtered(fbits) else 0
        _cum_rows(probes[qi], sizes, fbits, fcount, f, cum)
        total = cum[nprobe]
        for r in prange(n_runs):
            _scan_run(q[qi], data, ids, starts, sizes, probes[qi], cum,
                      total * r // n_runs, total * (r + 1) // n_runs, metric, fbits,
                      fcount, f, part_d[r], part_i[r])
        merge_one(part_d, part_i, out_d[qi], out_i[qi])


# -- exact over a filter's rows, in place ------------------------------------------------

@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_bits(q, data, ids, fb, metric, hd, hi_):
    """Sorted top-k of one query over every row whose bit is set in fb (nw,)."""
    heap_init(hd, hi_)
    _scan_rows_sparse(q, data, ids, 0, fb.shape[0] * 32, metric, fb, hd, hi_)
    heap_sort(hd, hi_)


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def scan_bits(q, data, ids, fbits, fslot, metric, out_d, out_i):
    """Exact top-k of each query over the rows its filter allows (fbits[fslot[qi]]),
    read in place one key each: for a few queries, where gathering the rows first
    would cost more than the keys. prange over queries."""
    for qi in prange(q.shape[0]):
        _scan_bits(q[qi], data, ids, fbits[fslot[qi]], metric, out_d[qi], out_i[qi])


@njit(nogil=True, cache=True, fastmath=_FM)
def scan_bits_serial(q, data, ids, fbits, fslot, metric, out_d, out_i):
    """``scan_bits`` on the calling thread."""
    for qi in range(q.shape[0]):
        _scan_bits(q[qi], data, ids, fbits[fslot[qi]], metric, out_d[qi], out_i[qi])


# -- list-major: each list read once per group of queries ------------------------------

@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_group(q, data, ids, starts, sizes, probes, fbits, fcount, fslot, q0, q1, metric,
                out_d, out_i):
    """Top-k of queries q0..q1 into their rows of (out_d, out_i), list by list.

    A counting sort by list gives, for each list, the queries of the group that probe
    it; the list is then scanned for all of them while its rows are in cache. Each
    query owns its heap, so the visiting order changes nothing: the heap keeps the k
    best (key, id) pairs under a total order, whatever order they arrive in.
    """
    nlist = starts.shape[0]
    nprobe = probes.shape[1]
    first = np.zeros(nlist + 1, dtype=np.int64)
    for qi in range(q0, q1):
        heap_init(out_d[qi], out_i[qi])
        for p in range(nprobe):
            lst = probes[qi, p]
            if lst >= 0:
                first[lst + 1] += 1
    for lst in range(nlist):
        first[lst + 1] += first[lst]
    who = np.empty(first[nlist], dtype=np.int64)
    fill = first[:nlist].copy()
    for qi in range(q0, q1):
        for p in range(nprobe):
            lst = probes[qi, p]
            if lst >= 0:
                who[fill[lst]] = qi
                fill[lst] += 1
    for lst in range(nlist):
        s = starts[lst]
        for g in range(first[lst], first[lst + 1]):
            qi = who[g]
            f = fslot[qi] if is_filtered(fbits) else 0
            mode = list_mode(fbits, fcount, f, lst, sizes[lst])
            _scan_span(q[qi], data, ids, s, s + sizes[lst], metric, mode, fbits[f],
                       out_d[qi], out_i[qi])
    for qi in range(q0, q1):
        heap_sort(out_d[qi], out_i[qi])


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def scan_list_major(q, data, ids, starts, sizes, probes, fbits, fcount, fslot, n_groups,
                    metric, out_d, out_i):
    """``scan_batch``'s results, list-major: prange over ``n_groups`` equal groups of
    consecutive queries; within a group every probed list is read once (see
    ``_scan_group``). Pays when several queries of a group probe the same list: the
    list is read from memory once instead of once per query."""
    nq = q.shape[0]
    for g in prange(n_groups):
        _scan_group(q, data, ids, starts, sizes, probes, fbits, fcount, fslot,
                    nq * g // n_groups, nq * (g + 1) // n_groups, metric, out_d, out_i)


# -- cosine normalisation: one definition for every path -----------------------------

@njit(nogil=True, cache=True)
def _unit_row(src, dst):
    """dst = src / ||src|| (float64 sum and division, then float32; zero rows stay zero).

    Deliberately not fastmath and not inlined (inlining would give it the caller's
    flags): the batch path and ``search_one`` must round every query the same way.
    """
    s = 0.0
    for t in range(src.shape[0]):
        v = np.float64(src[t])
        s += v * v
    norm = np.sqrt(s)
    if norm == 0.0:
        norm = 1.0
    for t in range(src.shape[0]):
        dst[t] = np.float32(np.float64(src[t]) / norm)


@njit(nogil=True, cache=True)
def normalize_rows_into(x, out):
    """out[i] = x[i] / ||x[i]|| in float32 (see ``_unit_row``); x (n, d) float32/64."""
    for i in range(x.shape[0]):
        _unit_row(x[i], out[i])


# -- coarse step for a few queries: a GEMV over the centroid panels ------------------

@njit(nogil=True, cache=True)
def _coarse_scores(qf, panels, metric, out, p0):
    """out[j] for the centroids of panels p0, p0 + 1, ... (len(out), a multiple of the
    panel width, columns; the padding columns of the last panel get keys of zero
    vectors, never selected): the squared distance (L2) or the negated inner product.

    panels is the tiled kernel's layout (``assign.prepare_centroids``);
    ``_rowkeys.panelkeys_*`` keeps eight vectors of accumulators in registers, each key
    one FMA chain in feature order, so its bits depend neither on vectorisation nor on
    the range it is computed in: every caller (coarse_few, the one-query kernels,
    their thread-split coarse step) gets the same keys.
    """
    if metric == METRIC_L2:
        panelkeys_l2(qf, panels, p0, out)
    else:
        panelkeys_ip(qf, panels, p0, out)


@njit(nogil=True, cache=True, fastmath=_FM)
def _select_lists(scores, nlist, pd, pl):
    """The p = len(pd) smallest of scores[:nlist], best first (ties to the lower list),
    into (pd, pl); NaN keys are never taken, and (inf, ID_SENTINEL) pads.

    Up to COARSE_SELECT_HEAP_MAX_P lists a heap; beyond, the tiled kernel's cut
    (``assign.floor_at_least`` on the negated keys: bisection to a key that at least p
    and at most p + max(8, p / 4) keys pass), a branch-free compaction and a stable
    insertion of the few that pass (``topk.insert_best``). At glove-50's 1265 lists the
    heap took 12.6 / 26 / 52 us for 64 / 128 / 256 lists (a third of a one-query 4-bit
    search) and the cut 4.3 / 7.3 / 17.5 us; at 8 lists 2.5 against 3.8 us.
    """
    p = pd.shape[0]
    if p <= COARSE_SELECT_HEAP_MAX_P:
        heap_init(pd, pl)
        for j in range(nlist):
            if scores[j] <= pd[0]:
                heap_push(pd, pl, scores[j], j)
        heap_sort(pd, pl)
        return
    neg = np.empty(nlist, dtype=np.float32)
    for j in range(nlist):
        neg[j] = -scores[j]
    t = floor_at_least(neg, p)
    cs = np.empty(nlist, dtype=np.float32)
    ci = np.empty(nlist, dtype=np.int64)
    w = 0
    for j in range(nlist):
        v = neg[j]
        cs[w] = v
        ci[w] = j
        w += np.int64(v >= t and v > -np.inf)    # NaN and +inf keys do not pass
    m = insert_best(cs, ci, w, pd, pl)
    for r in range(m):
        pd[r] = -pd[r]
    # Fewer than p finite keys: +inf keys next, by list, as the heap takes them.
    for j in range(nlist):
        if m == p:
            break
        if scores[j] == np.inf:
            pd[m] = np.inf
            pl[m] = j
            m += 1
    for r in range(m, p):
        pd[r] = np.inf
        pl[r] = ID_SENTINEL


@njit(nogil=True, cache=True, fastmath=_FM)
def _coarse_one(qf, panels, nlist, metric, scores, pd, pl):
    """The len(pd) best of the nlist lists of one float32 query, best first, into
    (pd, pl); scores is scratch of panels.shape[0] * panels.shape[2]."""
    _coarse_scores(qf, panels, metric, scores, 0)
    _select_lists(scores, nlist, pd, pl)


@njit(nogil=True, cache=True, parallel=True)
def _coarse_split(qf, panels, metric, scores, n_runs):
    """``_coarse_scores`` of every panel into scores, prange over n_runs ranges of
    panels. A private buffer per run: runs writing neighbouring parts of ``scores``
    once per feature would share the cache line at their boundary (measured here: that
    ping-pong made the split coarse step 2x slower than serial)."""
    npanel, _, nr = panels.shape
    for r in prange(n_runs):
        p0 = npanel * r // n_runs
        part = np.empty((npanel * (r + 1) // n_runs - p0) * nr, dtype=np.float32)
        _coarse_scores(qf, panels, metric, part, p0)
        scores[p0 * nr:p0 * nr + part.shape[0]] = part


@njit(nogil=True, cache=True)
def coarse_one_query(qf, panels, nlist, metric, min_run, max_runs, scores, pd, pl):
    """``_coarse_one`` for a one-query kernel: split over threads (``_coarse_split``)
    when every run gets at least ``min_run`` centroids of 64 features (at most
    ``max_runs`` runs); the same keys either way."""
    npanel = panels.shape[0]
    n_runs = min(nlist * max(qf.shape[0], 64) // (64 * min_run), max_runs, npanel)
    if n_runs <= 1:
        _coarse_scores(qf, panels, metric, scores, 0)
    else:
        _coarse_split(qf, panels, metric, scores, n_runs)
    _select_lists(scores, nlist, pd, pl)


@njit(nogil=True, cache=True)
def coarse_few(q, panels, nlist, metric, out_d, out_i):
    """``_coarse_one`` for each row of q (nq, d) float32 (a few queries, serial)."""
    scores = np.empty(panels.shape[0] * panels.shape[2], dtype=np.float32)
    for qi in range(q.shape[0]):
        _coarse_one(q[qi], panels, nlist, metric, scores, out_d[qi], out_i[qi])


# -- value checks: one rule for the general path and the one-query kernels ------------

@njit(nogil=True, cache=True)
def value_limit(d):
    """sqrt(FLT_MAX / (VALUE_LIMIT_FACTOR * d)) in float64, the largest |value| of a
    vector of d features (see ``_config``); the same IEEE operations as
    ``_validation.value_limit``, so both paths draw the line at the same value."""
    return np.sqrt(_FLT_MAX / np.float64(VALUE_LIMIT_FACTOR * d))


@njit(nogil=True, cache=True)
def count_within(flat, lim):
    """How many of flat (1-D float32) have |v| <= lim (float32); NaN never does.

    The check of ``_validation.check_vectors``: a compare-and-add loop that vectorises,
    one pass and no temporary (np.isfinite(x).all() writes a bool array first; measured
    ~0.75x its time at 100k x 128).
    """
    c = 0
    for i in range(flat.shape[0]):
        c += np.int64(abs(flat[i]) <= lim)
    return c


# -- one query, one call ------------------------------------------------------------

@njit(nogil=True, cache=True)
def query_into(q, unit, qf):
    """qf = float32(q), normalised if ``unit`` (cosine), as the batch path prepares a
    query (float32 first, then ``_unit_row``); False (qf then unspecified) if an entry
    is NaN, infinite or, as float32, beyond ``value_limit(d)``: the general path's rule.
    q (d,) float32 or float64.

    One branch-free loop converts and counts the entries within the limit, so it
    vectorises: measured 2-3x faster than the finiteness loop with an early exit it
    replaced (d=64: 20 vs 46 ns; d=784: 123 vs 401 ns).
    """
    d = q.shape[0]
    lim = value_limit(d)
    ok = 0
    for t in range(d):
        v = np.float32(q[t])
        qf[t] = v
        ok += np.int64(abs(np.float64(v)) <= lim)   # False for NaN
    if ok != d:
        return False
    if unit:
        _unit_row(qf, qf)
    return True


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def search_one(q, panels, data, ids, starts, sizes, metric, unit, nprobe, min_run,
               max_runs, out_d, out_i):
    """Search one query end to end; returns False, writing nothing, if q holds NaN,
    inf or a value beyond ``value_limit(d)`` (the caller's general path raises).

    q (d,) float32 or float64, C-contiguous; panels the centroid panels
    (``assign.prepare_centroids``); unit: normalise q first (cosine); nprobe <= nlist.
    Runs of at least ``min_run`` rows (or centroids) of 64 features (at most
    ``max_runs``) decide whether the coarse step and the scan are split over threads.
    (The thread count is an argument: numba.get_num_threads() inside a kernel defeats
    the on-disk cache.) Writes out_d (1, k) float32 in the FAISS convention (L2
    ascending / +inf padding, scores descending / -inf padding) and out_i (1, k) int64
    (-1 padding).
    """
    d = q.shape[0]
    qf = np.empty(d, dtype=np.float32)
    if not query_into(q, unit, qf):
        return False
    # Coarse step: the keys of coarse_few (the batch path's for a few queries),
    # split over threads by ranges of panels when there are enough centroids.
    pd = np.empty(nprobe, dtype=np.float32)
    pl = np.empty(nprobe, dtype=np.int64)
    nlist = starts.shape[0]
    scores = np.empty(panels.shape[0] * panels.shape[2], dtype=np.float32)
    coarse_one_query(qf, panels, nlist, metric, min_run, max_runs, scores, pd, pl)
    hd = out_d[0]
    hi_ = out_i[0]
    # np.empty, not np.zeros: under parallel=True np.zeros becomes a parallel region,
    # and waking the pool for it costs more than this whole search.
    cum = np.empty(nprobe + 1, dtype=np.int64)
    cum[0] = 0
    for p in range(nprobe):   # nprobe <= nlist: every probe is a real list
        cum[p + 1] = cum[p] + sizes[pl[p]]
    total = cum[nprobe]
    n_runs = min(total * max(d, 64) // (64 * min_run), max_runs)
    fbits = np.empty((1, 0), dtype=np.uint32)    # unfiltered (``_bits``)
    fcount = np.empty((1, 0), dtype=np.int64)
    if n_runs <= 1:  # too little work to pay for waking the other threads
        _scan_query(qf, data, ids, starts, sizes, pl, metric, fbits, fcount, 0, hd, hi_)
    else:
        k = hd.shape[0]
        part_d = np.empty((n_runs, k), dtype=np.float32)
        part_i = np.empty((n_runs, k), dtype=np.int64)
        for r in prange(n_runs):
            _scan_run(qf, data, ids, starts, sizes, pl, cum, total * r // n_runs,
                      total * (r + 1) // n_runs, metric, fbits, fcount, 0, part_d[r],
                      part_i[r])
        merge_one(part_d, part_i, hd, hi_)
    to_faiss(hd, hi_, metric == METRIC_L2)
    return True


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def search_one_filtered(q, panels, data, ids, starts, sizes, metric, unit, nprobe, need,
                        max_nprobe, fbits, fcount, n_allowed, exact, min_run, max_runs,
                        out_d, out_i):
    """``search_one`` under one shared row filter (fbits (1, nw), fcount (1, nlist),
    ``n_allowed`` rows; ``_bits``), with the general path's rules so that the results
    equal the same row searched as a filtered (1, d) batch: ``exact``: top-k over every
    allowed row in place (``scan_bits``); else the coarse keys once, the nearest p lists
    for p = max(nprobe, twice the lists expected to hold ``need`` allowed rows), kept if
    they hold an allowed row and while fewer than ``need`` are covered past nprobe
    (``filter_bits.trim_probes``), p grown 4x while short, up to ``max_nprobe``; then
    the filtered scan. Returns False, writing nothing, for NaN/inf/out-of-limit values.
    """
    d = q.shape[0]
    qf = np.empty(d, dtype=np.float32)
    if not query_into(q, unit, qf):
        return False
    hd = out_d[0]
    hi_ = out_i[0]
    if exact:
        _scan_bits(qf, data, ids, fbits[0], metric, hd, hi_)
        to_faiss(hd, hi_, metric == METRIC_L2)
        return True
    nlist = starts.shape[0]
    scores = np.empty(panels.shape[0] * panels.shape[2], dtype=np.float32)
    _coarse_scores(qf, panels, metric, scores, 0)
    p = min(max_nprobe, max(nprobe, np.int64(np.ceil(2.0 * need * nlist /
                                                    max(n_allowed, 1)))))
    while True:
        pd = np.empty(p, dtype=np.float32)
        pl = np.empty(p, dtype=np.int64)
        _select_lists(scores, nlist, pd, pl)
        kept = np.empty(p, dtype=np.int64)
        kept_s = np.empty(p, dtype=np.float32)
        n, got = _trim_one(pl, pd, fcount[0], nprobe, need, kept, kept_s)
        if p >= max_nprobe or got >= need or got >= n_allowed:
            break
        p = min(max_nprobe, 4 * p)
    lists = kept[:max(n, 1)]     # kept[0] is -1 when no list holds an allowed row
    cum = np.empty(lists.shape[0] + 1, dtype=np.int64)
    _cum_rows(lists, sizes, fbits, fcount, 0, cum)
    total = cum[lists.shape[0]]
    n_runs = min(total * max(d, 64) // (64 * min_run), max_runs)
    if n_runs <= 1:
        _scan_query(qf, data, ids, starts, sizes, lists, metric, fbits, fcount, 0, hd, hi_)
    else:
        k = hd.shape[0]
        part_d = np.empty((n_runs, k), dtype=np.float32)
        part_i = np.empty((n_runs, k), dtype=np.int64)
        for r in prange(n_runs):
            _scan_run(qf, data, ids, starts, sizes, lists, cum, total * r // n_runs,
                      total * (r + 1) // n_runs, metric, fbits, fcount, 0, part_d[r],
                      part_i[r])
        merge_one(part_d, part_i, hd, hi_)
    to_faiss(hd, hi_, metric == METRIC_L2)
    return True
