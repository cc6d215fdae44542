"""Numba's threading layer and thread count: which layer runs the kernels, a setter, a
getter and a scoped context manager.

The layer (the library that runs ``prange`` loops) is chosen by Numba once, when the
first parallel kernel launches, and is fixed for the life of the process. Numba's own
order is tbb, omp, workqueue, but a pip-installed TBB sits in ``<prefix>/lib``, where
Numba's loader does not look, so in a venv Numba silently takes GNU OpenMP: a launch
then costs milliseconds on a busy machine (its workers spin for the cores the caller
needs) and a forked child that launches a kernel is killed. :func:`_configure` runs
before anything here can launch the pool (this module and ``numba_ivf.kernels`` import
it first) and, unless ``NUMBA_THREADING_LAYER`` or ``NUMBA_THREADING_LAYER_PRIORITY``
says otherwise, makes the choice on purpose:

1. ``tbb`` when the ``tbb`` package is installed (a dependency where wheels exist):
   thread-safe and fork-safe. Its library is preloaded by path so that Numba finds it.
2. else ``omp``, with ``OMP_WAIT_POLICY=passive`` unless the user set a wait policy:
   thread-safe, but GNU OpenMP is not fork-safe (:func:`check_fork_safe`).
3. else ``workqueue``: fork-safe but not thread-safe, so :func:`launch_lock` serializes
   kernel launches from several Python threads.

Numba launches ``numba.config.NUMBA_NUM_THREADS`` workers once and masks out the ones
not in use, so the count can change between calls at no cost but can never exceed the
launch-time pool. The mask is per calling Python thread. See ``docs/threading.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import numbers
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

import numba
import numpy as np
from numba.np.ufunc import parallel as _parallel

__all__ = ["set_num_threads", "get_num_threads", "threads", "threading_layer",
           "launch_lock", "launch_guard", "serialized_launches", "check_fork_safe"]

# Numba's default priority: when the user has not changed it, the choice is ours.
_NUMBA_DEFAULT_PRIORITY = ["tbb", "omp", "workqueue"]
# The soname Numba's TBB check and its tbbpool extension load (numba/np/ufunc/parallel.py).
_TBB_LIBRARY = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib",
                "win32": "tbb12.dll"}.get(sys.platform)
# Layers that may be entered from several Python threads at once.
_THREAD_SAFE_LAYERS = frozenset({"tbb", "omp"})

_configured = False
_configure_lock = threading.Lock()
# RLock: an index method holding it may call another kernel wrapper that takes it.
_workqueue_lock = threading.RLock()
# Set in a forked child when the parent had launched GNU OpenMP (see check_fork_safe).
_forked_after_gnu_omp = False


def _tbb_paths() -> Iterator[Path]:
    """Where a pip-installed TBB may have put its shared library."""
    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == _TBB_LIBRARY:
            yield Path(f.locate())
    sub = ("Library", "bin") if sys.platform == "win32" else ("lib",)
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        yield Path(prefix, *sub, _TBB_LIBRARY)


def _preload_tbb() -> bool:
    """Load TBB's library so that Numba's ``CDLL(soname)`` finds it; True on success.

    A library already loaded under a soname satisfies later loads of that bare name, so
    loading pip's copy by its full path (``RTLD_GLOBAL``, for tbbpool's own reference)
    is enough; nothing is added to ``LD_LIBRARY_PATH`` or ``PATH``.
    """
    if _TBB_LIBRARY is None:
        return False
    try:
        ctypes.CDLL(_TBB_LIBRARY, mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        pass
    for path in _tbb_paths():
        if path.is_file():
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def _tbb_usable() -> bool:
    """Whether Numba's tbb layer would load (its version check and its extension)."""
    if not _preload_tbb():
        return False
    try:
        _parallel._check_tbb_version_compatible()
        from numba.np.ufunc import tbbpool  # noqa: F401
    except ImportError:
        return False
    return True


