"""IVF-Flat: a coarse k-means quantizer over inverted lists of full float32 vectors.

Orchestration only. The shared IVF machinery (coarse k-means and assignment, ids,
validation, result conventions, remove, reconstruct, save/load, the one-query check)
lives in ``base.IVFBase``; list storage in ``_lists``; the scans, and the fused
one-query kernel, in ``numba_ivf.kernels.scan.list_scan``.
"""

from __future__ import annotations

import numpy as np

from .._config import (
    FILTER_EXACT_ROWS_PER_LIST,
    IVF_LIST_MAJOR_GROUPS_PER_THREAD,
    IVF_LIST_MAJOR_MIN_QUERIES_PER_LIST,
    IVF_ONE_QUERY_MIN_RUN,
    IVF_SINGLE_MIN_RUN,
    IVF_SINGLE_RUNS_PER_THREAD,
)
from .._dispatch import compiled_entry, row_key
from .._validation import check_choice
from ..kernels.scan import list_scan
from ..kernels.filtering._bits import no_filter
from ._lists import InvertedLists
from ._load import register_kind
from ._rwlock import read_locked
from .base import IVFBase, _n_threads

__all__ = ["IVFFlat", "SEARCH_PATHS"]

SEARCH_PATHS = ("auto", "batch", "list_major", "single")


