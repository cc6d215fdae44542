"""Numba kernels, one module per stage of the pipeline.

Every kernel here has a plain-loop oracle in ``tests/naive/`` and a parity test.
Nothing in this package is compiled at import: dispatchers compile on first call and
are cached on disk (``cache=True``).
"""

# Chooses Numba's threading layer before any kernel can start the thread pool.
from .. import _threads  # noqa: E402,F401
