"""RaBitQ encoding of rotated residuals: sign nibbles, extra-bit planes, factors.

Row r (D,) of a rotated residual, o = r / ||r||, B bits per dimension, K = 2**(B-1):

- sign bits b_i = [o_i >= 0], four dimensions per 4-bit code: code g = sum_t
  b_{4g+t} << t (stored in the fast-scan nibble layout by the lists);
- B >= 2: magnitudes u_i = min(floor(t |o_i|), K - 1) for the scale t = K / (f max|o|)
  whose clip level f in {1/S, ..., S/S} (S = RABITQ_SCALE_STEPS) maximises the cosine
  sum(y |o|) / ||y|| with y = u + 1/2 (first maximum); the code is c_i = b_i K + e_i
  with e_i = u_i if b_i else K - 1 - u_i, so that x_i = c_i - (2K - 1)/2 = sign(o_i) y_i.
  The B - 1 low bits e_i are stored as bit planes j = 0 .. B-2, plane j as D/4 nibbles
  (byte h of a plane: dimensions 8h .. 8h+3 low, 8h+4 .. 8h+7 high);
- factors (float32) [||r||^2, F1, FB, E1], with a = sum|o| / sqrt(D):
  F1 = 4 ||r|| / sum|o|, FB = 2 ||r|| / sum(y |o|) (FB = F1 when B = 1),
  E1 = 2 ||r|| sqrt((1 - a^2) / a^2) / sqrt(D - 1); halved for inner product.

The scan's estimate of the key (squared distance, or negated inner product) is then
``l2 ||r||^2 + base - FB (<c, q'> - (2^B - 1)/2 sum q')`` and its error is below
``epsilon ||q'|| E1`` with high probability (``rabitq_scan``). A zero residual gets
zero factors (its key is base exactly). Float64 throughout; ``tests/naive/rabitq.py``
is the oracle.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["encode_rows", "encode_one"]

_FM = {"reassoc", "contract", "nsz", "arcp"}


@njit(nogil=True, cache=True, fastmath=_FM)
def _fit_at(o, t, top):
    """(sum y |o|, sum y^2) for y = min(floor(t |o|), top) + 1/2: float arithmetic
    only, so the loop vectorises (with int conversions it ran 6x slower)."""
    dot = 0.0
    yy = 0.0
    for i in range(o.shape[0]):
        y = min(np.floor(t * o[i]), top) + 0.5
        dot += y * o[i]
        yy += y * y
    return dot, yy


@njit(nogil=True, cache=True)
def encode_one(r, bits, steps, ip, codes, ex, fac, o, ubest):
    """Encode one row r (D,) float32 into codes (D/4,), ex ((B-1) D/8,), fac (4,);
    o (D,) float64 and ubest (D,) int64 are scratch."""
    D = r.shape[0]
    norm2 = 0.0
    for i in range(D):
        v = np.float64(r[i])
        norm2 += v * v
    for g in range(D // 4):
        c = 0
        for t in range(4):
            if r[4 * g + t] >= 0:
                c |= 1 << t
        codes[g] = c
    for h in range(ex.shape[0]):
        ex[h] = 0
    if norm2 == 0.0:
        for j in range(4):
            fac[j] = 0.0
        return
    norm = math.sqrt(norm2)
    sum_abs = 0.0
    max_abs = 0.0
    for i in range(D):
        a = abs(np.float64(r[i])) / norm
        o[i] = a
        sum_abs += a
        max_abs = max(max_abs, a)
    half = 0.5 if ip else 1.0
    f1 = 4.0 * norm / sum_abs
    a1 = sum_abs / math.sqrt(D)
    e1 = 2.0 * norm * math.sqrt(max(1.0 - a1 * a1, 0.0) / (a1 * a1)) / math.sqrt(D - 1)
    fb = f1
    if bits > 1:
        K = 1 << (bits - 1)
        best = -1.0
        best_dot = 1.0
        best_t = 0.0
        for s in range(1, steps + 1):
            t = K / (max_abs * s / steps)
            dot, yy = _fit_at(o, t, K - 1.0)
            cos = dot / math.sqrt(yy)
            if cos > best:
                best = cos
                best_dot = dot
                best_t = t
        for i in range(D):
            ubest[i] = min(int(math.floor(best_t * o[i])), K - 1)
        fb = 2.0 * norm / best_dot
        P = D // 8                     # bytes per plane
        for i in range(D):
            e = ubest[i] if r[i] >= 0 else K - 1 - ubest[i]
            h = i >> 3
            sh = (i & 7)               # dims 8h..8h+3 -> low nibble bits 0..3, then high
            for j in range(bits - 1):
                if (e >> j) & 1:
                    ex[j * P + h] |= np.uint8(1 << sh)
    fac[0] = np.float32(norm2)
    fac[1] = np.float32(half * f1)
    fac[2] = np.float32(half * fb)
    fac[3] = np.float32(half * e1)


@njit(nogil=True, cache=True, parallel=True)
def encode_rows(r, bits, steps, ip, codes, ex, fac):
    """encode_one for every row of r (n, D) float32 (prange over chunks of rows)."""
    n, D = r.shape
    nchunk = max(1, min(n, 64))
    step = (n + nchunk - 1) // nchunk
    for c in prange(nchunk):
        o = np.empty(D, dtype=np.float64)
        ub = np.zeros(D, dtype=np.int64)
        for i in range(c * step, min(n, (c + 1) * step)):
            encode_one(r[i], bits, steps, ip, codes[i], ex[i], fac[i], o, ub)


@njit(nogil=True, cache=True, fastmath=_FM)
def rotate_rows(x, P, out):
    """out[i, :] = x[i, :d] @ P[:d] for few rows (x (n, d) float32 with d <= D, the
    padding columns of x being zero; P (D, D), out (n, D) float32), on the calling
    thread: numpy's BLAS call for one row cost 1-10 ms here when its threads had to
    wake up beside Numba's (this kernel: ~0.14 ms per row at D = 784, streaming P)."""
    n, d = x.shape
    D = P.shape[1]
    for i in range(n):
        acc = np.zeros(D, dtype=np.float32)
        for k in range(d):
            v = x[i, k]
            for j in range(D):
                acc[j] += v * P[k, j]
        for j in range(D):
            out[i, j] = acc[j]