class IVFFlat(IVFBase):
    """Inverted-file index with exact (flat) vectors in the lists, like faiss.IndexIVFFlat.

    Parameters
    ----------
    d : int
        Vector dimension.
    nlist : int
        Number of inverted lists (coarse centroids). A common choice is ~4 * sqrt(n).
    metric : {"l2", "ip", "cosine"}, default "l2"
        "l2": squared Euclidean distances, ascending. "ip": inner products, descending.
        "cosine": vectors and queries are L2-normalised, then inner products (cosine
        similarities), descending.
    n_iter : int, default 25
        k-means iterations in :meth:`train`.
    seed : int, default 1234
        Seed of the k-means initialisation and subsampling.
    max_points_per_centroid : int, default 256
        :meth:`train` subsamples to ``nlist * max_points_per_centroid`` rows (as FAISS).

    Examples
    --------
    >>> import numpy as np, numba_ivf
    >>> x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    >>> index = numba_ivf.IVFFlat(16, nlist=8)
    >>> index.train(x)
    >>> index.add(x)
    >>> D, I = index.search(x[:3], k=5, nprobe=8)
    >>> I[:, 0].tolist()
    [0, 1, 2]
    """

    kind = "IVFFlat"

    def __init__(self, d: int, nlist: int, metric: str = "l2", *, n_iter: int = 25,
                 seed: int = 1234, max_points_per_centroid: int = 256):
        super().__init__(d, nlist, metric, n_iter=n_iter, seed=seed,
                         max_points_per_centroid=max_points_per_centroid)
        self._lists = self._new_lists()

    def __repr__(self) -> str:
        return (f"IVFFlat(d={self._d}, nlist={self._nlist}, metric={self._metric!r}, "
                f"ntotal={len(self)}, trained={self.is_trained})")

    # -- IVFBase hooks -------------------------------------------------------------------
    def _new_lists(self) -> InvertedLists:
        return InvertedLists(self._nlist, {"data": (self._d, np.float32)})

    def _encode_rows(self, x: np.ndarray, labels: np.ndarray) -> dict:
        return {"data": x}

    def _reconstruct_row(self, row: int) -> np.ndarray:
        return np.array(self._lists.payload["data"][row])

    # -- search ----------------------------------------------------------------------
    def search(self, q, k: int, nprobe: int = 1, *, filter=None, min_candidates=None,
               max_nprobe=None, path: str = "auto"):
        """The k nearest stored vectors of each query, among its nprobe nearest lists.

        Parameters
        ----------
        q : array-like of shape (nq, d) or (d,)
            float32 or float64, any memory order.
        k : int
            Results per query (>= 1); may exceed the index size (padded).
        nprobe : int, default 1
            Lists scanned per query (>= 1); values above nlist are clamped to nlist.
            With a filter, the least number of lists looked at (see below).
        filter : optional
            Which ids may be returned (see :mod:`numba_ivf.filters`): a boolean mask
            indexed by id, an integer array of allowed ids, an :class:`~numba_ivf.IDFilter`,
            or one of these per query (a sequence of nq, or ``IDFilter.per_query``).
            Lists without an allowed row are not read. A filter that allows at most
            ``FILTER_EXACT_ROWS_PER_LIST * nlist`` stored rows is searched exactly
            over those rows.
        min_candidates : int, optional
            Filtered search only: after the nprobe nearest lists, further lists are
            probed in coarse order until they hold this many allowed rows (default
            ``FILTER_MIN_CANDIDATES_FACTOR * k`` = 10 k; at least k), so that a
            restrictive filter still returns k results of good recall.
        max_nprobe : int, optional
            Filtered search only: at most this many lists are looked at (default
            nlist: k results come back whenever k allowed vectors are stored).
        path : {"auto", "batch", "list_major", "single"}, default "auto"
            Scan plan; all give identical results. "batch": parallel over queries;
            "list_major": parallel over groups of queries, each list read once per group
            for all its queries that probe it (large batches); "single": each query parallel over its probed lists.

        Returns
        -------
        D : ndarray of shape (nq, k), float32
            "l2": squared distances ascending (inf where missing); "ip"/"cosine": scores
            descending (-inf where missing).
        I : ndarray of shape (nq, k), int64
            Ids, -1 where fewer than k vectors were found. Ties by ascending id.

        Notes
        -----
        One C-contiguous float32/float64 row with int ``k`` and ``nprobe`` (path "auto"
        or "single") is searched by one fused kernel call, with results identical to
        the same row searched as a batch; it uses one thread unless the probed lists
        hold many rows (``IVF_ONE_QUERY_MIN_RUN`` in ``_config``). Such a row under a shared
        filter takes ``list_scan.search_one_filtered``, with the batch path's results.
        """
        return read_locked(self, self._search, q, k, nprobe, filter, min_candidates,
                           max_nprobe, path)

    def _search(self, q, k, nprobe, filter, min_candidates, max_nprobe, path):
        """``search`` under the read lock (``_rwlock.read_locked``)."""
        if path == "auto" or path == "single":
            one = self._one_query(q, k, nprobe)
            if one is not None:
                if filter is None and min_candidates is None and max_nprobe is None:
                    out = self._search_one(*one)
                elif filter is not None:
                    out = self._search_one_filtered(*one, filter, min_candidates,
                                                    max_nprobe)
                else:
                    out = None
                if out is not None:
                    return out
        self._check_trained("search")
        q, k, nprobe = self._check_search(q, k, nprobe)
        check_choice("path", path, SEARCH_PATHS)
        nq = q.shape[0]
        out_d = np.empty((nq, k), dtype=np.float32)
        out_i = np.empty((nq, k), dtype=np.int64)
        if filter is not None or min_candidates is not None or max_nprobe is not None:
            if filter is None:
                raise ValueError("min_candidates and max_nprobe apply only to a filtered "
                                 "search (filter=...).")

            def scan(qs, scores, probes, rf):
                dd = np.empty((qs.shape[0], k), dtype=np.float32)
                ii = np.empty((qs.shape[0], k), dtype=np.int64)
                p = self._choose_path(qs.shape[0], probes.shape[1]) if path == "auto" \
                    else path
                self._scan(p, qs, probes, dd, ii, rf.arrays())
                return dd, ii

            self._search_filtered(q, k, nprobe, filter, min_candidates, max_nprobe, scan,
                                  True, out_d, out_i)
            return self._finish(out_d, out_i)
        if nq:
            _, probes = self._coarse(q, nprobe)
            probes = np.ascontiguousarray(probes, dtype=np.int64)
            if path == "auto":
                path = self._choose_path(nq, nprobe)
            self._scan(path, q, probes, out_d, out_i, no_filter())
        return self._finish(out_d, out_i)

    def _search_one(self, q, k, nprobe):
        """One query in one kernel call (see ``list_scan.search_one``); None if q holds
        NaN or inf, so that the general path raises its error. The kernel's compiled
        entry point is called directly (``_dispatch``), one per query type, found anew
        whenever the lists change (an add may turn memory-mapped arrays writable)."""
        L = self._lists
        key = row_key(q)
        kernel = list_scan.search_one       # looked up per call: tests wrap it
        calls = self.__dict__.get("_one_calls")
        if calls is None or calls[0] is not L or calls[1] != L.version \
                or calls[2] is not self._prepared or calls[3] is not kernel:
            calls = self.__dict__["_one_calls"] = (L, L.version, self._prepared, kernel,
                                                   {})
        out_d = np.empty((1, k), dtype=np.float32)
        out_i = np.empty((1, k), dtype=np.int64)
        # Module globals read at call time, so tests can shrink the runs.
        args = (q, self._prepared.panels, L.payload["data"], L.ids, L.starts, L.sizes,
                self._metric_code, self._metric == "cosine", nprobe,
                IVF_ONE_QUERY_MIN_RUN, IVF_SINGLE_RUNS_PER_THREAD * _n_threads(), out_d,
                out_i)
        call = calls[4].get(key) if key is not None else kernel
        if call is None:
            ok = kernel(*args)
            calls[4][key] = compiled_entry(kernel, args)
        else:
            ok = call(*args)
        return (out_d, out_i) if ok else None

    def _search_one_filtered(self, q, k, nprobe, filter, min_candidates, max_nprobe):
        """One query under a shared filter in one kernel call
        (``list_scan.search_one_filtered``), the general path's results; None for a
        per-query filter or bad values (the general path raises)."""
        from ..filters import IDFilter, as_filter, prepare
        try:
            spec = as_filter(filter, 1)
            need, maxp = self._filter_args(k, nprobe, min_candidates, max_nprobe)
        except (TypeError, ValueError):
            return None       # the general path raises, in its order (q first)
        if not isinstance(spec, IDFilter):
            return None
        L = self._lists
        rf = prepare(spec, L, 1)
        n_allowed = int(rf.n_allowed[0])
        out_d = np.empty((1, k), dtype=np.float32)
        out_i = np.empty((1, k), dtype=np.int64)
        ok = list_scan.search_one_filtered(
            q, self._prepared.panels, L.payload["data"], L.ids, L.starts, L.sizes,
            self._metric_code, self._metric == "cosine", nprobe, need, maxp, rf.fbits,
            rf.fcount, n_allowed, n_allowed <= FILTER_EXACT_ROWS_PER_LIST * self._nlist,
            IVF_ONE_QUERY_MIN_RUN, IVF_SINGLE_RUNS_PER_THREAD * _n_threads(), out_d, out_i)
        return (out_d, out_i) if ok else None

    @property
    def _metric_code(self) -> int:
        return list_scan.METRIC_L2 if self._metric == "l2" else list_scan.METRIC_IP

    def _choose_path(self, nq: int, nprobe: int) -> str:
        threads = _n_threads()
        if nq < threads:
            return "single"
        groups = IVF_LIST_MAJOR_GROUPS_PER_THREAD * threads
        if nq * nprobe / (self._nlist * groups) >= IVF_LIST_MAJOR_MIN_QUERIES_PER_LIST:
            return "list_major"
        return "batch"

    @staticmethod
    def _scan_single(q, data, ids, starts, sizes, probes, flt, metric, out_d, out_i):
        rows = int(sizes[probes[probes >= 0]].sum()) // max(probes.shape[0], 1)
        # Work in units of IVF_SINGLE_MIN_RUN rows of 64 features.
        n_runs = min(rows * max(data.shape[1], 64) // (64 * IVF_SINGLE_MIN_RUN),
                     _n_threads() * IVF_SINGLE_RUNS_PER_THREAD)
        if n_runs <= 1:  # too little work to pay for waking the other threads
            list_scan.scan_serial(q, data, ids, starts, sizes, probes, *flt, metric,
                                  out_d, out_i)
        else:
            list_scan.scan_single(q, data, ids, starts, sizes, probes, *flt, metric,
                                  n_runs, out_d, out_i)

    def _scan(self, path, q, probes, out_d, out_i, flt):
        """Fill (out_d, out_i) over the probed lists; flt = (fbits, fcount, fslot)."""
        L = self._lists
        data = L.payload["data"]
        metric = self._metric_code
        if path == "batch":
            list_scan.scan_batch(q, data, L.ids, L.starts, L.sizes, probes, *flt, metric,
                                 out_d, out_i)
        elif path == "single":
            self._scan_single(q, data, L.ids, L.starts, L.sizes, probes, flt, metric,
                              out_d, out_i)
        else:
            n_groups = max(1, min(q.shape[0],
                                  IVF_LIST_MAJOR_GROUPS_PER_THREAD * _n_threads()))
            list_scan.scan_list_major(q, data, L.ids, L.starts, L.sizes, probes, *flt,
                                      n_groups, metric, out_d, out_i)

    # -- persistence -------------------------------------------------------------------
    def _load_arrays(self, a, bad) -> None:
        n = a["ids"].shape[0]
        if "data" not in a or a["data"].dtype != np.float32 or \
                a["data"].shape != (n, self._d):
            raise bad(f"array 'data' missing or not float32 of shape ({n}, {self._d})")


register_kind("IVFFlat", IVFFlat._from_file)
