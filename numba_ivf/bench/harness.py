"""Recall/QPS sweeps of numba_ivf beside FAISS, hnswlib and ScaNN.

One *runner* per (library, index): it builds the index once (train and add timed
apart), then every point of its parameter sweep is searched in each mode:

* ``batch``: all queries in one call; one untimed warm-up call (its ids give the
  recall), then ``repeats`` timed calls, QPS = queries / median time.
* ``single``: one query per call in a Python loop (the latency use case), over
  ``single_queries`` evenly spaced queries (recall is measured on the same subset); a
  few untimed warm-up calls, then ``repeats`` timed loops, QPS = queries / median
  loop time.

Calls faster than ``BENCH_MIN_REPEAT_S`` are run several times inside each timed
repeat. Recall is id-based: the fraction of the exact top-k ids returned.

Every library gets the same thread count (``numba.set_num_threads``,
``faiss.omp_set_num_threads``, hnswlib ``num_threads``, ScaNN's training and query
pools, BLAS through threadpoolctl). For ``cosine`` the other libraries receive
L2-normalised vectors and use inner product; numba_ivf receives the raw vectors and
``metric="cosine"``.

``ivfrabitq`` builds one runner per ``rabitq_bits`` value, labelled with the bits
(``ivfrabitq-4b``): numba_ivf's ``IVFRaBitQ`` and FAISS's ``IndexIVFRaBitQFastScan``
behind a random rotation, both without re-ranking. ScaNN is one runner
(``tree-ah-reorder``: k-means tree, anisotropic hashing, exact re-ordering) swept over
leaves searched (the nprobe list) x re-ordered candidates (k x the k_factor list if
given, else k x 2, 4, 8, 16).

A library or index that cannot be imported or fails is skipped with a note; the
results written so far are kept (``results.json`` and ``results.md`` are rewritten
after every runner, the plot at the end).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import datasets as _ds
from .progress import Progress
from .timing import median_time

__all__ = ["BenchConfig", "run_benchmark", "recall_at_k", "machine_info",
           "write_markdown", "LIBRARIES", "INDEXES", "MODES", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
LIBRARIES = ("numba_ivf", "faiss", "hnswlib", "scann")
INDEXES = ("ivfflat", "ivfpq", "ivfpq4-refine", "ivfrabitq")
MODES = ("batch", "single")

_NPROBE_FULL = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_NPROBE_QUICK = (1, 4, 16)
_KFACTOR_FULL = (2, 4, 8)
_KFACTOR_QUICK = (4,)
# ScaNN's re-ordered candidates are k x these unless --k-factor is given: its 4-bit AH
# scores need more re-ordering than 4-bit PQ + refine to pass recall 0.95 (measured on
# synthetic 20000 x 32: 0.77 at 4k, 0.94 at 16k with 16 of 566 leaves).
_SCANN_KFACTOR_FULL = (2, 4, 8, 16)
_SCANN_KFACTOR_QUICK = (4, 16)
_EF_FULL = (16, 32, 64, 128, 256, 512)
_EF_QUICK = (32, 128)
_HNSW_M = 16
_HNSW_EF_CONSTRUCTION = 200
_RABITQ_BITS = (4, 5)
_FAISS_RABITQ_QB = 8       # query bits; qb=0 crashes IndexIVFRaBitQFastScan
_SCANN_DIMS_PER_BLOCK = 2
_SCANN_AVQ_THRESHOLD = 0.2  # dot product only; ScaNN leaves it unset (NaN) for L2
_SCANN_MAX_TRAIN = 250000
_SCANN_BATCH = 256          # ScaNN's own default batch for search_batched_parallel
# Environment that changes thread behaviour, recorded with the machine: on a loaded
# 2-core machine FAISS's fast-scan one-query search took 7 ms with libgomp's default
# wait policy and 0.05 ms with OMP_WAIT_POLICY=PASSIVE.
_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "NUMBA_THREADING_LAYER")


@dataclass
class BenchConfig:
    """Everything a benchmark run depends on; ``None`` means "choose from the data".

    Attributes mirror the ``numba-ivf bench`` options: see
    :func:`numba_ivf.bench.cli.build_parser` for their meaning.
    """

    dataset: str = "synthetic"
    metric: str | None = None
    k: int = 10
    libs: tuple = LIBRARIES
    indexes: tuple = INDEXES
    nlist: int | None = None
    nprobe: tuple | None = None
    k_factor: tuple | None = None
    ef: tuple | None = None
    pq_m: int | None = None
    # 4-bit IVF-PQ by residual, for both libraries (FAISS's fast-scan default: False).
    pq4_by_residual: bool = False
    rabitq_bits: tuple = _RABITQ_BITS
    modes: tuple = ("batch",)
    threads: int | None = None
    max_queries: int | None = None
    single_queries: int | None = None
    repeats: int | None = None
    quick: bool = False
    out: str = "bench-results"
    seed: int = 0
    synthetic_n: int | None = None
    synthetic_nq: int | None = None
    synthetic_d: int = 32
    synthetic_clusters: int = 50
    progress: bool | None = None
    quiet: bool = False
    strict: bool = False
    plot: bool = True
    command: str = ""
    # --filter (numba_ivf.bench.filtered): allow-list fractions, whether to add the
    # dataset's correlated filter, and min_candidates passed to numba_ivf's search.
    filter: bool = False
    filter_fractions: tuple | None = None
    correlated: bool = True
    min_candidates: int | None = None


# -- small helpers --------------------------------------------------------------------

def _log(cfg: BenchConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def _try_import(name: str):
    """Import a module, or return None when it is not installed (or cannot load)."""
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, and broken installs (OSError from a missing .so)
        return None


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def _default_pq_m(d: int) -> int:
    """Largest divisor of d that is at most min(d // 2, 64): 2+ dims per sub-quantizer."""
    cap = max(1, min(d // 2, 64))
    return max(m for m in range(1, cap + 1) if d % m == 0)


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Fraction of the true top-k ids found among the first k returned ids.

    Parameters
    ----------
    I : ndarray of shape (nq, >= k)
        Returned ids, -1 for missing.
    gt : ndarray of shape (nq, >= k)
        Exact neighbour ids, best first; -1 entries (fewer than k exist) are ignored.
    k : int

    Returns
    -------
    float in [0, 1]
    """
    I = np.asarray(I)[:, :k]
    gt = np.asarray(gt)[:, :k]
    if I.shape[0] != gt.shape[0]:
        raise ValueError(f"I has {I.shape[0]} rows but gt has {gt.shape[0]}; they must "
                         f"describe the same queries.")
    hits = 0
    valid = int((gt >= 0).sum())
    step = max(1, (1 << 22) // max(k * k, 1))  # bound the (rows, k, k) comparison
    for r0 in range(0, I.shape[0], step):
        a = I[r0:r0 + step]
        b = gt[r0:r0 + step]
        match = (a[:, :, None] == b[:, None, :]) & (b[:, None, :] >= 0)
        hits += int(match.any(axis=2).sum())
    return hits / valid if valid else 1.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict:
    """Describe the machine and library versions for ``results.json``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "threads": threads,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "llvmlite": _version("llvmlite"),
        "numba_ivf": _version("numba_ivf") or getattr(_try_import("numba_ivf"),
                                                       "__version__", None),
        "faiss": _version("faiss-cpu") or _version("faiss"),
        "hnswlib": _version("hnswlib"),
        "scann": _version("scann"),
        "blas": None,
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    threadpoolctl = _try_import("threadpoolctl")
    if threadpoolctl is not None:
        try:
            info["blas"] = [
                {key: lib.get(key) for key in ("internal_api", "version", "architecture",
                                              "threading_layer", "num_threads")}
                for lib in threadpoolctl.threadpool_info()
                if lib.get("user_api") == "blas"
            ]
        except Exception:
            pass
    return info


# -- runners: one per (library, index) ------------------------------------------------

class _Runner:
    library = ""
    index = ""

    def __init__(self, ctx: dict):
        self.ctx = ctx
        self.k = ctx["k"]
        self.compile_s = None
        self.obj = None

    def params(self) -> list[dict]:
        raise NotImplementedError

    def build_params(self) -> dict:
        return {}

    def memory_bytes(self):
        return None

    def bytes_per_vector(self):
        """Bytes one stored vector costs in the lists (codes, factors, 8-byte id), or
        None where the library does not say."""
        return None


class _IVFMixin:
    """``kind`` is the index family (an INDEXES entry); ``index`` is the label in the
    results, which for ivfrabitq carries the bits ("ivfrabitq-4b")."""

    def _set_kind(self, index, bits):
        if index == "ivfrabitq":
            # filtered.py builds these runners without bits: take the first.
            self.bits = int(bits if bits is not None else self.ctx["rabitq_bits"][0])
            self.index = f"ivfrabitq-{self.bits}b"
        else:
            self.bits = None
            self.index = index
        self.kind = index

    def params(self) -> list[dict]:
        ctx = self.ctx
        if self.kind == "ivfpq4-refine":
            return [{"nprobe": p, "k_factor": f} for p in ctx["nprobe"]
                    for f in ctx["k_factor"]]
        return [{"nprobe": p} for p in ctx["nprobe"]]

    def build_params(self) -> dict:
        bp = {"nlist": self.ctx["nlist"]}
        if self.kind == "ivfpq":
            bp.update(m=self.ctx["pq_m"], nbits=8)
        elif self.kind == "ivfpq4-refine":
            bp.update(m=self.ctx["pq_m"], nbits=4, refine="flat",
                      by_residual=self.ctx["pq4_by_residual"])
        elif self.kind == "ivfrabitq":
            bp.update(bits=self.bits)
        return bp


def _array_bytes(obj, depth: int = 4) -> int:
    """Sum of the numpy arrays an object holds (attributes, lists, dicts, a few levels
    deep); views count their owner once. An estimate of the index's memory."""
    seen = set()

    def visit(o, dleft):
        if isinstance(o, np.ndarray):
            while isinstance(o.base, np.ndarray):
                o = o.base
        if id(o) in seen:
            return 0
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            return int(o.nbytes)
        if dleft <= 0:
            return 0
        if isinstance(o, (list, tuple)):
            return sum(visit(v, dleft - 1) for v in o)
        if isinstance(o, dict):
            return sum(visit(v, dleft - 1) for v in o.values())
        if hasattr(o, "__dict__") and not isinstance(o, type):
            return sum(visit(v, dleft - 1) for v in vars(o).values())
        return 0

    return visit(obj, depth)


class _NumbaIVFRunner(_IVFMixin, _Runner):
    library = "numba_ivf"
    _CLASS = {"ivfflat": "IVFFlat", "ivfpq": "IVFPQ", "ivfpq4-refine": "IVFPQ",
              "ivfrabitq": "IVFRaBitQ"}

    def __init__(self, ctx, index, bits=None):
        super().__init__(ctx)
        self._set_kind(index, bits)
        name = self._CLASS[index]
        try:
            self.cls = getattr(importlib.import_module("numba_ivf"), name)
        except Exception as exc:  # lazy attribute of a module not written yet, etc.
            raise ImportError(f"numba_ivf.{name} is not importable ({exc})") from None

    def _make(self, nlist):
        ctx = self.ctx
        d, metric = ctx["d"], ctx["metric"]
        if self.kind == "ivfflat":
            return self.cls(d, nlist, metric=metric)
        if self.kind == "ivfrabitq":
            return self.cls(d, nlist, bits=self.bits, metric=metric)
        nbits, refine = (8, False) if self.kind == "ivfpq" else (4, True)
        # Both libraries encode the same thing: 8-bit by residual (IndexIVFPQ's
        # default), 4-bit as --pq4-by-residual says (IndexIVFPQFastScan's default is
        # not by residual; on gcide-minilm-384, m=64, residual 4-bit codes held 0.940
        # of the true top-10 in the top-80 against 0.963 without, ours and FAISS's).
        by_res = True if self.kind == "ivfpq" else ctx["pq4_by_residual"]
        return self.cls(d, nlist, ctx["pq_m"], nbits=nbits, metric=metric,
                        by_residual=by_res, refine=refine)

    def warmup(self, base, queries):
        """Pay JIT compilation on a small index so train/add times exclude it."""
        n = min(base.shape[0], 2000)
        nlist = max(1, min(self.ctx["nlist"], n // 64, 16))
        t0 = time.perf_counter()
        idx = self._make(nlist)
        idx.train(base[:n])
        idx.add(base[:n])
        p0 = self.params()[0]
        self._search(idx, queries[:8], p0)
        self._search(idx, queries[:1], p0)
        self.compile_s = time.perf_counter() - t0

    def train(self, x):
        self.obj = self._make(self.ctx["nlist"])
        self.obj.train(x)

    def add(self, x):
        self.obj.add(x)

    def _search(self, idx, q, params):
        if self.kind == "ivfpq4-refine":
            _, I = idx.search(q, self.k, nprobe=params["nprobe"],
                              k_factor=params["k_factor"])
        else:
            _, I = idx.search(q, self.k, nprobe=params["nprobe"])
        return I

    def search(self, q, params):
        return self._search(self.obj, q, params)

    def memory_bytes(self):
        for attr in ("nbytes", "memory_usage", "memory_bytes"):
            v = getattr(self.obj, attr, None)
            v = v() if callable(v) else v
            if isinstance(v, (int, np.integer)):
                return int(v), attr
            if isinstance(v, dict):  # IVFPQ, IVFRaBitQ: bytes by part
                return int(sum(v.values())), f"{attr} (sum of parts)"
        return _array_bytes(self.obj), "arrays held (estimate)"

    def bytes_per_vector(self):
        v = getattr(self.obj, "code_bytes", None)  # includes the 8-byte id
        return int(v) if isinstance(v, (int, np.integer)) else None


class _FaissRunner(_IVFMixin, _Runner):
    library = "faiss"

    def __init__(self, ctx, index, bits=None):
        super().__init__(ctx)
        self._set_kind(index, bits)
        self.faiss = _try_import("faiss")
        if self.faiss is None:
            raise ImportError("faiss is not installed (pip install faiss-cpu)")

    def train(self, x):
        faiss, ctx = self.faiss, self.ctx
        d, nlist = ctx["d"], ctx["nlist"]
        mt = faiss.METRIC_L2 if ctx["metric"] == "l2" else faiss.METRIC_INNER_PRODUCT
        quant = faiss.IndexFlatL2(d) if mt == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
        self._keep = [quant]  # the SWIG wrappers do not own their sub-indexes
        if self.kind == "ivfflat":
            idx = faiss.IndexIVFFlat(quant, d, nlist, mt)
        elif self.kind == "ivfpq":
            idx = faiss.IndexIVFPQ(quant, d, nlist, ctx["pq_m"], 8, mt)
        elif self.kind == "ivfrabitq":
            # bbs=32, own_invlists; RaBitQ's bound assumes a random rotation, which
            # numba_ivf applies inside its index and FAISS leaves to a pre-transform.
            inner = faiss.IndexIVFRaBitQFastScan(quant, d, nlist, mt, 32, True,
                                                 self.bits)
            inner.qb = _FAISS_RABITQ_QB
            rot = faiss.RandomRotationMatrix(d, d)
            self._keep += [inner, rot]
            idx = faiss.IndexPreTransform(rot, inner)
        else:
            base = faiss.IndexIVFPQFastScan(quant, d, nlist, ctx["pq_m"], 4, mt)
            base.by_residual = ctx["pq4_by_residual"]
            self._keep.append(base)
            idx = faiss.IndexRefineFlat(base)  # exact re-rank of k_factor * k
        idx.train(x)
        self.obj = idx

    def add(self, x):
        self.obj.add(x)

    def search(self, q, params):
        ivf = self.faiss.extract_index_ivf(self.obj)
        ivf.nprobe = params["nprobe"]
        if "k_factor" in params:
            self.obj.k_factor = float(params["k_factor"])
        _, I = self.obj.search(q, self.k)
        return I

    def memory_bytes(self):
        try:
            return int(self.faiss.serialize_index(self.obj).nbytes), "serialized size"
        except Exception:
            return None

    def bytes_per_vector(self):
        if self.kind != "ivfrabitq":
            return None
        return int(self.faiss.extract_index_ivf(self.obj).code_size) + 8  # + the id


class _HnswRunner(_Runner):
    library = "hnswlib"
    index = "hnsw"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.hnswlib = _try_import("hnswlib")
        if self.hnswlib is None:
            raise ImportError("hnswlib is not installed (pip install hnswlib)")

    def params(self):
        return [{"ef": e} for e in self.ctx["ef"]]

    def build_params(self):
        return {"M": _HNSW_M, "ef_construction": _HNSW_EF_CONSTRUCTION}

    def train(self, x):
        space = "l2" if self.ctx["metric"] == "l2" else "ip"
        self.obj = self.hnswlib.Index(space=space, dim=self.ctx["d"])
        self.obj.init_index(max_elements=x.shape[0], M=_HNSW_M,
                            ef_construction=_HNSW_EF_CONSTRUCTION,
                            random_seed=self.ctx["seed"])

    def add(self, x):
        self.obj.add_items(x, np.arange(x.shape[0]), num_threads=self.ctx["threads"])

    def search(self, q, params):
        self.obj.set_ef(params["ef"])
        labels, _ = self.obj.knn_query(q, k=self.k, num_threads=self.ctx["threads"])
        return labels.astype(np.int64)

    def memory_bytes(self):
        try:
            return int(self.obj.index_file_size()), "serialized size"
        except Exception:
            return None


class _ScannRunner(_Runner):
    """ScaNN: k-means tree (nlist leaves), anisotropic hashing of 2-dim blocks (4-bit
    codes), exact re-ordering of the best ``reorder_k`` candidates.

    One build serves the sweep: ``leaves_to_search`` (the nprobe list) and
    ``pre_reorder_num_neighbors`` (``reorder_k``, k x ``scann_k_factor``) are per-call
    arguments. ``build()`` trains and indexes in one call, so ``train_s``
    holds the whole build and ``add_s`` is 0.

    Threads (ScaNN 1.4, measured here with per-thread CPU time): training uses a pool
    of ``set_n_training_threads(T)`` threads; ``search_batched_parallel`` splits the
    queries into batches run on a pool of ``set_num_threads(n)`` workers *plus the
    calling thread*, so n = T - 1 caps it at T. With T = 1 that would be an empty pool,
    on which search_batched_parallel segfaults, so T = 1 uses ``search_batched``
    (one thread). ``search`` (one query) and ``search_batched`` are single-threaded.
    """

    library = "scann"
    index = "tree-ah-reorder"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.scann = _try_import("scann")
        if self.scann is None or not hasattr(self.scann, "scann_ops_pybind"):
            raise ImportError("scann is not installed or has no scann_ops_pybind "
                              "(pip install scann)")
        self.dot = ctx["metric"] != "l2"  # cosine arrives normalised
        self.threads = ctx["threads"]
        self.parallel = None

    def params(self):
        return [{"nprobe": p, "reorder_k": self.k * f} for p in self.ctx["nprobe"]
                for f in self.ctx["scann_k_factor"]]

    def build_params(self):
        bp = {"num_leaves": self.ctx["nlist"],
              "training_sample_size": min(self.ctx["n"], _SCANN_MAX_TRAIN),
              "dims_per_block": _SCANN_DIMS_PER_BLOCK,
              "distance": "dot_product" if self.dot else "squared_l2"}
        if self.dot:
            bp["anisotropic_threshold"] = _SCANN_AVQ_THRESHOLD
        return bp

    def thread_note(self) -> str:
        how = (f"search_batched_parallel on set_num_threads({self.threads - 1}) workers "
               f"+ the calling thread" if self.threads > 1 else
               "search_batched (set_num_threads(0) would crash search_batched_parallel)")
        return (f"scann: {self.threads} thread(s): training set_n_training_threads("
                f"{self.threads}); batch mode {how}; single mode searcher.search, one "
                f"thread")

    def train(self, x):
        ctx, bp = self.ctx, self.build_params()
        x = np.ascontiguousarray(x, dtype=np.float32)
        builder = self.scann.scann_ops_pybind.builder(x, self.k, bp["distance"])
        builder = builder.tree(num_leaves=bp["num_leaves"],
                               num_leaves_to_search=ctx["nprobe"][0],
                               training_sample_size=bp["training_sample_size"])
        # For squared_l2 the anisotropic threshold stays unset (NaN: plain AH).
        avq = ({"anisotropic_quantization_threshold": _SCANN_AVQ_THRESHOLD}
               if self.dot else {})
        builder = builder.score_ah(_SCANN_DIMS_PER_BLOCK, **avq)
        builder = builder.reorder(max(p["reorder_k"] for p in self.params()))
        builder.set_n_training_threads(self.threads)
        self.obj = builder.build()
        self.parallel = self.threads > 1 and hasattr(self.obj, "search_batched_parallel")
        if self.parallel:
            self.obj.set_num_threads(self.threads - 1)

    def add(self, x):
        pass  # build() in train() indexed the rows already

    def search(self, q, params):
        kw = {"final_num_neighbors": self.k, "leaves_to_search": params["nprobe"],
              "pre_reorder_num_neighbors": params["reorder_k"]}
        if q.shape[0] == 1:
            ids, _ = self.obj.search(q[0], **kw)
            out = np.full((1, self.k), -1, dtype=np.int64)
            out[0, :len(ids)] = ids
            return out
        if self.parallel:
            # Smaller batches when there are fewer than 256 queries per thread, so
            # that every thread gets one.
            bs = max(1, min(_SCANN_BATCH, -(-q.shape[0] // self.threads)))
            ids, dist = self.obj.search_batched_parallel(q, batch_size=bs, **kw)
        else:
            ids, dist = self.obj.search_batched(q, **kw)
        ids = np.asarray(ids).astype(np.int64)
        ids[np.isnan(dist)] = -1  # short rows are padded with id 0 and NaN distance
        return ids

    def memory_bytes(self):
        import tempfile
        try:
            with tempfile.TemporaryDirectory() as tmp:
                self.obj.serialize(tmp)
                return sum(f.stat().st_size for f in Path(tmp).iterdir()), \
                    "serialized size"
        except Exception:
            return None


# -- the run --------------------------------------------------------------------------

def _resolve(cfg: BenchConfig, ds: _ds.Dataset) -> dict:
    """Fill the data-dependent defaults; return the context shared by the runners."""
    n, d, k = ds.n, ds.d, cfg.k
    nlist = cfg.nlist if cfg.nlist is not None else max(1, int(round(4 * math.sqrt(n))))
    nlist = min(nlist, n)
    nprobe = cfg.nprobe or (_NPROBE_QUICK if cfg.quick else _NPROBE_FULL)
    nprobe = sorted({min(p, nlist) for p in nprobe})
    k_factor = sorted(set(cfg.k_factor or (_KFACTOR_QUICK if cfg.quick else _KFACTOR_FULL)))
    scann_k_factor = sorted(set(cfg.k_factor or (_SCANN_KFACTOR_QUICK if cfg.quick
                                                 else _SCANN_KFACTOR_FULL)))
    ef = cfg.ef or (_EF_QUICK if cfg.quick else _EF_FULL)
    ef = sorted({max(e, k) for e in ef})
    pq_m = cfg.pq_m if cfg.pq_m is not None else _default_pq_m(d)
    if d % pq_m and any(ix in ("ivfpq", "ivfpq4-refine") for ix in cfg.indexes):
        divisors = [m for m in range(1, d + 1) if d % m == 0]
        raise ValueError(f"pq_m (--pq-m) must divide d={d} for the PQ indexes; got "
                         f"{pq_m}. Divisors of {d}: {divisors}.")
    bits = sorted(set(cfg.rabitq_bits or _RABITQ_BITS))
    if not all(1 <= b <= 8 for b in bits):
        raise ValueError(f"rabitq_bits (--rabitq-bits) values must be in 1..8; got "
                         f"{list(cfg.rabitq_bits)}")
    threads = cfg.threads
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    return {
        "n": n, "d": d, "k": k, "metric": ds.metric, "nlist": nlist,
        "nprobe": nprobe, "k_factor": k_factor, "scann_k_factor": scann_k_factor,
        "ef": ef,
        "pq_m": pq_m, "rabitq_bits": bits,
        "pq4_by_residual": bool(cfg.pq4_by_residual),
        "threads": threads, "seed": cfg.seed,
        "repeats": cfg.repeats if cfg.repeats is not None else 3,
    }


def _load(cfg: BenchConfig) -> _ds.Dataset:
    if cfg.dataset == "synthetic":
        n = cfg.synthetic_n or (10000 if cfg.quick else 100000)
        nq = cfg.synthetic_nq or (200 if cfg.quick else 1000)
        return _ds.make_synthetic(n=n, nq=nq, d=cfg.synthetic_d,
                                  n_clusters=cfg.synthetic_clusters,
                                  metric=cfg.metric or "l2", seed=cfg.seed)
    return _ds.load_dataset(cfg.dataset, cfg.metric)


def _prepare(cfg: BenchConfig, ds: _ds.Dataset, notes: list) -> str:
    """Cap the queries and make sure ground truth covers k; return its source."""
    max_q = cfg.max_queries
    if max_q is None and cfg.quick:
        max_q = 500
    if max_q is not None and ds.nq > max_q:
        ds.queries = ds.queries[:max_q]
        if ds.neighbors is not None:
            ds.neighbors = ds.neighbors[:max_q]
        if ds.distances is not None:
            ds.distances = ds.distances[:max_q]
    if ds.neighbors is not None and ds.neighbors.shape[1] >= cfg.k:
        return "file"
    if ds.neighbors is not None:
        notes.append(f"dataset ground truth has {ds.neighbors.shape[1]} neighbours "
                     f"< k={cfg.k}; recomputed")
    with Progress(ds.nq, "ground truth", enabled=_bar(cfg)) as bar:
        _, ds.neighbors = _ds.ground_truth(ds.base, ds.queries, cfg.k, ds.metric,
                                           progress=bar.set)
    return "computed"


def _bar(cfg: BenchConfig):
    return False if cfg.quiet else cfg.progress


def _measure(runner: _Runner, queries: np.ndarray, gt: np.ndarray, params: dict,
             mode: str, repeats: int, single_queries: int) -> dict:
    k = runner.k
    if mode == "batch":
        t0 = time.perf_counter()
        I = runner.search(queries, params)  # warm-up; its ids give the recall
        first_s = time.perf_counter() - t0
        sec = median_time(lambda: runner.search(queries, params), repeats, first_s)
        nq = queries.shape[0]
        rec = recall_at_k(I, gt, k)
    else:
        # An evenly spaced subset: query files are often sorted, so the first few
        # hundred need not be typical, and recall should estimate the batch figure.
        sel = np.unique(np.linspace(0, queries.shape[0] - 1, single_queries).round()
                        .astype(np.int64))
        nq = sel.size
        rows = [queries[i:i + 1] for i in sel]  # slicing outside the timed loop
        for r in rows[:3]:
            runner.search(r, params)
        t0 = time.perf_counter()
        I = np.concatenate([runner.search(r, params) for r in rows], axis=0)
        first_s = time.perf_counter() - t0
        rec = recall_at_k(I, gt[sel], k)

        def loop():
            for r in rows:
                runner.search(r, params)

        sec = median_time(loop, repeats, first_s)
    return {"recall": float(rec), "qps": float(nq / sec) if sec > 0 else float("inf"),
            "search_s": float(sec), "n_queries": int(nq)}


def _set_threads(threads: int, notes: list) -> int:
    numba = _try_import("numba")
    if numba is not None:
        from .. import _threads  # noqa: F401 - chooses the threading layer before the pool starts

        limit = numba.config.NUMBA_NUM_THREADS
        if threads > limit:
            notes.append(f"numba is limited to NUMBA_NUM_THREADS={limit} threads; "
                         f"asked for {threads}, every library uses {limit}")
            threads = limit
        numba.set_num_threads(threads)
    faiss = _try_import("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    return threads


def _make_runners(cfg: BenchConfig, ctx: dict, notes: list, skipped: list) -> list:
    runners = []
    classes = {"numba_ivf": _NumbaIVFRunner, "faiss": _FaissRunner}
    for lib in cfg.libs:
        if lib == "hnswlib":
            items = [(lib, "hnsw", lambda: _HnswRunner(ctx))]
        elif lib == "scann":  # one runner: ScaNN has no ivfflat/ivfpq distinction
            items = [(lib, _ScannRunner.index, lambda: _ScannRunner(ctx))]
        else:
            cls = classes[lib]
            items = []
            for ix in cfg.indexes:
                if ix == "ivfrabitq":
                    items += [(lib, f"ivfrabitq-{b}b",
                               lambda cls=cls, b=b: cls(ctx, "ivfrabitq", bits=b))
                              for b in ctx["rabitq_bits"]]
                else:
                    items.append((lib, ix, lambda cls=cls, ix=ix: cls(ctx, ix)))
        for lib_, ix, make in items:
            try:
                runners.append(make())
            except ImportError as exc:
                msg = f"skipping {lib_} {ix}: {exc}"
                notes.append(msg)
                skipped.append({"library": lib_, "index": ix, "reason": str(exc)})
                _log(cfg, msg)
    for r in runners:
        if hasattr(r, "thread_note"):
            notes.append(r.thread_note())
    return runners


def run_benchmark(cfg: BenchConfig, dataset: _ds.Dataset | None = None) -> dict:
    """Run the sweep described by ``cfg`` and write the outputs to ``cfg.out``.

    Parameters
    ----------
    cfg : BenchConfig
    dataset : Dataset, optional
        Use this dataset instead of loading ``cfg.dataset`` (its ground truth is
        computed if missing).

    Returns
    -------
    dict
        The content of ``results.json``: ``schema_version``, ``command``,
        ``machine``, ``dataset``, ``config``, ``builds``, ``points``, ``notes``,
        ``skipped``, ``outputs``.
    """
    notes: list = []
    skipped: list = []
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is not None:
        cfg = dataclasses.replace(cfg, dataset=dataset.name)
        ds = dataclasses.replace(dataset)  # shallow copy: _prepare rebinds fields
    else:
        ds = _load(cfg)
    gt_source = _prepare(cfg, ds, notes)
    ctx = _resolve(cfg, ds)
    ctx["threads"] = _set_threads(ctx["threads"], notes)
    single_q = min(ds.nq, cfg.single_queries or (100 if cfg.quick else 1000))

    # Libraries other than numba_ivf get normalised vectors and inner product for cosine.
    base, queries = ds.base, ds.queries
    if ds.metric == "cosine":
        base_n = _ds._normalize_rows(base.astype(np.float64)).astype(np.float32)
        queries_n = _ds._normalize_rows(queries.astype(np.float64)).astype(np.float32)
    else:
        base_n, queries_n = base, queries

    results = {
        "schema_version": SCHEMA_VERSION,
        "command": cfg.command,
        "machine": machine_info(ctx["threads"]),
        "dataset": {"name": ds.name, "source": ds.source, "n": ds.n, "d": ds.d,
                    "n_queries": ds.nq, "metric": ds.metric, "k": cfg.k,
                    "ground_truth": gt_source},
        "config": {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
                   "resolved": {k: v for k, v in ctx.items()}},
        "builds": [],
        "points": [],
        "notes": notes,
        "skipped": skipped,
        "outputs": {},
    }
    _log(cfg, f"dataset {ds.name}: n={ds.n} d={ds.d} queries={ds.nq} metric={ds.metric} "
              f"k={cfg.k} (ground truth: {gt_source}); nlist={ctx['nlist']} "
              f"threads={ctx['threads']}")

    runners = _make_runners(cfg, ctx, notes, skipped)
    blas_limit = None
    threadpoolctl = _try_import("threadpoolctl")
    if threadpoolctl is not None:
        blas_limit = threadpoolctl.threadpool_limits(ctx["threads"], user_api="blas")
    try:
        for runner in runners:
            own = runner.library == "numba_ivf"
            _run_one(cfg, ctx, runner, ds, base if own else base_n,
                     queries if own else queries_n, single_q, results)
            write_outputs(results, out, plot=False)
            runner.obj = None  # free the index before building the next one
    finally:
        if blas_limit is not None:
            blas_limit.restore_original_limits()
        write_outputs(results, out, plot=cfg.plot, notes=notes, log=lambda m: _log(cfg, m))
    return results


def build_runner(runner, base, queries, bar, build, notes, label) -> None:
    """Warm up (compile outside the timings), train and add, timing each into
    ``build``; a failed warm-up is noted and the real build reports the real error."""
    if hasattr(runner, "warmup"):
        bar.update(0, "compiling")
        try:
            runner.warmup(base, queries)
            build["compile_s"] = runner.compile_s
        except Exception as exc:
            notes.append(f"{label}: warm-up failed ({exc!r})")
    bar.update(0, "training")
    t0 = time.perf_counter()
    runner.train(base)
    build["train_s"] = time.perf_counter() - t0
    bar.update(1, "adding")
    t0 = time.perf_counter()
    runner.add(base)
    build["add_s"] = time.perf_counter() - t0


def _run_one(cfg, ctx, runner, ds, base, queries, single_q, results) -> None:
    label = f"{runner.library} {runner.index}"
    params = runner.params()
    modes = list(cfg.modes)
    n_steps = 2 + len(params) * len(modes)
    build = {"library": runner.library, "index": runner.index,
             "build_params": runner.build_params(), "train_s": None, "add_s": None,
             "build_s": None, "compile_s": None, "memory_bytes": None,
             "memory_method": None, "bytes_per_vector": None, "error": None}
    with Progress(n_steps, f"{label:<24}", enabled=_bar(cfg)) as bar:
        try:
            build_runner(runner, base, queries, bar, build, results["notes"], label)
            build["build_s"] = build["train_s"] + build["add_s"]
            mem = runner.memory_bytes()
            if mem is not None:
                build["memory_bytes"], build["memory_method"] = mem
            build["bytes_per_vector"] = runner.bytes_per_vector()
            bar.update(1, "searching")
            for p in params:
                for mode in modes:
                    m = _measure(runner, queries, ds.neighbors, p, mode, ctx["repeats"],
                                 single_q)
                    results["points"].append({
                        "library": runner.library, "index": runner.index,
                        "params": dict(p), "build_params": build["build_params"],
                        "mode": mode, "k": cfg.k, **m,
                        "repeats": ctx["repeats"], "threads": ctx["threads"],
                        "train_s": build["train_s"], "add_s": build["add_s"],
                        "build_s": build["build_s"], "compile_s": build["compile_s"],
                        "memory_bytes": build["memory_bytes"],
                        "bytes_per_vector": build["bytes_per_vector"],
                    })
                    bar.update(1, f"{_fmt_params(p)} {mode} recall={m['recall']:.3f} "
                                  f"qps={m['qps']:.0f}")
        except Exception as exc:
            if cfg.strict:
                raise
            build["error"] = repr(exc)
            msg = f"{label} failed and was skipped: {exc!r}"
            results["notes"].append(msg)
            results["skipped"].append({"library": runner.library, "index": runner.index,
                                       "reason": repr(exc)})
            _log(cfg, msg)
    results["builds"].append(build)
    pts = [p for p in results["points"]
           if p["library"] == runner.library and p["index"] == runner.index]
    if pts and build["error"] is None:
        best = max(pts, key=lambda p: p["recall"])
        _log(cfg, f"{label}: train {build['train_s']:.2f}s add {build['add_s']:.2f}s; "
                  f"{len(pts)} points, best recall@{cfg.k} {best['recall']:.3f} at "
                  f"{best['qps']:.0f} QPS ({best['mode']}, {_fmt_params(best['params'])})")


def _fmt_params(p: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items())


# -- outputs --------------------------------------------------------------------------

def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def write_outputs(results: dict, out, plot: bool = True, notes: list | None = None,
                  log=None) -> None:
    """Write ``results.json``, ``results.md`` and (if ``plot``) ``recall_qps.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if plot:
        from .plot import plot_recall_qps
        png = out / "recall_qps.png"
        try:
            made = plot_recall_qps(results, png)
        except ImportError as exc:
            made = False
            msg = f"no plot: {exc}"
            if notes is not None and msg not in notes:
                notes.append(msg)
            if log is not None:
                log(msg)
        if made:
            results["outputs"]["plot"] = png.name
    results["outputs"]["json"] = "results.json"
    results["outputs"]["markdown"] = "results.md"
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(write_markdown(results))


def _fmt_num(v, spec):
    return "" if v is None else format(v, spec)


def _fmt_bytes(v):
    if v is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024


def _family(index: str) -> int:
    """Table order of an index label: IVF kinds, then graphs, then ScaNN."""
    order = {"ivfflat": 0, "ivfpq": 1, "ivfpq4-refine": 2, "ivfrabitq": 3, "hnsw": 4,
             _ScannRunner.index: 5}
    return order.get(index.split("-", 1)[0] if index.startswith("ivfrabitq") else index,
                     9)


def _blas_line(m: dict) -> str:
    blas = m.get("blas")
    if not blas:
        return "BLAS: unknown (threadpoolctl not installed)"
    return "BLAS: " + "; ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('threading_layer')}, "
        f"{b.get('num_threads')} threads before the run's limit)" for b in blas)


def write_markdown(results: dict) -> str:
    """Render results as markdown: a summary, the builds, then one row per point.

    The summary gives, per mode and library/index, the best QPS reaching each recall
    target and the parameters that reach it. Point rows are grouped by mode and index
    family, and within a group sorted by parameters then library, so numba_ivf and
    FAISS at the same nprobe sit on adjacent rows.
    """
    ds = results["dataset"]
    m = results["machine"]
    k = ds["k"]
    lines = [
        f"# Recall/QPS: {ds['name']} (n={ds['n']}, d={ds['d']}, "
        f"queries={ds['n_queries']}, metric={ds['metric']}, k={k})",
        "",
        f"{m.get('cpu_model')}, {m.get('threads')} threads, Python {m.get('python')}, "
        f"numpy {m.get('numpy')}, numba {m.get('numba')}, faiss {m.get('faiss')}, "
        f"hnswlib {m.get('hnswlib')}, scann {m.get('scann')}; {m.get('date')}.",
        "",
        _blas_line(m) + "; thread environment: " + (
            " ".join(f"{k}={v}" for k, v in m.get("thread_env", {}).items())
            or "none set") + ".",
        "",
    ]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    points = results["points"]
    targets = (0.8, 0.9, 0.95, 0.99)
    curves: dict = {}
    for p in points:
        curves.setdefault((p["mode"], _family(p["index"]), p["index"], p["library"]),
                          []).append(p)
    if curves:
        lines += ["## Best QPS at a recall target", "",
                  "| mode | index | library | " + " | ".join(
                      f"recall@{k} >= {t}" for t in targets) + " | max recall |",
                  "|---|---|---|" + "---:|" * (len(targets) + 1)]
        for (mode, _, index, lib), pts in sorted(curves.items()):
            cells = []
            for t in targets:
                ok = [p for p in pts if p["recall"] >= t]
                best = max(ok, key=lambda p: p["qps"]) if ok else None
                cells.append(f"{best['qps']:,.0f} ({_fmt_params(best['params'])})"
                             if best else "-")
            lines.append(f"| {mode} | {index} | {lib} | " + " | ".join(cells)
                         + f" | {max(p['recall'] for p in pts):.4f} |")
        lines.append("")
    if results.get("builds"):
        lines += ["## Builds", "",
                  "bytes/vector: what one stored vector costs in the lists (codes, "
                  "factors, the 8-byte id), where the library states it; memory: "
                  "the whole index (serialized size, or the arrays numba_ivf holds).", "",
                  "| library | index | build params | train s | add s | compile s | "
                  "memory | bytes/vector | error |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for b in results["builds"]:
            lines.append(
                f"| {b['library']} | {b['index']} | {_fmt_params(b['build_params'])} | "
                f"{_fmt_num(b['train_s'], '.3f')} | {_fmt_num(b['add_s'], '.3f')} | "
                f"{_fmt_num(b['compile_s'], '.2f')} | {_fmt_bytes(b['memory_bytes'])} | "
                f"{_fmt_num(b.get('bytes_per_vector'), 'd')} | {b['error'] or ''} |")
        lines.append("")
    lines += ["## All points", "",
              f"| mode | index | params | library | recall@{k} | QPS | ms/query |",
              "|---|---|---|---|---:|---:|---:|"]
    lib_order = {name: i for i, name in enumerate(LIBRARIES)}
    for p in sorted(points, key=lambda p: (p["mode"], _family(p["index"]), p["index"],
                                           sorted(p["params"].items()),
                                           lib_order.get(p["library"], 9))):
        ms = 1000.0 / p["qps"] if p["qps"] else float("nan")
        lines.append(f"| {p['mode']} | {p['index']} | {_fmt_params(p['params'])} | "
                     f"{p['library']} | {p['recall']:.4f} | {p['qps']:,.0f} | {ms:.3f} |")
    if not points:
        lines.append("| | | | (no points: every library was skipped) | | | |")
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"
