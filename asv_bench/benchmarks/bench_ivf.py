"""IVF indexes: train, add, search (batch and one query at a time), recall, memory.

Data: NUMBA_IVF_ASV_DATASET names a folder in the layout of ../shared/datasets
(base.npy, queries.npy, neighbors_<metric>.npy); without it, a generated clustered set
(20k x 32 in the quick profile, 200k x 64 in the full one). Indexes are built once per
run in ``setup_cache`` and saved with ``index.save``; each benchmark loads its copy.
"""

import os
import time

import numpy as np

from ._common import QUICK

NPROBES = [1, 8, 32]
K = 10
N_SINGLE = 100  # queries timed one at a time


def _dataset():
    from numba_ivf.datasets import ground_truth, load_dataset, make_synthetic
    path = os.environ.get("NUMBA_IVF_ASV_DATASET")
    if path:
        ds = load_dataset(path)
    else:
        n, d = (20_000, 32) if QUICK else (200_000, 64)
        ds = make_synthetic(n=n, nq=500, d=d, n_clusters=200, seed=0)
    base = np.ascontiguousarray(ds.base, dtype=np.float32)
    queries = np.ascontiguousarray(ds.queries[:500], dtype=np.float32)
    truth = ds.neighbors
    if truth is None or truth.shape[1] < K:
        truth = ground_truth(base, queries, K, ds.metric)[1]
    return base, queries, np.asarray(truth[:len(queries), :K]), ds.metric


def _recall(ids, truth):
    hits = sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(ids, truth))
    return hits / truth.size


