"""Crafted index files: valid checksums, inconsistent contents; ``load`` must refuse each
one with an IndexFileError (a ValueError) that names the file and the problem.

Every file is made by :func:`_rewrite`: read a genuine saved index, edit its parameters
(the JSON header's ``params``) or its arrays, and write it back with
``write_index_file``, which recomputes the header CRC and every array CRC. So nothing
below is caught by a checksum: only the semantic checks of ``numba_ivf.load`` stand
between these files and an index that returns duplicate or sentinel ids or scans rows
outside its arrays. Truncation, bad magic and flipped bytes, which the checksums do
catch, are covered per kind at the end (the format-level cases are in
test_persistence.py).
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

import numba_ivf
from numba_ivf.ivf.base import MAX_ID
from numba_ivf.persistence import IndexFileError, read_index_file, write_index_file

pytestmark = pytest.mark.filterwarnings("ignore:KMeans. sampling")

# 4-bit: an odd m (the high nibble of the last byte is padding) and n not a multiple of
# 32 (the last block has padding lanes), so both layout invariants are exercised.
KINDS = {
    "flat": dict(d=8, make=lambda: numba_ivf.IVFFlat(8, 4, n_iter=3, seed=0)),
    "pq8": dict(d=8, make=lambda: numba_ivf.IVFPQ(8, 4, m=4, nbits=8, n_iter=3, seed=0)),
    "pq4r": dict(d=6, make=lambda: numba_ivf.IVFPQ(6, 4, m=3, nbits=4, refine=True,
                                                   n_iter=3, seed=0)),
}
N = 100


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> path of a genuine saved index: N vectors, some removed, holes in ids."""
    folder = tmp_path_factory.mktemp("genuine")
    out = {}
    for i, (name, spec) in enumerate(KINDS.items()):
        rng = np.random.default_rng(100 + i)
        x = rng.standard_normal((N + 20, spec["d"])).astype(np.float32)
        index = spec["make"]()
        index.train(np.concatenate([x] * 3))  # >= 256 rows for 8-bit codebooks
        index.add(x)
        index.remove(np.arange(0, N + 20, 6)[:20])  # 100 left, swap-with-last moves
        assert len(index) == N
        out[name] = folder / f"{name}.nivf"
        index.save(out[name])
    return out


def _rewrite(src, dst, edit):
    """Copy index file ``src`` to ``dst`` with ``edit(params, arrays)`` applied to
    writable copies, re-checksummed (write_index_file computes every CRC afresh)."""
    f = read_index_file(src)
    params = copy.deepcopy(f.params)
    arrays = {name: np.array(arr) for name, arr in f.arrays.items()}
    edit(params, arrays)
    write_index_file(dst, f.kind, params, arrays)


def _rows_in_two_lists(a):
    """A row of the first non-empty list and a row of the next non-empty one."""
    full = np.flatnonzero(a["list_sizes"])
    return int(a["list_starts"][full[0]]), int(a["list_starts"][full[1]])


def _set(key, value):
    return lambda p, a: p.__setitem__(key, value)


def _dup_across_lists(p, a):
    r0, r1 = _rows_in_two_lists(a)
    a["ids"][r1] = a["ids"][r0]


def _dup_in_list(p, a):
    r0, _ = _rows_in_two_lists(a)
    a["ids"][r0 + 1] = a["ids"][r0]


def _sparse_dup(p, a):
    # Ids spread over ~2**62: too sparse for the bitmap, found by the sort instead.
    a["ids"][:] = a["ids"] * 10**16
    _dup_across_lists(p, a)
    p["next_id"] = int(a["ids"].max()) + 1


def _id(value, next_id=None):
    def edit(p, a):
        a["ids"][7] = value
        if next_id is not None:
            p["next_id"] = next_id
    return edit


def _overlap(p, a):
    full = np.flatnonzero(a["list_sizes"])
    a["list_starts"][full[1]] -= 1


def _gap(p, a):
    full = np.flatnonzero(a["list_sizes"])
    a["list_sizes"][full[-1]] -= 1  # ntotal still matches the ids: a row is orphaned


def _past_end(p, a):
    full = np.flatnonzero(a["list_sizes"])
    a["list_starts"][full[-1]] += 1


