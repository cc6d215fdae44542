"""Range search over inverted lists: every probed row whose key is below a threshold.

Stage: the list scan of ``range_search`` (IVF-Flat, IVF-PQ with 8-bit or 4-bit codes).
Keys are minimised as everywhere in the package: the squared L2 distance, or the
negated inner product (exact). A row is kept iff ``float64(key) < thr``, with ``thr`` the
radius ("l2") or minus the radius ("ip"/"cosine": score > radius <=> -score < -radius,
negation being exact); the comparison is in float64 so that the radius is not rounded
to float32 first.

Per (query, probed list) key of arena row ``r``:

* flat (IVF-Flat, and IVF-PQ with refine over its stored vectors ``data``): the
  ``_rowkeys`` keys (four rows at a time, one at a time in sparse filtered lists: the
  same bits), as the IVF-Flat scan and the exact re-ranking compute them, so a row's
  key has the same bits as in ``search``;
* 8-bit PQ: ``base + sum_j lut[j, codes[r, j]]`` in j order, ``lut`` the query's float
  table (``pq_encode.query_table``) plus the list's term table when L2 by residual, as
  ``pq_scan`` sums it (same bits as ``search``);
* 4-bit PQ: the same float formula with the codes read from the blocked nibble arena
  (``fastscan`` layout). Float tables, not the quantized uint8 fast-scan ones: the
  keys are exact ADC keys of the codes, not the dequantized fast-scan keys a 4-bit
  ``search`` returns (which differ from them by the quantization error).

Filter (``_bits``): lists without an allowed row are skipped unread; sparse lists
(``list_mode``) visit only their set bits; elsewhere each row's bit is tested (a group
of four rows without one is skipped before its keys).

Output, CSR: ``lims`` (nq + 1,) int64, query i's results in ``[lims[i], lims[i+1])`` of
``keys`` (float32) and ``ids`` (int64), sorted by (key, id). One pass over the probed
rows: each query owns a segment of a buffer as long as its probed (allowed) rows, known
before the scan from the list sizes (or the filter's per-list counts), writes its
results there once and sorts them; a second, cheap pass copies the segments into CSR.
Measured against two passes (count every query's results, prefix sum, then recompute
and write each query's results into its CSR segment), one thread, 100k x 64 float32,
nlist 256, nprobe 16, 300 queries (1.9M probed rows), best of 9 (CPU time):

    results / probed rows     0.14%              12%
    IVF-Flat                  113 vs 232 ms      162 vs 280 ms
    IVF-PQ 8-bit, m=16         49 vs  95 ms       96 vs 141 ms

(one pass vs two): the count pass is a whole scan. The price is the buffer, 12 bytes
per probed row of address space (only the pages results are written to are touched),
bounded by ``RANGE_BUFFER_MAX_BYTES`` per kernel call: a larger batch runs in chunks of
queries (a single query larger than that is a chunk of its own).

Layers: Python wrappers (``range_flat``, ``range_adc``, ``range_nibbles``: convert,
bound, chunk, allocate, compact) -> parallel drivers (``*_pass``, prange over
queries, each writing only its own segment and count; ``compact``) -> serial workers
(``_*_rows``: one run of rows of one list). The index wrapper in
``numba_ivf.ivf._range`` validates.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import FASTMATH, RANGE_BUFFER_MAX_BYTES
from ..filtering._bits import (MODE_ALL, MODE_SKIP, MODE_SPARSE, is_filtered, list_mode,
                               lowest_bit, row_allowed, word_at)
from ._rowkeys import key1_ip, key1_l2, keys4_ip, keys4_l2
from ..encode.pq_encode import query_table

__all__ = ["range_flat", "range_adc", "range_nibbles", "flat_pass", "adc_pass",
           "nibble_pass", "compact", "sort_segment", "METRIC_L2", "METRIC_IP"]

_FM = set(FASTMATH)
# PQ keys are plain float32 adds in code order (no reassociation), as in pq_scan, so a
# key's bits are fixed by the code.
_SUM_FM = {"contract"}
_ROW_BYTES = 12          # a result: float32 key + int64 id

METRIC_L2 = 0    # the values of list_scan.METRIC_* (not imported: list_scan is the
METRIC_IP = 1    # search scan's module, and this one does not need the rest of it)


# -- serial workers ----------------------------------------------------------------------

@njit(nogil=True, cache=True, inline="always")
def _offer(key, r, ids, thr, out_k, out_i, pos):
    """Write (key, ids[r]) at pos if the key is inside; returns the next position."""
    if np.float64(key) < thr:
        out_k[pos] = key
        out_i[pos] = ids[r]
        pos += 1
    return pos


@njit(nogil=True, cache=True, inline="always")
def _set_bits(fb, r, hi):
    """The allowed rows among [r, min(r + 32, hi)) as bits (bit b: row r + b)."""
    w = word_at(fb, r)
    if hi - r < 32:
        w &= np.uint32((np.uint64(1) << np.uint64(hi - r)) - np.uint64(1))
    return w


@njit(nogil=True, cache=True, fastmath=_FM)
def _flat_rows(q, data, ids, lo, hi, metric, thr, fb, mode, out_k, out_i, pos):
    """Rows [lo, hi) of the float32 arena ``data``; returns the next position.

    Keys four rows at a time from ``_rowkeys`` (a ragged end computes clamped rows and
    drops them); under a filter a group's rows are admitted by their bits, and a sparse
    list (``mode`` MODE_SPARSE) visits only its set bits, one key at a time (same bits).
    """
    filtered = mode != MODE_ALL
    if mode == MODE_SPARSE:
        for r0 in range(lo, hi, 32):
            w = _set_bits(fb, r0, hi)
            while w:
                r = r0 + lowest_bit(w)
                w &= w - np.uint32(1)
                key = key1_l2(q, data, r) if metric == METRIC_L2 else \
                    key1_ip(q, data, r)
                pos = _offer(key, r, ids, thr, out_k, out_i, pos)
        return pos
    for r in range(lo, hi, 4):
        w = _set_bits(fb, r, hi) if filtered else np.uint32(15)
        if (w & np.uint32(15)) == 0:
            continue
        if metric == METRIC_L2:
            k0, k1, k2, k3 = keys4_l2(q, data, r)
        else:
            k0, k1, k2, k3 = keys4_ip(q, data, r)
        if w & np.uint32(1):
            pos = _offer(k0, r, ids, thr, out_k, out_i, pos)
        if r + 1 < hi and w & np.uint32(2):
            pos = _offer(k1, r + 1, ids, thr, out_k, out_i, pos)
        if r + 2 < hi and w & np.uint32(4):
            pos = _offer(k2, r + 2, ids, thr, out_k, out_i, pos)
        if r + 3 < hi and w & np.uint32(8):
            pos = _offer(k3, r + 3, ids, thr, out_k, out_i, pos)
    return pos


@njit(nogil=True, cache=True, fastmath=_SUM_FM, inline="always")
def _adc_key(codes, r, lut, base):
    acc = base
    for j in range(codes.shape[1]):
        acc += lut[j, codes[r, j]]
    return acc


@njit(nogil=True, cache=True, fastmath=_SUM_FM)
def _adc_rows(codes, ids, lo, hi, lut, base, thr, fb, mode, out_k, out_i, pos):
    """Rows [lo, hi) of the 8-bit code arena (cap, m): key base + sum_j lut[j, c_j] in
    j order, four rows side by side (four independent add chains); under a filter only
    allowed rows (sparse lists: their set bits only). Returns the next position."""
    filtered = mode != MODE_ALL
    if mode == MODE_SPARSE:
        for r0 in range(lo, hi, 32):
            w = _set_bits(fb, r0, hi)
            while w:
                r = r0 + lowest_bit(w)
                w &= w - np.uint32(1)
                pos = _offer(_adc_key(codes, r, lut, base), r, ids, thr, out_k, out_i,
                             pos)
        return pos
    m = codes.shape[1]
    r = lo
    while r + 4 <= hi:
        w = _set_bits(fb, r, hi) if filtered else np.uint32(15)
        if (w & np.uint32(15)) == 0:
            r += 4
            continue
        a0 = base
        a1 = base
        a2 = base
        a3 = base
        for j in range(m):
            a0 += lut[j, codes[r, j]]
            a1 += lut[j, codes[r + 1, j]]
            a2 += lut[j, codes[r + 2, j]]
            a3 += lut[j, codes[r + 3, j]]
        if w & np.uint32(1):
            pos = _offer(a0, r, ids, thr, out_k, out_i, pos)
        if w & np.uint32(2):
            pos = _offer(a1, r + 1, ids, thr, out_k, out_i, pos)
        if w & np.uint32(4):
            pos = _offer(a2, r + 2, ids, thr, out_k, out_i, pos)
        if w & np.uint32(8):
            pos = _offer(a3, r + 3, ids, thr, out_k, out_i, pos)
        r += 4
    while r < hi:
        if not filtered or row_allowed(fb, r):
            pos = _offer(_adc_key(codes, r, lut, base), r, ids, thr, out_k, out_i, pos)
        r += 1
    return pos


@njit(nogil=True, cache=True, inline="always")
def _lane(r):
    """Byte of row r's vector inside its block (fastscan layout: 0..15 even, 16..31 odd)."""
    k = r & 31
    return 2 * k if k < 16 else 2 * (k - 16) + 1


