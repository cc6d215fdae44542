"""PQ training and IVFPQ build time (train + add) against FAISS on one dataset.

Run as::

    python -m numba_ivf.bench.pq_train --dataset ~/ann-data/glove-50
    python -m numba_ivf.bench.pq_train --dataset ~/ann-data/fashion-mnist-784 \\
        --configs 196:4,56:8 --repeats 3

``--dataset`` is a folder with ``base.npy`` (n, d). ``nlist = round(4 sqrt(n))``; every
build trains on all n rows and adds them (metric "l2", by residual). Per ``m:nbits``:

1. PQ training alone, on the residuals of ``ksub * 256`` rows (what an IVFPQ trains
   its PQ on) to coarse centroids trained once: ``ProductQuantizer.train`` batched
   (``kernels.encode.pq_train``) and per sub-space (one ``KMeans`` each, the old path),
   ``faiss.ProductQuantizer.train`` (25 iterations; FAISS has no early stop).
2. IVFPQ build: ``numba_ivf.IVFPQ(d, nlist, m, nbits)`` train + add against
   ``faiss.IndexIVFPQ`` (8 bits) or ``faiss.IndexIVFPQFastScan`` (4 bits) with the same
   nlist, m, nbits, threads, iterations and training rows. Ours is split into coarse
   k-means, PQ training (the time inside ``ProductQuantizer.train``) and add.

Repeats are interleaved (ours, FAISS, ours, ...) in one process; the figures are
medians, the ratios ours / FAISS (< 1: ours faster). Kernels are compiled by a small
warm-up build first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

DEFAULT_CONFIGS = {"glove-50": "25:4,50:4,10:8",
                   "fashion-mnist-784": "196:4,56:8",
                   "gcide-minilm-384": "96:4,192:4,48:8"}


def _blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return "threadpoolctl not installed"
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} "
                     f"({Path(i['filepath']).name}, {i.get('num_threads')} threads"
                     f"{', ' + i['architecture'] if i.get('architecture') else ''})"
                     for i in threadpool_info())


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class _PQTimer:
    """Accumulates the time spent in ProductQuantizer.train (inside IVFPQ.train)."""

    def __init__(self):
        import numba_ivf.pq as pqmod
        self.cls = pqmod.ProductQuantizer
        self.orig = self.cls.train
        self.total = 0.0
        timer = self

        def train(pq, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return timer.orig(pq, *args, **kwargs)
            finally:
                timer.total += time.perf_counter() - t0

        self.cls.train = train

    def restore(self):
        self.cls.train = self.orig


def _faiss_ivfpq(faiss, d, nlist, m, nbits):
    q = faiss.IndexFlatL2(d)
    if nbits == 4:
        index = faiss.IndexIVFPQFastScan(q, d, nlist, m, 4)
    else:
        index = faiss.IndexIVFPQ(q, d, nlist, m, nbits)
    index.cp.niter = 25
    index.cp.seed = 1234
    return index, q


def run(dataset: Path, configs, repeats: int, threads: int, out=print):
    import faiss

    import numba_ivf
    from numba_ivf.kernels.encode.pq_encode import residuals
    from numba_ivf.kmeans import KMeans

    x = np.ascontiguousarray(np.load(dataset / "base.npy"), dtype=np.float32)
    n, d = x.shape
    nlist = int(round(4 * np.sqrt(n)))
    numba_ivf.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    out(f"== {dataset.name}: n={n} d={d} nlist={nlist} threads={threads} "
        f"repeats={repeats} (median; ratio = ours / faiss)")
    out(f"numba_ivf threading layer {numba_ivf.threading_layer()}, faiss "
        f"{faiss.__version__}; BLAS (threadpoolctl): {_blas_info()}")

    # Warm-up: compile (or load from cache) every kernel of both paths.
    w = x[:4096]
    for m, nb in configs:
        idx = numba_ivf.IVFPQ(d, 16, m, nbits=nb, n_iter=2)
        idx.train(w)
        idx.add(w)
        for method in ("batched", "per_subspace"):
            numba_ivf.ProductQuantizer(d, m, nb).train(w, n_iter=2, method=method)

    # Coarse centroids once, for the PQ-only residuals.
    km = KMeans(nlist, seed=1234).fit(x)
    labels = numba_ivf.assign_nearest(x, km.centroids)[0]
    rng = np.random.default_rng(0)

    for m, nbits in configs:
        ksub = 1 << nbits
        rows = np.sort(rng.choice(n, size=min(n, ksub * 256), replace=False))
        r = np.ascontiguousarray(residuals(x[rows], km.centroids, labels[rows]))
        t_b, t_p, t_f = [], [], []
        for _ in range(repeats):
            pq = numba_ivf.ProductQuantizer(d, m, nbits)
            t_b.append(_timed(lambda: pq.train(r, method="batched"))[0])
            cb = pq.codebooks
            fpq = faiss.ProductQuantizer(d, m, nbits)
            t_f.append(_timed(lambda: fpq.train(r))[0])
            pq2 = numba_ivf.ProductQuantizer(d, m, nbits)
            t_p.append(_timed(lambda: pq2.train(r, method="per_subspace"))[0])
            assert np.array_equal(cb, pq2.codebooks), "batched != per-sub-space"
        mb, mp, mf = (statistics.median(t) for t in (t_b, t_p, t_f))
        out(f"m={m:<4d} nbits={nbits} dsub={d // m:<3d} PQ train on {r.shape[0]} "
            f"residuals: batched {mb:7.3f} s | per-sub-space {mp:7.3f} s | faiss "
            f"{mf:7.3f} s | batched/faiss {mb / mf:5.2f}, per-sub-space/faiss "
            f"{mp / mf:5.2f}, per-sub-space/batched {mp / mb:5.1f}x")

        ours = {"coarse": [], "pq": [], "train": [], "add": [], "build": []}
        theirs = {"train": [], "add": [], "build": []}
        for _ in range(repeats):
            timer = _PQTimer()
            try:
                index = numba_ivf.IVFPQ(d, nlist, m, nbits=nbits)
                tt, _ = _timed(lambda: index.train(x))
            finally:
                timer.restore()
            ta, _ = _timed(lambda: index.add(x))
            ours["pq"].append(timer.total)
            ours["coarse"].append(tt - timer.total)
            ours["train"].append(tt)
            ours["add"].append(ta)
            ours["build"].append(tt + ta)
            del index
            findex, q = _faiss_ivfpq(faiss, d, nlist, m, nbits)
            ft, _ = _timed(lambda: findex.train(x))
            fa, _ = _timed(lambda: findex.add(x))
            theirs["train"].append(ft)
            theirs["add"].append(fa)
            theirs["build"].append(ft + fa)
            del findex, q
        o = {k: statistics.median(v) for k, v in ours.items()}
        f = {k: statistics.median(v) for k, v in theirs.items()}
        kind = "IndexIVFPQFastScan" if nbits == 4 else "IndexIVFPQ"
        out(f"m={m:<4d} nbits={nbits} IVFPQ build: ours {o['build']:7.2f} s (train "
            f"{o['train']:.2f} = coarse {o['coarse']:.2f} + PQ {o['pq']:.2f}; add "
            f"{o['add']:.2f}) | faiss {kind} {f['build']:7.2f} s (train "
            f"{f['train']:.2f}; add {f['add']:.2f}) | ratio build {o['build'] / f['build']:.2f}"
            f", train {o['train'] / f['train']:.2f}, add {o['add'] / f['add']:.2f}")


def _parse_configs(text):
    out = []
    for part in text.split(","):
        m, nbits = part.split(":")
        out.append((int(m), int(nbits)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, type=Path,
                    help="folder with base.npy, e.g. ~/ann-data/glove-50")
    ap.add_argument("--configs", default=None,
                    help="m:nbits,... (default: the issue's configurations by name)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    dataset = args.dataset.expanduser()
    configs = args.configs or DEFAULT_CONFIGS.get(dataset.name)
    if configs is None:
        ap.error(f"no default configurations for {dataset.name!r}; pass --configs")
    run(dataset, _parse_configs(configs), args.repeats, args.threads)


if __name__ == "__main__":
    main()
