"""Plain-loop oracles for numba_ivf.kernels.fastscan.fastscan (obviously correct, not fast)."""

import math

import numpy as np

ACC_MAX = 65535


def byte_of_vector(k):
    """Byte position of in-block vector k (0..31): vectors 0..15 even bytes, 16..31 odd."""
    return 2 * k if k < 16 else 2 * (k - 16) + 1


def pack_codes(codes):
    n, m = codes.shape
    m2 = (m + 1) // 2
    nblocks = (n + 31) // 32
    packed = np.zeros((nblocks, m2, 32), dtype=np.uint8)
    for v in range(n):
        b, k = divmod(v, 32)
        p = byte_of_vector(k)
        for s in range(m):
            code = int(codes[v, s])
            if s % 2 == 0:
                packed[b, s // 2, p] |= code
            else:
                packed[b, s // 2, p] |= code << 4
    return packed


def lut_sums_u16(codes, lut_u8):
    """sum_j lut_u8[j, codes[v, j]] modulo 2**16 for every vector v (Python ints)."""
    n, m = codes.shape
    out = np.zeros(n, dtype=np.uint16)
    for v in range(n):
        total = 0
        for j in range(m):
            total += int(lut_u8[j, int(codes[v, j])])
        out[v] = total % 65536
    return out


def pq_distances(codes, lut):
    """Float64 sum_j lut[j, codes[v, j]]."""
    n, m = codes.shape
    out = np.zeros(n, dtype=np.float64)
    for v in range(n):
        total = 0.0
        for j in range(m):
            total += float(lut[j, int(codes[v, j])])
        out[v] = total
    return out


def quantize_lut(lut):
    """Reference quantization: per-row min, one scale, round half up; returns
    (lut_u8 (2*ceil(M/2), 16), bias, scale)."""
    m = lut.shape[0]
    mins = [min(float(x) for x in lut[j]) for j in range(m)]
    spans = [max(float(x) for x in lut[j]) - mins[j] for j in range(m)]
    total = 0.0
    for r in spans:
        total += r
    if total > 0.0:
        scale = min(255.0 / max(spans), (ACC_MAX - 0.5 * m) / total)
    else:
        scale = 1.0
    out = np.zeros((2 * ((m + 1) // 2), 16), dtype=np.uint8)
    for j in range(m):
        for k in range(16):
            out[j, k] = int(math.floor((float(lut[j, k]) - mins[j]) * scale + 0.5))
    bias = 0.0
    for x in mins:
        bias += x
    return out, bias, scale
