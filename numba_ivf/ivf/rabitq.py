"""IVF-RaBitQ: inverted lists of RaBitQ codes (Gao & Long, SIGMOD 2024; extended
multi-bit codes, SIGMOD 2025), like FAISS's ``IndexIVFRaBitQ``.

Orchestration only. ``IVFBase`` holds the coarse quantizer, ids, validation, remove and
save/load; the codes come from ``numba_ivf.kernels.rabitq.rabitq_encode`` and are
scanned by ``numba_ivf.kernels.rabitq.rabitq_scan`` (1-bit screening with the 4-bit
fast-scan block kernel, extra bits only for candidates whose error bound can still beat
the k-th result); exact re-ranking (``refine=True``) by ``kernels.scan.refine``.

Vectors (and queries) are zero-padded to D, a multiple of RABITQ_DIM_ALIGN, and rotated
by one seeded random orthogonal transform: by default a structured one (``"fht"``:
RABITQ_FHT_ROUNDS rounds of random signed permutations and block Walsh-Hadamard
transforms, O(D log D) per row), or a dense Haar-random D x D matrix (``"dense"``,
numpy's GEMM for batches). Codes are of the rotated residual to the list's centroid.
Per vector: D/8 bytes of sign bits, (bits - 1) D/8 bytes of extra bits, 16 bytes of
factors, and the 8-byte id: D bits / 8 + 24 bytes.
"""

from __future__ import annotations

import numpy as np

from .._config import (IVF_ONE_QUERY_MIN_RUN, IVF_SINGLE_RUNS_PER_THREAD,
                       PQ_ENCODE_BLOCK_ROWS, PQ_REFINE_K_FACTOR, PQ_REFINE_K_FACTOR_MAX,
                       RABITQ_DIM_ALIGN, RABITQ_EPSILON, RABITQ_FHT_ROUNDS,
                       RABITQ_ROTATE_BLAS_MIN_ROWS,
                       RABITQ_SCALE_STEPS)
from .._validation import check_choice, check_int
from ._lists import InvertedLists
from ._load import register_kind
from ._rwlock import read_locked, reading
from .base import IVFBase, _n_threads
from .pq import _check_bool

__all__ = ["IVFRaBitQ", "RABITQ_ROTATIONS", "RABITQ_SEARCH_PATHS", "random_rotation"]

RABITQ_SEARCH_PATHS = ("auto", "batch", "serial")
RABITQ_ROTATIONS = ("fht", "dense")

_RABITQ_ONE = None


def _rabitq_one():
    """The one-query kernel module, imported once (not per call)."""
    global _RABITQ_ONE
    if _RABITQ_ONE is None:
        from ..kernels.rabitq import rabitq_one
        _RABITQ_ONE = rabitq_one
    return _RABITQ_ONE


def random_rotation(D: int, seed: int) -> np.ndarray:
    """A random orthogonal D x D matrix (Haar: QR of a Gaussian matrix with the signs
    of R's diagonal moved into Q), float32; rows are rotated as ``x @ P``."""
    g = np.random.default_rng(seed).standard_normal((D, D))
    qm, r = np.linalg.qr(g)
    qm *= np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
    return np.ascontiguousarray(qm, dtype=np.float32)


def random_fht(D: int, seed: int, rounds: int):
    """(perms (rounds, D) int64, signs (rounds, D) float32) of the structured rotation."""
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(D) for _ in range(rounds)]).astype(np.int64)
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(rounds, D))
    return np.ascontiguousarray(perms), np.ascontiguousarray(signs, dtype=np.float32)


