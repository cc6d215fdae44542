"""The README's main job: k-means per assignment variant, then IVF indexes, on generated data.

Every figure printed is a median of repeats in this process, next to its baseline.
"""

from __future__ import annotations

import time

import numpy as np

from .bench.timing import median_time


def _recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t[:k])) for f, t in zip(found[:, :k], truth))
    return hits / (truth.shape[0] * k)


def run_demo(n: int = 50_000, d: int = 64, k: int = 256, seed: int = 0) -> int:
    import numba

    import numba_ivf
    from numba_ivf.datasets import ground_truth, make_synthetic

    print(f"numba_ivf {numba_ivf.__version__} demo: numba {numba.__version__}, "
          f"{numba_ivf.get_num_threads()} threads, threading layer "
          f"{numba_ivf.threading_layer()}")
    t0 = time.perf_counter()
    ds = make_synthetic(n=n, nq=1000, d=d, n_clusters=100, seed=seed)
    x, q = ds.base, ds.queries
    print(f"data: {n} x {d} float32 clustered Gaussian base, {len(q)} queries "
          f"({time.perf_counter() - t0:.2f} s)")

    # -- assignment step: the three variants, and the int8 screen -----------------------
    cents = x[np.random.default_rng(seed).choice(n, k, replace=False)]
    t0 = time.perf_counter()
    for v in ("scalar", "monolithic", "tiled", "screened"):
        numba_ivf.assign_nearest(x[:100], cents, "l2", v)
    print(f"\ncompile/load of the assignment kernels: {time.perf_counter() - t0:.2f} s")
    flop = 2.0 * n * d * k
    print(f"assignment of {n} points to k={k} centroids (median of repeats):")
    base_t = None
    ref_labels = numba_ivf.assign_nearest(x, cents, "l2", "scalar")[0]
    for v, reps in (("scalar", 1), ("monolithic", 5), ("tiled", 5), ("screened", 5)):
        t = median_time(lambda: numba_ivf.assign_nearest(x, cents, "l2", v), reps)
        base_t = base_t or t
        same = (numba_ivf.assign_nearest(x, cents, "l2", v)[0] == ref_labels).mean()
        print(f"  {v:<11s} {t * 1e3:9.1f} ms  {flop / t / 1e9:7.1f} GFLOP/s  "
              f"{base_t / t:7.1f}x scalar  labels equal to oracle: {same:.4%}")
    from numba_ivf.kernels.assign.screen import default_kernel, worth_screening
    print(f"  (screened: exact int8 screen + float64 re-score, {default_kernel()} kernel "
          f"here; the default inside indexes and KMeans where it pays: "
          f"{'yes' if worth_screening(k, d) else 'no'} at d={d}, k={k})")

    # -- k-means -----------------------------------------------------------------------
    print(f"\nKMeans(n_clusters={k}, n_iter=25) fit, all {n} points:")
    for v in ("monolithic", "tiled"):
        km = numba_ivf.KMeans(k, n_iter=1, variant=v, max_points_per_centroid=None).fit(x)
        t = median_time(lambda: numba_ivf.KMeans(
            k, n_iter=25, variant=v, max_points_per_centroid=None).fit(x), 3)
        km = numba_ivf.KMeans(k, n_iter=25, variant=v, max_points_per_centroid=None).fit(x)
        print(f"  {v:<11s} {t:7.3f} s   final objective {km.objective[-1] / n:.4f} per point")

    # -- IVF indexes ---------------------------------------------------------------------
    _, truth = ground_truth(x, q, 10, "l2")
    nlist = int(4 * np.sqrt(n))
    print(f"\nIVF indexes, nlist={nlist}, recall@10 against exact search:")
    for name, make in _index_builders(d, nlist):
        try:
            index = make()
        except ImportError as exc:  # an index family that is not in this build
            print(f"  {name}: not available ({exc})")
            continue
        t0 = time.perf_counter()
        index.train(x)
        index.add(x)
        build = time.perf_counter() - t0
        print(f"  {name}: train + add {build:.2f} s")
        for nprobe in (1, 4, 16, 64):
            index.search(q[:8], 10, nprobe=nprobe)
            t = median_time(lambda: index.search(q, 10, nprobe=nprobe), 3)
            _, ids = index.search(q, 10, nprobe=nprobe)
            print(f"     nprobe={nprobe:<3d} recall@10={_recall(ids, truth, 10):.3f}  "
                  f"{len(q) / t:10.0f} QPS (batch of {len(q)})")
        _filtered_demo(index, x, q)
    return 0


def _filtered_demo(index, x, q):
    """Filtered search at a few selectivities (IDFilter built once), recall against
    exact search over the allowed rows (ids are rows here)."""
    from numba_ivf import IDFilter
    from numba_ivf.datasets import ground_truth
    rng = np.random.default_rng(1)
    for frac in (0.1, 0.01):
        allowed = np.flatnonzero(rng.random(len(x)) < frac)
        f = IDFilter.from_ids(allowed)
        truth = allowed[ground_truth(x[allowed], q, 10, "l2")[1]]
        index.search(q[:8], 10, nprobe=16, filter=f)
        t = median_time(lambda: index.search(q, 10, nprobe=16, filter=f), 3)
        _, ids = index.search(q, 10, nprobe=16, filter=f)
        print(f"     filter {frac:>4.0%} allowed, nprobe>=16 recall@10="
              f"{_recall(ids, truth, 10):.3f}  {len(q) / t:10.0f} QPS (batch)")


def _index_builders(d, nlist):
    def flat():
        from numba_ivf import IVFFlat
        return IVFFlat(d, nlist, metric="l2")

    def pq8():
        from numba_ivf import IVFPQ
        return IVFPQ(d, nlist, m=d // 4, nbits=8, metric="l2")

    def pq4_refine():
        from numba_ivf import IVFPQ
        return IVFPQ(d, nlist, m=d // 2, nbits=4, metric="l2", refine=True)

    def rabitq4():
        from numba_ivf import IVFRaBitQ
        return IVFRaBitQ(d, nlist, bits=4, metric="l2")

    return [("IVFFlat", flat), (f"IVFPQ m={d // 4} 8-bit", pq8),
            (f"IVFPQ m={d // 2} 4-bit fast-scan + refine", pq4_refine),
            ("IVFRaBitQ 4-bit", rabitq4)]
