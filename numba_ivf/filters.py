"""Id filters for search and range_search: which stored ids a query may return.

``search(q, k, filter=...)`` accepts

* a boolean array indexed by id: ``allowed[id]`` True means the id may be returned; ids
  at or past ``len(allowed)`` are not allowed;
* an integer array of allowed ids (any order; duplicates and absent ids are fine);
* an :class:`IDFilter` (from either of those or a half-open id range, combined with
  ``&``, ``|``, ``~``; prepared once, reusable across calls and indexes);
* one filter per query: a sequence of nq of the above, or
  :meth:`IDFilter.per_query` (CSR rows of allowed ids).

Each call turns the filter once into the index's own row order (``prepare``): one bit
per stored row and a count of allowed rows per list (layout in
``kernels.filtering._bits``), so the scans test bits and never look ids up or call
Python.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

__all__ = ["IDFilter", "RowFilter", "as_filter", "prepare"]


def _mask_array(mask, name="filter") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} as a mask must be a boolean array indexed by id; got "
                        f"dtype {arr.dtype}. Pass allowed ids as an integer array.")
    if arr.ndim != 1:
        raise ValueError(f"{name} as a mask must be 1-D (one entry per id); got shape "
                         f"{arr.shape}. For one mask per query pass a sequence of nq "
                         f"masks.")
    return np.ascontiguousarray(arr)


def _id_array(ids, name="filter") -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} as allowed ids must be integers; got dtype {arr.dtype}.")
    if arr.ndim != 1:
        raise ValueError(f"{name} as allowed ids must be 1-D; got shape {arr.shape}.")
    if arr.dtype.kind == "i" and arr.min() < 0:
        bad = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"{name}: ids must be >= 0; got {arr[bad]} at position {bad}.")
    if arr.dtype == np.uint64:          # past int64: never stored, drop before the cast
        arr = arr[arr <= np.iinfo(np.int64).max]
    return np.ascontiguousarray(arr, dtype=np.int64)


class IDFilter:
    """A set of allowed ids, prepared once and reusable across calls and indexes.

    Build one with ``IDFilter(mask_or_ids)``, :meth:`from_mask`, :meth:`from_ids` or
    :meth:`range`, and combine with ``&`` (both), ``|`` (either) and ``~`` (not).

    Examples
    --------
    >>> import numpy as np
    >>> from numba_ivf import IDFilter
    >>> f = IDFilter.range(0, 100) & ~IDFilter.from_ids([3, 5])
    >>> f.allows(np.array([2, 3, 99, 100])).tolist()
    [True, False, True, False]
    """

    __slots__ = ("_op", "_a", "_b", "_mask_cache", "_rows", "__weakref__")

    def __init__(self, allowed):
        if isinstance(allowed, IDFilter):
            self._op, self._a, self._b = allowed._op, allowed._a, allowed._b
        elif np.asarray(allowed).dtype == np.bool_:
            self._op, self._a, self._b = "mask", _mask_array(allowed).copy(), None
        else:
            self._op, self._a, self._b = "ids", np.unique(_id_array(allowed)), None
        self._mask_cache = None
        self._rows = None

    @classmethod
    def _node(cls, op, a, b=None) -> "IDFilter":
        self = cls.__new__(cls)
        self._op, self._a, self._b, self._mask_cache = op, a, b, None
        self._rows = None
        return self

    # Pickled as its definition only: the cached row bits belong to an index in this
    # process (and hold a weakref), so a copy sent to a Dask worker prepares its own.
    def __reduce__(self):
        return (IDFilter._node, (self._op, self._a, self._b))

    @classmethod
    def from_mask(cls, mask) -> "IDFilter":
        """Allowed: the ids i with ``mask[i]`` True (ids past the mask are not)."""
        return cls._node("mask", _mask_array(mask).copy())

    @classmethod
    def from_ids(cls, ids) -> "IDFilter":
        """Allowed: the given ids (any order; duplicates and absent ids are fine)."""
        return cls._node("ids", np.unique(_id_array(ids)))

    @classmethod
    def range(cls, start: int, stop: int) -> "IDFilter":
        """Allowed: ids in the half-open range [start, stop)."""
        for name, v in (("start", start), ("stop", stop)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"IDFilter.range: {name} must be an integer; got {v!r}.")
        return cls._node("range", (max(int(start), 0), max(int(stop), 0)))

    @staticmethod
    def per_query(indptr, ids) -> "PerQueryFilter":
        """One filter per query from CSR rows: query i may return
        ``ids[indptr[i]:indptr[i+1]]``."""
        return PerQueryFilter.from_csr(indptr, ids)

    def __and__(self, other):
        return IDFilter._node("and", self, _coerce(other))

    def __or__(self, other):
        return IDFilter._node("or", self, _coerce(other))

    __rand__ = __and__
    __ror__ = __or__

    def __invert__(self):
        return IDFilter._node("not", self)

    def __repr__(self) -> str:
        if self._op == "mask":
            return f"IDFilter.from_mask(<{int(self._a.sum())} of {self._a.shape[0]}>)"
        if self._op == "ids":
            return f"IDFilter.from_ids(<{self._a.shape[0]} ids>)"
        if self._op == "range":
            return f"IDFilter.range({self._a[0]}, {self._a[1]})"
        if self._op == "not":
            return f"~{self._a!r}"
        return f"({self._a!r} {'&' if self._op == 'and' else '|'} {self._b!r})"

    def allows(self, ids) -> np.ndarray:
        """Boolean array: which of ``ids`` (int array) this filter allows."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._op == "mask":
            m = self._a
            inside = (ids >= 0) & (ids < m.shape[0])
            out = np.zeros(ids.shape, dtype=bool)
            out[inside] = m[ids[inside]]
            return out
        if self._op == "ids":
            a = self._a
            if a.size == 0:
                return np.zeros(ids.shape, dtype=bool)
            return a[np.minimum(np.searchsorted(a, ids), a.size - 1)] == ids
        if self._op == "range":
            return (ids >= self._a[0]) & (ids < self._a[1])
        if self._op == "not":
            return ~self._a.allows(ids)
        a, b = self._a.allows(ids), self._b.allows(ids)
        return a & b if self._op == "and" else a | b

    # -- evaluation over an index's rows ---------------------------------------------
    def _words(self, lists, live: np.ndarray) -> np.ndarray:
        """Bits (nw,) uint32 of the live rows of ``lists`` whose ids this allows."""
        from .kernels.filtering import filter_bits as fb
        op = self._op
        if op == "mask":
            out = np.empty_like(live)
            fb.mask_words(lists.ids, live, self._a, out)
            return out
        if op == "range":
            out = np.empty_like(live)
            fb.range_words(lists.ids, live, self._a[0], self._a[1], out)
            return out
        if op == "ids":
            ids = self._a
            if ids.shape[0] * 4 > lists.ntotal and ids.shape[0] and \
                    int(ids[-1]) < 16 * (lists.ntotal + ids.shape[0]):
                # Many ids: one pass over the rows beats a hash lookup per id.
                if self._mask_cache is None:
                    m = np.zeros(int(ids[-1]) + 1, dtype=bool)
                    m[ids] = True
                    self._mask_cache = m
                out = np.empty_like(live)
                fb.mask_words(lists.ids, live, self._mask_cache, out)
                return out
            out = np.zeros_like(live)
            if ids.shape[0] and lists.ntotal:
                lst, off = lists.lookup(ids)
                fb.rows_words(lst, off, lists.starts, out)
            return out
        if op == "not":
            return live & ~self._a._words(lists, live)
        a = self._a._words(lists, live)
        b = self._b._words(lists, live)
        return a & b if op == "and" else a | b


