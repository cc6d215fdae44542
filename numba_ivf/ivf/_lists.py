"""Inverted-list storage shared by the IVF indexes.

One arena per payload: every list is a run of ``caps[l]`` rows starting at
``starts[l]``, of which the first ``sizes[l]`` are live. Scan kernels therefore take a
handful of plain arrays (``payload``, ``ids``, ``starts``, ``sizes``) instead of a list
of arrays.

* Append, small adds: a list that would overflow moves to the end of the arena with
  capacity ``max(needed, IVF_GROWTH * old)``; the arena itself grows geometrically. Each
  add call copies only the lists that outgrow their room (amortised O(1) per vector),
  never all. The holes left behind are reclaimed by a compaction once they exceed the
  live rows.
* Append, bulk adds (at least ``IVF_SPREAD_MIN_ADD_FRACTION`` of the rows already
  stored, e.g. a build fed in chunks): the lists are spread apart in place, each list
  that overflows getting exactly the room it needs, so no holes and no spare room are
  left (a spread copies at most 1 / IVF_SPREAD_MIN_ADD_FRACTION stored rows per added
  one).
* The arena is grown and shrunk in place (``ndarray.resize``: realloc, which glibc does
  with mremap for large blocks, without a copy), so the old and the new arena are never
  alive together; compaction and spreading move the runs inside the arena
  (``_shift_runs``). Only an arena that numpy cannot resize (a view, an array
  referenced elsewhere) is copied, as before.
* Remove: an id -> (list, offset) hash map finds the row without scanning any list; the
  row is overwritten by the last row of its list (FAISS's swap-with-last), so lists stay
  dense and the map is updated for the one row that moved.
* Payloads are 2-D arrays (capacity, width) of any dtype (float32 rows for IVF-Flat,
  uint8 codes for IVF-PQ); all are moved together.
* Arrays may start read-only (memory-mapped from a file): the first mutation copies them
  to memory.
* Blocked nibble payloads (4-bit PQ fast-scan, ``("nibbles", m)``) are stored in the
  ``fastscan`` packed layout, shape (ceil(capacity / 32), ceil(m/2), 32): row r is vector
  ``r % 32`` of block ``r // 32``. Lists need not start on a block: neighbouring lists
  share the block at their boundary (a scan masks the other list's lanes), so no list
  is padded to whole blocks (that padding cost 16-29% of a 4-bit index's codes at
  ~60-100 vectors per list). Moving a run of rows copies each vector's bytes (one per
  pair of sub-quantizers) between lanes, unless the run and its target are whole
  blocks; an append packs codes at the list's tail; swap-with-last moves one vector.

The id map is an open-addressing hash table (linear probing, tombstones) held in three
int64 arrays, built lazily the first time it is needed (a search-only loaded index never
builds it, and ``add`` only maintains a map that exists: adding with default ids never
builds one, which keeps compressed indexes at their codes' size).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from .._config import (FASTSCAN_BLOCK, IVF_GROWTH, IVF_LIST_MIN_CAPACITY,
                       IVF_SPREAD_MIN_ADD_FRACTION)
from ..kernels.common.idmap import (_EMPTY, _TOMB, _map_find, _map_from_lists,
                                    _map_insert_many, _map_lookup_many)

__all__ = ["InvertedLists"]

# Guards the lazy build of an id map (see InvertedLists.map_arrays); builds are rare.
_MAP_LOCK = threading.Lock()

@njit(nogil=True, cache=True)
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

@njit(nogil=True, cache=True)
def _apply_moves(arr, move_dst, move_src, n_moves):
    for m in range(n_moves):
        arr[move_dst[m]] = arr[move_src[m]]


@njit(nogil=True, cache=True, parallel=True)
def _copy_runs(src, dst, src_starts, dst_starts, lengths):
    """dst[dst_starts[r] : +lengths[r]] = src[src_starts[r] : +lengths[r]] for every run.

    Runs must not overlap in ``dst``; each prange iteration writes only its own run.
    """
    for r in prange(lengths.shape[0]):
        a = src_starts[r]
        b = dst_starts[r]
        for o in range(lengths[r]):
            dst[b + o] = src[a + o]


@njit(nogil=True, cache=True, parallel=True)
def _scatter_rows(dst, slots, rows):
    for j in prange(slots.shape[0]):
        dst[slots[j]] = rows[j]


@njit(nogil=True, cache=True)
def _append_slots(labels, starts, sizes, slots, offs):
    """Slot of each new row: appended to its list in input order (sizes is advanced)."""
    for j in range(labels.shape[0]):
        lst = labels[j]
        off = sizes[lst]
        offs[j] = off
        slots[j] = starts[lst] + off
        sizes[lst] = off + 1


@njit(nogil=True, cache=True)
def _lane_byte(r):
    """Byte of row r's vector inside its block (fastscan layout: 0..15 even, 16..31 odd)."""
    k = r & 31
    return 2 * k if k < 16 else 2 * (k - 16) + 1


