"""Row filters as the scans see them: one bit per arena row, counts per list.

A filtered search turns its filter once per call into the index's own row order
(``numba_ivf.filters.prepare``); the scan kernels then test bits, never ids. The three
arrays every filtered kernel takes:

* ``fbits`` (nf, nw) uint32: bit ``r & 31`` of ``fbits[f, r >> 5]`` is set iff arena
  row ``r`` is a live row whose id filter ``f`` allows. Word ``w`` covers rows
  ``[32 w, 32 w + 32)``: in the 4-bit layout that is code block w (row r is vector
  r % 32 of block r // 32), so a block's allowed lanes are one word. Lists need not
  start on a block: a word shared by two lists holds both lists' allowed rows, so a
  scan still masks the lanes outside its own list, as it does unfiltered.
* ``fcount`` (nf, nlist) int64: allowed live rows per list (0: skip the list unread).
* ``fslot`` (nq,) int64: the filter row of each query (all zeros for one shared filter).

An unfiltered call passes ``NO_FILTER``-shaped stand-ins: ``fbits`` of shape (1, 0).
``is_filtered(fbits)`` is then False and neither ``fcount`` nor ``fslot`` is read, so one
compiled kernel serves both (the test costs one predictable branch per list).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from ..._config import FILTER_SPARSE_FRACTION
from ..scan._rowkeys import lowest_bit  # noqa: F401  (re-exported: tzcnt / rbit + clz)

__all__ = ["is_filtered", "row_allowed", "word_at", "lowest_bit", "list_mode",
           "MODE_SKIP", "MODE_DENSE", "MODE_SPARSE", "MODE_ALL", "no_filter",
           "no_filter_jit", "admits", "block_lanes", "row_list_mode", "row_list_count"]

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


# One filter row, or None: the workers take fb = fbits[f] and fc = fcount[f], or None
# for an unfiltered call. A worker called with None is compiled apart and these fold to
# constants in it, so it is the unfiltered code exactly (one compiled driver still
# serves both; it branches once on ``is_filtered``). Run-time tests instead (one per
# list and one per block) made an unfiltered serial 4-bit scan 5-7% slower.

def admits(fb, r):
    """Whether filter row fb (nw,) uint32 allows arena row r; True if fb is None.
    Compiled code only (as the others below)."""
    raise NotImplementedError("admits is only callable from Numba-compiled code")


@overload(admits, jit_options={"cache": True})
def _ol_admits(fb, r):
    if isinstance(fb, types.NoneType):
        return lambda fb, r: True
    return lambda fb, r: row_allowed(fb, r)


def block_lanes(fb, w):
    """Word w of filter row fb (nw,) uint32 as uint64: the allowed rows [32 w, 32 w +
    32) (with the 4-bit layout, the allowed lanes of code block w); all 32 if None."""
    raise NotImplementedError("block_lanes is only callable from Numba-compiled code")


@overload(block_lanes, jit_options={"cache": True})
def _ol_block_lanes(fb, w):
    if isinstance(fb, types.NoneType):
        return lambda fb, w: np.uint64(0xFFFFFFFF)
    return lambda fb, w: np.uint64(fb[w])


def row_list_mode(fc, lst, size):
    """``list_mode`` for one filter row fc = fcount[f] (nlist,) int64; MODE_ALL if fc
    is None."""
    raise NotImplementedError("row_list_mode is only callable from Numba-compiled code")


@overload(row_list_mode, jit_options={"cache": True})
def _ol_row_list_mode(fc, lst, size):
    if isinstance(fc, types.NoneType):
        return lambda fc, lst, size: MODE_ALL

    def impl(fc, lst, size):
        c = fc[lst]                   # the rule of list_mode
        if c == 0:
            return MODE_SKIP
        if c < size * FILTER_SPARSE_FRACTION:
            return MODE_SPARSE
        return MODE_DENSE
    return impl


def row_list_count(fc, lst, size):
    """Allowed rows of list lst (``size`` live rows) under filter row fc; size if None."""
    raise NotImplementedError("row_list_count is only callable from Numba-compiled code")


@overload(row_list_count, jit_options={"cache": True})
def _ol_row_list_count(fc, lst, size):
    if isinstance(fc, types.NoneType):
        return lambda fc, lst, size: size
    return lambda fc, lst, size: fc[lst]
