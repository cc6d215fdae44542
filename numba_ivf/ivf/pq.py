"""IVF-PQ: a coarse quantizer over inverted lists of product-quantized codes.

Orchestration only. The shared IVF machinery (coarse k-means and assignment, ids,
validation, result conventions, remove, save/load) lives in ``base.IVFBase``; list
storage in ``_lists`` (8-bit codes as rows, 4-bit codes as a blocked nibble payload);
the scans in ``numba_ivf.kernels.scan.pq_scan`` (8-bit, float tables) and
``numba_ivf.kernels.fastscan.fastscan_search`` (4-bit, quantized tables, SIMD); exact
re-ranking in ``numba_ivf.kernels.scan.refine``.
"""

from __future__ import annotations

import numpy as np

from .._config import (IVF_ONE_QUERY_MIN_RUN, IVF_SINGLE_RUNS_PER_THREAD,
                       PQ_ENCODE_BLOCK_ROWS, PQ_REFINE_K_FACTOR, PQ_REFINE_K_FACTOR_MAX,
                       PQ4_SINGLE_BYTES_PER_ROW, PQ_SINGLE_MIN_ROWS,
                       PQ_TRAIN_MAX_POINTS_PER_CENTROID)
from .._dispatch import compiled_entry, row_key
from .._threads import get_num_threads
from .._validation import check_choice, check_int
from ..pq import ProductQuantizer, check_pq_shape
from ._lists import InvertedLists
from ._load import register_kind
from ._rwlock import read_locked
from .base import IVFBase, _n_threads

__all__ = ["IVFPQ", "PQ_SEARCH_PATHS"]

_PQ_ONE = None


def _pq_one():
    """The one-query kernel module, imported once (an import statement per search
    costs a microsecond)."""
    global _PQ_ONE
    if _PQ_ONE is None:
        from ..kernels.scan import pq_one
        _PQ_ONE = pq_one
    return _PQ_ONE


PQ_SEARCH_PATHS = ("auto", "batch", "single", "serial")


class _OnePlan:
    """What ``IVFPQ._search_one`` passes its kernel besides the query's own arguments,
    for one state of the index (see ``IVFPQ._one_plan``), and the compiled entry points
    found for each query type (``calls``; ``_dispatch``)."""

    __slots__ = ("lists", "version", "prepared", "tune", "kernel", "done", "pre", "mid",
                 "post", "tail", "calls")

    def __init__(self, index: IVFPQ, L, tune: tuple):
        threads = tune[0]
        c = index._one_query_consts()
        self.lists, self.version, self.prepared, self.tune = L, L.version, \
            index._prepared, tune
        if index._refine:
            data = L.payload["data"]
            # The 4-bit scan keeps its candidates' rows; 8-bit looks the ids up.
            idmap = L.map_arrays() if index._nbits == 8 else c["no_map"]
        else:
            data, idmap = c["no_data"], c["no_map"]
        pq_one = _pq_one()
        self.kernel = pq_one.adc_search_one if index._nbits == 8 else \
            pq_one.fastscan_search_one
        self.done = pq_one.DONE
        self.pre = (c["unit"], index._prepared.panels, c["coarse_metric"],
                    IVF_ONE_QUERY_MIN_RUN, IVF_SINGLE_RUNS_PER_THREAD * threads)
        self.mid = (index._by_residual, index._split_rows(threads), L.payload["codes"],
                    L.ids, L.starts, L.sizes, index._pq.codebooks_t, c["kind"],
                    c["term"], c["use_term"])
        self.post = (index._refine, data, *idmap, c["l2"])
        self.tail = c["backend"]
        self.calls = {}


def _check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} of type "
                        f"{type(value).__name__}.")
    return bool(value)


