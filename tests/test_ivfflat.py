"""IVFFlat: oracle parity, FAISS parity, path agreement, mutation, persistence, errors."""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import numba_ivf
from numba_ivf.persistence.format import IndexFileError
from tests.naive.search import brute_force

METRICS = ["l2", "ip", "cosine"]
PATHS = ["batch", "list_major", "single"]
D_INT, NLIST = 6, 8


def _int_data(seed, n, d=D_INT):
    # Small integers: every dot product and distance is exact in float32, and ties
    # are plentiful, so ids can be compared exactly against the oracle.
    return np.random.default_rng(seed).integers(-2, 3, size=(n, d)).astype(np.float32)


@pytest.fixture(scope="session", params=METRICS)
def int_index(request):
    metric = request.param
    x = _int_data(1, 500)
    index = numba_ivf.IVFFlat(D_INT, NLIST, metric, n_iter=5, seed=0)
    index.train(x)
    ids = np.arange(500, dtype=np.int64) * 3 + 11  # not 0..n-1: exercises the id column
    index.add(x, ids)
    return index, x, ids


@pytest.fixture(scope="session", params=METRICS)
def float_index(request):
    metric = request.param
    rng = np.random.default_rng(2)
    x = rng.standard_normal((800, 12)).astype(np.float32)
    index = numba_ivf.IVFFlat(12, 10, metric, n_iter=5, seed=0)
    index.train(x)
    index.add(x)
    return index, x


def _assert_tie_aware(D, I, x, ids, q, metric, k):
    """Distances close to the oracle's, and every returned id really at that distance."""
    Dref, Iref = brute_force(x, ids, q, k, metric)
    np.testing.assert_allclose(D, Dref, rtol=1e-5, atol=1e-5)
    pos = {int(i): j for j, i in enumerate(ids)}
    for qi in range(q.shape[0]):
        valid = I[qi] >= 0
        assert (valid == (Iref[qi] >= 0)).all()
        assert len(set(I[qi][valid].tolist())) == valid.sum()
        own, _ = brute_force(x[[pos[int(i)] for i in I[qi][valid]]], I[qi][valid],
                             q[qi:qi + 1], int(valid.sum()), metric)
        np.testing.assert_allclose(np.sort(own[0]), np.sort(D[qi][valid]), rtol=1e-5,
                                   atol=1e-5)


# -- exactness ------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
def test_full_probe_equals_oracle_exactly(int_index, path):
    index, x, ids = int_index
    q = _int_data(3, 25)
    k = 7
    D, I = index.search(q, k, nprobe=NLIST, path=path)
    Dref, Iref = brute_force(x, ids, q, k, index.metric)
    if index.metric == "cosine":
        # Normalisation rounds, so equal cosines may differ in the last bit.
        _assert_tie_aware(D, I, x, ids, q, "cosine", k)
    else:
        np.testing.assert_array_equal(I, Iref)
        np.testing.assert_array_equal(D, Dref.astype(np.float32))


def test_float_data_matches_oracle_within_tolerance(float_index):
    index, x = float_index
    q = np.random.default_rng(4).standard_normal((15, 12)).astype(np.float32)
    D, I = index.search(q, 5, nprobe=index.nlist)
    _assert_tie_aware(D, I, x, np.arange(len(x)), q, index.metric, 5)


def test_paths_agree_bit_for_bit(float_index):
    index, x = float_index
    q = np.random.default_rng(5).standard_normal((40, 12)).astype(np.float32)
    for nprobe in (1, 3):
        ref = index.search(q, 9, nprobe=nprobe, path="batch")
        for path in ("list_major", "single", "auto"):
            D, I = index.search(q, 9, nprobe=nprobe, path=path)
            np.testing.assert_array_equal(I, ref[1])
            np.testing.assert_array_equal(D, ref[0])


def test_single_path_split_into_parallel_runs(float_index, monkeypatch):
    # Small runs force the parallel single-query kernel (and runs that cut lists).
    import numba_ivf.ivf.flat as flat
    index, x = float_index
    q = np.random.default_rng(15).standard_normal((5, 12)).astype(np.float32)
    ref = index.search(q, 9, nprobe=4, path="batch")
    monkeypatch.setattr(flat, "IVF_SINGLE_MIN_RUN", 7)
    monkeypatch.setattr(flat, "IVF_SINGLE_RUNS_PER_THREAD", 16)
    D, I = index.search(q, 9, nprobe=4, path="single")
    np.testing.assert_array_equal(I, ref[1])
    np.testing.assert_array_equal(D, ref[0])


