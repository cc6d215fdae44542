"""Brute-force k-nearest-neighbour oracle: plain loops, float64, exact tie order."""

import math

import numpy as np


def brute_force(x, ids, q, k, metric):
    """Exact top-k of each query over all rows of ``x``.

    Returns (D float64 (nq, k), I int64 (nq, k)) with FAISS conventions: "l2" squared
    distances ascending (inf padding), "ip"/"cosine" scores descending (-inf padding),
    ids -1 where fewer than k rows exist, ties by ascending id. For "cosine" the rows
    and queries are normalised here (zero vectors stay zero).
    """
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    ids = [int(i) for i in ids]

    def unit(v):
        norm = math.sqrt(sum(float(a) * float(a) for a in v))
        return [float(a) / norm if norm > 0 else 0.0 for a in v]

    rows = [unit(r) if metric == "cosine" else [float(a) for a in r] for r in x]
    D = np.empty((len(q), k))
    I = np.full((len(q), k), -1, dtype=np.int64)
    for qi, qrow in enumerate(q):
        qv = unit(qrow) if metric == "cosine" else [float(a) for a in qrow]
        scored = []
        for row, id_ in zip(rows, ids):
            if metric == "l2":
                key = sum((a - b) ** 2 for a, b in zip(qv, row))
            else:
                key = -sum(a * b for a, b in zip(qv, row))  # minimise the negated score
            scored.append((key, id_))
        scored.sort()
        for j in range(k):
            if j < len(scored):
                key, id_ = scored[j]
                D[qi, j] = key if metric == "l2" else -key
                I[qi, j] = id_
            else:
                D[qi, j] = math.inf if metric == "l2" else -math.inf
    return D, I


def smallest(scores, p, sentinel):
    """The p smallest non-NaN keys of ``scores`` (1-D), by (key, index), as (keys
    float64, indices int64), padded with (inf, sentinel): the coarse step's list
    selection."""
    live = [(float(v), j) for j, v in enumerate(scores) if not math.isnan(float(v))]
    live.sort()
    live = live[:p] + [(math.inf, sentinel)] * (p - min(p, len(live)))
    return (np.array([v for v, _ in live]), np.array([j for _, j in live], dtype=np.int64))
