"""Oracles for the product quantizer: plain loops, float64."""

import numpy as np


def encode(x, codebooks):
    m, ksub, dsub = codebooks.shape
    x = np.asarray(x, dtype=np.float64)
    cb = codebooks.astype(np.float64)
    codes = np.zeros((x.shape[0], m), dtype=np.int64)
    for i in range(x.shape[0]):
        for j in range(m):
            sub = x[i, j * dsub:(j + 1) * dsub]
            best, arg = np.inf, 0
            for c in range(ksub):
                dist = float(((sub - cb[j, c]) ** 2).sum())
                if dist < best:
                    best, arg = dist, c
            codes[i, j] = arg
    return codes


def decode(codes, codebooks):
    m, _, dsub = codebooks.shape
    out = np.zeros((codes.shape[0], m * dsub))
    for i in range(codes.shape[0]):
        for j in range(m):
            out[i, j * dsub:(j + 1) * dsub] = codebooks[j, codes[i, j]]
    return out


def tables(q, codebooks, metric):
    m, ksub, dsub = codebooks.shape
    out = np.zeros((q.shape[0], m, ksub))
    for i in range(q.shape[0]):
        for j in range(m):
            sub = q[i, j * dsub:(j + 1) * dsub].astype(np.float64)
            for c in range(ksub):
                cv = codebooks[j, c].astype(np.float64)
                out[i, j, c] = ((sub - cv) ** 2).sum() if metric == "l2" else sub @ cv
    return out


def adc(tables_one, codes):
    """Asymmetric distance of one query (its tables (m, ksub)) to code rows (n, m)."""
    return np.array([sum(tables_one[j, c[j]] for j in range(len(c))) for c in codes])
