"""Oracle of the sharded merge (numba_ivf.dask._merge): a per-row lexsort.

The union of per-shard candidates, ordered by (key, id); with exact keys, the best
``width`` by PQ key, then the best k of those by (exact key, id).
"""

import numpy as np

ID_SENTINEL = np.iinfo(np.int64).max


def merge_shards(nq, parts, width, k=None):
    refine = any(p[3] is not None for p in parts)
    ncol = max(1, len(parts)) * width
    keys = np.full((nq, ncol), np.inf, dtype=np.float32)
    ids = np.full((nq, ncol), ID_SENTINEL, dtype=np.int64)
    exact = np.full((nq, ncol), np.inf, dtype=np.float32)
    for j, (rows, pk, pi, pe) in enumerate(parts):
        cols = slice(j * width, (j + 1) * width)
        keys[rows, cols] = pk
        ids[rows, cols] = pi
        if refine:
            exact[rows, cols] = pe
    out_k = np.empty((nq, k if refine else width), dtype=np.float32)
    out_i = np.empty_like(out_k, dtype=np.int64)
    for r in range(nq):
        order = np.lexsort((ids[r], keys[r]))[:width]
        if not refine:
            out_k[r], out_i[r] = keys[r, order], ids[r, order]
            continue
        sel_i, sel_e = ids[r, order], exact[r, order]
        sel_e = np.where(sel_i == ID_SENTINEL, np.inf, sel_e)
        o2 = np.lexsort((sel_i, sel_e))[:k]
        out_k[r], out_i[r] = sel_e[o2], sel_i[o2]
    return out_k, out_i