@njit(nogil=True, cache=True, fastmath=_SUM_FM)
def _nibble_rows(packed, ids, lo, hi, lut, base, thr, fb, mode, out_k, out_i, pos):
    """Rows [lo, hi) of the blocked 4-bit arena (nblocks, ceil(m/2), 32): code j of row
    r is the low (j even) or high (j odd) nibble of packed[r >> 5, j >> 1, lane(r)];
    key base + sum_j lut[j, code_j] in j order (float table, len(lut) = m); under a
    filter only allowed rows. Returns the next position."""
    m = lut.shape[0]
    m2 = packed.shape[1]
    filtered = mode != MODE_ALL
    for r in range(lo, hi):
        if filtered and not row_allowed(fb, r):
            continue
        b = r >> 5
        p = _lane(r)
        acc = base
        for t in range(m2):
            byte = packed[b, t, p]
            acc += lut[2 * t, byte & 15]
            if 2 * t + 1 < m:
                acc += lut[2 * t + 1, byte >> 4]
        pos = _offer(acc, r, ids, thr, out_k, out_i, pos)
    return pos


@njit(nogil=True, cache=True)
def sort_segment(keys, ids, lo, hi):
    """Sort keys[lo:hi], ids[lo:hi] in place by (key, id). Ids are unique within a
    segment (a row is in one list, a query probes a list once), so a sort by id
    followed by a stable sort by key gives that order. Short segments: insertion."""
    n = hi - lo
    if n <= 1:
        return
    if n <= 24:
        for a in range(lo + 1, hi):
            k = keys[a]
            i = ids[a]
            b = a - 1
            while b >= lo and (keys[b] > k or (keys[b] == k and ids[b] > i)):
                keys[b + 1] = keys[b]
                ids[b + 1] = ids[b]
                b -= 1
            keys[b + 1] = k
            ids[b + 1] = i
        return
    seg_k = keys[lo:hi].copy()
    seg_i = ids[lo:hi].copy()
    by_id = np.argsort(seg_i)
    by_key = np.argsort(seg_k[by_id], kind="mergesort")
    for t in range(n):
        s = by_id[by_key[t]]
        keys[lo + t] = seg_k[s]
        ids[lo + t] = seg_i[s]


