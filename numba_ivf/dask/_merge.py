"""Client-side merge of per-shard top-k results, by (key, id) as every scan orders them.

Each shard returns, for the queries routed to it, its best ``width`` candidates as
minimised keys and ids (``ID_SENTINEL`` padding). The union of the shards' lists holds
the whole index's best ``width`` (lists are disjoint), so the first ``width`` of the
union by (key, id) are the single index's. With refine a shard also returns the exact
key of each candidate: the single index re-ranks exactly its best ``width`` PQ
candidates, so the merge first takes those by PQ key, then their best k by exact key.
"""

from __future__ import annotations

import numpy as np

from ..kernels.common.topk import ID_SENTINEL

__all__ = ["merge_topk"]


def merge_topk(nq: int, parts, width: int, k: int | None = None):
    """Merged (keys, ids) of shape (nq, k or width) from per-shard parts.

    Parameters
    ----------
    nq : int
        Queries of the call.
    parts : list of (rows, keys, ids, exact)
        ``rows`` (n,) int64 query numbers a shard answered; ``keys`` (n, width) float32
        and ``ids`` (n, width) int64 its candidates; ``exact`` (n, width) float32 their
        exact keys (refine) or None.
    width : int
        Candidates per shard and query (k, or k * k_factor with refine).
    k : int, optional
        With exact keys: results per query after re-ranking.
    """
    refine = any(p[3] is not None for p in parts)
    ncol = max(1, len(parts)) * width
    keys = np.full((nq, ncol), np.inf, dtype=np.float32)
    ids = np.full((nq, ncol), ID_SENTINEL, dtype=np.int64)
    exact = np.full((nq, ncol), np.inf, dtype=np.float32) if refine else None
    for j, (rows, pk, pi, pe) in enumerate(parts):
        cols = slice(j * width, (j + 1) * width)
        keys[rows, cols] = pk
        ids[rows, cols] = pi
        if refine:
            exact[rows, cols] = pe
    order = np.lexsort((ids, keys), axis=1)[:, :width]
    ids = np.take_along_axis(ids, order, axis=1)
    if not refine:
        return np.ascontiguousarray(np.take_along_axis(keys, order, axis=1)), ids
    exact = np.take_along_axis(exact, order, axis=1)
    order = np.lexsort((ids, exact), axis=1)[:, :k]
    return (np.ascontiguousarray(np.take_along_axis(exact, order, axis=1)),
            np.ascontiguousarray(np.take_along_axis(ids, order, axis=1)))
