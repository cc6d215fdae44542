"""Sharded (Dask) against single-process search, and the figures of docs/scaling.md.

    python -m numba_ivf.bench.sharded --dataset ~/ann-data/glove-50 --out docs/results/sharded_glove-50.txt

On a ``LocalCluster`` of ``--workers`` processes (one Dask thread each, Numba threads
= cores / workers) against the single index in this process (Numba threads = cores),
same data, same parameters:

1. batch search of ``--nq`` queries (the dataset's queries repeated) and one query per
   call: medians of repeats, their ratio, and a check that D and I are equal;
2. the Dask cost of one call (a no-op task round trip) and the array bytes moved per
   search call;
3. per-shard cost and imbalance at 1, 2, 4, 8 shards: every shard's scan of the
   queries routed to it, timed in this process on one thread (no Dask noise), and
   max / mean over shards;
4. the client's merge cost against nq, k and shard count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

__all__ = ["main"]


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _load(path):
    import json
    meta = json.load(open(os.path.join(path, "meta.json")))
    x = np.load(os.path.join(path, "base.npy"))
    q = np.load(os.path.join(path, "queries.npy"))
    metric = {"angular": "cosine", "euclidean": "l2"}[meta["primary_metric"]]
    return meta["name"], x, q, metric


def _kinds(d, nlist, metric):
    import numba_ivf
    m = d // 2 if d % 2 == 0 else d
    return {
        "IVFFlat": lambda: numba_ivf.IVFFlat(d, nlist, metric),
        "IVFPQ4+refine": lambda: numba_ivf.IVFPQ(d, nlist, m=m, nbits=4, metric=metric,
                                                 refine=True),
    }


def _blas():
    try:
        from threadpoolctl import threadpool_info
        return "; ".join(f"{i.get('internal_api')} {i.get('version')} "
                         f"{i.get('architecture')}" for i in threadpool_info()
                         if i.get("user_api") == "blas") or "none loaded"
    except ImportError:
        return "threadpoolctl not installed"


def shard_costs(single, q, k, kk, nprobe, n_shards):
    """Per-shard scan seconds (one thread, in process) of the queries routed to each of
    n_shards shards dealt by ``balance`` from the single index's list sizes."""
    import numba
    from ..dask import _worker as W
    from ..dask.sharded import balance
    qp, k, nprobe = single._check_search(q, k, nprobe)
    scores, probes = single._coarse(qp, nprobe)
    probes = np.ascontiguousarray(probes, np.int64)
    scores = np.ascontiguousarray(scores, np.float32)
    owner = balance(single.list_sizes, n_shards)
    rows_per_shard = np.bincount(owner, weights=single.list_sizes, minlength=n_shards)
    out = []
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for s in range(n_shards):
            mine = owner[probes] == s
            rows = np.flatnonzero(mine.any(axis=1))
            pr = np.ascontiguousarray(np.where(mine[rows], probes[rows], -1))
            shard = _restrict(single, owner == s)
            qs, sc = np.ascontiguousarray(qp[rows]), np.ascontiguousarray(scores[rows])
            # Batches re-rank in a second round, on the candidates the merge picked
            # (about k_factor * k / n_shards per shard and query): the scan is timed.
            defer = ("bench", s, "scan") if kk > k else None
            W.search_lists(shard, qs, k, kk, sc, pr, None, defer)          # warm
            t = _median_time(lambda: W.search_lists(shard, qs, k, kk, sc, pr, None,
                                                    defer), 3)
            out.append((s, int(rows_per_shard[s]), rows.size, int(mine.sum()), t))
    finally:
        numba.set_num_threads(old)
    return out


