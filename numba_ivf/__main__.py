"""Command line: ``numba-ivf demo`` and ``numba-ivf bench`` (also ``python -m numba_ivf``)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from .bench.cli import main as bench_main
        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="numba-ivf",
        description="numba_ivf: IVF nearest-neighbour search with Numba kernels.",
        epilog="Subcommands: 'demo' (default) runs the demo; 'bench --help' shows the "
               "recall/QPS harness against FAISS and hnswlib.")
    parser.add_argument("command", nargs="?", default="demo", choices=["demo", "bench"])
    parser.add_argument("--n", type=int, default=50_000, help="base vectors (default 50000)")
    parser.add_argument("--d", type=int, default=64, help="dimension (default 64)")
    parser.add_argument("--k", type=int, default=256,
                        help="k-means clusters in the assignment demo (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .demo import run_demo
    return run_demo(n=args.n, d=args.d, k=args.k, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