# -- parallel drivers ---------------------------------------------------------------------
# Query qi writes its results into [offs[qi], offs[qi] + counts[qi]) of (out_k, out_i),
# sorted; offs[qi + 1] - offs[qi] bounds them (its probed, allowed rows).

@njit(nogil=True, cache=True, inline="always")
def _filter_of(fbits, fslot, qi):
    """(filter row, filter index) of query qi (row 0 of the stand-in when unfiltered)."""
    if is_filtered(fbits):
        return fbits[fslot[qi]], fslot[qi]
    return fbits[0], 0


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def flat_pass(q, data, ids, starts, sizes, probes, metric, thr, fbits, fcount, fslot,
              offs, counts, out_k, out_i):
    """The flat range scan; prange over queries.

    q (nq, d) float32; data (cap, d) float32; ids (cap,) int64; starts/sizes (nlist,)
    int64; probes (nq, nprobe) int64 (-1 = skip); metric METRIC_L2 / METRIC_IP;
    thr float64; fbits/fcount/fslot as in ``_bits`` (``no_filter()`` when unfiltered);
    offs (nq + 1,) int64 segment starts; counts (nq,) int64 out.
    """
    for qi in prange(q.shape[0]):
        fb, f = _filter_of(fbits, fslot, qi)
        pos = offs[qi]
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0 or sizes[lst] == 0:
                continue
            mode = list_mode(fbits, fcount, f, lst, sizes[lst])
            if mode == MODE_SKIP:
                continue
            s = starts[lst]
            pos = _flat_rows(q[qi], data, ids, s, s + sizes[lst], metric, thr, fb, mode,
                             out_k, out_i, pos)
        sort_segment(out_k, out_i, offs[qi], pos)
        counts[qi] = pos - offs[qi]


