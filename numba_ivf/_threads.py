"""Thread count of the Numba kernels: a setter, a getter and a scoped context manager.

Numba launches ``numba.config.NUMBA_NUM_THREADS`` workers once and masks out the ones
not in use, so the count can change between calls at no cost but can never exceed the
launch-time pool. The mask is per calling Python thread.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Iterator

import numba
import numpy as np

__all__ = ["set_num_threads", "get_num_threads", "threads"]


def _check_n(n) -> int:
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n (number of threads) must be an integer; got {n!r} of type "
                        f"{type(n).__name__}.")
    n = int(n)
    if not 1 <= n <= limit:
        raise ValueError(f"n (number of threads) must be between 1 and {limit} "
                         f"(numba.config.NUMBA_NUM_THREADS, fixed when the process "
                         f"starts; raise it with the NUMBA_NUM_THREADS environment "
                         f"variable); got {n}.")
    return n


def set_num_threads(n: int) -> None:
    """Set the number of threads the parallel kernels use.

    Parameters
    ----------
    n : int
        Between 1 and ``numba.config.NUMBA_NUM_THREADS``.

    Examples
    --------
    >>> import numba_ivf
    >>> numba_ivf.set_num_threads(1)
    """
    numba.set_num_threads(_check_n(n))


def get_num_threads() -> int:
    """Return the number of threads the parallel kernels currently use."""
    return int(numba.get_num_threads())


@contextlib.contextmanager
def threads(n: int) -> Iterator[int]:
    """Use ``n`` threads inside a ``with`` block, restoring the previous count on exit.

    The previous count is restored even when the block raises.

    Examples
    --------
    >>> import numba_ivf
    >>> with numba_ivf.threads(1):
    ...     pass
    """
    n = _check_n(n)
    previous = get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(previous)