def _configs(d):
    m8 = next(m for m in (d // 4, d // 2, d) if m >= 1 and d % m == 0)
    m4 = next(m for m in (d // 2, d) if m >= 1 and d % m == 0)
    return {
        "flat": lambda nlist, metric: __import__("numba_ivf").IVFFlat(d, nlist, metric=metric),
        "pq8": lambda nlist, metric: __import__("numba_ivf").IVFPQ(
            d, nlist, m8, nbits=8, metric=metric),
        "pq4-refine": lambda nlist, metric: __import__("numba_ivf").IVFPQ(
            d, nlist, m4, nbits=4, metric=metric, refine=True),
    }


class IVFSearch:
    params = (["flat", "pq8", "pq4-refine"], NPROBES)
    param_names = ["index", "nprobe"]
    timeout = 900

    def setup_cache(self):
        base, queries, truth, metric = _dataset()
        nlist = int(4 * np.sqrt(len(base)))
        paths = {}
        for name, make in _configs(base.shape[1]).items():
            index = make(nlist, metric)
            index.train(base)
            index.add(base)
            paths[name] = os.path.abspath(f"ivf-{name}.nivf")
            index.save(paths[name])
        np.save("queries.npy", queries)
        np.save("truth.npy", truth)
        np.save("base.npy", base)
        paths["base"] = os.path.abspath("base.npy")
        return paths

    def setup(self, paths, index, nprobe):
        import numba_ivf
        self.index = numba_ivf.load(paths[index])
        self.q = np.load("queries.npy")
        self.truth = np.load("truth.npy")
        self.index.search(self.q[:4], K, nprobe=nprobe)  # compile / cache load

    def time_search_batch(self, paths, index, nprobe):
        self.index.search(self.q, K, nprobe=nprobe)

    def time_search_one_query(self, paths, index, nprobe):
        for i in range(N_SINGLE):
            self.index.search(self.q[i:i + 1], K, nprobe=nprobe)

    def track_recall_at_10(self, paths, index, nprobe):
        return _recall(self.index.search(self.q, K, nprobe=nprobe)[1], self.truth)

    track_recall_at_10.unit = "recall@10"

    def track_qps_batch(self, paths, index, nprobe):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.index.search(self.q, K, nprobe=nprobe)
            times.append(time.perf_counter() - t0)
        return len(self.q) / float(np.median(times))

    track_qps_batch.unit = "queries/s"


class IVFFilteredSearch:
    """Filtered search at random allow-lists of several selectivities (nprobe 8), with
    the filter's conversion to row bits timed on its own and recall against exact
    search over the allowed rows."""

    params = (["flat", "pq8", "pq4-refine"], [0.5, 0.1, 0.01, 0.001])
    param_names = ["index", "selectivity"]
    timeout = 900

    def setup_cache(self):
        return IVFSearch.setup_cache(self)

    def setup(self, paths, index, selectivity):
        import numba_ivf
        self.index = numba_ivf.load(paths[index])
        self.q = np.load("queries.npy")
        rng = np.random.default_rng(int(selectivity * 1e6))
        self.mask = rng.random(len(self.index)) < selectivity
        self.filter = numba_ivf.IDFilter.from_mask(self.mask)
        self.index.search(self.q[:4], K, nprobe=8, filter=self.filter)  # compile

    def time_search_batch(self, paths, index, selectivity):
        self.index.search(self.q, K, nprobe=8, filter=self.filter)

    def time_search_one_query(self, paths, index, selectivity):
        for i in range(N_SINGLE):
            self.index.search(self.q[i:i + 1], K, nprobe=8, filter=self.filter)

    def time_filter_conversion(self, paths, index, selectivity):
        from numba_ivf.filters import prepare
        prepare(self.filter, self.index._lists, len(self.q))

    def track_recall_at_10(self, paths, index, selectivity):
        from numba_ivf.datasets import ground_truth
        allowed = np.flatnonzero(self.mask)   # ids are rows: added as 0..n-1
        sub = np.load(paths["base"])[allowed]
        rows = ground_truth(sub, self.q, K, self.index.metric)[1]
        truth = np.where(rows >= 0, allowed[np.maximum(rows, 0)], -1)
        return _recall(self.index.search(self.q, K, nprobe=8, filter=self.filter)[1],
                       truth)

    track_recall_at_10.unit = "recall@10"


class IVFTrain:
    params = ["flat", "pq8", "pq4-refine"]
    param_names = ["index"]
    timeout = 900

    def setup(self, index):
        self.base, _, _, self.metric = _dataset()
        self.nlist = int(4 * np.sqrt(len(self.base)))
        self.make = _configs(self.base.shape[1])[index]
        warm = self.make(16, self.metric)  # compile outside the timing
        warm.train(self.base[:4096])
        warm.add(self.base[:100])

    def time_train(self, index):
        self.make(self.nlist, self.metric).train(self.base)

    def peakmem_train(self, index):
        self.make(self.nlist, self.metric).train(self.base)

    def track_index_bytes(self, index):
        fresh = self.make(self.nlist, self.metric)
        fresh.train(self.base)
        fresh.add(self.base)
        path = f"size-{index}.nivf"
        fresh.save(path)
        size = os.path.getsize(path)
        os.remove(path)
        return size

    track_index_bytes.unit = "bytes on disk"


class IVFAdd:
    """add() of the whole base into a freshly trained index (setup runs before each sample)."""

    params = ["flat", "pq8", "pq4-refine"]
    param_names = ["index"]
    number = 1
    repeat = 3
    timeout = 900

    def setup(self, index):
        self.base, _, _, metric = _dataset()
        make = _configs(self.base.shape[1])[index]
        self.index = make(int(4 * np.sqrt(len(self.base))), metric)
        self.index.train(self.base)
        self.rest = self.base
        self.next_id = 0

    def time_add(self, index):
        # Fresh ids each call, in case the runner times several calls per setup.
        ids = np.arange(self.next_id, self.next_id + len(self.rest), dtype=np.int64)
        self.next_id += len(self.rest)
        self.index.add(self.rest, ids=ids)


class PQEncode:
    params = [8, 4]
    param_names = ["nbits"]

    def setup(self, nbits):
        import numba_ivf
        self.base, _, _, _ = _dataset()
        d = self.base.shape[1]
        m = next(m for m in (d // 4, d // 2, d) if m >= 1 and d % m == 0)
        self.pq = numba_ivf.ProductQuantizer(d, m, nbits=nbits)
        self.pq.train(self.base[:20_000], n_iter=10)
        self.pq.encode(self.base[:100])

    def time_encode(self, nbits):
        self.pq.encode(self.base)
