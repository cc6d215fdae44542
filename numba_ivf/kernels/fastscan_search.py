"""IVF-PQ search with 4-bit codes: quantized tables, SIMD block sums, filtered heap.

Storage: a "blocked nibble" arena ``packed`` of shape (capacity / 32, ceil(m/2), 32)
(``fastscan`` layout); list l owns the whole blocks ``starts[l] // 32 ...`` (starts are
multiples of 32), its first ``sizes[l]`` vectors are live, the rest of its last block is
padding whose lanes are masked off here. ``ids`` is the row arena beside it (row r is
vector ``r % 32`` of block ``r // 32``).

Per (query, probed list):

1. float table ``lut`` (m, 16), "smaller is better": ``qlut[q] + term[l]`` for L2 by
   residual, else ``qlut[q]`` itself (then the quantized table is shared by every list
   of the query and built once);
2. ``quantize_lut_into`` -> uint8 table, ``bias``, ``scale``;
3. the k-th best key so far, minus the pair's ``base``, goes to the uint16 domain with
   ``lut_threshold`` (conservative: no vector whose dequantized key could enter the heap
   is dropped); ``accumulate_block_below`` returns the lanes under it from the SIMD
   registers; only those lanes are dequantized,
   ``key = float32(base + (bias + sum / scale))``, and offered to the heap; the threshold
   is tightened after every block that changed the heap.

The dequantized keys are what is returned (or re-ranked exactly by the caller).

Backend: ``backend`` is the ``fastscan.Backend`` token; it is an argument of every
cached kernel here so that the backend is part of their signatures (see the cache-safety
note in ``fastscan``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import FASTMATH
from .fastscan import accumulate_block_below, lut_threshold, quantize_lut_into
from .topk import heap_init, heap_push, heap_sort, merge_one

__all__ = ["fastscan_batch", "fastscan_serial", "fastscan_single", "dequantize"]

_FM = set(FASTMATH)


@njit(cache=True)
def dequantize(base, bias, scale, s):
    """The float32 key of a uint16 LUT sum ``s`` (one formula for kernels and oracle)."""
    return np.float32(np.float64(base) + (bias + np.float64(s) / scale))


@njit(cache=True, fastmath=_FM)
def scan_list_blocks(packed, ids, start, n, lut_u8, bias, scale, base, m, hd, hi_,
                     acc, backend):
    """Offer the ``n`` vectors of the list starting at row ``start`` to the heap.

    The serial worker; ``acc`` is a uint16 scratch of 32 entries.
    """
    b0 = start >> 5
    nb = (n + 31) >> 5
    thr = lut_threshold(np.float64(hd[0]) - base, bias, scale, m)
    for bb in range(nb):
        mask = accumulate_block_below(packed, b0 + bb, lut_u8, thr, acc, backend)
        rem = n - 32 * bb
        if rem < 32:
            mask &= np.uint32((np.uint64(1) << np.uint64(rem)) - np.uint64(1))
        if mask == 0:
            continue
        row0 = start + 32 * bb
        changed = False
        v = 0
        while mask != 0:
            if mask & np.uint32(1):
                key = dequantize(base, bias, scale, acc[v])
                if key <= hd[0]:
                    heap_push(hd, hi_, key, ids[row0 + v])
                    changed = True
            mask >>= np.uint32(1)
            v += 1
        if changed:
            thr = lut_threshold(np.float64(hd[0]) - base, bias, scale, m)


@njit(cache=True, fastmath=_FM)
def _pair_table(qlut, term, lst, lut_f, lut_u8):
    """lut_f = qlut + term[lst], quantized into lut_u8; returns (bias, scale)."""
    m = qlut.shape[0]
    for j in range(m):
        for c in range(16):
            lut_f[j, c] = qlut[j, c] + term[lst, j, c]
    return quantize_lut_into(lut_f, lut_u8)


@njit(cache=True, parallel=True, fastmath=_FM)
def fastscan_batch(packed, ids, starts, sizes, probes, base, qluts, term, use_term,
                   out_d, out_i, backend):
    """Top-k keys of every query over its probed lists; prange over queries.

    packed (cap/32, ceil(m/2), 32) uint8; ids (cap,) int64; starts (multiples of 32) and
    sizes (nlist,) int64; probes (nq, nprobe) int64 (-1 = skip); base (nq, nprobe)
    float32; qluts (nq, m, 16) float32; term (nlist, m, 16) float32 (used iff use_term);
    out_d (nq, k) float32 keys ascending, out_i (nq, k) int64 (ID_SENTINEL padding).
    """
    nq, nprobe = probes.shape
    m = qluts.shape[1]
    m2 = (m + 1) // 2
    for qi in prange(nq):
        lut_f = np.empty((m, 16), dtype=np.float32)
        lut_u8 = np.empty((2 * m2, 16), dtype=np.uint8)
        acc = np.empty(32, dtype=np.uint16)
        hd = out_d[qi]
        hi_ = out_i[qi]
        heap_init(hd, hi_)
        bias, scale = 0.0, 1.0
        if not use_term:
            bias, scale = quantize_lut_into(qluts[qi], lut_u8)
        for p in range(nprobe):
            lst = probes[qi, p]
            if lst < 0 or sizes[lst] == 0:
                continue
            if use_term:
                bias, scale = _pair_table(qluts[qi], term, lst, lut_f, lut_u8)
            scan_list_blocks(packed, ids, starts[lst], sizes[lst], lut_u8, bias, scale,
                             base[qi, p], m, hd, hi_, acc, backend)
        heap_sort(hd, hi_)


@njit(cache=True, parallel=True, fastmath=_FM)
def fastscan_single(packed, ids, starts, sizes, probes, base, qluts, term, use_term,
                    out_d, out_i, backend):
    """``fastscan_batch`` for few queries: each query prange's over its probed lists.

    Probe p owns row p of the partial top-k and table buffers; partials are merged.
    """
    nq, nprobe = probes.shape
    m = qluts.shape[1]
    m2 = (m + 1) // 2
    k = out_d.shape[1]
    part_d = np.empty((nprobe, k), dtype=np.float32)
    part_i = np.empty((nprobe, k), dtype=np.int64)
    lut_f = np.empty((nprobe, m, 16), dtype=np.float32)
    lut_u8 = np.empty((nprobe, 2 * m2, 16), dtype=np.uint8)
    acc = np.empty((nprobe, 32), dtype=np.uint16)
    shared_u8 = np.empty((2 * m2, 16), dtype=np.uint8)
    for qi in range(nq):
        sbias, sscale = 0.0, 1.0
        if not use_term:
            sbias, sscale = quantize_lut_into(qluts[qi], shared_u8)
        for p in prange(nprobe):
            heap_init(part_d[p], part_i[p])
            lst = probes[qi, p]
            if lst < 0 or sizes[lst] == 0:
                continue
            if use_term:
                bias, scale = _pair_table(qluts[qi], term, lst, lut_f[p], lut_u8[p])
                scan_list_blocks(packed, ids, starts[lst], sizes[lst], lut_u8[p], bias,
                                 scale, base[qi, p], m, part_d[p], part_i[p], acc[p],
                                 backend)
            else:
                scan_list_blocks(packed, ids, starts[lst], sizes[lst], shared_u8, sbias,
                                 sscale, base[qi, p], m, part_d[p], part_i[p], acc[p],
                                 backend)
        merge_one(part_d, part_i, out_d[qi], out_i[qi])


@njit(cache=True, fastmath=_FM)
def fastscan_serial(packed, ids, starts, sizes, probes, base, qluts, term, use_term,
                    out_d, out_i, backend):
    """``fastscan_batch`` on the calling thread (few queries over short lists)."""
    nq, nprobe = probes.shape
    m = qluts.shape[1]
    m2 = (m + 1) // 2
    lut_f = np.empty((m, 16), dtype=np.float32)
    lut_u8 = np.empty((2 * m2, 16), dtype=np.uint8)
    acc = np.empty(32, dtype=np.uint16)
    for qi in range(nq):
        hd = out_d[qi]
        hi_ = out_i[qi]
        heap_init(hd, hi_)
        bias, scale = 0.0, 1.0
        if not use_term:
            bias, scale = quantize_lut_into(qluts[qi], lut_u8)
        for p in range(nprobe):
            lst = probes[qi, p]
            if lst < 0 or sizes[lst] == 0:
                continue
            if use_term:
                bias, scale = _pair_table(qluts[qi], term, lst, lut_f, lut_u8)
            scan_list_blocks(packed, ids, starts[lst], sizes[lst], lut_u8, bias, scale,
                             base[qi, p], m, hd, hi_, acc, backend)
        heap_sort(hd, hi_)
