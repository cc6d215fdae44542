"""How far one machine goes: a large clustered set built from an ``np.memmap`` in chunks.

Run as::

    python -m numba_ivf.bench.one_machine --n 10000000 --d 96 \\
        --out docs/results/one_machine.txt          # the full run (tens of minutes)
    python -m numba_ivf.bench.one_machine --n 500000 --out /tmp/one_machine.txt

What it does (see ``docs/one_machine.md`` for the figures and what they consist of):

1. Writes a clustered float32 base of ``n`` rows into ``WORKDIR/base.f32`` (an
   ``np.memmap``) chunk by chunk (a mixture of ``--clusters`` Gaussian blobs, as
   :func:`numba_ivf.datasets.make_synthetic`, chunk i drawn from
   ``default_rng((seed, i))``), so the base is never in memory at once; queries from
   the same mixture; a training sample of ``--train`` rows read from the memmap; exact
   top-k ground truth by streaming over the memmap in chunks
   (:func:`numba_ivf.datasets.ground_truth` per chunk, float64, merged).
2. Builds each library in its own fresh subprocess: ``train`` on the sample, then
   ``add`` fed chunk by chunk with slices of the memmap (no copy by either library's
   API: both take C-contiguous float32). numba_ivf: ``IVFPQ(d, nlist, m, nbits=4)``;
   FAISS: ``IndexIVFPQFastScan(IndexFlatL2(d), d, nlist, m, 4)``. Same threads,
   k-means iterations, training rows and chunks.
3. Memory: the parent samples the child's ``/proc/PID/status`` every
   ``_SAMPLE_S`` from the moment the child reports its baseline (after imports and a
   tiny warm-up build that compiles or loads every kernel) until the build ends. The
   figure reported is the peak of ``RssAnon`` minus the baseline: anonymous memory,
   what the library allocates. Pages of the memmap that are only read are file-backed
   (``RssFile``), shared with the page cache, and would count in total RSS
   (``VmHWM``, also printed) although the kernel can drop them at any time.
4. Search: all queries as one batch, ``k`` results, for each ``nprobe``: QPS (median
   of ``--repeats`` timed calls after a warm-up) and recall@k against the exact
   ground truth.

Index size: numba_ivf ``sum(index.memory_bytes.values())`` (arena capacity included)
and the compact size (live ids and codes); FAISS: live codes rounded up to blocks of 32
plus 8-byte ids (its per-list vector capacity is not visible from Python).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

_SAMPLE_S = 0.002          # sampling period of the child's /proc status
_GEN_SEED = 20260        # data seed (chunk i: default_rng((seed, i)))
_SPREAD = 0.5            # per-coordinate std of a blob along its rank-r directions
_NOISE = 0.1             # per-coordinate std of the isotropic noise


# -- /proc helpers -------------------------------------------------------------------

def proc_status(pid="self") -> dict:
    """kB fields of /proc/PID/status that matter here (RssAnon, RssFile, VmRSS, VmHWM)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


# -- data ----------------------------------------------------------------------------

def _mixture(d: int, n_clusters: int, seed: int, rank: int):
    rng = np.random.default_rng((seed, 2 ** 31))
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    basis = None
    if rank:
        basis = (rng.standard_normal((rank, d)) * (_SPREAD / np.sqrt(rank))
                 ).astype(np.float32)
    return centres, weights, basis


def _draw(rng, mix, m: int) -> np.ndarray:
    """m rows of the mixture: centre + (rank-r spread) + isotropic noise."""
    centres, weights, basis = mix
    lab = rng.choice(centres.shape[0], size=m, p=weights)
    x = rng.standard_normal((m, centres.shape[1]), dtype=np.float32)
    if basis is None:
        x *= np.float32(0.5 * np.sqrt(2.0))   # as datasets.make_synthetic
    else:
        x *= np.float32(_NOISE)
        x += rng.standard_normal((m, basis.shape[0]), dtype=np.float32) @ basis
    x += centres[lab]
    return x


