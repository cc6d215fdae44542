"""k-means clustering (Lloyd's algorithm) over the tiled assignment kernel.

Orchestration only: the assignment, the centroid sums and the k-means++ distances are
kernels in ``numba_ivf.kernels``; this module holds parameters, the random choices and
the empty-cluster split.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ._config import (KMEANS_BOUND_SLACK, KMEANS_GATHER_ROWS, KMEANS_PARALLEL_MIN_FLOP,
                      KMEANS_SPLIT_EPS)
from ._threads import serialized_launches, threads
from ._validation import METRICS, check_choice, check_int, check_vectors
from .kernels.assign import assign as _assign
from .kernels.assign.kmeans_update import centroid_sums, own_sqdist, update_min_sqdist

INITS = ("random", "k-means++")


def _n_chunks() -> int:
    import numba
    # Two chunks per thread: balanced, and a function of the thread count only, so the
    # same seed and thread count give bit-identical centroids.
    return 2 * numba.get_num_threads()


def rms_scale(x: np.ndarray) -> float:
    """The RMS coordinate of a C-contiguous float32 array (1.0 for all zeros): the scale
    of KMeans's bound slack and empty-cluster splits (and of the batched PQ trainer's,
    which must equal KMeans's bit for bit)."""
    # A float32 BLAS dot (3 ms at 50k x 128) is accurate enough; the float64 copy it
    # replaced took 26 ms.
    flat = x.reshape(-1)
    with np.errstate(over="ignore"):
        sumsq = float(np.dot(flat, flat))
    if not np.isfinite(sumsq):
        # float32 overflow (many rows near the value limit): an infinite scale made
        # every empty-cluster split infinite. Rare, so the slow float64 sum is fine.
        sumsq = float(np.einsum("i,i->", flat, flat, dtype=np.float64))
    return float(np.sqrt(sumsq / max(flat.size, 1))) or 1.0


