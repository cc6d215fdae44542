"""4-bit PQ fast-scan accumulate: codes scanned per second, SIMD backends vs portable.

Unit: codes/s = vectors * M / s (one uint8 table lookup per code), FAISS's convention.
``list`` scans one list for one query (threads over blocks); ``batch`` scans one list
of 100k vectors for nq=16 queries (threads over queries). Both write every uint16 sum.
FAISS's IndexPQFastScan search (one thread) is tracked beside them for reference; it
also builds the LUTs and keeps a top-10 heap, and writes no per-vector sums.
"""

import time

import numpy as np

from ._common import QUICK

N_LIST = 200_000 if QUICK else 1_000_000
N_BATCH = 100_000
NQ = 16
M_VALUES = [16, 32]


def _median_rate(fn, work, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return work / float(np.median(times)) / 1e9


class FastScan:
    params = (["avx512", "avx2", "neon", "portable"], M_VALUES, [1, 2])
    param_names = ["backend", "M", "threads"]
    timeout = 600

    def setup(self, backend, M, threads):
        import numba

        from numba_ivf.kernels.fastscan import fastscan as fs
        if backend not in fs.available_backends():
            raise NotImplementedError(f"{backend} not available on this CPU")
        if threads > numba.config.NUMBA_NUM_THREADS:
            raise NotImplementedError("not enough threads")
        rng = np.random.default_rng(M)
        codes = rng.integers(0, 16, size=(N_LIST, M), dtype=np.uint8)
        self.packed = fs.pack_codes(codes)
        self.small = np.ascontiguousarray(self.packed[:(N_BATCH + 31) // 32])
        lut = rng.standard_normal((NQ, M, 16)).astype(np.float32)
        self.luts, _, _ = fs.quantize_luts(lut)
        self.lut = self.luts[0]
        self.token = fs.get_backend(backend)
        self.out = np.empty(self.packed.shape[0] * 32, np.uint16)
        self.out_b = np.empty((NQ, self.small.shape[0] * 32), np.uint16)
        self.list_driver = fs._accumulate_list_driver
        self.batch_driver = fs._accumulate_batch_driver
        numba.set_num_threads(threads)
        # compile (or load from cache) and sanity-check outside the timing
        ref = fs.accumulate_list(self.small, self.lut, "portable")
        got = fs.accumulate_list(self.small, self.lut, self.token)
        assert (ref == got).all()
        self.batch_driver(self.small, self.luts, self.out_b, self.token)

    def teardown(self, backend, M, threads):
        import numba
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    def time_list(self, backend, M, threads):
        self.list_driver(self.packed, self.lut, self.out, self.token)

    def time_batch(self, backend, M, threads):
        self.batch_driver(self.small, self.luts, self.out_b, self.token)

    def track_list_gcodes(self, backend, M, threads):
        return _median_rate(lambda: self.list_driver(self.packed, self.lut, self.out,
                                                     self.token), N_LIST * M)

    track_list_gcodes.unit = "G codes/s"

    def track_batch_gcodes(self, backend, M, threads):
        work = NQ * self.small.shape[0] * 32 * M
        return _median_rate(lambda: self.batch_driver(self.small, self.luts, self.out_b,
                                                      self.token), work)

    track_batch_gcodes.unit = "G codes/s"


class FaissFastScan:
    """Reference: faiss.IndexPQFastScan(d=2M, M, 4) search, one thread, k=10."""

    params = M_VALUES
    param_names = ["M"]
    timeout = 600

    def setup(self, M):
        try:
            import faiss
        except ImportError:
            raise NotImplementedError("faiss not installed")
        rng = np.random.default_rng(M)
        d = 2 * M
        xb = rng.standard_normal((N_LIST, d)).astype(np.float32)
        self.index = faiss.IndexPQFastScan(d, M, 4)
        self.index.train(xb[:20000])
        self.index.add(xb)
        self.xq = rng.standard_normal((NQ, d)).astype(np.float32)
        self.faiss = faiss
        self.prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        self.index.search(self.xq[:2], 10)

    def teardown(self, M):
        self.faiss.omp_set_num_threads(self.prev)

    def track_search_gcodes(self, M):
        return _median_rate(lambda: self.index.search(self.xq, 10), NQ * N_LIST * M)

    track_search_gcodes.unit = "G codes/s"


class FastScanCompile:
    """First call of a backend's list driver in a fresh process (compile or cache load)."""

    params = ["avx512", "avx2", "neon", "portable"]
    param_names = ["backend"]
    timeout = 600

    def time_first_call(self, backend):
        import os
        import subprocess
        import sys
        code = ("import numpy as np\n"
                "from numba_ivf.kernels.fastscan import fastscan as fs\n"
                f"b = {backend!r}\n"
                "if b in fs.available_backends():\n"
                "    p = fs.pack_codes(np.zeros((64, 16), np.uint8))\n"
                "    fs.accumulate_list(p, np.zeros((16, 16), np.uint8), b)\n")
        subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
