"""Filtered-search oracles: exact brute force over the allowed rows, and a numpy IVF
that probes lists by the filtered rule (nprobe as a minimum, then min_candidates)."""

import numpy as np


def _keys(x, q, metric):
    """Minimised float64 keys (nq, n): squared L2, or the negated inner product."""
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return -(q @ x.T)


def _top(keys, ids, k):
    """Top-k (keys ascending, ties by id) of each row; -1 / inf padding."""
    nq = keys.shape[0]
    K = np.full((nq, k), np.inf)
    I = np.full((nq, k), -1, dtype=np.int64)
    for qi in range(nq):
        ok = np.isfinite(keys[qi])
        order = np.lexsort((ids[ok], keys[qi][ok]))[:k]
        K[qi, :order.size] = keys[qi][ok][order]
        I[qi, :order.size] = ids[ok][order]
    return K, I


def filtered_brute_force(x, ids, q, k, allowed, metric):
    """Exact top-k over the rows whose id ``allowed`` (callable ids -> bool, or a
    (nq, n) boolean array per row) admits. Returns (keys, I) with minimised keys."""
    keys = _keys(x, q, metric)
    ok = allowed if isinstance(allowed, np.ndarray) else np.broadcast_to(
        allowed(np.asarray(ids)), keys.shape)
    keys = np.where(ok, keys, np.inf)
    return _top(keys, np.asarray(ids), k)


def filtered_probes(order, counts, nprobe, need, max_nprobe):
    """The lists a filtered search reads for one query: among the first ``nprobe`` of
    ``order`` (coarse order) those with an allowed row, then the next ones while the
    allowed rows covered are fewer than ``need``, never past ``max_nprobe`` lists."""
    kept, covered = [], 0
    for p, lst in enumerate(order[:max_nprobe]):
        if p >= nprobe and covered >= need:
            break
        if counts[lst]:
            kept.append(int(lst))
            covered += int(counts[lst])
    return kept


def filtered_ivf(index, q, k, allowed, nprobe, need, max_nprobe):
    """A numpy filtered IVF-Flat over the stored vectors: probes chosen by
    ``filtered_probes`` from the index's coarse order, exact keys of the allowed rows
    of those lists. ``allowed`` maps ids -> bool. Returns (keys, I)."""
    L = index._lists
    q = np.asarray(q, dtype=np.float32)
    if index.metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    _, order = index._coarse(np.ascontiguousarray(q, dtype=np.float32), index.nlist)
    out_k = np.full((q.shape[0], k), np.inf)
    out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    lists_rows = [np.arange(L.starts[l], L.starts[l] + L.sizes[l])
                  for l in range(index.nlist)]
    for qi in range(q.shape[0]):
        counts = [int(allowed(L.ids[r]).sum()) for r in lists_rows]
        probes = filtered_probes(order[qi], counts, nprobe, need, max_nprobe)
        rows = np.concatenate([lists_rows[l] for l in probes] or [np.zeros(0, int)])
        rows = rows[allowed(L.ids[rows])]
        data = L.payload["data"][rows]
        kk, ii = _top(_keys(data, q[qi:qi + 1], "l2" if index.metric == "l2" else "ip"),
                      L.ids[rows], k)
        out_k[qi], out_i[qi] = kk[0], ii[0]
    return out_k, out_i
