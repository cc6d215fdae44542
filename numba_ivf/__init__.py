"""numba_ivf: IVF approximate nearest-neighbour search with Numba-JIT kernels.

Public API (imported lazily, so ``import numba_ivf`` neither imports Numba nor
compiles anything; kernels compile on first use and are cached on disk):

- ``assign_nearest(x, centroids, metric="l2", variant="tiled")``
- ``KMeans(n_clusters, ...)``
- ``IVFFlat(d, nlist, metric="l2")``, ``IVFPQ(d, nlist, m, nbits=8, ...)``,
  ``IVFRaBitQ(d, nlist, bits=4, ...)``,
  ``ProductQuantizer(d, m, nbits=8)``, ``load(path, mmap=False)``
- ``IDFilter``: allowed ids for ``search(..., filter=...)`` and ``range_search``
- ``set_num_threads(n)``, ``get_num_threads()``, ``threads(n)`` (context manager)
- ``threading_layer()``: Numba's threading layer in use (tbb, omp or workqueue; see
  ``docs/threading.md``, override with the ``NUMBA_THREADING_LAYER`` environment variable)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "assign_nearest": "numba_ivf.kernels.assign.assign",
    "coarse_topk": "numba_ivf.kernels.assign.assign",
    "KMeans": "numba_ivf.kmeans",
    "IVFFlat": "numba_ivf.ivf.flat",
    "IVFPQ": "numba_ivf.ivf.pq",
    "IVFRaBitQ": "numba_ivf.ivf.rabitq",
    "IDFilter": "numba_ivf.filters",
    "ProductQuantizer": "numba_ivf.pq",
    "load": "numba_ivf.ivf._load",
    "set_num_threads": "numba_ivf._threads",
    "get_num_threads": "numba_ivf._threads",
    "threads": "numba_ivf._threads",
    "threading_layer": "numba_ivf._threads",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'numba_ivf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
