"""IVF-Flat: a coarse k-means quantizer over inverted lists of full float32 vectors.

Orchestration only: validation here, k-means in ``numba_ivf.kmeans``, the coarse
assignment in ``numba_ivf.kernels.assign``, list storage in ``_lists``, the scans in
``numba_ivf.kernels.list_scan``.
"""

from __future__ import annotations

import os

import numba
import numpy as np

from .._config import (IVF_COARSE_SCAN_MAX_QUERIES, IVF_LIST_MAJOR_MIN_QUERIES_PER_LIST,
                       IVF_LIST_MAJOR_MIN_ROW_BYTES, IVF_PARTIAL_BYTES,
                       IVF_SCAN_TILE_BYTES, IVF_SINGLE_MIN_RUN,
                       IVF_SINGLE_RUNS_PER_THREAD)
from .._validation import check_choice, check_int, check_metric, check_vectors
from ..kernels import list_scan
from ..kernels.topk import ID_SENTINEL
from ._lists import InvertedLists
from ._load import register_kind

__all__ = ["IVFFlat", "SEARCH_PATHS"]

SEARCH_PATHS = ("auto", "batch", "list_major", "single")


def _normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero); always a new array."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    norms[norms == 0] = 1.0
    return (x / norms[:, None]).astype(np.float32)


def check_ids(ids, n: int, name: str = "ids") -> np.ndarray:
    """Return ``ids`` as a C-contiguous int64 array of shape (n,), all >= 0 and unique.

    Lives here rather than in ``_validation`` (owned elsewhere); IVFPQ can import it.
    """
    arr = np.asarray(ids)
    if arr.size == 0 and n == 0:
        return np.empty(0, dtype=np.int64)  # [] is float64 to numpy; no ids is fine
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers (int64); got dtype {arr.dtype}.")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one id per row of x; got "
                         f"shape {arr.shape}.")
    if arr.dtype.kind == "u" and n and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64; got {arr.max()}.")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if n and arr.min() < 0:
        bad = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"{name} must be >= 0; got {arr[bad]} at position {bad}.")
    if n > 1:
        s = np.sort(arr)
        dup = np.flatnonzero(s[1:] == s[:-1])
        if dup.size:
            raise ValueError(f"{name} must be unique; {s[dup[0]]} appears more than "
                             f"once.")
    return arr


def _n_threads() -> int:
    return int(numba.get_num_threads())


