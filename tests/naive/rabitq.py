"""RaBitQ oracles: plain numpy, float64 (Gao & Long, SIGMOD 2024; extended bits, 2025).

- ``encode``: sign bits, the multi-bit magnitudes by the scale search over clip levels,
  the bit planes and the factors [||r||^2, F1, FB, E1] (see kernels/rabitq/rabitq_encode);
- ``estimates``: the B-bit estimate of every stored row's key for every query (the
  row's own list), straight from the definition
  key = l2 ||r||^2 + base - FB <x_q, q'>, x_q = c - (2^B - 1)/2;
- ``search``: the exhaustive (ungated) top-k of those estimates over given probes.
"""

import math

import numpy as np

from numba_ivf._config import RABITQ_SCALE_STEPS


def encode_row(r, bits, steps=RABITQ_SCALE_STEPS, ip=False):
    """(codes (D/4,), planes ((bits-1) D/8,), fac (4,) float32) of one rotated residual."""
    r = np.asarray(r, dtype=np.float32)
    D = r.shape[0]
    b = (r >= 0).astype(np.int64)
    codes = (b.reshape(D // 4, 4) << np.arange(4)).sum(axis=1).astype(np.uint8)
    planes = np.zeros(max(0, (bits - 1) * D // 8), dtype=np.uint8)
    r64 = r.astype(np.float64)
    norm2 = float(np.sum(r64 * r64))
    if norm2 == 0.0:
        return codes, planes, np.zeros(4, dtype=np.float32)
    norm = math.sqrt(norm2)
    o = np.abs(r64) / norm
    sum_abs = o.sum()
    f1 = 4.0 * norm / sum_abs
    a1 = sum_abs / math.sqrt(D)
    e1 = 2.0 * norm * math.sqrt(max(1.0 - a1 * a1, 0.0) / (a1 * a1)) / math.sqrt(D - 1)
    fb = f1
    if bits > 1:
        K = 1 << (bits - 1)
        best, best_u, best_dot = -1.0, None, None
        for s in range(1, steps + 1):
            t = K / (o.max() * s / steps)
            u = np.minimum(np.floor(t * o), K - 1).astype(np.int64)
            y = u + 0.5
            dot = float(np.sum(y * o))
            cos = dot / math.sqrt(float(np.sum(y * y)))
            if cos > best:
                best, best_u, best_dot = cos, u, dot
        fb = 2.0 * norm / best_dot
        e = np.where(r >= 0, best_u, K - 1 - best_u)
        bitsj = ((e[None, :] >> np.arange(bits - 1)[:, None]) & 1).astype(np.uint8)
        planes = np.packbits(bitsj, axis=1, bitorder="little").reshape(-1)
    h = 0.5 if ip else 1.0
    return codes, planes, np.array([norm2, h * f1, h * fb, h * e1], dtype=np.float32)


def encode(r, bits, steps=RABITQ_SCALE_STEPS, ip=False):
    rows = [encode_row(x, bits, steps, ip) for x in np.asarray(r)]
    D = np.asarray(r).shape[1]
    codes = np.array([c for c, _, _ in rows], dtype=np.uint8).reshape(-1, D // 4)
    planes = np.array([p for _, p, _ in rows], dtype=np.uint8).reshape(
        len(rows), max(0, (bits - 1) * D // 8))
    fac = np.array([f for _, _, f in rows], dtype=np.float32).reshape(-1, 4)
    return codes, planes, fac


def code_values(codes, planes, bits):
    """The integer codes c (n, D) in 0 .. 2^bits - 1 from sign nibbles and planes."""
    n, M = codes.shape
    D = 4 * M
    b = ((codes[:, :, None].astype(np.int64) >> np.arange(4)) & 1).reshape(n, D)
    c = b * (1 << (bits - 1))
    if bits > 1:
        e = np.unpackbits(planes, axis=1, bitorder="little").reshape(n, bits - 1, D)
        c = c + (e.astype(np.int64) << np.arange(bits - 1)[None, :, None]).sum(axis=1)
    return c


def stored(index):
    """Everything stored, in arena-independent form: ids (n,), lists (n,), codes,
    planes, fac and the integer codes c (n, D)."""
    L = index._lists
    D = index.padded_dim
    ids, lists, codes, planes, fac = [], [], [], [], []
    for lst in range(index.nlist):
        for o in range(int(L.sizes[lst])):
            row = int(L.starts[lst]) + o
            ids.append(int(L.ids[row]))
            lists.append(lst)
            codes.append(L.codes_of_row("codes", row, D // 4))
            planes.append(L.payload["ex"][row] if index.bits > 1 else
                          np.zeros(0, np.uint8))
            fac.append(L.payload["fac"][row])
    codes = np.array(codes, dtype=np.uint8).reshape(-1, D // 4)
    planes = np.array(planes, dtype=np.uint8).reshape(len(ids), -1)
    return dict(ids=np.array(ids, dtype=np.int64), lists=np.array(lists, dtype=np.int64),
                codes=codes, planes=planes, fac=np.array(fac, np.float32).reshape(-1, 4),
                c=code_values(codes, planes, index.bits))


def _prepared_queries(index, q):
    q = np.asarray(q, dtype=np.float32)
    if index.metric == "cosine":
        q = (q / np.maximum(np.linalg.norm(q.astype(np.float64), axis=1,
                                           keepdims=True), 1e-30)).astype(np.float32)
    return q


def estimates(index, q):
    """(keys (nq, n) float64, st): the estimate of every stored row for every query."""
    st = stored(index)
    q = _prepared_queries(index, q)
    qr32 = index._rotate(q)
    qrot = qr32.astype(np.float64)
    crot = index._crot.astype(np.float32)
    cent = index.centroids.astype(np.float64)
    l2 = index.metric == "l2"
    B = index.bits
    xq = st["c"] - ((1 << B) - 1) / 2.0
    keys = np.empty((q.shape[0], st["ids"].size))
    for j in range(st["ids"].size):
        lst = st["lists"][j]
        f = st["fac"][j].astype(np.float64)
        if l2:
            qp = (qr32 - crot[lst]).astype(np.float64)   # q' in float32, as the kernel
            base = np.sum(qp * qp, axis=1)
        else:
            qp = qrot
            base = -(q.astype(np.float64) @ cent[lst])
        keys[:, j] = (f[0] if l2 else 0.0) + base - f[2] * (qp @ xq[j])
    return keys, st




def search(index, q, k, probes):
    """Ungated top-k (key, id) per query over its probed lists (probes (nq, p), -1 =
    none); ties by id; FAISS-convention D, I."""
    keys, st = estimates(index, q)
    D = np.full((keys.shape[0], k), np.inf)
    I = np.full((keys.shape[0], k), -1, dtype=np.int64)
    for qi in range(keys.shape[0]):
        sel = np.flatnonzero(np.isin(st["lists"], probes[qi][probes[qi] >= 0]))
        cand = sorted(zip(keys[qi, sel].astype(np.float32).tolist(),
                          st["ids"][sel].tolist()))[:k]
        for j, (kk, ii) in enumerate(cand):
            D[qi, j], I[qi, j] = kk, ii
    if index.metric != "l2":
        D = -D
    return D, I
