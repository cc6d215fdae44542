import numba
import pytest

import numba_ivf


def test_set_and_get_round_trip():
    before = numba_ivf.get_num_threads()
    try:
        numba_ivf.set_num_threads(1)
        assert numba_ivf.get_num_threads() == 1
        numba_ivf.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        assert numba_ivf.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba_ivf.set_num_threads(before)


def test_context_manager_restores_even_on_error():
    before = numba_ivf.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with numba_ivf.threads(1) as n:
            assert n == 1 and numba_ivf.get_num_threads() == 1
            raise RuntimeError("boom")
    assert numba_ivf.get_num_threads() == before


def test_nested_contexts():
    before = numba_ivf.get_num_threads()
    top = numba.config.NUMBA_NUM_THREADS
    with numba_ivf.threads(top):
        with numba_ivf.threads(1):
            assert numba_ivf.get_num_threads() == 1
        assert numba_ivf.get_num_threads() == top
    assert numba_ivf.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, numba.config.NUMBA_NUM_THREADS + 1])
def test_out_of_range_rejected(bad):
    before = numba_ivf.get_num_threads()
    with pytest.raises(ValueError, match=rf"between 1 and .*got {bad}"):
        numba_ivf.set_num_threads(bad)
    with pytest.raises(ValueError, match="between 1 and"):
        with numba_ivf.threads(bad):
            pass
    assert numba_ivf.get_num_threads() == before


@pytest.mark.parametrize("bad", [1.5, "2", True, None])
def test_non_integer_rejected(bad):
    with pytest.raises(TypeError, match="must be an integer"):
        numba_ivf.set_num_threads(bad)


def test_search_results_do_not_depend_on_thread_count():
    import numpy as np
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    index = numba_ivf.IVFFlat(8, 4)
    index.train(x)
    index.add(x)
    ref = index.search(x[:20], 5, nprobe=4)
    with numba_ivf.threads(1):
        one = index.search(x[:20], 5, nprobe=4)
    np.testing.assert_array_equal(ref[1], one[1])
    np.testing.assert_array_equal(ref[0], one[0])


# -- the threading layer ------------------------------------------------------------

import importlib.metadata  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

_LAYER_ENV = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY", "OMP_WAIT_POLICY",
              "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")


def _fresh(code, **env):
    """Run ``code`` in a new interpreter (the layer is fixed per process), with the
    layer variables of this environment removed and ``env`` set; return stdout."""
    full = {k: v for k, v in os.environ.items() if k not in _LAYER_ENV}
    full.update(env)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, text=True,
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout, p.stderr


def _tbb_installed():
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_threading_layer_is_numbas():
    assert numba_ivf.threading_layer() == numba.threading_layer()
    assert numba_ivf.threading_layer() in ("tbb", "omp", "workqueue")


def test_documented_default_layer():
    # docs/threading.md: tbb when the tbb package is installed, else omp, else workqueue.
    out, _ = _fresh("""
        import sys, numba_ivf
        assert "numba" not in sys.modules      # import numba_ivf stays cheap
        print(numba_ivf.threading_layer())
    """)
    if _tbb_installed():
        assert out.split() == ["tbb"]
    else:
        assert out.split()[0] in ("omp", "workqueue")


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_environment_variable_overrides_the_choice(layer):
    out, err = _fresh("import numba_ivf; print(numba_ivf.threading_layer())",
                      NUMBA_THREADING_LAYER=layer)
    if "No threading layer could be loaded" in err:
        pytest.skip(f"Numba's {layer} layer is not available here")
    assert out.split() == [layer]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU OpenMP's variables")
def test_fallback_without_tbb_is_passive_omp():
    # Hide Numba's tbb extension: the fallback is omp with a passive wait policy
    # (GOMP_SPINCOUNT 0), applied for libgomp's start only (not left in os.environ).
    out, err = _fresh("""
        import os, sys
        sys.modules["numba.np.ufunc.tbbpool"] = None
        import numba_ivf
        print(numba_ivf.threading_layer(), os.environ.get("OMP_WAIT_POLICY"))
    """, OMP_DISPLAY_ENV="verbose")
    if out.split()[0] == "workqueue":
        pytest.skip("no OpenMP runtime here: the fallback is workqueue")
    assert out.split() == ["omp", "None"]
    assert "GOMP_SPINCOUNT = '0'" in err


def test_a_wait_policy_the_user_set_is_kept():
    out, err = _fresh("""
        import sys
        sys.modules["numba.np.ufunc.tbbpool"] = None
        import numba_ivf
        print(numba_ivf.threading_layer())
    """, OMP_WAIT_POLICY="active", OMP_DISPLAY_ENV="true")
    if out.split()[0] != "omp":
        pytest.skip("no OpenMP runtime here")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in err


def test_launch_lock_is_free_on_thread_safe_layers():
    if numba_ivf.threading_layer() not in ("tbb", "omp"):
        pytest.skip("the layer in use is not thread-safe")
    from numba_ivf import _threads
    import threading

    def take_and_release():
        got.append(_threads._workqueue_lock.acquire(timeout=5))
        if got[-1]:
            _threads._workqueue_lock.release()

    got = []
    with _threads.launch_lock():
        t = threading.Thread(target=take_and_release)  # not held: another thread gets it
        t.start()
        t.join()
    assert got == [True]


def test_launch_lock_serializes_workqueue_launches():
    # Two Python threads launching parallel kernels at once abort the process on
    # workqueue; inside launch_lock() they take turns.
    out, _ = _fresh("""
        import threading
        import numpy as np
        from numba import njit, prange
        import numba_ivf
        from numba_ivf import _threads

        @njit(parallel=True, nogil=True)
        def tick(a):
            for i in prange(a.shape[0]):
                a[i] += 1.0

        assert numba_ivf.threading_layer() == "workqueue"
        a = np.zeros((2, 64))
        tick(a[0])

        def body(row):
            for _ in range(300):
                with _threads.launch_lock():
                    tick(a[row])

        ts = [threading.Thread(target=body, args=(r,)) for r in range(2)]
        for t in ts: t.start()
        for t in ts: t.join()
        print(a.sum())
    """, NUMBA_THREADING_LAYER="workqueue")
    assert float(out) == 64 * (301 + 300)  # one warm-up call on row 0