def _coerce(f) -> IDFilter:
    if isinstance(f, IDFilter):
        return f
    if isinstance(f, PerQueryFilter):
        raise TypeError("a per-query filter cannot be combined with & or |; combine the "
                        "shared part into each query's filter instead.")
    return IDFilter(f)


class PerQueryFilter:
    """One filter per query (see :meth:`IDFilter.per_query` and sequences of filters)."""

    __slots__ = ("rows", "indptr", "ids")

    def __init__(self, rows=None, indptr=None, ids=None):
        self.rows, self.indptr, self.ids = rows, indptr, ids

    @classmethod
    def from_csr(cls, indptr, ids) -> "PerQueryFilter":
        indptr = np.asarray(indptr)
        if indptr.dtype.kind not in "iu" or indptr.ndim != 1 or indptr.shape[0] < 1:
            raise ValueError(f"IDFilter.per_query: indptr must be a 1-D integer array of "
                             f"nq + 1 offsets; got dtype {indptr.dtype} and shape "
                             f"{indptr.shape}.")
        ids = _id_array(ids, "IDFilter.per_query ids")
        indptr = indptr.astype(np.int64)
        if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != ids.shape[0]:
            raise ValueError(f"IDFilter.per_query: indptr must start at 0, never "
                             f"decrease and end at len(ids) = {ids.shape[0]}; got "
                             f"indptr[0] = {indptr[0]}, indptr[-1] = {indptr[-1]}.")
        return cls(indptr=np.ascontiguousarray(indptr), ids=ids)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else self.indptr.shape[0] - 1

    def __repr__(self) -> str:
        return f"<per-query filter, {len(self)} queries>"

    def sub(self, lo: int, hi: int) -> "PerQueryFilter":
        """The filters of queries [lo, hi)."""
        if self.rows is not None:
            return PerQueryFilter(rows=self.rows[lo:hi])
        a, b = int(self.indptr[lo]), int(self.indptr[hi])
        return PerQueryFilter(indptr=self.indptr[lo:hi + 1] - a, ids=self.ids[a:b])