def test_k_larger_than_index_pads(int_index):
    index, x, ids = int_index
    for path in PATHS:
        D, I = index.search(x[:2], 520, nprobe=NLIST, path=path)
        assert (I[:, :500] >= 0).all() and (I[:, 500:] == -1).all()
        fill = np.inf if index.metric == "l2" else -np.inf
        assert (D[:, 500:] == fill).all()
        assert sorted(I[0, :500].tolist()) == sorted(ids.tolist())


def test_sorted_best_first(float_index):
    index, x = float_index
    D, I = index.search(x[:10], 20, nprobe=2)
    step = np.diff(D, axis=1)
    assert (step >= 0).all() if index.metric == "l2" else (step <= 0).all()


def test_float64_and_noncontiguous_queries(float_index):
    index, x = float_index
    q = np.asfortranarray(x[:6].astype(np.float64))
    D, I = index.search(q, 4, nprobe=3)
    D2, I2 = index.search(np.ascontiguousarray(x[:6]), 4, nprobe=3)
    np.testing.assert_array_equal(I, I2)
    D3, I3 = index.search(x[::-1][-6:][::-1], 4, nprobe=3)  # negative strides
    np.testing.assert_array_equal(I3, I2)
    D1, I1 = index.search(x[0], 4, nprobe=3)  # one 1-D query
    np.testing.assert_array_equal(I1, I2[:1])


def test_nprobe_above_nlist_is_clamped(float_index):
    index, x = float_index
    a = index.search(x[:5], 5, nprobe=index.nlist)
    b = index.search(x[:5], 5, nprobe=10 * index.nlist)
    np.testing.assert_array_equal(a[1], b[1])


def test_same_neighbours_as_faiss_given_same_centroids():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    q = rng.standard_normal((60, 16)).astype(np.float32)
    for metric in ("l2", "ip"):
        ours = numba_ivf.IVFFlat(16, 16, metric, n_iter=5, seed=0)
        ours.train(x)
        ours.add(x)
        fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        quant = faiss.IndexFlatL2(16) if metric == "l2" else faiss.IndexFlatIP(16)
        quant.add(np.array(ours.centroids))
        theirs = faiss.IndexIVFFlat(quant, 16, 16, fm)
        theirs.is_trained = True
        theirs.add(x)
        for nprobe in (1, 4):
            theirs.nprobe = nprobe
            Df, If = theirs.search(q, 10)
            D, I = ours.search(q, 10, nprobe=nprobe)
            # Float rounding may flip a near-tie in the coarse step or the ranking.
            assert (I == If).mean() > 0.99
            same = I == If
            np.testing.assert_allclose(D[same], Df[same], rtol=1e-4, atol=1e-4)


# -- mutation ---------------------------------------------------------------------------

def test_remove_and_reconstruct():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    index = numba_ivf.IVFFlat(8, 6, n_iter=3)
    index.train(x)
    index.add(x[:300])
    index.add(x[300:])  # a second add after training is normal
    gone = rng.choice(600, size=250, replace=False)
    assert index.remove(np.concatenate([gone, [10_000, -5]])) == 250
    assert index.remove(gone[:3]) == 0
    assert len(index) == 350
    for path in PATHS:
        D, I = index.search(x[:50], 400, nprobe=6, path=path)
        assert not np.isin(I, gone).any()
        assert (I >= 0).sum(axis=1).tolist() == [350] * 50
    keep = np.setdiff1d(np.arange(600), gone)
    for i in keep[::37]:
        np.testing.assert_array_equal(index.reconstruct(i), x[i])
    with pytest.raises(KeyError, match=f"id {gone[0]} is not in the index"):
        index.reconstruct(gone[0])
    # Removed ids may be added again.
    index.add(x[gone[:5]], ids=gone[:5])
    np.testing.assert_array_equal(index.reconstruct(gone[0]), x[gone[0]])


def test_many_small_adds_grow_lists():
    rng = np.random.default_rng(9)
    x = _int_data(9, 700)
    index = numba_ivf.IVFFlat(D_INT, 4, n_iter=3)
    index.train(x)
    for s in range(0, 700, 7):
        index.add(x[s:s + 7])
    assert len(index) == 700 and index.list_sizes.sum() == 700
    q = x[rng.choice(700, 10)]
    D, I = index.search(q, 6, nprobe=4)
    Dref, Iref = brute_force(x, np.arange(700), q, 6, "l2")
    np.testing.assert_array_equal(I, Iref)


def test_cosine_reconstruct_is_normalised():
    x = np.random.default_rng(10).standard_normal((100, 5)).astype(np.float32)
    index = numba_ivf.IVFFlat(5, 2, "cosine", n_iter=2)
    index.train(x)
    index.add(x)
    v = index.reconstruct(3)
    np.testing.assert_allclose(v, x[3] / np.linalg.norm(x[3]), rtol=1e-6)


