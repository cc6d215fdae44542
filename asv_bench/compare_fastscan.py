"""The 4-bit fast-scan kernel alone against FAISS's, in codes scanned per second.

    python asv_bench/compare_fastscan.py [--n 200000 --nq 16 --m 16 32 50 --repeats 7]

Codes/s = queries * vectors * M / s (one table lookup per code), FAISS's convention.
Ours: the batch driver (``fastscan._accumulate_batch_driver``), nq queries over n
random codes, every uint16 sum written. FAISS: ``IndexPQFastScan(2M, M, 4).search`` of
the same number of queries and vectors with k=10 (it also builds and quantizes the
tables and keeps a heap, but writes no sums). Both on one thread, in this process,
interleaved; each figure a median of repeats.
"""

from __future__ import annotations

import argparse

import numpy as np

from numba_ivf.bench.timing import median_time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--nq", type=int, default=16)
    ap.add_argument("--m", type=int, nargs="+", default=[16, 32, 50])
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    import faiss
    import numba

    from numba_ivf.kernels.fastscan import fastscan as fs
    numba.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    tok = fs.get_backend(None)
    print(f"n={a.n} nq={a.nq}, one thread, backend {fs.FASTSCAN_BACKEND}")
    for m in a.m:
        d = 2 * m
        xb = rng.standard_normal((a.n, d)).astype(np.float32)
        index = faiss.IndexPQFastScan(d, m, 4)
        index.train(xb[:20000])
        index.add(xb)
        xq = rng.standard_normal((a.nq, d)).astype(np.float32)
        packed = fs.pack_codes(rng.integers(0, 16, size=(a.n, m), dtype=np.uint8))
        luts, _, _ = fs.quantize_luts(rng.standard_normal((a.nq, m, 16)).astype(np.float32))
        out = np.empty((a.nq, packed.shape[0] * 32), np.uint16)
        index.search(xq[:2], 10)
        fs._accumulate_batch_driver(packed, luts, out, tok)
        t_o, t_f = [], []
        for _ in range(3):      # interleaved rounds, each a median of repeats
            t_o.append(median_time(lambda: fs._accumulate_batch_driver(packed, luts, out,
                                                                       tok), a.repeats))
            t_f.append(median_time(lambda: index.search(xq, 10), a.repeats))
        to, tf = float(np.median(t_o)), float(np.median(t_f))
        work = a.nq * a.n * m
        print(f"M={m:>3}: ours {work / to / 1e9:6.2f} G codes/s, faiss {work / tf / 1e9:6.2f} "
              f"G codes/s, ours/faiss {tf / to:.2f}", flush=True)


if __name__ == "__main__":
    main()
