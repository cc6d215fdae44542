"""IVF-RaBitQ scan: 1-bit screening by fast-scan, extra bits only where they can matter.

Per (query, probed list), with q' the rotated query minus the rotated centroid (L2) or
the rotated query itself (inner product), S = sum q' and base = ||q'||^2 (L2) or
-<q, c_l> (inner product):

1. float table T (D/4, 16) float32: T[g, n] = sum of q'[4g + t] over the bits t of n,
   built incrementally (T[g, n] = T[g, n & (n - 1)] + q'[4g + lowest bit of n]); for
   inner product once per query;
2. T quantized to uint8 (``fastscan.quantize_lut_into``: bias, scale); the SIMD block
   kernel sums the sign nibbles of 32 vectors at once (``block_sums_below``), so
   <b, q'> ~ bias + s / scale within delta = (D/4) RABITQ_LUT_SLACK / scale;
3. screening, per allowed lane, with the vector's factors [||r||^2, F1, FB, E1]:
   lower bound = l2 ||r||^2 + base - F1 (bias + s / scale + delta - S/2) - eps ||q'|| E1.
   The 1-bit estimate's error is below eps ||q'|| E1 with high probability (Gao & Long
   2024, eps = RABITQ_EPSILON), so a lane whose bound is above the current k-th key
   would very probably not enter the top-k and is not read further;
4. the others get the B-bit estimate from the float table (sign nibbles and the B-1
   extra-bit planes, each plane D/4 nibbles, summed in float64):
   key = l2 ||r||^2 + base - FB (K <b, q'> + sum_j 2^j <plane_j, q'> - (2^B - 1)/2 S),
   offered to a max-heap of k (key, id, arena row).

With eps = inf (``gate=False``) every allowed lane is estimated: the keys are then the
oracle's (``tests/naive/rabitq.py``) for every row, and gated search differs only where
the bound is missed. Filters (``_bits``): lists without an allowed row are skipped, a
block's bitmap word joins its lane mask. The returned keys are estimates (the caller
may re-rank them exactly).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..filtering._bits import MODE_SKIP, block_lanes, is_filtered, row_list_mode
from ..fastscan.fastscan import block_sums_below, check_block_operands, quantize_lut_into
from ..scan._rowkeys import lowest_bit
from ..common.topk import ID_SENTINEL, _sift3, _worse, res_finish

__all__ = ["build_table", "rabitq_batch", "rabitq_serial", "scan_list"]


@njit(nogil=True, cache=True)
def build_table(qp, T):
    """T[g, n] (float32) = sum of qp[4g + t] over the set bits t of n; returns
    (S, ||qp||^2) in float64."""
    M = T.shape[0]
    s = 0.0
    nn = 0.0
    for g in range(M):
        T[g, 0] = 0.0
        for n in range(1, 16):
            t = 0 if n & 1 else (1 if n & 2 else (2 if n & 4 else 3))
            T[g, n] = T[g, n & (n - 1)] + qp[4 * g + t]
        for t in range(4):
            v = np.float64(qp[4 * g + t])
            s += v
            nn += v * v
    return s, nn


@njit(nogil=True, cache=True, inline="always")
def _push(hd, hi, hr, d, i, r):
    if not _worse(hd[0], hi[0], d, i):
        return
    hd[0] = d
    hi[0] = i
    hr[0] = r
    _sift3(hd, hi, hr, 0, hd.shape[0])


@njit(nogil=True, cache=True)
def _plane_dot(T, codes_row, off, nbytes):
    """sum_h T[2h, lo(byte)] + T[2h+1, hi(byte)] over bytes off .. off+nbytes."""
    acc = 0.0
    for h in range(nbytes):
        byte = codes_row[off + h]
        acc += np.float64(T[2 * h, byte & 15]) + np.float64(T[2 * h + 1, byte >> 4])
    return acc


@njit(nogil=True, cache=True)
def scan_list(packed, ex, fac, ids, start, n, fb, T, lut_u8, acc, S, qnorm, base, l2,
              bits, gate, eps, hd, hi, hr, backend):
    """Offer the n vectors of the list at arena row ``start`` to the heap (hd, hi, hr);
    T the query's float table for this list, lut_u8 its quantized copy (scratch,
    overwritten), acc (32,) uint16 scratch; fb the query's filter row or None."""
    if n == 0:
        return
    M = T.shape[0]
    P = M // 2
    bias, scale = quantize_lut_into(T, lut_u8)
    check_block_operands(packed, lut_u8, acc)
    end = start + n
    b0 = start >> 5
    b1 = (end - 1) >> 5
    if b0 < 0 or b1 >= packed.shape[0] or end > fac.shape[0]:
        raise IndexError("list rows out of the packed arena")
    K = 1 << (bits - 1)
    cB = 0.5 * ((1 << bits) - 1)
    half_s = 0.5 * S
    delta = M * 0.5005 / scale
    slack = eps * qnorm if gate else 0.0
    fl2 = 1.0 if l2 else 0.0
    for b in range(b0, b1 + 1):
        allow = block_lanes(fb, b)
        if allow == 0:
            continue
        row0 = 32 * b
        mask = allow
        if row0 < start:
            mask &= ~((np.uint64(1) << np.uint64(start - row0)) - np.uint64(1))
        if end - row0 < 32:
            mask &= (np.uint64(1) << np.uint64(end - row0)) - np.uint64(1)
        if mask == 0:
            continue
        block_sums_below(packed, b, lut_u8, acc, np.uint16(65535), backend)
        while mask != 0:
            v = lowest_bit(mask)
            mask &= mask - np.uint64(1)
            row = row0 + v
            f0 = np.float64(fac[row, 0])
            f1 = np.float64(fac[row, 1])
            if gate:
                lb = (fl2 * f0 + base
                      - f1 * (bias + np.float64(acc[v]) / scale + delta - half_s)
                      - slack * np.float64(fac[row, 3]))
                if not lb <= hd[0]:
                    continue
            p = 2 * v if v < 16 else 2 * (v - 16) + 1
            ipb = 0.0
            for j in range(P):
                byte = packed[b, j, p]
                ipb += np.float64(T[2 * j, byte & 15]) + np.float64(T[2 * j + 1, byte >> 4])
            ipc = K * ipb
            w = 1.0
            for j in range(bits - 1):
                ipc += w * _plane_dot(T, ex[row], j * P, P)
                w *= 2.0
            key = fl2 * f0 + base - np.float64(fac[row, 2]) * (ipc - cB * S)
            _push(hd, hi, hr, np.float32(key), ids[row], row)


