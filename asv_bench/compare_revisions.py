"""Unfiltered search speed of two git revisions, alternating, on a real dataset.

    python asv_bench/compare_revisions.py OLD NEW [--data /root/ann-data]
        [--dataset glove-50] [--rounds 3] [--layer tbb]

Each revision is checked out into a temporary worktree and timed in its own
subprocesses (a fresh interpreter per round, the revisions alternating round by round so
that both see the same load), with the same threading layer (``--layer``: the old code
may not choose one itself). Per round and revision: IVFFlat (nlist 4 sqrt(n), nprobe 16)
and IVFPQ 4-bit + refine (nlist 1024, k_factor 8) batch QPS over all queries and
one-query QPS over 300 queries, each a median of 5. Prints the medians over rounds and
NEW / OLD. The indexes are built once per revision and saved, so rounds time search only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, sys, time
import numpy as np
import numba_ivf
root, name, folder, build = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
meta = json.load(open(f"{root}/{name}/meta.json"))
metric = "cosine" if meta["primary_metric"] == "angular" else "l2"
q = np.load(f"{root}/{name}/queries.npy")
if build:
    x = np.load(f"{root}/{name}/base.npy")
    n, d = x.shape
    flat = numba_ivf.IVFFlat(d, int(round(4 * np.sqrt(n))), metric)
    flat.train(x); flat.add(x); flat.save(f"{folder}/flat.nivf")
    m = {"glove-50": 50, "fashion-mnist-784": 112}.get(name, d // 4)
    pq = numba_ivf.IVFPQ(d, 1024, m, 4, metric, refine=True)
    pq.train(x); pq.add(x); pq.save(f"{folder}/pq4.nivf")
    sys.exit(0)
flat = numba_ivf.load(f"{folder}/flat.nivf")
pq = numba_ivf.load(f"{folder}/pq4.nivf")
calls = {"flat": lambda qq: flat.search(qq, 10, nprobe=16),
         "pq4r": lambda qq: pq.search(qq, 10, nprobe=16, k_factor=8)}
out = {}
for kind, fn in calls.items():
    fn(q[:50]); [fn(q[i]) for i in range(50)]          # compile / warm
    tb, ts = [], []
    for _ in range(5):
        t0 = time.perf_counter(); fn(q); tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(300):
            fn(q[i])
        ts.append(time.perf_counter() - t0)
    out[f"{kind} batch"] = len(q) / float(np.median(tb))
    out[f"{kind} one-query"] = 300 / float(np.median(ts))
out["module"] = numba_ivf.__file__
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--data", default="/root/ann-data")
    ap.add_argument("--dataset", default="glove-50")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layer", default="tbb")
    a = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="nivf-revs-"))
    trees = {}
    for rev in (a.old, a.new):
        tree = tmp / f"tree-{rev.replace('/', '_')}"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree),
                        rev], check=True, capture_output=True)
        trees[rev] = tree
    # Older revisions do not preload pip's TBB themselves: let Numba's loader find it.
    env_base = {**os.environ, "NUMBA_THREADING_LAYER": a.layer,
                "LD_LIBRARY_PATH": os.pathsep.join(
                    filter(None, [str(Path(sys.prefix, "lib")),
                                  os.environ.get("LD_LIBRARY_PATH")]))}
    try:
        for rev, tree in trees.items():
            env = {**env_base, "PYTHONPATH": str(tree)}
            subprocess.run([sys.executable, "-c", _CHILD, a.data, a.dataset, str(tree), "1"],
                           env=env, check=True, cwd=tree)
        results = {rev: [] for rev in trees}
        for r in range(a.rounds):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for rev in order:
                env = {**env_base, "PYTHONPATH": str(trees[rev])}
                p = subprocess.run([sys.executable, "-c", _CHILD, a.data, a.dataset,
                                    str(trees[rev]), "0"], env=env, check=True,
                                   capture_output=True, text=True, cwd=trees[rev])
                results[rev].append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"{a.dataset}, layer {a.layer}, {a.rounds} rounds (QPS, median over rounds)")
        print(f"{'':>16} {a.old[:10]:>10} {a.new[:10]:>10} {'new/old':>8}")
        for rev in trees:
            print(f"{rev}: {results[rev][0].pop('module')}")
            for res in results[rev][1:]:
                res.pop("module")
        for key in results[a.old][0]:
            o = float(np.median([res[key] for res in results[a.old]]))
            n = float(np.median([res[key] for res in results[a.new]]))
            print(f"{key:>16} {o:>10.0f} {n:>10.0f} {n / o:>8.2f}")
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force",
                            str(tree)], capture_output=True)


if __name__ == "__main__":
    main()
