"""Turning an id filter into row bits (see ``_bits`` for the layout the scans read).

Once per filtered call, ``numba_ivf.filters.prepare`` evaluates each filter over the
index's stored rows with these kernels: the live rows as bits, then each leaf (a mask
over ids, an id range, a list of allowed ids found through the id map) as bits of
allowed live rows, combined word by word, then the allowed rows counted per list and
the probes of each query trimmed to the lists that can contribute. Bits are written
word by word by one owner (prange over words), never by two lists sharing a word.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..scan._rowkeys import lowest_bit

__all__ = ["live_words", "mask_words", "range_words", "rows_words", "count_lists",
           "trim_probes", "trim_probes_serial", "csr_words", "gather_allowed", "popcount32"]

_CHUNK = 512  # words per prange task (16k rows)


@njit(nogil=True, cache=True, inline="always")
def popcount32(x):
    """Set bits of a 32-bit word (SWAR; in uint64, since Numba widens uint32
    arithmetic: the final multiply must not carry past bit 31 unnoticed)."""
    x = np.uint64(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x55555555))
    x = (x & np.uint64(0x33333333)) + ((x >> np.uint64(2)) & np.uint64(0x33333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F)
    return np.int64(((x * np.uint64(0x01010101)) >> np.uint64(24)) & np.uint64(0xFF))


@njit(nogil=True, cache=True)
def _set_run(words, lo, hi):
    """Set bits of rows [lo, hi)."""
    r = lo
    while r < hi:
        w = r >> 5
        s = r & 31
        n = min(32 - s, hi - r)
        run = np.uint32(0xFFFFFFFF) if n == 32 else \
            np.uint32(((np.uint64(1) << np.uint64(n)) - np.uint64(1)) << np.uint64(s))
        words[w] |= run
        r += n


@njit(nogil=True, cache=True)
def live_words(starts, sizes, words):
    """words (nw,) uint32, zeroed by the caller: bits of the live rows of every list
    (serial: a run's edge words are shared with the neighbouring lists)."""
    for lst in range(starts.shape[0]):
        if sizes[lst]:
            _set_run(words, starts[lst], starts[lst] + sizes[lst])


@njit(nogil=True, cache=True, parallel=True)
def mask_words(ids, live, mask, out):
    """out[w] = live rows of word w whose id i has i < len(mask) and mask[i].

    Branch-free over all 32 rows of a word (a row that is not live reads a clamped
    id and is masked off): a branch per allowed row cost up to 3x at 50 %."""
    nw = live.shape[0]
    n_mask = mask.shape[0]
    n_rows = ids.shape[0]
    for c in prange((nw + _CHUNK - 1) // _CHUNK):
        for w in range(c * _CHUNK, min(nw, (c + 1) * _CHUNK)):
            bits = live[w]
            if bits == 0:
                out[w] = np.uint32(0)
                continue
            acc = np.uint32(0)
            for b in range(min(32, n_rows - w * 32)):
                i = ids[w * 32 + b]
                ok = (i >= 0) & (i < n_mask)
                hit = mask[i if ok else 0] & ok
                acc |= np.uint32(hit) << np.uint32(b)
            out[w] = acc & bits


@njit(nogil=True, cache=True, parallel=True)
def range_words(ids, live, lo, hi, out):
    """out[w] = live rows of word w whose id is in [lo, hi) (branch-free per row)."""
    nw = live.shape[0]
    n_rows = ids.shape[0]
    for c in prange((nw + _CHUNK - 1) // _CHUNK):
        for w in range(c * _CHUNK, min(nw, (c + 1) * _CHUNK)):
            bits = live[w]
            acc = np.uint32(0)
            if bits != 0:
                for b in range(min(32, n_rows - w * 32)):
                    i = ids[w * 32 + b]
                    acc |= np.uint32((lo <= i) & (i < hi)) << np.uint32(b)
            out[w] = acc & bits


@njit(nogil=True, cache=True)
def rows_words(lists, offs, starts, out):
    """Set the bit of row starts[lists[j]] + offs[j] for every j with lists[j] >= 0
    (ids looked up through the id map; absent ids have list -1)."""
    for j in range(lists.shape[0]):
        if lists[j] >= 0:
            r = starts[lists[j]] + offs[j]
            out[r >> 5] |= np.uint32(1) << np.uint32(r & 31)


@njit(nogil=True, cache=True)
def _count_run(fb, lo, hi):
    c = 0
    r = lo
    while r < hi:
        w = r >> 5
        s = r & 31
        n = min(32 - s, hi - r)
        x = fb[w] >> np.uint32(s)
        if n < 32:
            x &= np.uint32((np.uint64(1) << np.uint64(n)) - np.uint64(1))
        c += popcount32(x)
        r += n
    return c


@njit(nogil=True, cache=True, parallel=True)
def count_lists(fbits, starts, sizes, out):
    """out[f, l] = allowed rows of list l under filter f (fbits (nf, nw))."""
    nf, nlist = out.shape
    for t in prange(nf * nlist):
        f = t // nlist
        lst = t - f * nlist
        out[f, lst] = _count_run(fbits[f], starts[lst], starts[lst] + sizes[lst]) \
            if sizes[lst] else 0


@njit(nogil=True, cache=True)
def _trim_one(probes_q, scores_q, fc, nprobe, need, out_q, out_s):
    """One query of ``trim_probes``; returns (lists kept, allowed rows covered)."""
    got = 0
    n = 0
    for p in range(probes_q.shape[0]):
        lst = probes_q[p]
        if lst < 0 or (p >= nprobe and got >= need):
            break
        c = fc[lst]
        if c:
            out_q[n] = lst
            out_s[n] = scores_q[p]
            n += 1
            got += c
    for p in range(n, probes_q.shape[0]):
        out_q[p] = -1
        out_s[p] = 0.0
    return n, got


@njit(nogil=True, cache=True, parallel=True)
def trim_probes(probes, scores, fcount, fslot, nprobe, need, out, out_scores, covered):
    """Per query, the lists of ``probes`` (coarse order, best first; -1 ends a row) a
    filtered scan reads, packed to the left of ``out`` with their coarse ``scores`` in
    ``out_scores`` (-1 / 0 after): those of the first ``nprobe`` columns with an allowed
    row, then further ones while the allowed rows covered are fewer than ``need``.
    covered[qi] = allowed rows of the kept lists. Returns the widest row (the columns a
    scan needs). prange over queries."""
    nq = probes.shape[0]
    used = np.empty(nq, dtype=np.int64)
    for qi in prange(nq):
        used[qi], covered[qi] = _trim_one(probes[qi], scores[qi], fcount[fslot[qi]],
                                          nprobe, need, out[qi], out_scores[qi])
    return used.max() if nq else 0


@njit(nogil=True, cache=True)
def trim_probes_serial(probes, scores, fcount, fslot, nprobe, need, out, out_scores,
                       covered):
    """``trim_probes`` on the calling thread (a few queries)."""
    most = 0
    for qi in range(probes.shape[0]):
        n, covered[qi] = _trim_one(probes[qi], scores[qi], fcount[fslot[qi]], nprobe,
                                   need, out[qi], out_scores[qi])
        most = max(most, n)
    return most


@njit(nogil=True, cache=True)
def csr_words(lists, offs, starts, indptr, out):
    """Per-query allowed ids (CSR rows indptr) found through the id map as (lists,
    offs): set the bit of each found row in out[qi] (out (nq, nw) zeroed)."""
    for qi in range(indptr.shape[0] - 1):
        fb = out[qi]
        for j in range(indptr[qi], indptr[qi + 1]):
            if lists[j] >= 0:
                r = starts[lists[j]] + offs[j]
                fb[r >> 5] |= np.uint32(1) << np.uint32(r & 31)


@njit(nogil=True, cache=True)
def gather_allowed(fb, n, ids, data, out_ids, out_data):
    """The n rows whose bits are set in fb (nw,), ascending: their ids and vectors into
    out_ids (n,) and out_data (n, d). One pass over the words, no (rows,) temporary."""
    j = 0
    for w in range(fb.shape[0]):
        bits = fb[w]
        while bits:
            r = (w << 5) + lowest_bit(bits)
            bits &= bits - np.uint32(1)
            out_ids[j] = ids[r]
            out_data[j] = data[r]
            j += 1
    return j
