import json
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numba_ivf import datasets
from numba_ivf.datasets import (
    Dataset, ground_truth, load_dataset, make_synthetic, read_bvecs, read_fvecs,
    read_hdf5, read_ivecs, read_vecs, write_bvecs, write_fvecs, write_ivecs,
)
from tests.naive import datasets as naive


# -- .fvecs / .ivecs / .bvecs ---------------------------------------------------------

@pytest.mark.parametrize("ext, fmt, dtype", [(".fvecs", "f", np.float32),
                                             (".ivecs", "i", np.int32),
                                             (".bvecs", "B", np.uint8)])
def test_vecs_round_trip_against_struct_oracle(tmp_path, ext, fmt, dtype):
    rng = np.random.default_rng(1)
    if dtype == np.float32:
        x = rng.standard_normal((37, 5)).astype(dtype)
    elif dtype == np.int32:
        x = rng.integers(-2**31, 2**31 - 1, size=(37, 5), dtype=np.int64).astype(dtype)
    else:
        x = rng.integers(0, 256, size=(37, 5)).astype(dtype)
    write = {".fvecs": write_fvecs, ".ivecs": write_ivecs, ".bvecs": write_bvecs}[ext]
    read = {".fvecs": read_fvecs, ".ivecs": read_ivecs, ".bvecs": read_bvecs}[ext]
    ours = tmp_path / f"ours{ext}"
    loop = tmp_path / f"loop{ext}"
    write(ours, x)
    naive.write_vecs_loop(loop, x.tolist(), fmt)
    assert ours.read_bytes() == loop.read_bytes()
    got = read(loop)
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(read_vecs(loop), x)
    mm = read(loop, mmap=True)
    assert isinstance(mm, np.ndarray) and not mm.flags.writeable
    np.testing.assert_array_equal(mm, x)
    np.testing.assert_array_equal(read(loop, max_rows=4), x[:4])
    np.testing.assert_array_equal(
        np.array(naive.read_vecs_loop(ours, fmt), dtype=dtype), x)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), d=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_fvecs_round_trip_property(tmp_path_factory, n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    path = tmp_path_factory.mktemp("fv") / "x.fvecs"
    write_fvecs(path, x)
    assert path.stat().st_size == n * (4 + 4 * d)
    np.testing.assert_array_equal(read_fvecs(path), x)


def test_fvecs_accepts_float64_and_non_contiguous(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 8))[:, ::2]  # float64, not contiguous
    write_fvecs(tmp_path / "x.fvecs", x)
    np.testing.assert_array_equal(read_fvecs(tmp_path / "x.fvecs"), x.astype(np.float32))


def test_truncated_file_names_file_and_problem(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "t.fvecs"
    write_fvecs(path, rng.standard_normal((4, 3)))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"t\.fvecs: file size 62 bytes is not a "
                                         r"multiple of the record size 16"):
        read_fvecs(path)


def test_inconsistent_dimensions(tmp_path):
    path = tmp_path / "mixed.fvecs"
    # 12 + 12 + 24 bytes = 4 records of dim 2: the size alone does not reveal it.
    naive.write_vecs_loop(path, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0]], "f")
    with pytest.raises(ValueError, match=r"mixed\.fvecs: inconsistent dimensions: "
                                         r"record 2 has dimension 5, record 0 has 2"):
        read_fvecs(path)


def test_empty_and_bad_dimension(tmp_path):
    empty = tmp_path / "e.ivecs"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"e\.ivecs: file is empty or truncated"):
        read_ivecs(empty)
    neg = tmp_path / "n.bvecs"
    neg.write_bytes(np.array([-3], dtype="<i4").tobytes() + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"n\.bvecs: first record has dimension -3"):
        read_bvecs(neg)