def make_data(work: Path, n: int, d: int, nq: int, k: int, n_train: int,
              n_clusters: int, rank: int, chunk: int, log) -> dict:
    """Write base.f32 (memmap), queries.npy, train.npy, gt.npy into ``work``."""
    from ..datasets import ground_truth
    mix = _mixture(d, n_clusters, _GEN_SEED, rank)
    t0 = time.perf_counter()
    mm = np.memmap(work / "base.f32", dtype=np.float32, mode="w+", shape=(n, d))
    for i, s in enumerate(range(0, n, chunk)):
        e = min(n, s + chunk)
        mm[s:e] = _draw(np.random.default_rng((_GEN_SEED, i)), mix, e - s)
    mm.flush()
    gen_s = time.perf_counter() - t0
    log(f"generated {n} x {d} in {gen_s:.1f} s")
    queries = _draw(np.random.default_rng((_GEN_SEED, 2 ** 32)), mix, nq)
    np.save(work / "queries.npy", queries)
    rng = np.random.default_rng((_GEN_SEED, 2 ** 33))
    idx = np.sort(rng.choice(n, size=min(n_train, n), replace=False))
    np.save(work / "train.npy", np.ascontiguousarray(mm[idx]))
    # Exact ground truth, streamed: top-k of each chunk, merged (ties by lower id).
    t0 = time.perf_counter()
    best_d = np.full((nq, k), np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    gt_chunk = min(chunk, 250_000)
    for s in range(0, n, gt_chunk):
        e = min(n, s + gt_chunk)
        D, I = ground_truth(mm[s:e], queries, k)
        cd = np.concatenate([best_d, D], axis=1)
        ci = np.concatenate([best_i, np.where(I >= 0, I + s, -1)], axis=1)
        order = np.argsort(cd, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(cd, order, axis=1)
        best_i = np.take_along_axis(ci, order, axis=1)
    np.save(work / "gt.npy", best_i)
    gt_s = time.perf_counter() - t0
    log(f"ground truth for {nq} queries in {gt_s:.1f} s")
    del mm
    return {"generate_s": gen_s, "ground_truth_s": gt_s}


# -- child: one library's build and search -----------------------------------------

def _recall(I, gt, k):
    hits = sum(len(set(a[:k]) & set(b[:k]) - {-1}) for a, b in zip(I, gt))
    return hits / (gt.shape[0] * k)


class _NumbaIVF:
    name = "numba_ivf"

    def __init__(self, a):
        import numba_ivf
        self.numba_ivf = numba_ivf
        self.a = a

    def make(self, d, nlist):
        return self.numba_ivf.IVFPQ(d, nlist, m=self.a.m, nbits=4, n_iter=self.a.n_iter)

    def warmup(self, x):
        idx = self.numba_ivf.IVFPQ(x.shape[1], 16, m=self.a.m, nbits=4, n_iter=2)
        idx.train(x)
        idx.add(x[:1000])
        idx.add(x[1000:])
        idx.search(x[:50], 10, nprobe=4)

    def search(self, index, q, k, nprobe):
        return index.search(q, k, nprobe=nprobe)

    def sizes(self, index):
        mem = index.memory_bytes
        L = index._lists
        compact = int(L.sizes.sum()) * 8 + int(
            sum(-(-int(s) // 32) for s in L.sizes if s) * 32 * ((self.a.m + 1) // 2))
        return {"index_bytes": int(sum(mem.values())), "compact_bytes": compact,
                "parts": {k: int(v) for k, v in mem.items()}}


class _Faiss:
    name = "faiss"

    def __init__(self, a):
        import faiss
        self.faiss = faiss
        self.a = a

    def make(self, d, nlist):
        faiss = self.faiss
        q = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFPQFastScan(q, d, nlist, self.a.m, 4)
        index.cp.niter = self.a.n_iter
        return index

    def warmup(self, x):
        index = self.make(x.shape[1], 16)
        index.train(x)
        index.add(x)
        index.nprobe = 4
        index.search(x[:50], 10)

    def search(self, index, q, k, nprobe):
        index.nprobe = nprobe
        return index.search(q, k)

    def sizes(self, index):
        inv = index.invlists
        m2 = (self.a.m + 1) // 2
        live = [inv.list_size(i) for i in range(index.nlist)]
        compact = sum(live) * 8 + sum(-(-s // 32) for s in live) * 32 * m2
        return {"index_bytes": int(compact), "compact_bytes": int(compact), "parts": {}}


def _child(a) -> int:
    """Build and search one library; phases are reported on stdout for the parent."""
    import numba
    numba.set_num_threads(a.threads)
    lib = {"numba_ivf": _NumbaIVF, "faiss": _Faiss}[a.child](a)
    if a.child == "faiss":
        lib.faiss.omp_set_num_threads(a.threads)
    work = Path(a.workdir)
    meta = json.loads((work / "meta.json").read_text())
    n, d = meta["n"], meta["d"]
    queries = np.load(work / "queries.npy")
    gt = np.load(work / "gt.npy")
    lib.warmup(np.load(work / "train.npy", mmap_mode="r")[:20000].copy())
    try:
        import threadpoolctl
        blas = [{k: i.get(k) for k in ("internal_api", "version", "num_threads",
                                        "threading_layer", "filepath")}
                for i in threadpoolctl.threadpool_info()]
    except ImportError:
        blas = None

    def phase(name):
        print(f"PHASE {name}", flush=True)
        # Wait for the parent to take a sample at the phase boundary.
        sys.stdin.readline()

    index = lib.make(d, a.nlist)
    train = np.load(work / "train.npy", mmap_mode="r")
    phase("train")
    t0 = time.perf_counter()
    index.train(train)
    train_s = time.perf_counter() - t0
    del train
    phase("add")
    mm = np.memmap(work / "base.f32", dtype=np.float32, mode="r", shape=(n, d))
    t0 = time.perf_counter()
    for s in range(0, n, a.chunk):
        index.add(mm[s:min(n, s + a.chunk)])
    add_s = time.perf_counter() - t0
    phase("end")
    own = proc_status()
    del mm
    out = {"library": lib.name, "train_s": train_s, "add_s": add_s,
           "vmhwm": own.get("VmHWM"), "blas": blas, **lib.sizes(index)}
    search = []
    for p in a.nprobe:
        lib.search(index, queries, a.k, p)          # warm-up
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            _, I = lib.search(index, queries, a.k, p)
            times.append(time.perf_counter() - t0)
        search.append({"nprobe": p, "qps": queries.shape[0] / float(np.median(times)),
                       "recall": _recall(I, gt, a.k)})
    out["search"] = search
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _run_child(lib: str, a, log) -> dict:
    """Run ``_child`` in a fresh interpreter, sampling its memory per phase."""
    cmd = [sys.executable, "-m", "numba_ivf.bench.one_machine", "--child", lib,
           "--workdir", str(a.workdir), "--nlist", str(a.nlist), "--m", str(a.m),
           "--chunk", str(a.chunk), "--threads", str(a.threads), "--k", str(a.k),
           "--n-iter", str(a.n_iter), "--repeats", str(a.repeats),
           "--nprobe", ",".join(map(str, a.nprobe))]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         bufsize=1)
    state = {"phase": None, "peak": {}, "base": None, "result": None, "lines": []}
    lock = threading.Lock()

    def reader():
        for line in p.stdout:
            if line.startswith("PHASE "):
                name = line.split()[1]
                st = proc_status(p.pid)
                with lock:
                    if state["base"] is None:
                        state["base"] = st
                    prev = state["phase"]
                    if prev is not None:
                        state["peak"][prev] = max(state["peak"].get(prev, 0),
                                                  st.get("RssAnon", 0))
                    state["phase"] = None if name == "end" else name
                    if name != "end":
                        state["peak"][name] = st.get("RssAnon", 0)
                log(f"  {lib}: {name}")
                p.stdin.write("\n")
                p.stdin.flush()
            elif line.startswith("RESULT "):
                state["result"] = json.loads(line[7:])
            else:
                state["lines"].append(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    while p.poll() is None:
        with lock:
            ph = state["phase"]
            if ph is not None:
                v = proc_status(p.pid).get("RssAnon", 0)
                if v > state["peak"][ph]:
                    state["peak"][ph] = v
        time.sleep(_SAMPLE_S)
    t.join(timeout=5)
    if p.returncode != 0 or state["result"] is None:
        raise RuntimeError(f"{lib} child failed (exit {p.returncode}):\n"
                           + "".join(state["lines"][-30:]))
    res = state["result"]
    base = state["base"].get("RssAnon", 0)
    res["baseline_anon"] = base
    res["peak_train"] = state["peak"].get("train", base) - base
    res["peak_add"] = state["peak"].get("add", base) - base
    res["peak_build"] = max(res["peak_train"], res["peak_add"])
    return res


# -- report --------------------------------------------------------------------------

def _mb(v) -> str:
    return "-" if v is None else f"{v / 2 ** 20:,.0f} MiB"


def _machine(threads) -> list[str]:
    from .harness import machine_info
    info = machine_info(threads)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    lines = [f"machine: {info['cpu_model']}, {info['usable_cores']} usable cores, "
             f"{mem / 2 ** 30:.1f} GiB RAM; threads={threads}",
             f"python {info['python']}, numpy {info['numpy']}, numba {info['numba']}, "
             f"faiss {info['faiss']}"]
    blas = info.get("blas") or []
    lines.append("BLAS: " + ("; ".join(f"{b['internal_api']} {b['version']} "
                                       f"({b['architecture']}, {b['threading_layer']}, "
                                       f"{b['num_threads']} threads)" for b in blas)
                             or "threadpoolctl not installed or no BLAS found"))
    return lines


def report(a, data: dict, results: list) -> str:
    chunk_bytes = a.chunk * a.d * 4
    lines = [f"one machine: {a.n:,} x {a.d} float32 clustered ({a.clusters} blobs), "
             f"memmap {_mb(a.n * a.d * 4)}; IVFPQ nlist={a.nlist}, m={a.m}, nbits=4; "
             f"train on {a.train:,} rows (n_iter={a.n_iter}), add in chunks of "
             f"{a.chunk:,} rows ({_mb(chunk_bytes)}); {a.nq} queries, k={a.k}",
             *_machine(a.threads),
             f"data: generated in {data['generate_s']:.0f} s, exact ground truth in "
             f"{data['ground_truth_s']:.0f} s", "",
             "memory: peak RssAnon of the build's process minus its baseline after "
             "imports and a warm-up build (sampled every 2 ms from outside); VmHWM: "
             "the process's peak total RSS, memmap pages included",
             f"{'library':<10} {'train s':>8} {'add s':>8} {'peak train':>11} "
             f"{'peak add':>10} {'index':>10} {'compact':>10} {'budget':>10} "
             f"{'peak/budget':>11} {'VmHWM':>10}"]
    for r in results:
        budget = 1.1 * (r["index_bytes"] + chunk_bytes)
        lines.append(f"{r['library']:<10} {r['train_s']:>8.1f} {r['add_s']:>8.1f} "
                     f"{_mb(r['peak_train']):>11} {_mb(r['peak_add']):>10} "
                     f"{_mb(r['index_bytes']):>10} {_mb(r['compact_bytes']):>10} "
                     f"{_mb(budget):>10} {r['peak_build'] / budget:>11.2f} "
                     f"{_mb(r['vmhwm']):>10}")
    lines += ["", "budget = 1.1 x (index size + one chunk of float32 rows)", "",
              f"{'library':<10} {'nprobe':>6} {'QPS':>10} {'recall@' + str(a.k):>10}"]
    for r in results:
        for s in r["search"]:
            lines.append(f"{r['library']:<10} {s['nprobe']:>6} {s['qps']:>10.0f} "
                         f"{s['recall']:>10.3f}")
    for r in results:
        if r["parts"]:
            lines.append(f"\n{r['library']} memory_bytes: " + ", ".join(
                f"{k} {_mb(v)}" for k, v in r["parts"].items()))
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m numba_ivf.bench.one_machine",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="base rows")
    ap.add_argument("--d", type=int, default=96)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--m", type=int, default=48)
    ap.add_argument("--chunk", type=int, default=500_000, help="rows per add call")
    ap.add_argument("--train", type=int, default=None,
                    help="training rows (default: 64 * nlist, at most n)")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--rank", type=int, default=16,
                    help="blobs spread along this many shared directions plus small "
                         "isotropic noise (0: isotropic blobs as make_synthetic)")
    ap.add_argument("--n-iter", type=int, default=10, dest="n_iter",
                    help="k-means iterations of both libraries (FAISS's IVF default)")
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=lambda s: [int(v) for v in s.split(",")],
                    default=[8, 16, 32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--libs", default="numba_ivf,faiss",
                    help="comma-separated: numba_ivf, faiss (empty: only make the data)")
    ap.add_argument("--workdir", default=None,
                    help="where the memmap goes (default: a new folder in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir's files")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse data already in --workdir (same --n/--d/--nq/--k)")
    ap.add_argument("--out", default=None, help="write the table here too")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.child:
        return _child(a)
    a.train = min(a.n, a.train or 64 * a.nlist)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    made = a.workdir is None
    work = Path(a.workdir or tempfile.mkdtemp(prefix="one_machine_"))
    work.mkdir(parents=True, exist_ok=True)
    a.workdir = str(work)
    try:
        meta_path = work / "meta.json"
        want = {"n": a.n, "d": a.d, "nq": a.nq, "k": a.k, "train": a.train,
                "clusters": a.clusters, "rank": a.rank}
        if a.reuse and meta_path.exists() and \
                {k: v for k, v in json.loads(meta_path.read_text()).items()
                 if k in want} == want:
            data = json.loads(meta_path.read_text())["data"]
            log(f"reusing data in {work}")
        else:
            data = make_data(work, a.n, a.d, a.nq, a.k, a.train, a.clusters,
                             a.rank, a.chunk, log)
            meta_path.write_text(json.dumps({**want, "data": data}))
        results = []
        for lib in [name for name in a.libs.split(",") if name]:
            log(f"building {lib}")
            results.append(_run_child(lib, a, log))
            log(f"{lib}: train {results[-1]['train_s']:.1f} s, add "
                f"{results[-1]['add_s']:.1f} s, peak {_mb(results[-1]['peak_build'])}")
        text = report(a, data, results)
        print(text)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(text)
            Path(a.out).with_suffix(".json").write_text(json.dumps(
                {"args": {k: v for k, v in vars(a).items() if k != "child"},
                 "data": data, "results": results}, indent=1))
    finally:
        if not a.keep:
            for name in ("base.f32", "queries.npy", "train.npy", "gt.npy", "meta.json"):
                (work / name).unlink(missing_ok=True)
            if made:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
