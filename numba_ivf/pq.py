"""Product quantizer: d dimensions split into m sub-spaces of d/m, 2**nbits codes each.

Orchestration only: training runs every sub-space's k-means in one kernel call
(``numba_ivf.kernels.encode.pq_train``; ``KMeans`` per sub-space is its oracle),
encoding runs the tiled assignment kernel per sub-space, decoding and distance tables
are kernels in ``numba_ivf.kernels.encode.pq_encode``.
"""

from __future__ import annotations

import numpy as np

from ._config import KMEANS_PARALLEL_MIN_FLOP, PQ_VALUE_LIMIT_FACTOR
from ._threads import serialized_launches
from ._validation import check_choice, check_int, check_vectors, value_limit
from .kernels.assign import assign as _assign
from .kernels.encode.pq_encode import pq_decode, pq_distance_tables

NBITS = (4, 8)
TRAIN_METHODS = ("auto", "batched", "per_subspace")


def check_pq_shape(d: int, m: int, nbits: int, owner: str = "ProductQuantizer"):
    """Validate (d, m, nbits) and return them as ints; d must be divisible by m."""
    d = check_int("d", d, min_value=1)
    m = check_int("m", m, min_value=1)
    nbits = check_int("nbits", nbits)
    if nbits not in NBITS:
        raise ValueError(f"nbits must be 4 or 8; got {nbits}.")
    if d % m:
        divisors = [v for v in range(1, d + 1) if d % v == 0]
        shown = ", ".join(map(str, divisors[:20])) + (", ..." if len(divisors) > 20 else "")
        raise ValueError(f"{owner}: d={d} is not divisible by m={m}; m must divide d "
                         f"(divisors of {d}: {shown}).")
    return d, m, nbits