# -- persistence --------------------------------------------------------------------------

@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(float_index, tmp_path, mmap):
    index, x = float_index
    path = tmp_path / "ix.nivf"
    index.save(path)
    loaded = numba_ivf.load(path, mmap=mmap)
    assert type(loaded) is numba_ivf.IVFFlat
    assert (loaded.d, loaded.nlist, loaded.metric, len(loaded)) == \
        (index.d, index.nlist, index.metric, len(index))
    q = x[:20] + 0.01
    for path_ in PATHS:
        a = index.search(q, 5, nprobe=3, path=path_)
        b = loaded.search(q, 5, nprobe=3, path=path_)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    # A loaded (even memory-mapped) index stays mutable; the file is not touched.
    before = path.read_bytes()
    loaded.add(x[:3] * 2)
    assert loaded.remove([0, 1]) == 2 and len(loaded) == len(index) + 1
    assert path.read_bytes() == before
    assert len(numba_ivf.load(path, mmap=mmap)) == len(index)


def test_untrained_round_trip(tmp_path):
    index = numba_ivf.IVFFlat(4, 2, "ip")
    index.save(tmp_path / "u.nivf")
    loaded = numba_ivf.load(tmp_path / "u.nivf")
    assert not loaded.is_trained and loaded.metric == "ip"


def test_corrupted_and_foreign_files_rejected(float_index, tmp_path):
    index, _ = float_index
    path = tmp_path / "ix.nivf"
    index.save(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.nivf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match="bad.nivf"):
        numba_ivf.load(bad)
    short = tmp_path / "short.nivf"
    short.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IndexFileError, match="short.nivf"):
        numba_ivf.load(short)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(IndexFileError, match="x.npy"):
        numba_ivf.load(npy)
    with pytest.raises(IndexFileError, match="no such file"):
        numba_ivf.load(tmp_path / "missing.nivf")


def test_unknown_kind_rejected(tmp_path):
    from numba_ivf.persistence.format import write_index_file
    write_index_file(tmp_path / "k.nivf", "Banana", {}, {})
    with pytest.raises(IndexFileError, match="'Banana'"):
        numba_ivf.load(tmp_path / "k.nivf")


# -- input handling -------------------------------------------------------------------------

def test_errors_before_training():
    index = numba_ivf.IVFFlat(4, 2)
    for call in (lambda: index.add(np.zeros((1, 4))), lambda: index.search(np.zeros((1, 4)), 1)):
        with pytest.raises(RuntimeError, match="not trained; call train"):
            call()
    with pytest.raises(ValueError, match="x has 1 rows, but training IVFFlat\\(nlist=2\\)"):
        index.train(np.zeros((1, 4)))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(d=0, nlist=2), ValueError, "d must be >= 1; got 0"),
    (dict(d=4, nlist=0), ValueError, "nlist must be >= 1; got 0"),
    (dict(d=4, nlist=2, metric="hamming"), ValueError, "metric must be one of"),
    (dict(d=4.0, nlist=2), TypeError, "d must be an integer"),
])
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        numba_ivf.IVFFlat(**kwargs)


