"""``numba-ivf bench --filter``: recall@k against QPS when only some ids may be
returned.

Every index is built once, unfiltered; then each *filter* (an allow-list given as a
boolean mask over the ids 0..n-1) is swept over the index's search parameter:

* random allow-lists of ``FILTER_FRACTIONS`` of the base (50 %, 10 %, 1 %, 0.1 %),
  drawn with ``numpy.random.default_rng((seed, fraction in ppm))``;
* one *correlated* filter per dataset (:func:`correlated_filter`): a class of
  fashion-mnist-784 (``base_labels.npy``), the most frequent words of GloVe
  (``base_source_ids.npy``: rows are in the frequency order of ``glove.6B.50d.txt``),
  one Gaussian cluster of the synthetic data.

Libraries and what they are handed:

* numba_ivf ``IVFFlat`` / ``IVFPQ``: ``search(q, k, nprobe=p, filter=f)`` with f =
  ``IDFilter.from_mask(mask)`` built once and reused, as FAISS's selector is (plus
  ``k_factor`` for ``ivfpq4-refine``, ``min_candidates`` when given); the sweep is
  over nprobe, which a filtered search treats as a minimum. The conversion line also
  times the raw boolean mask passed per call.
* FAISS (the same index kinds the harness builds): ``SearchParametersIVF(sel=
  IDSelectorBitmap(n, packbits(mask, bitorder="little")), nprobe=p)`` (wrapped in
  ``IndexRefineSearchParameters`` for ``ivfpq4-refine``), built once per filter and
  parameter and reused by every call.
* hnswlib: ``knn_query(q, k, filter=allowed.__getitem__)`` with ``allowed =
  mask.tolist()`` (the cheapest Python callable there is), over ef. hnswlib calls the
  filter with the GIL held, once per visited node, so its filtered searches run with
  ``num_threads=1`` whatever ``--threads`` says (its build uses ``--threads``).

Ground truth per filter is exact search over the allowed rows only (float64, ties by
lower id: :func:`filtered_ground_truth`). Recall is tie-aware
(:func:`tie_aware_recall`): a returned id counts when it is allowed and its exact
float64 distance is no worse than the k-th true one, so equal distances (common in
fashion-mnist's integer pixels) do not turn right answers into misses; a returned id
the filter does not allow is counted as a *violation* and never as a hit.

Timing follows the harness (one untimed warm-up, then the median of ``repeats``, fast
calls repeated inside a repeat of at least ``BENCH_MIN_REPEAT_S``; ``--quick``: 2
repeats of half that), except that a call taking more than ``_LONG_CALL_S`` is timed
by its warm-up alone, and a sweep stops early once recall reaches ``_STOP_RECALL`` or
a call takes more than ``_MAX_CALL_S`` (larger parameters only cost more). Single mode
searches an evenly spaced subset of the queries one per call, each library with the
object its filter was turned into once (the bool mask itself for numba_ivf). The
conversion cost of each filter is measured on its own (``conversion`` of each runner:
the one-off build, the per-call preparation, one query filtered and not).

Outputs in ``cfg.out``: ``filter_results.json``, ``filter_tables.txt`` (what is
printed) and ``filter_recall_qps.png`` (one panel per filter).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import datasets as _ds
from . import harness as _h
from . import timing as _timing
from .._config import BENCH_MAX_INNER
from .progress import Progress

__all__ = ["FILTER_FRACTIONS", "FILTER_INDEXES", "RECALL_TARGETS", "Filter",
           "random_filters", "correlated_filter", "make_filters",
           "filtered_ground_truth", "tie_aware_recall", "run_filtered_benchmark",
           "render_tables", "plot_filtered"]

FILTER_FRACTIONS = (0.5, 0.1, 0.01, 0.001)
RECALL_TARGETS = (0.9, 0.95)
FILTER_INDEXES = ("ivfflat", "ivfpq4-refine")

# Correlated filters. GloVe's vocabulary file lists words by descending corpus count,
# and base_source_ids.npy is the row in that file: ids below 40,000 are the 40,000 most
# frequent words of the 400,000 (about 10 % of any random split of them).
GLOVE_FREQUENT_WORDS = 40_000
FMNIST_CLASS = 0
_FMNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot")
_SYNTHETIC_CLUSTER_FRACTION = 0.1  # the cluster whose share of the base is nearest this

_STOP_RECALL = 0.999   # a sweep stops after the first point at or above this recall
_LONG_CALL_S = 2.0     # a call this slow is timed once (its warm-up), not repeated
_MAX_CALL_S = 30.0     # a sweep stops after a call this slow
_QUICK_REPEATS = 2     # timed repeats per point with --quick (else the harness's 3)
_QUICK_QUERIES = 200
_QUICK_SINGLE = 50
_FULL_QUERIES = 500
_FULL_SINGLE = 200
_EF_QUICK = (16, 64, 256)
_KFACTOR = (4,)
_TIE_RTOL = 1e-9       # relative slack when comparing float64 distances for ties
_RECALL_CHUNK = 256    # queries per block in tie_aware_recall
_CONVERSION_REPEAT_SHARE = 0.25  # conversion-cost repeats last this * BENCH_MIN_REPEAT_S


# -- filters --------------------------------------------------------------------------

@dataclass
class Filter:
    """An allow-list over the base ids 0..n-1.

    Attributes
    ----------
    name : str
        Short label used in tables and plots ("random 10%", "class 0 (T-shirt/top)").
    kind : {"random", "correlated"}
    mask : ndarray of shape (n,), bool
        ``mask[id]`` is True when ``id`` may be returned.
    description : str
        How the filter was made, for the report.
    """

    name: str
    kind: str
    mask: np.ndarray
    description: str = ""

    @property
    def n_allowed(self) -> int:
        return int(self.mask.sum())

    @property
    def fraction(self) -> float:
        return self.n_allowed / max(self.mask.size, 1)

    def summary(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_allowed": self.n_allowed,
                "fraction": self.fraction, "description": self.description}


def _pct(f: float) -> str:
    return f"{100 * f:.3g}%"


def random_filters(n: int, fractions=FILTER_FRACTIONS, seed: int = 0) -> list[Filter]:
    """Uniformly random allow-lists of ``round(f * n)`` ids (at least one) per fraction.

    Each fraction has its own generator, ``default_rng((seed, round(f * 1e6)))``, so a
    list does not change when other fractions are added or removed.
    """
    out = []
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"filter fractions must be in (0, 1]; got {f}.")
        m = max(1, int(round(f * n)))
        rng = np.random.default_rng((seed, int(round(f * 1e6))))
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=m, replace=False)] = True
        out.append(Filter(f"random {_pct(f)}", "random", mask,
                          f"{m:,} ids drawn uniformly without replacement (seed {seed})"))
    return out


def correlated_filter(ds: _ds.Dataset) -> Filter | None:
    """One allow-list that follows the data's structure, or None when there is none.

    * a folder with ``base_labels.npy`` (fashion-mnist-784): the rows of class
      ``FMNIST_CLASS``;
    * a GloVe folder with ``base_source_ids.npy``: the rows whose source id (row in the
      frequency-ordered ``glove.6B.50d.txt``) is below ``GLOVE_FREQUENT_WORDS``;
    * synthetic data: the Gaussian cluster whose share is nearest 10 %.
    """
    n = ds.n
    labels = ds.meta.get("base_labels") if isinstance(ds.meta, dict) else None
    if ds.source == "synthetic" and labels is not None:
        labels = np.asarray(labels)
        counts = np.bincount(labels, minlength=1)
        c = int(np.argmin(np.abs(counts / n - _SYNTHETIC_CLUSTER_FRACTION)))
        return Filter(f"cluster {c}", "correlated", labels == c,
                      f"the rows of Gaussian cluster {c} (of {counts.size}), the "
                      f"cluster nearest {_pct(_SYNTHETIC_CLUSTER_FRACTION)} of the base")
    folder = Path(ds.source) if ds.source else None
    if folder is None or not folder.is_dir():
        return None
    lab_path = folder / "base_labels.npy"
    if lab_path.is_file():
        labels = np.load(lab_path)
        if labels.shape == (n,):
            c = FMNIST_CLASS
            label = (f"{c} ({_FMNIST_NAMES[c]})" if ds.name.startswith("fashion-mnist")
                     else str(c))
            return Filter(f"class {label}", "correlated", labels == c,
                          f"the rows of class {label}, from base_labels.npy")
    src_path = folder / "base_source_ids.npy"
    if src_path.is_file() and ds.name.lower().startswith("glove"):
        src = np.load(src_path)
        if src.shape == (n,):
            return Filter(f"top {GLOVE_FREQUENT_WORDS // 1000}k words", "correlated",
                          src < GLOVE_FREQUENT_WORDS,
                          f"rows whose base_source_ids.npy value (row of "
                          f"glove.6B.50d.txt, whose words are in descending frequency "
                          f"order) is below {GLOVE_FREQUENT_WORDS:,}: the "
                          f"{GLOVE_FREQUENT_WORDS:,} most frequent words of 400,000 that "
                          f"fell in the base")
    return None


def make_filters(ds: _ds.Dataset, fractions=FILTER_FRACTIONS, seed: int = 0,
                 correlated: bool = True, notes: list | None = None) -> list[Filter]:
    """The random filters, then the dataset's correlated one (when it has one)."""
    filters = random_filters(ds.n, fractions, seed)
    if correlated:
        c = correlated_filter(ds)
        if c is not None:
            filters.append(c)
        elif notes is not None:
            notes.append(f"{ds.name}: no correlated filter (no labels or GloVe source "
                         f"ids beside the data)")
    return filters


