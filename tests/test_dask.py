"""ShardedIVF on a LocalCluster of 2 worker processes: results equal the single index.

The oracle of a sharded index is the single index holding the same vectors with the
same parameters (itself tested against the numpy oracles in tests/naive): D and I must
be equal, not close. One cluster per session (starting one costs seconds; its workers
load the kernels from Numba's on-disk cache the earlier tests filled).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import numba_ivf  # noqa: E402
from numba_ivf import IDFilter  # noqa: E402
from numba_ivf.dask import ShardedIVF, ShardLostError, balance  # noqa: E402
from numba_ivf.persistence.format import IndexFileError  # noqa: E402

D = 16
NLIST = 24


@pytest.fixture(scope="session")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="session")
def data():
    """Clustered rows with exact duplicates (ties in every key, broken by id)."""
    rng = np.random.default_rng(12)
    centres = rng.standard_normal((30, D)).astype(np.float32) * 4
    x = centres[rng.integers(0, 30, 5000)] + rng.standard_normal((5000, D))
    x = x.astype(np.float32)
    x[4000:4300] = x[:300]            # duplicates
    q = (x[rng.integers(0, 5000, 60)] + 0.2 * rng.standard_normal((60, D))).astype(
        np.float32)
    q[:5] = x[:5]                     # queries on top of duplicated rows
    return x, q


KINDS = {
    "flat": lambda: numba_ivf.IVFFlat(D, NLIST),
    "flat-cos": lambda: numba_ivf.IVFFlat(D, NLIST, metric="cosine"),
    "pq8": lambda: numba_ivf.IVFPQ(D, NLIST, m=8, nbits=8),
    "pq4-refine": lambda: numba_ivf.IVFPQ(D, NLIST, m=8, nbits=4, refine=True),
    "pq4": lambda: numba_ivf.IVFPQ(D, NLIST, m=8, nbits=4),
    "pq4-ip": lambda: numba_ivf.IVFPQ(D, NLIST, m=8, nbits=4, metric="ip"),
}


@pytest.fixture(scope="session")
def built(client, data):
    """kind -> (single index, sharded index), both holding x with default ids."""
    x, _ = data
    out = {}
    for name, make in KINDS.items():
        single = make()
        single.train(x)
        single.add(x)
        sharded = ShardedIVF(make(), client)
        sharded.train(x)
        sharded.add(x)
        out[name] = (single, sharded)
    yield out
    for _, sh in out.values():
        sh.close()


def _kw(index):
    return {"k_factor": 3} if getattr(index, "refine", False) else {}


def assert_same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def _rounds(kinds):
    """(kind, rounds) pairs: re-ranked batches in one round (each shard re-ranks its
    own candidates) and in two (only the candidates the merge picked)."""
    return [(k, r) for k in kinds for r in ((1, 2) if "refine" in k else (1,))]


@pytest.fixture
def rounds(request, monkeypatch):
    from numba_ivf import _config
    monkeypatch.setattr(_config, "DASK_REFINE_TWO_ROUNDS_MIN_QUERIES",
                        1 << 30 if request.param == 1 else 1)
    return request.param


@pytest.mark.parametrize("kind,rounds", _rounds(KINDS), indirect=["rounds"])
def test_sharded_equals_single(built, data, kind, rounds):
    single, sharded = built[kind]
    _, q = data
    assert len(sharded) == len(single)
    np.testing.assert_array_equal(sharded.list_sizes, single.list_sizes)
    assert (sharded.shard_sizes > 0).all()
    for nprobe in (1, 5, NLIST):
        for k in (1, 7):
            assert_same(sharded.search(q, k, nprobe, **_kw(single)),
                        single.search(q, k, nprobe, **_kw(single)))
    # one query, 1-D and float64
    assert_same(sharded.search(q[3].astype(np.float64), 5, 4, **_kw(single)),
                single.search(q[3], 5, 4, **_kw(single)))


@pytest.mark.parametrize("kind,rounds", _rounds(["flat", "pq8", "pq4-refine", "pq4"]),
                         indirect=["rounds"])
def test_sharded_filtered_equals_single(built, data, kind, rounds):
    single, sharded = built[kind]
    x, q = data
    n = x.shape[0]
    rng = np.random.default_rng(3)
    filters = [
        IDFilter.from_mask(rng.random(n) < 0.3),          # dense
        np.flatnonzero(rng.random(n) < 0.02),             # sparse ids
        np.arange(0, 40),                                 # exact path (few rows)
        IDFilter.range(1000, 3000) & ~IDFilter.from_ids(np.arange(0, n, 7)),
        [IDFilter.range(i * 50, i * 50 + 400) for i in range(q.shape[0])],   # per query
    ]
    for f in filters:
        for nprobe in (1, 4):
            assert_same(sharded.search(q, 6, nprobe, filter=f, **_kw(single)),
                        single.search(q, 6, nprobe, filter=f, **_kw(single)))
    assert_same(sharded.search(q, 5, 2, filter=IDFilter.range(0, 100), min_candidates=50,
                               max_nprobe=6, **_kw(single)),
                single.search(q, 5, 2, filter=IDFilter.range(0, 100), min_candidates=50,
                              max_nprobe=6, **_kw(single)))
    D0, I0 = sharded.search(q, 4, 3, filter=np.zeros(n, dtype=bool), **_kw(single))
    assert (I0 == -1).all()


def test_add_from_dask_array_memmap_and_ids(client, data, tmp_path):
    x, q = data
    single = numba_ivf.IVFPQ(D, NLIST, m=8, nbits=4, refine=True)
    single.train(x)
    ids = np.arange(5000, dtype=np.int64) * 3 + 11
    single.add(x[:2000], ids=ids[:2000])
    single.add(x[2000:], ids=ids[2000:])

    sharded = ShardedIVF(numba_ivf.IVFPQ(D, NLIST, m=8, nbits=4, refine=True), client)
    sharded.train(da.from_array(x, chunks=(700, D)))
    sharded.add(da.from_array(x[:2000], chunks=(512, D)), ids=ids[:2000])
    path = tmp_path / "x.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    sharded.add(ro[2000:], ids=da.from_array(ids[2000:], chunks=1000))
    assert len(sharded) == 5000
    assert_same(sharded.search(q, 8, 6, k_factor=4), single.search(q, 8, 6, k_factor=4))
    with pytest.raises(ValueError, match="must not already be in the index; id 11"):
        sharded.add(x[:2], ids=[11, 5])
    bad = x[:10].copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="first at row 4, column 2"):
        sharded.add(bad)                          # checked on the client
    with pytest.raises(ValueError, match="rows 0 to 4: x contains NaN.*row 4, column 2"):
        sharded.add(da.from_array(bad, chunks=(5, D)))    # checked by a worker
    with pytest.raises(ValueError, match="features"):
        sharded.add(np.zeros((3, D + 1), np.float32))
    assert len(sharded) == 5000                 # nothing changed
    # remove, then search again
    gone = ids[::5]
    assert sharded.remove(gone) == single.remove(gone) == 1000
    assert sharded.remove(gone) == 0
    assert_same(sharded.search(q, 8, 6, k_factor=4), single.search(q, 8, 6, k_factor=4))
    sharded.close()


def test_save_load_round_trip_and_bad_files(client, built, data, tmp_path):
    single, sharded = built["pq4-refine"]
    _, q = data
    sharded.save(tmp_path / "idx")
    files = sorted(os.listdir(tmp_path / "idx"))
    assert "manifest.json" in files and sum(f.startswith("shard-") for f in files) == 2
    loaded = ShardedIVF.load(tmp_path / "idx", client)
    assert len(loaded) == len(sharded)
    assert_same(loaded.search(q, 6, 5, k_factor=3), single.search(q, 6, 5, k_factor=3))
    # a second save replaces the first atomically and removes its files
    sharded.save(tmp_path / "idx")
    assert len(os.listdir(tmp_path / "idx")) == len(files)
    loaded.close()

    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    with pytest.raises(IndexFileError, match="no manifest.json"):
        ShardedIVF.load(tmp_path / "nothing", client)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({**m, "format_version": 9}))
    with pytest.raises(IndexFileError, match="version 9"):
        ShardedIVF.load(bad, client)
    for f in os.listdir(tmp_path / "idx"):
        if f != "manifest.json":
            os.link(tmp_path / "idx" / f, bad / f)
    (bad / "manifest.json").write_text(json.dumps(
        {**m, "shards": [m["shards"][1], m["shards"][0]]}))
    with pytest.raises(IndexFileError, match="shard 0"):
        ShardedIVF.load(bad, client)                 # shards swapped
    (bad / "manifest.json").write_text(json.dumps(
        {**m, "shards": [{**m["shards"][0], "file": "gone.nivf"}, m["shards"][1]]}))
    with pytest.raises(IndexFileError, match="shard 0's file 'gone.nivf'.*missing"):
        ShardedIVF.load(bad, client)
    # a corrupt shard file (valid manifest): its checksum fails on the worker
    (bad / "manifest.json").write_text(json.dumps(m))
    shard1 = bad / m["shards"][1]["file"]
    raw = bytearray(shard1.read_bytes())
    os.unlink(shard1)
    raw[-100] ^= 0xFF
    shard1.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match="could not be loaded"):
        ShardedIVF.load(bad, client)
    for broken, match in (
            ({k: v for k, v in m.items() if k != "quantizer"}, "'quantizer' missing"),
            ({**m, "quantizer": "nowhere.nivf"}, "quantizer file 'nowhere.nivf'.*missing"),
            ({**m, "ntotal": m["ntotal"] + 1}, "do not add up to ntotal"),
            ({**m, "list_shard": m["list_shard"][:-1]}, "list_shard must hold 24"),
            ({**m, "shards": m["shards"][:1]}, "'shards' must list n_shards = 2")):
        (bad / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(IndexFileError, match=match):
            ShardedIVF.load(bad, client)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="unreadable manifest"):
        ShardedIVF.load(bad, client)
    # the saved index itself is untouched by all of this
    again = ShardedIVF.load(tmp_path / "idx", client)
    assert_same(again.search(q, 6, 5, k_factor=3), single.search(q, 6, 5, k_factor=3))
    again.close()


def test_bad_arguments(client, data):
    x, q = data
    full = numba_ivf.IVFFlat(D, NLIST)
    full.train(x)
    full.add(x[:10])
    with pytest.raises(ValueError, match="template must be empty"):
        ShardedIVF(full, client)
    with pytest.raises(TypeError, match="template must be"):
        ShardedIVF("IVFFlat", client)
    sh = ShardedIVF(numba_ivf.IVFFlat(D, NLIST), client)
    with pytest.raises(RuntimeError, match="not trained"):
        sh.search(q, 3)
    sh.train(x[:1000])
    with pytest.raises(ValueError, match="k_factor applies only"):
        sh.search(q, 3, k_factor=2)
    with pytest.raises(ValueError, match="q has 15 features"):
        sh.search(q[:, :15], 3)
    with pytest.raises(ValueError, match=r"x has shape \(40, 15\).*expects \(n, 16\)"):
        sh.add(da.from_array(np.zeros((40, D - 1), np.float32), chunks=(20, D - 1)))
    with pytest.raises(ValueError, match="min_candidates and max_nprobe apply only"):
        sh.search(q, 3, min_candidates=5)
    D0, I0 = sh.search(q, 3, 2)               # empty index: all missing
    assert (I0 == -1).all() and np.isinf(D0).all()
    sh.close()


def test_bad_construction_arguments(client):
    from numba_ivf.dask._worker import ShardServer
    with pytest.raises(ValueError, match="n_shards must be"):
        ShardedIVF(numba_ivf.IVFFlat(D, NLIST), client, n_shards=0)
    with pytest.raises(ValueError, match="numba_threads must be"):
        ShardedIVF(numba_ivf.IVFFlat(D, NLIST), client, numba_threads=0)
    with pytest.raises(ValueError, match="unknown function 'create'"):
        ShardServer().call("create", b"")     # only the search calls are served


def test_client_without_workers():
    cluster = distributed.LocalCluster(n_workers=0, processes=False,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        with pytest.raises(RuntimeError, match="no workers"):
            ShardedIVF(numba_ivf.IVFFlat(D, NLIST), c)
    cluster.close()


def test_balance_largest_first():
    rows = np.array([10, 50, 40, 30, 20, 5])
    owner = balance(rows, 2)
    load = np.bincount(owner, weights=rows, minlength=2)
    assert load.max() - load.min() <= 10
    assert balance(np.ones(5, dtype=np.int64), 5).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("refine", [False, True])
def test_merge_equals_oracle(refine):
    """The merge kernels against the per-row lexsort oracle, with ties in keys, shards
    that answered only some queries, and padding."""
    from tests.naive.merge import merge_shards
    from numba_ivf.dask._merge import merge_topk
    rng = np.random.default_rng(5 + refine)
    nq, width, k = 40, 12, 5
    parts = []
    for s in range(3):
        rows = np.sort(rng.choice(nq, size=int(rng.integers(1, nq)), replace=False))
        keys = rng.integers(0, 6, (rows.size, width)).astype(np.float32)   # ties
        ids = rng.choice(1 << 20, size=(rows.size, width), replace=False) * 3 + s
        ids[:, -2:] = np.iinfo(np.int64).max            # padding
        keys[:, -2:] = np.inf
        exact = rng.integers(0, 4, keys.shape).astype(np.float32) if refine else None
        parts.append((rows, keys, ids, exact))
    want = merge_shards(nq, parts, width, k if refine else None)
    got = merge_topk(nq, parts, width, k if refine else None)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    # the serial loop of a few queries: the same rows
    few = [(r[r < 3], kk[r < 3], ii[r < 3], None if ee is None else ee[r < 3])
           for r, kk, ii, ee in parts]
    got = merge_topk(3, few, width, k if refine else None)
    np.testing.assert_array_equal(got[1], want[1][:3])
    np.testing.assert_array_equal(got[0], want[0][:3])


@pytest.mark.parametrize("kind", ["flat", "pq4-refine"])
def test_pipelined_chunks_equal_single(built, data, kind, monkeypatch):
    """A batch sent in chunks (the coarse step of one overlapping the scan of the last)
    gives the single index's results, filtered or not."""
    from numba_ivf import _config
    monkeypatch.setattr(_config, "DASK_SEARCH_CHUNK_ROWS", 16)
    monkeypatch.setattr(_config, "DASK_REFINE_TWO_ROUNDS_MIN_QUERIES", 8)
    single, sharded = built[kind]
    _, q = data
    assert_same(sharded.search(q, 6, 5, **_kw(single)), single.search(q, 6, 5, **_kw(single)))
    f = IDFilter.range(500, 2500)
    assert_same(sharded.search(q, 6, 3, filter=f, **_kw(single)),
                single.search(q, 6, 3, filter=f, **_kw(single)))
    assert sharded.last_call_bytes["shards"] == 2