def _restrict(single, own):
    """A copy of ``single`` holding only the lists where ``own`` is True."""
    import copy
    shard = copy.deepcopy(single)
    L = shard._lists
    gone = ~own
    if gone.any():
        drop = []
        for lst in np.flatnonzero(gone & (L.sizes > 0)):
            drop.append(L.ids[L.starts[lst]:L.starts[lst] + L.sizes[lst]].copy())
        if drop:
            shard.remove(np.concatenate(drop))
    return shard


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m numba_ivf.bench.sharded",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nq", type=int, default=10000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--nlist", type=int, default=0, help="default 4 sqrt(n)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--one-query", type=int, default=200)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import numba
    import distributed
    from ..dask import ShardedIVF, _merge
    from ..dask import _worker as W
    name, x, q0, metric = _load(os.path.expanduser(a.dataset))
    n, d = x.shape
    nlist = a.nlist or int(4 * np.sqrt(n))
    q = np.ascontiguousarray(np.resize(q0, (a.nq, d)))
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count()
    say(f"# sharded vs single: {name} ({n} x {d}, {metric}), nlist={nlist}, "
        f"nprobe={a.nprobe}, k={a.k}, nq={a.nq}")
    say(f"# {a.workers} worker processes x 1 Dask thread (Numba {max(1, cores // a.workers)}"
        f" each) vs the single index in the client process (Numba "
        f"{numba.get_num_threads()} threads); {cores} cores; BLAS: {_blas()}")
    say(f"# load average at start: {os.getloadavg()}")
    cluster = distributed.LocalCluster(n_workers=a.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        t_noop = []
        for _ in range(200):
            t = time.perf_counter()
            client.submit(W.noop, pure=False).result()
            t_noop.append(time.perf_counter() - t)
        say(f"dask no-op task round trip: median {1e3 * statistics.median(t_noop):.2f} ms"
            f" (p90 {1e3 * np.percentile(t_noop, 90):.2f} ms)")
        say()
        say("| index | single batch s | sharded batch s | ratio | single 1q ms | "
            "sharded 1q ms | added ms | bytes sent / received per batch | equal |")
        say("|---|---|---|---|---|---|---|---|---|")
        kinds = _kinds(d, nlist, metric)
        singles = {}
        for kname, make in kinds.items():
            single = make()
            single.train(x)
            single.add(x)
            singles[kname] = single
            sh = ShardedIVF(make(), client)
            sh.train(x)
            sh.add(x)
            kw = {"k_factor": 4} if getattr(single, "refine", False) else {}
            D0, I0 = single.search(q, a.k, a.nprobe, **kw)
            D1, I1 = sh.search(q, a.k, a.nprobe, **kw)
            equal = bool(np.array_equal(D0, D1) and np.array_equal(I0, I1))
            tb0 = _median_time(lambda: single.search(q, a.k, a.nprobe, **kw), a.repeats)
            tb1 = _median_time(lambda: sh.search(q, a.k, a.nprobe, **kw), a.repeats)
            moved = dict(sh.last_call_bytes)
            nq1 = min(a.one_query, q0.shape[0])
            t1q0 = [], []
            for i in range(nq1):
                row = q0[i]
                t = time.perf_counter()
                single.search(row, a.k, a.nprobe, **kw)
                t1q0[0].append(time.perf_counter() - t)
                t = time.perf_counter()
                sh.search(row, a.k, a.nprobe, **kw)
                t1q0[1].append(time.perf_counter() - t)
            m0 = 1e3 * statistics.median(t1q0[0])
            m1 = 1e3 * statistics.median(t1q0[1])
            say(f"| {kname} | {tb0:.3f} | {tb1:.3f} | {tb1 / tb0:.2f}x | {m0:.3f} | "
                f"{m1:.2f} | {m1 - m0:.2f} | {moved['sent'] / 1e6:.1f} MB / "
                f"{moved['received'] / 1e6:.1f} MB to {moved['shards']} shards | "
                f"{'yes' if equal else 'NO'} |")
            sh.close()
        say()
        say("## one query per call against shards touched (IVFFlat, nprobe 64, "
            f"{a.workers} workers)")
        say("| shards | shards touched per query (mean) | median ms | single ms |")
        say("|---|---|---|---|")
        single = singles["IVFFlat"]
        for S in (1, 2, 4, 8):
            sh = ShardedIVF(kinds["IVFFlat"](), client, n_shards=S)
            sh.train(x)
            sh.add(x)
            touched, t_sh, t_si = [], [], []
            for i in range(min(a.one_query, q0.shape[0])):
                row = q0[i]
                t = time.perf_counter()
                sh.search(row, a.k, 64)
                t_sh.append(time.perf_counter() - t)
                touched.append(sh.last_call_bytes["shards"])
                t = time.perf_counter()
                single.search(row, a.k, 64)
                t_si.append(time.perf_counter() - t)
            say(f"| {S} | {statistics.mean(touched):.1f} | "
                f"{1e3 * statistics.median(t_sh):.2f} | "
                f"{1e3 * statistics.median(t_si):.3f} |")
            sh.close()
        say()
        say(f"## per-shard cost and imbalance (batch of {a.nq}, one thread per shard, "
            f"in process)")
        say("| index | shards | rows per shard (min-max) | queries per shard (max) | "
            "(query, list) pairs per shard (max) | shard scan seconds (max) | "
            "max / mean | sum of shards / 1 shard |")
        say("|---|---|---|---|---|---|---|---|")
        for kname, single in singles.items():
            kk = a.k * 4 if getattr(single, "refine", False) else a.k
            base = None
            for S in (1, 2, 4, 8):
                c = shard_costs(single, q, a.k, kk, a.nprobe, S)
                rows = [r[1] for r in c]
                times = [r[4] for r in c]
                base = base or sum(times)
                say(f"| {kname} | {S} | {min(rows)}-{max(rows)} | "
                    f"{max(r[2] for r in c)} | {max(r[3] for r in c)} | "
                    f"{max(times):.3f} | {max(times) / statistics.mean(times):.2f} | "
                    f"{sum(times) / base:.2f} |")
        say()
        say("## merge cost on the client (median of 5)")
        say("| nq | k | shards | ms |")
        say("|---|---|---|---|")
        rng = np.random.default_rng(0)
        for nq in (1, 100, 10000):
            for k in (10, 100):
                for S in (2, 8):
                    parts = []
                    for s in range(S):
                        keys = np.sort(rng.random((nq, k), dtype=np.float32), axis=1)
                        ids = rng.integers(0, 1 << 40, (nq, k))
                        parts.append((np.arange(nq), keys, ids, None))
                    t = _median_time(lambda: _merge.merge_topk(nq, parts, k), 5)
                    say(f"| {nq} | {k} | {S} | {1e3 * t:.3f} |")
    finally:
        client.close()
        cluster.close()
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