def _list_value(name, value):
    def edit(p, a):
        a[name][np.flatnonzero(a["list_sizes"])[0]] = value
    return edit


def _array_value(name, index, value):
    def edit(p, a):
        a[name][index] = value
    return edit


def _replace(name, fn):
    def edit(p, a):
        a[name] = fn(a[name])
    return edit


def _untrained_with_arrays(p, a):
    p["trained"] = False


def _untrained_no_arrays(p, a):
    p["trained"] = False
    p["ntotal"] = 5
    a.clear()


def _lane_past_n(p, a):
    a["codes"][-1, 0, 31] = 0x11  # byte 31: vector 31 of the last block, past row 99


def _odd_m_nibble(p, a):
    a["codes"][0, -1, 0] |= 0x50  # high nibble of the byte holding sub-quantizer m


ALL = set(KINDS)
PQ = {"pq8", "pq4r"}
# case: (kinds, edit, message after "'<path>': inconsistent <kind> file: ")
CASES = {
    # ids
    "duplicate id across lists": (ALL, _dup_across_lists,
                                  r"id \d+ is stored twice \(rows \d+ and \d+, in lists "
                                  r"\d+ and \d+\); ids must be unique"),
    "duplicate id in one list": (ALL, _dup_in_list, r"id \d+ is stored twice"),
    "duplicate sparse ids": (ALL, _sparse_dup, r"id \d+ is stored twice"),
    "next_id not above ids": (ALL, lambda p, a: p.__setitem__(
        "next_id", int(a["ids"].max())),
        r"'next_id' is \d+, but id \d+ is stored; next_id .* must be above every "
        r"stored id"),
    "next_id past the id range": (ALL, _set("next_id", MAX_ID + 2),
                                  rf"parameter 'next_id' is {MAX_ID + 2}; expected an "
                                  rf"integer in \[0, {MAX_ID + 1}\]"),
    "negative id": (ALL, _id(-5), r"ids\[7\] is -5; ids must be in \[0, "
                                  rf"{MAX_ID}\]"),
    "sentinel id": (ALL, _id(MAX_ID + 1, MAX_ID + 1),
                    rf"ids\[7\] is {MAX_ID + 1}; ids must be in \[0, {MAX_ID}\] "
                    r"\(2\*\*63 - 1 marks a missing result\)"),
    # booleans must be JSON booleans
    "trained as a string": (ALL, _set("trained", "false"),
                            r"parameter 'trained' is 'false' \(str\); expected true or "
                            r"false \(a JSON boolean\)"),
    "trained as an int": (ALL, _set("trained", 1), r"parameter 'trained' is 1 \(int\)"),
    "by_residual as a string": (PQ, _set("by_residual", "no"),
                                r"parameter 'by_residual' is 'no' \(str\)"),
    "refine as null": (PQ, _set("refine", None),
                       r"parameter 'refine' is None \(NoneType\)"),
    "untrained but holds arrays": (ALL, _untrained_with_arrays,
                                   r"'trained' is false, but 'ntotal' is 100 and the "
                                   r"file holds 'centroids'"),
    "untrained but ntotal": (ALL, _untrained_no_arrays,
                             r"'trained' is false, but 'ntotal' is 5 and the file holds "
                             r"no arrays"),
    # integers are integers, in range
    "nlist as a string": (ALL, _set("nlist", "4"),
                          r"parameter 'nlist' is '4' \(str\); expected an integer"),
    "nlist as a float": (ALL, _set("nlist", 4.0), r"parameter 'nlist' is 4.0 \(float\)"),
    "d as a boolean": (ALL, _set("d", True), r"parameter 'd' is True \(bool\)"),
    "nlist zero": (ALL, _set("nlist", 0),
                   r"parameter 'nlist' is 0; expected an integer >= 1"),
    "n_iter negative": (ALL, _set("n_iter", -1), r"parameter 'n_iter' is -1; expected "
                                                 r"an integer >= 0"),
    "max_points_per_centroid zero": (ALL, _set("max_points_per_centroid", 0),
                                     r"parameter 'max_points_per_centroid' is 0"),
    "seed as a float": (ALL, _set("seed", 1.5), r"parameter 'seed' is 1.5 \(float\)"),
    "missing ntotal": (ALL, lambda p, a: p.pop("ntotal"),
                       r"parameter 'ntotal' is None \(NoneType\)"),
    "ntotal mismatch": (ALL, _set("ntotal", 99), r"'ntotal' is 99, but the file stores "
                                                 r"100 ids"),
    "unknown metric": (ALL, _set("metric", "hamming"),
                       r"parameter 'metric' is 'hamming'; expected one of 'l2', "
                       r"'ip', 'cosine'"),
    "m not dividing d": (PQ, lambda p, a: p.__setitem__("m", p["d"] - 1),
                         r"parameter 'm' is \d+, which does not divide d=\d+"),
    "m above d": (PQ, lambda p, a: p.__setitem__("m", p["d"] + 1),
                  r"parameter 'm' is \d+; expected an integer in \[1, \d+\]"),
    "nbits 6": (PQ, _set("nbits", 6), r"parameter 'nbits' is 6; expected one of 4, 8"),
    "nbits as a float": (PQ, _set("nbits", 8.0),
                         r"parameter 'nbits' is 8.0; expected one of 4, 8"),
    # list tiling
    "lists overlap": (ALL, _overlap, r"lists \d+ \(rows \[\d+, \d+\)\) and \d+ \(rows "
                                     r"\[\d+, \d+\)\) overlap"),
    "lists miss a row": (ALL, _gap, r"the lists hold 99 rows, but 100 ids are stored; "
                                    r"every stored row must belong to exactly one list"),
    "list past the end": (ALL, _past_end, r"list \d+ holds rows \[\d+, 101\), past the "
                                          r"100 stored rows"),
    "negative list size": (ALL, _list_value("list_sizes", -1),
                           r"list_sizes\[\d+\] is -1; expected a value in \[0, 100\]"),
    "negative list start": (ALL, _list_value("list_starts", -3),
                            r"list_starts\[\d+\] is -3; expected a value in \[0, 100\]"),
    "huge list start": (ALL, _list_value("list_starts", 2**62),
                        rf"list_starts\[\d+\] is {2**62}; expected a value in"),
    # finite centroids and codebooks
    "nan centroid": (ALL, _array_value("centroids", (2, 3), np.nan),
                     r"array 'centroids' holds nan at index \(2, 3\); expected finite "
                     r"values"),
    "infinite centroid": (ALL, _array_value("centroids", (0, 0), -np.inf),
                          r"array 'centroids' holds -inf at index \(0, 0\)"),
    "nan codebook": (PQ, _array_value("codebooks", (1, 5, 0), np.nan),
                     r"array 'codebooks' holds nan at index \(1, 5, 0\)"),
    # shapes and dtypes consistent with d, nlist, m, nbits
    "centroids for another nlist": (ALL, _replace("centroids", lambda c: c[:-1]),
                                    r"array 'centroids' has dtype float32 and shape "
                                    r"\(3, \d\); expected float32 and \(4, \d\)"),
    "centroids float64": (ALL, _replace("centroids", lambda c: c.astype(np.float64)),
                          r"array 'centroids' has dtype float64"),
    "list_sizes int32": (ALL, _replace("list_sizes", lambda s: s.astype(np.int32)),
                         r"array 'list_sizes' has dtype int32 and shape \(4,\); "
                         r"expected int64 and \(4,\)"),
    "ids 2-D": (ALL, _replace("ids", lambda i: i.reshape(-1, 1)),
                r"array 'ids' has shape \(100, 1\); expected \(n,\)"),
    "ids missing": (ALL, lambda p, a: a.pop("ids"), r"array 'ids' is missing"),
    "vectors of another d": (ALL - {"pq8"}, _replace("data", lambda x: x[:, :-1]),
                             r"array 'data' has dtype float32 and shape \(100, \d\); "
                             r"expected float32 and \(100, \d\)"),
    "one vector short": (ALL - {"pq8"}, _replace("data", lambda x: x[:-1]),
                         r"array 'data' .* shape \(99, \d\); expected .* \(100, \d\)"),
    "codebooks for another nbits": (PQ, _replace("codebooks", lambda c: c[:, :8]),
                                    r"array 'codebooks' has dtype float32 and shape "
                                    r"\(\d, 8, 2\); expected float32 and \(\d, \d+, 2\)"),
    "codes one row short": (PQ, _replace("codes", lambda c: c[:-1]),
                            r"array 'codes' has dtype uint8 and shape"),
    "codes as int16": (PQ, _replace("codes", lambda c: c.astype(np.int16)),
                       r"array 'codes' has dtype int16"),
    # 4-bit packed layout
    "padding lane set": ({"pq4r"}, _lane_past_n,
                         r"array 'codes' has non-zero bytes in the lanes of the last "
                         r"block past the 100 stored rows; padding lanes must be 0"),
    "odd-m padding nibble set": ({"pq4r"}, _odd_m_nibble,
                                 r"array 'codes' block 0 has a non-zero high nibble in "
                                 r"byte 1, which pads the odd m=3; it must be 0"),
}
PARAMS = [pytest.param(kind, case, id=f"{kind}-{case}")
          for case, (kinds, _, _) in CASES.items() for kind in KINDS if kind in kinds]


