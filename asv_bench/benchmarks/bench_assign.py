"""Assignment step: scalar oracle vs monolithic GEMM + argmax vs tiled kernel vs the int8
screen with exact re-score (``screened``: VNNI machines run vpdpbusd, others its plain-loop
kernel)."""

import numpy as np

from ._common import QUICK, clustered

SHAPES = ([(5000, 64, 128), (2000, 784, 256)] if QUICK else
          [(50000, 128, 512), (60000, 784, 256), (100000, 50, 1024)])


class TimeAssign:
    params = (["scalar", "monolithic", "tiled", "screened"], [str(s) for s in SHAPES],
              ["l2", "ip"])
    param_names = ["variant", "shape", "metric"]
    timeout = 600

    def setup(self, variant, shape, metric):
        import numba_ivf
        n, d, k = eval(shape)
        if variant == "scalar" and n * d * k > 2e9:
            raise NotImplementedError("the scalar oracle takes minutes at this size")
        self.x = clustered(n, d, seed=1)
        self.c = self.x[np.random.default_rng(2).choice(n, k, replace=False)].copy()
        self.flop = 2.0 * n * d * k
        # Compile (or load from cache) outside the timing.
        numba_ivf.assign_nearest(self.x[:64], self.c, metric, variant)
        self.fn = numba_ivf.assign_nearest

    def time_assign(self, variant, shape, metric):
        self.fn(self.x, self.c, metric, variant)

    def track_gflops(self, variant, shape, metric):
        import time
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            self.fn(self.x, self.c, metric, variant)
            best = min(best, time.perf_counter() - t0)
        return self.flop / best / 1e9

    track_gflops.unit = "GFLOP/s"


class TimeSgemmReference:
    """numpy's float32 GEMM of the same shape: the BLAS ceiling the tiled kernel is read against."""

    params = [str(s) for s in SHAPES]
    param_names = ["shape"]

    def setup(self, shape):
        n, d, k = eval(shape)
        self.x = clustered(n, d, seed=1)
        self.c = self.x[:k].copy()

    def time_sgemm(self, shape):
        self.x @ self.c.T


class TimeCoarseTopk:
    """The coarse step of an IVF search: the top-p centroids of each query (nprobe = p),
    by each worker: the float32 kernel's sorted insertion per candidate and its score
    block + cut (``assign.py``; its default takes the block from ASSIGN_TOPK_SCORES_MIN_P
    = 32), and the int8 screen (``screen.py``; the default where VNNI and d >= 128)."""

    params = ([str(s) for s in ([(2000, 50, 1024)] if QUICK else
                                [(2000, 50, 1024), (10000, 784, 1024)])],
              [2, 8, 32, 64], ["insertion", "block", "screened"])
    param_names = ["shape", "p", "worker"]
    timeout = 600

    def setup(self, shape, p, worker):
        from numba_ivf.kernels.assign.assign import prepare_centroids, topk_prepared
        n, d, k = eval(shape)
        self.q = clustered(n, d, seed=3)
        self.prepared = prepare_centroids(clustered(k, d, seed=4), True,
                                          screen=worker == "screened")
        self.block = None if worker == "screened" else worker == "block"
        self.fn = topk_prepared
        self.fn(self.q[:64], self.prepared, p, self.block)

    def time_coarse_topk(self, shape, p, worker):
        self.fn(self.q, self.prepared, p, self.block)
