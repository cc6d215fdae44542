"""Tests for the on-disk index format (numba_ivf.persistence)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numba_ivf.persistence import (
    FORMAT_VERSION,
    IndexFile,
    IndexFileError,
    read_index_file,
    write_index_file,
)
from numba_ivf.persistence import format as fmt

DTYPES = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.uint16, np.bool_]


def _random_array(rng, dtype, shape):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _sample_arrays(seed):
    rng = np.random.default_rng(seed)
    return {
        "centroids": _random_array(rng, np.float32, (7, 5)),
        "codes": _random_array(rng, np.uint8, (11, 3)),
        "ids": _random_array(rng, np.int64, (11,)),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }


SAMPLE_PARAMS = {"nlist": 7, "metric": "l2", "nested": {"a": [1, 2.5, None], "b": True}}


def _match(path, problem):
    """Regex: the message names the file, then the problem."""
    return re.escape(str(path)) + r".*" + problem


@pytest.fixture
def sample_file(tmp_path):
    path = tmp_path / "sample.nivf"
    write_index_file(path, "IVFPQ", SAMPLE_PARAMS, _sample_arrays(0))
    return path


def _header_of(path):
    raw = pathlib.Path(path).read_bytes()
    magic, version, hlen = struct.unpack_from("<8sIQ", raw)
    return raw, json.loads(raw[20:20 + hlen]), 20 + hlen + 4


def _craft(path, header, data=b"", version=FORMAT_VERSION, data_start=1024):
    """Write a file with a valid prefix and header checksum around ``header``.

    ``data`` is placed at ``data_start``, past any header used in these tests.
    """
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    head = struct.pack("<8sIQ", b"NUMBAIVF", version, len(blob)) + blob
    raw = head + struct.pack("<I", zlib.crc32(head))
    assert len(raw) <= data_start
    raw += bytes(data_start - len(raw)) + data
    pathlib.Path(path).write_bytes(raw)


def _valid_header(data_start, nbytes=16, **array_fields):
    spec = {"dtype": "<f4", "shape": [2, 2], "offset": data_start, "nbytes": nbytes,
            "crc32": "00000000"}
    spec.update(array_fields)
    return {"format_version": FORMAT_VERSION, "kind": "IVFFlat", "checksum": "crc32",
            "numba_ivf_version": "test", "params": {},
            "file_size": data_start + nbytes, "arrays": {"x": spec}}


# -- round trips -----------------------------------------------------------------------

@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_every_dtype(tmp_path, dtype, mmap):
    rng = np.random.default_rng(1)
    arrays = {
        "matrix": _random_array(rng, dtype, (9, 4)),
        "cube": _random_array(rng, dtype, (2, 3, 5)),
        "vector": _random_array(rng, dtype, (13,)),
        "scalar": _random_array(rng, dtype, ()),
        "empty_rows": _random_array(rng, dtype, (0, 4)),
        "empty_cols": _random_array(rng, dtype, (3, 0)),
    }
    path = tmp_path / "a.nivf"
    write_index_file(path, "IVFFlat", {"d": 4}, arrays)
    out = read_index_file(path, mmap=mmap)
    assert list(out.arrays) == list(arrays)
    for name, expected in arrays.items():
        got = out.arrays[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected)
        if got.size:
            assert got.ctypes.data % fmt.ALIGNMENT == 0, name


def test_round_trip_params_and_metadata(tmp_path):
    params = {
        "nlist": np.int64(64), "nprobe": 8, "metric": "cosine", "by_residual": True,
        "tol": np.float32(0.25), "radius": float("inf"), "seed": None,
        "shape": (3, 4), "unicode": "é∑", "big": 2**70,
        "quantizer": {"kind": "KMeans", "params": {"niter": 20, "spherical": False,
                                                   "history": [[1.5, 2.5], []]}},
    }
    path = tmp_path / "p.nivf"
    write_index_file(str(path), "IVFFlat", params, {})
    out = read_index_file(path)
    assert isinstance(out, IndexFile)
    assert out.kind == "IVFFlat"
    assert out.format_version == FORMAT_VERSION
    assert out.path == str(path)
    assert out.arrays == {}
    expected = dict(params, nlist=64, tol=0.25, shape=[3, 4])
    assert out.params == expected
    assert type(out.params["nlist"]) is int and type(out.params["tol"]) is float
    assert "IVFFlat" in repr(out)


@pytest.mark.parametrize("crc_thread", [False, True], ids=["serial_crc", "threaded_crc"])
def test_non_contiguous_and_big_endian_inputs_chunked(tmp_path, monkeypatch, crc_thread):
    # A tiny chunk makes every array span many write/read/checksum steps; the helper
    # thread that overlaps CRC with I/O normally starts only above 4 MiB of data.
    monkeypatch.setattr(fmt, "PERSIST_IO_CHUNK_BYTES", 24)
    monkeypatch.setattr(fmt, "_CRC_THREAD_MIN_BYTES", 0 if crc_thread else 2**62)
    rng = np.random.default_rng(2)
    base = rng.standard_normal((10, 12))
    arrays = {
        "strided": base[::2, ::3],
        "fortran": np.asfortranarray(base.astype(np.float32)),
        "transposed_3d": rng.integers(0, 100, (3, 4, 5)).transpose(2, 0, 1),
        "big_endian": np.arange(50, dtype=">i4").reshape(5, 10),
        "big_endian_strided": np.arange(40, dtype=">f8").reshape(8, 5)[:, 1::2],
        "contiguous": rng.integers(0, 2**16, (7, 9)).astype(np.uint16),
        "list_input": [[1.5, 2.5], [3.5, 4.5]],
    }
    path = tmp_path / "c.nivf"
    write_index_file(path, "KMeans", {}, arrays)
    _, header, _ = _header_of(path)
    for name, value in arrays.items():  # checksums against a one-shot crc32
        spec = header["arrays"][name]
        whole = np.ascontiguousarray(value, dtype=spec["dtype"]).tobytes()
        assert int(spec["crc32"], 16) == zlib.crc32(whole), name
    for mmap in (False, True):
        out = read_index_file(path, mmap=mmap)
        for name, value in arrays.items():
            expected = np.asarray(value)
            got = out.arrays[name]
            assert got.dtype == expected.dtype.newbyteorder("<"), name
            assert got.dtype.isnative and got.flags.c_contiguous, name
            np.testing.assert_array_equal(got, expected)


def test_threaded_crc_matches_one_shot_crc(tmp_path, monkeypatch):
    # Chunks above 5 KiB make zlib release the GIL, so a checksum step that ran out of
    # order or concurrently with the next one would give a different CRC.
    monkeypatch.setattr(fmt, "PERSIST_IO_CHUNK_BYTES", 64 * 1024)
    monkeypatch.setattr(fmt, "_CRC_THREAD_MIN_BYTES", 0)
    rng = np.random.default_rng(7)
    big = rng.integers(0, 256, 3 * 1024 * 1024 + 5, dtype=np.uint8)
    strided = rng.standard_normal((600, 400))[:, ::2]  # converted chunk by chunk
    path = tmp_path / "big.nivf"
    write_index_file(path, "Big", {}, {"big": big, "strided": strided})
    _, header, _ = _header_of(path)
    assert int(header["arrays"]["big"]["crc32"], 16) == zlib.crc32(big)
    assert int(header["arrays"]["strided"]["crc32"], 16) == zlib.crc32(
        np.ascontiguousarray(strided).tobytes())
    out = read_index_file(path)
    np.testing.assert_array_equal(out.arrays["big"], big)
    np.testing.assert_array_equal(out.arrays["strided"], strided)


def test_mmap_returns_read_only_views_into_the_file(sample_file):
    arrays = _sample_arrays(0)
    out = read_index_file(sample_file, mmap=True)
    raw, header, _ = _header_of(sample_file)
    for name, expected in arrays.items():
        got = out.arrays[name]
        assert not got.flags.writeable, name
        np.testing.assert_array_equal(got, expected)
        if expected.size:
            assert isinstance(got, np.memmap), name
            assert got.ctypes.data % fmt.ALIGNMENT == 0, name
    with pytest.raises(ValueError, match="read-only"):
        out.arrays["centroids"][0, 0] = 1.0
    # The documented layout: any tool can map an array from the header alone.
    spec = header["arrays"]["codes"]
    external = np.memmap(sample_file, dtype=spec["dtype"], mode="r",
                         offset=spec["offset"], shape=tuple(spec["shape"]))
    np.testing.assert_array_equal(external, arrays["codes"])
    assert all(s["offset"] % 64 == 0 for s in header["arrays"].values())
    assert header["kind"] == "IVFPQ" and header["numba_ivf_version"]


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "o.nivf"
    write_index_file(path, "IVFFlat", {"v": 1}, _sample_arrays(1))
    mapped = read_index_file(path, mmap=True)
    write_index_file(path, "IVFFlat", {"v": 2}, _sample_arrays(2))
    assert read_index_file(path).params == {"v": 2}
    # os.replace swapped the inode, so views of the old file still hold the old data.
    np.testing.assert_array_equal(mapped.arrays["ids"], _sample_arrays(1)["ids"])
    assert sorted(os.listdir(tmp_path)) == ["o.nivf"]


def test_new_file_gets_the_usual_permissions(tmp_path):
    path = tmp_path / "m.nivf"
    write_index_file(path, "IVFFlat", {}, {})
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=8),
        hnp.arrays(
            dtype=st.sampled_from([np.dtype(d) for d in DTYPES] + [np.dtype(">f8")]),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        ),
        max_size=4,
    ),
    mmap=st.booleans(),
)
def test_round_trip_property(tmp_path, arrays, mmap):
    path = tmp_path / "h.nivf"
    write_index_file(path, "Prop", {"n": len(arrays)}, arrays)
    out = read_index_file(path, mmap=mmap, expected_kind="Prop")
    assert list(out.arrays) == list(arrays)
    for name, expected in arrays.items():
        got = out.arrays[name]
        assert got.shape == expected.shape
        assert got.dtype == expected.dtype.newbyteorder("<")
        # Byte-exact, so NaN payloads and -0.0 survive too.
        assert got.tobytes() == np.ascontiguousarray(
            expected, dtype=got.dtype).tobytes()


# -- read errors ---------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.nivf"
    with pytest.raises(IndexFileError, match=_match(path, "no such file")):
        read_index_file(path)


def test_directory(tmp_path):
    with pytest.raises(IndexFileError, match=_match(tmp_path, "directory")):
        read_index_file(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nivf"
    path.write_bytes(b"")
    with pytest.raises(IndexFileError, match=_match(path, "empty.*not a numba_ivf")):
        read_index_file(path)


def test_npy_file(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, np.arange(10))
    with pytest.raises(IndexFileError,
                       match=_match(path, "not a numba_ivf index.*NumPy .npy")):
        read_index_file(path)


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "random.bin"
    path.write_bytes(b"\x01" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(IndexFileError, match=_match(path, "not a numba_ivf index")):
        read_index_file(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("centroids: 1 2 3\n")
    with pytest.raises(IndexFileError,
                       match=_match(path, "not a numba_ivf index.*text file")):
        read_index_file(path)


def test_faiss_index_file(tmp_path):
    faiss = pytest.importorskip("faiss")
    path = tmp_path / "faiss.index"
    quantizer = faiss.IndexFlatL2(4)
    index = faiss.IndexIVFFlat(quantizer, 4, 2)
    faiss.write_index(index, str(path))
    with pytest.raises(IndexFileError,
                       match=_match(path, "not a numba_ivf index.*FAISS index")):
        read_index_file(path)


def test_truncated_at_every_length(sample_file):
    raw = sample_file.read_bytes()
    _, header, header_end = _header_of(sample_file)
    codes, ids = header["arrays"]["codes"], header["arrays"]["ids"]
    cases = {
        3: "truncated.*magic",
        10: "truncated.*fixed header",
        19: "truncated.*fixed header",
        40: "truncated.*header needs",
        header_end - 2: "truncated.*header needs",
        codes["offset"] + codes["nbytes"] // 2: "truncated.*array 'codes'",
        ids["offset"] + ids["nbytes"] - 1: "truncated.*array 'ids'",
        len(raw) - 1: "truncated.*header says",  # padding before 'empty'
    }
    for cut, problem in cases.items():
        sample_file.write_bytes(raw[:cut])
        for mmap in (False, True):
            with pytest.raises(IndexFileError, match=_match(sample_file, problem)):
                read_index_file(sample_file, mmap=mmap)
    # Exhaustively: no prefix of a valid file is accepted.
    for cut in range(len(raw)):
        sample_file.write_bytes(raw[:cut])
        with pytest.raises(IndexFileError, match=_match(sample_file, "")):
            read_index_file(sample_file, verify=False)


def test_flipped_byte_in_header(sample_file):
    raw = bytearray(sample_file.read_bytes())
    raw[40] ^= 0x01  # inside the JSON
    sample_file.write_bytes(bytes(raw))
    for verify in (True, False):  # the header is always checked
        with pytest.raises(IndexFileError,
                           match=_match(sample_file, "corrupted.*header checksum")):
            read_index_file(sample_file, verify=verify)


@pytest.mark.parametrize("crc_thread", [False, True], ids=["serial_crc", "threaded_crc"])
@pytest.mark.parametrize("mmap", [False, True])
def test_flipped_byte_in_array(sample_file, mmap, crc_thread, monkeypatch):
    monkeypatch.setattr(fmt, "PERSIST_IO_CHUNK_BYTES", 8)
    monkeypatch.setattr(fmt, "_CRC_THREAD_MIN_BYTES", 0 if crc_thread else 2**62)
    raw = bytearray(sample_file.read_bytes())
    _, header, _ = _header_of(sample_file)
    spec = header["arrays"]["codes"]
    raw[spec["offset"] + 5] ^= 0x10
    sample_file.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError,
                       match=_match(sample_file, "corrupted.*array 'codes'")):
        read_index_file(sample_file, mmap=mmap)
    # verify=False skips array checksums by design: the flip goes unnoticed.
    out = read_index_file(sample_file, mmap=mmap, verify=False)
    assert np.count_nonzero(out.arrays["codes"] != _sample_arrays(0)["codes"]) == 1


def test_every_single_bit_flip_is_caught_or_harmless(sample_file):
    """Never garbage: a flip is either reported or lands in padding."""
    raw = sample_file.read_bytes()
    expected = _sample_arrays(0)
    harmless = 0
    for pos in range(len(raw)):
        damaged = bytearray(raw)
        damaged[pos] ^= 1 << (pos % 8)
        sample_file.write_bytes(bytes(damaged))
        try:
            out = read_index_file(sample_file)
        except IndexFileError as exc:
            assert str(sample_file) in str(exc)
            continue
        harmless += 1
        assert out.kind == "IVFPQ" and out.params == SAMPLE_PARAMS
        for name, value in expected.items():
            np.testing.assert_array_equal(out.arrays[name], value)
    assert harmless < 64 * (len(expected) + 1)  # only alignment padding is unchecked


def test_newer_format_version(sample_file):
    raw = bytearray(sample_file.read_bytes())
    raw[8:12] = struct.pack("<I", 3)
    sample_file.write_bytes(bytes(raw))
    message = (f"written by a newer numba_ivf (format 3); this version reads formats "
               f"<= {FORMAT_VERSION}: upgrade numba_ivf")
    with pytest.raises(IndexFileError, match=_match(sample_file, re.escape(message))):
        read_index_file(sample_file)


def test_version_zero(tmp_path):
    path = tmp_path / "v0.nivf"
    _craft(path, _valid_header(1024), data=bytes(16), version=0)
    with pytest.raises(IndexFileError, match=_match(path, "corrupted.*version 0")):
        read_index_file(path)


def test_wrong_expected_kind(sample_file):
    with pytest.raises(IndexFileError, match=_match(
            sample_file, "file holds an IVFPQ index, expected IVFFlat")):
        read_index_file(sample_file, expected_kind="IVFFlat")
    assert read_index_file(sample_file, expected_kind="IVFPQ").kind == "IVFPQ"
    write_index_file(sample_file, "KMeans", {}, {})
    with pytest.raises(IndexFileError, match=_match(
            sample_file, "file holds a KMeans index, expected IVFPQ")):
        read_index_file(sample_file, expected_kind="IVFPQ")


def test_trailing_bytes(sample_file):
    with open(sample_file, "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(IndexFileError, match=_match(sample_file, "10 unexpected bytes")):
        read_index_file(sample_file)


def test_huge_header_length_is_rejected_before_reading(tmp_path):
    path = tmp_path / "h.nivf"
    path.write_bytes(struct.pack("<8sIQ", b"NUMBAIVF", 1, 2**40) + b"{}")
    with pytest.raises(IndexFileError, match=_match(path, "corrupted.*header length")):
        read_index_file(path)


def _bad_header_cases(data_start):
    good = _valid_header(data_start)
    array = good["arrays"]["x"]

    def with_array(**fields):
        return dict(good, arrays={"x": dict(array, **fields)})

    return {
        "not json": (b"{not json", "malformed JSON header"),
        "bad utf8": (b'{"kind": "\xff"}', "malformed JSON header"),
        "list": ([1, 2], "malformed JSON header.*expected an object"),
        "version mismatch": (dict(good, format_version=7), "inconsistent header"),
        "bool version": (dict(good, format_version=True), "inconsistent header"),
        "no kind": ({k: v for k, v in good.items() if k != "kind"},
                    "malformed header.*'kind'"),
        "params list": (dict(good, params=[1]), "malformed header.*'params'"),
        "checksum": (dict(good, checksum="md5"), "unsupported checksum 'md5'"),
        "object dtype": (with_array(dtype="|O"), "dtype '\\|O'.*not allowed"),
        "pickle dtype": (with_array(dtype="V8"), "dtype 'V8'.*not allowed"),
        "big endian": (with_array(dtype=">f4"), "dtype '>f4'.*not allowed"),
        "negative dim": (with_array(shape=[-2, -2]), "malformed header.*shape"),
        "bool dim": (with_array(shape=[True, 4]), "malformed header.*shape"),
        "nbytes": (with_array(nbytes=12), "inconsistent header.*nbytes 12"),
        "unaligned": (dict(with_array(offset=data_start + 8), file_size=data_start + 24),
                      "inconsistent header.*offset"),
        "gap at end": (dict(good, file_size=data_start + 16 + 64),
                       "inconsistent header.*file_size"),
        "inside header": (with_array(offset=0), "inconsistent header.*offset"),
        "bad crc": (with_array(crc32="xyz"), "malformed header.*crc32"),
        "bool offset": (with_array(offset=True), "malformed header.*'offset'"),
        "huge shape": (with_array(shape=[2**62, 2**62]), "inconsistent header.*large"),
    }


def test_valid_crafted_file_reads(tmp_path):
    # The crafting helper itself makes readable files, so the cases below fail for
    # the one reason each of them plants.
    path = tmp_path / "ok.nivf"
    data = np.arange(4, dtype="<f4").tobytes()
    header = _valid_header(1024, crc32=f"{zlib.crc32(data):08x}")
    _craft(path, header, data=data)
    out = read_index_file(path)
    np.testing.assert_array_equal(out.arrays["x"], [[0, 1], [2, 3]])


@pytest.mark.parametrize("case", list(_bad_header_cases(1024)))
def test_malformed_and_inconsistent_headers(tmp_path, case):
    header, problem = _bad_header_cases(1024)[case]
    path = tmp_path / "bad.nivf"
    _craft(path, header, data=bytes(16))
    with pytest.raises(IndexFileError, match=_match(path, problem)):
        read_index_file(path)


def test_overlapping_arrays(tmp_path):
    path = tmp_path / "overlap.nivf"
    header = _valid_header(1024)
    header["arrays"]["y"] = dict(header["arrays"]["x"])
    _craft(path, header, data=bytes(16))
    with pytest.raises(IndexFileError, match=_match(path, "array 'y' has offset 1024")):
        read_index_file(path)


def test_expected_kind_type():
    with pytest.raises(TypeError, match="expected_kind must be a str"):
        read_index_file("whatever", expected_kind=3)


# -- write errors --------------------------------------------------------------------

@pytest.mark.parametrize("kind, params, arrays, problem", [
    ("IVFFlat", {"s": {1, 2}}, {}, r"params\['s'\] is a set"),
    ("IVFFlat", {"a": np.zeros(3)}, {}, r"params\['a'\] is a ndarray.*put arrays"),
    ("IVFFlat", {"n": {1: 2}}, {}, r"params\['n'\] has key 1.*must be str"),
    ("IVFFlat", {"f": [1, object()]}, {}, r"params\['f'\]\[1\] is a object"),
    ("IVFFlat", [1], {}, "params must be a dict"),
    ("", {}, {}, "kind must be a non-empty str"),
    ("IVFFlat", {}, {"x": np.array(["a", "b"])}, "array 'x' has dtype <U1"),
    ("IVFFlat", {}, {"x": np.array([None, 1])}, "array 'x' has dtype object"),
    ("IVFFlat", {}, {"x": [[1, 2], [3]]}, "array 'x' is not a numeric array"),
    ("IVFFlat", {}, {"x": np.zeros(2, np.longdouble)}, "array 'x' has dtype"),
    ("IVFFlat", {}, {"x": np.zeros(2, "M8[s]")}, "array 'x' has dtype"),
    ("IVFFlat", {}, {3: np.zeros(2)}, "array names must be non-empty str"),
    ("IVFFlat", {}, [np.zeros(2)], "arrays must be a dict"),
])
def test_bad_input_leaves_existing_file_intact(tmp_path, kind, params, arrays, problem):
    path = tmp_path / "keep.nivf"
    write_index_file(path, "IVFFlat", SAMPLE_PARAMS, _sample_arrays(4))
    before = path.read_bytes()
    with pytest.raises(IndexFileError, match=_match(path, "cannot write index.*" + problem)):
        write_index_file(path, kind, params, arrays)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.nivf"]


def test_cyclic_params(tmp_path):
    cyclic = {}
    cyclic["self"] = cyclic
    path = tmp_path / "cyc.nivf"
    with pytest.raises(IndexFileError, match=_match(path, "nested more than")):
        write_index_file(path, "IVFFlat", cyclic, {})
    assert not path.exists()


def test_failure_mid_write_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "keep.nivf"
    write_index_file(path, "IVFFlat", SAMPLE_PARAMS, _sample_arrays(5))
    before = path.read_bytes()
    real_write_all = fmt._write_all
    calls = []

    def disk_full_on_third_write(f, data):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write_all(f, data)

    monkeypatch.setattr(fmt, "_write_all", disk_full_on_third_write)
    with pytest.raises(IndexFileError, match=_match(path, "No space left on device")):
        write_index_file(path, "IVFFlat", {"v": 2}, _sample_arrays(6))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.nivf"]

    def interrupted(f, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(fmt, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_index_file(path, "IVFFlat", {"v": 2}, _sample_arrays(6))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.nivf"]


def _dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


_KILLED_SAVE = """
import os, sys
import numpy as np
from numba_ivf.persistence import format as fmt
real = fmt._write_all
calls = []
def die_mid_write(f, data):
    calls.append(1)
    if len(calls) == 3:  # placeholder header and some data are on disk by now
        os._exit(9)
    real(f, data)