class KMeans:
    """k-means clustering with a parallel tiled assignment step.

    Parameters
    ----------
    n_clusters : int
        Number of centroids k (>= 1).
    n_iter : int, default 25
        Lloyd iterations (assignment + update).
    init : {"random", "k-means++"}, default "random"
        "random" picks k distinct training rows (as FAISS does); "k-means++" samples
        rows with probability proportional to their squared distance to the centres
        chosen so far (costs k passes over the data).
    seed : int or None, default 1234
        Seed of every random choice (subsampling, init, empty-cluster splits).
    max_points_per_centroid : int or None, default 256
        If there are more than ``n_clusters * max_points_per_centroid`` rows, train on a
        random subset of that size (with a warning), as FAISS does. None: use all rows.
    spherical : bool, default False
        Re-normalise the centroids to unit length after every update. Always on for
        ``metric="cosine"``; the natural choice for "ip".
    metric : {"l2", "ip", "cosine"}, default "l2"
        "l2" minimises squared distances; "ip" maximises inner products; "cosine"
        normalises the rows and maximises cosine similarity.
    variant : {"tiled", "monolithic", "scalar", "screened"}, default "tiled"
        Assignment kernel (see :func:`numba_ivf.assign_nearest`). "tiled" takes the
        exact int8 screen (``kernels.assign.screen``) for its batches where it is
        faster (AVX-512 VNNI, d >= 128, k >= 64); "screened" forces the screen, without
        the bounds.
    bounds : bool, default True
        Skip the points whose nearest centroid provably did not change (Hamerly's
        bounds: an upper bound on the distance to the own centroid, a lower bound on
        the distance to every other one, moved by how far the centroids moved). The
        assignments are Lloyd's, so the result is the same (up to float32 rounding of
        near-ties); only the work shrinks, by a lot once clusters settle. Used with the
        "tiled" variant when the assignment is a Euclidean argmin ("l2", or any
        spherical fit, where argmax x.c = argmin ||x - c|| because ||c|| = 1).
    early_stop : bool, default True
        Stop once an iteration assigns every point to the same centroid as the
        iteration before (with no empty cluster split): the centroids are then a fixed
        point, so the remaining iterations would return exactly the same centroids.
        ``n_iter_`` tells how many iterations ran (FAISS's Clustering stops likewise
        when the objective stops changing).
    verbose : bool, default False
        Print one line per iteration (objective, time, splits, points recomputed).

    Attributes
    ----------
    centroids : ndarray of shape (n_clusters, d), float32
    objective : list of float
        Per iteration run, the objective of that iteration's assignment: the sum of
        squared distances ("l2", never increases) or the sum of scores ("ip"/"cosine",
        never decreases), as ``faiss.Kmeans.obj``.
    n_iter_ : int
        Iterations run: ``n_iter``, or fewer if ``early_stop`` found a fixed point.
    n_features_in_ : int
    n_split_ : int
        Empty clusters split over the whole fit.

    Examples
    --------
    >>> import numpy as np, numba_ivf
    >>> x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    >>> km = numba_ivf.KMeans(8, n_iter=10, seed=0).fit(x)
    >>> km.centroids.shape, km.predict(x[:3]).shape
    ((8, 16), (3,))
    """

    def __init__(self, n_clusters: int, n_iter: int = 25, init: str = "random",
                 seed: int | None = 1234, max_points_per_centroid: int | None = 256,
                 spherical: bool = False, metric: str = "l2", variant: str = "tiled",
                 bounds: bool = True, early_stop: bool = True, verbose: bool = False):
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.init = init
        self.seed = seed
        self.max_points_per_centroid = max_points_per_centroid
        self.spherical = spherical
        self.metric = metric
        self.variant = variant
        self.bounds = bounds
        self.early_stop = early_stop
        self.verbose = verbose

    # ----------------------------------------------------------------- validation
    def _check_params(self):
        k = check_int("n_clusters", self.n_clusters, min_value=1)
        check_int("n_iter", self.n_iter, min_value=0)
        check_choice("init", self.init, INITS)
        check_choice("metric", self.metric, METRICS)
        check_choice("variant", self.variant, _assign.VARIANTS)
        if self.max_points_per_centroid is not None:
            check_int("max_points_per_centroid", self.max_points_per_centroid, min_value=1)
        if self.seed is not None:
            check_int("seed", self.seed)
        for name in ("spherical", "bounds", "early_stop"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {value!r}.")
        return k

    # ----------------------------------------------------------------- fit
    @serialized_launches
    def fit(self, x, init_centroids=None) -> "KMeans":
        """Cluster the rows of ``x``.

        Parameters
        ----------
        x : array-like of shape (n, d)
            float32 or float64, any memory order; n >= n_clusters.
        init_centroids : array-like of shape (n_clusters, d), optional
            Start from these centroids instead of ``init`` (as
            ``faiss.Kmeans.train(x, init_centroids=...)``).

        Returns
        -------
        self
        """
        self._check_params()
        x = check_vectors(x, "x")
        return self._fit_validated(x, init_centroids)

    def _fit_validated(self, x: np.ndarray, init_centroids=None) -> "KMeans":
        """``fit`` of a C-contiguous float32 x that the caller has validated, with its
        own value limit: ``ProductQuantizer`` fits sub-vectors of residuals, which may
        reach twice the limit of vectors of their length (see ``_config``)."""
        k = self._check_params()
        n, d = x.shape
        if n < k:
            raise ValueError(f"x has {n} rows, but n_clusters={k}: k-means needs at "
                             f"least as many rows as clusters.")
        if init_centroids is not None:
            init_centroids = check_vectors(init_centroids, "init_centroids", d=d,
                                           owner=f"x (d={d})")
            if init_centroids.shape[0] != k:
                raise ValueError(f"init_centroids has {init_centroids.shape[0]} rows, "
                                 f"but n_clusters={k}.")
        if 2.0 * min(n, k * (self.max_points_per_centroid or n)) * d * k < \
                KMEANS_PARALLEL_MIN_FLOP:
            with threads(1):
                return self._fit(x, k, init_centroids)
        return self._fit(x, k, init_centroids)

    def _fit(self, x, k, init_centroids):
        n, d = x.shape
        rng = np.random.default_rng(self.seed)
        metric = self.metric
        spherical = bool(self.spherical) or metric == "cosine"
        if metric == "cosine":
            x = _assign._normalize_rows(x)
        x = self._subsample(x, k, rng)
        n = x.shape[0]

        if init_centroids is not None:
            centroids = init_centroids.copy()
        elif self.init == "random":
            centroids = x[np.sort(rng.choice(n, size=k, replace=False))].copy()
        else:
            centroids = self._kmeanspp(x, k, rng)
        if spherical:
            centroids = _assign._normalize_rows(centroids)

        l2 = metric == "l2"
        kernel_metric = "l2" if l2 else "ip"
        # Hamerly's bounds need a Euclidean argmin: "l2", or unit-norm centroids.
        use_bounds = self.bounds and self.variant == "tiled" and (l2 or spherical)
        scale = rms_scale(x)
        self.objective = []
        self.n_split_ = 0
        self.n_recomputed_ = []
        state = None
        if use_bounds and not l2:
            xnorm2 = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        prev_labels, n_split = None, 0
        self.n_iter_ = 0
        for it in range(self.n_iter):
            t0 = time.perf_counter()
            if use_bounds:
                labels, dist, state = self._assign_bounded(x, centroids, state, scale)
                if not l2:  # spherical ip/cosine: report scores, as the plain path does
                    dist = (xnorm2 + 1.0 - dist) / 2.0
            else:
                labels, dist = self._assign(x, centroids, kernel_metric)
                self.n_recomputed_.append(n)
            t_assign = time.perf_counter() - t0
            self.objective.append(float(dist.sum(dtype=np.float64)))
            self.n_iter_ = it + 1
            # Same labels as last time and no split since: the update would return the
            # current centroids again, bit for bit, so every later iteration is a no-op.
            if (self.early_stop and prev_labels is not None and n_split == 0
                    and np.array_equal(labels, prev_labels)):
                if self.verbose:
                    print(f"KMeans iteration {it + 1}/{self.n_iter}: objective="
                          f"{self.objective[-1]:.6g}, no assignment changed: converged",
                          flush=True)
                break
            prev_labels = labels.copy()
            sums, counts = centroid_sums(x, labels, k, _n_chunks())
            old = centroids
            centroids, n_split = self._update(sums, counts, centroids, rng, scale)
            if spherical:
                centroids = _assign._normalize_rows(centroids)
            self._check_finite(centroids, x, it)
            if use_bounds:
                state = self._move_bounds(state, labels, old, centroids)
            self.n_split_ += n_split
            if self.verbose:
                print(f"KMeans iteration {it + 1}/{self.n_iter}: objective="
                      f"{self.objective[-1]:.6g} (assign {t_assign:.3f} s, total "
                      f"{time.perf_counter() - t0:.3f} s), {n_split} empty split, "
                      f"{self.n_recomputed_[-1]} points recomputed", flush=True)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.n_features_in_ = d
        self._prepared = None
        return self

    @staticmethod
    def _check_finite(centroids, x, it):
        """Raise rather than return (or let an index save) a NaN/inf centroid.

        Inputs within the value limit keep every centroid finite (``_config``), so
        this only fires on a bug or on input that bypassed the checks; k * d
        comparisons, nothing next to an assignment step.
        """
        bad = ~np.isfinite(centroids)
        if bad.any():
            c = int(np.argwhere(bad)[0][0])
            why = ("x holds NaN or infinity" if not np.isfinite(x).all() else
                   f"largest |x| is {float(np.abs(x).max()):.6g}; rescale x")
            raise FloatingPointError(f"KMeans: centroid {c} became NaN or infinite in "
                                     f"iteration {it + 1} ({why}).")

    def _subsample(self, x, k, rng):
        mppc = self.max_points_per_centroid
        n = x.shape[0]
        if mppc is None or n <= k * mppc:
            return x
        m = k * mppc
        warnings.warn(f"KMeans: sampling {m} of {n} training rows (n_clusters={k} x "
                      f"max_points_per_centroid={mppc}); pass max_points_per_centroid="
                      f"None to train on all rows.", UserWarning, stacklevel=3)
        return x[np.sort(rng.choice(n, size=m, replace=False))]

    def _kmeanspp(self, x, k, rng):
        n, d = x.shape
        centroids = np.empty((k, d), dtype=np.float32)
        first = int(rng.integers(n))
        centroids[0] = x[first]
        min_d2 = np.full(n, np.inf)
        total = update_min_sqdist(x, x[first].astype(np.float64), min_d2, _n_chunks())
        for c in range(1, k):
            if total > 0:
                nxt = int(np.searchsorted(np.cumsum(min_d2), rng.random() * total,
                                          side="right"))
                nxt = min(nxt, n - 1)
            else:  # every row coincides with a centre already: any row will do
                nxt = int(rng.integers(n))
            centroids[c] = x[nxt]
            total = update_min_sqdist(x, x[nxt].astype(np.float64), min_d2, _n_chunks())
        return centroids

    def _assign_bounded(self, x, centroids, state, scale):
        """Lloyd's assignment, recomputing only rows whose bounds do not prove it.

        state: None (first iteration) or (labels, lower) where lower[i] is a lower
        bound on the distance (not squared) from row i to every centroid but its own.
        Returns labels, squared distances to the assigned centroid, and the new state.
        """
        n, k = x.shape[0], centroids.shape[0]
        prepared = _assign.prepare_centroids(centroids, True)
        if state is None:
            todo = None
            labels = np.empty(n, dtype=np.int64)
            sqdist = np.empty(n, dtype=np.float64)
            lower = np.empty(n, dtype=np.float64)
        else:
            labels, lower = state
            sqdist = own_sqdist(x, centroids, labels)
            upper = np.sqrt(sqdist)
            # Recompute unless upper < lower by a margin that covers float32 rounding
            # of the kernel's distances (a skip only matters where lower ~ upper, so
            # the margin scales with upper; lower may be inf when k == 1).
            slack = KMEANS_BOUND_SLACK * (2.0 * upper + scale)
            todo = np.flatnonzero(upper + slack >= lower)
        # The rows to recompute are gathered KMEANS_GATHER_ROWS at a time (a row's
        # result does not depend on the rows beside it): one gather of all of them was
        # nearly a copy of x in the first iterations.
        blocks = [slice(None)] if todo is None else [
            todo[s:s + KMEANS_GATHER_ROWS] for s in range(0, todo.size, KMEANS_GATHER_ROWS)]
        for where in blocks:
            # The gathered block lives only inside _top2 (not until the next one).
            best_i, best_d, second = self._top2(
                x if todo is None else np.ascontiguousarray(x[where]), prepared, k)
            labels[where] = best_i
            sqdist[where] = best_d
            lower[where] = second
        self.n_recomputed_.append(n if todo is None else int(todo.size))
        return labels, sqdist, (labels, lower)

    @staticmethod
    def _top2(rows, prepared, k):
        """Nearest centroid, its squared distance and the distance (not squared) to
        the second nearest (inf when k == 1) of each row."""
        if k >= 2:
            top_d, top_i = _assign.topk_prepared(rows, prepared, 2)
            return top_i[:, 0], top_d[:, 0], np.sqrt(top_d[:, 1].astype(np.float64))
        top_i, top_d = _assign.assign_prepared(rows, prepared)
        return top_i, top_d, np.full(rows.shape[0], np.inf)

    @staticmethod
    def _move_bounds(state, labels, old, new):
        """Lower bounds after the centroids moved: minus the largest other drift."""
        labels, lower = state
        drift = np.sqrt(((new.astype(np.float64) - old) ** 2).sum(1))
        if drift.shape[0] >= 2:
            top = np.argsort(drift)[-2:]
            first, second = drift[top[1]], drift[top[0]]
            lower = lower - np.where(labels == top[1], second, first)
        else:
            lower = lower - drift[0]
        return labels.copy(), lower

    def _assign(self, x, centroids, kernel_metric):
        if self.variant == "tiled":
            prepared = _assign.prepare_centroids(centroids, kernel_metric == "l2")
            return _assign.assign_prepared(x, prepared)
        return _assign.assign_nearest(x, centroids, kernel_metric, self.variant)

    @staticmethod
    def _update(sums, counts, old, rng, scale):
        """New centroids from sums; empty clusters split from large ones (as FAISS)."""
        k, d = sums.shape
        new = old.astype(np.float64)
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        counts = counts.copy()
        # Alternate the nudge's sign per coordinate so the two copies move apart.
        sign = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
        for ci in empty:
            weights = np.maximum(counts - 1, 0).astype(np.float64)
            cj = int(rng.choice(k, p=weights / weights.sum()))
            # FAISS scales by (1 +- eps); the added term keeps zero coordinates apart too.
            nudge = KMEANS_SPLIT_EPS * sign * (np.abs(new[cj]) + 1e-3 * scale)
            new[ci] = new[cj] + nudge
            new[cj] = new[cj] - nudge
            counts[ci] = counts[cj] // 2
            counts[cj] -= counts[ci]
        return new.astype(np.float32), len(empty)

    # ----------------------------------------------------------------- predict
    def _check_fitted(self):
        if not hasattr(self, "centroids"):
            raise RuntimeError("This KMeans instance is not fitted yet; call fit(x) "
                               "before predict().")

    def predict(self, x) -> np.ndarray:
        """Index of the nearest centroid of each row of ``x`` (int64, shape (n,))."""
        self._check_fitted()
        x = check_vectors(x, "x", d=self.n_features_in_,
                          owner=f"KMeans fitted on d={self.n_features_in_}",
                          allow_1d=True)
        return _assign.assign_nearest(x, self.centroids, self.metric, self.variant)[0]