def _load_omp_passive() -> None:
    """Load Numba's OpenMP layer with ``OMP_WAIT_POLICY=passive``.

    libgomp reads its environment once, when it is loaded (which loading ``omppool``
    does), so the variable is set just around that load and removed again: child
    processes do not inherit it. Nothing changes when the user chose a wait policy, or
    when another library had loaded libgomp first (its settings are fixed by then).
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:  # no OpenMP runtime: Numba falls back to workqueue
        pass
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)


def _configure() -> None:
    """Choose the threading layer before Numba launches its pool (idempotent).

    Runs at import of this module; ``numba_ivf.kernels`` imports this module before
    any kernel module, so every path to a kernel passes here first. When the pool is
    already running (the user launched a parallel kernel of their own first), the layer
    is fixed and nothing is done.
    """
    global _configured
    with _configure_lock:
        if _configured:
            return
        _configured = True
        if _parallel._is_initialized:
            return
        requested = str(numba.config.THREADING_LAYER).lower()
        ours = (requested == "default"
                and list(numba.config.THREADING_LAYER_PRIORITY) == _NUMBA_DEFAULT_PRIORITY)
        if ours:
            if not _tbb_usable():
                _load_omp_passive()
        elif requested in ("tbb", "safe", "threadsafe", "default"):
            _preload_tbb()  # the user asked for tbb, or for an order that may reach it


def _launched_layer() -> str | None:
    return _parallel._threading_layer if _parallel._is_initialized else None


def threading_layer() -> str:
    """Return the name of the threading layer the parallel kernels run on.

    One of ``"tbb"``, ``"omp"`` or ``"workqueue"``. The layer is fixed per process when
    Numba starts its thread pool; this starts the pool if it is not running yet. Set the
    environment variable ``NUMBA_THREADING_LAYER`` (``tbb``, ``omp``, ``workqueue``,
    ``safe``, ``threadsafe``, ``forksafe``) before the first kernel call to override
    numba_ivf's choice.

    Examples
    --------
    >>> import numba_ivf
    >>> numba_ivf.threading_layer() in ("tbb", "omp", "workqueue")
    True
    """
    _parallel._launch_threads()
    return str(numba.threading_layer())


@contextlib.contextmanager
def launch_lock() -> Iterator[None]:
    """Serialize a parallel kernel call when the layer is not thread-safe.

    A no-op (apart from :func:`check_fork_safe`) on tbb and omp. On workqueue, whose
    launches from two Python threads at once abort the process, it holds a process-wide
    re-entrant lock. Before the pool has started, the layer is not known yet and the
    lock is held: only the first calls can be serialized needlessly.
    """
    guard = launch_guard()
    if guard is None:
        yield
        return
    with guard:
        yield


def launch_guard():
    """What an index method must hold around its kernels: None on a thread-safe layer,
    else the process-wide launch lock. Raises as :func:`check_fork_safe` does. The
    one rule behind :func:`launch_lock`, :func:`serialized_launches` and the index
    classes' per-call wrappers."""
    if _forked_after_gnu_omp:
        check_fork_safe()
    if _parallel._is_initialized and _parallel._threading_layer in _THREAD_SAFE_LAYERS:
        return None
    return _workqueue_lock


def serialized_launches(fn):
    """Decorate a public entry point that runs parallel kernels (outside the index
    classes, whose lock wrappers do the same): on a layer that is not thread-safe its
    calls from several Python threads run one at a time."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        guard = launch_guard()
        if guard is None:
            return fn(*args, **kwargs)
        with guard:
            return fn(*args, **kwargs)
    return wrapper


def check_fork_safe() -> None:
    """Raise instead of letting GNU OpenMP kill a forked child.

    Numba's omp layer on GNU libgomp terminates a child process of ``fork()`` at its
    first parallel launch when the parent had launched the layer. Call this before a
    kernel call; it is a flag test.

    Raises
    ------
    RuntimeError
        In such a child, naming the way out.
    """
    if _forked_after_gnu_omp:
        raise RuntimeError(
            "numba_ivf cannot run a parallel kernel in this process: it was forked from a "
            "process that had started Numba's 'omp' threading layer on GNU OpenMP, which "
            "is not fork-safe (the child would be killed). Use the 'spawn' or "
            "'forkserver' start method of multiprocessing (for example "
            "multiprocessing.get_context('spawn')), or install the 'tbb' package (pip "
            "install tbb) so that numba_ivf uses the fork-safe 'tbb' layer.")


def _after_fork_in_child() -> None:
    global _forked_after_gnu_omp, _workqueue_lock
    # The parent's thread that held the lock does not exist here.
    _workqueue_lock = threading.RLock()
    if _forked_after_gnu_omp or _launched_layer() != "omp":
        return
    try:
        from numba.np.ufunc import omppool
        gnu = omppool.openmp_vendor == "GNU"
    except (ImportError, AttributeError):  # pragma: no cover - exotic builds
        gnu = sys.platform.startswith("linux")
    _forked_after_gnu_omp = gnu


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_configure()


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
    # Once the pool runs, its own getter (a C call, ~0.15 us): numba.get_num_threads()
    # first takes Numba's process-wide and thread init locks, ~1.2 us of a ~25 us
    # one-query search. Before that, or if Numba's internals change, the public call.
    if _parallel._is_initialized:
        getter = _POOL_GETTER[0]
        if getter is None:
            getter = _POOL_GETTER[0] = getattr(_parallel, "_get_num_threads", None)
        if getter is not None:
            n = getter()
            if n > 0:
                return n
    return int(numba.get_num_threads())


# The running pool's C getter, looked up once (two getattr calls per search otherwise).
_POOL_GETTER = [None]


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
