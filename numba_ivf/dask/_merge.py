"""Client-side merge of per-shard top-k results, by (key, id) as every scan orders them.

Each shard returns, for the queries routed to it, its best ``width`` candidates as
minimised keys and ids (``ID_SENTINEL`` padding). The union of the shards' lists holds
the whole index's best ``width`` (lists are disjoint), so the first ``width`` of the
union by (key, id) are the single index's. With refine a shard also returns the exact
key of each candidate: the single index re-ranks exactly its best ``width`` PQ
candidates, so the merge first takes those by PQ key, then their best k by exact key
(``topk.merge_refine``). Oracle: ``tests/naive/merge.py``.
"""

from __future__ import annotations

import numpy as np

from ..kernels.common.topk import ID_SENTINEL

__all__ = ["merge_topk", "MERGE_SERIAL_MAX_QUERIES"]

# Up to this many queries are merged one kernel call each on the calling thread.
MERGE_SERIAL_MAX_QUERIES = 4


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
        With exact keys: results per query after re-ranking (default width).
    """
    from ..kernels.common import topk
    refine = any(p[3] is not None for p in parts)
    k = width if k is None else k
    S = max(1, len(parts))
    part_d = np.full((nq, S, width), np.inf, dtype=np.float32)
    part_i = np.full((nq, S, width), ID_SENTINEL, dtype=np.int64)
    part_e = np.full((nq, S, width), np.inf, dtype=np.float32) if refine else None
    for j, (rows, pk, pi, pe) in enumerate(parts):
        part_d[rows, j] = pk
        part_i[rows, j] = pi
        if refine:
            part_e[rows, j] = pe
    out_d = np.empty((nq, k if refine else width), dtype=np.float32)
    out_i = np.empty((nq, k if refine else width), dtype=np.int64)
    if nq <= MERGE_SERIAL_MAX_QUERIES:     # a parallel launch costs more (~0.4 ms)
        for r in range(nq):
            if refine:
                topk.merge_refine_one(part_d[r], part_i[r], part_e[r],
                                      np.empty(width, np.float32),
                                      np.empty(width, np.int64),
                                      np.empty(width, np.float32), out_d[r], out_i[r])
            else:
                topk.merge_one(part_d[r], part_i[r], out_d[r], out_i[r])
    elif refine:
        topk.merge_refine(part_d, part_i, part_e, width, out_d, out_i)
    else:
        topk._merge_topk_driver(part_d, part_i, out_d, out_i)
    return out_d, out_i