@pytest.mark.parametrize("kind,case", PARAMS)
def test_crafted_file_is_refused_naming_the_file(saved, tmp_path, kind, case):
    _, edit, message = CASES[case]
    path = tmp_path / "crafted.nivf"
    _rewrite(saved[kind], path, edit)
    read_index_file(path)  # the checksums are valid: only the semantics are wrong
    cls = "IVFFlat" if kind == "flat" else "IVFPQ"
    pattern = f"'{re.escape(str(path))}': inconsistent {cls} file: {message}"
    for mmap in (False, True):
        with pytest.raises(ValueError, match=pattern):  # an IndexFileError
            numba_ivf.load(path, mmap=mmap, verify=False)


@pytest.mark.parametrize("kind", KINDS)
def test_untouched_rewrite_loads(saved, tmp_path, kind):
    # The helper itself changes nothing: a rewrite with no edit loads and searches alike.
    path = tmp_path / "same.nivf"
    _rewrite(saved[kind], path, lambda p, a: None)
    a, b = numba_ivf.load(saved[kind]), numba_ivf.load(path, mmap=True)
    q = np.random.default_rng(5).standard_normal((3, a.d)).astype(np.float32)
    for x, y in zip(a.search(q, 5, nprobe=4), b.search(q, 5, nprobe=4)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kind", KINDS)
def test_valid_edge_files_load(saved, tmp_path, kind):
    index = numba_ivf.load(saved[kind])
    # Sparse ids up to MAX_ID (the sorted duplicate check) and next_id at its maximum.
    sparse = tmp_path / "sparse.nivf"

    def spread(p, a):
        a["ids"][:] = a["ids"] * 10**16
        a["ids"][a["ids"].argmax()] = MAX_ID
        p["next_id"] = MAX_ID + 1

    _rewrite(saved[kind], sparse, spread)
    back = numba_ivf.load(sparse, mmap=True)
    assert len(back) == N and back.reconstruct(MAX_ID).shape == (index.d,)
    # Trained but empty, and never trained.
    index.remove(np.arange(10**6))
    index.save(tmp_path / "empty.nivf")
    assert len(numba_ivf.load(tmp_path / "empty.nivf", mmap=True)) == 0
    fresh = KINDS[kind]["make"]()
    fresh.save(tmp_path / "untrained.nivf")
    assert not numba_ivf.load(tmp_path / "untrained.nivf").is_trained


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_foreign_and_flipped_files_are_refused(saved, tmp_path, kind):
    raw = saved[kind].read_bytes()
    ids = read_index_file(saved[kind]).arrays["ids"]
    cases = {
        "short.nivf": (raw[:len(raw) // 2], r"is truncated"),
        "magic.nivf": (b"NUMBAIVX" + raw[8:], r"not a numba_ivf index file"),
        "tail.nivf": (raw + b"\0", r"unexpected bytes after the end"),
    }
    flipped = bytearray(raw)
    flipped[raw.index(ids.tobytes()) + 8 * 3] ^= 0x40  # a byte of ids[3]
    cases["flip.nivf"] = (bytes(flipped), r"checksum mismatch in array 'ids'")
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for mmap in (False, True):
            with pytest.raises(IndexFileError,
                               match=f"'{re.escape(str(path))}': .*{message}"):
                numba_ivf.load(path, mmap=mmap)