def test_wrong_extension_and_missing_file(tmp_path):
    path = tmp_path / "x.ivecs"
    write_ivecs(path, np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match=r"x\.ivecs: wrong extension '\.ivecs' for a "
                                         r"\.fvecs reader"):
        read_fvecs(path)
    with pytest.raises(ValueError, match=r"wrong extension '\.txt' for a \.bvecs"):
        write_bvecs(tmp_path / "x.txt", np.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"unknown vector file extension '\.npy'"):
        read_vecs(tmp_path / "x.npy")
    with pytest.raises(ValueError, match=r"nope\.fvecs: no such file"):
        read_fvecs(tmp_path / "nope.fvecs")


def test_writer_refuses_lossy_integer_output(tmp_path):
    with pytest.raises(ValueError, match=r"outside \[0, 255\], the range of \.bvecs"):
        write_bvecs(tmp_path / "b.bvecs", np.array([[1, 256]]))
    with pytest.raises(ValueError, match=r"non-integer values; \.ivecs stores int32"):
        write_ivecs(tmp_path / "i.ivecs", np.array([[1.5]]))
    with pytest.raises(ValueError, match=r"x must be a 2-D array"):
        write_fvecs(tmp_path / "f.fvecs", np.zeros(3))


# -- HDF5 -----------------------------------------------------------------------------

def test_hdf5_reader(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(4)
    train = rng.standard_normal((50, 6)).astype(np.float32)
    test = rng.standard_normal((7, 6)).astype(np.float32)
    _, nn = ground_truth(train, test, 5, "cosine")
    path = tmp_path / "toy-6-angular.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=train)
        f.create_dataset("test", data=test)
        f.create_dataset("neighbors", data=nn.astype(np.int32))
        f.create_dataset("distances", data=np.zeros((7, 5), np.float32))
        f.attrs["distance"] = "angular"
    ds = load_dataset(path)
    assert ds.metric == "cosine" and ds.name == "toy-6-angular"
    np.testing.assert_array_equal(ds.base, train)
    np.testing.assert_array_equal(ds.queries, test)
    np.testing.assert_array_equal(ds.neighbors, nn)
    other = read_hdf5(path, metric="euclidean")
    assert other.metric == "l2" and other.neighbors is None
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"bad\.hdf5: not a readable HDF5 file"):
        read_hdf5(bad)


def _write_h5(path, h5py, members, distance="euclidean"):
    """An HDF5 file holding ``members`` (name -> array, or None for an empty group)."""
    with h5py.File(path, "w") as f:
        for name, value in members.items():
            if value is None:
                f.create_group(name)
            else:
                f.create_dataset(name, data=value)
        if distance is not None:
            f.attrs["distance"] = distance


def _h5_members(rng, n=20, nq=4, d=3, k=2):
    return {"train": rng.standard_normal((n, d)).astype(np.float32),
            "test": rng.standard_normal((nq, d)).astype(np.float32),
            "neighbors": rng.integers(0, n, (nq, k)).astype(np.int32),
            "distances": rng.random((nq, k)).astype(np.float32)}


