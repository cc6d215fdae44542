"""Range-search oracles: plain loops over the probed lists, float64.

Each oracle returns, per query, a dict {id: value} of every live row of the query's
probed lists that the filter allows (not only those inside the radius): the value is
the squared L2 distance ("l2") or the score ("ip"/"cosine"). ``inside`` and
``check_range`` then compare a kernel's (lims, D, I) with it, tie-aware at the radius.
"""

import numpy as np

from tests.naive.pq import decode


def _rows(index, probes_q, allowed):
    """(arena row, list) of every live row of the probed lists whose id is allowed."""
    L = index._lists
    out = []
    for lst in probes_q:
        lst = int(lst)
        if lst < 0:
            continue
        for o in range(int(L.sizes[lst])):
            row = int(L.starts[lst]) + o
            if allowed is None or int(L.ids[row]) in allowed:
                out.append((row, lst))
    return out


def _value(metric, q, y):
    if metric == "l2":
        return float(sum((float(a) - float(b)) ** 2 for a, b in zip(q, y)))
    return float(sum(float(a) * float(b) for a, b in zip(q, y)))


def exact_values(index, q, probes, vectors, allowed=None):
    """Exact values from float vectors: ``vectors(row)`` gives a row's stored vector
    (IVFFlat's data, or the refine copy). q: the prepared (float32, normalised for
    cosine) queries. allowed: a set of ids, or None for all."""
    out = []
    for qi in range(q.shape[0]):
        vals = {}
        for row, _ in _rows(index, probes[qi], allowed):
            vals[int(index._lists.ids[row])] = _value(index.metric, q[qi], vectors(row))
        out.append(vals)
    return out


def flat_values(index, q, probes, allowed=None):
    data = index._lists.payload["data"]
    return exact_values(index, q, probes, lambda row: data[row], allowed)


def pq_values(index, q, probes, allowed=None):
    """ADC values: each row's code decoded with the index's codebooks (plus its list's
    centroid when by residual), then the float64 distance or score to the query."""
    L = index._lists
    cb = index.pq.codebooks
    cent = np.asarray(index.centroids, dtype=np.float64)
    out = []
    for qi in range(q.shape[0]):
        vals = {}
        for row, lst in _rows(index, probes[qi], allowed):
            code = L.codes_of_row("codes", row, index.m)
            y = decode(code[None].astype(np.int64), cb)[0]
            if index.by_residual:
                y = y + cent[lst]
            vals[int(L.ids[row])] = _value(index.metric, q[qi], y)
        out.append(vals)
    return out


def inside(metric, value, radius):
    return value < radius if metric == "l2" else value > radius


def check_range(lims, D, I, oracle, metric, radius, rtol=1e-5, atol=1e-5):
    """Assert that (lims, D, I) is the oracle's range result.

    * shapes and dtypes: lims int64 (nq + 1,) from 0, non-decreasing; D float32, I int64;
    * every returned id is one of the query's candidates, at most once, with D close to
      its oracle value, inside the radius (compared in float64);
    * every candidate whose value is inside the radius by more than the tolerance is
      returned; those within it of the radius may go either way;
    * order: (D ascending for l2, descending otherwise), ties by ascending id, exactly.
    """
    nq = len(oracle)
    assert lims.dtype == np.int64 and lims.shape == (nq + 1,)
    assert D.dtype == np.float32 and I.dtype == np.int64
    assert lims[0] == 0 and (np.diff(lims) >= 0).all() and lims[-1] == D.shape[0]
    assert D.shape == I.shape
    for qi in range(nq):
        d = D[lims[qi]:lims[qi + 1]]
        ids = I[lims[qi]:lims[qi + 1]].tolist()
        vals = oracle[qi]
        assert len(set(ids)) == len(ids), f"query {qi}: an id is returned twice"
        for dv, id_ in zip(d.tolist(), ids):
            assert id_ in vals, f"query {qi}: id {id_} is not in a probed list"
            ref = vals[id_]
            assert abs(dv - ref) <= atol + rtol * abs(ref), (qi, id_, dv, ref)
            assert inside(metric, dv, radius), (qi, id_, dv, radius)
        tol = lambda v: atol + rtol * abs(v)  # noqa: E731
        sure = {i for i, v in vals.items()
                if inside(metric, v + (tol(v) if metric == "l2" else -tol(v)), radius)}
        missing = sure - set(ids)
        assert not missing, f"query {qi}: {len(missing)} ids inside the radius missing"
        key = d.astype(np.float64) if metric == "l2" else -d.astype(np.float64)
        for j in range(len(ids) - 1):
            assert (key[j], ids[j]) < (key[j + 1], ids[j + 1]), (qi, j)
