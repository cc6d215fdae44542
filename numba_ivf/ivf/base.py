"""What every IVF index shares: coarse quantizer, ids, validation, results, persistence.

``IVFBase`` holds the parameters, the coarse centroids and the inverted lists, and
implements ``train`` (coarse k-means, then the subclass's own training), ``add`` (id
checks, cosine normalisation, assignment, then the subclass's row encoding), ``remove``,
``reconstruct``, the search preamble and result conventions, and ``save`` / load. A
subclass supplies the list payload and the hooks named ``_new_lists``, ``_train_rest``,
``_encode_rows``, ``_reconstruct_row``, ``search`` and the ``_save_*`` / ``_load_*``
pair. Orchestration only: no loops over vectors here.

One query per call is dominated by Python overhead (a full validation costs more than
scanning a few lists), so ``_one_query`` recognises the common case -- one C-contiguous
float32/float64 row, plain int ``k`` and ``nprobe`` -- with a handful of cheap checks, and
a subclass hands it to a single fused kernel that also checks the values (finite,
within the value limit). Anything else, including every error, takes the general path
and its messages.
"""

from __future__ import annotations

import os

import numpy as np

from .._threads import get_num_threads
from .._config import (FILTER_BITMAP_MAX_BYTES, FILTER_EXACT_GATHER_MIN_QUERIES,
                       FILTER_EXACT_ROWS_PER_LIST, FILTER_MIN_CANDIDATES_FACTOR,
                       IVF_COARSE_SCAN_MAX_QUERIES)
from .._validation import check_int, check_metric, check_vectors
from ..kernels.common.topk import ID_SENTINEL
from ._lists import InvertedLists
from ._rwlock import RWLock, reading, writing

__all__ = ["IVFBase", "MAX_ID", "check_ids", "normalize_rows", "removal_ids"]

# The largest id an index accepts: ID_SENTINEL (2**63 - 1) marks "no result" inside the
# kernels, so it can never be a stored id.
MAX_ID = int(ID_SENTINEL) - 1


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero); always a new float32 array.

    One kernel (``list_scan.normalize_rows_into``) for every path, so that a query
    searched alone (``search_one``) is rounded exactly as in a batch.
    """
    from ..kernels.scan.list_scan import normalize_rows_into
    out = np.empty(x.shape, dtype=np.float32)
    normalize_rows_into(x, out)
    return out


def check_ids(ids, n: int, name: str = "ids") -> np.ndarray:
    """Return ``ids`` as a C-contiguous int64 array of shape (n,), all >= 0 and unique."""
    arr = np.asarray(ids)
    if arr.size == 0 and n == 0:
        return np.empty(0, dtype=np.int64)  # [] is float64 to numpy; no ids is fine
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers (int64); got dtype {arr.dtype}.")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one id per row of x; got "
                         f"shape {arr.shape}.")
    if n and arr.max() > MAX_ID:
        bad = int(np.argmax(arr))
        raise ValueError(f"{name} must be at most {MAX_ID} (2**63 - 2; 2**63 - 1 marks "
                         f"a missing result); got {arr[bad]} at position {bad}.")
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


def removal_ids(ids) -> np.ndarray:
    """``remove``'s ids as int64, only those that can be stored (others are ignored)."""
    arr = np.atleast_1d(np.asarray(ids))
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"ids must be an integer or a 1-D array of integers; got "
                        f"dtype {arr.dtype} and shape {arr.shape}.")
    # No stored id is negative or above MAX_ID; filtering before the cast also keeps
    # uint64 ids past int64 from wrapping round.
    return np.ascontiguousarray(arr[(arr >= 0) & (arr <= MAX_ID)], dtype=np.int64)


def _n_threads() -> int:
    return get_num_threads()