@njit(nogil=True, cache=True)
def _scan_query(packed, ex, fac, ids, starts, sizes, probes_q, scores_q, fb, fc, qrot,
                crot, l2, bits, gate, eps, qp, T, lut_u8, acc, hd, hi, hr, backend):
    """Every probed list of one query into its heap, sorted at the end."""
    D = qrot.shape[0]
    for j in range(hd.shape[0]):
        hd[j] = np.inf
        hi[j] = ID_SENTINEL
        hr[j] = -1
    S = 0.0
    qnorm = 0.0
    if not l2:
        S, nn = build_table(qrot, T)
        qnorm = math.sqrt(nn)
    for p in range(probes_q.shape[0]):
        lst = probes_q[p]
        if lst < 0 or sizes[lst] == 0 or row_list_mode(fc, lst, sizes[lst]) == MODE_SKIP:
            continue
        if l2:
            for t in range(D):
                qp[t] = qrot[t] - crot[lst, t]
            S, nn = build_table(qp, T)
            qnorm = math.sqrt(nn)
            base = nn
        else:
            base = -np.float64(scores_q[p])
        scan_list(packed, ex, fac, ids, starts[lst], sizes[lst], fb, T, lut_u8, acc, S,
                  qnorm, base, l2, bits, gate, eps, hd, hi, hr, backend)
    # Heap sort into ascending (key, id) order, rows along.
    n = hd.shape[0]
    for end in range(n - 1, 0, -1):
        d, i, r = hd[0], hi[0], hr[0]
        hd[0], hi[0], hr[0] = hd[end], hi[end], hr[end]
        hd[end], hi[end], hr[end] = d, i, r
        _sift3(hd, hi, hr, 0, end)


@njit(nogil=True, cache=True)
def _one(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount, fslot, qi,
         qrot, crot, l2, bits, gate, eps, qp, T, lut_u8, acc, out_d, out_i, out_r,
         backend):
    if is_filtered(fbits):
        f = fslot[qi]
        _scan_query(packed, ex, fac, ids, starts, sizes, probes[qi], scores[qi],
                    fbits[f], fcount[f], qrot[qi], crot, l2, bits, gate, eps, qp, T,
                    lut_u8, acc, out_d[qi], out_i[qi], out_r[qi], backend)
    else:
        _scan_query(packed, ex, fac, ids, starts, sizes, probes[qi], scores[qi], None,
                    None, qrot[qi], crot, l2, bits, gate, eps, qp, T, lut_u8, acc,
                    out_d[qi], out_i[qi], out_r[qi], backend)


@njit(nogil=True, cache=True, parallel=True)
def rabitq_batch(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount,
                 fslot, qrot, crot, l2, bits, gate, eps, out_d, out_i, out_r, backend):
    """Top-k RaBitQ estimates of every query over its probed lists; prange over queries.

    packed: sign nibbles in the fast-scan layout (ceil(cap/32), D/8, 32); ex (cap,
    max(1, (B-1) D/8)) uint8 planes; fac (cap, 4) float32; ids (cap,) int64; starts,
    sizes (nlist,) int64; probes (nq, nprobe) int64 (-1 = skip), scores (nq, nprobe)
    float32 coarse scores (inner products, used for "ip"); the filters (``_bits``);
    qrot (nq, D) float32 rotated queries, crot (nlist, D) float32 rotated centroids;
    gate False disables screening (eps = inf). out_d (nq, k) float32 keys ascending,
    out_i ids (ID_SENTINEL padding), out_r arena rows (-1 padding).
    """
    nq = probes.shape[0]
    D = qrot.shape[1]
    M = D // 4
    for qi in prange(nq):
        qp = np.empty(D, dtype=np.float32)
        T = np.empty((M, 16), dtype=np.float32)
        lut_u8 = np.zeros((M + (M & 1), 16), dtype=np.uint8)
        acc = np.empty(32, dtype=np.uint16)
        _one(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount, fslot,
             qi, qrot, crot, l2, bits, gate, eps, qp, T, lut_u8, acc, out_d, out_i,
             out_r, backend)


@njit(nogil=True, cache=True)
def rabitq_serial(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount,
                  fslot, qrot, crot, l2, bits, gate, eps, out_d, out_i, out_r, backend):
    """``rabitq_batch`` on the calling thread (one query or a few)."""
    nq = probes.shape[0]
    D = qrot.shape[1]
    M = D // 4
    qp = np.empty(D, dtype=np.float32)
    T = np.empty((M, 16), dtype=np.float32)
    lut_u8 = np.zeros((M + (M & 1), 16), dtype=np.uint8)
    acc = np.empty(32, dtype=np.uint16)
    for qi in range(nq):
        _one(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount, fslot,
             qi, qrot, crot, l2, bits, gate, eps, qp, T, lut_u8, acc, out_d, out_i,
             out_r, backend)
