"""Recall/QPS benchmark harness: numba_ivf beside FAISS and hnswlib.

Run it as ``numba-ivf bench ...`` (see :mod:`numba_ivf.bench.cli`) or from Python::

    from numba_ivf.bench import BenchConfig, run_benchmark
    results = run_benchmark(BenchConfig(dataset="synthetic", quick=True, out="out"))

Optional libraries (faiss, hnswlib, matplotlib, threadpoolctl) are imported only when
a run needs them; a missing one is skipped with a note.
"""

from .harness import BenchConfig, recall_at_k, run_benchmark

__all__ = ["BenchConfig", "run_benchmark", "recall_at_k", "main"]


def main(argv=None) -> int:
    """Entry point of ``numba-ivf bench``; see :func:`numba_ivf.bench.cli.main`."""
    from .cli import main as _main
    return _main(argv)