@njit(nogil=True, cache=True, fastmath=_SUM_FM)
def _pair_table(qlut, term, use_term, lst, scratch):
    """The table of (query, list): qlut, or qlut + term[lst] into scratch (L2 by
    residual), the float32 sum ``pq_scan`` builds."""
    if not use_term:
        return qlut
    m, ksub = qlut.shape
    for j in range(m):
        for c in range(ksub):
            scratch[j, c] = qlut[j, c] + term[lst, j, c]
    return scratch


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def adc_pass(codes, ids, starts, sizes, probes, base, q, codebooks_t, kind, term,
             use_term, thr, fbits, fcount, fslot, offs, counts, out_k, out_i):
    """The 8-bit PQ range scan; prange over queries (each builds its table,
    ``pq_encode.query_table``). codes (cap, m) uint8; base (nq, nprobe) float32, kind,
    term (nlist, m, ksub), use_term: as ``pq_scan.adc_scan_batch``; the rest as
    ``flat_pass``."""
    m, _, ksub = codebooks_t.shape
    for qi in prange(q.shape[0]):
        qlut = np.empty((m, ksub), dtype=np.float32)
        scratch = np.empty((m, ksub), dtype=np.float32)
        query_table(q[qi], codebooks_t, kind, qlut)
        fb, f = _filter_of(fbits, fslot, qi)
        pos = offs[qi]
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0 or sizes[lst] == 0:
                continue
            mode = list_mode(fbits, fcount, f, lst, sizes[lst])
            if mode == MODE_SKIP:
                continue
            lut = _pair_table(qlut, term, use_term, lst, scratch)
            s = starts[lst]
            pos = _adc_rows(codes, ids, s, s + sizes[lst], lut, base[qi, p], thr, fb,
                            mode, out_k, out_i, pos)
        sort_segment(out_k, out_i, offs[qi], pos)
        counts[qi] = pos - offs[qi]


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def nibble_pass(packed, ids, starts, sizes, probes, base, q, codebooks_t, kind, term,
                use_term, thr, fbits, fcount, fslot, offs, counts, out_k, out_i):
    """``adc_pass`` over the blocked 4-bit arena ``packed`` (float tables)."""
    m, _, ksub = codebooks_t.shape
    for qi in prange(q.shape[0]):
        qlut = np.empty((m, ksub), dtype=np.float32)
        scratch = np.empty((m, ksub), dtype=np.float32)
        query_table(q[qi], codebooks_t, kind, qlut)
        fb, f = _filter_of(fbits, fslot, qi)
        pos = offs[qi]
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if lst < 0 or sizes[lst] == 0:
                continue
            mode = list_mode(fbits, fcount, f, lst, sizes[lst])
            if mode == MODE_SKIP:
                continue
            lut = _pair_table(qlut, term, use_term, lst, scratch)
            s = starts[lst]
            pos = _nibble_rows(packed, ids, s, s + sizes[lst], lut, base[qi, p], thr, fb,
                               mode, out_k, out_i, pos)
        sort_segment(out_k, out_i, offs[qi], pos)
        counts[qi] = pos - offs[qi]