class IVFFlat:
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
        self._d = check_int("d", d, min_value=1)
        self._nlist = check_int("nlist", nlist, min_value=1)
        self._metric = check_metric(metric)
        self.n_iter = check_int("n_iter", n_iter, min_value=0)
        self.seed = check_int("seed", seed)
        self.max_points_per_centroid = check_int("max_points_per_centroid",
                                                 max_points_per_centroid, min_value=1)
        self._centroids = None
        self._prepared = None
        self._lists = InvertedLists(self._nlist, {"data": (self._d, np.float32)})
        self._next_id = 0

    # -- read-only properties ----------------------------------------------------------
    @property
    def d(self) -> int:
        return self._d

    @property
    def nlist(self) -> int:
        return self._nlist

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def is_trained(self) -> bool:
        return self._centroids is not None

    @property
    def centroids(self) -> np.ndarray:
        """Coarse centroids, ndarray of shape (nlist, d), float32 (a read-only view)."""
        self._check_trained("centroids")
        view = self._centroids.view()
        view.flags.writeable = False
        return view

    @property
    def list_sizes(self) -> np.ndarray:
        """Number of vectors in each list, ndarray of shape (nlist,), int64."""
        return self._lists.sizes.copy()

    def __len__(self) -> int:
        return self._lists.ntotal

    @property
    def ntotal(self) -> int:
        return self._lists.ntotal

    def __repr__(self) -> str:
        return (f"IVFFlat(d={self._d}, nlist={self._nlist}, metric={self._metric!r}, "
                f"ntotal={len(self)}, trained={self.is_trained})")

    # -- helpers -----------------------------------------------------------------------
    def _owner(self) -> str:
        return f"IVFFlat(d={self._d})"

    def _check_trained(self, what: str):
        if self._centroids is None:
            raise RuntimeError(f"IVFFlat.{what}: the index is not trained; call "
                               f"train(x) first.")

    def _coarse_metric(self) -> str:
        return "l2" if self._metric == "l2" else "ip"

    def _set_centroids(self, centroids: np.ndarray):
        from ..kernels.assign import prepare_centroids
        self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._centroid_ids = np.arange(self._nlist, dtype=np.int64)
        self._prepared = prepare_centroids(self._centroids, self._metric == "l2")

    def _coarse(self, x: np.ndarray, p: int):
        """The p best lists of each (prepared) row, best first: (scores, lists).

        A few queries scan the centroids as one flat list (the tiled kernel is built
        for many rows); larger batches use the tiled kernel. The choice depends only
        on the number of queries, never on the scan ``path``.
        """
        from ..kernels.assign import assign_prepared, topk_prepared
        if x.shape[0] <= IVF_COARSE_SCAN_MAX_QUERIES:
            c = self._centroids
            keys = np.empty((x.shape[0], p), dtype=np.float32)
            lists = np.empty((x.shape[0], p), dtype=np.int64)
            self._scan_rows_flat(x, c, self._centroid_ids, keys, lists)
            return keys, lists
        if p == 1:
            labels, scores = assign_prepared(x, self._prepared)
            return scores[:, None], labels[:, None]
        return topk_prepared(x, self._prepared, p)

    # -- training and adding ---------------------------------------------------------
    def train(self, x) -> None:
        """Learn the ``nlist`` coarse centroids with k-means.

        Parameters
        ----------
        x : array-like of shape (n, d)
            Training vectors, n >= nlist; float32 or float64, any memory order.
            "ip" and "cosine" use spherical k-means (unit-norm centroids).
        """
        from ..kmeans import KMeans
        x = check_vectors(x, "x", d=self._d, owner=self._owner())
        if x.shape[0] < self._nlist:
            raise ValueError(f"x has {x.shape[0]} rows, but training IVFFlat(nlist="
                             f"{self._nlist}) needs at least nlist rows.")
        if len(self):
            raise RuntimeError(f"IVFFlat.train: the index already holds {len(self)} "
                               f"vectors; build a new index to retrain.")
        km = KMeans(self._nlist, n_iter=self.n_iter, seed=self.seed,
                    max_points_per_centroid=self.max_points_per_centroid,
                    metric=self._metric, spherical=self._metric != "l2")
        km.fit(x)
        self._set_centroids(km.centroids)

    def add(self, x, ids=None) -> None:
        """Add vectors to their nearest lists.

        Parameters
        ----------
        x : array-like of shape (n, d)
        ids : array-like of shape (n,), int64, optional
            Non-negative, unique and not already in the index. Default: consecutive
            ids after the largest id ever added (0, 1, 2, ... for a fresh index).

        Nothing is changed if any check fails.
        """
        self._check_trained("add")
        x = check_vectors(x, "x", d=self._d, owner=self._owner())
        n = x.shape[0]
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            ids = check_ids(ids, n)
            present = self._lists.contains(ids) if len(self) else np.zeros(n, bool)
            if present.any():
                bad = int(np.flatnonzero(present)[0])
                raise ValueError(f"ids must not already be in the index; id {ids[bad]} "
                                 f"(position {bad}) is. remove() it first.")
        if n == 0:
            return
        if self._metric == "cosine":
            x = _normalize(x)
        _, labels = self._coarse(x, 1)
        self._lists.add(np.ascontiguousarray(labels[:, 0]), ids, {"data": x})
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def remove(self, ids) -> int:
        """Remove vectors by id; ids not in the index are ignored.

        Parameters
        ----------
        ids : int or array-like of int

        Returns
        -------
        int
            How many vectors were removed.
        """
        arr = np.atleast_1d(np.asarray(ids))
        if arr.size == 0:
            return 0
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise TypeError(f"ids must be an integer or a 1-D array of integers; got "
                            f"dtype {arr.dtype} and shape {arr.shape}.")
        if arr.dtype.kind == "u":
            arr = arr[arr <= np.iinfo(np.int64).max]
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        arr = arr[arr >= 0]
        return self._lists.remove(arr)

    def reconstruct(self, id: int) -> np.ndarray:
        """The stored vector of ``id``, ndarray of shape (d,), float32.

        For "cosine" this is the normalised vector, as stored.
        """
        id = check_int("id", id)
        row = self._lists.row_of(id) if id >= 0 else -1
        if row < 0:
            raise KeyError(f"id {id} is not in the index.")
        return np.array(self._lists.payload["data"][row])

    # -- search ----------------------------------------------------------------------
    def search(self, q, k: int, nprobe: int = 1, *, path: str = "auto"):
        """The k nearest stored vectors of each query, among its nprobe nearest lists.

        Parameters
        ----------
        q : array-like of shape (nq, d) or (d,)
            float32 or float64, any memory order.
        k : int
            Results per query (>= 1); may exceed the index size (padded).
        nprobe : int, default 1
            Lists scanned per query (>= 1); values above nlist are clamped to nlist.
        path : {"auto", "batch", "list_major", "single"}, default "auto"
            Scan plan; all give identical results. "batch": parallel over queries;
            "list_major": parallel over lists, each list read once per group of queries
            (large batches); "single": each query parallel over its probed lists.

        Returns
        -------
        D : ndarray of shape (nq, k), float32
            "l2": squared distances ascending (inf where missing); "ip"/"cosine": scores
            descending (-inf where missing).
        I : ndarray of shape (nq, k), int64
            Ids, -1 where fewer than k vectors were found. Ties by ascending id.
        """
        self._check_trained("search")
        q = check_vectors(q, "q", d=self._d, owner=self._owner(), allow_1d=True)
        k = check_int("k", k, min_value=1)
        nprobe = min(check_int("nprobe", nprobe, min_value=1), self._nlist)
        check_choice("path", path, SEARCH_PATHS)
        nq = q.shape[0]
        if self._metric == "cosine":
            q = _normalize(q)
        out_d = np.empty((nq, k), dtype=np.float32)
        out_i = np.empty((nq, k), dtype=np.int64)
        if nq:
            _, probes = self._coarse(q, nprobe)
            probes = np.ascontiguousarray(probes, dtype=np.int64)
            if path == "auto":
                path = self._choose_path(nq, nprobe)
            self._scan(path, q, probes, out_d, out_i)
        missing = out_i == ID_SENTINEL
        out_i[missing] = -1
        if self._metric == "l2":
            out_d[missing] = np.inf
        else:
            np.negative(out_d, out=out_d)
            out_d[missing] = -np.inf
        return out_d, out_i

    def _choose_path(self, nq: int, nprobe: int) -> str:
        if nq < _n_threads():
            return "single"
        if (nq * nprobe / self._nlist >= IVF_LIST_MAJOR_MIN_QUERIES_PER_LIST
                and 4 * self._d >= IVF_LIST_MAJOR_MIN_ROW_BYTES):
            return "list_major"
        return "batch"

    def _scan_rows_flat(self, q, data, ids, out_d, out_i):
        """Top-k keys of each query over all rows of ``data`` (one flat list)."""
        metric = list_scan.METRIC_L2 if self._metric == "l2" else list_scan.METRIC_IP
        starts = np.zeros(1, dtype=np.int64)
        sizes = np.full(1, data.shape[0], dtype=np.int64)
        probes = np.zeros((q.shape[0], 1), dtype=np.int64)
        self._scan_single(q, data, ids, starts, sizes, probes, metric, out_d, out_i)

    @staticmethod
    def _scan_single(q, data, ids, starts, sizes, probes, metric, out_d, out_i):
        rows = int(sizes[probes].sum()) // max(probes.shape[0], 1)
        # Work in units of IVF_SINGLE_MIN_RUN rows of 64 features.
        n_runs = min(rows * max(data.shape[1], 64) // (64 * IVF_SINGLE_MIN_RUN),
                     _n_threads() * IVF_SINGLE_RUNS_PER_THREAD)
        if n_runs <= 1:  # too little work to pay for waking the other threads
            list_scan.scan_serial(q, data, ids, starts, sizes, probes, metric, out_d,
                                  out_i)
        else:
            list_scan.scan_single(q, data, ids, starts, sizes, probes, metric, n_runs,
                                  out_d, out_i)

    def _scan(self, path, q, probes, out_d, out_i):
        L = self._lists
        data = L.payload["data"]
        metric = list_scan.METRIC_L2 if self._metric == "l2" else list_scan.METRIC_IP
        if path == "batch":
            list_scan.scan_batch(q, data, L.ids, L.starts, L.sizes, probes, metric,
                                 out_d, out_i)
        elif path == "single":
            self._scan_single(q, data, L.ids, L.starts, L.sizes, probes, metric, out_d,
                              out_i)
        else:
            self._scan_list_major(q, probes, metric, out_d, out_i)

    def _scan_list_major(self, q, probes, metric, out_d, out_i):
        L = self._lists
        nq, nprobe = probes.shape
        k = out_d.shape[1]
        tile = max(1, IVF_SCAN_TILE_BYTES // (4 * self._d))
        batch = max(1, IVF_PARTIAL_BYTES // (nprobe * k * 12))
        n_chunks_max = 4 * _n_threads()
        for q0 in range(0, nq, batch):
            q1 = min(nq, q0 + batch)
            pb = probes[q0:q1]
            ptr, pairs = list_scan.list_groups(pb, self._nlist)
            # Deal lists, heaviest first, to chunks in snake order so chunks balance.
            work = L.sizes * np.diff(ptr)
            active = np.flatnonzero(ptr[1:] > ptr[:-1])
            active = active[np.argsort(-work[active], kind="stable")]
            n_chunks = max(1, min(n_chunks_max, active.size))
            pos = np.arange(active.size) % (2 * n_chunks)
            chunk_of = np.where(pos < n_chunks, pos, 2 * n_chunks - 1 - pos)
            order = np.argsort(chunk_of, kind="stable")
            chunk_lists = active[order].astype(np.int64)
            chunk_ptr = np.zeros(n_chunks + 1, dtype=np.int64)
            np.cumsum(np.bincount(chunk_of, minlength=n_chunks), out=chunk_ptr[1:])
            part_d = np.empty(((q1 - q0) * nprobe, k), dtype=np.float32)
            part_i = np.empty(((q1 - q0) * nprobe, k), dtype=np.int64)
            list_scan.scan_list_major(q[q0:q1], L.payload["data"], L.ids, L.starts,
                                      L.sizes, chunk_ptr, chunk_lists, ptr, pairs,
                                      nprobe, tile, metric, part_d, part_i)
            list_scan.merge_pairs(part_d, part_i, nprobe, out_d[q0:q1], out_i[q0:q1])

    # -- persistence -------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the index to ``path`` atomically (numba_ivf index file, no pickle).

        Read it back with :func:`numba_ivf.load`.
        """
        from ..persistence.format import write_index_file
        params = {"d": self._d, "nlist": self._nlist, "metric": self._metric,
                  "n_iter": self.n_iter, "seed": self.seed,
                  "max_points_per_centroid": self.max_points_per_centroid,
                  "next_id": self._next_id, "ntotal": len(self),
                  "trained": self.is_trained}
        arrays = {}
        if self.is_trained:
            starts, sizes, ids, payload = self._lists.compact_arrays()
            arrays = {"centroids": self._centroids, "list_starts": starts,
                      "list_sizes": sizes, "ids": ids, "data": payload["data"]}
        write_index_file(os.fspath(path), self.kind, params, arrays)

    @classmethod
    def _from_file(cls, f) -> "IVFFlat":
        from ..persistence.format import IndexFileError

        def bad(problem):
            return IndexFileError(f"'{f.path}': inconsistent IVFFlat file: {problem}")

        p = f.params
        try:
            index = cls(p["d"], p["nlist"], p["metric"], n_iter=p["n_iter"],
                        seed=p["seed"],
                        max_points_per_centroid=p["max_points_per_centroid"])
            next_id = check_int("next_id", p["next_id"], min_value=0)
            trained = bool(p["trained"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"bad or missing parameter ({exc})") from None
        if not trained:
            return index
        a = f.arrays
        d, nlist = index.d, index.nlist
        expect = {"centroids": ((nlist, d), np.float32),
                  "list_starts": ((nlist,), np.int64), "list_sizes": ((nlist,), np.int64),
                  "ids": (None, np.int64), "data": (None, np.float32)}
        for name, (shape, dtype) in expect.items():
            if name not in a:
                raise bad(f"array {name!r} is missing")
            arr = a[name]
            if arr.dtype != dtype or (shape is not None and arr.shape != shape):
                raise bad(f"array {name!r} has dtype {arr.dtype} and shape {arr.shape}, "
                          f"expected {np.dtype(dtype)} and {shape or '(n, ...)'}")
        n = a["ids"].shape[0]
        if a["data"].shape != (n, d):
            raise bad(f"array 'data' has shape {a['data'].shape}, expected ({n}, {d})")
        starts, sizes = a["list_starts"], a["list_sizes"]
        if (sizes < 0).any() or (starts < 0).any() or (starts + sizes > n).any() \
                or int(sizes.sum()) != n:
            raise bad("list_starts/list_sizes do not tile the stored rows")
        if not np.isfinite(a["centroids"]).all():
            raise bad("centroids contain NaN or infinity")
        index._set_centroids(np.array(a["centroids"]))
        index._lists = InvertedLists.from_arrays(starts, sizes, a["ids"],
                                                 {"data": a["data"]})
        index._next_id = next_id
        return index


register_kind("IVFFlat", IVFFlat._from_file)