@njit(nogil=True, cache=True, parallel=True)
def _scatter_nibbles(packed, slots, codes):
    """Pack code row j into the lane of arena row slots[j] (whole bytes: both nibbles
    of a byte belong to the same vector, so rows never share a byte)."""
    m = codes.shape[1]
    for j in prange(slots.shape[0]):
        r = slots[j]
        b = r >> 5
        p = _lane_byte(r)
        for t in range(packed.shape[1]):
            lo = codes[j, 2 * t] & 15
            hi = codes[j, 2 * t + 1] & 15 if 2 * t + 1 < m else 0
            packed[b, t, p] = np.uint8(lo | (hi << 4))


@njit(nogil=True, cache=True, parallel=True)
def _copy_nibble_runs(src, dst, src_starts, dst_starts, lengths):
    """Nibble payload: copy runs of rows vector by vector (each row's m2 bytes from its
    lane to the target's lane). Target runs must not overlap; two runs may share a block
    (lists need not start on one), but never a byte, so prange over runs is safe."""
    for r in prange(lengths.shape[0]):
        a = src_starts[r]
        b = dst_starts[r]
        for o in range(lengths[r]):
            bs = (a + o) >> 5
            ps = _lane_byte(a + o)
            bd = (b + o) >> 5
            pd = _lane_byte(b + o)
            for t in range(src.shape[1]):
                dst[bd, t, pd] = src[bs, t, ps]


@njit(nogil=True, cache=True)
def _apply_nibble_moves(packed, move_dst, move_src, n_moves):
    for mv in range(n_moves):
        bd = move_dst[mv] >> 5
        pd = _lane_byte(move_dst[mv])
        bs = move_src[mv] >> 5
        ps = _lane_byte(move_src[mv])
        for t in range(packed.shape[1]):
            packed[bd, t, pd] = packed[bs, t, ps]


@njit(nogil=True, cache=True)
def _shift_runs(arr, old_starts, new_starts, lengths):
    """Move runs of rows inside ``arr`` (2-D) in place: arr[new + o] <- arr[old + o].

    Runs are given in arena order (ascending old start) and keep it; old runs do not
    overlap, nor do new runs (each new run inside its list's new room). Then a run
    moving left writes only below its old start and above every earlier run's new
    room, and a run moving right only above its old end and below every later run's
    new room: left movers are safe in ascending order (each row ascending), right
    movers in descending order (each row descending), and the two groups never touch
    each other's unread rows. Serial: a run's target may be another run's source.
    """
    w = arr.shape[1]
    for r in range(lengths.shape[0]):
        a = old_starts[r]
        b = new_starts[r]
        if b < a:
            for o in range(lengths[r]):
                for t in range(w):
                    arr[b + o, t] = arr[a + o, t]
    for r in range(lengths.shape[0] - 1, -1, -1):
        a = old_starts[r]
        b = new_starts[r]
        if b > a:
            for o in range(lengths[r] - 1, -1, -1):
                for t in range(w):
                    arr[b + o, t] = arr[a + o, t]