class ProductQuantizer:
    """Product quantizer with 4-bit or 8-bit codes.

    Parameters
    ----------
    d : int
        Vector dimension; must be divisible by ``m``.
    m : int
        Number of sub-quantizers (bytes per vector at 8 bits, half that at 4 bits).
    nbits : {8, 4}, default 8
        Bits per sub-quantizer code: 256 or 16 centroids per sub-space.

    Attributes
    ----------
    codebooks : ndarray of shape (m, 2**nbits, d // m), float32
        Set by :meth:`train` (or :meth:`set_codebooks`).
    codebooks_t : ndarray of shape (m, d // m, 2**nbits), float32
        The same numbers, last two axes swapped (the distance-table layout).

    Examples
    --------
    >>> import numpy as np, numba_ivf
    >>> x = np.random.default_rng(0).standard_normal((4000, 32)).astype(np.float32)
    >>> pq = numba_ivf.ProductQuantizer(32, 8, nbits=4)
    >>> pq.train(x)
    >>> codes = pq.encode(x[:5]); codes.shape, codes.dtype
    ((5, 8), dtype('uint8'))
    >>> pq.decode(codes).shape
    (5, 32)
    """

    def __init__(self, d: int, m: int, nbits: int = 8):
        self.d, self.m, self.nbits = check_pq_shape(d, m, nbits)
        self.dsub = self.d // self.m
        self.ksub = 1 << self.nbits
        self.codebooks = None
        self.codebooks_t = None
        self._prepared = None

    @property
    def is_trained(self) -> bool:
        return self.codebooks is not None

    @property
    def _max_abs(self) -> float:
        # Residuals x - c of vectors within the value limit reach twice it (_config).
        return PQ_VALUE_LIMIT_FACTOR * value_limit(self.d)

    def __repr__(self):
        return f"ProductQuantizer(d={self.d}, m={self.m}, nbits={self.nbits})"

    # ------------------------------------------------------------------ training
    @serialized_launches
    def train(self, x, *, n_iter: int = 25, seed: int | None = 1234,
              max_points_per_centroid: int | None = 256, verbose: bool = False,
              method: str = "auto") -> None:
        """Train one k-means codebook per sub-space on the rows of ``x`` (n, d).

        Each sub-space trains on at most ``2**nbits * max_points_per_centroid`` rows
        (a random subset, as FAISS does).

        Parameters
        ----------
        x : array-like of shape (n, d)
            n >= 2**nbits training rows, float32 or float64.
        n_iter : int, default 25
            Lloyd iterations per sub-space (fewer if a sub-space converges first).
        seed : int or None, default 1234
            Seed of the subsample and of every sub-space's k-means.
        max_points_per_centroid : int or None, default 256
            Subsample cap per centroid; None trains on every row.
        verbose : bool, default False
            Print one line per sub-space (objective, iterations, empty splits).
        method : {"auto", "batched", "per_subspace"}, default "auto"
            "batched": one kernel call trains every sub-space, each on one thread
            (``kernels.encode.pq_train``); "per_subspace": one ``KMeans`` per
            sub-space, each parallel over its rows (the oracle of the batched
            kernel). Both give the same codebooks, bit for bit. "auto" takes the
            batched kernel unless there are fewer sub-spaces than threads and each is
            large enough for a parallel ``KMeans`` (KMEANS_PARALLEL_MIN_FLOP).
        """
        import numba

        check_choice("method", method, TRAIN_METHODS)
        n_iter = check_int("n_iter", n_iter, min_value=0)
        x = check_vectors(x, "x", d=self.d, owner=repr(self), max_abs=self._max_abs)
        if x.shape[0] < self.ksub:
            raise ValueError(f"x has {x.shape[0]} rows, but {self!r} trains "
                             f"{self.ksub} centroids per sub-space: give at least "
                             f"{self.ksub} training rows.")
        rng = np.random.default_rng(seed)
        cap = None if max_points_per_centroid is None else self.ksub * max_points_per_centroid
        if cap is not None and x.shape[0] > cap:
            x = x[np.sort(rng.choice(x.shape[0], size=cap, replace=False))]
        # Sub-space j's k-means is seeded with the j-th draw (both methods).
        seeds = [int(rng.integers(2**31)) for _ in range(self.m)]
        if method == "auto":
            small = 2.0 * x.shape[0] * self.dsub * self.ksub < KMEANS_PARALLEL_MIN_FLOP
            method = ("per_subspace" if self.m < numba.get_num_threads() and not small
                      else "batched")
        if method == "batched":
            codebooks = self._train_batched(x, n_iter, seeds, verbose)
        else:
            codebooks = self._train_per_subspace(x, n_iter, seeds, verbose)
        self.set_codebooks(codebooks)

    def _train_per_subspace(self, x, n_iter, seeds, verbose):
        """One ``KMeans`` per sub-space, in turn: the oracle of ``_train_batched``."""
        from .kmeans import KMeans

        codebooks = np.empty((self.m, self.ksub, self.dsub), dtype=np.float32)
        for j in range(self.m):
            sub = np.ascontiguousarray(x[:, j * self.dsub:(j + 1) * self.dsub])
            # No Hamerly bounds: with 16-256 centroids in 1-14 dimensions they skip few
            # rows and their top-2 costs more than the argmax (60000 x 14, k=256: 0.55
            # vs 0.30 s per sub-space, same objective to 7 digits).
            km = KMeans(self.ksub, n_iter=n_iter, seed=seeds[j],
                        max_points_per_centroid=None, bounds=False, verbose=False)
            # x passed check_vectors with this PQ's limit, which KMeans's own default
            # for d/m features need not cover (m < 4): fit it as validated.
            try:
                codebooks[j] = km._fit_validated(sub).centroids
            except FloatingPointError as exc:
                raise FloatingPointError(f"{self!r}.train: the codebook of sub-space "
                                         f"{j} is not finite ({exc})") from None
            if verbose:
                print(f"ProductQuantizer: sub-space {j + 1}/{self.m} trained, "
                      f"objective {km.objective[-1]:.6g}", flush=True)
        return codebooks

    def _train_batched(self, x, n_iter, seeds, verbose):
        """Every sub-space's k-means in one kernel call, with the random choices and
        split scales a per-sub-space ``KMeans(seed=seeds[j])`` would make (drawn here,
        in its order: init rows, then one double per empty-cluster split)."""
        import time

        import numba

        from .kernels.encode.pq_train import OK, pq_train_batched
        from .kmeans import KMeans, rms_scale

        t0 = time.perf_counter()
        n, k, m = x.shape[0], self.ksub, self.m
        n_draws = n_iter * (k - 1)            # at most k - 1 splits per iteration
        init_rows = np.empty((m, k), dtype=np.int64)
        u = np.empty((m, n_draws), dtype=np.float64)
        scales = np.empty(m, dtype=np.float64)
        for j in range(m):
            r = np.random.default_rng(seeds[j])
            init_rows[j] = np.sort(r.choice(n, size=k, replace=False))
            u[j] = r.random(n_draws)
            scales[j] = rms_scale(
                np.ascontiguousarray(x[:, j * self.dsub:(j + 1) * self.dsub]))
        # KMeans runs a fit this small on one thread, and its centroid sums in two
        # chunks per thread: the chunking fixes the order of the float64 sums.
        small = 2.0 * n * self.dsub * k < KMEANS_PARALLEL_MIN_FLOP
        n_chunks = np.full(m, 2 * (1 if small else numba.get_num_threads()), np.int64)
        codebooks, objective, n_run, n_split, status = pq_train_batched(
            x, k, init_rows, n_iter, u, n_chunks, scales, True)
        bad = np.flatnonzero(status != OK)
        if bad.size:
            j = int(bad[0])
            sub = x[:, j * self.dsub:(j + 1) * self.dsub]
            try:
                KMeans._check_finite(codebooks[j], sub, int(status[j]))
            except FloatingPointError as exc:
                raise FloatingPointError(f"{self!r}.train: the codebook of sub-space "
                                         f"{j} is not finite ({exc})") from None
        if verbose:
            print(f"ProductQuantizer: {m} sub-spaces trained in one kernel call, "
                  f"{time.perf_counter() - t0:.3f} s", flush=True)
            for j in range(m):
                it = int(n_run[j])
                obj = objective[j, it - 1] if it else float("nan")
                print(f"ProductQuantizer: sub-space {j + 1}/{m} trained, objective "
                      f"{obj:.6g} ({it} iterations, {int(n_split[j])} empty split)",
                      flush=True)
        return codebooks

    def set_codebooks(self, codebooks) -> None:
        """Install trained codebooks of shape (m, 2**nbits, d // m)."""
        cb = np.ascontiguousarray(codebooks, dtype=np.float32)
        want = (self.m, self.ksub, self.dsub)
        if cb.shape != want:
            raise ValueError(f"codebooks must have shape {want} for {self!r}; got "
                             f"{cb.shape}.")
        if not np.isfinite(cb).all():
            raise ValueError("codebooks contain NaN or infinity.")
        self.codebooks = cb
        # (m, dsub, ksub): distance tables vectorise over the ksub centroids.
        self.codebooks_t = np.ascontiguousarray(cb.transpose(0, 2, 1))
        self._prepared = [_assign.prepare_centroids(cb[j], True) for j in range(self.m)]

    def _check_trained(self):
        if self.codebooks is None:
            raise RuntimeError(f"{self!r} is not trained; call train(x) first.")

    # ------------------------------------------------------------------ codes
    @serialized_launches
    def encode(self, x) -> np.ndarray:
        """Codes (n, m) uint8 of the rows of ``x``: nearest centroid per sub-space."""
        self._check_trained()
        x = check_vectors(x, "x", d=self.d, owner=repr(self), allow_1d=True,
                          max_abs=self._max_abs)
        return self._encode(x)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        codes = np.empty((x.shape[0], self.m), dtype=np.uint8)
        if x.shape[0] == 0:
            return codes
        for j in range(self.m):
            sub = np.ascontiguousarray(x[:, j * self.dsub:(j + 1) * self.dsub])
            codes[:, j] = _assign.assign_prepared(sub, self._prepared[j])[0]
        return codes

    @serialized_launches
    def decode(self, codes) -> np.ndarray:
        """Reconstructions (n, d) float32 of codes (n, m)."""
        self._check_trained()
        codes = np.asarray(codes)
        if codes.ndim == 1:
            codes = codes.reshape(1, -1)
        if codes.ndim != 2 or codes.shape[1] != self.m:
            raise ValueError(f"codes must have shape (n, {self.m}); got {codes.shape}.")
        if codes.dtype.kind not in "ui" or (codes.size and (codes.min() < 0 or
                                                            codes.max() >= self.ksub)):
            raise ValueError(f"codes must be integers in [0, {self.ksub}); got dtype "
                             f"{codes.dtype} with range "
                             f"[{codes.min() if codes.size else 0}, "
                             f"{codes.max() if codes.size else 0}].")
        return pq_decode(np.ascontiguousarray(codes, dtype=np.uint8), self.codebooks)

    def distance_tables(self, q, metric: str = "l2") -> np.ndarray:
        """Per query, sub-space and code: (nq, m, 2**nbits) float32.

        "l2": squared distance of the query's sub-vector to each centroid, so the ADC
        distance to a code vector c is ``sum_j tables[j, c_j]``; "ip": inner products.
        """
        self._check_trained()
        check_choice("metric", metric, ("l2", "ip"))
        q = check_vectors(q, "q", d=self.d, owner=repr(self), allow_1d=True,
                          max_abs=self._max_abs)
        return pq_distance_tables(q, self.codebooks_t, metric == "l2")
