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
