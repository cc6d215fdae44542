"""One-query search from several Python threads: numba_ivf against FAISS, real data.

    python asv_bench/compare_concurrency.py [--data /root/ann-data]
        [--datasets glove-50 fashion-mnist-784] [--queries 400] [--repeats 5]

The serving pattern: a web server's worker threads each answer one query per call.
Every thread runs its searches with one kernel thread (``numba_ivf.threads(1)``;
FAISS: ``omp_set_num_threads(1)``), so throughput comes from the Python threads
running kernels at once (both libraries release the GIL). For IVFFlat (nlist 4 sqrt(n))
and IVFPQ 4-bit + refine (nlist 1024, k_factor 8; m 50 on glove, 112 on fashion),
FAISS's quantizer holds our centroids so both probe the same lists. Per nprobe:
recall@10, then one-query QPS with 1 and with N Python threads for each library, the
libraries alternating in every repeat; the scaling (N threads / 1 thread) and the
ratio ours / FAISS at N threads. Medians of repeats in one process.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

PQ_M = {"glove-50": 50, "fashion-mnist-784": 112}


def _recall(I, gt, k=10):
    return sum(len(np.intersect1d(a[:k], b[:k])) for a, b in zip(I, gt)) / (k * len(I))


def _qps_threads(fn, queries, n_threads, inner_threads):
    """Queries per second of ``fn(row)`` over ``queries`` split across n Python threads,
    each inside ``inner_threads()`` (a context manager setting one kernel thread)."""
    parts = np.array_split(np.arange(len(queries)), n_threads)
    barrier = threading.Barrier(n_threads + 1)

    def body(rows):
        with inner_threads():
            barrier.wait()
            for i in rows:
                fn(queries[i:i + 1])

    ts = [threading.Thread(target=body, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return len(queries) / (time.perf_counter() - t0)


def _compare(label, ours, theirs, q, gt, nprobes, n_queries, repeats, n_threads, set_ours,
             set_theirs, ours_ctx, theirs_ctx):
    print(f"-- {label}")
    print(f"{'nprobe':>6} | {'R@10 ours':>9} {'faiss':>6} | {'ours 1T':>8} {'ours NT':>8} "
          f"{'scale':>5} | {'faiss 1T':>8} {'faiss NT':>8} {'scale':>5} | "
          f"{'NT ours/faiss':>13} {'1T ours/faiss':>13}")
    qs = q[:n_queries]
    for nprobe in nprobes:
        set_ours(nprobe)
        set_theirs(nprobe)
        r_o = _recall(ours(q)[1], gt)
        r_f = _recall(theirs(q)[1], gt)
        res = {key: [] for key in ("o1", "oN", "f1", "fN")}
        _qps_threads(ours, qs[:50], n_threads, ours_ctx)        # warm
        for _ in range(repeats):
            res["o1"].append(_qps_threads(ours, qs, 1, ours_ctx))
            res["f1"].append(_qps_threads(theirs, qs, 1, theirs_ctx))
            res["oN"].append(_qps_threads(ours, qs, n_threads, ours_ctx))
            res["fN"].append(_qps_threads(theirs, qs, n_threads, theirs_ctx))
        m = {key: float(np.median(v)) for key, v in res.items()}
        print(f"{nprobe:>6} | {r_o:>9.4f} {r_f:>6.4f} | {m['o1']:>8.0f} {m['oN']:>8.0f} "
              f"{m['oN'] / m['o1']:>5.2f} | {m['f1']:>8.0f} {m['fN']:>8.0f} "
              f"{m['fN'] / m['f1']:>5.2f} | {m['oN'] / m['fN']:>13.2f} "
              f"{m['o1'] / m['f1']:>13.2f}", flush=True)


def run(root, name, n_queries, repeats, n_threads, nprobes, parts):
    import faiss
    import numba

    import numba_ivf

    meta = json.loads((root / name / "meta.json").read_text())
    metric_name = meta["primary_metric"]
    x = np.load(root / name / "base.npy")
    q = np.load(root / name / "queries.npy")
    gt = np.load(root / name / f"neighbors_{metric_name}.npy")[:, :10]
    metric = "cosine" if metric_name == "angular" else "l2"
    n, d = x.shape
    xf, qf = x, q
    if metric == "cosine":
        xf = x / np.linalg.norm(x, axis=1, keepdims=True)
        qf = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    print(f"\n== {name}: n={n} d={d} metric={metric} python threads={n_threads} "
          f"(each 1 kernel thread); numba layer={numba.config.THREADING_LAYER}",
          flush=True)

    def quantizer(centroids):
        qz = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        qz.add(np.asarray(centroids))
        return qz

    def ours_ctx():
        return numba_ivf.threads(1)

    class _FaissOne:
        def __enter__(self):
            faiss.omp_set_num_threads(1)

        def __exit__(self, *exc):
            return False

    # FAISS's OpenMP thread count is per calling thread (an OpenMP ICV).
    theirs_ctx = _FaissOne

    if "flat" in parts:
        nlist = int(round(4 * np.sqrt(n)))
        ours = numba_ivf.IVFFlat(d, nlist, metric)
        ours.train(x)
        ours.add(x)
        f = faiss.IndexIVFFlat(quantizer(ours.centroids), d, nlist, fmetric)
        f.is_trained = True
        f.add(xf)
        state = {}
        _compare(f"IVFFlat nlist={nlist}",
                 lambda qq: ours.search(qq, 10, nprobe=state["p"]),
                 lambda qq: f.search(_faiss_rows(qq, q, qf, metric), 10), q, gt, nprobes,
                 n_queries, repeats, n_threads, lambda p: state.__setitem__("p", p),
                 lambda p: setattr(f, "nprobe", p), ours_ctx, theirs_ctx)
    if "pq4" in parts:
        m = PQ_M.get(name, d // 4)
        o4 = numba_ivf.IVFPQ(d, 1024, m, 4, metric, refine=True)
        o4.train(x)
        o4.add(x)
        fb = faiss.IndexIVFPQFastScan(quantizer(o4.centroids), d, 1024, m, 4, fmetric)
        f4 = faiss.IndexRefineFlat(fb)
        f4.k_factor = 8
        f4.train(xf)
        f4.add(xf)
        state = {}
        _compare(f"IVFPQ 4-bit m={m} + refine k_factor=8, nlist=1024",
                 lambda qq: o4.search(qq, 10, nprobe=state["p"], k_factor=8),
                 lambda qq: f4.search(_faiss_rows(qq, q, qf, metric), 10), q, gt, nprobes,
                 n_queries, repeats, n_threads, lambda p: state.__setitem__("p", p),
                 lambda p: setattr(fb, "nprobe", p), ours_ctx, theirs_ctx)


def _faiss_rows(qq, q, qf, metric):
    if qq is q:
        return qf
    if metric == "cosine":
        return (qq / np.linalg.norm(qq, axis=1, keepdims=True)).astype(np.float32)
    return qq


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/root/ann-data"))
    ap.add_argument("--datasets", nargs="+", default=list(PQ_M))
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="Python threads")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--parts", nargs="+", choices=["flat", "pq4"], default=["flat", "pq4"])
    a = ap.parse_args()
    for name in a.datasets:
        run(a.data, name, a.queries, a.repeats, a.threads, a.nprobes, a.parts)


if __name__ == "__main__":
    main()
