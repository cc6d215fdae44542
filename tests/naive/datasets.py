"""Oracles for numba_ivf.datasets: plain loops, float64, obviously correct."""

import math
import struct

import numpy as np


def ground_truth(base, queries, k, metric):
    """Exact top-k by comparing every pair, ties by ascending id.

    Returns (D float64 (nq, k), I int64 (nq, k)): "l2" squared distances ascending
    (inf, -1 padding when k > n); "ip" inner products and "cosine" cosine similarities
    descending (-inf, -1 padding). Cosine normalises both sides (zero vectors stay 0).
    """
    base = [[float(v) for v in row] for row in np.asarray(base)]
    queries = [[float(v) for v in row] for row in np.asarray(queries)]

    def unit(v):
        norm = math.sqrt(sum(a * a for a in v))
        return [a / norm for a in v] if norm > 0 else list(v)

    if metric == "cosine":
        base = [unit(v) for v in base]
        queries = [unit(v) for v in queries]
    nq = len(queries)
    pad = math.inf if metric == "l2" else -math.inf
    D = np.full((nq, k), pad)
    I = np.full((nq, k), -1, dtype=np.int64)
    for qi, q in enumerate(queries):
        scored = []
        for i, x in enumerate(base):
            if metric == "l2":
                key = sum((a - b) ** 2 for a, b in zip(q, x))
                scored.append((key, i, key))
            else:
                s = sum(a * b for a, b in zip(q, x))
                scored.append((-s, i, s))
        scored.sort()  # by key, then by id
        for j, (_, i, value) in enumerate(scored[:k]):
            D[qi, j] = value
            I[qi, j] = i
    return D, I


def write_vecs_loop(path, rows, fmt):
    """Write records one by one with struct: int32 dim, then values ('f', 'i' or 'B')."""
    with open(path, "wb") as f:
        for row in rows:
            f.write(struct.pack("<i", len(row)))
            f.write(struct.pack(f"<{len(row)}{fmt}", *row))


def read_vecs_loop(path, fmt):
    """Read records one by one with struct; returns a list of lists."""
    size = struct.calcsize(f"<{fmt}")
    rows = []
    with open(path, "rb") as f:
        while True:
            head = f.read(4)
            if not head:
                return rows
            (dim,) = struct.unpack("<i", head)
            rows.append(list(struct.unpack(f"<{dim}{fmt}", f.read(dim * size))))
