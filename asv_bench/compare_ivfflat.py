"""numba_ivf.IVFFlat vs faiss.IndexIVFFlat, side by side, on the real datasets.

    PYTHONPATH=/work/main python asv_bench/compare_ivfflat.py [--data /root/ann-data]
        [--datasets glove-50 fashion-mnist-784] [--single 300] [--repeats 3]

Per dataset: train and add time of each library (each trains its own k-means with the
same parameters), then search with the *same* centroids (FAISS's quantizer is filled
with ours) so that recall is comparable and the ratio measures the scan alone.
For each nprobe: recall@10 and batch QPS (all queries in one call, all threads), then
one-query QPS (one call per query, a 1-D float32 row) with both libraries at 1 thread
and at all threads, the two libraries interleaved repeat by repeat. Every figure is a
median of repeats measured in this process. "angular" datasets use metric "cosine" (FAISS:
normalised vectors + inner product).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def run(root: Path, name: str, n_single: int, repeats: int, nprobes):
    import faiss
    import numba

    import numba_ivf
    from numba_ivf.bench.harness import recall_at_k
    from numba_ivf.bench.timing import median_time as _median_time

    def _recall(I, gt):
        return recall_at_k(I, gt, 10)

    meta = json.loads((root / name / "meta.json").read_text())
    metric_name = meta["primary_metric"]
    x = np.load(root / name / "base.npy")
    q = np.load(root / name / "queries.npy")
    gt = np.load(root / name / f"neighbors_{metric_name}.npy")[:, :10]
    metric = "cosine" if metric_name == "angular" else "l2"
    n, d = x.shape
    nlist = int(round(4 * np.sqrt(n)))
    threads = numba.get_num_threads()
    faiss.omp_set_num_threads(threads)
    print(f"\n== {name}: n={n} d={d} nq={len(q)} metric={metric} nlist={nlist} "
          f"threads={threads}")

    xf, qf = x, q
    if metric == "cosine":
        xf = x / np.linalg.norm(x, axis=1, keepdims=True)
        qf = q / np.linalg.norm(q, axis=1, keepdims=True)
    fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT

    def make_quant():
        return faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)

    # Warm-up compile on a small index so JIT time is not counted.
    warm = numba_ivf.IVFFlat(d, 8, metric, n_iter=2)
    warm.train(x[:2000])
    warm.add(x[:2000])
    for path in ("batch", "list_major", "single"):
        warm.search(q[:8], 10, nprobe=2, path=path)

    # -- train + add, each library with its own k-means (25 iterations, 256 pts/centroid)
    t0 = time.perf_counter()
    ours = numba_ivf.IVFFlat(d, nlist, metric, n_iter=25, max_points_per_centroid=256)
    ours.train(x)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours.add(x)
    t_add = time.perf_counter() - t0

    theirs_own = faiss.IndexIVFFlat(make_quant(), d, nlist, fmetric)
    theirs_own.cp.niter = 25
    theirs_own.cp.max_points_per_centroid = 256
    theirs_own.cp.spherical = metric != "l2"
    t0 = time.perf_counter()
    theirs_own.train(xf)
    f_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs_own.add(xf)
    f_add = time.perf_counter() - t0
    print(f"train: ours {t_train:.2f} s, faiss {f_train:.2f} s (ratio faiss/ours "
          f"{f_train / t_train:.2f}); add: ours {t_add:.3f} s, faiss {f_add:.3f} s "
          f"(ratio {f_add / t_add:.2f}); train+add ratio "
          f"{(f_train + f_add) / (t_train + t_add):.2f}")

    # -- search with identical centroids
    quant = make_quant()
    quant.add(np.array(ours.centroids))
    theirs = faiss.IndexIVFFlat(quant, d, nlist, fmetric)
    theirs.is_trained = True
    theirs.add(xf)
    qs = q[:n_single]
    qfs = qf[:n_single]
    print(f"{'nprobe':>6} | {'recall ours':>11} {'faiss':>6} | {'batch QPS ours':>14} "
          f"{'faiss':>8} {'ratio':>6} | path")
    singles = []
    for nprobe in nprobes:
        theirs.nprobe = nprobe
        _, I = ours.search(q, 10, nprobe=nprobe)
        _, If = theirs.search(qf, 10)
        r, rf = _recall(I, gt), _recall(If, gt)
        tb = _median_time(lambda: ours.search(q, 10, nprobe=nprobe), repeats)
        tbf = _median_time(lambda: theirs.search(qf, 10), repeats)
        path = ours._choose_path(len(q), min(nprobe, nlist))
        print(f"{nprobe:>6} | {r:>11.4f} {rf:>6.4f} | {len(q) / tb:>14.0f} "
              f"{len(q) / tbf:>8.0f} {tbf / tb:>6.2f} | {path}", flush=True)
        singles.append((nprobe, r))

    # -- one query per call, each library at 1 and at all threads, interleaved so
    # that both see the same load from other processes.
    def one_ours(nprobe):
        for i in range(len(qs)):
            ours.search(qs[i], 10, nprobe=nprobe)

    def one_theirs():
        for i in range(len(qfs)):
            theirs.search(qfs[i:i + 1], 10)

    print(f"one query per call ({len(qs)} queries; QPS, median of {repeats}):")
    print(f"{'nprobe':>6} {'threads':>7} | {'ours':>8} {'faiss':>8} {'ours/faiss':>10}")
    for nprobe, _ in singles:
        theirs.nprobe = nprobe
        for t in sorted({1, threads}):
            faiss.omp_set_num_threads(t)
            with numba_ivf.threads(t):
                one_ours(nprobe)  # warm
                ts_, tsf_ = [], []
                for _ in range(repeats):
                    ts_.append(_median_time(lambda: one_ours(nprobe), 1))
                    tsf_.append(_median_time(one_theirs, 1))
                ts, tsf = float(np.median(ts_)), float(np.median(tsf_))
            print(f"{nprobe:>6} {t:>7} | {len(qs) / ts:>8.0f} {len(qs) / tsf:>8.0f} "
                  f"{tsf / ts:>10.2f}", flush=True)
        faiss.omp_set_num_threads(threads)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/root/ann-data")
    ap.add_argument("--datasets", nargs="+", default=["glove-50", "fashion-mnist-784"])
    ap.add_argument("--single", type=int, default=300,
                    help="queries timed one at a time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 64])
    args = ap.parse_args()
    for name in args.datasets:
        run(Path(args.data), name, args.single, args.repeats, args.nprobe)


if __name__ == "__main__":
    main()
