"""Row filters as the scans see them: one bit per arena row, counts per list.

A filtered search turns its filter once per call into the index's own row order
(``numba_ivf.filters.prepare``); the scan kernels then test bits, never ids. The three
arrays every filtered kernel takes:

* ``fbits`` (nf, nw) uint32: bit ``r & 31`` of ``fbits[f, r >> 5]`` is set iff arena
  row ``r`` is a live row whose id filter ``f`` allows. Word ``w`` covers rows
  ``[32 w, 32 w + 32)``: with the 4-bit layout (lists start on 32-row blocks) word w is
  exactly code block w, so a block's allowed lanes are one word.
* ``fcount`` (nf, nlist) int64: allowed live rows per list (0: skip the list unread).
* ``fslot`` (nq,) int64: the filter row of each query (all zeros for one shared filter).

An unfiltered call passes ``NO_FILTER``-shaped stand-ins: ``fbits`` of shape (1, 0).
``is_filtered(fbits)`` is then False and neither ``fcount`` nor ``fslot`` is read, so one
compiled kernel serves both (the test costs one predictable branch per list).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._config import FILTER_SPARSE_FRACTION
from ._rowkeys import lowest_bit  # noqa: F401  (re-exported: tzcnt / rbit + clz)

__all__ = ["is_filtered", "row_allowed", "word_at", "lowest_bit", "list_mode",
           "MODE_SKIP", "MODE_DENSE", "MODE_SPARSE", "MODE_ALL", "no_filter",
           "no_filter_jit"]

MODE_ALL = 0      # unfiltered: every row
MODE_SKIP = 1     # no allowed row: do not read the list
MODE_DENSE = 2    # score every row, admit only allowed ones
MODE_SPARSE = 3   # visit only the set bits


def no_filter():
    """Stand-ins for an unfiltered call: (fbits (1, 0) uint32, fcount (1, 0) int64,
    fslot (1,) int64)."""
    return (np.zeros((1, 0), dtype=np.uint32), np.zeros((1, 0), dtype=np.int64),
            np.zeros(1, dtype=np.int64))


@njit(nogil=True, cache=True)
def no_filter_jit():
    """``no_filter`` for compiled callers (the fused one-query kernels)."""
    return (np.zeros((1, 0), dtype=np.uint32), np.zeros((1, 0), dtype=np.int64),
            np.zeros(1, dtype=np.int64))


@njit(nogil=True, cache=True, inline="always")
def is_filtered(fbits):
    return fbits.shape[1] != 0


@njit(nogil=True, cache=True, inline="always")
def row_allowed(fb, r):
    """Bit of arena row r in one filter row fb (nw,) uint32."""
    return (fb[r >> 5] >> np.uint32(r & 31)) & np.uint32(1) != 0


@njit(nogil=True, cache=True, inline="always")
def word_at(fb, r):
    """The 32 bits of rows [r, r + 32) of fb (r need not be a multiple of 32; rows past
    the end read as 0)."""
    w = r >> 5
    s = r & 31
    lo = np.uint64(fb[w]) if w < fb.shape[0] else np.uint64(0)
    hi = np.uint64(fb[w + 1]) if w + 1 < fb.shape[0] else np.uint64(0)
    both = lo | (hi << np.uint64(32))
    return np.uint32((both >> np.uint64(s)) & np.uint64(0xFFFFFFFF))


@njit(nogil=True, cache=True, inline="always")
def list_mode(fbits, fcount, f, lst, size):
    """How a scan treats list ``lst`` (``size`` live rows) under filter row ``f``."""
    if not is_filtered(fbits):
        return MODE_ALL
    c = fcount[f, lst]
    if c == 0:
        return MODE_SKIP
    if c < size * FILTER_SPARSE_FRACTION:
        return MODE_SPARSE
    return MODE_DENSE