class IVFRaBitQ(IVFBase):
    """Inverted-file index over RaBitQ codes, like faiss.IndexIVFRaBitQ.

    Parameters
    ----------
    d : int
        Vector dimension (padded with zeros to a multiple of 8 inside the index).
    nlist : int
        Number of inverted lists (coarse centroids).
    bits : int in 1..8, default 4
        Bits per dimension: 1 is the original RaBitQ (sign bits); more add
        ``bits - 1`` bits of magnitude (extended RaBitQ), read only for candidates
        that the 1-bit bound cannot rule out.
    metric : {"l2", "ip", "cosine"}, default "l2"
    refine : bool, default False
        Also keep the float32 vectors and re-rank ``k_factor * k`` candidates exactly.
    rotation : {"fht", "dense"}, default "fht"
        The random orthogonal transform: structured (signed permutations and block
        Walsh-Hadamard transforms, O(D log D) per row) or a dense Haar-random matrix
        (D^2 per row).
    n_iter, seed, max_points_per_centroid
        Coarse k-means parameters, as in :class:`numba_ivf.IVFFlat`; ``seed`` also
        seeds the rotation.

    Examples
    --------
    >>> import numpy as np, numba_ivf
    >>> x = np.random.default_rng(0).standard_normal((4000, 32)).astype(np.float32)
    >>> index = numba_ivf.IVFRaBitQ(32, nlist=8, bits=4)
    >>> index.train(x)
    >>> index.add(x)
    >>> D, I = index.search(x[:3], k=5, nprobe=8)
    >>> I[:, 0].tolist()
    [0, 1, 2]
    """

    kind = "IVFRaBitQ"

    def __init__(self, d: int, nlist: int, bits: int = 4, metric: str = "l2",
                 refine: bool = False, *, rotation: str = "fht", n_iter: int = 25,
                 seed: int = 1234, max_points_per_centroid: int = 256):
        bits = check_int("bits", bits, min_value=1, max_value=8)
        self._rot_kind = check_choice("rotation", rotation, RABITQ_ROTATIONS)
        super().__init__(d, nlist, metric, n_iter=n_iter, seed=seed,
                         max_points_per_centroid=max_points_per_centroid)
        self._bits = bits
        self._refine = _check_bool("refine", refine)
        self._D = -(-self._d // RABITQ_DIM_ALIGN) * RABITQ_DIM_ALIGN
        self._rotation = None           # dense (D, D); for "fht" built on demand
        self._fht = None                # (perms, signs, blocks) for "fht"
        self._crot = None
        self._lists = self._new_lists()

    def _new_lists(self) -> InvertedLists:
        payload = {"codes": ("nibbles", self._D // 4), "fac": (4, np.float32)}
        if self._bits > 1:
            payload["ex"] = ((self._bits - 1) * self._D // 8, np.uint8)
        if self._refine:
            payload["data"] = (self._d, np.float32)
        return InvertedLists(self._nlist, payload)

    # -- read-only properties ----------------------------------------------------------
    @property
    def bits(self) -> int:
        return self._bits

    @property
    def refine(self) -> bool:
        return self._refine

    @property
    def padded_dim(self) -> int:
        """D: the dimension codes are computed in (d rounded up to a multiple of 8)."""
        return self._D

    @property
    def rotation(self) -> np.ndarray:
        """The (D, D) float32 orthogonal rotation as a matrix (a read-only view; for
        "fht" computed on first use); rows go ``x @ P``."""
        self._check_trained("rotation")
        view = self._dense_rotation().view()
        view.flags.writeable = False
        return view

    @property
    def is_trained(self) -> bool:
        return self._centroids is not None and (self._rotation is not None
                                                 or self._fht is not None)

    @property
    def code_bytes(self) -> int:
        """Bytes per vector in the lists: codes, extra bits, factors and the id."""
        return self._D * self._bits // 8 + 16 + 8

    def __repr__(self) -> str:
        return (f"IVFRaBitQ(d={self._d}, nlist={self._nlist}, bits={self._bits}, "
                f"metric={self._metric!r}, refine={self._refine}, ntotal={len(self)}, "
                f"trained={self.is_trained})")

    def _owner(self) -> str:
        return f"IVFRaBitQ(d={self._d})"

    @property
    def memory_bytes(self) -> dict:
        """Bytes held, by part (lists with slack, refine vectors, id map, centroids,
        rotation)."""
        L = self._lists
        return {"ids": L.ids.nbytes, "codes": L.payload["codes"].nbytes,
                "ex": L.payload["ex"].nbytes if self._bits > 1 else 0,
                "factors": L.payload["fac"].nbytes,
                "refine": L.payload["data"].nbytes if self._refine else 0,
                "id_map": L.map_nbytes(),
                "centroids": 0 if self._centroids is None else self._centroids.nbytes,
                "rotation": (0 if self._rotation is None else self._rotation.nbytes) +
                (0 if self._fht is None else self._fht[0].nbytes + self._fht[1].nbytes)}

    # -- helpers ---------------------------------------------------------------------
    def _rotate(self, x: np.ndarray) -> np.ndarray:
        """Rows of x (n, d) float32, zero-padded to D and rotated: (n, D) float32."""
        from ..kernels.rabitq import rabitq_encode as enc
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], self._D), dtype=np.float32)
        if self._rot_kind == "fht":
            fn = enc.fht_rotate_serial if x.shape[0] < _n_threads() else \
                enc.fht_rotate_batch
            fn(x, *self._fht, out)
            return out
        if x.shape[0] < RABITQ_ROTATE_BLAS_MIN_ROWS:
            enc.rotate_rows(x, self._rotation, out)
            return out
        if self._D != self._d:
            xp = np.zeros((x.shape[0], self._D), dtype=np.float32)
            xp[:, :self._d] = x
            x = xp
        return np.ascontiguousarray(x @ self._rotation, dtype=np.float32)

    def _dense_rotation(self) -> np.ndarray:
        """The rotation as a (D, D) matrix; for "fht" the images of the unit vectors."""
        if self._rotation is None:
            from ..kernels.rabitq.rabitq_encode import fht_rotate_batch
            out = np.empty((self._D, self._D), dtype=np.float32)
            fht_rotate_batch(np.eye(self._D, dtype=np.float32), *self._fht, out)
            self._rotation = out
        return self._rotation

    # -- training and adding ---------------------------------------------------------
    def _train_rest(self, x, centroids, prepared) -> dict:
        from ..kernels.rabitq.rabitq_encode import fht_blocks
        if self._rot_kind == "fht":
            rot = {"_fht": (*random_fht(self._D, self.seed + 2, RABITQ_FHT_ROUNDS),
                            fht_blocks(self._D)), "_rotation": None}
        else:
            rot = {"_rotation": random_rotation(self._D, self.seed + 2), "_fht": None}
        old = self._rotation, self._fht
        self._rotation, self._fht = rot["_rotation"], rot["_fht"]
        try:
            crot = self._rotate(centroids)
        finally:
            self._rotation, self._fht = old
        return {**rot, "_crot": crot}

    def _encode_rows(self, x: np.ndarray, labels: np.ndarray) -> dict:
        from ..kernels.rabitq.rabitq_encode import encode_rows
        n, D, B = x.shape[0], self._D, self._bits
        codes = np.empty((n, D // 4), dtype=np.uint8)
        ex = np.empty((n, max(1, (B - 1) * D // 8)), dtype=np.uint8)
        fac = np.empty((n, 4), dtype=np.float32)
        ip = self._metric != "l2"
        for s in range(0, n, PQ_ENCODE_BLOCK_ROWS):
            e = min(n, s + PQ_ENCODE_BLOCK_ROWS)
            r = self._rotate(x[s:e])
            r -= self._crot[labels[s:e]]
            encode_rows(r, B, RABITQ_SCALE_STEPS, ip, codes[s:e], ex[s:e], fac[s:e])
        rows = {"codes": codes, "fac": fac}
        if B > 1:
            rows["ex"] = ex
        if self._refine:
            rows["data"] = x
        return rows

    def _reconstruct_row(self, row: int) -> np.ndarray:
        """The decoded vector: centroid + ||r|| x_q / ||x_q||, rotated back."""
        L = self._lists
        B, D = self._bits, self._D
        signs = L.codes_of_row("codes", row, D // 4).astype(np.int64)
        b = ((signs[:, None] >> np.arange(4)) & 1).reshape(D)
        K = 1 << (B - 1)
        c = b * K
        if B > 1:
            planes = np.unpackbits(L.payload["ex"][row], bitorder="little")
            e = (planes.reshape(B - 1, D) << np.arange(B - 1)[:, None]).sum(axis=0)
            c = c + e
        xq = c - ((1 << B) - 1) / 2.0
        norm = np.sqrt(np.float64(L.payload["fac"][row, 0]))   # ||r||^2, every metric
        r = norm * xq / np.linalg.norm(xq)
        x = (r + self._crot[L.list_of_row(row)]) @ \
            self._dense_rotation().T.astype(np.float64)
        return x[:self._d].astype(np.float32)

    # -- search ----------------------------------------------------------------------
    def _kernel_args(self, backend=None):
        from ..kernels.fastscan import fastscan
        L = self._lists
        ex = L.payload["ex"] if self._bits > 1 else np.zeros((1, 1), dtype=np.uint8)
        return L, ex, fastscan.get_backend(backend)

    def _scan(self, q, scores, probes, kk, path, flt, epsilon, backend=None):
        """(keys, ids, rows) of shape (nq, kk): the RaBitQ estimates' top-kk; path
        "batch" or "serial"."""
        from ..kernels.filtering._bits import no_filter
        from ..kernels.rabitq import rabitq_scan
        L, ex, backend = self._kernel_args(backend)
        nq = q.shape[0]
        keys = np.empty((nq, kk), dtype=np.float32)
        ids = np.empty((nq, kk), dtype=np.int64)
        rows = np.empty((nq, kk), dtype=np.int64)
        if nq == 0:
            return keys, ids, rows
        fn = rabitq_scan.rabitq_batch if path == "batch" else rabitq_scan.rabitq_serial
        flt = no_filter() if flt is None else flt
        gate = bool(np.isfinite(epsilon))
        fn(L.payload["codes"], ex, L.payload["fac"], L.ids, L.starts, L.sizes,
           np.ascontiguousarray(probes, dtype=np.int64),
           np.ascontiguousarray(scores, dtype=np.float32), *flt, self._rotate(q),
           self._crot, self._metric == "l2", self._bits, gate,
           float(epsilon) if gate else 0.0, keys, ids, rows, backend)
        return keys, ids, rows

    def _finish_candidates(self, q, keys, ids, rows, k, serial):
        if not self._refine:
            return keys[:, :k], ids[:, :k]
        from ..kernels.scan.refine import refine
        return refine(q, self._lists, ids, k, self._metric == "l2", parallel=not serial,
                      cand_rows=rows)

    def search(self, q, k: int, nprobe: int = 1, *, k_factor: int | None = None,
               filter=None, min_candidates=None, max_nprobe=None, path: str = "auto",
               epsilon: float | None = None, _backend=None):
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
            Only with ``refine=True``: ``k_factor * k`` RaBitQ candidates are re-ranked
            with the exact vectors (default 4).
        filter, min_candidates, max_nprobe : optional
            Filtered search, as in :meth:`numba_ivf.IVFFlat.search`: lists without an
            allowed row are not read, a block's allowed lanes join its lane mask; with
            ``refine=True`` a small allowed set is searched exactly.
        path : {"auto", "batch", "serial"}, default "auto"
            "batch": parallel over queries; "serial": the calling thread. Identical
            results.
        epsilon : float, optional
            The error-bound multiplier of the 1-bit screening (default RABITQ_EPSILON
            = 1.9); ``float("inf")`` estimates every probed vector with all its bits
            (no screening), larger is slower and misses fewer neighbours.
        _backend : str, optional
            Fast-scan block kernel ("avx512", "avx2", "neon", "portable"; default the
            fastest this CPU runs), for tests and benchmarks; identical results.

        Returns
        -------
        D : ndarray of shape (nq, k), float32
            RaBitQ estimates ("l2": squared distances ascending; "ip"/"cosine": scores
            descending), exact with refine; inf / -inf where missing.
        I : ndarray of shape (nq, k), int64
            Ids, -1 where fewer than k were found; ties by ascending id.
        """
        return read_locked(self, self._search, q, k, nprobe, k_factor, filter,
                           min_candidates, max_nprobe, path, epsilon, _backend)

    def _search(self, q, k, nprobe, k_factor, filter, min_candidates, max_nprobe, path,
                epsilon, _backend):
        """``search`` under the read lock (``_rwlock.read_locked``)."""
        if path == "auto" and _backend is None and filter is None \
                and min_candidates is None and max_nprobe is None and self.is_trained \
                and (epsilon is None or type(epsilon) is float and epsilon >= 0) \
                and (k_factor is None or self._refine and type(k_factor) is int
                     and 1 <= k_factor <= PQ_REFINE_K_FACTOR_MAX):
            one = self._one_query(q, k, nprobe)
            if one is not None:
                out = self._search_one(*one, k_factor, epsilon)
                if out is not None:
                    return out
        self._check_trained("search")
        q, k, nprobe = self._check_search(q, k, nprobe)
        check_choice("path", path, RABITQ_SEARCH_PATHS)
        if k_factor is not None and not self._refine:
            raise ValueError("k_factor applies only to an index built with refine=True; "
                             f"got k_factor={k_factor!r} for {self!r}.")
        eps = RABITQ_EPSILON if epsilon is None else epsilon
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float,
                                                                      np.floating)) \
                or not eps >= 0:
            raise ValueError(f"epsilon must be a number >= 0 (inf for no screening); got "
                             f"{epsilon!r}.")
        kk = k
        if self._refine:
            k_factor = check_int("k_factor", PQ_REFINE_K_FACTOR if k_factor is None
                                 else k_factor, min_value=1,
                                 max_value=PQ_REFINE_K_FACTOR_MAX)
            kk = k * k_factor
        nq = q.shape[0]
        if path == "auto":
            path = "batch" if nq >= _n_threads() else "serial"
        serial = path == "serial"
        if filter is not None or min_candidates is not None or max_nprobe is not None:
            if filter is None:
                raise ValueError("min_candidates and max_nprobe apply only to a filtered "
                                 "search (filter=...).")
            out_d = np.empty((nq, k), dtype=np.float32)
            out_i = np.empty((nq, k), dtype=np.int64)

            def scan(qs, scores, probes, rf):
                keys, ids, rows = self._scan(qs, scores, probes, kk, path,
                                             (rf.fbits, rf.fcount, rf.fslot), eps,
                                             _backend)
                return self._finish_candidates(qs, keys, ids, rows, k, serial)

            self._search_filtered(q, k, nprobe, filter, min_candidates, max_nprobe, scan,
                                  self._refine, out_d, out_i)
            return self._finish(out_d, out_i)
        if nq == 0:
            return self._finish(np.empty((0, k), np.float32), np.empty((0, k), np.int64))
        scores, probes = self._coarse(q, nprobe)
        keys, ids, rows = self._scan(q, scores, probes, kk, path, None, eps, _backend)
        keys, ids = self._finish_candidates(q, keys, ids, rows, k, serial)
        return self._finish(np.ascontiguousarray(keys), np.ascontiguousarray(ids))

    def _search_one(self, q, k, nprobe, k_factor, epsilon):
        """One C-contiguous row in one kernel call (``kernels.rabitq.rabitq_one``), the
        general path's results; None if q holds NaN, inf or a value beyond the value
        limit (the general path then raises)."""
        c = self.__dict__.get("_one_consts")
        if c is None or c["for"] is not self._prepared:
            from ..kernels.fastscan import fastscan
            from ..kernels.scan.list_scan import METRIC_IP, METRIC_L2
            l2 = self._metric == "l2"
            # Picklable values only: copy.deepcopy and pickle carry this dict.
            c = self.__dict__["_one_consts"] = {
                "for": self._prepared, "l2": l2,
                "unit": self._metric == "cosine",
                "coarse_metric": METRIC_L2 if l2 else METRIC_IP,
                "no_ex": np.zeros((1, 1), dtype=np.uint8),
                "no_data": np.zeros((1, self._d), dtype=np.float32),
                "no_fht": (np.zeros((0, self._D), dtype=np.int64),
                           np.zeros((0, self._D), dtype=np.float32),
                           np.zeros((0, 2), dtype=np.int64)),
                "no_rot": np.zeros((self._D, self._D), dtype=np.float32)[:0],
                "backend": fastscan.get_backend(None)}
        eps = RABITQ_EPSILON if epsilon is None else epsilon
        gate = eps < np.inf
        kk = k * ((PQ_REFINE_K_FACTOR if k_factor is None else k_factor)
                  if self._refine else 1)
        L = self._lists
        out_d = np.empty((1, k), dtype=np.float32)
        out_i = np.empty((1, k), dtype=np.int64)
        mod = _rabitq_one()
        status = mod.rabitq_search_one(
            q, c["unit"], self._prepared.panels, c["coarse_metric"],
            IVF_ONE_QUERY_MIN_RUN, IVF_SINGLE_RUNS_PER_THREAD * _n_threads(), nprobe,
            *(self._fht if self._fht is not None else c["no_fht"]),
            self._rotation if self._fht is None else c["no_rot"], self._crot,
            L.payload["codes"],
            L.payload["ex"] if self._bits > 1 else c["no_ex"], L.payload["fac"], L.ids,
            L.starts, L.sizes, c["l2"], self._bits, gate, eps if gate else 0.0, kk,
            self._refine, L.payload["data"] if self._refine else c["no_data"], out_d,
            out_i, c["backend"])
        return (out_d, out_i) if status == mod.DONE else None

    @reading
    def range_search(self, q, radius: float, nprobe: int = 1, *, filter=None):
        """As :meth:`IVFBase.range_search`; with ``refine=True`` only (exact keys over
        the probed lists from the stored vectors)."""
        if not self._refine:
            raise NotImplementedError(
                f"{self!r}.range_search: range search over RaBitQ estimates is not "
                f"implemented; build the index with refine=True (exact keys from the "
                f"stored vectors).")
        from ._range import range_search
        return range_search(self, q, radius, nprobe, filter)

    # -- persistence -------------------------------------------------------------------
    def _save_params(self) -> dict:
        return {"bits": self._bits, "refine": self._refine, "rotation": self._rot_kind}

    def _save_arrays(self) -> dict:
        if self._rot_kind == "fht":
            return {"rot_perms": self._fht[0], "rot_signs": self._fht[1]}
        return {"rotation": self._rotation}

    @classmethod
    def _new_from_params(cls, p):
        return cls(p["d"], p["nlist"], p["bits"], p["metric"], refine=p["refine"],
                   rotation=p["rotation"], n_iter=p["n_iter"], seed=p["seed"],
                   max_points_per_centroid=p["max_points_per_centroid"])

    def _load_arrays(self, a, bad) -> None:
        D = self._D
        if self._rot_kind == "fht":
            from ..kernels.rabitq.rabitq_encode import fht_blocks
            perms, signs = a.get("rot_perms"), a.get("rot_signs")
            if (perms is None or perms.dtype != np.int64 or perms.ndim != 2
                    or perms.shape[1] != D or perms.shape[0] < 1):
                raise bad(f"array 'rot_perms' missing or not int64 of shape (rounds, {D})")
            if signs is None or signs.dtype != np.float32 or signs.shape != perms.shape:
                raise bad(f"array 'rot_signs' missing or not float32 of shape "
                          f"{perms.shape}")
            perms, signs = np.array(perms), np.array(signs)
            if not (np.sort(perms, axis=1) == np.arange(D)).all():
                raise bad("a row of 'rot_perms' is not a permutation of 0..D-1")
            if not (np.abs(signs) == 1).all():
                raise bad("'rot_signs' holds values other than -1 and +1")
            self._fht = (perms, signs, fht_blocks(D))
        else:
            rot = a.get("rotation")
            if rot is None or rot.dtype != np.float32 or rot.shape != (D, D):
                raise bad(f"array 'rotation' missing or not float32 of shape {(D, D)}")
            rot = np.array(rot)
            if not np.isfinite(rot).all():
                raise bad("rotation contains NaN or infinity")
            err = np.abs(rot.astype(np.float64).T @ rot - np.eye(D)).max()
            if err > 1e-4:
                raise bad(f"rotation is not orthogonal (max |P^T P - I| = {err:.3g})")
            self._rotation = rot
        self._crot = self._rotate(np.ascontiguousarray(a["centroids"], np.float32))


register_kind("IVFRaBitQ", IVFRaBitQ._from_file)