def test_search_argument_errors(float_index):
    index, x = float_index
    q = x[:2]
    cases = [
        (dict(q=x[:2, :5], k=1), ValueError, "q has 5 features, but IVFFlat\\(d=12\\) expects 12"),
        (dict(q=np.full((1, 12), np.nan), k=1), ValueError, "q contains NaN or infinity"),
        (dict(q=np.full((1, 12), np.inf), k=1), ValueError, "q contains NaN or infinity"),
        (dict(q=q, k=0), ValueError, "k must be >= 1; got 0"),
        (dict(q=q, k=2.5), TypeError, "k must be an integer"),
        (dict(q=q, k=1, nprobe=0), ValueError, "nprobe must be >= 1; got 0"),
        (dict(q=q, k=1, path="fast"), ValueError, "path must be one of"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            index.search(**kwargs)


def test_rejected_add_leaves_index_unchanged():
    x = _int_data(12, 200)
    index = numba_ivf.IVFFlat(D_INT, 3, n_iter=2)
    index.train(x)
    index.add(x[:100], ids=np.arange(100))
    before = index.search(x[:10], 5, nprobe=3)
    cases = [
        (dict(x=x[:3], ids=[1, 2]), ValueError, r"ids must have shape \(3,\).*got shape \(2,\)"),
        (dict(x=x[:2], ids=[500, 500]), ValueError, "ids must be unique; 500 appears"),
        (dict(x=x[:2], ids=[500, -1]), ValueError, "ids must be >= 0; got -1"),
        (dict(x=x[:2], ids=[500, 5]), ValueError, "id 5 \\(position 1\\) is"),
        (dict(x=x[:2], ids=[1.0, 2.0]), TypeError, "ids must be integers"),
        (dict(x=x[:2, :3]), ValueError, "x has 3 features, but IVFFlat\\(d=6\\) expects 6"),
        (dict(x=np.where(x[:2] > 0, np.nan, x[:2])), ValueError, "x contains NaN"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            index.add(**kwargs)
    assert len(index) == 100
    after = index.search(x[:10], 5, nprobe=3)
    np.testing.assert_array_equal(before[1], after[1])
    index.add(x[100:102])  # default ids continue after the largest id
    assert index.reconstruct(100) is not None and index.reconstruct(101) is not None


def test_empty_inputs():
    x = _int_data(13, 50)
    index = numba_ivf.IVFFlat(D_INT, 2, n_iter=2)
    index.train(x)
    D, I = index.search(x[:3], 4)
    assert (I == -1).all() and np.isinf(D).all()
    index.add(x[:0])
    assert len(index) == 0
    assert index.remove([]) == 0
    D, I = index.search(np.zeros((0, D_INT)), 3)
    assert D.shape == (0, 3) and I.shape == (0, 3)


# -- stateful: add / remove / search against a dict-of-vectors model ---------------------------

class IVFModel(RuleBasedStateMachine):
    """Any sequence of adds and removes; full-probe search equals brute force over a dict."""

    @initialize()
    def setup(self):
        self.rng = np.random.default_rng(14)
        self.index = numba_ivf.IVFFlat(4, 3, n_iter=2, seed=0)
        self.index.train(self.rng.integers(-3, 4, size=(60, 4)).astype(np.float32))
        self.model = {}

    @rule(n=st.integers(0, 12), explicit=st.booleans())
    def add(self, n, explicit):
        x = self.rng.integers(-3, 4, size=(n, 4)).astype(np.float32)
        if explicit:
            free = np.setdiff1d(np.arange(200), list(self.model))
            ids = self.rng.choice(free, size=n, replace=False)
            self.index.add(x, ids)
        else:
            start = max(self.model, default=-1) + 1
            start = max(start, self.index._next_id)
            ids = np.arange(start, start + n)
            self.index.add(x)
        self.model.update({int(i): v for i, v in zip(ids, x)})

    @rule(n=st.integers(0, 6))
    def remove(self, n):
        pool = list(self.model) + [1000, 1001]
        drop = self.rng.choice(pool, size=min(n, len(pool)), replace=False)
        expect = sum(int(i) in self.model for i in drop)
        assert self.index.remove(drop) == expect
        for i in drop:
            self.model.pop(int(i), None)

    @invariant()
    def search_matches_model(self):
        assert len(self.index) == len(self.model)
        if not self.model:
            return
        ids = np.array(sorted(self.model))
        x = np.stack([self.model[i] for i in ids])
        q = self.rng.integers(-3, 4, size=(3, 4)).astype(np.float32)
        k = 5
        Dref, Iref = brute_force(x, ids, q, k, "l2")
        path = ("batch", "list_major", "single")[len(self.model) % 3]
        D, I = self.index.search(q, k, nprobe=3, path=path)
        np.testing.assert_array_equal(I, Iref)
        some = ids[len(ids) // 2]
        np.testing.assert_array_equal(self.index.reconstruct(some), self.model[some])


TestIVFModel = IVFModel.TestCase
TestIVFModel.settings = settings(max_examples=25, stateful_step_count=15, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow])


# -- one query per call: the fused fast path ----------------------------------------------

@pytest.fixture
def count_fast_calls(monkeypatch):
    """Counts calls of the fused one-query kernel (so a test knows the path was taken)."""
    from numba_ivf.kernels.scan import list_scan
    calls = []
    real = list_scan.search_one

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(list_scan, "search_one", counting)
    return calls


def test_one_query_fast_path_equals_batch_bit_for_bit(float_index, count_fast_calls):
    index, _ = float_index
    rng = np.random.default_rng(16)
    q = rng.standard_normal((30, 12)).astype(np.float32)
    for nprobe, k in ((1, 5), (3, 9), (index.nlist, 1), (10 * index.nlist, 7)):
        for i in range(q.shape[0]):
            ref = index.search(q[i:i + 1], k, nprobe=nprobe, path="batch")
            for row in (q[i], q[i:i + 1], q[i].astype(np.float64)):
                D, I = index.search(row, k, nprobe=nprobe)
                assert D.shape == I.shape == (1, k)
                np.testing.assert_array_equal(I, ref[1])
                np.testing.assert_array_equal(D, ref[0])
    assert len(count_fast_calls) == 4 * 30 * 3


def test_one_query_exact_against_oracle_with_ties_and_padding(int_index,
                                                              count_fast_calls):
    index, x, ids = int_index
    q = _int_data(17, 12)
    for i in range(q.shape[0]):
        D, I = index.search(q[i], 7, nprobe=NLIST)
        Dref, Iref = brute_force(x, ids, q[i:i + 1], 7, index.metric)
        if index.metric == "cosine":
            _assert_tie_aware(D, I, x, ids, q[i:i + 1], "cosine", 7)
        else:
            np.testing.assert_array_equal(I, Iref)
            np.testing.assert_array_equal(D, Dref.astype(np.float32))
    D, I = index.search(q[0], 520, nprobe=NLIST)   # k above the index size: padded
    assert (I[0, :500] >= 0).all() and (I[0, 500:] == -1).all()
    assert (D[0, 500:] == (np.inf if index.metric == "l2" else -np.inf)).all()
    assert len(count_fast_calls) == q.shape[0] + 1


def test_one_query_probes_the_nearest_centroids(float_index, count_fast_calls):
    # The fused coarse GEMV picks the oracle's nprobe nearest lists: searching one query
    # equals brute force over exactly the vectors of those lists.
    index, x = float_index
    cent = np.array(index.centroids, dtype=np.float64)
    coarse_metric = "l2" if index.metric == "l2" else "ip"
    _, labels = brute_force(cent, np.arange(index.nlist), x, 1, coarse_metric)
    q = np.random.default_rng(18).standard_normal((10, 12)).astype(np.float32)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True) if index.metric == "cosine" else q
    for i in range(q.shape[0]):
        _, lists = brute_force(cent, np.arange(index.nlist), qn[i:i + 1], 3,
                               coarse_metric)
        member = np.flatnonzero(np.isin(labels[:, 0], lists[0]))
        D, I = index.search(q[i], 6, nprobe=3)
        Dref, Iref = brute_force(x[member], member, q[i:i + 1], 6, index.metric)
        np.testing.assert_array_equal(I, Iref)
        np.testing.assert_allclose(D, Dref, rtol=1e-5, atol=1e-5)
    assert len(count_fast_calls) == q.shape[0]


def test_one_query_split_over_threads_agrees(float_index, monkeypatch):
    # Tiny runs force the parallel branch of the fused kernel (runs that cut lists).
    import numba_ivf.ivf.flat as flat
    index, _ = float_index
    q = np.random.default_rng(19).standard_normal((8, 12)).astype(np.float32)
    refs = [index.search(q[i:i + 1], 9, nprobe=4, path="batch") for i in range(8)]
    monkeypatch.setattr(flat, "IVF_ONE_QUERY_MIN_RUN", 1)
    monkeypatch.setattr(flat, "IVF_SINGLE_RUNS_PER_THREAD", 8)
    for i in range(8):
        D, I = index.search(q[i], 9, nprobe=4)
        np.testing.assert_array_equal(I, refs[i][1])
        np.testing.assert_array_equal(D, refs[i][0])


def test_one_query_errors_and_unusual_inputs_take_the_general_path(float_index,
                                                                   count_fast_calls):
    index, x = float_index
    row = np.array(x[3])
    row[5] = np.nan
    with pytest.raises(ValueError, match="q contains NaN or infinity"):
        index.search(row, 3)
    assert len(count_fast_calls) == 1  # the kernel saw the NaN and declined
    with pytest.raises(ValueError, match="q has 11 features, but IVFFlat\\(d=12\\)"):
        index.search(x[3, :11], 3)
    with pytest.raises(ValueError, match="k must be >= 1; got 0"):
        index.search(x[3], 0)
    with pytest.raises(TypeError, match="nprobe must be an integer"):
        index.search(x[3], 3, nprobe=1.5)
    ref = index.search(x[3:4], 4, nprobe=2, path="batch")
    strided = np.stack([x[3], x[3]], axis=1)[:, 0]
    assert not strided.flags.c_contiguous
    for q in (strided, x[3].tolist(), x[3:4].astype(np.float16)):
        _, I = index.search(q, 4, nprobe=2)     # strided, list, float16: general path
        np.testing.assert_array_equal(I, ref[1])
    _, I = index.search(x[3], np.int64(4), nprobe=np.int32(2))   # numpy ints too
    np.testing.assert_array_equal(I, ref[1])
    assert len(count_fast_calls) == 1
