"""Range search for the IVF indexes: every vector within a radius, FAISS's semantics.

Orchestration only: validation, the coarse step (``IVFBase._coarse``, as ``search``),
the filter's row bits (``numba_ivf.filters.prepare``), then one kernel family of
``numba_ivf.kernels.scan.range_scan`` by index kind:

* IVFFlat: exact keys from the stored float32 vectors (the search scan's row keys);
* IVFPQ, refine=False: ADC keys from float tables (8-bit codes, and 4-bit codes read
  from the nibble arena with float tables, not the quantized fast-scan ones);
* IVFPQ, refine=True: exact keys from the stored vectors over every row of the probed
  lists (the vectors are there; a PQ pre-selection could only lose rows), so the
  results are exact within the probed lists.

Results: ``(lims, D, I)``, query i's in ``D[lims[i]:lims[i+1]]`` / ``I[...]``, best
first ("l2": squared distance < radius, ascending; "ip"/"cosine": score > radius,
descending), ties by ascending id.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._config import FILTER_BITMAP_MAX_BYTES
from .._validation import check_int, check_vectors
from .base import normalize_rows

__all__ = ["range_search", "check_radius"]


def check_radius(radius) -> float:
    """``radius`` as a finite Python float; TypeError for a non-number (or a bool),
    ValueError for NaN or infinity."""
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, numbers.Real):
        raise TypeError(f"radius must be a real number (int or float); got {radius!r} of "
                        f"type {type(radius).__name__}.")
    value = float(radius)
    if not math.isfinite(value):
        raise ValueError(f"radius must be finite; got {radius!r}. For every vector of "
                         f"the probed lists use a large finite radius.")
    return value


def _empty(nq: int):
    return (np.zeros(nq + 1, dtype=np.int64), np.empty(0, dtype=np.float32),
            np.empty(0, dtype=np.int64))


def _concat(parts, nq):
    """One CSR result from the results of consecutive chunks of queries."""
    if len(parts) == 1:
        return parts[0]
    lims = np.zeros(nq + 1, dtype=np.int64)
    at = 0
    for part_lims, _, _ in parts:
        n = part_lims.shape[0] - 1
        lims[at + 1:at + n + 1] = part_lims[1:] + lims[at]
        at += n
    return (lims, np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def range_search(index, q, radius, nprobe: int = 1, filter=None):
    """``IVFBase.range_search`` (see there): validate, coarse step, scan, results.

    A filter is turned into row bits once per call (``filters.prepare``); per-query
    filters FILTER_BITMAP_MAX_BYTES of bitmaps at a time, as a filtered search does.
    The probes are the nprobe nearest lists whatever the filter (lists without an
    allowed row are skipped unread): unlike a top-k search, a range search has no
    count of results to probe further for.
    """
    index._check_trained("range_search")
    q = check_vectors(q, "q", d=index.d, owner=index._owner(), allow_1d=True)
    radius = check_radius(radius)
    nprobe = min(check_int("nprobe", nprobe, min_value=1), index.nlist)
    if index.metric == "cosine":
        q = normalize_rows(q)
    nq = q.shape[0]
    spec = None
    if filter is not None:
        from ..filters import as_filter
        spec = as_filter(filter, nq)           # checked even when nothing is scanned
    if nq == 0 or len(index) == 0:
        return _empty(nq)
    scores, probes = index._coarse(q, nprobe)
    if spec is None:
        return scan(index, q, radius, scores, probes)
    from ..filters import PerQueryFilter, bitmap_bytes, prepare
    per_query = isinstance(spec, PerQueryFilter)
    step = max(1, FILTER_BITMAP_MAX_BYTES // bitmap_bytes(index._lists, 1)) \
        if per_query else nq
    parts = []
    for lo in range(0, nq, step):
        hi = min(nq, lo + step)
        rf = prepare(spec.sub(lo, hi) if per_query else spec, index._lists, hi - lo)
        filt = None if rf is None else (rf.fbits, rf.fcount, rf.fslot)
        parts.append(scan(index, q[lo:hi], radius, scores[lo:hi], probes[lo:hi], filt))
    return _concat(parts, nq)


def scan(index, q, radius, scores, probes, filt=None):
    """The kernels and the FAISS-convention results for prepared queries ``q`` (float32,
    normalised for cosine), their coarse ``scores`` and ``probes`` (nq, nprobe) and
    ``filt`` (fbits, fcount, fslot) or None."""
    from ..kernels.scan import range_scan
    L = index._lists
    l2 = index.metric == "l2"
    thr = radius if l2 else -radius        # keys are minimised: -score < -radius
    probes = np.ascontiguousarray(probes, dtype=np.int64)
    if index.kind == "IVFFlat" or getattr(index, "refine", False):
        lims, keys, ids = range_scan.range_flat(q, L.payload["data"], L.ids, L.starts,
                                                L.sizes, probes, l2, thr, filt)
    else:
        base, kind, term, use_term = index._table_spec(scores)
        fn = range_scan.range_adc if index.nbits == 8 else range_scan.range_nibbles
        lims, keys, ids = fn(L.payload["codes"], L.ids, L.starts, L.sizes, probes, base,
                             q, index.pq.codebooks_t, kind, term, use_term, thr, filt)
    if not l2:
        np.negative(keys, out=keys)        # minimised keys -> scores (exact)
    return lims, keys, ids
