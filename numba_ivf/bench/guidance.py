"""Parameter guidance: which numba_ivf index and parameters reach a recall@10 target
fastest on one dataset (batch of every query, and one query per call).

Run as::

    python -m numba_ivf.bench.guidance --dataset gcide-minilm-384
    python -m numba_ivf.bench.guidance --dataset fashion-mnist-784 --targets 0.9,0.95,0.99

Every family is built once with nlist = round(4 sqrt(n)) and the same k-means
(``n_iter``), then swept:

- ``IVFFlat``: nprobe;
- ``IVFPQ`` 4-bit fast-scan + refine, m = d/8, d/4 and d/2, not by residual (FAISS's
  fast-scan default; on gcide-minilm-384 residual codes lost recall): nprobe x k_factor;
- ``IVFRaBitQ`` without refine, bits 1, 2, 4, 5, 8: nprobe; and with refine at 1, 2
  and 4 bits: nprobe x k_factor.

For each target the fastest point that reaches it (batch QPS, median of repeats; one
query: a loop over ``--single-queries`` evenly spaced queries) is printed with its
parameters and bytes per vector (ids included; refine adds 4 d). Figures are ratios on
the same machine in one run; absolute QPS is for context. Threads: ``--threads``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .timing import median_time

_NPROBE = (4, 8, 16, 32, 64, 128, 256)
_KF = (2, 4, 10)


def _recall(I, gt):
    k = gt.shape[1]
    return float(np.mean([np.intersect1d(a[a >= 0], b).size / k for a, b in zip(I, gt)]))


def _families(d):
    ms = [m for m in (d // 8, d // 4, d // 2) if m >= 1 and d % m == 0 and m % 2 == 0]
    out = [("IVFFlat", {}, False)]
    out += [(f"IVFPQ m={m} 4-bit + refine", {"m": m}, True) for m in ms]
    out += [(f"IVFRaBitQ {b}-bit", {"bits": b}, False) for b in (1, 2, 4, 5, 8)]
    out += [(f"IVFRaBitQ {b}-bit + refine", {"bits": b, "refine": True}, True)
            for b in (1, 2, 4)]
    return out


def _build(numba_ivf, name, kw, d, nlist, metric, n_iter):
    if name.startswith("IVFFlat"):
        return numba_ivf.IVFFlat(d, nlist, metric, n_iter=n_iter)
    if name.startswith("IVFPQ"):
        return numba_ivf.IVFPQ(d, nlist, kw["m"], nbits=4, metric=metric, refine=True,
                               by_residual=False, n_iter=n_iter)
    return numba_ivf.IVFRaBitQ(d, nlist, bits=kw["bits"], metric=metric,
                               refine=kw.get("refine", False), n_iter=n_iter)


def _bytes_per_vector(index, d):
    if index.kind == "IVFFlat":
        return 4 * d + 8
    if index.kind == "IVFPQ":
        return index.m // 2 + 8 + 4 * d
    return index.code_bytes + (4 * d if index.refine else 0)


def run(dataset, targets, threads, repeats, single_queries, n_iter, out=print):
    import numba_ivf
    from ..datasets import load_dataset

    ds = load_dataset(dataset)
    x, q, gt = ds.base, ds.queries, ds.neighbors[:, :10]
    metric = ds.metric
    n, d = x.shape
    nlist = int(round(4 * np.sqrt(n)))
    numba_ivf.set_num_threads(threads)
    out(f"== {ds.name}: n={n} d={d} nq={len(q)} metric={metric} nlist={nlist} "
        f"threads={threads} n_iter={n_iter} ({numba_ivf.threading_layer()})")
    sel = np.linspace(0, len(q) - 1, min(single_queries, len(q))).astype(int)
    rows = []
    for name, kw, refine in _families(d):
        t0 = time.perf_counter()
        index = _build(numba_ivf, name, kw, d, nlist, metric, n_iter)
        index.train(x)
        index.add(x)
        build = time.perf_counter() - t0
        bpv = _bytes_per_vector(index, d)
        points = [(p, kf) for p in _NPROBE for kf in (_KF if refine else (None,))]
        for p, kf in points:
            kw_s = {"nprobe": p} if kf is None else {"nprobe": p, "k_factor": kf}
            t_first = time.perf_counter()
            _, I = index.search(q, 10, **kw_s)
            t_first = time.perf_counter() - t_first
            rec = _recall(I, gt)
            tb = median_time(lambda: index.search(q, 10, **kw_s), repeats, t_first)
            Is = np.array([index.search(q[i], 10, **kw_s)[1][0] for i in sel])
            ts = median_time(lambda: [index.search(q[i], 10, **kw_s) for i in sel],
                             repeats)
            rows.append((name, kw_s, rec, len(q) / tb, _recall(Is, gt[sel]),
                         len(sel) / ts, bpv, build))
            if rec >= max(targets) + 0.005 and kf in (None, _KF[-1]):
                break
        out(f"{name}: built in {build:.1f} s, {bpv} bytes/vector; best recall "
            f"{max(r[2] for r in rows if r[0] == name):.4f}")
    out("")
    out("| recall@10 >= | mode | fastest index | parameters | QPS | recall | bytes/vector |")
    out("|---|---|---|---|---|---|---|")
    for t in targets:
        for mode, ri, qi in (("batch", 2, 3), ("one query", 4, 5)):
            ok = [r for r in rows if r[ri] >= t]
            if not ok:
                out(f"| {t} | {mode} | (none reached it) | | | | |")
                continue
            best = max(ok, key=lambda r: r[qi])
            params = ", ".join(f"{k}={v}" for k, v in best[1].items())
            out(f"| {t} | {mode} | {best[0]} | {params} | {best[qi]:.0f} | "
                f"{best[ri]:.4f} | {best[6]} |")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="a folder or a name in ~/ann-data")
    ap.add_argument("--targets", default="0.9,0.95,0.99")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--single-queries", type=int, default=200)
    ap.add_argument("--n-iter", type=int, default=10,
                    help="coarse k-means iterations (FAISS's IVF default is 10)")
    a = ap.parse_args(argv)
    run(a.dataset, [float(t) for t in a.targets.split(",")], a.threads, a.repeats,
        a.single_queries, a.n_iter)


if __name__ == "__main__":
    main()