# -- ground truth and recall ----------------------------------------------------------

def filtered_ground_truth(base, queries, mask, k: int, metric: str, progress=None):
    """Exact top-k over the allowed rows only, as base ids (-1 past the allowed count).

    Returns ``(D, I)`` of :func:`numba_ivf.datasets.ground_truth` over
    ``base[mask]``, with ``I`` mapped back to base ids. The allowed ids are taken in
    ascending order, so ties are still ordered by the lower base id.
    """
    ids = np.flatnonzero(np.asarray(mask, dtype=bool))
    nq = queries.shape[0]
    if ids.size == 0:
        return np.full((nq, k), np.inf, dtype=np.float32), np.full((nq, k), -1, np.int64)
    D, I = _ds.ground_truth(base[ids], queries, k, metric, progress=progress)
    I = np.where(I >= 0, ids[np.maximum(I, 0)], -1)
    return D, I


def _keys(base, queries, I, metric):
    """Exact float64 distance keys (smaller is better) of ids ``I`` (inf for -1)."""
    valid = I >= 0
    x = base[np.where(valid, I, 0)].astype(np.float64)  # (m, k, d)
    q = queries.astype(np.float64)[:, None, :]
    if metric == "l2":
        diff = x - q
        key = np.einsum("mkd,mkd->mk", diff, diff)
    elif metric == "ip":
        key = -np.einsum("mkd,mkd->mk", x, q)
    else:  # cosine: 1 - cos, zero vectors at distance 1
        xn = np.linalg.norm(x, axis=2)
        qn = np.linalg.norm(q, axis=2)
        den = np.where((xn > 0) & (qn > 0), xn * qn, 1.0)
        key = 1.0 - np.einsum("mkd,mkd->mk", x, q) / den
    return np.where(valid, key, np.inf)


