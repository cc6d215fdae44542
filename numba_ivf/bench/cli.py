"""``numba-ivf bench``: command-line front end of the recall/QPS harness.

``--filter`` runs the filtered-search sweep of :mod:`numba_ivf.bench.filtered` instead.

:func:`main` receives the arguments after ``bench``; the console script
``numba-ivf`` and ``python -m numba_ivf`` dispatch to it.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .harness import INDEXES, LIBRARIES, BenchConfig, run_benchmark

__all__ = ["build_parser", "config_from_args", "main"]

_EXAMPLES = """\
examples:
  numba-ivf bench --quick
  numba-ivf bench --dataset /root/ann-data/glove-50 --k 10 --mode both --out glove
  numba-ivf bench --dataset sift_base.fvecs --metric l2 --libs numba_ivf,faiss
  numba-ivf bench --quick --libs numba_ivf,faiss,scann --indexes ivfrabitq \\
      --rabitq-bits 1,4,5
  numba-ivf bench --filter --quick --dataset glove-50 --out filter-glove
"""


class _Explicit(argparse.Action):
    """Store the value and remember that the option was given (defaults differ with
    --filter only for options left out)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.explicit = getattr(namespace, "explicit", frozenset()) | {self.dest}


def _fraction_list(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--filter-fractions must be a comma-separated list of numbers such as "
            f"0.5,0.01; got {text!r}") from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(
            f"--filter-fractions values must be in (0, 1]; got {text!r}")
    return values


def _int_list(name):
    def parse(text: str) -> tuple:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a comma-separated list of integers such as 1,2,4; "
                f"got {text!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(
                f"{name} values must be integers >= 1; got {text!r}")
        return values
    return parse


def _choice_list(name, allowed):
    def parse(text: str) -> tuple:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"{name} must be a comma-separated subset of {','.join(allowed)}; "
                f"got {text!r}")
        return tuple(dict.fromkeys(values))  # keep order, drop repeats
    return parse


def _rabitq_bits(text: str) -> tuple:
    values = _int_list("--rabitq-bits")(text)
    if max(values) > 8:
        raise argparse.ArgumentTypeError(
            f"--rabitq-bits values must be in 1..8 (bits per dimension); got {text!r}")
    return tuple(sorted(set(values)))


def _positive_int(name):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer; got "
                                             f"{text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1; got {v}")
        return v
    return parse


