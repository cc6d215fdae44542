"""IVF-PQ search with 4-bit codes: quantized tables, SIMD block sums, filtered top-k.

Storage: a "blocked nibble" arena ``packed`` of shape (ceil(capacity / 32), ceil(m/2),
32) (``fastscan`` layout); list l is rows ``[starts[l], starts[l] + sizes[l])``, which
need not begin or end on a block: the blocks covering them are scanned whole and the
lanes of neighbouring lists masked off here (no padding is stored). ``ids`` is the row
arena beside it (row r is vector ``r % 32`` of block ``r // 32``).

Per (query, probed list):

1. float table ``lut`` (m, 16), "smaller is better": ``qlut[q] + term[l]`` for L2 by
   residual, else ``qlut[q]`` itself (then the quantized table is shared by every list
   of the query and built once);
2. uint8 table, ``bias``, ``scale``: with ``term`` (L2 by residual) all the probed
   tables of a query share ONE scale (FAISS's scheme, see "per-query shared scale"
   below) and each list has its own bias; otherwise ``quantize_lut_into`` once per
   query;
3. the admission key (the reservoir's k-th best so far) goes to the uint16 domain with
   ``key_threshold`` (exact: a lane passes iff its dequantized key would be admitted);
   ``block_sums_below`` returns the lanes under it from the SIMD registers; only
   those lanes are dequantized,
   ``key = float32(base + (bias + sum / scale))``, and offered to a reservoir top-k
   (``topk.res_*``; with re-ranking k is ``k_factor * k`` and heap pushes cost more than
   the scan); the threshold is tightened whenever the reservoir's admission key drops.

Lists whose smallest possible key ``float32(base + bias)`` is already above the
admission key are skipped before their table is quantized (the top-k could not
change), so far probes of a query cost only their row-minima pass.

The dequantized keys are what is returned (or re-ranked exactly by the caller).

Filters (``_bits``): a list with no allowed row (``MODE_SKIP``) is neither read nor
counted in the shared scale; otherwise a block's word of the row bitmap is ANDed into
its SIMD admission mask, and a block whose word is 0 is not summed. So a filtered
search returns the unfiltered keys of the allowed rows, with the scale of the lists it
actually scans.

Backend: ``backend`` is the ``fastscan.Backend`` token; it is an argument of every
cached kernel here so that the backend is part of their signatures (see the cache-safety
note in ``fastscan``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import FASTMATH, FASTSCAN_ACC_MAX
from ..filtering._bits import MODE_SKIP, block_lanes, is_filtered, row_list_mode
from ._lutquant import quantize_rows, row_extrema
from ..scan._rowkeys import lowest_bit, prefetch_span
from .fastscan import block_sums_below, check_block_operands, quantize_lut_into
from ..encode.pq_encode import query_table
from ..common.topk import res_capacity, res_cut, res_finish

__all__ = ["fastscan_batch", "fastscan_serial", "fastscan_single", "dequantize",
           "key_threshold", "query_scale", "scan_query", "shared_scale"]

_FM = set(FASTMATH)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Per-row allowance in the uint16 bound: 0.5 for rounding to nearest, plus the float32
# rounding of the quantization (< 5e-5 per entry, see shared_scale).
_ROUND_SLACK = 0.50005


@njit(nogil=True, cache=True)
def dequantize(base, bias, scale, s):
    """The float32 key of a uint16 LUT sum ``s`` (one formula for kernels and oracle)."""
    return np.float32(np.float64(base) + (bias + np.float64(s) / scale))


@njit(nogil=True, cache=True)
def key_threshold(thr, base, bias, scale):
    """The uint16-domain admission bound of a list: the int64 t with
    ``dequantize(base, bias, scale, s) <= thr  <=>  s < t`` for every s in [0, 65535].

    ``dequantize`` is non-decreasing in s, so the bound is exact: the SIMD mask then
    holds only lanes that will be admitted (a bound with the tables' rounding slack,
    ``fastscan.lut_threshold``, let through about four times as many at k = 80, each
    dequantized for nothing). A first guess from the inverse formula is corrected by
    evaluating the formula itself, one or two steps.
    """
    if not thr < np.inf:
        return np.int64(FASTSCAN_ACC_MAX + 1)
    x = (np.float64(thr) - np.float64(base) - bias) * scale
    if not x >= 0.0:          # below every key (or NaN): check s = 0 itself
        s = np.int64(-1)
    elif x >= FASTSCAN_ACC_MAX:
        s = np.int64(FASTSCAN_ACC_MAX)
    else:
        s = np.int64(x)
    while s < FASTSCAN_ACC_MAX and dequantize(base, bias, scale, s + 1) <= thr:
        s += 1
    while s >= 0 and dequantize(base, bias, scale, s) > thr:
        s -= 1
    return s + 1


@njit(nogil=True, cache=True, inline="always")
def list_lanes(mask, row0, start, end):
    """``mask`` (uint64) without the lanes of the block at row0 outside the list's rows
    [start, end): a list need not start or end on a block."""
    if row0 < start:
        mask &= ~((np.uint64(1) << np.uint64(start - row0)) - np.uint64(1))
    if end - row0 < 32:
        mask &= (np.uint64(1) << np.uint64(end - row0)) - np.uint64(1)
    return mask


@njit(nogil=True, cache=True, fastmath=_FM)
def scan_list_blocks(packed, ids, start, n, fb, lut_u8, bias, scale, base, rd, ri, rr,
                     nres, thr, k, acc, backend):
    """Offer the ``n`` vectors of the list starting at row ``start`` to the reservoir
    (rd, ri, rr: key, id, arena row) holding ``nres`` entries under admission key
    ``thr`` (see ``topk.res_*``); returns the new (nres, thr). The serial worker;
    ``acc`` is a uint16 scratch of 32. ``fb`` (nw,) uint32 is the query's filter row
    (word b = the allowed lanes of block b), or None for every row (then compiled
    apart, without the filter's tests: ``_bits.block_lanes``).

    The reservoir's append and cut are written out here rather than called through
    ``topk.res_push``, and the blocks go through the unchecked ``block_sums_below``
    (operands checked once per list): with ``res_push`` and ``accumulate_block_below``
    the same scan took ~1.7x as long (glove, m=50, nprobe 32, k=80, 2000 queries: 45-49
    vs 28 ms; the blocks alone take ~20 ms, the lane loop is hot: ~390 admitted lanes
    per query).
    """
    if n == 0:
        return nres, thr
    # Lists need not start on a block: the blocks [b0, b1] cover rows [start, end), and
    # the lanes of the first and last block outside them belong to other lists.
    end = start + n
    b0 = start >> 5
    b1 = (end - 1) >> 5
    check_block_operands(packed, lut_u8, acc)
    if b0 < 0 or b1 >= packed.shape[0]:
        raise IndexError("list rows out of the packed arena")
    cap = rd.shape[0]
    most = (k + cap) // 2              # what a cut keeps at most (FAISS's choice)
    t16 = key_threshold(thr, base, bias, scale)
    for b in range(b0, b1 + 1):
        if t16 <= 0:                   # no sum can be admitted any more
            break
        allow = block_lanes(fb, b)
        if allow == 0:                 # no allowed lane: not worth its shuffles
            continue
        mask = np.uint64(block_sums_below(packed, b, lut_u8, acc,
                                          np.uint16(min(t16 - 1, FASTSCAN_ACC_MAX)),
                                          backend)) & allow
        row0 = 32 * b
        mask = list_lanes(mask, row0, start, end)
        if mask == 0:
            continue
        old = thr
        while mask != 0:
            # Straight to each set lane (a bit-by-bit walk mispredicted on sparse masks).
            v = lowest_bit(mask)
            mask &= mask - np.uint64(1)
            key = dequantize(base, bias, scale, acc[v])
            if key <= thr:
                rd[nres] = key
                ri[nres] = ids[row0 + v]
                rr[nres] = row0 + v
                nres += 1
                if nres == cap:
                    nres, thr = res_cut(rd, ri, rr, nres, k, most)
        if thr != old:
            t16 = key_threshold(thr, base, bias, scale)
    return nres, thr


# -- per-query shared scale (L2 by residual: one float table per probed list) ----------
#
# FAISS's scheme: the pair tables lut_p = qlut + term[l_p] of one query are quantized
# with ONE scale s shared by all its probed lists and a per-list bias (the sum of the
# row minima). s = min(255 / max_{p,j} r_pj, (A - 0.50005 m) / max_p sum_j r_pj) with r_pj
# the span of row j of lut_p, so every bound of ``quantize_lut_into`` holds for every
# list (each list's span sum is <= the maximum). Pass 1 finds the row minima and spans,
# pass 2 rebuilds each table (m * 16 adds, cheaper than keeping nprobe tables around)
# and quantizes it. The arithmetic that decides codes and keys is compiled WITHOUT
# fastmath (no contraction into FMAs, no reassociated sums) so the oracle in
# tests/naive/ivfpq.py replays it bit for bit; min / max are exact in any order, so the
# row extrema pass may vectorise freely.


@njit(nogil=True, cache=True)
def _pair_minmax(qlut, term_l, lo, hi):
    """lo[j], hi[j] = min, max over c of the float32 sum qlut[j, c] + term_l[j, c]."""
    row_extrema(qlut, term_l, lo, hi)


@njit(nogil=True, cache=True)
def _span_stats(lo, hi):
    """(max_j r_j, sum_j r_j) with r_j = float64(hi[j]) - float64(lo[j]), in order."""
    rmax = 0.0
    rsum = 0.0
    for j in range(lo.shape[0]):
        r = np.float64(hi[j]) - np.float64(lo[j])
        rmax = max(rmax, r)
        rsum += r
    return rmax, rsum


@njit(nogil=True, cache=True)
def shared_scale(rmax, rsum, m):
    """The quantization scale shared by a query's lists (1 when every row is constant).

    min(255 / max r, (65535 - 0.50005 m) / max sum r), rounded DOWN to a float32: the
    pair tables are quantized in float32 (``_quantize_pair``) and dequantized in float64
    with this same value, and a smaller scale only loosens the bound. With s a float32,
    an entry floor(fl(fl(fl(x - lo) * s) + 0.5)) is at most r_j s + 0.5 + 5e-5 (three
    roundings of a value <= 255.5), which the 0.50005 per row absorbs.

    Always a positive finite float32, whatever the spans: ``dequantize`` divides by it
    (a zero scale from infinite spans raised ZeroDivisionError inside the prange
    drivers, which crashed the process). Tables of finite float32 entries have spans
    below 2 FLT_MAX, so s >= 255 / (2 FLT_MAX) or 65535 / (FASTSCAN_MAX_M * 2 FLT_MAX),
    both normal float32; NaN or infinite spans (tables of queries the callers refuse)
    get 1, meaningless keys and no fault.
    """
    if rsum > 0.0:
        s = min(255.0 / rmax, (FASTSCAN_ACC_MAX - _ROUND_SLACK * m) / rsum, _FLOAT32_MAX)
        s32 = np.float32(s)
        if np.float64(s32) > s:
            s32 = np.nextafter(s32, np.float32(0.0))
        if s32 > 0.0:            # False for NaN too
            return np.float64(s32)
    return 1.0


@njit(nogil=True, cache=True)
def _quantize_pair(qlut, term_l, lo, scale, out_u8):
    """out_u8[j, c] = floor(((qlut + term_l)[j, c] - lo[j]) * scale + 0.5) in float32.
    Padding rows stay as set. Vectorised in LLVM IR (``_lutquant``): Numba's loop kept
    the float -> uint8 conversion scalar, 2.9 us of a ~4 us (query, list) pair at m=112.
    """
    quantize_rows(qlut, term_l, lo, scale, out_u8)


@njit(nogil=True, cache=True)
def _pair_bias(lo):
    """The list's bias sum_j lo[j] (float64, in order)."""
    bias = 0.0
    for j in range(lo.shape[0]):
        bias += np.float64(lo[j])
    return bias


@njit(nogil=True, cache=True)
def query_scale(qlut, term, probes_q, sizes, fc, lo, hi):
    """Pass 1 for one query: row minima of every probed list into lo[p] and the shared
    scale. Skipped probes (-1, empty list, or no row allowed by the query's filter row
    fc = fcount[f] (nlist,) int64; None if unfiltered) do not count.

    A probe ``-2 - l`` (at most -2) is list l held by another shard (``numba_ivf.dask``):
    counted, as the caller says the whole index would, but never scanned (every scan
    skips negative probes), so that each shard quantizes with the single index's scale.
    """
    rmax = 0.0
    rsum = 0.0
    nprobe = probes_q.shape[0]
    table_bytes = term.shape[1] * term.shape[2] * 4
    for p in range(nprobe):
        lst = probes_q[p]
        if lst <= -2:
            lst = -2 - lst
        elif lst < 0 or sizes[lst] == 0 or \
                row_list_mode(fc, lst, sizes[lst]) == MODE_SKIP:
            continue
        # The next list's term table (7 KB at m=112, from a table of nlist of them
        # that does not stay in cache): requested while this one is reduced.
        nx = probes_q[p + 1] if p + 1 < nprobe else -1
        if nx >= 0 and row_list_mode(fc, nx, sizes[nx]) != MODE_SKIP:
            prefetch_span(term, nx * table_bytes, table_bytes)
        _pair_minmax(qlut, term[lst], lo[p], hi)
        a, s = _span_stats(lo[p], hi)
        rmax = max(rmax, a)
        rsum = max(rsum, s)
    return shared_scale(rmax, rsum, qlut.shape[0])


@njit(nogil=True, cache=True, fastmath=_FM)
def scan_query(packed, ids, starts, sizes, probes_q, fbits, fcount, f, base_q, qlut, term,
               use_term, lo, hi, lut_u8, acc, rd, ri, rr, hd, hi_, hr, ordered, backend):
    """All probed lists of one query (filter row ``f`` of fbits/fcount, see ``_bits``)
    into its top-k (hd, hi_, and the arena rows hr, -1 for padding), sorted if
    ``ordered``; the serial worker.

    lo (nprobe, m) float32, hi (m,) float32, lut_u8 (2*ceil(m/2), 16) uint8 whose
    padding row is zero, acc (32,) uint16, and the reservoir rd, ri, rr
    (``topk.res_capacity(k)``,) are scratch.
    """
    # Unfiltered, the workers get None for the filter row: compiled apart, they are the
    # unfiltered scan itself, with no filter test left (``_bits``).
    if is_filtered(fbits):
        nres = _scan_lists(packed, ids, starts, sizes, probes_q, fbits[f], fcount[f],
                           base_q, qlut, term, use_term, lo, hi, lut_u8, acc, rd, ri, rr,
                           hd.shape[0], backend)
    else:
        nres = _scan_lists(packed, ids, starts, sizes, probes_q, None, None, base_q, qlut,
                           term, use_term, lo, hi, lut_u8, acc, rd, ri, rr, hd.shape[0],
                           backend)
    res_finish(rd, ri, rr, nres, hd, hi_, hr, ordered)


@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_lists(packed, ids, starts, sizes, probes_q, fb, fc, base_q, qlut, term,
                use_term, lo, hi, lut_u8, acc, rd, ri, rr, k, backend):
    """The probed lists of ``scan_query`` under filter row (fb, fc) = (fbits[f],
    fcount[f]), or None (compiled apart: ``_bits``), into the reservoir; returns its
    entries."""
    if use_term:
        scale = query_scale(qlut, term, probes_q, sizes, fc, lo, hi)
        bias = 0.0
    else:
        bias, scale = quantize_lut_into(qlut, lut_u8)
    return _scan_range(packed, ids, starts, sizes, probes_q, 0, probes_q.shape[0], 1, fb,
                       fc, base_q, qlut, term, use_term, lo, bias, scale, lut_u8, acc, rd,
                       ri, rr, k, backend)


@njit(nogil=True, cache=True, fastmath=_FM)
def _scan_range(packed, ids, starts, sizes, probes_q, p0, p1, step, fb, fc, base_q, qlut,
                term, use_term, lo, bias, scale, lut_u8, acc, rd, ri, rr, k, backend):
    """Probes p0, p0 + step, ... (< p1) of one query into an empty reservoir (rd, ri,
    rr); returns its entries. Unless use_term, ``lut_u8`` and ``bias`` are the query's
    quantized table; with it, each list's table is quantized here with the query's
    shared ``scale`` and row minima ``lo[p]`` (``query_scale``)."""
    nres = 0
    thr = np.float32(np.inf)
    block_bytes = packed.shape[1] * 32
    for p in range(p0, p1, step):
        lst = probes_q[p]
        if lst < 0 or sizes[lst] == 0 or row_list_mode(fc, lst, sizes[lst]) == MODE_SKIP:
            continue
        # The next list's codes, requested now: a list is a few blocks, too short for
        # the hardware prefetcher to ramp up, and its misses would stall the shuffles.
        nx = probes_q[p + step] if p + step < p1 else -1
        if nx >= 0 and row_list_mode(fc, nx, sizes[nx]) != MODE_SKIP:
            prefetch_span(packed, (starts[nx] >> 5) * block_bytes,
                          (((starts[nx] + sizes[nx] + 31) >> 5) - (starts[nx] >> 5))
                          * block_bytes)
        if use_term:
            bias = _pair_bias(lo[p])
        # Every key of the list is float32(base + (bias + s / scale)) with s >= 0, so
        # >= float32(base + bias): a list whose floor is above the admission key
        # cannot change the top-k, and neither its table nor its blocks are needed.
        if np.float32(np.float64(base_q[p]) + bias) > thr:
            continue
        if use_term:
            _quantize_pair(qlut, term[lst], lo[p], scale, lut_u8)
        nres, thr = scan_list_blocks(packed, ids, starts[lst], sizes[lst], fb, lut_u8,
                                     bias, scale, base_q[p], rd, ri, rr, nres, thr, k,
                                     acc, backend)
    return nres


@njit(nogil=True, cache=True, inline="always")
def _slot(fbits, fslot, qi):
    """Filter row of query qi (0 unfiltered: fslot is not read)."""
    return fslot[qi] if is_filtered(fbits) else 0


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def fastscan_batch(packed, ids, starts, sizes, probes, fbits, fcount, fslot, base, q,
                   codebooks_t, kind, term, use_term, out_d, out_i, out_r, ordered,
                   backend):
    """Top-k keys of every query over the allowed rows of its probed lists; prange over
    queries.

    packed (ceil(cap/32), ceil(m/2), 32) uint8; ids (cap,) int64; starts and sizes
    (nlist,) int64 (a list may start inside a block); probes (nq, nprobe) int64 (-1 =
    skip); fbits (nf, nw) uint32, fcount (nf, nlist) int64, fslot (nq,) int64: the
    filters (``_bits``; ``_bits.no_filter()`` for none); base (nq, nprobe) float32;
    q (nq, d) float32 with codebooks_t (m, dsub, 16) and the table kind
    (``pq_encode.TABLE_*``): each query's float table (m, 16) is built here
    (``query_table``), not read from an (nq, m, 16) array that costs more to allocate
    and fill than to compute; term (nlist, m, 16) float32 (used iff use_term);
    out_d (nq, k) float32 keys ascending, out_i (nq, k) int64 (ID_SENTINEL padding),
    out_r (nq, k) int64 arena rows (-1 padding); sorted per query if ``ordered`` (else
    only the set, for re-ranking).
    """
    nq, nprobe = probes.shape
    m, _, ksub = codebooks_t.shape
    m2 = (m + 1) // 2
    cap = res_capacity(out_d.shape[1])
    for qi in prange(nq):
        qlut = np.empty((m, ksub), dtype=np.float32)
        query_table(q[qi], codebooks_t, kind, qlut)
        lo = np.empty((nprobe, m), dtype=np.float32)
        hi = np.empty(m, dtype=np.float32)
        lut_u8 = np.zeros((2 * m2, 16), dtype=np.uint8)
        acc = np.empty(32, dtype=np.uint16)
        rd = np.empty(cap, dtype=np.float32)
        ri = np.empty(cap, dtype=np.int64)
        rr = np.empty(cap, dtype=np.int64)
        scan_query(packed, ids, starts, sizes, probes[qi], fbits, fcount,
                   _slot(fbits, fslot, qi), base[qi], qlut, term, use_term, lo, hi,
                   lut_u8, acc, rd, ri, rr, out_d[qi], out_i[qi], out_r[qi], ordered,
                   backend)


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def fastscan_single(packed, ids, starts, sizes, probes, fbits, fcount, fslot, base, q,
                    codebooks_t, kind, term, use_term, out_d, out_i, out_r, ordered,
                    backend, n_runs):
    """``fastscan_batch`` for few queries: each query prange's over runs of its probes.

    Run r of ``runs = min(n_runs, nprobe)`` (the caller's choice: a few per thread)
    takes probes r, r + runs, r + 2 runs, ... of the coarse order, serially into its
    own reservoir, and the runs' survivors are merged by one more cut. Interleaved, every
    run meets near lists first, so its admission key tightens early and it skips far
    lists by their floor as the serial scan does; cut into consecutive ranges, the last
    run started from an infinite key at far lists and did most of the work (glove-50,
    m = 25, k = 80, nprobe 512, two threads: 1.6x one thread's time). The shared scale
    (L2 by residual) is found serially over all the probes first, so the keys, and the
    top-k (exact under (key, id) in any visiting order), are the batch path's.
    """
    nq, nprobe = probes.shape
    m, _, ksub = codebooks_t.shape
    m2 = (m + 1) // 2
    k = out_d.shape[1]
    cap = res_capacity(k)
    n_runs = max(1, min(nprobe, n_runs))
    qlut = np.empty((m, ksub), dtype=np.float32)
    rd = np.empty((n_runs, cap), dtype=np.float32)
    ri = np.empty((n_runs, cap), dtype=np.int64)
    rr = np.empty((n_runs, cap), dtype=np.int64)
    nres = np.empty(n_runs, dtype=np.int64)
    md = np.empty(n_runs * cap, dtype=np.float32)
    mi = np.empty(n_runs * cap, dtype=np.int64)
    mr = np.empty(n_runs * cap, dtype=np.int64)
    lo = np.empty((nprobe, m), dtype=np.float32)
    hi = np.empty(m, dtype=np.float32)
    lut_u8 = np.zeros((n_runs if use_term else 1, 2 * m2, 16), dtype=np.uint8)
    acc = np.empty((n_runs, 32), dtype=np.uint16)
    filtered = is_filtered(fbits)
    for qi in range(nq):
        query_table(q[qi], codebooks_t, kind, qlut)
        f = _slot(fbits, fslot, qi)
        sbias, sscale = 0.0, 1.0
        if use_term and filtered:
            sscale = query_scale(qlut, term, probes[qi], sizes, fcount[f], lo, hi)
        elif use_term:
            sscale = query_scale(qlut, term, probes[qi], sizes, None, lo, hi)
        else:        # one table, read by every run
            sbias, sscale = quantize_lut_into(qlut, lut_u8[0])
        for r in prange(n_runs):
            u8 = lut_u8[r] if use_term else lut_u8[0]
            if filtered:
                nres[r] = _scan_range(packed, ids, starts, sizes, probes[qi], r, nprobe,
                                      n_runs, fbits[f], fcount[f], base[qi], qlut, term,
                                      use_term, lo, sbias, sscale, u8, acc[r], rd[r],
                                      ri[r], rr[r], k, backend)
            else:
                nres[r] = _scan_range(packed, ids, starts, sizes, probes[qi], r, nprobe,
                                      n_runs, None, None, base[qi], qlut, term, use_term,
                                      lo, sbias, sscale, u8, acc[r], rd[r], ri[r], rr[r],
                                      k, backend)
        n = 0
        for r in range(n_runs):
            for j in range(nres[r]):
                md[n] = rd[r, j]
                mi[n] = ri[r, j]
                mr[n] = rr[r, j]
                n += 1
        res_finish(md, mi, mr, n, out_d[qi], out_i[qi], out_r[qi], ordered)


@njit(nogil=True, cache=True, fastmath=_FM)
def fastscan_serial(packed, ids, starts, sizes, probes, fbits, fcount, fslot, base, q,
                    codebooks_t, kind, term, use_term, out_d, out_i, out_r, ordered,
                    backend):
    """``fastscan_batch`` on the calling thread (few queries over short lists)."""
    nq, nprobe = probes.shape
    m, _, ksub = codebooks_t.shape
    m2 = (m + 1) // 2
    qlut = np.empty((m, ksub), dtype=np.float32)
    cap = res_capacity(out_d.shape[1])
    lo = np.empty((nprobe, m), dtype=np.float32)
    hi = np.empty(m, dtype=np.float32)
    lut_u8 = np.zeros((2 * m2, 16), dtype=np.uint8)
    acc = np.empty(32, dtype=np.uint16)
    rd = np.empty(cap, dtype=np.float32)
    ri = np.empty(cap, dtype=np.int64)
    rr = np.empty(cap, dtype=np.int64)
    for qi in range(nq):
        query_table(q[qi], codebooks_t, kind, qlut)
        scan_query(packed, ids, starts, sizes, probes[qi], fbits, fcount,
                   _slot(fbits, fslot, qi), base[qi], qlut, term, use_term, lo, hi,
                   lut_u8, acc, rd, ri, rr, out_d[qi], out_i[qi], out_r[qi], ordered,
                   backend)