def _kill(client, address):
    try:
        client.run(os._exit, 1, workers=[address])
    except Exception:        # the worker may die before it answers
        pass


def test_worker_killed_mid_session(client, data, tmp_path):
    """Last: it kills a worker (the nanny starts a new one). A saved, unchanged shard
    comes back from its file; a shard changed since its save is reported lost."""
    x, q = data
    single = numba_ivf.IVFFlat(D, NLIST)
    single.train(x)
    single.add(x)
    sharded = ShardedIVF(numba_ivf.IVFFlat(D, NLIST), client)
    sharded.train(x)
    sharded.add(x)
    sharded.save(tmp_path / "saved")
    _kill(client, sharded.placement[0])
    assert_same(sharded.search(q, 5, 4), single.search(q, 5, 4))
    assert_same(sharded.search(q, 5, 4, filter=np.arange(0, 5000, 3)),
                single.search(q, 5, 4, filter=np.arange(0, 5000, 3)))
    # changed after its save: no file to reload it from
    assert sharded.remove(np.arange(500)) == 500      # every shard changes
    client.wait_for_workers(2, timeout=60)             # the nanny's replacement
    _kill(client, sharded.placement[0])
    with pytest.raises(ShardLostError, match="shard 0 .*no saved file"):
        sharded.search(q, 5, 4)
    sharded.close()