def build_parser(prog: str = "numba-ivf bench") -> argparse.ArgumentParser:
    """The argument parser of ``numba-ivf bench`` (arguments after ``bench``)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Sweep recall@k against queries per second for numba_ivf's IVF "
                    "indexes, beside FAISS, hnswlib and ScaNN when they are installed.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="synthetic", metavar="PATH|NAME|synthetic",
                   help="'synthetic' (default), a folder with base.npy/queries.npy/"
                        "neighbors_<metric>.npy/meta.json, an ann-benchmarks .hdf5 "
                        "file, a *base.fvecs file, or a name under $NUMBA_IVF_DATA or "
                        "~/ann-data")
    d.add_argument("--metric", default=None,
                   choices=["l2", "ip", "cosine", "euclidean", "angular", "dot"],
                   help="default: the dataset's own (l2 for synthetic)")
    d.add_argument("--k", type=_positive_int("--k"), default=10,
                   help="neighbours per query; recall@k is measured (default 10)")
    d.add_argument("--max-queries", type=_positive_int("--max-queries"), default=None,
                   help="use only the first N queries (default all; 500 with --quick)")
    d.add_argument("--n", dest="synthetic_n", metavar="N",
                   type=_positive_int("--n"), default=None,
                   help="synthetic: base vectors (default 100000; 10000 with --quick)")
    d.add_argument("--nq", dest="synthetic_nq", metavar="NQ",
                   type=_positive_int("--nq"), default=None,
                   help="synthetic: queries (default 1000; 200 with --quick)")
    d.add_argument("--d", dest="synthetic_d", metavar="D",
                   type=_positive_int("--d"), default=32,
                   help="synthetic: dimensions (default 32)")
    d.add_argument("--clusters", dest="synthetic_clusters", metavar="C",
                   type=_positive_int("--clusters"), default=50,
                   help="synthetic: Gaussian clusters (default 50)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    s = p.add_argument_group("what to run")
    s.add_argument("--libs", type=_choice_list("--libs", LIBRARIES), metavar="LIST",
                   default=LIBRARIES, action=_Explicit,
                   help=f"default {','.join(LIBRARIES)} (without scann with --filter)")
    s.add_argument("--indexes", type=_choice_list("--indexes", INDEXES), metavar="LIST",
                   default=INDEXES, action=_Explicit,
                   help=f"IVF indexes (default {','.join(INDEXES)}; ivfflat,ivfpq4-refine "
                        f"with --filter); hnswlib always builds HNSW, scann always its "
                        f"tree + AH + re-order searcher")
    s.add_argument("--nlist", type=_positive_int("--nlist"), default=None,
                   help="inverted lists (default round(4 * sqrt(n)))")
    s.add_argument("--nprobe", type=_int_list("--nprobe"), default=None, metavar="LIST",
                   help="nprobe sweep (default 1,2,4,...,256 up to nlist; 1,4,16 with "
                        "--quick)")
    s.add_argument("--k-factor", type=_int_list("--k-factor"), default=None, metavar="LIST",
                   help="re-rank factor sweep for ivfpq4-refine (default 2,4,8; 4 with "
                        "--quick) and for scann's re-ordered candidates k * factor "
                        "(default 2,4,8,16; 4,16 with --quick)")
    s.add_argument("--rabitq-bits", type=_rabitq_bits, default=(4, 5), metavar="LIST",
                   help="bits per dimension for ivfrabitq, one index per value, "
                        "1..8 (default 4,5)")
    s.add_argument("--ef", type=_int_list("--ef"), default=None, metavar="LIST",
                   help="hnswlib ef sweep (default 16,...,512; 32,128 with --quick; "
                        "values below k are raised to k)")
    s.add_argument("--pq4-by-residual", action="store_true",
                   help="encode 4-bit IVF-PQ by residual, in both libraries (default: "
                        "not, FAISS's IndexIVFPQFastScan default)")
    s.add_argument("--pq-m", type=_positive_int("--pq-m"), default=None,
                   help="PQ sub-quantizers, must divide d (default: largest divisor "
                        "of d up to min(d/2, 64))")
    s.add_argument("--mode", choices=["batch", "single", "both"], default="batch",
                   action=_Explicit,
                   help="batch: all queries per call; single: one query per call in a "
                        "Python loop (latency); both (default batch; both with --filter)")
    s.add_argument("--single-queries", type=_positive_int("--single-queries"),
                   default=None, help="queries timed in single mode (default 1000; 100 "
                                      "with --quick)")
    s.add_argument("--threads", type=_positive_int("--threads"), default=None,
                   help="threads for every library (default: usable cores)")
    s.add_argument("--repeats", type=_positive_int("--repeats"), default=None,
                   help="timed repeats per point, median reported (default 3)")
    s.add_argument("--quick", action="store_true",
                   help="small sweep for a first look (minutes, not hours)")
    s.add_argument("--strict", action="store_true",
                   help="stop on the first failing library instead of skipping it")

    f = p.add_argument_group("filtered search (--filter)")
    f.add_argument("--filter", action="store_true",
                   help="sweep filtered search instead: random allow-lists of 50%%, 10%%, "
                        "1%%, 0.1%% of the base and the dataset's correlated filter, each "
                        "against exact filtered ground truth; writes filter_results.json, "
                        "filter_tables.txt, filter_recall_qps.png and prints the tables. "
                        "Default nprobe sweep 1,2,4,... up to nlist (1,4,16,64,256,nlist "
                        "with --quick); queries 500 (200 with --quick), 200 single (50)")
    f.add_argument("--filter-fractions", type=_fraction_list, default=None,
                   metavar="LIST", help="random allow-list sizes as fractions of the base "
                                        "(default 0.5,0.1,0.01,0.001)")
    f.add_argument("--no-correlated", dest="correlated", action="store_false",
                   help="leave out the dataset's correlated filter")
    f.add_argument("--min-candidates", type=_positive_int("--min-candidates"),
                   default=None, help="min_candidates for numba_ivf's filtered search "
                                      "(default: its own, 10 * k)")

    o = p.add_argument_group("output")
    o.add_argument("--out", default="bench-results",
                   help="output folder for results.json, results.md, recall_qps.png "
                        "(default bench-results)")
    o.add_argument("--no-plot", dest="plot", action="store_false",
                   help="do not draw recall_qps.png")
    bar = o.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="progress bars even when stderr is not a terminal")
    bar.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bars")
    o.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars and no log lines on stderr")
    return p


def config_from_args(args: argparse.Namespace, command: str = "") -> BenchConfig:
    """Turn parsed arguments into a :class:`BenchConfig`."""
    explicit = getattr(args, "explicit", frozenset())
    mode, indexes, libs = args.mode, tuple(args.indexes), tuple(args.libs)
    if args.filter:
        from .filtered import FILTER_INDEXES
        if "mode" not in explicit:
            mode = "both"
        if "indexes" not in explicit:
            indexes = FILTER_INDEXES
        if "libs" in explicit and "scann" in libs:
            raise ValueError("--libs scann is not supported with --filter (the filtered "
                             "sweep has no ScaNN runner); leave scann out of --libs")
        libs = tuple(lib for lib in libs if lib != "scann")
    modes = ("batch", "single") if mode == "both" else (mode,)
    return BenchConfig(
        dataset=args.dataset, metric=args.metric, k=args.k, libs=libs,
        indexes=indexes, nlist=args.nlist, nprobe=args.nprobe,
        k_factor=args.k_factor, ef=args.ef, pq_m=args.pq_m,
        pq4_by_residual=args.pq4_by_residual,
        rabitq_bits=tuple(args.rabitq_bits), modes=modes,
        threads=args.threads, max_queries=args.max_queries,
        single_queries=args.single_queries, repeats=args.repeats, quick=args.quick,
        out=args.out, seed=args.seed, synthetic_n=args.synthetic_n,
        synthetic_nq=args.synthetic_nq, synthetic_d=args.synthetic_d,
        synthetic_clusters=args.synthetic_clusters, progress=args.progress,
        quiet=args.quiet, strict=args.strict, plot=args.plot, command=command,
        filter=args.filter, filter_fractions=args.filter_fractions,
        correlated=args.correlated, min_candidates=args.min_candidates)


def main(argv=None) -> int:
    """Run ``numba-ivf bench`` with ``argv`` (the arguments after ``bench``).

    Returns 0 on success, 1 when the run cannot start (bad dataset path, bad
    option combination) and 130 when interrupted (partial results are kept);
    argparse exits with status 2 on malformed options.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "numba-ivf bench " + " ".join(shlex.quote(a) for a in argv)
    try:
        cfg = config_from_args(args, command.strip())
    except ValueError as exc:  # a bad combination of options
        print(f"numba-ivf bench: error: {exc}", file=sys.stderr)
        return 1
    try:
        if cfg.filter:
            from .filtered import print_tables, run_filtered_benchmark
            results = run_filtered_benchmark(cfg)
            if not cfg.quiet:
                print_tables(results)
        else:
            results = run_benchmark(cfg)
    except (ValueError, ImportError, OSError) as exc:
        if cfg.strict:
            raise
        print(f"numba-ivf bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"numba-ivf bench: interrupted; the points measured so far are in "
              f"{cfg.out}", file=sys.stderr)
        return 130
    if not cfg.quiet:
        outs = ", ".join(results["outputs"].values())
        print(f"wrote {outs} to {cfg.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