@njit(nogil=True, cache=True, parallel=True)
def compact(offs, counts, lims, buf_k, buf_i, out_k, out_i):
    """out[lims[qi] : lims[qi] + counts[qi]] = buf[offs[qi] : ...]; prange over queries."""
    for qi in prange(counts.shape[0]):
        a = offs[qi]
        b = lims[qi]
        for t in range(counts[qi]):
            out_k[b + t] = buf_k[a + t]
            out_i[b + t] = buf_i[a + t]


# -- Python wrappers ----------------------------------------------------------------------

def _filter_arrays(filt):
    from ..filtering._bits import no_filter
    if filt is None:
        return no_filter()
    return (np.ascontiguousarray(filt[0], dtype=np.uint32),
            np.ascontiguousarray(filt[1], dtype=np.int64),
            np.ascontiguousarray(filt[2], dtype=np.int64))


def _bounds(sizes, probes, fbits, fcount, fslot):
    """Each query's probed rows (allowed rows under a filter): its results' bound."""
    live = probes >= 0
    lists = np.where(live, probes, 0)
    if fbits.shape[1]:
        per = fcount[fslot[:, None], lists]
    else:
        per = sizes[lists]
    return np.where(live, per, 0).sum(axis=1, dtype=np.int64)


def _chunks(bound, max_rows):
    """[lo, hi) ranges of consecutive queries whose bounds sum to at most max_rows (a
    query above it alone)."""
    cum = np.cumsum(bound)
    out = []
    lo, done = 0, 0
    nq = bound.shape[0]
    while lo < nq:
        hi = int(np.searchsorted(cum, done + max_rows, side="right"))
        hi = max(hi, lo + 1)
        out.append((lo, hi))
        done = int(cum[hi - 1])
        lo = hi
    return out