class IVFBase:
    """Shared state and behaviour of the IVF indexes (see the module docstring)."""

    kind = "IVF"

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
        self._next_id = 0
        # Searches share it, add/remove/train take it alone (see _rwlock).
        self._rw = RWLock()

    # copy.deepcopy and pickle carry everything but the lock; the copy gets its own.
    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_rw"]
        state.pop("_one_plan_cache", None)     # a cache holding kernels and list arrays
        state.pop("_one_calls", None)          # compiled entry points do not pickle
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._rw = RWLock()

    # -- hooks -------------------------------------------------------------------------
    def _new_lists(self) -> InvertedLists:
        raise NotImplementedError

    def _train_rest(self, x, centroids, prepared) -> dict:
        """Train what follows the coarse quantizer; return attributes to set."""
        return {}

    def _encode_rows(self, x, labels) -> dict:
        raise NotImplementedError

    def _reconstruct_row(self, row: int) -> np.ndarray:
        raise NotImplementedError

    def _save_params(self) -> dict:
        return {}

    def _save_arrays(self) -> dict:
        return {}

    def _load_arrays(self, arrays, bad) -> None:
        pass

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

    # -- helpers -----------------------------------------------------------------------
    def _owner(self) -> str:
        return f"{self.kind}(d={self._d})"

    def _check_trained(self, what: str):
        if not self.is_trained:
            raise RuntimeError(f"{self.kind}.{what}: the index is not trained; call "
                               f"train(x) first.")

    def _set_centroids(self, centroids: np.ndarray, prepared=None):
        """Install centroids and their kernel layouts (``prepared``, when the caller has
        them already for these same float32 centroids)."""
        from ..kernels.assign.assign import prepare_centroids
        self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if prepared is None:
            prepared = prepare_centroids(self._centroids, self._metric == "l2")
        self._prepared = prepared

    def _coarse(self, x: np.ndarray, p: int):
        """The p best lists of each (prepared) row, best first: (scores, lists); scores
        are squared distances ("l2") or inner products.

        A few queries take a GEMV over the centroid panels (the tiled kernel's
        register block is built for many rows; the one-query kernels run the same code,
        so one query gets the same lists and scores either way); larger batches use the
        tiled kernel. The choice depends only on the number of rows, never on the path.
        """
        from ..kernels.assign.assign import assign_prepared, topk_prepared
        if x.shape[0] <= IVF_COARSE_SCAN_MAX_QUERIES:
            from ..kernels.scan.list_scan import METRIC_IP, METRIC_L2, coarse_few
            keys = np.empty((x.shape[0], p), dtype=np.float32)
            lists = np.empty((x.shape[0], p), dtype=np.int64)
            l2 = self._metric == "l2"
            coarse_few(x, self._prepared.panels, self._nlist, METRIC_L2 if l2 else METRIC_IP,
                       keys, lists)
            if not l2:
                np.negative(keys, out=keys)   # minimised keys -> scores (exact)
            return keys, lists
        if p == 1:
            labels, scores = assign_prepared(x, self._prepared)
            return scores[:, None], labels[:, None]
        return topk_prepared(x, self._prepared, p)

    # -- training and adding ---------------------------------------------------------
    @writing
    def train(self, x) -> None:
        """Learn the ``nlist`` coarse centroids (k-means), then what the index encodes.

        Parameters
        ----------
        x : array-like of shape (n, d)
            Training vectors, n >= nlist; float32 or float64, any memory order.
            "ip" and "cosine" use spherical k-means (unit-norm centroids).

        Nothing is changed if any check fails.
        """
        from ..kernels.assign.assign import prepare_centroids
        from ..kmeans import KMeans
        x = check_vectors(x, "x", d=self._d, owner=self._owner())
        if x.shape[0] < self._nlist:
            raise ValueError(f"x has {x.shape[0]} rows, but training {self.kind}(nlist="
                             f"{self._nlist}) needs at least nlist rows.")
        if len(self):
            raise RuntimeError(f"{self.kind}.train: the index already holds {len(self)} "
                               f"vectors; build a new index to retrain.")
        if self._metric == "cosine":
            x = normalize_rows(x)
        km = KMeans(self._nlist, n_iter=self.n_iter, seed=self.seed,
                    max_points_per_centroid=self.max_points_per_centroid,
                    metric=self._metric, spherical=self._metric != "l2")
        km.fit(x)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        prepared = prepare_centroids(centroids, self._metric == "l2")
        rest = self._train_rest(x, centroids, prepared)
        self.__dict__.pop("_one_plan_cache", None)      # built for the old quantizer
        self.__dict__.pop("_one_calls", None)
        self._set_centroids(centroids, prepared)
        for name, value in rest.items():
            setattr(self, name, value)

    @writing
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
            if self._next_id + n - 1 > MAX_ID:
                raise OverflowError(
                    f"{self.kind}.add: the default ids would run past {MAX_ID}, the "
                    f"largest id an index accepts (the next default id is "
                    f"{self._next_id}, x has {n} rows); pass ids= explicitly.")
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
        # The one-query plan holds the list arrays: while it does, numpy cannot resize
        # them in place (refcheck) and the arena would be copied.
        self.__dict__.pop("_one_plan_cache", None)
        if self._metric == "cosine":
            x = normalize_rows(x)
        _, labels = self._coarse(x, 1)
        labels = np.ascontiguousarray(labels[:, 0])
        self._lists.add(labels, ids, self._encode_rows(x, labels))
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    @writing
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
        arr = removal_ids(ids)
        return self._lists.remove(arr) if arr.size else 0

    @reading
    def reconstruct(self, id: int) -> np.ndarray:
        """The stored vector of ``id`` (or its decoded approximation), shape (d,) float32.

        For "cosine" this is (the approximation of) the normalised vector, as stored.
        """
        id = check_int("id", id)
        row = self._lists.row_of(id) if id >= 0 else -1
        if row < 0:
            raise KeyError(f"id {id} is not in the index.")
        return self._reconstruct_row(row)

    @reading
    def range_search(self, q, radius: float, nprobe: int = 1, *, filter=None):
        """Every stored vector within ``radius`` of each query, among its nprobe nearest
        lists (FAISS's ``range_search``).

        Parameters
        ----------
        q : array-like of shape (nq, d) or (d,)
            float32 or float64, any memory order ("cosine": normalised, as in search).
        radius : float
            Finite. "l2": keep squared distances < radius; "ip"/"cosine": keep scores
            > radius.
        nprobe : int, default 1
            Lists scanned per query (>= 1); values above nlist are clamped to nlist.
        filter : optional
            Anything ``search`` accepts as a filter; rows it disallows are never
            returned (the probed lists are the same nprobe lists).

        Returns
        -------
        lims : ndarray of shape (nq + 1,), int64
            Query i's results are ``D[lims[i]:lims[i + 1]]`` and ``I[...]``.
        D : ndarray of shape (lims[-1],), float32
            "l2": squared distances ascending; "ip"/"cosine": scores descending. IVFFlat
            and IVFPQ with refine: exact (IVFFlat's bit for bit as in search); IVFPQ
            without refine: PQ (ADC) approximations from float tables, for 4-bit codes
            too (not the quantized fast-scan tables of search).
        I : ndarray of shape (lims[-1],), int64
            Ids; ties by ascending id.

        Notes
        -----
        IVFPQ with refine computes exact distances over every row of the probed lists
        (there is no k to pre-select candidates for), so its results are exact within
        them. An empty index or no query gives ``lims`` of zeros and empty D, I.

        Examples
        --------
        >>> import numpy as np, numba_ivf
        >>> x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
        >>> index = numba_ivf.IVFFlat(16, nlist=8)
        >>> index.train(x)
        >>> index.add(x)
        >>> lims, D, I = index.range_search(x[:2], radius=1e-6, nprobe=8)
        >>> lims.tolist(), I.tolist()
        ([0, 1, 2], [0, 1])
        """
        from ._range import range_search
        return range_search(self, q, radius, nprobe, filter)

    # -- search helpers ----------------------------------------------------------------
    def _check_search(self, q, k, nprobe):
        q = check_vectors(q, "q", d=self._d, owner=self._owner(), allow_1d=True)
        k = check_int("k", k, min_value=1)
        nprobe = min(check_int("nprobe", nprobe, min_value=1), self._nlist)
        if self._metric == "cosine":
            q = normalize_rows(q)
        return q, k, nprobe

    def _one_query(self, q, k, nprobe):
        """``(row, k, nprobe)`` if this call may take a one-query fast path, else None.

        Eligible: a trained index, ``q`` an ndarray of dtype float32 or float64 with shape
        (d,) or (1, d) and C-contiguous, ``k`` and ``nprobe`` Python ints >= 1. ``row``
        is a (d,) view of q (not checked for NaN/inf or the value limit: the fast kernel
        does that and the caller falls back to the general path, which raises). nprobe
        is clamped to nlist.
        """
        if (type(q) is not np.ndarray or type(k) is not int or type(nprobe) is not int
                or k < 1 or nprobe < 1 or self._centroids is None):
            return None
        if q.dtype.char not in "fd" or not q.flags.c_contiguous:
            return None
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        if q.ndim != 1 or q.shape[0] != self._d:
            return None
        return q, k, min(nprobe, self._nlist)

    # -- filtered search --------------------------------------------------------------
    def _filter_args(self, k, nprobe, min_candidates, max_nprobe, ntotal=None):
        """(need, max_nprobe) of a filtered search, checked: need >= k allowed rows
        covered, at most max_nprobe (<= nlist, >= nprobe) lists probed. ``ntotal``: the
        vectors searched (default len(self); a sharded index passes all its shards')."""
        need = FILTER_MIN_CANDIDATES_FACTOR * k if min_candidates is None else \
            check_int("min_candidates", min_candidates, min_value=1)
        if max_nprobe is None:
            maxp = self._nlist
        else:
            maxp = min(check_int("max_nprobe", max_nprobe, min_value=1), self._nlist)
            if maxp < nprobe:
                raise ValueError(f"max_nprobe must be >= nprobe; got max_nprobe="
                                 f"{max_nprobe} and nprobe={nprobe}.")
        # Covered rows never pass the index's size: the cap changes no result and keeps
        # a huge min_candidates within the kernels' int64.
        return min(max(need, k), (len(self) if ntotal is None else ntotal) + 1), maxp

    def _exact_queries(self, rf) -> np.ndarray:
        """Which queries a filtered search answers exactly over their allowed rows
        (their filter allows at most FILTER_EXACT_ROWS_PER_LIST * nlist rows)."""
        limit = FILTER_EXACT_ROWS_PER_LIST * self._nlist
        return rf.n_allowed[rf.fslot] <= limit

    def _filtered_probes(self, q, rf, nprobe, need, max_nprobe):
        """Coarse step of a filtered search: (scores, probes) of shape (nq, w), in
        coarse order and -1 padded, holding only lists with an allowed row: those among
        the nprobe nearest, then the next ones until the allowed rows covered reach
        ``need`` (or max_nprobe lists were looked at).

        The coarse top-p is first taken for an estimate of p from the filter's
        selectivity (twice the lists that hold ``need`` allowed rows on average), then,
        for the queries that fell short, for 4x as many lists at a time: a correlated
        filter leaves many queries short of the estimate, and one jump to max_nprobe
        cost them a full sort of the centroids (measured on fashion-mnist class 0:
        median 75 lists needed of 980, 6x slower coarse step).
        """
        from ..kernels.filtering import filter_bits as fb
        nq = q.shape[0]
        lo = max(int(rf.n_allowed.min()), 1) if rf.n_allowed.size else 1
        p = min(max_nprobe, max(nprobe, int(np.ceil(2.0 * need * self._nlist / lo))))
        rounds = []
        todo = np.arange(nq)
        while True:
            whole = todo.size == nq
            qs = q if whole else np.ascontiguousarray(q[todo])
            scores, probes = self._coarse(qs, p)
            probes = np.ascontiguousarray(probes, dtype=np.int64)
            scores = np.ascontiguousarray(scores, dtype=np.float32)
            o = np.empty_like(probes)
            o_s = np.empty_like(scores)
            covered = np.empty(todo.size, dtype=np.int64)
            slots = rf.fslot if whole else np.ascontiguousarray(rf.fslot[todo])
            trim = fb.trim_probes if todo.size >= _n_threads() else fb.trim_probes_serial
            w = trim(probes, scores, rf.fcount, slots, nprobe, need, o, o_s, covered)
            rounds.append((todo, o, o_s, max(w, 1)))
            if p >= max_nprobe:
                break
            short = (covered < need) & (covered < rf.n_allowed[slots])
            if not short.any():
                break
            todo = todo[short]
            p = min(max_nprobe, 4 * p)
        if len(rounds) == 1:
            _, o, o_s, w = rounds[0]
            return np.ascontiguousarray(o_s[:, :w]), np.ascontiguousarray(o[:, :w])
        width = max(r[3] for r in rounds)
        out = np.full((nq, width), -1, dtype=np.int64)
        out_s = np.zeros((nq, width), dtype=np.float32)
        for todo, o, o_s, w in rounds:      # later rounds overwrite their queries
            out[todo] = -1
            out[todo, :w] = o[:, :w]
            out_s[todo, :w] = o_s[:, :w]
        return out_s, out

    def _search_filtered(self, q, k, nprobe, filter, min_candidates, max_nprobe, scan,
                         exact, out_d, out_i):
        """Filtered search of the (checked, prepared) queries q into (out_d, out_i),
        minimised keys with ID_SENTINEL padding.

        ``scan(q, scores, probes, rf)`` returns (keys, ids) of shape (len(q), k) for a
        subset of the queries (rf's ``fslot`` cut to it). ``exact``: the index stores
        its float32 vectors (payload "data"), so queries whose filter allows few rows
        (``_exact_queries``) are searched exactly over those rows (``_exact_stored``);
        the others probe as ``_filtered_probes`` says. Per-query filters are turned into
        bitmaps FILTER_BITMAP_MAX_BYTES at a time.
        """
        from ..filters import PerQueryFilter, RowFilter, as_filter, bitmap_bytes, prepare
        nq = q.shape[0]
        spec = as_filter(filter, nq)
        need, maxp = self._filter_args(k, nprobe, min_candidates, max_nprobe)
        step = nq
        if isinstance(spec, PerQueryFilter):
            step = max(1, FILTER_BITMAP_MAX_BYTES // bitmap_bytes(self._lists, 1))
        for lo in range(0, nq, step):
            hi = min(nq, lo + step)
            rf = prepare(spec.sub(lo, hi) if isinstance(spec, PerQueryFilter) else spec,
                         self._lists, hi - lo)
            ex = self._exact_queries(rf) if exact else np.zeros(hi - lo, dtype=bool)
            for sel, is_exact in ((~ex, False), (ex, True)):
                idx = np.flatnonzero(sel)
                if not idx.size:
                    continue
                whole = idx.size == hi - lo
                qs = q[lo:hi] if whole else np.ascontiguousarray(q[lo + idx])
                sub = rf if whole else RowFilter(rf.fbits, rf.fcount,
                                                 np.ascontiguousarray(rf.fslot[idx]),
                                                 rf.n_allowed)
                if is_exact:
                    d, i = self._exact_stored(qs, sub, k)
                else:
                    scores, probes = self._filtered_probes(qs, sub, nprobe, need, maxp)
                    d, i = scan(qs, scores, probes, sub)
                if whole:
                    out_d[lo:hi], out_i[lo:hi] = d, i
                else:
                    out_d[lo + idx], out_i[lo + idx] = d, i

    def _exact_stored(self, q, rf, k):
        """Exact top-k (keys, ids) over the allowed rows of the stored vectors.

        A filter shared by at least FILTER_EXACT_GATHER_MIN_QUERIES queries has its rows
        gathered into one contiguous run, scanned four rows per key call; the other
        queries read their rows in place, one key each (``list_scan.scan_bits``). Both
        give the IVF-Flat scan's keys bit for bit. Measured (glove-50, 1024 allowed
        rows): gathering made a 2000-query batch 3x faster than reading every list with
        an allowed row through its bitmap, but one query per call slower (fashion-mnist,
        784-d: the copy cost more than the keys).
        """
        from ..kernels.scan import list_scan
        from ..kernels.filtering._bits import no_filter
        from ..kernels.filtering.filter_bits import gather_allowed
        L = self._lists
        data = L.payload["data"]
        nq = q.shape[0]
        out_d = np.empty((nq, k), dtype=np.float32)
        out_i = np.empty((nq, k), dtype=np.int64)
        metric = list_scan.METRIC_L2 if self._metric == "l2" else list_scan.METRIC_IP
        slots, inverse, counts = np.unique(rf.fslot, return_inverse=True,
                                           return_counts=True)
        few = counts[inverse] < FILTER_EXACT_GATHER_MIN_QUERIES
        if few.any():
            who = np.flatnonzero(few)
            qs = q if who.size == nq else np.ascontiguousarray(q[who])
            dd = np.empty((who.size, k), dtype=np.float32)
            ii = np.empty((who.size, k), dtype=np.int64)
            fn = list_scan.scan_bits if who.size >= _n_threads() else \
                list_scan.scan_bits_serial
            fn(qs, data, L.ids, rf.fbits, np.ascontiguousarray(rf.fslot[who]), metric,
               dd, ii)
            out_d[who], out_i[who] = dd, ii
        for j in np.flatnonzero(counts >= FILTER_EXACT_GATHER_MIN_QUERIES):
            f = slots[j]
            who = np.flatnonzero(inverse == j)
            n = int(rf.n_allowed[f])
            sub_d = np.empty((n, data.shape[1]), dtype=np.float32)
            sub_i = np.empty(n, dtype=np.int64)
            gather_allowed(rf.fbits[f], n, L.ids, data, sub_i, sub_d)
            qs = q if who.size == nq else np.ascontiguousarray(q[who])
            dd = np.empty((who.size, k), dtype=np.float32)
            ii = np.empty((who.size, k), dtype=np.int64)
            fn = list_scan.scan_batch if who.size >= _n_threads() else \
                list_scan.scan_serial
            fn(qs, sub_d, sub_i, np.zeros(1, dtype=np.int64),
               np.array([n], dtype=np.int64), np.zeros((who.size, 1), dtype=np.int64),
               *no_filter(), metric, dd, ii)
            out_d[who], out_i[who] = dd, ii
        return out_d, out_i

    def _finish(self, keys: np.ndarray, ids: np.ndarray):
        """Minimised keys + sentinel ids -> FAISS-convention (D, I), in place."""
        missing = ids == ID_SENTINEL
        ids[missing] = -1
        if self._metric == "l2":
            keys[missing] = np.inf
        else:
            np.negative(keys, out=keys)
            keys[missing] = -np.inf
        return keys, ids

    # -- persistence -------------------------------------------------------------------
    @reading
    def save(self, path) -> None:
        """Write the index to ``path`` atomically (numba_ivf index file, no pickle).

        Read it back with :func:`numba_ivf.load`.
        """
        from ..persistence.format import write_index_file
        params = self._params()
        params.update({"next_id": self._next_id, "ntotal": len(self),
                       "trained": self.is_trained})
        arrays = {}
        if self.is_trained:
            starts, sizes, ids, payload = self._lists.compact_arrays()
            arrays = {"centroids": self._centroids, "list_starts": starts,
                      "list_sizes": sizes, "ids": ids}
            arrays.update(payload)
            arrays.update(self._save_arrays())
        write_index_file(os.fspath(path), self.kind, params, arrays)

    def _params(self) -> dict:
        """The constructor's parameters (what ``_new_from_params`` takes)."""
        p = {"d": self._d, "nlist": self._nlist, "metric": self._metric,
             "n_iter": self.n_iter, "seed": self.seed,
             "max_points_per_centroid": self.max_points_per_centroid}
        p.update(self._save_params())
        return p

    @classmethod
    def _new_from_params(cls, p):
        return cls(p["d"], p["nlist"], p["metric"], n_iter=p["n_iter"], seed=p["seed"],
                   max_points_per_centroid=p["max_points_per_centroid"])

    @classmethod
    def _from_file(cls, f):
        from ..persistence.format import IndexFileError

        def bad(problem):
            return IndexFileError(f"'{f.path}': inconsistent {cls.kind} file: {problem}")

        p = f.params
        try:
            index = cls._new_from_params(p)
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
                  "ids": (None, np.int64)}
        for name, (shape, dtype) in expect.items():
            if name not in a:
                raise bad(f"array {name!r} is missing")
            arr = a[name]
            if arr.dtype != dtype or (shape is not None and arr.shape != shape):
                raise bad(f"array {name!r} has dtype {arr.dtype} and shape {arr.shape}, "
                          f"expected {np.dtype(dtype)} and {shape or '(n, ...)'}")
        if not np.isfinite(a["centroids"]).all():
            raise bad("centroids contain NaN or infinity")
        index._load_arrays(a, bad)
        try:
            index._lists = index._lists.adopt_arrays(a["list_starts"], a["list_sizes"],
                                                     a["ids"], a)
        except ValueError as exc:
            raise bad(str(exc)) from None
        index._set_centroids(np.array(a["centroids"]))
        index._next_id = next_id
        return index
