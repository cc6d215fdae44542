"""One IVF-RaBitQ query in a single kernel call, bit-identical to the general path.

A one-query search made of separate calls (validation, coarse step, rotation, scan,
re-ranking, result conventions) spent ~50 us in Python and dispatch around ~50-300 us
of work. Here, with the general path's own workers:

1. ``list_scan.query_into``: value check (finite, within the value limit), float32,
   cosine normalisation;
2. ``list_scan.coarse_one_query``: the coarse step of a few queries (the same keys as
   ``IVFBase._coarse``);
3. the rotation, ``rabitq_encode.fht_rotate_serial`` or ``rotate_rows`` (the general
   path's for one row);
4. ``rabitq_scan._scan_query``: the serial scan, unfiltered;
5. with refine, ``refine.refine_rows`` over the candidates' rows; ``topk.to_faiss``.

Returns ``DONE`` or ``NOT_FINITE`` (the caller then raises through the general path).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..common.topk import to_faiss
from ..scan.list_scan import coarse_one_query, query_into
from ..scan.refine import refine_rows
from .rabitq_encode import fht_rotate_serial, rotate_rows
from .rabitq_scan import _scan_query, _scratch

__all__ = ["DONE", "NOT_FINITE", "rabitq_search_one"]

DONE = 0
NOT_FINITE = 1


@njit(nogil=True, cache=True)
def rabitq_search_one(q, unit, panels, coarse_metric, min_run, max_runs, nprobe, perms,
                      signs, blocks, P, crot, packed, ex, fac, ids, starts, sizes, l2, bits, gate, eps, kk, refine,
                      data, out_d, out_i, backend):
    """One query q (d,) float32/float64: ``kk`` candidates from the scan (k_factor * k
    with refine, else k), the best k = out_d.shape[1] into out_d, out_i (1, k) in
    FAISS's convention. Arguments as ``rabitq_scan.rabitq_batch``; panels and
    coarse_metric those of ``IVFBase._coarse``; the rotation is the structured one
    (perms, signs, blocks) if perms has rows, else the dense P."""
    d = q.shape[0]
    D = crot.shape[1]
    # The scan indexes these unchecked: refuse operands that do not fit together.
    if (d > D or packed.shape[1] * 8 != D or (perms.shape[0] == 0 and P.shape != (D, D))
            or (perms.shape[0] > 0 and (perms.shape[1] != D or signs.shape != perms.shape))
            or nprobe > sizes.shape[0] or out_d.shape[1] > kk):
        raise ValueError("rabitq_search_one: operand shapes do not match")
    qf = np.empty(d, dtype=np.float32)
    if not query_into(q, unit, qf):
        return NOT_FINITE
    keys = np.empty(nprobe, dtype=np.float32)
    lists = np.empty(nprobe, dtype=np.int64)
    coarse_one_query(qf, panels, sizes.shape[0], coarse_metric, min_run, max_runs,
                     np.empty(panels.shape[0] * panels.shape[2], dtype=np.float32), keys,
                     lists)
    # The coarse keys are minimised; the scan takes scores (inner products) for "ip".
    scores = np.empty(nprobe, dtype=np.float32)
    for p in range(nprobe):
        scores[p] = keys[p] if l2 else -keys[p]
    qrot = np.empty((1, D), dtype=np.float32)
    if perms.shape[0] > 0:
        fht_rotate_serial(qf.reshape((1, d)), perms, signs, blocks, qrot)
    else:
        rotate_rows(qf.reshape((1, d)), P, qrot)
    qp, T, lo, lut_u8, acc = _scratch(D)
    cd = np.empty(kk, dtype=np.float32)
    ci = np.empty(kk, dtype=np.int64)
    cr = np.empty(kk, dtype=np.int64)
    _scan_query(packed, ex, fac, ids, starts, sizes, lists, scores, None, None, qrot[0],
                crot, l2, bits, gate, eps, qp, T, lo, lut_u8, acc, cd, ci, cr, backend)
    if refine:
        refine_rows(qf, data, cr, ci, l2, out_d[0], out_i[0])
    else:
        out_d[0, :] = cd[:out_d.shape[1]]
        out_i[0, :] = ci[:out_d.shape[1]]
    to_faiss(out_d[0], out_i[0], l2)
    return DONE
