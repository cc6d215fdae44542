"""numba_ivf.IVFPQ vs FAISS (IndexIVFPQ; IndexRefineFlat(IndexIVFPQFastScan)), side by side.

    PYTHONPATH=/work/main python asv_bench/compare_ivfpq.py [--data /root/ann-data]
        [--datasets glove-50 fashion-mnist-784] [--single 200] [--repeats 3]
        [--k-factor 8] [--parts 8bit 4bit mem]

Per dataset: our index trains its coarse k-means and PQ; FAISS's quantizer is filled with
our centroids (so both probe the same lists) and FAISS trains its own PQ on the same
data with the same m and nbits. For each nprobe: recall@10, batch QPS (all queries in
one call) and single-query QPS (one call per query, first ``--single`` queries).
Both libraries use all Numba threads (faiss.omp_set_num_threads); every figure is a
median of repeats in this process. "angular" datasets use metric "cosine" (FAISS:
normalised vectors + inner product). Also prints the 4-bit index memory without refine
against the bound n*(m/2 + 8) + centroids + codebooks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PARAMS = {  # dataset -> (m for 8-bit, m for 4-bit)
    "glove-50": (25, 50),
    "fashion-mnist-784": (56, 112),
}


def _median_times(fns, repeats):
    """Median wall time of each function, the functions run in turn in every repeat
    (on a shared machine the load drifts; alternating keeps it out of the ratios)."""
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for f, t in zip(fns, ts):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in ts]


def _recall(I, gt, k=10):
    return sum(len(np.intersect1d(a[:k], b[:k])) for a, b in zip(I, gt)) / (k * len(I))


def _sweep(label, ours_fn, ref_fn, q, gt, nprobes, n_single, repeats):
    print(f"-- {label}")
    print(f"{'nprobe':>6} | {'R@10 ours':>9} {'R@10 faiss':>10} | {'batch QPS ours':>14} "
          f"{'faiss':>9} {'ratio':>6} | {'single QPS ours':>15} {'faiss':>9} {'ratio':>6}")
    qs = q[:n_single]
    for nprobe in nprobes:
        r_o = _recall(ours_fn(q, nprobe)[1], gt)
        r_f = _recall(ref_fn(q, nprobe)[1], gt)
        tb_o, tb_f = _median_times([lambda: ours_fn(q, nprobe),
                                    lambda: ref_fn(q, nprobe)], repeats)
        ts_o, ts_f = _median_times(
            [lambda: [ours_fn(qs[i:i + 1], nprobe) for i in range(len(qs))],
             lambda: [ref_fn(qs[i:i + 1], nprobe) for i in range(len(qs))]], repeats)
        qb_o, qb_f = len(q) / tb_o, len(q) / tb_f
        qs_o, qs_f = len(qs) / ts_o, len(qs) / ts_f
        print(f"{nprobe:>6} | {r_o:>9.4f} {r_f:>10.4f} | {qb_o:>14.0f} {qb_f:>9.0f} "
              f"{qb_o / qb_f:>6.2f} | {qs_o:>15.0f} {qs_f:>9.0f} {qs_o / qs_f:>6.2f}",
              flush=True)


def run(root: Path, name: str, n_single: int, repeats: int, k_factor: int, nprobes,
        parts=("8bit", "4bit", "mem")):
    import faiss
    import numba
    import numba_ivf
    from numba_ivf.kernels.fastscan import fastscan

    meta = json.loads((root / name / "meta.json").read_text())
    metric_name = meta["primary_metric"]
    x = np.load(root / name / "base.npy")
    q = np.load(root / name / "queries.npy")
    gt = np.load(root / name / f"neighbors_{metric_name}.npy")[:, :10]
    metric = "cosine" if metric_name == "angular" else "l2"
    n, d = x.shape
    nlist = 1024
    m8, m4 = PARAMS[name]
    threads = numba.get_num_threads()
    faiss.omp_set_num_threads(threads)
    print(f"\n== {name}: n={n} d={d} nq={len(q)} metric={metric} nlist={nlist} "
          f"m(8-bit)={m8} m(4-bit)={m4} k_factor={k_factor} threads={threads} "
          f"fastscan backend={fastscan.FASTSCAN_BACKEND}", flush=True)
    xf, qf = x, q
    if metric == "cosine":
        xf = x / np.linalg.norm(x, axis=1, keepdims=True)
        qf = q / np.linalg.norm(q, axis=1, keepdims=True)
    fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT

    def quantizer(centroids):
        qz = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        qz.add(np.asarray(centroids))
        return qz

    # warm-up compile on a small index so JIT time is not counted
    for nb, rf in ((8, False), (4, True)):
        w = numba_ivf.IVFPQ(d, 8, m4 if nb == 4 else m8, nb, metric, refine=rf, n_iter=2)
        w.train(x[:3000])
        w.add(x[:3000])
        kw = {"k_factor": k_factor} if rf else {}
        w.search(q[:8], 10, nprobe=2, **kw)
        w.search(q[:1], 10, nprobe=2, **kw)

    # -- 8-bit ---------------------------------------------------------------------------
    if "8bit" in parts:
        _eight(x, xf, q, qf, gt, d, nlist, m8, metric, fmetric, quantizer, nprobes, n_single,
               repeats)
    if "4bit" in parts or "mem" in parts:
        _four(x, xf, q, qf, gt, d, nlist, m4, metric, fmetric, quantizer, nprobes, n_single,
              repeats, k_factor, parts)


def _eight(x, xf, q, qf, gt, d, nlist, m8, metric, fmetric, quantizer, nprobes, n_single,
           repeats):
    import faiss
    import numba_ivf
    t0 = time.perf_counter()
    o8 = numba_ivf.IVFPQ(d, nlist, m8, 8, metric)
    o8.train(x)
    t_tr = time.perf_counter() - t0
    t0 = time.perf_counter()
    o8.add(x)
    t_add = time.perf_counter() - t0
    f8 = faiss.IndexIVFPQ(quantizer(o8.centroids), d, nlist, m8, 8, fmetric)
    t0 = time.perf_counter()
    f8.train(xf)
    ft_tr = time.perf_counter() - t0
    t0 = time.perf_counter()
    f8.add(xf)
    ft_add = time.perf_counter() - t0
    print(f"8-bit train+add: ours {t_tr:.1f}+{t_add:.1f} s, faiss (PQ only) "
          f"{ft_tr:.1f}+{ft_add:.1f} s; faiss use_precomputed_table="
          f"{f8.use_precomputed_table}")

    def ref8(qq, nprobe):
        f8.nprobe = nprobe
        return f8.search(qf if qq is q else (qq / np.linalg.norm(qq, axis=1, keepdims=True)
                                             if metric == "cosine" else qq), 10)

    _sweep("8-bit ADC: numba_ivf.IVFPQ vs faiss.IndexIVFPQ",
           lambda qq, p: o8.search(qq, 10, nprobe=p), ref8, q, gt, nprobes, n_single,
           repeats)


def _four(x, xf, q, qf, gt, d, nlist, m4, metric, fmetric, quantizer, nprobes, n_single,
          repeats, k_factor, parts):
    import faiss
    import numba_ivf
    n = x.shape[0]
    # -- 4-bit + refine -------------------------------------------------------------------
    o4 = numba_ivf.IVFPQ(d, nlist, m4, 4, metric, refine=True)
    o4.train(x)
    if "4bit" not in parts:
        _memory(o4, x, n, d, nlist, m4, metric)
        return
    o4.add(x)
    f4base = faiss.IndexIVFPQFastScan(quantizer(o4.centroids), d, nlist, m4, 4, fmetric)
    f4 = faiss.IndexRefineFlat(f4base)
    f4.k_factor = k_factor
    f4.train(xf)
    f4.add(xf)

    def ref4(qq, nprobe):
        f4base.nprobe = nprobe
        qq = qf if qq is q else (qq / np.linalg.norm(qq, axis=1, keepdims=True)
                                 if metric == "cosine" else qq)
        return f4.search(qq, 10)

    _sweep(f"4-bit fast-scan + refine (k_factor={k_factor}): numba_ivf.IVFPQ(nbits=4, "
           f"refine=True) vs faiss.IndexRefineFlat(IndexIVFPQFastScan)",
           lambda qq, p: o4.search(qq, 10, nprobe=p, k_factor=k_factor), ref4, q, gt,
           nprobes, n_single, repeats)

    if "mem" in parts:
        _memory(o4, x, n, d, nlist, m4, metric)


def _memory(o4, x, n, d, nlist, m4, metric):
    """4-bit index memory without refine against n*(m/2+8). Our lists share boundary
    blocks (no padding); FAISS's fast-scan lists round every list's codes up to whole
    32-vector blocks (BlockInvertedLists), which is printed for comparison."""
    import numba_ivf
    o4n = numba_ivf.IVFPQ(d, nlist, m4, 4, metric)
    o4n._set_centroids(np.array(o4.centroids))
    o4n._pq = o4.pq
    o4n.add(x)
    mem = o4n.memory_bytes
    lists = mem["ids"] + mem["codes"] + mem["id_map"]
    fixed = mem["centroids"] + mem["codebooks"]
    bound = n * (m4 / 2 + 8)
    print(f"4-bit memory without refine: ids {mem['ids']} + codes {mem['codes']} + id map "
          f"{mem['id_map']} = {lists} B (+ centroids/codebooks {fixed} B, term table "
          f"{mem['term_table']} B); bound n*(m/2+8) = {bound:.0f} B; ratio "
          f"{lists / bound:.3f} (limit 1.10)")
    sizes = o4n.list_sizes
    blocks = -(-sizes // 32)
    code_min = int((blocks * 32).sum()) * (m4 // 2 + m4 % 2)
    pad = int((blocks * 32 - sizes).sum())
    print(f"  FAISS-style lists padded to 32-vector blocks would hold {pad} more rows "
          f"({pad / n:.3f} per vector, mean list {sizes.mean():.1f}): codes {code_min} B + "
          f"ids {8 * n} B = {(code_min + 8 * n) / bound:.3f} x bound")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/root/ann-data"))
    ap.add_argument("--datasets", nargs="+", default=list(PARAMS))
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k-factor", type=int, default=8)
    ap.add_argument("--nprobes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--parts", nargs="+", choices=["8bit", "4bit", "mem"],
                    default=["8bit", "4bit", "mem"])
    a = ap.parse_args()
    for name in a.datasets:
        run(a.data, name, a.single, a.repeats, a.k_factor, a.nprobes, a.parts)


if __name__ == "__main__":
    main()
