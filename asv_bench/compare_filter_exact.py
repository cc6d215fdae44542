"""Where a filtered search should switch to exact search over the allowed rows.

    python asv_bench/compare_filter_exact.py [--data ~/ann-data] [--dataset glove-50]

For allowed sets of r * nlist random rows (r = 0.25 ... 16), times the two plans of a
filtered IVFFlat search in the same process, alternating, median of 5: "exact" (every
list with an allowed row, no coarse step; recall 1) and "ivf" (coarse step, nprobe 8
and min_candidates 10 k). Prints ivf / exact time and the ivf plan's recall@10
against exact, for a batch of all queries and for 200 queries one per call. The switch
``_config.FILTER_EXACT_ROWS_PER_LIST`` is the largest r where exact is not slower.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import numba_ivf
from numba_ivf.ivf import base as ivf_base
from numba_ivf.ivf import flat as ivf_flat


def _median_time(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path.home() / "ann-data"))
    ap.add_argument("--dataset", default="glove-50")
    ap.add_argument("--nlist", type=int, default=1024)
    args = ap.parse_args()
    root = Path(args.data) / args.dataset
    meta = json.loads((root / "meta.json").read_text())
    metric = "cosine" if meta["primary_metric"] == "angular" else "l2"
    x = np.load(root / "base.npy")
    q = np.load(root / "queries.npy")
    n, d = x.shape
    index = numba_ivf.IVFFlat(d, args.nlist, metric)
    index.train(x)
    index.add(x)
    print(f"{args.dataset}: n={n} d={d} nlist={args.nlist} metric={metric} "
          f"threads={numba_ivf.get_num_threads()} layer={numba_ivf.threading_layer()}")
    print(f"{'rows/nlist':>10} {'allowed':>8} {'batch ivf/exact':>16} {'one ivf/exact':>14} "
          f"{'ivf recall':>10}")
    rng = np.random.default_rng(0)
    for r in (0.25, 0.5, 1, 2, 4, 8, 16):
        allowed = rng.choice(n, size=int(r * args.nlist), replace=False)
        mask = np.zeros(n, dtype=bool)
        mask[allowed] = True
        out = {}
        for plan, per_list in (("exact", float("inf")), ("ivf", 0.0)):
            ivf_base.FILTER_EXACT_ROWS_PER_LIST = per_list   # batch path
            ivf_flat.FILTER_EXACT_ROWS_PER_LIST = per_list   # fused one-query path
            _, I = index.search(q, 10, nprobe=8, filter=mask)
            one = q[:200]
            out[plan] = (
                _median_time(lambda: index.search(q, 10, nprobe=8, filter=mask)),
                _median_time(lambda: [index.search(one[i], 10, nprobe=8, filter=mask)
                                      for i in range(one.shape[0])], repeats=3),
                I)
        ex, iv = out["exact"], out["ivf"]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(iv[2], ex[2])])
        print(f"{r:>10} {mask.sum():>8} {iv[0] / ex[0]:>16.2f} {iv[1] / ex[1]:>14.2f} "
              f"{recall:>10.3f}")


if __name__ == "__main__":
    main()