def tie_aware_recall(I, gt, base, queries, mask, k: int, metric: str) -> dict:
    """Recall@k that accepts any allowed id as good as the k-th true neighbour.

    Parameters
    ----------
    I : ndarray of shape (nq, >= k)
        Returned ids, -1 for missing.
    gt : ndarray of shape (nq, >= k)
        Exact filtered neighbours (:func:`filtered_ground_truth`), -1 where fewer
        than k rows are allowed.
    base, queries : ndarray
        The vectors the ids refer to (raw, as numba_ivf receives them).
    mask : ndarray of shape (n,), bool
    k : int
    metric : {"l2", "ip", "cosine"}

    Returns
    -------
    dict
        ``recall`` (hits / true neighbours, where a hit is a distinct allowed id whose
        exact float64 distance is within ``_TIE_RTOL`` of the k-th true one, at most
        ``min(k, allowed)`` per query), ``recall_ids`` (plain id overlap, as the
        harness reports), ``violations`` (returned ids the filter does not allow) and
        ``short_rows`` (queries given fewer than ``min(k, allowed)`` ids).
    """
    I = np.asarray(I)[:, :k]
    gt = np.asarray(gt)[:, :k]
    if I.shape[0] != gt.shape[0]:
        raise ValueError(f"I has {I.shape[0]} rows but gt has {gt.shape[0]}; they must "
                         f"describe the same queries.")
    mask = np.asarray(mask, dtype=bool)
    n = mask.size
    hits = violations = short = 0
    want_total = int((gt >= 0).sum())
    for r0 in range(0, I.shape[0], _RECALL_CHUNK):
        a = I[r0:r0 + _RECALL_CHUNK]
        g = gt[r0:r0 + _RECALL_CHUNK]
        q = queries[r0:r0 + _RECALL_CHUNK]
        want = (g >= 0).sum(axis=1)
        inside = (a >= 0) & (a < n)
        ok = inside & mask[np.where(inside, a, 0)]
        violations += int(((a >= 0) & ~ok).sum())
        # Count an id once per row: drop repeats (kept: the first of each run).
        order = np.argsort(a, axis=1, kind="stable")
        srt = np.take_along_axis(a, order, axis=1)
        rep = np.zeros_like(ok)
        rows = np.nonzero(srt[:, 1:] == srt[:, :-1])
        rep[rows[0], order[:, 1:][rows]] = True
        ok &= ~rep
        short += int((ok.sum(axis=1) < want).sum())
        kth = np.full(a.shape[0], -np.inf)
        has = want > 0
        if has.any():
            gk = _keys(base, q[has], g[has], metric)
            kth[has] = gk[np.arange(gk.shape[0]), want[has] - 1]
        key = _keys(base, q, np.where(ok, a, -1), metric)
        thr = kth + _TIE_RTOL * np.maximum(np.abs(kth), 1.0)
        good = (key <= thr[:, None]) & ok
        hits += int(np.minimum(good.sum(axis=1), want).sum())
    return {"recall": hits / want_total if want_total else 1.0,
            "recall_ids": _h.recall_at_k(I, gt, k),
            "violations": violations, "short_rows": short}


# -- runners: the harness's, plus a filtered search and its conversion cost ----------