_BAD_H5 = {
    # name: (change to the members or the distance attribute, message after the path)
    "neighbors short": (lambda m: m.update(neighbors=m["neighbors"][:3]),
                        r"dataset 'neighbors' has shape \(3, 2\); expected \(4, k\) "
                        r"with k >= 1, one row of neighbour ids per query in 'test' "
                        r"\(4 rows\)"),
    "neighbors 1-D": (lambda m: m.update(neighbors=m["neighbors"][:, 0]),
                      r"dataset 'neighbors' has shape \(4,\); expected \(4, k\)"),
    "neighbors float": (lambda m: m.update(neighbors=m["neighbors"] + 0.5),
                        r"dataset 'neighbors' holds dtype float64; expected integer "
                        r"ids, shape \(nq, k\)"),
    "neighbors past n": (lambda m: m["neighbors"].__setitem__((2, 1), 20),
                         r"dataset 'neighbors' holds id 20 at row 2, column 1; expected "
                         r"ids of 'train' rows, in \[0, 20\)"),
    "neighbors uint64 wrap": (lambda m: m.update(
        neighbors=np.full((4, 2), 2**64 - 1, dtype=np.uint64)),
        r"dataset 'neighbors' holds id 18446744073709551615 at row 0"),
    "distances shape": (lambda m: m.update(distances=m["distances"][:, :1]),
                        r"dataset 'distances' has shape \(4, 1\); expected \(4, 2\), "
                        r"the distances of 'neighbors'"),
    "train group": (lambda m: m.update(train=None),
                    r"'train' is an HDF5 group, not a dataset; expected a dataset of "
                    r"real numbers, shape \(n, d\)"),
    "neighbors group": (lambda m: m.update(neighbors=None),
                        r"'neighbors' is an HDF5 group, not a dataset"),
    "train strings": (lambda m: m.update(train=np.array([b"a", b"b"])),
                      r"dataset 'train' holds strings; expected real numbers"),
    "test vlen strings": (lambda m: m.update(test=np.array(["x", "yz"], dtype=object)),
                          r"dataset 'test' holds strings; expected real numbers"),
    "train 1-D": (lambda m: m.update(train=m["train"][:, 0]),
                  r"dataset 'train' has shape \(20,\); expected \(n, d\)"),
    "test columns": (lambda m: m.update(test=m["test"][:, :2]),
                     r"dataset 'test' has 2 columns, but 'train' has 3"),
    "train nan": (lambda m: m["train"].__setitem__((5, 1), np.nan),
                  r"dataset 'train' holds nan at row 5, column 1; expected finite"),
    "test overflow": (lambda m: m.update(test=np.full((4, 3), 1e300)),
                      r"dataset 'test' holds inf at row 0, column 0; expected finite"),
    "unknown distance": ("hamming",
                         r"attribute 'distance' is 'hamming'; expected one of 'l2', "
                         r"'euclidean'.*or pass metric="),
    "non-string distance": (7, r"attribute 'distance' is 7 \(of type int64, not "
                               r"str\); expected one of"),
    "missing train": (lambda m: m.pop("train"), r"missing dataset 'train'"),
}


@pytest.mark.parametrize("case", sorted(_BAD_H5))
def test_hdf5_crafted_files_are_refused_naming_file_and_dataset(tmp_path, case):
    h5py = pytest.importorskip("h5py")
    change, message = _BAD_H5[case]
    members, distance = _h5_members(np.random.default_rng(11)), "euclidean"
    if callable(change):
        change(members)
    else:
        distance = change
    path = tmp_path / "crafted.hdf5"
    _write_h5(path, h5py, members, distance)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
        read_hdf5(path)


