"""Stateful property test: any sequence of add / remove / search / save / load, on every
index kind, against a brute-force model of what the index holds.

The model is a dict id -> vector. With nprobe = nlist a search is exhaustive, so:
IVFFlat and 4-bit + refine (with k_factor * k >= ntotal) must return exactly the brute
force over the model; 8-bit PQ must return the brute force over its own decoded vectors
(``reconstruct``), which is what asymmetric distances measure. Searches with a smaller
nprobe must still return well-formed rows of ids the model holds. Training is done once
per kind (the same trained file is loaded at the start of every run).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

import numba_ivf

pytestmark = pytest.mark.filterwarnings("ignore:KMeans. sampling")

D = 8
NLIST = 4
POOL = 400          # vectors the runs draw from; id i (default ids aside) is row i
KINDS = {
    "flat": lambda: numba_ivf.IVFFlat(D, NLIST),
    "pq8": lambda: numba_ivf.IVFPQ(D, NLIST, m=4, nbits=8),
    "pq4r": lambda: numba_ivf.IVFPQ(D, NLIST, m=4, nbits=4, refine=True),
    "rq4r": lambda: numba_ivf.IVFRaBitQ(D, NLIST, bits=4, refine=True),
}

_RNG = np.random.default_rng(3)
_X = (_RNG.standard_normal((POOL, D)) * 2).astype(np.float32)
_Q = (_RNG.standard_normal((6, D)) * 2).astype(np.float32)


@pytest.fixture(scope="module")
def trained_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    train = (np.random.default_rng(4).standard_normal((1500, D)) * 2).astype(np.float32)
    paths = {}
    for kind, make in KINDS.items():
        index = make()
        index.train(train)
        paths[kind] = folder / f"{kind}.nivf"
        index.save(paths[kind])
    return paths


def _brute(q, ids, vecs, k):
    if not len(ids):
        return np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1)
    dist = ((q[:, None, :].astype(np.float64) - vecs[None].astype(np.float64)) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(ids, dist.shape), dist), axis=1)[:, :k]
    out_d = np.take_along_axis(dist, order, 1)
    out_i = ids[order]
    pad = k - out_i.shape[1]
    if pad > 0:
        out_d = np.hstack([out_d, np.full((len(q), pad), np.inf)])
        out_i = np.hstack([out_i, np.full((len(q), pad), -1)])
    return out_d, out_i


def make_machine(kind, path, tmp):
    class IndexMachine(RuleBasedStateMachine):
        @initialize()
        def start(self):
            self.index = numba_ivf.load(path)
            self.model = {}       # id -> vector
            self.next_default = 0
            self.saves = 0

        # -- mutations ------------------------------------------------------------
        @rule(rows=st.lists(st.integers(0, POOL - 1), min_size=0, max_size=60,
                            unique=True))
        def add_explicit(self, rows):
            rows = [r for r in rows if r not in self.model]
            ids = np.array(rows, dtype=np.int64)
            self.index.add(_X[rows], ids=ids)
            for r in rows:
                self.model[r] = _X[r]
            if rows:
                self.next_default = max(self.next_default, max(rows) + 1)

        @rule(n=st.integers(0, 30))
        def add_default(self, n):
            start = self.next_default
            if any(i in self.model for i in range(start, start + n)):
                return
            rows = np.arange(n) % POOL
            self.index.add(_X[rows])
            for j in range(n):
                self.model[start + j] = _X[rows[j]]
            self.next_default = start + n

        @rule(data=st.data())
        def add_duplicate_refused(self, data):
            if not self.model:
                return
            dup = data.draw(st.sampled_from(sorted(self.model)))
            with pytest.raises(ValueError, match="must not already be in the index"):
                self.index.add(_X[:1], ids=np.array([dup]))

        @rule(data=st.data(), extra=st.lists(st.integers(-3, 2 * POOL), max_size=5))
        def remove(self, data, extra):
            present = sorted(self.model)
            gone = data.draw(st.lists(st.sampled_from(present), unique=True,
                                      max_size=len(present))) if present else []
            ask = np.array(gone + extra, dtype=np.int64)
            expect = len(set(gone + extra) & set(self.model))
            assert self.index.remove(ask) == expect
            for i in set(gone + extra):
                self.model.pop(i, None)

        @rule(mmap=st.booleans())
        def save_load(self, mmap):
            p = tmp / f"{kind}-{self.saves}.nivf"
            self.saves += 1
            self.index.save(p)
            self.index = numba_ivf.load(p, mmap=mmap)

        # -- searches -------------------------------------------------------------
        def _truth(self, q, k):
            ids = np.array(sorted(self.model), dtype=np.int64)
            if kind == "pq8":
                vecs = np.array([self.index.reconstruct(int(i)) for i in ids]).reshape(-1, D)
            else:
                vecs = np.array([self.model[int(i)] for i in ids]).reshape(-1, D)
            return _brute(q, ids, vecs, k), dict(zip(ids.tolist(), vecs))

        @rule(k=st.integers(1, 12), nq=st.integers(1, len(_Q)))
        def search_exhaustive(self, k, nq):
            q = _Q[:nq]
            kw = {"k_factor": max(1, -(-max(len(self.model), 1) // k))} \
                if kind in ("pq4r", "rq4r") else {}
            d, ids = self.index.search(q, k, nprobe=NLIST, **kw)
            (want_d, want_i), vec_of = self._truth(q, k)
            assert ids.shape == (nq, k)
            np.testing.assert_array_equal(ids == -1, want_i == -1)
            np.testing.assert_allclose(d[ids >= 0], want_d[want_i >= 0], rtol=1e-3,
                                       atol=1e-3)
            # Each returned id is at its reported distance (near ties may swap ids).
            for r in range(nq):
                for j in np.flatnonzero(ids[r] >= 0):
                    v = vec_of[int(ids[r, j])]
                    true = float(((q[r].astype(np.float64) - v) ** 2).sum())
                    assert abs(true - d[r, j]) <= 1e-3 * max(1.0, true)
            # One query alone (the fused one-query kernel) gives exactly what a (1, d)
            # batch gives. Larger batches may round the coarse scores differently (the
            # tiled kernel), which by-residual PQ tables inherit.
            d1, i1 = self.index.search(q[0], k, nprobe=NLIST, **kw)
            db, ib = self.index.search(q[:1], k, nprobe=NLIST, path="batch", **kw)
            np.testing.assert_array_equal(i1, ib)
            np.testing.assert_array_equal(d1, db)

        @rule(k=st.integers(1, 8), nprobe=st.integers(1, NLIST))
        def search_probed(self, k, nprobe):
            d, ids = self.index.search(_Q, k, nprobe=nprobe)
            for r in range(len(_Q)):
                valid = ids[r][ids[r] >= 0]
                assert (ids[r][:len(valid)] >= 0).all()
                assert len(set(valid.tolist())) == len(valid)
                assert set(valid.tolist()) <= set(self.model)
                assert np.all(np.diff(d[r, :len(valid)]) >= 0)
            if len(self.model) >= k and nprobe == NLIST:
                assert (ids >= 0).all()

        @precondition(lambda self: kind == "flat" and self.model)
        @rule(data=st.data())
        def reconstruct(self, data):
            i = data.draw(st.sampled_from(sorted(self.model)))
            np.testing.assert_array_equal(self.index.reconstruct(i), self.model[i])

        @invariant()
        def size(self):
            assert len(self.index) == len(self.model)

    return IndexMachine


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_index_state_machine(kind, trained_files, tmp_path):
    machine = make_machine(kind, trained_files[kind], tmp_path)
    machine.TestCase.settings = settings(max_examples=12, stateful_step_count=12,
                                         deadline=None,
                                         suppress_health_check=list(HealthCheck))
    machine.TestCase().runTest()
