"""Numba's threading layers (tbb, omp, workqueue) compared on numba_ivf's workloads.

    python asv_bench/compare_threading.py [--quick] [--rounds R] [--configs tbb omp ...]
        [--busy N] [--json out]

The layer is fixed per process (Numba picks it when its pool starts), so every
configuration runs in fresh subprocesses of this script (``--worker``), with
``NUMBA_THREADING_LAYER`` (and ``OMP_WAIT_POLICY``) set in their environment:

- ``tbb``, ``omp`` (libgomp's default wait policy), ``omp-passive``
  (``OMP_WAIT_POLICY=passive``), ``workqueue``;
- ``default``: no variable set, numba_ivf's own choice;
- ``default-no-tbb``: the same with Numba's tbb extension hidden, the fallback.

For each: (a) latency of one trivial ``@njit(parallel=True, nogil=True)`` prange call,
median of many back-to-back calls and of calls after 1 ms idle; (b) IVFFlat one-query
QPS (queries one per call, all threads) and batch QPS on clustered synthetic data
(200k x 64, nlist 512, nprobe 16; ``--quick``: 50k, nlist 256); (c) one-query QPS from
2 Python threads, each inside ``numba_ivf.threads(1)``, over 1 such thread, the two
alternating, median of the per-repeat ratios; (d) whether a forked child of a process
that searched can search (same results), and whether a ``multiprocessing`` fork Pool
does. (c) and (d) run in processes of their own, since a layer may abort the process.
Figures within a row come from one process; rows are different processes on a shared
machine, so compare them with care (``--rounds R`` interleaves R runs of every row
and reports medians and ranges). ``--busy N`` keeps N extra processes
spinning on the CPU during the runs, the situation of a loaded shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

CONFIGS = {
    "tbb": {"NUMBA_THREADING_LAYER": "tbb"},
    "omp": {"NUMBA_THREADING_LAYER": "omp"},
    "omp-passive": {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "passive"},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
    "default": {},
    "default-no-tbb": {"NUMBA_IVF_BENCH_HIDE_TBB": "1"},
}
K = 10
NPROBE = 16
TIMEOUT_S = 600


# -- data ------------------------------------------------------------------------

def _clustered(n, d, n_clusters, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32) * 4.0
    labels = rng.integers(0, n_clusters, n)
    return centres[labels] + rng.standard_normal((n, d)).astype(np.float32)


def _build(workdir: Path, quick: bool) -> None:
    import numba_ivf
    n, nlist = (50_000, 256) if quick else (200_000, 512)
    x = _clustered(n + 2000, 64, 1000, seed=0)
    base, queries = x[:n], x[n:]
    index = numba_ivf.IVFFlat(64, nlist)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # k-means samples 256 rows a list
        index.train(base)
    index.add(base)
    index.save(str(workdir / "flat.nivf"))
    np.save(workdir / "queries.npy", queries)


# -- worker: one configuration, one part -------------------------------------------

def _hide_tbb_if_asked():
    if os.environ.get("NUMBA_IVF_BENCH_HIDE_TBB"):
        sys.modules["numba.np.ufunc.tbbpool"] = None  # import fails: "tbb unavailable"


_TICK = None


def _tick_kernel():
    global _TICK
    if _TICK is None:
        from numba import njit, prange

        @njit(parallel=True, nogil=True)
        def tick(a):
            for i in prange(a.shape[0]):
                a[i] += 1.0

        _TICK = tick
    return _TICK


def _latency(repeats, hot_calls, idle_calls):
    import numba
    tick = _tick_kernel()
    a = np.zeros(2 * numba.get_num_threads())
    for _ in range(200):
        tick(a)
    hot, idle = [], []
    for _ in range(repeats):
        t = np.empty(hot_calls)
        for i in range(hot_calls):
            t0 = time.perf_counter()
            tick(a)
            t[i] = time.perf_counter() - t0
        hot.append(np.median(t))
        t = np.empty(idle_calls)
        for i in range(idle_calls):
            time.sleep(0.001)
            t0 = time.perf_counter()
            tick(a)
            t[i] = time.perf_counter() - t0
        idle.append(np.median(t))
    return {"hot_us": float(np.median(hot)) * 1e6, "idle_us": float(np.median(idle)) * 1e6}


def _load(workdir):
    import numba_ivf
    index = numba_ivf.load(str(workdir / "flat.nivf"), mmap=True)
    queries = np.load(workdir / "queries.npy")
    return index, queries


def _search(workdir, repeats, n_single, n_batch):
    index, q = _load(workdir)
    index.search(q[:n_batch], K, nprobe=NPROBE)
    for i in range(20):
        index.search(q[i:i + 1], K, nprobe=NPROBE)
    single, batch = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n_single):
            index.search(q[i:i + 1], K, nprobe=NPROBE)
        single.append(n_single / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        index.search(q[:n_batch], K, nprobe=NPROBE)
        batch.append(n_batch / (time.perf_counter() - t0))
    return {"single_qps": float(np.median(single)), "batch_qps": float(np.median(batch))}


def _qps_threads(index, q, n_threads):
    import numba_ivf
    parts = np.array_split(np.arange(len(q)), n_threads)
    barrier = threading.Barrier(n_threads + 1)

    def body(rows):
        with numba_ivf.threads(1):
            barrier.wait()
            for i in rows:
                index.search(q[i:i + 1], K, nprobe=NPROBE)

    ts = [threading.Thread(target=body, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return len(q) / (time.perf_counter() - t0)


def _concurrent(workdir, repeats, n_single):
    index, q = _load(workdir)
    q = q[:n_single]
    _qps_threads(index, q[:20], 1)
    _qps_threads(index, q[:20], 2)
    one, two, ratio = [], [], []
    for _ in range(repeats):
        a = _qps_threads(index, q, 1)
        b = _qps_threads(index, q, 2)
        one.append(a)
        two.append(b)
        ratio.append(b / a)
    return {"qps_1": float(np.median(one)), "qps_2": float(np.median(two)),
            "ratio": float(np.median(ratio))}


_FORK_STATE = {}


def _pool_search(rows):
    index, q = _FORK_STATE["index"], _FORK_STATE["q"]
    return index.search(q[rows], K, nprobe=NPROBE)[1]


def _fork(workdir, timeout_s):
    import multiprocessing as mp
    index, q = _load(workdir)
    q = q[:64]
    ref = index.search(q, K, nprobe=NPROBE)[1]
    index.search(q[:1], K, nprobe=NPROBE)
    out = {}

    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            code = 0 if np.array_equal(index.search(q, K, nprobe=NPROBE)[1], ref) else 3
        except Exception as e:  # noqa: BLE001 - reported, not handled
            print(f"child: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            code = 4
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.02)
    if status is None:
        out["child"] = f"hang (killed after {timeout_s} s)"
    elif os.WIFSIGNALED(status):
        out["child"] = f"killed by signal {os.WTERMSIG(status)}"
    else:
        out["child"] = {0: "ok", 3: "different results", 4: "raised (see stderr)"}.get(
            os.WEXITSTATUS(status), f"exit {os.WEXITSTATUS(status)}")

    _FORK_STATE.update(index=index, q=q)
    pool = mp.get_context("fork").Pool(2)
    try:
        chunks = np.array_split(np.arange(len(q)), 4)
        got = pool.map_async(_pool_search, chunks).get(timeout=timeout_s)
        out["pool"] = "ok" if np.array_equal(np.concatenate(got), ref) else "different results"
        pool.close()
    except mp.TimeoutError:
        out["pool"] = f"hang (terminated after {timeout_s} s)"
    except Exception as e:  # noqa: BLE001
        out["pool"] = f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
    finally:
        pool.terminate()
    return out


def _worker(part, workdir, quick):
    _hide_tbb_if_asked()
    import numba_ivf
    reps = 3 if quick else 5
    if part == "main":
        res = {"layer": numba_ivf.threading_layer(),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
        res.update(_latency(3, 500 if quick else 2000, 100 if quick else 300))
        res.update(_search(workdir, reps, 100 if quick else 300, 1000 if quick else 2000))
    elif part == "concurrent":
        res = _concurrent(workdir, 2 * reps - 1, 100 if quick else 300)
    elif part == "fork":
        res = _fork(workdir, 30 if quick else 60)
    else:
        raise ValueError(f"part must be main, concurrent or fork; got {part!r}")
    print("RESULT " + json.dumps(res), flush=True)


# -- driver ----------------------------------------------------------------------

def _run(config, part, workdir, quick):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(CONFIGS[config])
    cmd = [sys.executable, __file__, "--worker", part, "--workdir", str(workdir)]
    if quick:
        cmd.append("--quick")
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {TIMEOUT_S} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            err = [s for s in p.stderr.splitlines() if "child:" in s or "Terminating" in s]
            if err:
                res["stderr"] = err[0][:160]
            return res
    lines = p.stderr.strip().splitlines() or [""]
    why = next((s for s in lines if "terminat" in s.lower()), lines[-1])
    return {"error": f"exit {p.returncode}", "stderr": why[:160]}


def _fmt(res, key, spec):
    v = res.get(key)
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50k rows, fewer repeats")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every configuration this many times, interleaved")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="keep N spinning processes running meanwhile (a loaded machine)")
    ap.add_argument("--json", help="write the raw results to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, Path(args.workdir), args.quick)
        return

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        rounds = _drive(args)
    finally:
        for b in busy:
            b.kill()
            b.wait()
    _report(_merge(rounds), len(rounds))
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1))


def _drive(args):
    with tempfile.TemporaryDirectory(prefix="nivf-threading-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        _build(workdir, args.quick)
        print(f"index built in {time.perf_counter() - t0:.1f} s "
              f"({'quick' if args.quick else 'full'} profile)", flush=True)
        rounds = [{} for _ in range(args.rounds)]
        for r, results in enumerate(rounds):  # configurations interleaved per round
            for config in args.configs:
                results[config] = {part: _run(config, part, workdir, args.quick)
                                   for part in ("main", "concurrent", "fork")}
                print(f"  round {r + 1} {config}: {json.dumps(results[config])}", flush=True)
    return rounds


def _merge(rounds):
    """Median over rounds of every number; the first round's text; numbers' ranges."""
    merged = {}
    for config in rounds[0]:
        merged[config] = {}
        for part in rounds[0][config]:
            runs = [r[config][part] for r in rounds]
            out = dict(runs[0])
            for key, v in runs[0].items():
                vals = [run.get(key) for run in runs]
                if all(isinstance(x, (int, float)) for x in vals):
                    out[key] = float(np.median(vals))
                    out[key + "_range"] = (min(vals), max(vals))
                elif len(set(map(str, vals))) > 1:
                    out[key] = " / ".join(map(str, vals))
            merged[config][part] = out
    return merged


def _rng(res, key, spec):
    lo_hi = res.get(key + "_range")
    if lo_hi is None or lo_hi[0] == lo_hi[1]:
        return ""
    return f" ({format(lo_hi[0], spec)}-{format(lo_hi[1], spec)})"


def _report(results, n_rounds):
    if n_rounds > 1:
        print(f"\nmedians of {n_rounds} rounds (range)")
    hdr = (f"| config | layer | trivial call, us (hot / after 1 ms idle) | one-query QPS "
           f"| batch QPS | 2 Py threads / 1 (QPS) | forked child | fork Pool |")
    print()
    print(hdr)
    print("|---|---|---:|---:|---:|---:|---|---|")
    for config, r in results.items():
        m, c, f = r["main"], r["concurrent"], r["fork"]
        conc = (f"{c['ratio']:.2f}x{_rng(c, 'ratio', '.2f')}" if "ratio" in c
                else c.get("error", "-"))
        print(f"| {config} | {m.get('layer', m.get('error', '-'))} | "
              f"{_fmt(m, 'hot_us', '.1f')} / {_fmt(m, 'idle_us', '.1f')} | "
              f"{_fmt(m, 'single_qps', ',.0f')}{_rng(m, 'single_qps', ',.0f')} | "
              f"{_fmt(m, 'batch_qps', ',.0f')}{_rng(m, 'batch_qps', ',.0f')} | {conc} | "
              f"{f.get('child', f.get('error', '-'))} | {f.get('pool', '-')} |")
    notes = {f"{config} {part}": r[part]["stderr"] for config, r in results.items()
             for part in r if "stderr" in r[part]}
    for where, line in notes.items():
        print(f"  {where}: {line}")


if __name__ == "__main__":
    main()