@njit(nogil=True, cache=True)
def _shift_nibble_runs(packed, old_starts, new_starts, lengths):
    """``_shift_runs`` for a blocked nibble payload: each row's bytes move from its
    lane to the target's lane (rows never share a byte, so the same order is safe)."""
    for r in range(lengths.shape[0]):
        a = old_starts[r]
        b = new_starts[r]
        if b < a:
            for o in range(lengths[r]):
                bs, ps = (a + o) >> 5, _lane_byte(a + o)
                bd, pd = (b + o) >> 5, _lane_byte(b + o)
                for t in range(packed.shape[1]):
                    packed[bd, t, pd] = packed[bs, t, ps]
    for r in range(lengths.shape[0] - 1, -1, -1):
        a = old_starts[r]
        b = new_starts[r]
        if b > a:
            for o in range(lengths[r] - 1, -1, -1):
                bs, ps = (a + o) >> 5, _lane_byte(a + o)
                bd, pd = (b + o) >> 5, _lane_byte(b + o)
                for t in range(packed.shape[1]):
                    packed[bd, t, pd] = packed[bs, t, ps]


def _round_up(x, align: int):
    return -(-x // align) * align


def _as_rows(arr):
    """View a 1-D or 2-D array as (rows, width) without copying."""
    # An explicit width: -1 cannot be inferred for an empty array (saving an empty index).
    return arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64)))


