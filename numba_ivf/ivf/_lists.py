"""Inverted-list storage shared by the IVF indexes.

One arena per payload: every list is a run of ``caps[l]`` rows starting at
``starts[l]``, of which the first ``sizes[l]`` are live. Scan kernels therefore take a
handful of plain arrays (``payload``, ``ids``, ``starts``, ``sizes``) instead of a list
of arrays.

* Append: a list that would overflow moves to the end of the arena with capacity
  ``max(needed, IVF_GROWTH * old)``; the arena itself grows geometrically. Each add call
  copies only the lists that outgrow their room (amortised O(1) per vector), never all.
  The holes left behind are reclaimed by a compaction once they exceed the live rows.
* Remove: an id -> (list, offset) hash map finds the row without scanning any list; the
  row is overwritten by the last row of its list (FAISS's swap-with-last), so lists stay
  dense and the map is updated for the one row that moved.
* Payloads are 2-D arrays (capacity, width) of any dtype (float32 rows for IVF-Flat,
  uint8 codes for IVF-PQ); all are moved together.
* Arrays may start read-only (memory-mapped from a file): the first mutation copies them
  to memory.

The id map is an open-addressing hash table (linear probing, tombstones) held in three
int64 arrays, built lazily the first time it is needed (a search-only loaded index never
builds it).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import IVF_GROWTH, IVF_LIST_MIN_CAPACITY

__all__ = ["InvertedLists"]

_EMPTY = -1
_TOMB = -2
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


# -- hash map kernels (serial: the map is shared state) ---------------------------------

@njit(cache=True, inline="always")
def _slot0(key, shift):
    return np.int64((np.uint64(key) * _HASH_MUL) >> np.uint64(shift))


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
def _map_lookup_many(keys, vlist, voff, shift, query, out_list, out_off):
    for j in range(query.shape[0]):
        pos = _map_find(keys, shift, query[j])
        if pos < 0:
            out_list[j] = -1
            out_off[j] = -1
        else:
            out_list[j] = vlist[pos]
            out_off[j] = voff[pos]


@njit(cache=True)
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


@njit(cache=True)
def _remove_many(keys, vlist, voff, shift, ids, starts, sizes, remove, move_dst,
                 move_src):
    """Swap-with-last removal of every present id in ``remove``.

    Updates ids, sizes and the map in place and records the row moves
    (move_dst[m] <- move_src[m], to be applied in order to every payload). Returns
    (number removed, number of moves).
    """
    n_removed = 0
    n_moves = 0
    for j in range(remove.shape[0]):
        pos = _map_find(keys, shift, remove[j])
        if pos < 0:
            continue
        lst = vlist[pos]
        off = voff[pos]
        last = sizes[lst] - 1
        dst = starts[lst] + off
        src = starts[lst] + last
        if src != dst:
            moved = ids[src]
            ids[dst] = moved
            voff[_map_find(keys, shift, moved)] = off
            move_dst[n_moves] = dst
            move_src[n_moves] = src
            n_moves += 1
        sizes[lst] = last
        keys[pos] = _TOMB
        n_removed += 1
    return n_removed, n_moves


# -- row movement kernels ------------------------------------------------------------------

@njit(cache=True)
def _apply_moves(arr, move_dst, move_src, n_moves):
    for m in range(n_moves):
        arr[move_dst[m]] = arr[move_src[m]]


@njit(cache=True, parallel=True)
def _copy_runs(src, dst, src_starts, dst_starts, lengths):
    """dst[dst_starts[r] : +lengths[r]] = src[src_starts[r] : +lengths[r]] for every run.

    Runs must not overlap in ``dst``; each prange iteration writes only its own run.
    """
    for r in prange(lengths.shape[0]):
        a = src_starts[r]
        b = dst_starts[r]
        for o in range(lengths[r]):
            dst[b + o] = src[a + o]


@njit(cache=True, parallel=True)
def _scatter_rows(dst, slots, rows):
    for j in prange(slots.shape[0]):
        dst[slots[j]] = rows[j]


@njit(cache=True)
def _append_slots(labels, starts, sizes, slots, offs):
    """Slot of each new row: appended to its list in input order (sizes is advanced)."""
    for j in range(labels.shape[0]):
        lst = labels[j]
        off = sizes[lst]
        offs[j] = off
        slots[j] = starts[lst] + off
        sizes[lst] = off + 1


def _as_rows(arr):
    """View a 1-D or 2-D array as (rows, width) without copying."""
    return arr.reshape(arr.shape[0], -1)


class InvertedLists:
    """Growable inverted lists: ``nlist`` runs of rows in shared arenas, plus an id map.

    Parameters
    ----------
    nlist : int
        Number of lists.
    payload : dict of name -> (width, dtype)
        One arena of shape (capacity, width) per entry (e.g. ``{"data": (d, float32)}``).
    """

    def __init__(self, nlist: int, payload: dict):
        self.nlist = int(nlist)
        self.starts = np.zeros(self.nlist, dtype=np.int64)
        self.caps = np.zeros(self.nlist, dtype=np.int64)
        self.sizes = np.zeros(self.nlist, dtype=np.int64)
        self.ids = np.empty(0, dtype=np.int64)
        self.payload = {name: np.empty((0, int(width)), dtype=np.dtype(dtype))
                        for name, (width, dtype) in payload.items()}
        self.used = 0  # rows of the arena handed out to lists (live, spare or holes)
        self.ntotal = 0
        self._keys = None  # id map, built on demand
        self._vlist = None
        self._voff = None
        self._shift = 64
        self._map_fill = 0  # live keys + tombstones

    # -- construction from stored arrays ---------------------------------------------
    @classmethod
    def from_arrays(cls, starts, sizes, ids, payload: dict) -> "InvertedLists":
        """Wrap stored (possibly read-only, memory-mapped) arrays without copying.

        Lists are taken to be full (capacity = size), so a list's first append moves it.
        """
        self = cls.__new__(cls)
        self.nlist = int(starts.shape[0])
        self.starts = np.array(starts, dtype=np.int64)
        self.sizes = np.array(sizes, dtype=np.int64)
        self.caps = self.sizes.copy()
        self.ids = ids
        self.payload = dict(payload)
        self.used = int(ids.shape[0])
        self.ntotal = int(self.sizes.sum())
        self._keys = None
        self._vlist = None
        self._voff = None
        self._shift = 64
        self._map_fill = 0
        return self

    def compact_arrays(self):
        """Live rows only, list after list: (starts, sizes, ids, payload dict)."""
        new_starts = np.zeros(self.nlist, dtype=np.int64)
        np.cumsum(self.sizes[:-1], out=new_starts[1:])
        ids = np.empty(self.ntotal, dtype=np.int64)
        _copy_runs(_as_rows(self.ids), _as_rows(ids), self.starts, new_starts, self.sizes)
        payload = {}
        for name, arr in self.payload.items():
            out = np.empty((self.ntotal, arr.shape[1]), dtype=arr.dtype)
            _copy_runs(arr, out, self.starts, new_starts, self.sizes)
            payload[name] = out
        return new_starts, self.sizes.copy(), ids, payload

    # -- mutation helpers --------------------------------------------------------------
    def _ensure_writable(self):
        # Memory-mapped arrays are read-only: copy everything to memory once.
        if not self.ids.flags.writeable or not all(a.flags.writeable
                                                    for a in self.payload.values()):
            self.ids = np.array(self.ids)
            self.payload = {name: np.array(a) for name, a in self.payload.items()}

    def _reserve_arena(self, rows: int):
        cap = self.ids.shape[0]
        if rows <= cap:
            return
        new_cap = max(rows, int(np.ceil(cap * IVF_GROWTH)), IVF_LIST_MIN_CAPACITY)
        ids = np.empty(new_cap, dtype=np.int64)
        ids[:self.used] = self.ids[:self.used]
        self.ids = ids
        for name, arr in self.payload.items():
            grown = np.zeros((new_cap, arr.shape[1]), dtype=arr.dtype)
            grown[:self.used] = arr[:self.used]
            self.payload[name] = grown

    def _relocate(self, lists: np.ndarray, new_caps: np.ndarray):
        """Move ``lists`` to fresh runs of ``new_caps`` rows at the end of the arena."""
        new_starts = self.used + np.concatenate(([0], np.cumsum(new_caps)[:-1]))
        self._reserve_arena(self.used + int(new_caps.sum()))
        old_starts = self.starts[lists]
        lengths = self.sizes[lists]
        _copy_runs(_as_rows(self.ids), _as_rows(self.ids), old_starts, new_starts, lengths)
        for arr in self.payload.values():
            _copy_runs(arr, arr, old_starts, new_starts, lengths)
        self.starts[lists] = new_starts
        self.caps[lists] = new_caps
        self.used += int(new_caps.sum())

    def _compact_if_wasteful(self):
        live_room = int(self.caps.sum())
        if self.used - live_room <= max(live_room, 4 * IVF_LIST_MIN_CAPACITY):
            return
        new_starts = np.zeros(self.nlist, dtype=np.int64)
        np.cumsum(self.caps[:-1], out=new_starts[1:])
        cap = live_room
        ids = np.empty(cap, dtype=np.int64)
        _copy_runs(_as_rows(self.ids), _as_rows(ids), self.starts, new_starts, self.sizes)
        self.ids = ids
        for name, arr in self.payload.items():
            out = np.zeros((cap, arr.shape[1]), dtype=arr.dtype)
            _copy_runs(arr, out, self.starts, new_starts, self.sizes)
            self.payload[name] = out
        self.starts = new_starts
        self.used = cap

    # -- id map ------------------------------------------------------------------------
    def _build_map(self, min_capacity: int = 0):
        need = max(16, 4 * max(self.ntotal, min_capacity))
        bits = int(need - 1).bit_length()
        self._keys = np.full(1 << bits, _EMPTY, dtype=np.int64)
        self._vlist = np.empty(1 << bits, dtype=np.int64)
        self._voff = np.empty(1 << bits, dtype=np.int64)
        self._shift = 64 - bits
        _map_from_lists(self._keys, self._vlist, self._voff, self._shift, self.ids,
                        self.starts, self.sizes)
        self._map_fill = self.ntotal

    def _map_ready(self, extra: int = 0):
        # Load (live + tombstones) stays <= 1/2 so linear probes stay short.
        if self._keys is None or 2 * (self._map_fill + extra) > self._keys.shape[0]:
            self._build_map(self.ntotal + extra)

    def lookup(self, ids: np.ndarray):
        """(list, offset) of each id, -1 for absent ids. ``ids`` int64 (n,)."""
        self._map_ready()
        out_list = np.empty(ids.shape[0], dtype=np.int64)
        out_off = np.empty(ids.shape[0], dtype=np.int64)
        _map_lookup_many(self._keys, self._vlist, self._voff, self._shift, ids,
                         out_list, out_off)
        return out_list, out_off

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.lookup(ids)[0] >= 0

    def row_of(self, id_: int) -> int:
        """Arena row of ``id_``, or -1."""
        lst, off = self.lookup(np.array([id_], dtype=np.int64))
        return -1 if lst[0] < 0 else int(self.starts[lst[0]] + off[0])

    # -- public mutations --------------------------------------------------------------
    def add(self, labels: np.ndarray, ids: np.ndarray, rows: dict):
        """Append rows to lists. The caller has checked that ids are new and unique.

        labels int64 (n,) in [0, nlist); ids int64 (n,); rows name -> (n, width).
        """
        n = labels.shape[0]
        if n == 0:
            return
        self._ensure_writable()
        self._map_ready(n)
        counts = np.bincount(labels, minlength=self.nlist)
        need = self.sizes + counts
        grow = np.flatnonzero(need > self.caps)
        if grow.size:
            new_caps = np.maximum(need[grow],
                                  np.ceil(self.caps[grow] * IVF_GROWTH).astype(np.int64))
            new_caps = np.maximum(new_caps, IVF_LIST_MIN_CAPACITY)
            self._relocate(grow, new_caps)
            self._compact_if_wasteful()
        slots = np.empty(n, dtype=np.int64)
        offs = np.empty(n, dtype=np.int64)
        _append_slots(labels, self.starts, self.sizes, slots, offs)
        _scatter_rows(self.ids, slots, ids)
        for name, arr in self.payload.items():
            _scatter_rows(arr, slots, rows[name].reshape(n, arr.shape[1]))
        self._map_fill -= _map_insert_many(self._keys, self._vlist, self._voff,
                                           self._shift, ids, labels, offs)
        self._map_fill += n
        self.ntotal += n

    def remove(self, ids: np.ndarray) -> int:
        """Remove the present ids (absent ones are ignored); returns how many."""
        if ids.shape[0] == 0 or self.ntotal == 0:
            return 0
        self._ensure_writable()
        self._map_ready()
        move_dst = np.empty(ids.shape[0], dtype=np.int64)
        move_src = np.empty(ids.shape[0], dtype=np.int64)
        n_removed, n_moves = _remove_many(self._keys, self._vlist, self._voff,
                                          self._shift, self.ids, self.starts, self.sizes,
                                          ids, move_dst, move_src)
        for arr in self.payload.values():
            _apply_moves(arr, move_dst, move_src, n_moves)
        self.ntotal -= int(n_removed)
        return int(n_removed)