# -- structured rotation -------------------------------------------------------------
# R rounds of: a random permutation with random signs, then orthonormal Walsh-Hadamard
# transforms on consecutive blocks whose sizes are the powers of two of D's binary
# expansion (784 = 512 + 256 + 16). Each round is orthogonal, so is their product; the
# permutations carry every coordinate across blocks. O(R D log D) per row instead of
# D^2 (and no D x D matrix to stream through the cache for every query).

def fht_blocks(D: int) -> np.ndarray:
    """(nb, 2) int64 [start, size] of the power-of-two blocks covering D, largest
    first."""
    out, start = [], 0
    for b in range(D.bit_length() - 1, -1, -1):
        if D >> b & 1:
            out.append((start, 1 << b))
            start += 1 << b
    return np.array(out, dtype=np.int64).reshape(-1, 2)


@njit(nogil=True, cache=True, fastmath=_FM)
def _fht_row(x, perms, signs, blocks, buf, tmp, out):
    """out (D,) = the structured rotation of x (d,) (d <= D, zero-padded)."""
    D = buf.shape[0]
    d = x.shape[0]
    for j in range(D):
        buf[j] = x[j] if j < d else 0.0
    for r in range(perms.shape[0]):
        for j in range(D):
            tmp[j] = buf[perms[r, j]] * signs[r, j]
        for bi in range(blocks.shape[0]):
            s0 = blocks[bi, 0]
            n = blocks[bi, 1]
            h = 1
            while h < n:
                for a in range(s0, s0 + n, 2 * h):
                    for j in range(a, a + h):
                        u = tmp[j]
                        v = tmp[j + h]
                        tmp[j] = u + v
                        tmp[j + h] = u - v
                h *= 2
            c = np.float32(1.0 / np.sqrt(n))
            for j in range(s0, s0 + n):
                tmp[j] *= c
        for j in range(D):
            buf[j] = tmp[j]
    for j in range(D):
        out[j] = buf[j]


@njit(nogil=True, cache=True)
def fht_rotate_serial(x, perms, signs, blocks, out):
    """Rows of x (n, d) float32 through the structured rotation into out (n, D)."""
    D = out.shape[1]
    buf = np.empty(D, dtype=np.float32)
    tmp = np.empty(D, dtype=np.float32)
    for i in range(x.shape[0]):
        _fht_row(x[i], perms, signs, blocks, buf, tmp, out[i])


@njit(nogil=True, cache=True, parallel=True)
def fht_rotate_batch(x, perms, signs, blocks, out):
    """``fht_rotate_serial``, prange over chunks of rows."""
    n = x.shape[0]
    D = out.shape[1]
    nchunk = max(1, min(n, 64))
    step = (n + nchunk - 1) // nchunk
    for c in prange(nchunk):
        buf = np.empty(D, dtype=np.float32)
        tmp = np.empty(D, dtype=np.float32)
        for i in range(c * step, min(n, (c + 1) * step)):
            _fht_row(x[i], perms, signs, blocks, buf, tmp, out[i])