def as_filter(filter, nq: int):
    """``filter`` checked and normalised: None, an IDFilter (shared) or a
    PerQueryFilter of nq rows. Raises TypeError/ValueError naming what was wrong."""
    if filter is None or isinstance(filter, IDFilter):
        return filter
    if isinstance(filter, PerQueryFilter):
        if len(filter) != nq:
            raise ValueError(f"filter has one row per query for {len(filter)} queries, "
                             f"but q has {nq}.")
        return filter
    if isinstance(filter, (list, tuple)) and filter and not np.isscalar(filter[0]):
        if len(filter) != nq:
            raise ValueError(f"filter as a sequence must hold one filter per query: "
                             f"q has {nq} queries, the sequence {len(filter)} entries.")
        seen = {}
        rows = []
        for f in filter:
            key = id(f)
            if key not in seen:
                seen[key] = _coerce(f) if f is not None else None
            rows.append(seen[key])
        if any(r is None for r in rows):
            raise TypeError("filter: an entry of the per-query sequence is None; pass "
                            "IDFilter.range(0, 2**63 - 1) to allow every id.")
        return PerQueryFilter(rows=rows)
    if isinstance(filter, np.ndarray) and filter.ndim == 2 and filter.dtype == np.bool_:
        if filter.shape[0] != nq:
            raise ValueError(f"filter as a 2-D mask must have one row per query: q has "
                             f"{nq} queries, the mask shape {filter.shape}.")
        return PerQueryFilter(rows=[IDFilter._node("mask", np.ascontiguousarray(r))
                                    for r in filter])
    arr = np.asarray(filter)
    if arr.dtype == np.bool_:
        return IDFilter._node("mask", _mask_array(arr))
    if arr.dtype.kind in "iu" or (arr.size == 0 and arr.dtype.kind == "f"):
        return IDFilter._node("ids", np.unique(_id_array(arr)))
    raise TypeError(f"filter must be None, a boolean mask indexed by id, an integer "
                    f"array of allowed ids, an IDFilter, or one of these per query; got "
                    f"{type(filter).__name__} of dtype {arr.dtype}.")


@dataclass
class RowFilter:
    """A filter in an index's row order (layout in ``kernels.filtering._bits``)."""
    fbits: np.ndarray    # (nf, nw) uint32
    fcount: np.ndarray   # (nf, nlist) int64
    fslot: np.ndarray    # (nq,) int64
    n_allowed: np.ndarray  # (nf,) int64: allowed live rows per filter row

    def arrays(self):
        return self.fbits, self.fcount, self.fslot


def bitmap_bytes(lists, n_filters: int) -> int:
    return n_filters * 4 * -(-max(lists.ids.shape[0], 1) // 32)


def prepare(filter, lists, nq: int) -> "RowFilter | None":
    """Filter (anything ``as_filter`` takes) -> RowFilter over ``lists``' rows."""
    from .kernels.filtering import filter_bits as fb
    spec = as_filter(filter, nq)
    if spec is None:
        return None
    if isinstance(spec, IDFilter):
        # A filter object reused on an unchanged index reuses its bits: the
        # conversion reads every stored row (~3 ns each), more than a one-query scan.
        cached = spec._rows
        if cached is not None and cached[0]() is lists and cached[1] == lists.version:
            fbits, fcount, n_allowed = cached[2]
            return RowFilter(fbits, fcount, np.zeros(nq, dtype=np.int64), n_allowed)
    nw = max(1, -(-lists.ids.shape[0] // 32))
    live = np.zeros(nw, dtype=np.uint32)
    fb.live_words(lists.starts, lists.sizes, live)
    if isinstance(spec, IDFilter):
        fbits = spec._words(lists, live)[None, :]
        fslot = np.zeros(nq, dtype=np.int64)
    elif spec.rows is not None:
        uniq = {}
        fslot = np.empty(nq, dtype=np.int64)
        for qi, f in enumerate(spec.rows):
            fslot[qi] = uniq.setdefault(id(f), len(uniq))
        fbits = np.empty((len(uniq), nw), dtype=np.uint32)
        done = set()
        for qi, f in enumerate(spec.rows):
            s = int(fslot[qi])
            if s not in done:
                fbits[s] = f._words(lists, live)
                done.add(s)
    else:
        fbits = np.zeros((nq, nw), dtype=np.uint32)
        if spec.ids.shape[0] and lists.ntotal:
            lst, off = lists.lookup(spec.ids)
            fb.csr_words(lst, off, lists.starts, spec.indptr, fbits)
        fslot = np.arange(nq, dtype=np.int64)
    fcount = np.empty((fbits.shape[0], lists.nlist), dtype=np.int64)
    fb.count_lists(fbits, lists.starts, lists.sizes, fcount)
    out = RowFilter(fbits, fcount, fslot, fcount.sum(axis=1))
    if isinstance(spec, IDFilter):
        spec._rows = (weakref.ref(lists), lists.version, (fbits, fcount, out.n_allowed))
    return out