def _one_pass(run, bound):
    """``run(lo, hi, offs, counts, buf_k, buf_i)`` scans queries [lo, hi) into their
    buffer segments; chunks of at most RANGE_BUFFER_MAX_BYTES, each compacted.
    Returns (lims, keys, ids)."""
    nq = bound.shape[0]
    parts = []
    for lo, hi in _chunks(bound, max(1, RANGE_BUFFER_MAX_BYTES // _ROW_BYTES)):
        offs = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(bound[lo:hi], out=offs[1:])
        buf_k = np.empty(int(offs[-1]), dtype=np.float32)
        buf_i = np.empty(int(offs[-1]), dtype=np.int64)
        counts = np.empty(hi - lo, dtype=np.int64)
        run(lo, hi, offs, counts, buf_k, buf_i)
        lims = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(counts, out=lims[1:])
        out_k = np.empty(int(lims[-1]), dtype=np.float32)
        out_i = np.empty(int(lims[-1]), dtype=np.int64)
        compact(offs, counts, lims, buf_k, buf_i, out_k, out_i)
        parts.append((lims, out_k, out_i))
    if len(parts) == 1:
        return parts[0]
    lims = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.concatenate([np.diff(p[0]) for p in parts]), out=lims[1:])
    return (lims, np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def range_flat(q, data, ids, starts, sizes, probes, l2, thr, filt=None):
    """Rows of the probed lists with key < thr, exact float32 keys (``_rowkeys``).

    Parameters
    ----------
    q : ndarray (nq, d) float32 (prepared: normalised for cosine)
    data : ndarray (cap, d) float32, the row arena; ids (cap,) int64
    starts, sizes : ndarray (nlist,) int64
    probes : ndarray (nq, nprobe) int64, -1 = skip
    l2 : bool, squared L2 keys (else negated inner products)
    thr : float, keep float64(key) < thr
    filt : (fbits, fcount, fslot) or None

    Returns
    -------
    lims (nq + 1,) int64, keys (lims[-1],) float32 minimised, ids (lims[-1],) int64,
    each query's segment sorted by (key, id).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    probes = np.ascontiguousarray(probes, dtype=np.int64)
    fbits, fcount, fslot = _filter_arrays(filt)
    metric = METRIC_L2 if l2 else METRIC_IP
    thr = float(thr)
    per_query = fbits.shape[1] != 0

    def run(lo, hi, offs, counts, buf_k, buf_i):
        flat_pass(q[lo:hi], data, ids, starts, sizes, probes[lo:hi], metric, thr, fbits,
                  fcount, fslot[lo:hi] if per_query else fslot, offs, counts, buf_k,
                  buf_i)
    return _one_pass(run, _bounds(sizes, probes, fbits, fcount, fslot))


def _range_pq(driver, arena, ids, starts, sizes, probes, base, q, codebooks_t, kind,
              term, use_term, thr, filt):
    q = np.ascontiguousarray(q, dtype=np.float32)
    probes = np.ascontiguousarray(probes, dtype=np.int64)
    base = np.ascontiguousarray(base, dtype=np.float32)
    term = np.ascontiguousarray(term, dtype=np.float32)
    fbits, fcount, fslot = _filter_arrays(filt)
    thr = float(thr)
    use_term = bool(use_term)
    kind = int(kind)
    per_query = fbits.shape[1] != 0

    def run(lo, hi, offs, counts, buf_k, buf_i):
        driver(arena, ids, starts, sizes, probes[lo:hi], base[lo:hi], q[lo:hi],
               codebooks_t, kind, term, use_term, thr, fbits, fcount,
               fslot[lo:hi] if per_query else fslot, offs, counts, buf_k, buf_i)
    return _one_pass(run, _bounds(sizes, probes, fbits, fcount, fslot))


def range_adc(codes, ids, starts, sizes, probes, base, q, codebooks_t, kind, term,
              use_term, thr, filt=None):
    """``range_flat`` for 8-bit PQ codes (cap, m) uint8 with float tables: ``base``
    (nq, nprobe), ``kind``, ``term``, ``use_term`` as ``IVFPQ._table_spec`` gives them,
    ``codebooks_t`` (m, dsub, 256). Keys are the ADC keys of ``search``."""
    return _range_pq(adc_pass, codes, ids, starts, sizes, probes, base, q, codebooks_t,
                     kind, term, use_term, thr, filt)


def range_nibbles(packed, ids, starts, sizes, probes, base, q, codebooks_t, kind, term,
                  use_term, thr, filt=None):
    """``range_adc`` for 4-bit codes in the blocked nibble arena (nblocks, ceil(m/2), 32),
    with float tables (m, 16), not the quantized uint8 fast-scan tables."""
    return _range_pq(nibble_pass, packed, ids, starts, sizes, probes, base, q,
                     codebooks_t, kind, term, use_term, thr, filt)