class InvertedLists:
    """Growable inverted lists: ``nlist`` runs of rows in shared arenas, plus an id map.

    Parameters
    ----------
    nlist : int
        Number of lists.
    payload : dict of name -> (width, dtype) or ("nibbles", m)
        One arena of shape (capacity, width) per entry (e.g. ``{"data": (d, float32)}``),
        or a blocked 4-bit code arena of shape (capacity / 32, ceil(m/2), 32) uint8.
    align : int, default 1
        List starts and capacities are multiples of ``align`` (32 with nibble payloads).
    """

    def __init__(self, nlist: int, payload: dict, align: int = 1):
        self.nlist = int(nlist)
        self._spec = dict(payload)
        self._nibbles = {name: int(dt) for name, (w, dt) in payload.items()
                         if isinstance(w, str)}
        self.align = int(align)
        self.starts = np.zeros(self.nlist, dtype=np.int64)
        self.caps = np.zeros(self.nlist, dtype=np.int64)
        self.sizes = np.zeros(self.nlist, dtype=np.int64)
        self.ids = np.empty(0, dtype=np.int64)
        self.payload = {name: self._alloc(name, 0) for name in payload}
        self.used = 0  # rows of the arena handed out to lists (live, spare or holes)
        self.ntotal = 0
        self._keys = None  # id map, built on demand
        self._vlist = None
        self._voff = None
        self._shift = 64
        self._map_fill = 0  # live keys + tombstones
        self.version = 0    # bumped by every add/remove: prepared filters key on it

    # -- construction from stored arrays ---------------------------------------------
    @classmethod
    def from_arrays(cls, starts, sizes, ids, payload: dict, *, align: int = 1,
                    nibbles: dict | None = None) -> "InvertedLists":
        """Wrap stored (possibly read-only, memory-mapped) arrays without copying.

        Lists are taken to be full (capacity = size rounded up to ``align``), so a
        list's first append beyond that moves it. ``nibbles`` names the blocked
        payloads (name -> m).
        """
        self = cls.__new__(cls)
        self.nlist = int(starts.shape[0])
        self.align = int(align)
        self._nibbles = dict(nibbles or {})
        self._spec = {name: (("nibbles", self._nibbles[name]) if name in self._nibbles
                             else (arr.shape[1], arr.dtype))
                      for name, arr in payload.items()}
        self.starts = np.array(starts, dtype=np.int64)
        self.sizes = np.array(sizes, dtype=np.int64)
        self.caps = _round_up(self.sizes, self.align)
        self.ids = ids
        self.payload = dict(payload)
        self.used = int(ids.shape[0])
        self.ntotal = int(self.sizes.sum())
        self._keys = None
        self._vlist = None
        self._voff = None
        self._shift = 64
        self._map_fill = 0
        self.version = 0
        return self

    def adopt_arrays(self, starts, sizes, ids, arrays: dict) -> "InvertedLists":
        """Lists over stored arrays laid out like ``compact_arrays`` output, checked
        against this object's payload spec and alignment; raises ValueError naming the
        first inconsistency. Arrays are wrapped, not copied."""
        n = ids.shape[0]
        if (sizes < 0).any() or (starts < 0).any():
            raise ValueError("list_starts/list_sizes hold negative values")
        if (starts % self.align).any():
            raise ValueError(f"list_starts are not multiples of {self.align}")
        caps = _round_up(sizes, self.align)
        order = np.argsort(starts, kind="stable")
        ends = starts[order] + caps[order]
        if (ends > n).any() or (ends[:-1] > starts[order][1:]).any():
            raise ValueError("list_starts/list_sizes do not tile the stored rows")
        payload = {}
        for name, (w, dt) in self._spec.items():
            if name not in arrays:
                raise ValueError(f"array {name!r} is missing")
            arr = arrays[name]
            if name in self._nibbles:
                shape, dtype = ((-(-n // FASTSCAN_BLOCK), (self._nibbles[name] + 1) // 2,
                                 FASTSCAN_BLOCK), np.dtype(np.uint8))
            else:
                shape, dtype = (n, int(w)), np.dtype(dt)
            if n % self.align or arr.shape != shape or arr.dtype != dtype:
                raise ValueError(f"array {name!r} has dtype {arr.dtype} and shape "
                                 f"{arr.shape}, expected {dtype} and {shape}")
            payload[name] = arr
        return type(self).from_arrays(starts, sizes, ids, payload, align=self.align,
                                      nibbles=self._nibbles)

    def compact_arrays(self):
        """Live rows only, list after list (runs padded to ``align``):
        (starts, sizes, ids, payload dict). Padding ids are -1."""
        caps = _round_up(self.sizes, self.align)
        new_starts = np.zeros(self.nlist, dtype=np.int64)
        np.cumsum(caps[:-1], out=new_starts[1:])
        total = int(caps.sum())
        ids = np.full(total, -1, dtype=np.int64)
        _copy_runs(_as_rows(self.ids), _as_rows(ids), self.starts, new_starts, self.sizes)
        payload = {}
        for name, arr in self.payload.items():
            out = self._alloc(name, total)
            self._copy_payload(name, arr, out, self.starts, new_starts, self.sizes)
            payload[name] = out
        return new_starts, self.sizes.copy(), ids, payload

    # -- payload kinds -----------------------------------------------------------------
    def _alloc_shape(self, name: str, rows: int) -> tuple:
        """Shape of an arena of ``rows`` rows for payload ``name``."""
        if name in self._nibbles:
            return (-(-rows // FASTSCAN_BLOCK), (self._nibbles[name] + 1) // 2,
                    FASTSCAN_BLOCK)
        return (rows, int(self._spec[name][0]))

    def _alloc(self, name: str, rows: int) -> np.ndarray:
        """A zeroed arena of ``rows`` rows for payload ``name``."""
        dtype = np.uint8 if name in self._nibbles else np.dtype(self._spec[name][1])
        return np.zeros(self._alloc_shape(name, rows), dtype=dtype)

    def _copy_payload(self, name, src, dst, src_starts, dst_starts, lengths):
        """Copy runs of rows. A nibble payload copies whole blocks when every run and
        target starts on a block and ends on one (or at the end of the arena's live
        rows), else vector by vector between lanes."""
        if name not in self._nibbles:
            _copy_runs(src, dst, src_starts, dst_starts, lengths)
        elif not ((src_starts | dst_starts | lengths) % FASTSCAN_BLOCK).any():
            _copy_runs(src, dst, src_starts // FASTSCAN_BLOCK, dst_starts // FASTSCAN_BLOCK,
                       lengths // FASTSCAN_BLOCK)
        else:
            _copy_nibble_runs(src, dst, src_starts, dst_starts, lengths)

    def codes_of_row(self, name: str, row: int, m: int) -> np.ndarray:
        """Payload ``name`` of one arena row, (width,) (nibble payloads: (m,) uint8)."""
        arr = self.payload[name]
        if name not in self._nibbles:
            return np.array(arr[row])
        byte = arr[row // FASTSCAN_BLOCK, :, int(_lane_byte(row))]
        out = np.empty(2 * byte.shape[0], dtype=np.uint8)
        out[0::2] = byte & 15
        out[1::2] = byte >> 4
        return out[:m]

    def list_of_row(self, row: int) -> int:
        """The list whose live rows contain arena row ``row`` (-1 if none)."""
        hit = np.flatnonzero((self.starts <= row) & (row < self.starts + self.sizes))
        return int(hit[0]) if hit.size else -1

    def map_nbytes(self) -> int:
        """Bytes held by the id map (0 until it is first needed)."""
        if self._keys is None:
            return 0
        return self._keys.nbytes + self._vlist.nbytes + self._voff.nbytes

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
        self._resize_arena(_round_up(new_cap, self.align))

    def _resize_arena(self, rows: int):
        """Give every arena ``rows`` rows (more or fewer), keeping the first ``used``.

        In place where numpy can (``ndarray.resize`` reallocates and zeroes the new
        rows; ``refcheck`` refuses an array that is a view or referenced elsewhere, so
        no one holding the old buffer sees it move); else a zeroed copy. Each array is
        resized by its own statement, so that no local name adds a reference."""
        try:
            self.ids.resize(rows, refcheck=True)
        except ValueError:
            ids = np.empty(rows, dtype=np.int64)
            keep = min(self.used, rows)
            ids[:keep] = self.ids[:keep]
            self.ids = ids
        for name in list(self.payload):
            shape = self._alloc_shape(name, rows)
            try:
                self.payload[name].resize(shape, refcheck=True)
            except ValueError:
                grown = self._alloc(name, rows)
                # Nibbles: the last used block may be partly used, copy it too.
                used = (-(-self.used // FASTSCAN_BLOCK) if name in self._nibbles
                        else self.used)
                used = min(used, grown.shape[0])
                grown[:used] = self.payload[name][:used]
                self.payload[name] = grown

    def _relayout(self, new_caps: np.ndarray, shrink: bool):
        """Give every list ``new_caps[l] >= sizes[l]`` rows, packed in the arena's
        current list order from row 0, moving runs in place (``_shift_runs``): the arena
        grows first when it must, and with ``shrink`` ends at the last list's room."""
        order = np.argsort(self.starts, kind="stable")
        caps_o = new_caps[order]
        starts_o = np.zeros(self.nlist, dtype=np.int64)
        np.cumsum(caps_o[:-1], out=starts_o[1:])
        total = int(caps_o.sum())
        if total > self.ids.shape[0]:
            self._resize_arena(total)
        old_o = self.starts[order]
        sizes_o = self.sizes[order]
        _shift_runs(_as_rows(self.ids), old_o, starts_o, sizes_o)
        for name in self.payload:
            if name in self._nibbles:
                _shift_nibble_runs(self.payload[name], old_o, starts_o, sizes_o)
            else:
                _shift_runs(self.payload[name], old_o, starts_o, sizes_o)
        self.starts = np.empty(self.nlist, dtype=np.int64)
        self.starts[order] = starts_o
        self.caps = np.asarray(new_caps, dtype=np.int64).copy()
        self.used = total
        if shrink and total < self.ids.shape[0]:
            self._resize_arena(total)

    def _relocate(self, lists: np.ndarray, new_caps: np.ndarray):
        """Move ``lists`` to fresh runs of ``new_caps`` rows at the end of the arena."""
        new_starts = self.used + np.concatenate(([0], np.cumsum(new_caps)[:-1]))
        self._reserve_arena(self.used + int(new_caps.sum()))
        old_starts = self.starts[lists]
        lengths = self.sizes[lists]
        _copy_runs(_as_rows(self.ids), _as_rows(self.ids), old_starts, new_starts, lengths)
        for name, arr in self.payload.items():
            self._copy_payload(name, arr, arr, old_starts, new_starts, lengths)
        self.starts[lists] = new_starts
        self.caps[lists] = new_caps
        self.used += int(new_caps.sum())

    def _compact_if_wasteful(self):
        live_room = int(self.caps.sum())
        if self.used - live_room <= max(live_room, 4 * IVF_LIST_MIN_CAPACITY):
            return
        # In place: lists slide down over the holes, then the arena shrinks to them.
        self._relayout(self.caps.copy(), shrink=True)

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

    def map_arrays(self):
        """The id map as (keys, vlist, voff, shift) for kernels that look ids up
        themselves (``kernels.common.idmap.map_row``); built first if absent."""
        # Concurrent searches may both find the map absent: one builds it, and none
        # reads the four arrays while another thread replaces them.
        with _MAP_LOCK:
            self._map_ready()
            return self._keys, self._vlist, self._voff, self._shift

    def lookup(self, ids: np.ndarray):
        """(list, offset) of each id, -1 for absent ids. ``ids`` int64 (n,)."""
        keys, vlist, voff, shift = self.map_arrays()
        out_list = np.empty(ids.shape[0], dtype=np.int64)
        out_off = np.empty(ids.shape[0], dtype=np.int64)
        _map_lookup_many(keys, vlist, voff, shift, ids, out_list, out_off)
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
        keep_map = self._keys is not None  # an absent map is rebuilt from the lists
        if keep_map:
            self._map_ready(n)
        counts = np.bincount(labels, minlength=self.nlist)
        need = self.sizes + counts
        grow = np.flatnonzero(need > self.caps)
        if grow.size and n >= IVF_SPREAD_MIN_ADD_FRACTION * self.ntotal:
            # Bulk add: spread the lists apart in place, each growing one to exactly
            # what it needs (a build fed in chunks ends without spare room).
            new_caps = self.caps.copy()
            new_caps[grow] = _round_up(np.maximum(need[grow], IVF_LIST_MIN_CAPACITY),
                                       self.align)
            self._relayout(new_caps, shrink=False)
        elif grow.size:
            new_caps = np.maximum(need[grow],
                                  np.ceil(self.caps[grow] * IVF_GROWTH).astype(np.int64))
            new_caps = _round_up(np.maximum(new_caps, IVF_LIST_MIN_CAPACITY), self.align)
            self._relocate(grow, new_caps)
            self._compact_if_wasteful()
        slots = np.empty(n, dtype=np.int64)
        offs = np.empty(n, dtype=np.int64)
        _append_slots(labels, self.starts, self.sizes, slots, offs)
        _scatter_rows(self.ids, slots, ids)
        for name, arr in self.payload.items():
            if name in self._nibbles:
                _scatter_nibbles(arr, slots, np.ascontiguousarray(rows[name],
                                                                  dtype=np.uint8))
            else:
                _scatter_rows(arr, slots, rows[name].reshape(n, arr.shape[1]))
        if keep_map:
            self._map_fill -= _map_insert_many(self._keys, self._vlist, self._voff,
                                               self._shift, ids, labels, offs)
            self._map_fill += n
        self.ntotal += n
        self.version += 1

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
        for name, arr in self.payload.items():
            if name in self._nibbles:
                _apply_nibble_moves(arr, move_dst, move_src, n_moves)
            else:
                _apply_moves(arr, move_dst, move_src, n_moves)
        self.ntotal -= int(n_removed)
        self.version += 1
        return int(n_removed)
