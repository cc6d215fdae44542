"""Issue-sized comparison of the assignment variants and KMeans.fit against numpy and FAISS.

    python asv_bench/compare_kmeans.py [--n 50000 --d 128 --k 512 --repeats 5]

Everything runs in one process on the same data with the same thread count; each
figure is a median of repeats, and every speed-up is a ratio within this run. Compile
times are measured in fresh subprocesses (cold: empty cache directory; warm: the cache
the cold run left behind).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

from numba_ivf.bench.timing import median_time


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    rows = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')}, "
            f"{i.get('num_threads')} threads) {os.path.basename(i.get('filepath', ''))}"
            for i in threadpool_info()]
    return "; ".join(rows)


COMPILE_SNIPPET = """
import time
t0 = time.perf_counter()
import numpy as np, numba_ivf
x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
numba_ivf.KMeans(8, n_iter=2, max_points_per_centroid=None).fit(x)
numba_ivf.assign_nearest(x, x[:8], "ip")
print(time.perf_counter() - t0)
"""


def compile_times():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        run = lambda: float(subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env,
                                           capture_output=True, text=True,
                                           check=True).stdout.strip())
        cold = run()
        warm = float(np.median([run() for _ in range(3)]))
    return cold, warm


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--k", type=int, default=512)
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip the subprocess compile timing")
    a = p.parse_args(argv)

    import numba

    import numba_ivf
    from numba_ivf._config import ASSIGN_MR, ASSIGN_NR, ASSIGN_VW
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((a.k, a.d)).astype(np.float32) * 2
    x = centres[rng.integers(0, a.k, a.n)] + rng.standard_normal((a.n, a.d), dtype=np.float32)
    c = x[rng.choice(a.n, a.k, replace=False)].copy()
    flop = 2.0 * a.n * a.d * a.k
    print(f"n={a.n} d={a.d} k={a.k}; numba {numba.__version__}, {numba.get_num_threads()} "
          f"threads; "
          f"micro-kernel {ASSIGN_MR}x{ASSIGN_NR} floats in {ASSIGN_VW}-wide vectors")
    print(f"BLAS: {blas_info()}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")

    for v in ("scalar", "monolithic", "tiled"):
        numba_ivf.assign_nearest(x[:256], c, "l2", v)
    t_gemm = median_time(lambda: x @ c.T, a.repeats)
    res = {}
    for v in ("monolithic", "tiled"):
        res[v] = median_time(lambda: numba_ivf.assign_nearest(x, c, "l2", v), a.repeats)
    n_sc = min(a.n, 5000)  # the oracle is slow: time a slice and scale linearly
    res["scalar"] = median_time(lambda: numba_ivf.assign_nearest(x[:n_sc], c, "l2", "scalar"),
                                1) * a.n / n_sc
    print(f"\nassignment (median of {a.repeats}):")
    print(f"  numpy sgemm alone    {t_gemm * 1e3:8.1f} ms  {flop / t_gemm / 1e9:7.1f} GFLOP/s")
    for v in ("scalar", "monolithic", "tiled"):
        print(f"  {v:<20s} {res[v] * 1e3:8.1f} ms  {flop / res[v] / 1e9:7.1f} GFLOP/s")
    print(f"  tiled vs monolithic: {res['monolithic'] / res['tiled']:.2f}x faster; "
          f"vs scalar: {res['scalar'] / res['tiled']:.0f}x faster")

    km = lambda v: numba_ivf.KMeans(a.k, n_iter=a.iters, variant=v,
                                    max_points_per_centroid=None).fit(x, init_centroids=c)
    t_mono = median_time(lambda: km("monolithic"), max(3, a.repeats // 2))
    fit = km("tiled")
    print(f"\nKMeans.fit, up to {a.iters} iterations, same initial centroids "
          f"(both stop at a fixed point):")
    print(f"  numba_ivf monolithic {t_mono:.3f} s")
    try:
        import faiss
        faiss.omp_set_num_threads(numba.get_num_threads())

        def fk():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                k = faiss.Kmeans(a.d, a.k, niter=a.iters, max_points_per_centroid=10**9)
                k.train(x, init_centroids=c)
            return k
        f = fk()
        # Interleaved repeat by repeat, so both see the same load from other processes.
        t_ours, t_f = [], []
        for _ in range(max(5, a.repeats)):
            t_ours.append(median_time(lambda: km("tiled"), 1))
            t_f.append(median_time(fk, 1))
        ours, theirs = float(np.median(t_ours)), float(np.median(t_f))
        print(f"  numba_ivf tiled      {ours:.3f} s   objective {fit.objective[-1]:.6g}, "
              f"{fit.n_iter_} iterations")
        print(f"  faiss.Kmeans         {theirs:.3f} s   objective {f.obj[-1]:.6g}, "
              f"{len(f.obj)} iterations")
        print(f"  numba_ivf / faiss time ratio: {ours / theirs:.2f} (median of "
              f"{len(t_ours)} interleaved repeats; per-repeat ratios "
              f"{', '.join(f'{o / t:.2f}' for o, t in zip(t_ours, t_f))})")
    except ImportError:
        print(f"  numba_ivf tiled      {median_time(lambda: km('tiled'), 3):.3f} s")
        print("  faiss-cpu not installed: no FAISS baseline")

    if not a.no_compile:
        cold, warm = compile_times()
        print(f"\nfirst KMeans.fit + assign in a fresh process: cold cache {cold:.2f} s "
              f"(compiles the k-means path), warm cache {warm:.2f} s")


if __name__ == "__main__":
    main()
