"""IVF-RaBitQ scan: 1-bit screening by fast-scan, extra bits only where they can matter.

Per (query, probed list), with q' the rotated query minus the rotated centroid (L2) or
the rotated query itself (inner product), S = sum q' and base = ||q'||^2 (L2) or
-<q, c_l> (inner product):

1. float table T (D/4, 16) float32: T[g, n] = sum of q'[4g + t] over the bits t of n
   (``build_table``); for inner product once per query;
2. T quantized to uint8 (``quantize_table``: bias, scale); the SIMD block
   kernel sums the sign nibbles of 32 vectors at once (``block_sums_below``), so
   <b, q'> ~ bias + s / scale within delta = (D/4) RABITQ_LUT_SLACK / scale;
3. screening, per allowed lane, with the vector's factors [||r||^2, F1, FB, E1]:
   lower bound = l2 ||r||^2 + base - F1 (bias + s / scale + delta - S/2) - eps ||q'|| E1.
   The 1-bit estimate's error is below eps ||q'|| E1 with high probability (Gao & Long
   2024, eps = RABITQ_EPSILON), so a lane whose bound is above the current k-th key
   would very probably not enter the top-k and is not read further;
4. the others get the B-bit estimate, <c, q'> from the float table over the sign bits
   and the B-1 extra-bit planes (``code_dot``):
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

from ..._config import RABITQ_LUT_SLACK
from ..filtering._bits import MODE_SKIP, block_lanes, is_filtered, row_list_mode
from ..fastscan._lutquant import quantize_rows1
from ..fastscan.fastscan import block_sums_below, check_block_operands
from ..fastscan.fastscan_search import list_lanes
from ..scan._rowkeys import lowest_bit
from ..common.topk import ID_SENTINEL, _sift3, _worse

__all__ = ["build_table", "quantize_table", "rabitq_batch", "rabitq_serial", "scan_list"]

_FM = {"reassoc", "contract", "nsz", "arcp"}
# _BIT[t, n] = bit t of n: the table row of a group is sum_t _BIT[t, :] q'[4g + t].
_BIT = np.array([[(n >> t) & 1 for n in range(16)] for t in range(4)], dtype=np.float32)


@njit(nogil=True, cache=True, fastmath=_FM)
def build_table(qp, T, lo):
    """T[g, n] (float32) = sum of qp[4g + t] over the set bits t of n, and lo[g]
    (float32) its row minimum sum_t min(qp[4g + t], 0) in closed form; returns
    (S, ||qp||^2, max_g r_g, sum_g r_g) in float64 with r_g = sum_t |qp[4g + t]| the
    row's span. fastmath: the sums may be reassociated (in order, their dependent
    float64 adds took 1 us of the 1.5 at D = 784); min, max and the table entries
    (four float32 terms, no reduction) are not changed by it."""
    M = T.shape[0]
    s = 0.0
    nn = 0.0
    for i in range(4 * M):
        v = np.float64(qp[i])
        s += v
        nn += v * v
    rmax = 0.0
    rsum = 0.0
    for g in range(M):
        q0 = qp[4 * g]
        q1 = qp[4 * g + 1]
        q2 = qp[4 * g + 2]
        q3 = qp[4 * g + 3]
        # Sixteen independent sums (one vector), not a chain through T[g, n & (n-1)].
        for n in range(16):
            T[g, n] = ((_BIT[0, n] * q0 + _BIT[1, n] * q1) + _BIT[2, n] * q2) + \
                _BIT[3, n] * q3
        lo[g] = min(q0, 0.0) + min(q1, 0.0) + min(q2, 0.0) + min(q3, 0.0)
        span = np.float64(abs(q0)) + abs(q1) + abs(q2) + abs(q3)
        rmax = max(rmax, span)
        rsum += span
    return s, nn, rmax, rsum


@njit(nogil=True, cache=True)
def quantize_table(T, lo, rmax, rsum, lut_u8):
    """T to uint8 in lut_u8 (``_lutquant.quantize_rows1``), with the row minima and
    spans of ``build_table`` instead of a pass over the entries (that pass, in
    ``fastscan.quantize_lut_into``, cost 6.5 us per table at D = 784, four times the
    table). Returns (bias, scale): sum_g T[g, n_g] ~ bias + (sum of entries) / scale
    within M / 2 / scale plus float32 rounding. The scale keeps every entry <= 255
    and every sum of M entries <= 65535 - M / 2 (M rows of rounding slack on top of
    the exact bound), so the uint16 block sums never wrap."""
    M = T.shape[0]
    if not rsum > 0.0:
        scale = 1.0
    else:
        scale = min(255.0 / rmax, (65535.0 - M) / rsum)
    quantize_rows1(T, lo, scale, lut_u8)
    bias = 0.0
    for g in range(M):
        bias += np.float64(lo[g])
    return bias, scale


@njit(nogil=True, cache=True, inline="always")
def _push(hd, hi, hr, d, i, r):
    if not _worse(hd[0], hi[0], d, i):
        return
    hd[0] = d
    hi[0] = i
    hr[0] = r
    _sift3(hd, hi, hr, 0, hd.shape[0])


@njit(nogil=True, cache=True)
def code_dot(packed, b, p, ex, row, T, K, planes):
    """<c, q'> for the vector in lane byte p of block b (arena row ``row``), c_i =
    K b_i + sum_j 2^j e_ij, from the float table T: two lookups per byte of the sign
    bits and of each extra-bit plane (byte h: groups 2h low, 2h+1 high), in float64.
    (One pass over the dimensions with bit extraction, meant to vectorise, ran 4x
    slower at D = 784, 4 bits; fastmath, for independent accumulators, changed
    nothing measurable.)"""
    P = packed.shape[1]
    ipb = 0.0
    for h in range(P):
        byte = packed[b, h, p]
        ipb += np.float64(T[2 * h, byte & 15]) + np.float64(T[2 * h + 1, byte >> 4])
    ipc = K * ipb
    w = 1.0
    for j in range(planes):
        acc = 0.0
        for h in range(P):
            byte = ex[row, j * P + h]
            acc += np.float64(T[2 * h, byte & 15]) + np.float64(T[2 * h + 1, byte >> 4])
        ipc += w * acc
        w *= 2.0
    return ipc


@njit(nogil=True, cache=True)
def scan_list(packed, ex, fac, ids, start, n, fb, qp, T, lut_u8, bias, scale, acc, S,
              qnorm, base, l2, bits, gate, eps, hd, hi, hr, backend):
    """Offer the n vectors of the list at arena row ``start`` to the heap (hd, hi, hr);
    qp the query for this list (q'), lut_u8 its quantized table (bias, scale), acc
    (32,) uint16 scratch; fb the query's filter row or None."""
    if n == 0:
        return
    M = T.shape[0]
    check_block_operands(packed, lut_u8, acc)
    end = start + n
    b0 = start >> 5
    b1 = (end - 1) >> 5
    if b0 < 0 or b1 >= packed.shape[0] or end > fac.shape[0]:
        raise IndexError("list rows out of the packed arena")
    K = 1 << (bits - 1)
    cB = 0.5 * ((1 << bits) - 1)
    half_s = 0.5 * S
    delta = M * RABITQ_LUT_SLACK / scale
    slack = eps * qnorm if gate else 0.0
    fl2 = 1.0 if l2 else 0.0
    for b in range(b0, b1 + 1):
        allow = block_lanes(fb, b)
        if allow == 0:
            continue
        row0 = 32 * b
        mask = list_lanes(allow, row0, start, end)
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
            ipc = code_dot(packed, b, p, ex, row, T, K, bits - 1)
            key = fl2 * f0 + base - np.float64(fac[row, 2]) * (ipc - cB * S)
            _push(hd, hi, hr, np.float32(key), ids[row], row)


@njit(nogil=True, cache=True)
def _scan_query(packed, ex, fac, ids, starts, sizes, probes_q, scores_q, fb, fc, qrot,
                crot, l2, bits, gate, eps, qp, T, lo, lut_u8, acc, hd, hi, hr, backend):
    """Every probed list of one query into its heap, sorted at the end."""
    D = qrot.shape[0]
    for j in range(hd.shape[0]):
        hd[j] = np.inf
        hi[j] = ID_SENTINEL
        hr[j] = -1
    S = 0.0
    qnorm = 0.0
    bias = 0.0
    scale = 1.0
    if not l2:                 # inner product: q' = the rotated query, one table
        for t in range(D):
            qp[t] = qrot[t]
        S, nn, rmax, rsum = build_table(qp, T, lo)
        qnorm = math.sqrt(nn)
        bias, scale = quantize_table(T, lo, rmax, rsum, lut_u8)
    for p in range(probes_q.shape[0]):
        lst = probes_q[p]
        if lst < 0 or sizes[lst] == 0 or row_list_mode(fc, lst, sizes[lst]) == MODE_SKIP:
            continue
        if l2:
            for t in range(D):
                qp[t] = qrot[t] - crot[lst, t]
            S, nn, rmax, rsum = build_table(qp, T, lo)
            qnorm = math.sqrt(nn)
            bias, scale = quantize_table(T, lo, rmax, rsum, lut_u8)
            base = nn
        else:
            base = -np.float64(scores_q[p])
        scan_list(packed, ex, fac, ids, starts[lst], sizes[lst], fb, qp, T, lut_u8, bias,
                  scale, acc, S, qnorm, base, l2, bits, gate, eps, hd, hi, hr, backend)
    # Heap sort into ascending (key, id) order, rows along.
    n = hd.shape[0]
    for end in range(n - 1, 0, -1):
        d, i, r = hd[0], hi[0], hr[0]
        hd[0], hi[0], hr[0] = hd[end], hi[end], hr[end]
        hd[end], hi[end], hr[end] = d, i, r
        _sift3(hd, hi, hr, 0, end)


@njit(nogil=True, cache=True)
def _one(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount, fslot, qi,
         qrot, crot, l2, bits, gate, eps, qp, T, lo, lut_u8, acc, out_d, out_i, out_r,
         backend):
    if is_filtered(fbits):
        f = fslot[qi]
        _scan_query(packed, ex, fac, ids, starts, sizes, probes[qi], scores[qi],
                    fbits[f], fcount[f], qrot[qi], crot, l2, bits, gate, eps, qp, T, lo,
                    lut_u8, acc, out_d[qi], out_i[qi], out_r[qi], backend)
    else:
        _scan_query(packed, ex, fac, ids, starts, sizes, probes[qi], scores[qi], None,
                    None, qrot[qi], crot, l2, bits, gate, eps, qp, T, lo, lut_u8, acc,
                    out_d[qi], out_i[qi], out_r[qi], backend)


@njit(nogil=True, cache=True)
def _scratch(D):
    M = D // 4
    return (np.empty(D, dtype=np.float32), np.empty((M, 16), dtype=np.float32),
            np.empty(M, dtype=np.float32), np.zeros((M, 16), dtype=np.uint8),
            np.empty(32, dtype=np.uint16))


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
    for qi in prange(nq):
        qp, T, lo, lut_u8, acc = _scratch(D)
        _one(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount, fslot,
             qi, qrot, crot, l2, bits, gate, eps, qp, T, lo, lut_u8, acc, out_d, out_i,
             out_r, backend)


@njit(nogil=True, cache=True)
def rabitq_serial(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount,
                  fslot, qrot, crot, l2, bits, gate, eps, out_d, out_i, out_r, backend):
    """``rabitq_batch`` on the calling thread (one query or a few)."""
    nq = probes.shape[0]
    qp, T, lo, lut_u8, acc = _scratch(qrot.shape[1])
    for qi in range(nq):
        _one(packed, ex, fac, ids, starts, sizes, probes, scores, fbits, fcount, fslot,
             qi, qrot, crot, l2, bits, gate, eps, qp, T, lo, lut_u8, acc, out_d, out_i,
             out_r, backend)
