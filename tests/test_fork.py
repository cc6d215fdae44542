"""Worker processes: a forked child searches the parent's index; a spawn Pool loads it.

Every wait is bounded, so a child killed by its threading layer, or a Pool that hangs
on a dead worker, fails the test instead of blocking the run.
"""

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numba_ivf
from numba_ivf import _threads

TIMEOUT_S = 120
K = 5

needs_fork = pytest.mark.skipif(
    not hasattr(os, "fork") or "fork" not in mp.get_all_start_methods(),
    reason="this platform has no fork()")


@pytest.fixture(scope="module")
def searched():
    """A tiny index, built and searched (so the thread pool has started) in this
    process: (index, queries, distances, ids)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    index = numba_ivf.IVFFlat(8, 4)
    index.train(x)
    index.add(x)
    q = x[:24] + np.float32(0.01)
    D, I = index.search(q, K, nprobe=2)
    index.search(q[:1], K, nprobe=2)  # the one-query kernel too
    return index, q, D, I


def _layer_is_fork_safe():
    if numba_ivf.threading_layer() != "omp":
        return True
    from numba.np.ufunc import omppool
    return omppool.openmp_vendor != "GNU"


# Functions a Pool runs: module level so that they pickle by name.
_STATE = {}


def _search_rows(rows):
    index, q = _STATE["index"], _STATE["q"]
    return index.search(q[rows], K, nprobe=2)


def _load_index(path):
    _STATE["index"] = numba_ivf.load(path, mmap=True)


def _search_given(q):
    return _STATE["index"].search(q, K, nprobe=2)


def _child(conn, index, q):
    try:
        conn.send(("ok", index.search(q, K, nprobe=2)))
    except Exception as e:  # sent to the parent, which asserts on it
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def _run_forked_child(index, q):
    """Search in a forked child; return ("ok", (D, I)) or ("error", message)."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, index, q))
    p.start()
    send.close()
    try:
        if not recv.poll(TIMEOUT_S):
            pytest.fail(f"the forked child sent nothing in {TIMEOUT_S} s "
                        f"(exit code {p.exitcode}: killed by its threading layer?)")
        return recv.recv()
    finally:
        p.join(TIMEOUT_S)
        if p.is_alive():
            p.kill()
            p.join()


@needs_fork
def test_forked_child_gets_the_parents_results(searched):
    index, q, D, I = searched
    if not _layer_is_fork_safe():
        pytest.skip("GNU OpenMP layer: a forked child cannot launch kernels "
                    "(test_check_fork_safe_raises_in_a_child_of_gnu_omp)")
    status, got = _run_forked_child(index, q)
    assert status == "ok", got
    np.testing.assert_array_equal(got[1], I)
    np.testing.assert_array_equal(got[0], D)


@needs_fork
def test_fork_pool_gets_the_parents_results(searched):
    index, q, D, I = searched
    if not _layer_is_fork_safe():
        pytest.skip("GNU OpenMP layer: forked workers cannot launch kernels")
    _STATE.update(index=index, q=q)
    chunks = np.array_split(np.arange(len(q)), 3)
    with mp.get_context("fork").Pool(2) as pool:
        parts = pool.map_async(_search_rows, chunks).get(timeout=TIMEOUT_S)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), I)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), D)


def test_spawn_pool_loads_by_mmap_and_matches(searched, tmp_path):
    index, q, D, I = searched
    path = str(tmp_path / "tiny.nivf")
    index.save(path)
    chunks = np.array_split(q, 2)
    with mp.get_context("spawn").Pool(2, initializer=_load_index, initargs=(path,)) as pool:
        parts = pool.map_async(_search_given, chunks).get(timeout=TIMEOUT_S)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), I)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), D)


def test_check_fork_safe_is_silent_outside_such_a_child():
    _threads.check_fork_safe()


def test_check_fork_safe_raises_when_flagged(monkeypatch):
    monkeypatch.setattr(_threads, "_forked_after_gnu_omp", True)
    with pytest.raises(RuntimeError, match=r"forked from a process .*'omp'.*'spawn'"):
        _threads.check_fork_safe()
    with pytest.raises(RuntimeError, match="not fork-safe"):
        with _threads.launch_lock():
            pass


_GNU_OMP_CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    import numba_ivf
    from numba_ivf import _threads
    from numba.np.ufunc import omppool
    assert numba_ivf.threading_layer() == "omp", numba_ivf.threading_layer()
    if omppool.openmp_vendor != "GNU":
        print("NOT-GNU"); sys.exit(0)
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    index = numba_ivf.IVFFlat(8, 4)
    index.train(x); index.add(x); index.search(x[:3], 2)
    pid = os.fork()
    if pid == 0:
        try:
            index.search(x[:3], 2)     # the index's wrapper checks before any kernel
        except RuntimeError as e:
            os._exit(0 if "spawn" in str(e) else 2)
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    _threads.check_fork_safe()  # the parent is unaffected
    print("CHILD", os.waitstatus_to_exitcode(status))
""")


@needs_fork
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU OpenMP is Linux's")
def test_check_fork_safe_raises_in_a_child_of_gnu_omp():
    env = {**os.environ, "NUMBA_THREADING_LAYER": "omp"}
    p = subprocess.run([sys.executable, "-c", _GNU_OMP_CHILD], env=env, text=True,
                       capture_output=True, timeout=TIMEOUT_S)
    if "No threading layer could be loaded" in p.stderr:
        pytest.skip("Numba's omp layer is not available here")
    assert p.returncode == 0, p.stderr
    if "NOT-GNU" in p.stdout:
        pytest.skip("this OpenMP runtime is fork-safe")
    assert "CHILD 0" in p.stdout, p.stdout + p.stderr
