"""Bounded top-k selection and merging, shared by every IVF search path.

Everything here *minimises* a float32 key: L2 uses the squared distance, inner-product
metrics use the negated score (negation is exact, so ordering and ties are kept). Ties
are broken by ascending id, which makes results deterministic and lets parity tests
compare ids exactly.

A top-k is a max-heap of ``k`` (key, id) pairs with the *worst* kept pair at the root,
pre-filled with the sentinel (+inf, ``ID_SENTINEL``). Because the sentinel id is the
largest int64, a sentinel loses every tie against a real entry, and a real entry whose
key overflowed to +inf still ranks before padding. Callers turn sentinels into
``-1`` ids (and +/-inf distances) when they write results.

Layers: ``merge_topk`` (Python) -> ``_merge_topk_driver`` (prange over queries) ->
the serial ``heap_*`` workers, which scan kernels inline into their own loops.

For a large k (re-ranking keeps ``k_factor * k`` candidates) a heap push, a sift-down of
log2(k) unpredictable levels, costs more than the fast-scan of the code that produced
it. The ``res_*`` functions keep a *reservoir* instead (FAISS's ReservoirTopN): admitted
pairs are appended to a buffer of ``RESERVOIR_FACTOR * k`` slots; when it is full it
is cut back to a key t with between k and about (k + capacity) / 2 entries <= t
(bisection on the key values, each step one vectorised count; FAISS's partition_fuzzy
does the same on uint16 keys with histograms), and the admission threshold drops to
the largest kept key.
The result is the same exact top-k (key, then id), whatever the arrival order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._config import (FASTMATH, RESERVOIR_CUT_STEPS, RESERVOIR_FACTOR,
                       RESERVOIR_FINISH_SLACK)

# numba accepts a set (not a frozenset) for fastmath.
_FM = set(FASTMATH)

__all__ = ["ID_SENTINEL", "heap_init", "heap_push", "heap_sort", "merge_topk",
           "insert_best", "merge_refine", "res_capacity", "res_cut", "res_push", "res_finish", "to_faiss"]

ID_SENTINEL = np.iinfo(np.int64).max


@njit(nogil=True, cache=True, inline="always")
def _worse(d1, i1, d2, i2):
    """True if (d1, i1) ranks after (d2, i2): larger key, or equal key and larger id."""
    return d1 > d2 or (d1 == d2 and i1 > i2)


@njit(nogil=True, cache=True, fastmath=_FM)
def heap_init(hd, hi):
    """Fill a heap with sentinels (+inf, ID_SENTINEL)."""
    for j in range(hd.shape[0]):
        hd[j] = np.inf
        hi[j] = ID_SENTINEL


@njit(nogil=True, cache=True, fastmath=_FM, inline="always")
def heap_push(hd, hi, d, i):
    """Offer (d, i) to the max-heap (hd, hi); keep it if it beats the current worst.

    The heap always holds exactly ``len(hd)`` pairs (sentinels included), so a push is
    a replace-root-and-sift-down. Returns nothing; the caller may read ``hd[0]`` as
    the current admission threshold.
    """
    if not _worse(hd[0], hi[0], d, i):
        return
    hd[0] = d
    hi[0] = i
    _sift_down(hd, hi, 0, hd.shape[0])


@njit(nogil=True, cache=True, fastmath=_FM, inline="always")
def _sift_down(hd, hi, pos, n):
    """Move (hd[pos], hi[pos]) down the first n entries until both children rank
    before it."""
    d = hd[pos]
    i = hi[pos]
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        right = child + 1
        if right < n and _worse(hd[right], hi[right], hd[child], hi[child]):
            child = right
        if _worse(hd[child], hi[child], d, i):
            hd[pos] = hd[child]
            hi[pos] = hi[child]
            pos = child
        else:
            break
    hd[pos] = d
    hi[pos] = i


@njit(nogil=True, cache=True, fastmath=_FM)
def insert_best(vals, idx, w, out_v, out_i):
    """The p = len(out_v) largest of vals[:w] (ids idx[:w]) into (out_v, out_i), largest
    first, by a stable insertion: among equal values the earlier entry stays first (so
    lower ids first when the entries come in id order). Returns how many were filled
    (min(w, p)); the rest of out_v / out_i is left as it was."""
    p = out_v.shape[0]
    m = 0
    for j in range(w):
        v = vals[j]
        if m == p and not v > out_v[p - 1]:
            continue
        pos = min(m, p - 1)
        while pos > 0 and v > out_v[pos - 1]:
            out_v[pos] = out_v[pos - 1]
            out_i[pos] = out_i[pos - 1]
            pos -= 1
        out_v[pos] = v
        out_i[pos] = idx[j]
        m = min(m + 1, p)
    return m


@njit(nogil=True, cache=True, fastmath=_FM)
def heap_sort(hd, hi):
    """Sort a max-heap in place into ascending (key, id) order (best first)."""
    n = hd.shape[0]
    for end in range(n - 1, 0, -1):
        d = hd[0]
        i = hi[0]
        hd[0] = hd[end]
        hi[0] = hi[end]
        hd[end] = d
        hi[end] = i
        _sift_down(hd, hi, 0, end)


@njit(nogil=True, cache=True, fastmath=_FM)
def merge_one(part_d, part_i, out_d, out_i):
    """Merge m partial top-ks (rows of ``part_d``/``part_i``) into one sorted top-k.

    Partial rows may be in any order and may hold sentinels; the output is sorted
    best first with sentinels last.
    """
    heap_init(out_d, out_i)
    for r in range(part_d.shape[0]):
        for j in range(part_d.shape[1]):
            if part_i[r, j] != ID_SENTINEL:
                heap_push(out_d, out_i, part_d[r, j], part_i[r, j])
    heap_sort(out_d, out_i)


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def _merge_topk_driver(part_d, part_i, out_d, out_i):
    for q in prange(part_d.shape[0]):
        merge_one(part_d[q], part_i[q], out_d[q], out_i[q])


@njit(nogil=True, cache=True, fastmath=_FM)
def merge_refine_one(part_d, part_i, part_e, sel_d, sel_i, sel_e, out_d, out_i):
    """Re-ranking merge of one query's partial candidate lists (rows of ``part_*``):
    the best len(sel_d) candidates by (PQ key ``part_d``, id), then the best len(out_d)
    of those by (exact key ``part_e``, id), sorted into (out_d, out_i). sel_* are
    scratch of the candidate count."""
    heap_init(sel_d, sel_i)
    for j in range(sel_e.shape[0]):
        sel_e[j] = np.inf
    for r in range(part_d.shape[0]):
        for j in range(part_d.shape[1]):
            i = part_i[r, j]
            if i != ID_SENTINEL and _worse(sel_d[0], sel_i[0], part_d[r, j], i):
                sel_d[0] = part_d[r, j]
                sel_i[0] = i
                sel_e[0] = part_e[r, j]
                _sift3(sel_d, sel_i, sel_e, 0, sel_d.shape[0])
    heap_init(out_d, out_i)
    for j in range(sel_d.shape[0]):
        if sel_i[j] != ID_SENTINEL:
            heap_push(out_d, out_i, sel_e[j], sel_i[j])
    heap_sort(out_d, out_i)


@njit(nogil=True, cache=True, parallel=True, fastmath=_FM)
def merge_refine(part_d, part_i, part_e, width, out_d, out_i):
    """``merge_refine_one`` for every query (prange): part_* (nq, m, kp), the best
    ``width`` by PQ key re-ranked to out_* (nq, k) by exact key."""
    for q in prange(part_d.shape[0]):
        sel_d = np.empty(width, dtype=np.float32)
        sel_i = np.empty(width, dtype=np.int64)
        sel_e = np.empty(width, dtype=np.float32)
        merge_refine_one(part_d[q], part_i[q], part_e[q], sel_d, sel_i, sel_e,
                         out_d[q], out_i[q])


def merge_topk(part_d: np.ndarray, part_i: np.ndarray, k: int):
    """Merge per-query partial top-ks into one sorted top-k per query.

    Parameters
    ----------
    part_d : ndarray of shape (nq, m, kp), float32
        Keys to minimise (+inf for padding).
    part_i : ndarray of shape (nq, m, kp), int64
        Ids, ``ID_SENTINEL`` (or -1) for padding.
    k : int
        Results per query.

    Returns
    -------
    keys : ndarray of shape (nq, k), float32, ascending, +inf padding.
    ids : ndarray of shape (nq, k), int64, ``ID_SENTINEL`` padding.
    """
    part_d = np.ascontiguousarray(part_d, dtype=np.float32)
    part_i = np.ascontiguousarray(part_i, dtype=np.int64)
    if part_d.ndim != 3 or part_d.shape != part_i.shape:
        raise ValueError(f"part_d and part_i must both have shape (nq, m, kp); got "
                         f"{part_d.shape} and {part_i.shape}.")
    part_i = np.where(part_i < 0, ID_SENTINEL, part_i)
    nq = part_d.shape[0]
    out_d = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    _merge_topk_driver(part_d, part_i, out_d, out_i)
    return out_d, out_i


@njit(nogil=True, cache=True)
def to_faiss(hd, hi, l2):
    """In place: sorted minimised keys and ids -> FAISS's convention (``-1`` ids with
    +inf (L2) / -inf distances where missing; inner products negated back)."""
    for j in range(hd.shape[0]):
        if hi[j] == ID_SENTINEL:
            hi[j] = -1
            hd[j] = np.inf if l2 else -np.inf
        elif not l2:
            hd[j] = -hd[j]


# -- reservoir top-k ----------------------------------------------------------------
# Each entry is (key, id, row): ordered by (key, id) like the heap; ``row`` rides along
# (the arena row of the candidate, so that re-ranking needs no id lookup).

@njit(nogil=True, cache=True)
def res_capacity(k):
    """Slots of a reservoir for a top-k: RESERVOIR_FACTOR * k (at least k + 1)."""
    return max(RESERVOIR_FACTOR * k, k + 1)


@njit(nogil=True, cache=True, inline="always")
def _swap3(rd, ri, rr, a, b):
    d = rd[a]
    i = ri[a]
    r = rr[a]
    rd[a] = rd[b]
    ri[a] = ri[b]
    rr[a] = rr[b]
    rd[b] = d
    ri[b] = i
    rr[b] = r


@njit(nogil=True, cache=True, fastmath=_FM)
def _select_best(rd, ri, rr, n, k):
    """Reorder the first n entries so that the k best (key, id) come first and entry
    k-1 is the k-th best (Lomuto quickselect; ids are unique, so no ties)."""
    lo = 0
    hi = n - 1
    target = k - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        # Median of three as pivot, moved to hi.
        if _worse(rd[lo], ri[lo], rd[mid], ri[mid]):
            _swap3(rd, ri, rr, lo, mid)
        if _worse(rd[mid], ri[mid], rd[hi], ri[hi]):
            _swap3(rd, ri, rr, mid, hi)
            if _worse(rd[lo], ri[lo], rd[mid], ri[mid]):
                _swap3(rd, ri, rr, lo, mid)
        _swap3(rd, ri, rr, mid, hi)
        pd = rd[hi]
        pi = ri[hi]
        store = lo
        for j in range(lo, hi):
            # Branch-free Lomuto step: always swap, advance when j ranks before the
            # pivot. Half of these comparisons go either way, so a branch on them
            # mispredicted about every other element (3x slower at 160 entries).
            d = rd[j]
            i = ri[j]
            r = rr[j]
            rd[j] = rd[store]
            ri[j] = ri[store]
            rr[j] = rr[store]
            rd[store] = d
            ri[store] = i
            rr[store] = r
            store += np.int64((pd > d) | ((pd == d) & (pi > i)))
        _swap3(rd, ri, rr, store, hi)
        if store == target:
            return
        if store < target:
            lo = store + 1
        else:
            hi = store - 1


@njit(nogil=True, cache=True, fastmath=_FM)
def _count_le(rd, n, t):
    """How many of rd[:n] are <= t (a compare-and-add loop that vectorises)."""
    c = 0
    for j in range(n):
        c += np.int64(rd[j] <= t)
    return c


@njit(nogil=True, cache=True, fastmath=_FM)
def _cut(rd, n, lo_count, hi_count):
    """A key t with lo_count <= #{j < n: rd[j] <= t} <= hi_count, or NaN if none was
    found: bisection on the key values between the smallest and the largest key.

    Each step is one vectorised count over n keys, so a cut costs about a tenth of a
    quickselect carrying (key, id, row) triples through its partitions. It fails
    (NaN) on non-finite keys and when ties make the count jump over the range; the
    callers then fall back to the exact quickselect.
    """
    lo = rd[0]
    hi = rd[0]
    for j in range(1, n):
        lo = min(lo, rd[j])
        hi = max(hi, rd[j])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return np.float32(np.nan)
    c = _count_le(rd, n, lo)
    if c >= lo_count:                     # the smallest key alone is enough
        return lo if c <= hi_count else np.float32(np.nan)
    # Invariant: count(lo) < lo_count <= count(hi) = n.
    for _ in range(RESERVOIR_CUT_STEPS):
        t = np.float32(0.5 * (np.float64(lo) + np.float64(hi)))
        if t == lo or t == hi:
            break
        c = _count_le(rd, n, t)
        if c < lo_count:
            lo = t
        elif c > hi_count:
            hi = t
        else:
            return t
    if _count_le(rd, n, hi) <= hi_count:
        return hi
    return np.float32(np.nan)


@njit(nogil=True, cache=True, fastmath=_FM)
def _keep_le(rd, ri, rr, n, t):
    """Keep the entries with key <= t (in order, branch-free); returns (count, the
    largest kept key).

    Each entry's three values are loaded before any is stored, and the largest kept key
    is a pass of its own: with a store between the loads (which Numba cannot prove do
    not alias) and the max in the same loop, a cut of 160 entries took 4.7x as long
    (0.82 vs 0.17 us here), and cuts were most of a glove one-query scan's lane time.
    """
    w = 0
    for j in range(n):
        d = rd[j]
        i = ri[j]
        r = rr[j]
        rd[w] = d
        ri[w] = i
        rr[w] = r
        w += np.int64(d <= t)
    top = np.float32(-np.inf)
    for j in range(w):
        top = max(top, rd[j])
    return w, top


@njit(nogil=True, cache=True, fastmath=_FM)
def res_cut(rd, ri, rr, n, k, most):
    """Cut the n entries of a reservoir back to between k and ``most`` entries that
    include its k best; returns (entries, new admission key). FAISS keeps up to
    (k + n) / 2 (fewer cuts, a looser key); a tighter ``most`` costs a few more
    bisection steps and pays when admissions are cheap but cuts are not.

    Every dropped entry is above a key t while >= k kept entries are <= t, so none of
    them is in the top-k; the admission key becomes the largest kept key (a later
    candidate equal to it may still win its tie by id). Falls back to the exact
    quickselect (k entries, the k-th best as the key) when no cut exists.
    """
    t = _cut(rd, n, k, most)
    if t == t:
        return _keep_le(rd, ri, rr, n, t)
    _select_best(rd, ri, rr, n, k)
    return k, rd[k - 1]


@njit(nogil=True, cache=True, fastmath=_FM, inline="always")
def res_push(rd, ri, rr, n, thr, k, d, i, r):
    """Append (d, i, r), which the caller admitted with ``d <= thr``, to the reservoir
    (rd, ri, rr) holding n entries; returns the new (n, thr). A full reservoir is cut
    back (``res_cut``) and takes a lower admission key. The protocol's reference: the
    fast-scan lane loop (``fastscan_search.scan_list_blocks``) writes these steps out,
    because calling this from it was measured 1.2-1.4x slower there."""
    rd[n] = d
    ri[n] = i
    rr[n] = r
    n += 1
    if n == rd.shape[0]:
        n, thr = res_cut(rd, ri, rr, n, k, (k + n) // 2)
    return n, thr


@njit(nogil=True, cache=True, fastmath=_FM)
def res_finish(rd, ri, rr, n, out_d, out_i, out_r, ordered):
    """The top-k (k = len(out_d)) of the reservoir into (out_d, out_i, out_r), padded
    with sentinels (row -1); sorted best first if ``ordered``, else in no particular
    order (re-ranking needs only the set: sorting 80 candidates cost a third of a
    one-query fast-scan search)."""
    k = out_d.shape[0]
    if n > k:
        # A cut to exactly k is the common case (ties of the k-th key are rare);
        # otherwise a cut to a few more makes the exact quickselect short.
        t = _cut(rd, n, k, k + RESERVOIR_FINISH_SLACK)
        if t == t:
            n, _ = _keep_le(rd, ri, rr, n, t)
        if n > k:
            _select_best(rd, ri, rr, n, k)
            n = k
    for j in range(n):
        out_d[j] = rd[j]
        out_i[j] = ri[j]
        out_r[j] = rr[j]
    for j in range(n, k):
        out_d[j] = np.inf
        out_i[j] = ID_SENTINEL
        out_r[j] = -1
    if not ordered:
        return
    # Heap sort of the n <= k survivors (max-heap on (key, id), then pop to the end).
    for pos in range(n // 2 - 1, -1, -1):
        _sift3(out_d, out_i, out_r, pos, n)
    for end in range(n - 1, 0, -1):
        _swap3(out_d, out_i, out_r, 0, end)
        _sift3(out_d, out_i, out_r, 0, end)


@njit(nogil=True, cache=True, fastmath=_FM, inline="always")
def _sift3(hd, hi, hr, pos, n):
    """``_sift_down`` carrying a third array along."""
    d = hd[pos]
    i = hi[pos]
    r = hr[pos]
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        right = child + 1
        if right < n and _worse(hd[right], hi[right], hd[child], hi[child]):
            child = right
        if _worse(hd[child], hi[child], d, i):
            hd[pos] = hd[child]
            hi[pos] = hi[child]
            hr[pos] = hr[child]
            pos = child
        else:
            break
    hd[pos] = d
    hi[pos] = i
    hr[pos] = r