fmt._write_all = die_mid_write
fmt.write_index_file(sys.argv[1], "IVFFlat", {"v": 2},
                     {"a": np.arange(1000), "b": np.ones((50, 4), np.float32)})
"""


def test_killed_save_leaves_a_temp_file_that_load_ignores_and_save_removes(tmp_path):
    path = tmp_path / "k.nivf"
    write_index_file(path, "IVFFlat", {"v": 1}, _sample_arrays(1))
    child = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(path)],
                           cwd=pathlib.Path(__file__).parents[1], capture_output=True)
    assert child.returncode == 9, child.stderr.decode()
    (stale,) = [name for name in os.listdir(tmp_path) if name != "k.nivf"]
    assert re.fullmatch(r"\.k\.nivf\.[0-9]+\.[a-z0-9_]{8}\.tmp", stale)
    # The path still holds the old, complete file, and loading it ignores the temp.
    assert read_index_file(path).params == {"v": 1}
    # A young temp may belong to a writer our pid check cannot see: it stays.
    write_index_file(path, "IVFFlat", {"v": 2}, _sample_arrays(2))
    assert sorted(os.listdir(tmp_path)) == sorted(["k.nivf", stale])
    _age(tmp_path / stale, fmt._STALE_TEMP_MIN_AGE_S + 5)
    write_index_file(path, "IVFFlat", {"v": 3}, _sample_arrays(3))
    assert os.listdir(tmp_path) == ["k.nivf"]
    assert read_index_file(path).params == {"v": 3}


def test_only_stale_temp_files_of_the_same_target_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    path = tmp_path / "t.nivf"
    names = {
        f".t.nivf.{dead}.abc_1234.tmp": False,          # stale: removed
        f".t.nivf.{dead}.zzzzzzzz.tmp": False,          # stale: removed
        f".t.nivf.{alive}.abcd1234.tmp": True,          # writer alive
        f".t.nivf.{os.getpid()}.abcd1234.tmp": True,    # this process (another thread)
        f".u.nivf.{dead}.abcd1234.tmp": True,           # another target
        f".t.nivf.x.{dead}.abcd1234.tmp": True,         # target "t.nivf.x"
        f".t.nivf.{dead}.abcd123.tmp": True,            # not mkstemp's 8 characters
        f".t.nivf.{dead}.ABCD1234.tmp": True,
        ".t.nivf.abcd1234.tmp": True,                   # no pid: an older version's
        f".t.nivf.0.abcd1234.tmp": True,                # pid 0: not a process
        f"t.nivf.{dead}.abcd1234.tmp": True,            # no leading dot
        f".t.nivf.{dead}.abcd1234.tmp.bak": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
        _age(tmp_path / name, fmt._STALE_TEMP_MIN_AGE_S + 5)
    (tmp_path / f".t.nivf.{dead}.dir_4567.tmp").mkdir()  # not a file: left alone
    names[f".t.nivf.{dead}.dir_4567.tmp"] = True
    write_index_file(path, "IVFFlat", {}, {})
    kept = {name for name, keep in names.items() if keep}
    assert set(os.listdir(tmp_path)) == kept | {"t.nivf"}


def test_temp_file_of_a_save_in_progress_survives_another_save(tmp_path, monkeypatch):
    # A save to the same path starts while another one (here: of this process, as from
    # another thread) is mid-write: its cleanup must keep that temp file, even if old.
    path = tmp_path / "p.nivf"
    real_write_all = fmt._write_all

    def save_again_mid_write(f, data):
        real_write_all(f, data)
        monkeypatch.setattr(fmt, "_write_all", real_write_all)  # once
        (tmp,) = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        _age(tmp_path / tmp, fmt._STALE_TEMP_MIN_AGE_S + 5)
        write_index_file(path, "IVFFlat", {"v": "inner"}, {})
        assert tmp in os.listdir(tmp_path)

    monkeypatch.setattr(fmt, "_write_all", save_again_mid_write)
    write_index_file(path, "IVFFlat", {"v": "outer"}, _sample_arrays(4))
    assert read_index_file(path).params == {"v": "outer"}
    assert os.listdir(tmp_path) == ["p.nivf"]


def test_missing_directory(tmp_path):
    path = tmp_path / "no" / "such" / "dir.nivf"
    with pytest.raises(IndexFileError, match=_match(path, "cannot create a temporary")):
        write_index_file(path, "IVFFlat", {}, {})


def test_bad_path_type():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike; got int"):
        write_index_file(3, "IVFFlat", {}, {})