def _one_query_s(fn, repeats: int = 3) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` runs of about a quarter of
    BENCH_MIN_REPEAT_S each (a one-off cost: no need for the sweep's precision)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    floor_s = _timing.BENCH_MIN_REPEAT_S * _CONVERSION_REPEAT_SHARE
    inner = int(min(BENCH_MAX_INNER, max(1, math.ceil(floor_s / max(first, 1e-6)))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return float(np.median(times))


class _NumbaFiltered(_h._NumbaIVFRunner):
    def __init__(self, ctx, index):
        super().__init__(ctx, index)
        sig = inspect.signature(self.cls.search)
        if "filter" not in sig.parameters:
            raise ImportError(f"numba_ivf.{self.cls.__name__}.search{sig} has no filter= "
                              f"parameter yet")
        self.min_candidates = ctx.get("min_candidates")

    def warmup(self, base, queries):
        """Compile the unfiltered, filtered and exact-over-few-rows paths on a small
        index, batch and one-query, so build and search times exclude JIT."""
        n = min(base.shape[0], 2000)
        nlist = max(1, min(self.ctx["nlist"], n // 64, 16))
        t0 = time.perf_counter()
        idx = self._make(nlist)
        idx.train(base[:n])
        idx.add(base[:n])
        p0 = self.params()[0]
        self._search(idx, queries[:8], p0)
        self._search(idx, queries[:1], p0)
        rng = np.random.default_rng(0)
        for frac in (0.5, 0.05, 0.004):
            mask = rng.random(n) < frac
            mask[0] = True
            self._fsearch(idx, queries[:8], p0, mask)
            self._fsearch(idx, queries[:1], p0, mask)
        self.compile_s = time.perf_counter() - t0

    def prepare(self, filt: Filter):
        # Built once and reused, as FAISS's IDSelectorBitmap is: its row bits are then
        # computed on the first call and cached while the index is unchanged. A raw
        # mask per call repays the conversion each time (the "bool mask" line).
        from numba_ivf import IDFilter
        return IDFilter.from_mask(filt.mask)

    def _fsearch(self, idx, q, params, f):
        kw = {"nprobe": params["nprobe"], "filter": f}
        if "k_factor" in params:
            kw["k_factor"] = params["k_factor"]
        if self.min_candidates is not None:
            kw["min_candidates"] = self.min_candidates
        _, I = idx.search(q, self.k, **kw)
        return I

    def fsearch(self, q, params, state):
        return self._fsearch(self.obj, q, params, state)

    def conversion(self, filt: Filter, q1, params) -> dict:
        """What the mask costs besides the scan.

        ``build_s``: ``IDFilter.from_mask(mask)``, once. ``per_call_s``: the filter's
        preparation against the index's rows that every search call repeats
        (``numba_ivf.filters.prepare``, private; None if it moved). One query at the
        sweep's first point: unfiltered; filtered with a prebuilt IDFilter; with the
        bool mask; and filtered with the probing held to the unfiltered lists
        (``min_candidates=1, max_nprobe=nprobe``), so that its difference from the
        unfiltered time is the filter's overhead alone (a filter small enough for the
        exact path is searched exactly all the same).
        """
        import numba_ivf
        out = {"build": "IDFilter.from_mask(mask)", "build_s": None, "per_call_s": None,
               "one_query_unfiltered_s": _one_query_s(lambda: self.search(q1, params)),
               "one_query_prebuilt_s": None, "one_query_same_probes_s": None,
               "one_query_mask_s": _one_query_s(
                   lambda: self.fsearch(q1, params, filt.mask))}
        IDFilter = getattr(numba_ivf, "IDFilter", None)
        from_mask = getattr(IDFilter, "from_mask", None)
        if from_mask is None:
            return out
        out["build_s"] = _one_query_s(lambda: from_mask(filt.mask))
        fobj = from_mask(filt.mask)
        out["one_query_prebuilt_s"] = _one_query_s(lambda: self.fsearch(q1, params, fobj))
        same = dict(params)
        kw = {"nprobe": same.pop("nprobe"), "filter": fobj, "min_candidates": 1,
              "max_nprobe": params["nprobe"], **same}
        out["one_query_same_probes_s"] = _one_query_s(
            lambda: self.obj.search(q1, self.k, **kw))
        try:
            from numba_ivf.filters import prepare
            lists = self.obj._lists
            prepare(fobj, lists, 1)
        except Exception:
            return out
        out["per_call_s"] = _one_query_s(lambda: prepare(fobj, lists, 1))
        return out


class _FaissFiltered(_h._FaissRunner):
    def __init__(self, ctx, index):
        super().__init__(ctx, index)
        self._params = {}

    def _selector(self, mask):
        faiss = self.faiss
        bits = np.packbits(mask, bitorder="little")  # bit (i & 7) of byte i >> 3
        return bits, faiss.IDSelectorBitmap(mask.size, faiss.swig_ptr(bits))

    def prepare(self, filt: Filter):
        self._params = {}  # SearchParameters of the previous filter
        return self._selector(filt.mask)

    def _search_params(self, params, state):
        key = (id(state), tuple(sorted(params.items())))
        hit = self._params.get(key)
        if hit is None:
            faiss = self.faiss
            ivf = faiss.SearchParametersIVF(sel=state[1], nprobe=int(params["nprobe"]))
            sp = ivf
            if "k_factor" in params:
                sp = faiss.IndexRefineSearchParameters(k_factor=float(params["k_factor"]),
                                                       base_index_params=ivf)
            hit = (sp, ivf, state)  # the SWIG objects do not own what they point to
            self._params[key] = hit
        return hit[0]

    def fsearch(self, q, params, state):
        _, I = self.obj.search(q, self.k, params=self._search_params(params, state))
        return I

    def conversion(self, filt: Filter, q1, params) -> dict:
        faiss = self.faiss

        def build():
            bits, sel = self._selector(filt.mask)
            sp = faiss.SearchParametersIVF(sel=sel, nprobe=int(params["nprobe"]))
            return bits, sel, sp

        state = self._selector(filt.mask)
        return {"build": "packbits + IDSelectorBitmap + SearchParametersIVF",
                "build_s": _one_query_s(build),
                "one_query_unfiltered_s": _one_query_s(lambda: self.search(q1, params)),
                "one_query_prebuilt_s": _one_query_s(
                    lambda: self.fsearch(q1, params, state)),
                "one_query_mask_s": None}


class _HnswFiltered(_h._HnswRunner):
    def prepare(self, filt: Filter):
        return filt.mask.tolist().__getitem__

    def fsearch(self, q, params, state):
        self.obj.set_ef(params["ef"])
        try:
            labels, _ = self.obj.knn_query(q, k=self.k, num_threads=1, filter=state)
        except RuntimeError:  # fewer than k allowed nodes reached by some query
            labels = np.full((q.shape[0], self.k), -1, dtype=np.int64)
            for i in range(q.shape[0]):
                for kk in range(self.k, 0, -1):
                    try:
                        row, _ = self.obj.knn_query(q[i:i + 1], k=kk, num_threads=1,
                                                    filter=state)
                    except RuntimeError:
                        continue
                    labels[i, :kk] = row[0]
                    break
        return labels.astype(np.int64)

    def search(self, q, params):  # unfiltered, on one thread like the filtered calls
        self.obj.set_ef(params["ef"])
        labels, _ = self.obj.knn_query(q, k=self.k, num_threads=1)
        return labels.astype(np.int64)

    def conversion(self, filt: Filter, q1, params) -> dict:
        state = self.prepare(filt)
        return {"build": "mask.tolist().__getitem__",
                "build_s": _one_query_s(lambda: self.prepare(filt)),
                "one_query_unfiltered_s": _one_query_s(lambda: self.search(q1, params)),
                "one_query_prebuilt_s": _one_query_s(
                    lambda: self.fsearch(q1, params, state)),
                "one_query_mask_s": None}


def _make_runners(cfg, ctx, notes, skipped) -> list:
    runners = []
    for lib in cfg.libs:
        if lib == "scann":
            # ScaNN has no filtered search to compare against (no allow-list argument).
            msg = "skipping scann: it has no filtered search"
            notes.append(msg)
            skipped.append({"library": "scann", "index": "-", "reason": msg})
            continue
        if lib == "hnswlib":
            items = [("hnswlib", "hnsw", lambda ix: _HnswFiltered(ctx))]
        elif lib == "faiss":
            items = [("faiss", ix, lambda ix: _FaissFiltered(ctx, ix))
                     for ix in ctx["indexes"]]
        else:
            items = [("numba_ivf", ix, lambda ix: _NumbaFiltered(ctx, ix))
                     for ix in ctx["indexes"]]
        for lib_, ix, make in items:
            try:
                runners.append(make(ix))
            except ImportError as exc:
                msg = f"skipping {lib_} {ix}: {exc}"
                notes.append(msg)
                skipped.append({"library": lib_, "index": ix, "reason": str(exc)})
                _h._log(cfg, msg)
    return runners


# -- measuring ------------------------------------------------------------------------

def _time(fn, repeats: int, floor_s: float):
    """Warm-up call, then the median of ``repeats`` timed repeats of at least
    ``floor_s`` each (fast calls run several times per repeat, as in
    :func:`~numba_ivf.bench.timing.median_time`); a warm-up slower than
    ``_LONG_CALL_S`` is the measurement. Returns (warm-up result, seconds per call,
    warm-up seconds, repeats)."""
    t0 = time.perf_counter()
    res = fn()
    first = time.perf_counter() - t0
    if first >= _LONG_CALL_S:
        return res, first, first, 1
    inner = int(min(BENCH_MAX_INNER, max(1, math.ceil(floor_s / max(first, 1e-6)))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return res, float(np.median(times)), first, repeats


def _measure(runner, queries, base, filt, gt, params, state, mode, repeats, floor_s,
             single_sel, metric):
    k = runner.k
    if mode == "batch":
        I, sec, first, reps = _time(lambda: runner.fsearch(queries, params, state),
                                    repeats, floor_s)
        sel = slice(None)
        nq = queries.shape[0]
    else:
        rows = [queries[i:i + 1] for i in single_sel]
        for r in rows[:3]:
            runner.fsearch(r, params, state)

        def loop():
            return np.concatenate([runner.fsearch(r, params, state) for r in rows])

        I, sec, first, reps = _time(loop, repeats, floor_s)
        sel = single_sel
        nq = len(rows)
    rec = tie_aware_recall(I, gt[sel], base, queries[sel], filt.mask, k, metric)
    return {**rec, "qps": float(nq / sec) if sec > 0 else float("inf"),
            "search_s": float(sec), "first_call_s": float(first), "n_queries": int(nq),
            "repeats": int(reps)}


# -- the run --------------------------------------------------------------------------

def _nprobe_sweep(nlist: int) -> list[int]:
    vals = [1 << i for i in range(0, max(1, nlist).bit_length()) if (1 << i) < nlist]
    return vals + [nlist]


def _nprobe_quick(nlist: int) -> list[int]:
    return sorted({min(p, nlist) for p in (1, 4, 16, 64, 256)} | {nlist})


def _resolve(cfg, ds) -> dict:
    ctx = _h._resolve(cfg, ds)
    nlist = ctx["nlist"]
    if cfg.nprobe is None:
        ctx["nprobe"] = _nprobe_quick(nlist) if cfg.quick else _nprobe_sweep(nlist)
    if cfg.k_factor is None:
        ctx["k_factor"] = list(_KFACTOR)
    if cfg.ef is None:
        ctx["ef"] = (sorted({max(e, cfg.k) for e in _EF_QUICK}) if cfg.quick
                     else ctx["ef"])
    if cfg.repeats is None and cfg.quick:
        ctx["repeats"] = _QUICK_REPEATS
    # Read at run time so that tests can lower it (tests/test_bench.py's fixture).
    ctx["repeat_floor_s"] = _timing.BENCH_MIN_REPEAT_S * (0.5 if cfg.quick else 1.0)
    ctx["indexes"] = list(cfg.indexes)
    ctx["min_candidates"] = cfg.min_candidates
    ctx["fractions"] = list(cfg.filter_fractions or FILTER_FRACTIONS)
    return ctx


def _prepare_queries(cfg, ds) -> None:
    max_q = cfg.max_queries or (_QUICK_QUERIES if cfg.quick else _FULL_QUERIES)
    if ds.nq > max_q:
        ds.queries = ds.queries[:max_q]
    ds.neighbors = ds.distances = None  # the unfiltered ground truth is not used


def run_filtered_benchmark(cfg: _h.BenchConfig,
                           dataset: _ds.Dataset | None = None) -> dict:
    """Run the filtered sweep described by ``cfg``; write the outputs to ``cfg.out``.

    Parameters
    ----------
    cfg : BenchConfig
        As for :func:`numba_ivf.bench.harness.run_benchmark`, plus ``filter_fractions``
        (default ``FILTER_FRACTIONS``), ``correlated`` and ``min_candidates``.
        ``indexes`` should usually be ``FILTER_INDEXES``.
    dataset : Dataset, optional
        Use this dataset instead of loading ``cfg.dataset``.

    Returns
    -------
    dict
        The content of ``filter_results.json``: ``schema_version``, ``command``,
        ``machine``, ``dataset``, ``config``, ``filters``, ``builds``,
        ``conversions``, ``points``, ``notes``, ``skipped``, ``outputs``, ``tables``.
    """
    notes: list = []
    skipped: list = []
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is not None:
        cfg = dataclasses.replace(cfg, dataset=dataset.name)
        ds = dataclasses.replace(dataset)
    else:
        ds = _h._load(cfg)
    _prepare_queries(cfg, ds)
    ctx = _resolve(cfg, ds)
    ctx["threads"] = _h._set_threads(ctx["threads"], notes)
    single_n = min(ds.nq, cfg.single_queries or (_QUICK_SINGLE if cfg.quick
                                                  else _FULL_SINGLE))
    single_sel = np.unique(np.linspace(0, ds.nq - 1, single_n).round().astype(np.int64))
    filters = make_filters(ds, ctx["fractions"], cfg.seed, cfg.correlated, notes)

    base, queries = ds.base, ds.queries
    if ds.metric == "cosine":
        base_n = _ds._normalize_rows(base.astype(np.float64)).astype(np.float32)
        queries_n = _ds._normalize_rows(queries.astype(np.float64)).astype(np.float32)
    else:
        base_n, queries_n = base, queries

    results = {
        "schema_version": _h.SCHEMA_VERSION,
        "command": cfg.command,
        "machine": {**_h.machine_info(ctx["threads"]), "load_avg_start": _loadavg(),
                    "load_avg_end": None, "numba_ivf_revision": _revision(),
                    "blas_owners": None},
        "dataset": {"name": ds.name, "source": ds.source, "n": ds.n, "d": ds.d,
                    "n_queries": ds.nq, "n_single_queries": int(single_sel.size),
                    "metric": ds.metric, "k": cfg.k},
        "config": {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
                   "resolved": dict(ctx)},
        "filters": [f.summary() for f in filters],
        "builds": [], "conversions": [], "points": [],
        "notes": notes, "skipped": skipped, "outputs": {},
    }
    if "hnswlib" in cfg.libs:
        notes.append("hnswlib calls the filter callable with the GIL held, once per "
                     "visited node: its searches (filtered and the unfiltered reference) "
                     "run with num_threads=1; its build uses every thread")
    _h._log(cfg, f"dataset {ds.name}: n={ds.n} d={ds.d} queries={ds.nq} "
                 f"(single {single_sel.size}) metric={ds.metric} k={cfg.k}; "
                 f"nlist={ctx['nlist']} threads={ctx['threads']}; filters: "
                 + ", ".join(f"{f.name} ({f.n_allowed:,})" for f in filters))

    blas_limit = None
    threadpoolctl = _h._try_import("threadpoolctl")
    if threadpoolctl is not None:
        blas_limit = threadpoolctl.threadpool_limits(ctx["threads"], user_api="blas")
    results["machine"]["blas_owners"] = _blas_owners()
    try:
        gts = []
        for f in filters:
            t0 = time.perf_counter()
            with Progress(ds.nq, f"ground truth {f.name:<12}", enabled=_h._bar(cfg)) as b:
                _, gt = filtered_ground_truth(base, queries, f.mask, cfg.k, ds.metric,
                                              progress=b.set)
            gts.append(gt)
            results["filters"][len(gts) - 1]["ground_truth_s"] = time.perf_counter() - t0
        runners = _make_runners(cfg, ctx, notes, skipped)
        for runner in runners:
            own = runner.library == "numba_ivf"
            _run_one(cfg, ctx, runner, filters, gts, base,
                     base if own else base_n, queries if own else queries_n,
                     single_sel, results)
            write_outputs(results, out, plot=False)
            runner.obj = None
    finally:
        if blas_limit is not None:
            blas_limit.restore_original_limits()
        results["machine"]["load_avg_end"] = _loadavg()
        write_outputs(results, out, plot=cfg.plot, log=lambda m: _h._log(cfg, m))
    return results


def _revision():
    """The checkout's commit (+ "-dirty" with uncommitted changes), or None."""
    import subprocess
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no",
                                "--", "."], cwd=here.parent, capture_output=True,
                               text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg():
    """1-, 5- and 15-minute load averages (other work sharing the cores), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _run_one(cfg, ctx, runner, filters, gts, raw_base, base, queries, single_sel,
             results) -> None:
    label = f"{runner.library} {runner.index}"
    params = runner.params()
    modes = list(cfg.modes)
    build = {"library": runner.library, "index": runner.index,
             "build_params": runner.build_params(), "train_s": None, "add_s": None,
             "compile_s": None, "error": None}
    n_steps = 2 + len(filters) * (1 + len(params) * len(modes))
    with Progress(n_steps, f"{label:<24}", enabled=_h._bar(cfg)) as bar:
        try:
            _h.build_runner(runner, base, queries, bar, build, results["notes"], label)
            bar.update(1, "searching")
            q1 = queries[single_sel[0]:single_sel[0] + 1]
            for filt, gt in zip(filters, gts):
                try:
                    _sweep_filter(cfg, ctx, runner, filt, gt, params, modes, raw_base,
                                  queries, q1, single_sel, results, bar)
                except Exception as exc:  # one filter failing leaves the others
                    if cfg.strict:
                        raise
                    msg = f"{label} {filt.name} failed and was skipped: {exc!r}"
                    results["notes"].append(msg)
                    results["skipped"].append({"library": runner.library,
                                               "index": runner.index,
                                               "filter": filt.name, "reason": repr(exc)})
                    _h._log(cfg, msg)
        except Exception as exc:
            if cfg.strict:
                raise
            build["error"] = repr(exc)
            msg = f"{label} failed and was skipped: {exc!r}"
            results["notes"].append(msg)
            results["skipped"].append({"library": runner.library, "index": runner.index,
                                       "reason": repr(exc)})
            _h._log(cfg, msg)
    results["builds"].append(build)
    if build["error"] is None:
        _h._log(cfg, f"{label}: train {build['train_s']:.2f}s add {build['add_s']:.2f}s")


def _sweep_filter(cfg, ctx, runner, filt, gt, params, modes, raw_base, queries, q1,
                  single_sel, results, bar) -> None:
    """Conversion cost, then the parameter sweep of one filter on a built index."""
    label = f"{runner.library} {runner.index}"
    state = runner.prepare(filt)
    conv = runner.conversion(filt, q1, params[0])
    results["conversions"].append({"library": runner.library, "index": runner.index,
                                   "filter": filt.name, "params": dict(params[0]),
                                   **conv})
    bar.update(1, f"{filt.name}: conversion")
    left = len(params) * len(modes)
    for p in params:
        slow = done = False
        for mode in modes:
            m = _measure(runner, queries, raw_base, filt, gt, p, state, mode,
                         ctx["repeats"], ctx["repeat_floor_s"], single_sel, ctx["metric"])
            left -= 1
            results["points"].append({
                "library": runner.library, "index": runner.index, "filter": filt.name,
                "fraction": filt.fraction, "params": dict(p), "mode": mode, "k": cfg.k,
                **m, "threads": 1 if runner.library == "hnswlib" else ctx["threads"],
            })
            if m["violations"]:
                msg = (f"{label} {filt.name} {_h._fmt_params(p)} {mode}: "
                       f"{m['violations']} returned ids the filter does not allow")
                results["notes"].append(msg)
                _h._log(cfg, msg)
            slow |= m["first_call_s"] > _MAX_CALL_S
            done |= m["recall"] >= _STOP_RECALL and mode == modes[0]
            bar.update(1, f"{filt.name} {_h._fmt_params(p)} {mode} "
                          f"recall={m['recall']:.3f} qps={m['qps']:.0f}")
        if slow and p is not params[-1]:
            results["notes"].append(f"{label} {filt.name}: sweep stopped after "
                                    f"{_h._fmt_params(p)} (a call took over "
                                    f"{_MAX_CALL_S:.0f} s)")
        if done or slow:
            bar.update(left)
            break


# -- report ---------------------------------------------------------------------------

def _best(points, target):
    ok = [p for p in points if p["recall"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def _fmt_s(s):
    if s is None:
        return "n/a"
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"


def _blas_owners() -> list | None:
    """threadpoolctl's BLAS libraries with the package that loaded each (numpy's serves
    the ground truth and numba_ivf's BLAS calls, faiss-cpu bundles its own)."""
    threadpoolctl = _h._try_import("threadpoolctl")
    if threadpoolctl is None:
        return None
    out = []
    try:
        for lib in threadpoolctl.threadpool_info():
            if lib.get("user_api") != "blas":
                continue
            path = str(lib.get("filepath") or "")
            owner = next((name for name in ("numpy", "faiss", "scipy", "torch")
                          if name in path), "?")
            out.append({"owner": owner, **{key: lib.get(key) for key in (
                "internal_api", "version", "architecture", "threading_layer",
                "num_threads")}})
    except Exception:
        return None
    return out


def _blas_line(machine) -> str:
    libs = machine.get("blas_owners") or machine.get("blas") or []
    if not libs:
        return "BLAS: unknown (threadpoolctl not installed)"
    return "BLAS (threadpoolctl): " + "; ".join(
        (f"{b['owner']}: " if b.get("owner") else "")
        + f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')} kernel, "
          f"{b.get('threading_layer')}, {b.get('num_threads')} threads)" for b in libs)


_CELL = 31  # "12,345 (nprobe=1024 k_factor=4)"
_FAMILY = {"ivfflat": 0, "ivfpq": 1, "ivfpq4-refine": 2, "hnsw": 3}
_LIB_ORDER = {"numba_ivf": 0, "faiss": 1, "hnswlib": 2}


def render_tables(results: dict) -> str:
    """The report: per mode, one block per filter with a row per library and index.

    Cells are the best QPS among the points reaching each recall target (and the
    parameter that gave it); "ours/faiss" is numba_ivf's best QPS over FAISS's for the
    same index kind; the conversion line gives each library's one-off cost of turning
    the mask into what its search takes, and one query's time unfiltered and filtered
    at the first point of the sweep.
    """
    ds = results["dataset"]
    m = results["machine"]
    k = ds["k"]
    t1, t2 = RECALL_TARGETS
    lines = [
        f"Filtered search: {ds['name']} (n={ds['n']:,}, d={ds['d']}, "
        f"metric={ds['metric']}, k={k}; {ds['n_queries']} queries batch, "
        f"{ds.get('n_single_queries')} one at a time)",
        f"{m.get('cpu_model')}, {m.get('threads')} threads (hnswlib searches: 1), "
        f"numpy {m.get('numpy')}, numba {m.get('numba')}, faiss {m.get('faiss')}, "
        f"hnswlib {m.get('hnswlib')}; numba_ivf {m.get('numba_ivf_revision') or '?'}; "
        f"{m.get('date')}",
        _blas_line(m),
    ]
    la0, la1 = m.get("load_avg_start"), m.get("load_avg_end")
    if la0:
        lines.append(f"load average (1/5/15 min) at start {'/'.join(map(str, la0))}"
                     + (f", at end {'/'.join(map(str, la1))}" if la1 else "")
                     + f" on {m.get('usable_cores')} usable cores")
    if results.get("command"):
        lines.append(f"command: {results['command']}")
    seed = results.get("config", {}).get("seed", 0)
    desc = [f"random: ids drawn uniformly without replacement (seed {seed})"]
    desc += [f"{f['name']}: {f.get('description', '')}" for f in results["filters"]
             if f.get("kind") != "random"]
    lines.append("filters: " + "; ".join(desc))
    lines.append("recall@{0} is tie-aware, against exact search over the allowed rows; "
                 "QPS@r = best QPS with recall >= r (parameter in brackets), "
                 "'-' = not reached (max recall shown)".format(k))
    points = results["points"]
    convs = results.get("conversions", [])
    modes = [mo for mo in _h.MODES if any(p["mode"] == mo for p in points)]
    w = _CELL
    head = (f"  {'library':<10} {'index':<14} {'QPS@' + str(t1):>{w}} "
            f"{'QPS@' + str(t2):>{w}} {'max recall':>10} {'ours/faiss @' + str(t1):>16} "
            f"{'@' + str(t2):>7} {'viol.':>5}")
    for mode in modes:
        what = "all queries in one call" if mode == "batch" else "one query per call"
        lines += ["", f"== {mode} ({what}) =="]
        for f in results["filters"]:
            pts = [p for p in points if p["mode"] == mode and p["filter"] == f["name"]]
            lines += ["", f"{f['name']}: {f['n_allowed']:,} allowed "
                          f"({_pct(f['fraction'])})", head]
            curves: dict = {}
            for p in pts:
                curves.setdefault((p["index"], p["library"]), []).append(p)
            best = {key: (_best(c, t1), _best(c, t2)) for key, c in curves.items()}
            for (index, lib), c in sorted(curves.items(), key=lambda kv: (
                    _FAMILY.get(kv[0][0], 9), _LIB_ORDER.get(kv[0][1], 9))):
                cells = []
                for b in best[(index, lib)]:
                    cells.append(f"{b['qps']:,.0f} ({_h._fmt_params(b['params'])})"
                                 if b else "-")
                ratio = ["", ""]
                other = best.get((index, "faiss"))
                if lib == "numba_ivf" and other is not None:
                    for i, (ours, theirs) in enumerate(zip(best[(index, lib)], other)):
                        if ours and theirs:
                            ratio[i] = f"{ours['qps'] / theirs['qps']:.2f}x"
                        elif ours:
                            ratio[i] = "faiss -"
                        elif theirs:
                            ratio[i] = "ours -"
                        else:
                            ratio[i] = "-"
                viol = sum(p["violations"] for p in c)
                lines.append(f"  {lib:<10} {index:<14} {cells[0]:>{w}} {cells[1]:>{w}} "
                             f"{max(p['recall'] for p in c):>10.4f} {ratio[0]:>16} "
                             f"{ratio[1]:>7} {viol:>5}")
            if not curves:
                lines.append("  (no points)")
            if mode == modes[0]:
                parts = []
                for cv in sorted((c for c in convs if c["filter"] == f["name"]),
                                 key=lambda c: (_LIB_ORDER.get(c["library"], 9),
                                                _FAMILY.get(c["index"], 9))):
                    s = (f"{cv['library']} {cv['index']}: {cv['build']} "
                         f"{_fmt_s(cv['build_s'])}; 1 query "
                         f"({_h._fmt_params(cv['params'])}) unfiltered "
                         f"{_fmt_s(cv['one_query_unfiltered_s'])}")
                    if cv.get("one_query_prebuilt_s") is not None:
                        s += f", prebuilt filter {_fmt_s(cv['one_query_prebuilt_s'])}"
                    if cv.get("one_query_mask_s") is not None:
                        s += f", bool mask {_fmt_s(cv['one_query_mask_s'])}"
                    if cv.get("one_query_same_probes_s") is not None:
                        s += (f", filtered on the same lists "
                              f"{_fmt_s(cv['one_query_same_probes_s'])}")
                    if cv.get("per_call_s") is not None:
                        s += f"; per-call filter prep {_fmt_s(cv['per_call_s'])}"
                    parts.append(s)
                if parts:
                    lines.append("  conversion: " + "\n              ".join(parts))
    lines += _points_section(results)
    if results.get("builds"):
        lines += ["", "builds: " + "; ".join(
            f"{b['library']} {b['index']} train {_h._fmt_num(b['train_s'], '.2f')} s "
            f"add {_h._fmt_num(b['add_s'], '.2f')} s"
            + (f" (compile {b['compile_s']:.1f} s)" if b.get("compile_s") else "")
            + (f" ERROR {b['error']}" if b.get("error") else "")
            for b in results["builds"])]
    if results.get("notes"):
        lines += ["", "notes:"] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def _points_section(results: dict) -> list[str]:
    """Every point: per filter and index kind, a row per parameter with each library's
    recall and QPS in batch and one query per call (blank where a sweep stopped)."""
    points = results["points"]
    if not points:
        return []
    k = results["dataset"]["k"]
    lines = ["", f"== all points: recall@{k} (batch) and QPS, batch | one query per "
                 f"call ==",
             "(a sweep stops at recall >= {0} or after a call over {1:.0f} s)".format(
                 _STOP_RECALL, _MAX_CALL_S)]
    cell = 33
    for f in results["filters"]:
        pts = [p for p in points if p["filter"] == f["name"]]
        lines += ["", f"{f['name']} ({f['n_allowed']:,} allowed)"]
        for index in sorted({p["index"] for p in pts}, key=lambda i: _FAMILY.get(i, 9)):
            sub = [p for p in pts if p["index"] == index]
            libs = sorted({p["library"] for p in sub},
                          key=lambda lib: _LIB_ORDER.get(lib, 9))
            by = {(p["library"], tuple(p["params"].items()), p["mode"]): p for p in sub}
            keys = sorted({tuple(p["params"].items()) for p in sub},
                          key=lambda kv: tuple(v for _, v in kv))
            lines.append(f"  {index:<14} {'params':<22}" + "".join(
                f"{lib + ': recall, QPS batch | single':>{cell + 5}}" for lib in libs))
            for key in keys:
                row = f"  {'':<14} {_h._fmt_params(dict(key)):<22}"
                for lib in libs:
                    b, s1 = by.get((lib, key, "batch")), by.get((lib, key, "single"))
                    rec = (b or s1)["recall"] if (b or s1) else None
                    txt = "" if rec is None else (
                        f"{rec:.4f} {b['qps'] if b else 0:>9,.0f} | "
                        f"{s1['qps'] if s1 else 0:>7,.0f}")
                    row += f"{txt:>{cell + 5}}"
                lines.append(row)
    return lines


def plot_filtered(results: dict, path) -> bool:
    """Recall (x) against QPS (y, log), one panel per filter, one curve (the Pareto
    front of its sweep) per library, index and mode. Returns True when written.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("matplotlib is not installed; `pip install matplotlib` (or "
                          "numba_ivf[bench]) to get filter_recall_qps.png. "
                          "filter_results.json and filter_tables.txt were written."
                          ) from None
    from .plot import _COLORS, _LINESTYLES, _MARKERS, pareto_front
    ds = results["dataset"]
    filters = results["filters"]
    cols = min(3, max(1, len(filters)))
    rows = max(1, math.ceil(len(filters) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), dpi=100,
                             squeeze=False)
    try:
        for ax, f in zip(axes.flat, filters):
            curves: dict = {}
            for p in results["points"]:
                if p["filter"] == f["name"] and p["qps"] > 0:
                    key = (p["library"], p["index"], p["mode"])
                    curves.setdefault(key, []).append(p)
            for (lib, index, mode), pts in sorted(curves.items()):
                color = _COLORS.get(lib, {}).get(index, "tab:gray")
                marker = _MARKERS.get(index, "x")
                front = pareto_front(pts)
                ax.plot([p["recall"] for p in front], [p["qps"] for p in front],
                        linestyle=_LINESTYLES.get(mode, ":"), marker=marker, color=color,
                        markersize=3, label=f"{lib} {index} ({mode})")
            for t in RECALL_TARGETS:
                ax.axvline(t, color="0.7", linewidth=0.8, linestyle=":")
            if curves:
                ax.set_yscale("log")
            ax.set_title(f"{f['name']} ({f['n_allowed']:,} allowed)", fontsize=10)
            ax.set_xlabel(f"recall@{ds['k']} (tie-aware)")
            ax.set_ylabel("queries per second")
            ax.grid(True, which="both", alpha=0.3)
        for ax in list(axes.flat)[len(filters):]:
            ax.axis("off")
        handles, labels = [], []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)),
                       fontsize=8, frameon=False)
        threads = results["machine"].get("threads")
        fig.suptitle(f"Filtered search, {ds['name']} (n={ds['n']:,}, d={ds['d']}, "
                     f"{ds['metric']}), {threads} threads (hnswlib 1)", fontsize=11)
        fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 4), 1, 0.96))
        fig.savefig(Path(path))
    finally:
        plt.close(fig)
    return True


def write_outputs(results: dict, out, plot: bool = True, log=None) -> None:
    """Write ``filter_results.json``, ``filter_tables.txt`` and (if ``plot``)
    ``filter_recall_qps.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if plot:
        png = out / "filter_recall_qps.png"
        try:
            if plot_filtered(results, png):
                results["outputs"]["plot"] = png.name
        except ImportError as exc:
            msg = f"no plot: {exc}"
            if msg not in results["notes"]:
                results["notes"].append(msg)
            if log is not None:
                log(msg)
    results["outputs"]["json"] = "filter_results.json"
    results["outputs"]["tables"] = "filter_tables.txt"
    text = render_tables(results)
    results["tables"] = text
    tmp = out / "filter_results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=_h._json_default) + "\n")
    tmp.replace(out / "filter_results.json")
    (out / "filter_tables.txt").write_text(text)


def print_tables(results: dict, stream=None) -> None:
    (stream or sys.stdout).write(results.get("tables") or render_tables(results))