def test_hdf5_unknown_distance_with_metric_override_drops_neighbors(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "bits.hdf5"
    members = _h5_members(np.random.default_rng(12))
    _write_h5(path, h5py, members, distance=b"hamming")
    ds = read_hdf5(path, metric="l2")
    assert ds.metric == "l2" and ds.neighbors is None and ds.distances is None
    np.testing.assert_array_equal(ds.base, members["train"])


def test_hdf5_accepts_uint8_vectors_and_no_ground_truth(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(13)
    path = tmp_path / "u8.h5"
    train = rng.integers(0, 256, (10, 4), dtype=np.uint8)
    _write_h5(path, h5py, {"train": train, "test": train[:2]}, distance="angular")
    ds = read_hdf5(path)
    assert ds.base.dtype == np.float32 and ds.neighbors is None and ds.metric == "cosine"
    np.testing.assert_array_equal(ds.base, train)


def test_hdf5_without_h5py_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "x.hdf5"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pip install numba_ivf\[hdf5\]"):
        read_hdf5(path)


# -- folders --------------------------------------------------------------------------

def _write_npy_folder(folder, rng, metric_name="euclidean", with_meta=True):
    folder.mkdir()
    base = rng.standard_normal((40, 4)).astype(np.float32)
    queries = rng.standard_normal((6, 4)).astype(np.float32)
    np.save(folder / "base.npy", base)
    np.save(folder / "queries.npy", queries)
    _, nn = ground_truth(base, queries, 10, datasets.normalize_metric(metric_name))
    np.save(folder / f"neighbors_{metric_name}.npy", nn.astype(np.int32))
    if with_meta:
        (folder / "meta.json").write_text(json.dumps(
            {"name": "toy", "primary_metric": metric_name}))
    return base, queries, nn


def test_load_npy_folder_and_name_lookup(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    base, queries, nn = _write_npy_folder(tmp_path / "toy-4", rng)
    ds = load_dataset(tmp_path / "toy-4")
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.metric, ds.n, ds.nq, ds.d) == ("toy", "l2", 40, 6, 4)
    np.testing.assert_array_equal(ds.base, base)
    np.testing.assert_array_equal(ds.neighbors, nn)
    assert ds.neighbors.dtype == np.int64
    # Another metric has no ground truth in the folder: neighbors is None.
    assert load_dataset(tmp_path / "toy-4", metric="dot").neighbors is None
    monkeypatch.setenv("NUMBA_IVF_DATA", str(tmp_path))
    assert load_dataset("toy-4").source == str(tmp_path / "toy-4")
    with pytest.raises(ValueError, match=r"no-such-set: no such file or folder"):
        load_dataset("no-such-set")


def test_load_npy_folder_metric_from_single_ground_truth(tmp_path):
    rng = np.random.default_rng(6)
    _write_npy_folder(tmp_path / "a", rng, metric_name="angular", with_meta=False)
    assert load_dataset(tmp_path / "a").metric == "cosine"
    (tmp_path / "a" / "base.npy").unlink()
    with pytest.raises(ValueError, match=r"base\.npy: no such file"):
        load_dataset(tmp_path / "a")


def test_load_texmex_triplet(tmp_path):
    rng = np.random.default_rng(7)
    base = rng.standard_normal((30, 3)).astype(np.float32)
    queries = rng.standard_normal((4, 3)).astype(np.float32)
    _, nn = ground_truth(base, queries, 5, "l2")
    write_fvecs(tmp_path / "sift_base.fvecs", base)
    write_fvecs(tmp_path / "sift_query.fvecs", queries)
    write_ivecs(tmp_path / "sift_groundtruth.ivecs", nn)
    with pytest.raises(ValueError, match=r"carry no metric; pass metric="):
        load_dataset(tmp_path / "sift_base.fvecs")
    ds = load_dataset(tmp_path / "sift_base.fvecs", metric="euclidean")
    assert ds.name == "sift" and ds.metric == "l2"
    np.testing.assert_array_equal(ds.queries, queries)
    np.testing.assert_array_equal(ds.neighbors, nn)
    assert load_dataset(tmp_path, metric="l2").n == 30


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match=r"metric must be one of .*'angular'.*; got "
                                         r"'hamming'"):
        datasets.normalize_metric("hamming")


# -- synthetic ------------------------------------------------------------------------

def test_make_synthetic_shapes_and_seed():
    a = make_synthetic(n=500, nq=20, d=7, n_clusters=5, metric="angular", seed=3)
    b = make_synthetic(n=500, nq=20, d=7, n_clusters=5, metric="cosine", seed=3)
    c = make_synthetic(n=500, nq=20, d=7, n_clusters=5, metric="cosine", seed=4)
    assert a.base.shape == (500, 7) and a.queries.shape == (20, 7)
    assert a.base.dtype == np.float32 and a.metric == "cosine" and a.neighbors is None
    np.testing.assert_array_equal(a.base, b.base)
    assert not np.array_equal(a.base, c.base)
    with pytest.raises(ValueError, match=r"n_clusters must be >= 1; got 0"):
        make_synthetic(n=10, nq=1, d=2, n_clusters=0)


def test_make_synthetic_is_clustered():
    ds = make_synthetic(n=4000, nq=10, d=16, n_clusters=4, seed=0)
    labels, centres = ds.meta["base_labels"], ds.meta["centres"]
    noise = ds.base - centres[labels]
    np.testing.assert_allclose(noise.std(), np.sqrt(0.5), rtol=0.05)
    # Every point is nearer its own centre than any other: distinct blobs.
    d2 = ((ds.base[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    assert (d2.argmin(axis=1) == labels).mean() > 0.99


# -- ground truth ---------------------------------------------------------------------

def _tied_data(seed, n=23, nq=6, d=3):
    """Small integer data with duplicate rows: exact in float64 and full of ties."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    base[5] = base[1]
    base[17] = base[1]
    queries = rng.integers(-2, 3, size=(nq, d)).astype(np.float32)
    queries[0] = base[1]
    return base, queries


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("k", [1, 4, 23, 30])
def test_ground_truth_equals_oracle_with_ties(metric, k, monkeypatch):
    base, queries = _tied_data(seed=11)
    want_d, want_i = naive.ground_truth(base, queries, k, metric)
    got_d, got_i = ground_truth(base, queries, k, metric)
    assert got_i.dtype == np.int64 and got_d.dtype == np.float32
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d.astype(np.float32))
    # Tiny tiles: several query blocks and base blocks, so the merge sees the ties.
    monkeypatch.setattr(datasets, "GT_BATCH_BYTES", 8 * 2 * 5)
    got_d, got_i = ground_truth(base, queries, k, metric, batch=2)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d.astype(np.float32))


def test_ground_truth_cosine_matches_oracle():
    base, queries = _tied_data(seed=12)
    base[3] = 0.0  # a zero vector: similarity 0 with everything
    want_d, want_i = naive.ground_truth(base, queries, 8, "cosine")
    got_d, got_i = ground_truth(base, queries, 8, "cosine", batch=4)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-6, atol=1e-6)
    # Parallel integer vectors tie in exact arithmetic but may not in floating point:
    # each returned id must score what the oracle says the rank holds.
    _, all_i = naive.ground_truth(base, queries, len(base), "cosine")
    all_d, _ = naive.ground_truth(base, queries, len(base), "cosine")
    for r in range(len(queries)):
        score = dict(zip(all_i[r].tolist(), all_d[r].tolist()))
        np.testing.assert_allclose([score[i] for i in got_i[r]], want_d[r], atol=1e-6)
    # Duplicates of the query (rows 1, 5, 17) tie exactly: ascending id.
    assert got_i[0, :3].tolist() == [1, 5, 17]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), nq=st.integers(1, 5), d=st.integers(1, 4),
       k=st.integers(1, 12), metric=st.sampled_from(["l2", "ip"]),
       seed=st.integers(0, 2**32 - 1), tile=st.integers(1, 64))
def test_ground_truth_property(n, nq, d, k, metric, seed, tile):
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(nq, d)).astype(np.float64)  # float64 input
    want_d, want_i = naive.ground_truth(base, queries, k, metric)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "GT_BATCH_BYTES", 8 * tile)
        got_d, got_i = ground_truth(base.T.copy().T, queries, k, metric,
                                    batch=max(1, tile // 8))
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d.astype(np.float32))


def test_ground_truth_errors():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"k must be >= 1; got 0"):
        ground_truth(x, x, 0)
    with pytest.raises(ValueError, match=r"queries has 2 features, but base expects 3"):
        ground_truth(x, np.zeros((1, 2)), 1)
    with pytest.raises(ValueError, match=r"metric must be one of"):
        ground_truth(x, x, 1, metric="manhattan")
    with pytest.raises(ValueError, match=r"base contains NaN or infinity"):
        ground_truth(np.full((2, 3), np.nan), x, 1)
