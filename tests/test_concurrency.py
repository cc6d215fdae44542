"""Several Python threads on one index: searches together, mutations while searching.

Every index kind is covered: IVFFlat, IVFPQ 8-bit, IVFPQ 4-bit + refine. The stress
tests are bounded in time and check every row a search returns: ids are ones that
were added (never garbage, never the sentinel), unique within the row, distances sorted
and, where the index keeps the vectors, equal to the exact distance to that id's vector.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import numba_ivf
from numba_ivf.ivf._rwlock import RWLock
from numba_ivf.ivf.base import MAX_ID

D = 16
NLIST = 8
K = 5

KINDS = {
    "flat": lambda: numba_ivf.IVFFlat(D, NLIST),
    "pq8": lambda: numba_ivf.IVFPQ(D, NLIST, m=4, nbits=8),
    "pq4r": lambda: numba_ivf.IVFPQ(D, NLIST, m=8, nbits=4, refine=True),
    "rq4r": lambda: numba_ivf.IVFRaBitQ(D, NLIST, bits=4, refine=True),
}
EXACT = {"flat", "pq4r", "rq4r"}   # D equals the exact distance to the returned id's vector


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((NLIST, D)).astype(np.float32) * 4
    x = centres[rng.integers(0, NLIST, 6000)] + rng.standard_normal((6000, D)).astype(
        np.float32)
    q = x[rng.choice(6000, 40, replace=False)] + 0.1
    return x.astype(np.float32), q.astype(np.float32)


@pytest.fixture(scope="module", params=sorted(KINDS))
def trained(request, data):
    x, _ = data
    index = KINDS[request.param]()
    index.train(x[:2000])
    return request.param, index


def _search(index, q, kind, **kw):
    if kind in ("pq4r", "rq4r"):
        kw.setdefault("k_factor", 4)
    return index.search(q, K, nprobe=3, **kw)


def _run_threads(targets, seconds, done=lambda: True, max_seconds=30):
    """Run each ``target(stop_event)`` in a thread of its own for at least ``seconds``,
    then until ``done()`` (at most ``max_seconds``); re-raise the first error."""
    stop = threading.Event()
    errors = []

    def body(target):
        try:
            target(stop)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=body, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    while not stop.is_set() and time.perf_counter() - t0 < max_seconds and (
            time.perf_counter() - t0 < seconds or not done()):
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a thread did not stop within 60 s (deadlock?)"
    if errors:
        raise errors[0]


def test_concurrent_searches_equal_serial(trained, data):
    kind, index = trained
    x, q = data
    index.add(x[:3000], ids=np.arange(3000))
    try:
        want = [_search(index, q[i:i + 1], kind) for i in range(len(q))]
        want_batch = _search(index, q, kind)

        def body(stop):
            rng = np.random.default_rng(threading.get_ident() % 2**32)
            with numba_ivf.threads(1):
                while not stop.is_set():
                    i = int(rng.integers(len(q)))
                    d, ids = _search(index, q[i:i + 1], kind)
                    np.testing.assert_array_equal(ids, want[i][1])
                    np.testing.assert_array_equal(d, want[i][0])
                    if rng.random() < 0.05:
                        d, ids = _search(index, q, kind)
                        np.testing.assert_array_equal(ids, want_batch[1])

        _run_threads([body] * 4, 1.5)
    finally:
        index.remove(np.arange(3000))


def _check_rows(kind, x_by_id, q, d, ids, ever_added):
    assert ids.shape == (len(q), K) and d.shape == (len(q), K)
    for r in range(len(q)):
        row = ids[r]
        valid = row[row >= 0]
        # Results fill from the front; missing ones only at the end.
        assert (row[:len(valid)] >= 0).all(), row
        assert len(np.unique(valid)) == len(valid), f"duplicate ids {row}"
        assert np.isin(valid, ever_added).all(), f"ids never added: {row}"
        dv = d[r, :len(valid)]
        assert np.all(np.diff(dv) >= 0), dv
        assert np.isinf(d[r, len(valid):]).all()
        if kind in EXACT and len(valid):
            exact = ((x_by_id[valid] - q[r]) ** 2).sum(1)
            np.testing.assert_allclose(dv, exact, rtol=1e-4, atol=1e-3)


def test_mutation_during_search_rows_well_formed(trained, data):
    """A writer adds and removes batches while readers search; no row is ever a mix."""
    kind, index = trained
    x, q = data
    n = len(x)
    ever = np.arange(n)              # ids are row numbers of x
    index.add(x[:1000], ids=np.arange(1000))
    # Compile every kernel first, so the timed phase mutates and searches.
    index.add(x[1000:1200], ids=np.arange(1000, 1200))
    index.remove(np.arange(1000, 1150))
    for nq in (1, 3, 40):
        _search(index, q[:nq], kind)
    index.remove(np.arange(1150, 1200))
    counts = {"searches": 0, "mutations": 0}

    def writer(stop):
        rng = np.random.default_rng(5)
        present = set(range(1000))
        while not stop.is_set():
            if len(present) < 3000 and rng.random() < 0.6:
                new = rng.choice(np.setdiff1d(ever, list(present)), 200, replace=False)
                index.add(x[new], ids=new)
                present.update(new.tolist())
            else:
                gone = rng.choice(list(present), 150, replace=False)
                assert index.remove(gone) == 150
                present.difference_update(gone.tolist())
            counts["mutations"] += 1
            assert len(index) == len(present)

    def reader(stop):
        rng = np.random.default_rng(threading.get_ident() % 2**32)
        while not stop.is_set():
            nq = int(rng.choice([1, 1, 3, 40]))
            qq = q[rng.choice(len(q), nq, replace=False)]
            d, ids = _search(index, qq, kind)
            _check_rows(kind, x, qq, d, ids, ever)
            counts["searches"] += 1

    # At least 2 s and enough of both kinds of call, at most 30 s.
    try:
        _run_threads([writer] + [reader] * 3, 2.0,
                     done=lambda: counts["mutations"] >= 10 and counts["searches"] >= 50)
    finally:
        index.remove(ever)
    assert counts["mutations"] >= 10 and counts["searches"] >= 50, counts


def test_save_while_searching(trained, data, tmp_path):
    kind, index = trained
    x, q = data
    index.add(x[:500], ids=np.arange(500))
    try:
        want = _search(index, q, kind)

        def body(stop):
            while not stop.is_set():
                d, ids = _search(index, q, kind)
                np.testing.assert_array_equal(ids, want[1])

        t = threading.Thread(target=_run_threads, args=([body] * 2, 1.0))
        t.start()
        for i in range(3):
            index.save(tmp_path / f"i{i}.nivf")
        t.join(timeout=60)
        back = numba_ivf.load(tmp_path / "i2.nivf")
        np.testing.assert_array_equal(_search(back, q, kind)[1], want[1])
    finally:
        index.remove(np.arange(500))


# -- the lock itself -------------------------------------------------------------------
def test_rwlock_writer_excludes_readers_and_is_preferred():
    lock = RWLock()
    log = []
    lock.acquire_read()
    writer_in = threading.Event()

    def writer():
        with lock.write():
            writer_in.set()
            log.append("w")

    def late_reader():
        with lock.read():
            log.append("r")

    tw = threading.Thread(target=writer)
    tw.start()
    time.sleep(0.05)
    assert not writer_in.is_set()          # the first reader still holds it
    tr = threading.Thread(target=late_reader)
    tr.start()
    time.sleep(0.05)
    assert log == []                       # the late reader queues behind the writer
    lock.release_read()
    tw.join(5)
    tr.join(5)
    assert log == ["w", "r"]


def test_rwlock_readers_share():
    lock = RWLock()
    inside = threading.Barrier(3, timeout=5)

    def reader():
        with lock.read():
            inside.wait()       # all three readers are inside at once

    ts = [threading.Thread(target=reader) for _ in range(2)]
    for t in ts:
        t.start()
    with lock.read():
        inside.wait()
    for t in ts:
        t.join(5)
    with lock.write():          # released fully
        pass


def test_ids_limits(data):
    x, _ = data
    index = numba_ivf.IVFFlat(D, NLIST)
    index.train(x[:2000])
    top = MAX_ID
    assert top == 2**63 - 2
    with pytest.raises(ValueError, match="at most 9223372036854775806"):
        index.add(x[:1], ids=np.array([2**63 - 1]))
    with pytest.raises(ValueError, match="at most"):
        index.add(x[:1], ids=np.array([2**64 - 1], dtype=np.uint64))
    assert len(index) == 0
    index.add(x[:1], ids=np.array([top]))
    assert index.search(x[:1], 1, nprobe=NLIST)[1][0, 0] == top
    with pytest.raises(OverflowError, match="pass ids= explicitly"):
        index.add(x[1:3])
    assert len(index) == 1
    index.add(x[1:3], ids=np.array([0, 1]))
    assert len(index) == 3
    assert index.remove(np.array([2**63 - 1, top])) == 1


def test_empty_batch_with_refine_has_k_columns(data):
    x, _ = data
    index = numba_ivf.IVFPQ(D, NLIST, m=8, nbits=4, refine=True)
    index.train(x[:2000])
    index.add(x[:100], ids=np.arange(100))
    d, ids = index.search(np.zeros((0, D), np.float32), 5, k_factor=8)
    assert d.shape == (0, 5) and ids.shape == (0, 5)


def test_deepcopy_and_pickle_get_their_own_lock(trained, data):
    import copy
    import pickle
    kind, index = trained
    x, q = data
    index.add(x[:300], ids=np.arange(300))
    try:
        want = _search(index, q, kind)
        for clone in (copy.deepcopy(index), pickle.loads(pickle.dumps(index))):
            assert clone._rw is not index._rw
            np.testing.assert_array_equal(_search(clone, q, kind)[1], want[1])
            clone.remove(np.arange(300))
            assert len(clone) == 0 and len(index) == 300
    finally:
        index.remove(np.arange(300))