class IVFPQ(IVFBase):
    """Inverted-file index over product-quantized codes, like faiss.IndexIVFPQ.

    Parameters
    ----------
    d : int
        Vector dimension; must be divisible by ``m``.
    nlist : int
        Number of inverted lists (coarse centroids).
    m : int
        Sub-quantizers per vector: ``m`` bytes per code at 8 bits, ``m / 2`` at 4 bits.
    nbits : {8, 4}, default 8
        8: float32 lookup tables (asymmetric distance computation, faiss.IndexIVFPQ).
        4: "fast-scan", tables quantized to uint8 and summed with SIMD byte shuffles
        over blocks of 32 codes (faiss.IndexIVFPQFastScan).
    metric : {"l2", "ip", "cosine"}, default "l2"
        As in :class:`numba_ivf.IVFFlat` ("cosine" normalises vectors and queries).
    by_residual : bool, default True
        Encode ``x - centroid`` (more accurate) instead of ``x``.
    refine : bool, default False
        Also keep the float32 vectors and re-rank ``k_factor * k`` PQ candidates exactly
        (faiss.IndexRefineFlat): the returned distances are then exact.
    n_iter, seed, max_points_per_centroid
        Coarse k-means parameters, as in :class:`numba_ivf.IVFFlat`; the PQ codebooks use
        ``n_iter`` and ``seed`` too.

    Examples
    --------
    >>> import numpy as np, numba_ivf
    >>> x = np.random.default_rng(0).standard_normal((4000, 16)).astype(np.float32)
    >>> index = numba_ivf.IVFPQ(16, nlist=8, m=8, nbits=4, refine=True)
    >>> index.train(x)
    >>> index.add(x)
    >>> D, I = index.search(x[:3], k=5, nprobe=8, k_factor=8)
    >>> I[:, 0].tolist()
    [0, 1, 2]
    """

    kind = "IVFPQ"

    def __init__(self, d: int, nlist: int, m: int, nbits: int = 8, metric: str = "l2",
                 by_residual: bool = True, refine: bool = False, *, n_iter: int = 25,
                 seed: int = 1234, max_points_per_centroid: int = 256):
        d, m, nbits = check_pq_shape(d, m, nbits, owner="IVFPQ")
        super().__init__(d, nlist, metric, n_iter=n_iter, seed=seed,
                         max_points_per_centroid=max_points_per_centroid)
        self._m = m
        self._nbits = nbits
        self._by_residual = _check_bool("by_residual", by_residual)
        self._refine = _check_bool("refine", refine)
        self._pq = ProductQuantizer(d, m, nbits)
        self._term = None
        self._lists = self._new_lists()

    def _new_lists(self) -> InvertedLists:
        if self._nbits == 4:
            payload = {"codes": ("nibbles", self._m)}
        else:
            payload = {"codes": (self._m, np.uint8)}
        if self._refine:
            payload["data"] = (self._d, np.float32)
        return InvertedLists(self._nlist, payload)

    # -- read-only properties ----------------------------------------------------------
    @property
    def m(self) -> int:
        return self._m

    @property
    def nbits(self) -> int:
        return self._nbits

    @property
    def by_residual(self) -> bool:
        return self._by_residual

    @property
    def refine(self) -> bool:
        return self._refine

    @property
    def is_trained(self) -> bool:
        return self._centroids is not None and self._pq.is_trained

    @property
    def pq(self) -> ProductQuantizer:
        """The product quantizer (trained by :meth:`train`)."""
        return self._pq

    def __repr__(self) -> str:
        return (f"IVFPQ(d={self._d}, nlist={self._nlist}, m={self._m}, "
                f"nbits={self._nbits}, metric={self._metric!r}, by_residual="
                f"{self._by_residual}, refine={self._refine}, ntotal={len(self)}, "
                f"trained={self.is_trained})")

    def _owner(self) -> str:
        return f"IVFPQ(d={self._d})"

    @property
    def memory_bytes(self) -> dict:
        """Bytes held, by part: lists (ids + codes, slack included), refine vectors,
        id map, centroids, codebooks, precomputed tables."""
        L = self._lists
        out = {"ids": L.ids.nbytes, "codes": L.payload["codes"].nbytes,
               "refine": L.payload["data"].nbytes if self._refine else 0,
               "id_map": L.map_nbytes(),
               "centroids": 0 if self._centroids is None else self._centroids.nbytes,
               "codebooks": 0 if self._pq.codebooks is None else self._pq.codebooks.nbytes,
               "term_table": 0 if self._term is None else self._term.nbytes}
        return out

    # -- training and adding ---------------------------------------------------------
    def _train_rest(self, x: np.ndarray, centroids: np.ndarray, prepared) -> dict:
        """Train the PQ on (residuals of) a subsample of x; returns the new state."""
        from ..kernels.assign.assign import assign_prepared
        from ..kernels.encode.pq_encode import residuals
        pq = ProductQuantizer(self._d, self._m, self._nbits)
        if x.shape[0] < pq.ksub:
            raise ValueError(f"x has {x.shape[0]} rows, but training {self._owner()} "
                             f"with nbits={self._nbits} needs at least {pq.ksub} rows "
                             f"(2**nbits centroids per sub-quantizer).")
        cap = pq.ksub * PQ_TRAIN_MAX_POINTS_PER_CENTROID
        if x.shape[0] > cap:
            rng = np.random.default_rng(self.seed + 1)
            x = x[np.sort(rng.choice(x.shape[0], size=cap, replace=False))]
        if self._by_residual:
            labels, _ = assign_prepared(x, prepared)
            x = residuals(x, centroids, labels)
        pq.train(x, n_iter=self.n_iter, seed=self.seed, max_points_per_centroid=None)
        return {"_pq": pq, "_term": None}

    def _encode_rows(self, x: np.ndarray, labels: np.ndarray) -> dict:
        from ..kernels.encode.pq_encode import residuals
        # A block of rows at a time: an add's residuals and sub-vectors then take at
        # most PQ_ENCODE_BLOCK_ROWS rows whatever its size (codes are per row, so
        # blocking changes none).
        codes = np.empty((x.shape[0], self._m), dtype=np.uint8)
        for s in range(0, x.shape[0], PQ_ENCODE_BLOCK_ROWS):
            xb = x[s:s + PQ_ENCODE_BLOCK_ROWS]
            res = (residuals(xb, self._centroids, labels[s:s + PQ_ENCODE_BLOCK_ROWS])
                   if self._by_residual else xb)
            codes[s:s + xb.shape[0]] = self._pq._encode(res)
        rows = {"codes": codes}
        if self._refine:
            rows["data"] = x
        return rows

    # -- reconstruct -------------------------------------------------------------------
    def _reconstruct_row(self, row: int) -> np.ndarray:
        codes = self._lists.codes_of_row("codes", row, self._m)
        out = self._pq.decode(codes.reshape(1, -1))[0]
        if self._by_residual:
            lst = self._lists.list_of_row(row)
            out = out + self._centroids[lst]
        return out.astype(np.float32)

    # -- search ----------------------------------------------------------------------
    def _term_table(self) -> np.ndarray:
        """term[l, j, c] = ||r_jc||^2 + 2 c_l,j . r_jc, (nlist, m, ksub) float32."""
        if self._term is None:
            cb = self._pq.codebooks.astype(np.float64)
            m, ksub, dsub = cb.shape
            cent = self._centroids.astype(np.float64).reshape(self._nlist, m, dsub)
            term = np.einsum("jct,jct->jc", cb, cb)[None] + \
                2.0 * np.einsum("ljt,jct->ljc", cent, cb)
            self._term = np.ascontiguousarray(term, dtype=np.float32)
        return self._term

    def search(self, q, k: int, nprobe: int = 1, *, k_factor: int | None = None,
               filter=None, min_candidates=None, max_nprobe=None, path: str = "auto",
               _backend=None):
        """The k nearest stored vectors of each query, among its nprobe nearest lists.

        Parameters
        ----------
        q : array-like of shape (nq, d) or (d,)
            float32 or float64, any memory order.
        k : int
            Results per query (>= 1).
        nprobe : int, default 1
            Lists scanned per query; values above nlist are clamped.
        k_factor : int, optional
            Only with ``refine=True``: ``k_factor * k`` PQ candidates are re-ranked with
            the exact vectors (default 4). Larger is slower and more accurate.
        filter, min_candidates, max_nprobe : optional
            Filtered search, as in :meth:`numba_ivf.IVFFlat.search`: lists without an
            allowed row are not read, sparse lists score only their allowed rows, and
            in 4-bit fast-scan a block's allowed lanes join the SIMD admission mask. A
            small allowed set is searched exactly over its stored vectors with
            ``refine=True``, and over the PQ codes of every list holding one without.
        path : {"auto", "batch", "single", "serial"}, default "auto"
            "batch": parallel over queries; "single": each query parallel over its
            probed lists; "serial": one thread (few queries, short lists). All return
            identical results.

        Returns
        -------
        D : ndarray of shape (nq, k), float32
            "l2": squared distances ascending (inf where missing), "ip"/"cosine": scores
            descending (-inf where missing); PQ approximations, exact with refine.
        I : ndarray of shape (nq, k), int64
            Ids, -1 where fewer than k vectors were found; ties by ascending id.

        Notes
        -----
        One C-contiguous float32/float64 row with int ``k``, ``nprobe`` and
        ``k_factor`` (path "auto") is searched by one fused kernel call
        (``kernels.scan.pq_one``) with results identical to the same row searched as a
        batch, unless its probed lists are long enough to split over threads. So is one
        such row under a shared filter (``pq_one.*_search_one_filtered``).
        """
        return read_locked(self, self._search, q, k, nprobe, k_factor, filter,
                           min_candidates, max_nprobe, path, _backend)

    def _search(self, q, k, nprobe, k_factor, filter, min_candidates, max_nprobe, path,
                _backend):
        """``search`` under the read lock."""
        if path == "auto" and _backend is None and filter is None \
                and min_candidates is None and max_nprobe is None:
            out = self._search_one(q, k, nprobe, k_factor)
            if out is not None:
                return out
        elif path == "auto" and _backend is None and filter is not None \
                and self.is_trained:
            one = self._one_query(q, k, nprobe)
            kf = PQ_REFINE_K_FACTOR if k_factor is None else k_factor
            if (one is not None and type(kf) is int
                    and 1 <= kf <= PQ_REFINE_K_FACTOR_MAX
                    and (self._refine or k_factor is None)):
                out = self._search_one_filtered(*one, kf, filter, min_candidates,
                                                max_nprobe)
                if out is not None:
                    return out
        self._check_trained("search")
        q, k, nprobe = self._check_search(q, k, nprobe)
        check_choice("path", path, PQ_SEARCH_PATHS)
        if k_factor is not None and not self._refine:
            raise ValueError("k_factor applies only to an index built with refine=True; "
                             f"got k_factor={k_factor!r} for {self!r}.")
        if self._refine:
            k_factor = check_int("k_factor", PQ_REFINE_K_FACTOR if k_factor is None
                                 else k_factor, min_value=1,
                                 max_value=PQ_REFINE_K_FACTOR_MAX)
        from ..kernels.fastscan import fastscan
        backend = fastscan.get_backend(_backend)
        nq = q.shape[0]
        kk = k * k_factor if self._refine else k
        if filter is not None or min_candidates is not None or max_nprobe is not None:
            if filter is None:
                raise ValueError("min_candidates and max_nprobe apply only to a filtered "
                                 "search (filter=...).")
            return self._search_filtered_pq(q, k, kk, nprobe, filter, min_candidates,
                                            max_nprobe, path, backend)
        keys = np.empty((nq, kk), dtype=np.float32)
        ids = np.empty((nq, kk), dtype=np.int64)
        if nq:
            scores, probes = self._coarse(q, nprobe)
            probes = np.ascontiguousarray(probes, dtype=np.int64)
            if path == "auto":
                path = self._choose_path(nq, probes)
            # The serial path stays on the calling thread end to end (tables, scan,
            # refine): for one query each parallel launch costs more than its work.
            serial = path == "serial"
            rows = self._scan(path, q, scores, probes, keys, ids, backend, serial)
            if self._refine:
                keys, ids = self._refine_exact(q, keys, ids, k, serial, rows)
        else:
            keys, ids = keys[:, :k], ids[:, :k]   # (0, k), not (0, k * k_factor)
        return self._finish(keys, ids)

    def _search_filtered_pq(self, q, k, kk, nprobe, filter, min_candidates, max_nprobe,
                            path, backend):
        """Filtered search (``IVFBase._search_filtered``): the PQ scan of the probes it
        chooses, then refine; with refine, small allowed sets exactly over the stored
        vectors (``IVFBase._exact_stored``)."""
        nq = q.shape[0]
        out_d = np.empty((nq, k), dtype=np.float32)
        out_i = np.empty((nq, k), dtype=np.int64)

        def scan(qs, scores, probes, rf):
            n = qs.shape[0]
            keys = np.empty((n, kk), dtype=np.float32)
            ids = np.empty((n, kk), dtype=np.int64)
            p = self._choose_path(n, probes) if path == "auto" else path
            serial = p == "serial"
            rows = self._scan(p, qs, scores, probes, keys, ids, backend, serial,
                              rf.arrays())
            if self._refine:
                keys, ids = self._refine_exact(qs, keys, ids, k, serial, rows)
            return keys, ids

        self._search_filtered(q, k, nprobe, filter, min_candidates, max_nprobe, scan,
                              self._refine, out_d, out_i)
        return self._finish(out_d, out_i)

    def _search_one(self, q, k, nprobe, k_factor):
        """One query in one kernel call (``kernels.scan.pq_one``), or None where the
        general path must answer: q not one C-contiguous float32/float64 row of d
        features ((d,) or (1, d)), k, nprobe or k_factor not plain ints in range, an
        untrained index, q holding NaN, inf or a value beyond the value limit (the
        general path raises), or (8-bit) probed lists long enough to split.

        Everything here is per-call overhead of a ~40 us search, written for few
        bytecodes: the plan (``_one_plan``) holds the kernel's other arguments and its
        compiled entry points by the query's type (``_dispatch``: no argument typing)."""
        if type(q) is not np.ndarray or type(k) is not int or type(nprobe) is not int \
                or k < 1 or nprobe < 1:
            return None
        if k_factor is None:
            kf = PQ_REFINE_K_FACTOR
        elif type(k_factor) is int and 1 <= k_factor <= PQ_REFINE_K_FACTOR_MAX \
                and self._refine:
            kf = k_factor
        else:
            return None
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        plan = self._one_plan()
        if plan is None or q.ndim != 1 or q.shape[0] != self._d:
            return None
        key = row_key(q)
        if key is None:
            return None
        out_d = np.empty((1, k), dtype=np.float32)
        out_i = np.empty((1, k), dtype=np.int64)
        args = (q, *plan.pre, min(nprobe, self._nlist), *plan.mid,
                k * kf if self._refine else k, *plan.post, out_d, out_i, *plan.tail)
        call = plan.calls.get(key)
        if call is None:
            status = plan.kernel(*args)     # compiles if need be
            plan.calls[key] = compiled_entry(plan.kernel, args)
        else:
            status = call(*args)
        return (out_d, out_i) if status == plan.done else None

    def _one_plan(self) -> _OnePlan | None:
        """The one-query kernel and its arguments but the query's own (q, nprobe, kk,
        outputs), cached (None before training): assembling them per call (attribute
        reads, the constants, the thread count's bounds) cost ~1.5 us of a ~25 us
        glove-50 search at nprobe 1 (interleaved A/B in one process). Valid while the
        lists object, its version (bumped by every add and remove), its arrays, the
        prepared centroids, the thread count and the tunables are the ones it was built
        for; ``add`` and ``train`` drop it (its references would stop numpy resizing
        the arenas in place, or keep replaced lists alive) and pickling leaves it out."""
        if self._centroids is None:
            return None
        L = self._lists
        plan = self.__dict__.get("_one_plan_cache")
        # The module's tunables too, so that a test's monkeypatch is seen. The lists'
        # arrays are not compared one by one: they change only inside
        # ``InvertedLists.add`` and ``remove``, which bump its version, or with the
        # lists object itself (train, load), all under the write lock.
        tune = (get_num_threads(), IVF_ONE_QUERY_MIN_RUN, IVF_SINGLE_RUNS_PER_THREAD,
                PQ_SINGLE_MIN_ROWS, PQ4_SINGLE_BYTES_PER_ROW)
        if (plan is not None and plan.lists is L and plan.version == L.version
                and plan.prepared is self._prepared and plan.tune == tune):
            return plan
        plan = _OnePlan(self, L, tune)
        self.__dict__["_one_plan_cache"] = plan
        return plan

    def _search_one_filtered(self, q, k, nprobe, k_factor, filter, min_candidates,
                             max_nprobe):
        """One query under one shared filter in one kernel call after ``prepare``
        (``kernels.scan.pq_one``), with the general path's results; None (the general
        path then runs, and raises where it should) for a per-query filter, a bad
        filter or filter argument, or a query holding NaN, inf or a value beyond the
        value limit."""
        c = self._one_query_consts()
        fc = c.get("filters")
        if fc is None:      # imported once per trained index, not per call
            from .. import filters
            from .._config import FILTER_EXACT_ROWS_PER_LIST
            fc = c["filters"] = (filters.as_filter, filters.IDFilter, filters.prepare,
                                 FILTER_EXACT_ROWS_PER_LIST * self._nlist)
        as_filter, id_filter, prepare, exact_limit = fc
        try:
            spec = as_filter(filter, 1)
            need, maxp = self._filter_args(k, nprobe, min_candidates, max_nprobe)
        except (TypeError, ValueError):
            return None
        if not isinstance(spec, id_filter):
            return None
        L = self._lists
        rf = prepare(spec, L, 1)
        n_allowed = int(rf.n_allowed[0])
        out_d = np.empty((1, k), dtype=np.float32)
        out_i = np.empty((1, k), dtype=np.int64)
        pq_one = _pq_one()
        if self._refine and n_allowed <= exact_limit:      # IVFBase._exact_queries
            status = pq_one.exact_search_one(q, c["unit"], L.payload["data"], L.ids,
                                             rf.fbits, c["coarse_metric"], out_d, out_i)
            return (out_d, out_i) if status == pq_one.DONE else None
        # A need above the allowed rows is never met (and sends p to max_nprobe) at any
        # value: capped at n_allowed + 1 it means the same and fits the kernel's int64.
        need = min(need, n_allowed + 1)
        threads = _n_threads()
        max_rows = self._split_rows(threads)
        if self._refine:
            data = L.payload["data"]
            idmap = L.map_arrays() if self._nbits == 8 else c["no_map"]
        else:
            data, idmap = c["no_data"], c["no_map"]
        kernel = pq_one.adc_search_one_filtered if self._nbits == 8 else \
            pq_one.fastscan_search_one_filtered
        status = kernel(q, c["unit"], self._prepared.panels, c["coarse_metric"],
                        IVF_ONE_QUERY_MIN_RUN, IVF_SINGLE_RUNS_PER_THREAD * threads,
                        nprobe, need, maxp, self._by_residual, max_rows,
                        L.payload["codes"], L.ids, L.starts, L.sizes, rf.fbits,
                        rf.fcount, n_allowed, self._pq.codebooks_t, c["kind"],
                        c["term"], c["use_term"], k * k_factor if self._refine else k,
                        self._refine, data, *idmap, c["l2"], out_d, out_i,
                        *c["backend"])
        return (out_d, out_i) if status == pq_one.DONE else None

    def _one_query_consts(self) -> dict:
        """Arguments of the one-query kernel fixed by the index's kind and training,
        built once per trained index (a one-query search should not pay for imports
        and stand-in arrays on every call). No list arrays: those move on add."""
        cached = self.__dict__.get("_one_consts")
        if cached is not None and cached["for"] is self._prepared:
            return cached
        from ..kernels.fastscan import fastscan
        from ..kernels.scan.list_scan import METRIC_IP, METRIC_L2
        from ..kernels.encode.pq_encode import TABLE_L2, TABLE_M2IP, TABLE_NIP
        l2 = self._metric == "l2"
        use_term = l2 and self._by_residual
        consts = {
            "for": self._prepared, "l2": l2, "use_term": use_term,
            "unit": self._metric == "cosine",
            "coarse_metric": METRIC_L2 if l2 else METRIC_IP,
            "kind": TABLE_M2IP if use_term else (TABLE_L2 if l2 else TABLE_NIP),
            "term": self._term_table() if use_term else self._dummy_term(),
            # Typed stand-ins for what a kernel call does not use.
            "no_data": np.zeros((1, self._d), dtype=np.float32),
            "no_map": (np.full(1, -1, dtype=np.int64), np.zeros(1, dtype=np.int64),
                       np.zeros(1, dtype=np.int64), 63),
            "backend": () if self._nbits == 8 else (fastscan.BACKEND,),
        }
        self.__dict__["_one_consts"] = consts
        return consts

    def _dummy_term(self):
        if getattr(self, "_dummy_term_", None) is None:
            self._dummy_term_ = np.zeros((1, self._m, self._pq.ksub), dtype=np.float32)
        return self._dummy_term_

    def _table_spec(self, scores):
        """(base (nq, nprobe) float32, table kind, term table, use_term): what a scan
        adds to each query's table (``pq_encode.TABLE_*``) and to each list's key."""
        from ..kernels.encode.pq_encode import TABLE_L2, TABLE_M2IP, TABLE_NIP
        l2 = self._metric == "l2"
        if l2 and self._by_residual:
            return (np.ascontiguousarray(scores, dtype=np.float32), TABLE_M2IP,
                    self._term_table(), True)
        if self._by_residual:           # ip: key = -(q.c + sum_j q_j.r_j)
            base = np.ascontiguousarray(-scores, dtype=np.float32)
        else:
            base = np.zeros(scores.shape, dtype=np.float32)
        return base, (TABLE_L2 if l2 else TABLE_NIP), self._dummy_term(), False

    def _tables(self, q, scores, serial=False):
        """Per-pair base (nq, nprobe), per-query tables (nq, m, ksub), term table,
        use_term: the tables the 4-bit scan builds query by query, materialised (tests
        replay them)."""
        from ..kernels.encode.pq_encode import query_tables, query_tables_serial
        base, kind, term, use_term = self._table_spec(scores)
        fn = query_tables_serial if serial else query_tables
        cbt = self._pq.codebooks_t
        qluts = np.empty((q.shape[0], cbt.shape[0], cbt.shape[2]), dtype=np.float32)
        fn(q, cbt, kind, qluts)
        return base, qluts, term, use_term

    def _split_rows(self, threads: int) -> int:
        """Probed rows from which a query's scan is split over ``threads`` threads
        (``PQ_SINGLE_MIN_ROWS`` per thread; 4-bit: scaled to the packed bytes of a row,
        ``PQ4_SINGLE_BYTES_PER_ROW``)."""
        if threads <= 1:
            return 1 << 62
        per = PQ_SINGLE_MIN_ROWS
        if self._nbits == 4:
            per = PQ_SINGLE_MIN_ROWS * PQ4_SINGLE_BYTES_PER_ROW // ((self._m + 1) // 2)
        return per * threads

    def _choose_path(self, nq: int, probes: np.ndarray) -> str:
        threads = _n_threads()
        if nq >= threads:
            return "batch"
        rows = int(self._lists.sizes[probes[probes >= 0]].sum())
        # Waking the other threads costs more than scanning a few thousand codes.
        return "single" if rows >= self._split_rows(threads) else "serial"

    def _scan(self, path, q, scores, probes, keys, ids, backend, serial, flt=None):
        """Fill (keys, ids); returns the candidates' arena rows (4-bit) or None.

        ``flt``: None (unfiltered), or the filters as the kernels take them
        (``kernels.filtering._bits``): (fbits (nf, nw) uint32, fcount (nf, nlist) int64, fslot
        (nq,) int64).
        """
        from ..kernels.filtering._bits import no_filter
        L = self._lists
        if flt is None:
            flt = no_filter()
        else:
            # The scans index these unchecked and without the GIL: a short bitmap or a
            # bad slot would read past an array instead of raising.
            fbits, fcount, fslot = (np.ascontiguousarray(a) for a in flt)
            nw = -(-int((L.starts + L.sizes).max()) // 32)
            nf = fbits.shape[0]
            if (fbits.dtype != np.uint32 or fbits.ndim != 2 or nf < 1
                    or fbits.shape[1] < nw or fcount.dtype != np.int64
                    or fcount.shape != (nf, self._nlist) or fslot.dtype != np.int64
                    or fslot.shape != q.shape[:1]
                    or (fslot.size and not 0 <= fslot.min() <= fslot.max() < nf)):
                raise ValueError(
                    f"flt must be (fbits uint32 (nf, >= {nw}), fcount int64 (nf, "
                    f"{self._nlist}), fslot int64 ({q.shape[0]},) in [0, nf)); got "
                    f"{[(a.dtype.name, a.shape) for a in (fbits, fcount, fslot)]}.")
            flt = (fbits, fcount, fslot)
        codes = L.payload["codes"]
        if self._nbits == 8:
            from ..kernels.scan import pq_scan
            base, kind, term, use_term = self._table_spec(scores)
            fn = {"single": pq_scan.adc_scan_single, "batch": pq_scan.adc_scan_batch,
                  "serial": pq_scan.adc_scan_serial}[path]
            fn(codes, L.ids, L.starts, L.sizes, probes, *flt, base, q,
               self._pq.codebooks_t, kind, term, use_term, keys, ids)
            return None
        from ..kernels.fastscan import fastscan_search as fs
        base, kind, term, use_term = self._table_spec(scores)
        rows = np.empty(keys.shape, dtype=np.int64)
        args = (codes, L.ids, L.starts, L.sizes, probes, *flt, base, q,
                self._pq.codebooks_t, kind, term, use_term, keys, ids, rows,
                not self._refine, backend)
        if path == "single":
            fs.fastscan_single(*args, IVF_SINGLE_RUNS_PER_THREAD * _n_threads())
        else:
            (fs.fastscan_batch if path == "batch" else fs.fastscan_serial)(*args)
        return rows

    def _refine_exact(self, q, keys, ids, k, serial=False, rows=None):
        from ..kernels.scan.refine import refine
        return refine(q, self._lists, ids, k, self._metric == "l2", parallel=not serial,
                      cand_rows=rows)

    # -- persistence -------------------------------------------------------------------
    def _save_params(self) -> dict:
        return {"m": self._m, "nbits": self._nbits, "by_residual": self._by_residual,
                "refine": self._refine}

    def _save_arrays(self) -> dict:
        return {"codebooks": self._pq.codebooks}

    @classmethod
    def _new_from_params(cls, p):
        return cls(p["d"], p["nlist"], p["m"], p["nbits"], p["metric"],
                   by_residual=p["by_residual"], refine=p["refine"], n_iter=p["n_iter"],
                   seed=p["seed"], max_points_per_centroid=p["max_points_per_centroid"])

    def _load_arrays(self, a, bad) -> None:
        cb = a.get("codebooks")
        want = (self._m, self._pq.ksub, self._d // self._m)
        if cb is None or cb.dtype != np.float32 or cb.shape != want:
            raise bad(f"array 'codebooks' missing or not float32 of shape {want}")
        if not np.isfinite(cb).all():
            raise bad("codebooks contain NaN or infinity")
        self._pq.set_codebooks(np.array(cb))


register_kind("IVFPQ", IVFPQ._from_file)
