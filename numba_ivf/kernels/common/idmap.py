"""The id -> (list, offset) hash map of the inverted lists, as Numba kernels.

An open-addressing table (linear probing, tombstones) in three int64 arrays: ``keys``
(the ids; ``_EMPTY`` / ``_TOMB`` mark free slots), ``vlist`` and ``voff``; its size is a
power of two and ``shift = 64 - log2(size)`` picks a slot by Fibonacci hashing. The
storage class (``numba_ivf.ivf._lists``) owns and sizes the table; these kernels read and
write it, and search kernels that re-rank by id (``refine``) look ids up with
``map_row``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_EMPTY = -1
_TOMB = -2
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


@njit(nogil=True, cache=True, inline="always")
def _slot0(key, shift):
    return np.int64((np.uint64(key) * _HASH_MUL) >> np.uint64(shift))


@njit(nogil=True, cache=True)
def _map_find(keys, shift, key):
    """Position of ``key`` in the table, or -1."""
    mask = keys.shape[0] - 1
    pos = _slot0(key, shift)
    while True:
        k = keys[pos]
        if k == key:
            return pos
        if k == _EMPTY:
            return -1
        pos = (pos + 1) & mask


@njit(nogil=True, cache=True)
def _map_insert_many(keys, vlist, voff, shift, new_keys, lists, offs):
    """Insert keys known to be absent; returns how many tombstones were reused."""
    mask = keys.shape[0] - 1
    reused = 0
    for j in range(new_keys.shape[0]):
        pos = _slot0(new_keys[j], shift)
        while keys[pos] >= 0:
            pos = (pos + 1) & mask
        if keys[pos] == _TOMB:
            reused += 1
        keys[pos] = new_keys[j]
        vlist[pos] = lists[j]
        voff[pos] = offs[j]
    return reused


@njit(nogil=True, cache=True)
def _map_lookup_many(keys, vlist, voff, shift, query, out_list, out_off):
    for j in range(query.shape[0]):
        pos = _map_find(keys, shift, query[j])
        if pos < 0:
            out_list[j] = -1
            out_off[j] = -1
        else:
            out_list[j] = vlist[pos]
            out_off[j] = voff[pos]


@njit(nogil=True, cache=True)
def _map_from_lists(keys, vlist, voff, shift, ids, starts, sizes):
    mask = keys.shape[0] - 1
    for lst in range(starts.shape[0]):
        s = starts[lst]
        for o in range(sizes[lst]):
            key = ids[s + o]
            pos = _slot0(key, shift)
            while keys[pos] >= 0:
                pos = (pos + 1) & mask
            keys[pos] = key
            vlist[pos] = lst
            voff[pos] = o


@njit(nogil=True, cache=True)
def map_row(keys, vlist, voff, shift, starts, key):
    """Arena row of id ``key`` (``starts[list] + offset``), or -1 if absent."""
    pos = _map_find(keys, shift, key)
    if pos < 0:
        return -1
    return starts[vlist[pos]] + voff[pos]
