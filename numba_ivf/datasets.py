"""Dataset input/output for benchmarks and examples.

Readers and writers for the TEXMEX vector formats (``.fvecs``, ``.ivecs``, ``.bvecs``),
a reader for ann-benchmarks HDF5 files, a loader for folders laid out like
``ann-data/<name>`` (``base.npy``, ``queries.npy``, ``neighbors_<metric>.npy``,
``meta.json``), a clustered synthetic generator and an exact ground-truth search.

Nothing here is compiled: the work is file parsing and BLAS matrix products, which
numpy already does well.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._config import GT_BATCH_BYTES
from ._validation import METRICS, check_choice, check_int, check_vectors

__all__ = [
    "Dataset",
    "read_fvecs", "read_ivecs", "read_bvecs", "read_vecs",
    "write_fvecs", "write_ivecs", "write_bvecs",
    "read_hdf5", "load_dataset", "make_synthetic", "ground_truth",
    "normalize_metric",
]

# ann-benchmarks (and meta.json) metric names -> numba_ivf metric names.
_METRIC_ALIASES = {
    "l2": "l2", "euclidean": "l2", "sqeuclidean": "l2",
    "ip": "ip", "dot": "ip", "inner_product": "ip",
    "cosine": "cosine", "angular": "cosine",
}
# numba_ivf metric -> the names a ground-truth file may carry, preferred first.
_METRIC_FILE_NAMES = {
    "l2": ("l2", "euclidean"),
    "ip": ("ip", "dot"),
    "cosine": ("cosine", "angular"),
}

# extension -> (dtype of the values, width in bytes of one value)
_VECS_FORMATS = {
    ".fvecs": np.dtype("<f4"),
    ".ivecs": np.dtype("<i4"),
    ".bvecs": np.dtype("u1"),
}


def normalize_metric(metric: str) -> str:
    """Map a metric name, including ann-benchmarks names, to ``"l2"|"ip"|"cosine"``.

    ``euclidean`` -> ``l2``, ``angular`` -> ``cosine``, ``dot`` -> ``ip``.
    """
    if not isinstance(metric, str) or metric.lower() not in _METRIC_ALIASES:
        allowed = ", ".join(repr(m) for m in _METRIC_ALIASES)
        raise ValueError(f"metric must be one of {allowed}; got {metric!r}.")
    return _METRIC_ALIASES[metric.lower()]


@dataclass
class Dataset:
    """A benchmark dataset: base vectors, queries and (optionally) exact neighbours.

    Attributes
    ----------
    name : str
        Short name, used in reports and plot titles.
    base : ndarray of shape (n, d)
        Vectors to index (float32 for float data; uint8 data from ``.bvecs`` is
        converted to float32).
    queries : ndarray of shape (nq, d)
        Query vectors.
    neighbors : ndarray of shape (nq, k_gt) or None
        Exact neighbour ids of each query, best first, ties by lower id; None when
        the source has no ground truth for ``metric``.
    metric : {"l2", "ip", "cosine"}
        Metric the neighbours (and the benchmark) refer to.
    distances : ndarray of shape (nq, k_gt) or None
        Distances matching ``neighbors`` in the source's own convention, if given.
    source : str
        Where the data came from (a path or ``"synthetic"``).
    """

    name: str
    base: np.ndarray
    queries: np.ndarray
    neighbors: np.ndarray | None
    metric: str
    distances: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    @property
    def d(self) -> int:
        return int(self.base.shape[1])

    @property
    def nq(self) -> int:
        return int(self.queries.shape[0])

    def __repr__(self) -> str:
        gt = "none" if self.neighbors is None else f"{self.neighbors.shape[1]}-NN"
        return (f"Dataset(name={self.name!r}, n={self.n}, nq={self.nq}, d={self.d}, "
                f"metric={self.metric!r}, ground_truth={gt})")


# -- .fvecs / .ivecs / .bvecs ---------------------------------------------------------

def _check_extension(path: Path, ext: str | None) -> str:
    suffix = path.suffix.lower()
    if ext is None:
        if suffix not in _VECS_FORMATS:
            raise ValueError(f"{path}: unknown vector file extension {suffix!r}; "
                             f"expected one of {', '.join(_VECS_FORMATS)}.")
        return suffix
    if suffix != ext:
        raise ValueError(f"{path}: wrong extension {suffix!r} for a {ext} reader or "
                         f"writer; rename the file or use read_vecs()/the matching "
                         f"function for {suffix!r}.")
    return ext


def _read_vecs(path, ext: str | None, mmap: bool, max_rows: int | None) -> np.ndarray:
    path = Path(path)
    ext = _check_extension(path, ext)
    dtype = _VECS_FORMATS[ext]
    if not path.is_file():
        raise ValueError(f"{path}: no such file.")
    size = path.stat().st_size
    if size < 4:
        raise ValueError(f"{path}: file is empty or truncated ({size} bytes); a {ext} "
                         f"file holds records of an int32 dimension followed by the "
                         f"values.")
    dim = int(np.fromfile(path, dtype="<i4", count=1)[0])
    if dim <= 0:
        raise ValueError(f"{path}: first record has dimension {dim}; expected a "
                         f"positive int32 (is this really a {ext} file?).")
    record = 4 + dim * dtype.itemsize
    if size % record != 0:
        raise ValueError(f"{path}: file size {size} bytes is not a multiple of the "
                         f"record size {record} bytes (dim {dim}); the file is "
                         f"truncated or its records have different dimensions.")
    n = size // record
    if max_rows is not None:
        n = min(n, check_int("max_rows", max_rows, min_value=0))
    if n == 0:
        return np.empty((0, dim), dtype=dtype.newbyteorder("="))
    # One memory map of whole records; the dimension column and the values are views.
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, record))
    dims = raw[:, :4].copy().view("<i4").ravel()
    bad = np.flatnonzero(dims != dim)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{path}: inconsistent dimensions: record {i} has dimension "
                         f"{int(dims[i])}, record 0 has {dim}.")
    values = raw[:, 4:].view(dtype)  # (n, dim), row stride = record bytes
    if mmap:
        return values
    return np.ascontiguousarray(values, dtype=dtype.newbyteorder("="))


def read_vecs(path, *, mmap: bool = False, max_rows: int | None = None) -> np.ndarray:
    """Read a ``.fvecs``, ``.ivecs`` or ``.bvecs`` file, chosen by its extension.

    See :func:`read_fvecs` for the parameters.
    """
    return _read_vecs(path, None, mmap, max_rows)


def read_fvecs(path, *, mmap: bool = False, max_rows: int | None = None) -> np.ndarray:
    """Read a ``.fvecs`` file (records of int32 ``dim`` then ``dim`` float32 values).

    Parameters
    ----------
    path : str or Path
        File to read; its extension must be ``.fvecs``.
    mmap : bool, default False
        If True, return a read-only view of a memory map (no copy, not C-contiguous:
        the row stride skips each record's dimension field), suitable for files larger
        than memory. If False, return a C-contiguous array in memory.
    max_rows : int, optional
        Read at most this many records (the first ones).

    Returns
    -------
    ndarray of shape (n, dim), float32

    Raises
    ------
    ValueError
        Missing file, wrong extension, empty or truncated file, a size that is not a
        whole number of records, or records with different dimensions; the message
        names the file.

    Examples
    --------
    >>> write_fvecs("x.fvecs", np.eye(3, dtype=np.float32))  # doctest: +SKIP
    >>> read_fvecs("x.fvecs").shape                          # doctest: +SKIP
    (3, 3)
    """
    return _read_vecs(path, ".fvecs", mmap, max_rows)


def read_ivecs(path, *, mmap: bool = False, max_rows: int | None = None) -> np.ndarray:
    """Read a ``.ivecs`` file (int32 values); see :func:`read_fvecs`."""
    return _read_vecs(path, ".ivecs", mmap, max_rows)


def read_bvecs(path, *, mmap: bool = False, max_rows: int | None = None) -> np.ndarray:
    """Read a ``.bvecs`` file (uint8 values); see :func:`read_fvecs`."""
    return _read_vecs(path, ".bvecs", mmap, max_rows)


def _write_vecs(path, x, ext: str) -> None:
    path = Path(path)
    _check_extension(path, ext)
    dtype = _VECS_FORMATS[ext]
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"x must be a 2-D array of shape (n, d) to write {path}; got "
                         f"ndim={arr.ndim} and shape {arr.shape}.")
    if arr.shape[1] < 1:
        raise ValueError(f"x must have at least 1 column to write {path}; got shape "
                         f"{arr.shape}.")
    if ext == ".fvecs":
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"x must hold real numbers to write {path}; got dtype "
                            f"{arr.dtype}.")
    else:
        # Integer formats: refuse silent wrap-around or truncation of fractions.
        info = np.iinfo(dtype)
        if arr.dtype.kind == "f" and arr.size and not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"x holds non-integer values; {ext} stores {dtype.name} "
                             f"(writing {path}).")
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"x must hold integers to write {path}; got dtype "
                            f"{arr.dtype}.")
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"x has values outside [{info.min}, {info.max}], the "
                             f"range of {ext} ({dtype.name}); got [{arr.min()}, "
                             f"{arr.max()}] (writing {path}).")
    n, dim = arr.shape
    rec = np.empty((n, 4 + dim * dtype.itemsize), dtype=np.uint8)
    rec[:, :4] = np.array([dim], dtype="<i4").view(np.uint8)
    rec[:, 4:] = np.ascontiguousarray(arr, dtype=dtype).view(np.uint8).reshape(n, -1)
    rec.tofile(path)


def write_fvecs(path, x) -> None:
    """Write an (n, d) array as ``.fvecs`` (float32).

    Parameters
    ----------
    path : str or Path
        Destination, extension ``.fvecs``.
    x : array-like of shape (n, d)
        Values, converted to float32.
    """
    _write_vecs(path, x, ".fvecs")


def write_ivecs(path, x) -> None:
    """Write an (n, d) integer array as ``.ivecs`` (int32); values must fit int32."""
    _write_vecs(path, x, ".ivecs")


def write_bvecs(path, x) -> None:
    """Write an (n, d) integer array as ``.bvecs`` (uint8); values must be in 0..255."""
    _write_vecs(path, x, ".bvecs")


# -- ann-benchmarks HDF5 --------------------------------------------------------------

def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 files needs h5py, which is not installed; "
                          "install it with `pip install numba_ivf[hdf5]` (or "
                          "`pip install h5py`).") from None
    return h5py


_HDF5_LAYOUT = ("an ann-benchmarks file has datasets 'train' (n, d), 'test' (nq, d), "
                "'neighbors' (nq, k) and 'distances' (nq, k)")


def read_hdf5(path, metric: str | None = None) -> Dataset:
    """Read an ann-benchmarks HDF5 file.

    Parameters
    ----------
    path : str or Path
        A file with datasets ``train`` (n, d), ``test`` (nq, d), optionally
        ``neighbors`` (nq, k) and ``distances``, and the attribute ``distance``
        (``"euclidean"``, ``"angular"``, ``"dot"``...).
    metric : str, optional
        Override the file's metric. If it differs from the file's, the file's
        neighbours do not apply and ``neighbors`` is None (the file's ``distance`` may
        then be one numba_ivf does not know, e.g. ``"hamming"``).

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Missing or unreadable file; a missing ``train`` / ``test``; a member that is a
        group rather than a dataset; non-numeric (e.g. string) data, NaN or infinity
        in the vectors; shapes that do not fit together (``neighbors`` and
        ``distances`` need one row per query); neighbour ids outside [-1, n); a
        missing or unknown ``distance`` attribute when ``metric`` is not given. The
        message names the file and the dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file.")
    if path.suffix.lower() not in (".hdf5", ".h5"):
        raise ValueError(f"{path}: wrong extension {path.suffix!r} for an HDF5 file; "
                         f"expected '.hdf5' or '.h5'.")
    h5py = _import_h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc}).") from None
    with f:
        for key in ("train", "test"):
            if key not in f:
                raise ValueError(f"{path}: missing dataset {key!r}; {_HDF5_LAYOUT}.")
        # Vectors: float32 whatever the file stores (uint8 images, float64 ...).
        base = _h5_read(h5py, f, path, "train", "fiub", "real numbers, shape (n, d)")
        queries = _h5_read(h5py, f, path, "test", "fiub", "real numbers, shape (nq, d)")
        neighbors = distances = None
        if "neighbors" in f:
            neighbors = _h5_read(h5py, f, path, "neighbors", "iu",
                                 "integer ids, shape (nq, k)")
        if "distances" in f:
            distances = _h5_read(h5py, f, path, "distances", "fiu",
                                 "real numbers, shape (nq, k)")
        file_metric = f.attrs.get("distance", None)
    base, queries = _check_hdf5_vectors(path, base, queries)
    if neighbors is not None:
        neighbors = _check_hdf5_neighbors(path, neighbors, base.shape[0],
                                          queries.shape[0])
    if distances is not None:
        want = neighbors.shape if neighbors is not None else (queries.shape[0], "k")
        if distances.ndim != 2 or distances.shape[0] != queries.shape[0] or (
                neighbors is not None and distances.shape != neighbors.shape):
            raise ValueError(f"{path}: dataset 'distances' has shape {distances.shape}; "
                             f"expected {_shape_str(want)}, the distances of "
                             f"'neighbors', one row per query in 'test'.")
    if isinstance(file_metric, bytes):  # fixed-length strings come back as bytes
        file_metric = file_metric.decode("utf-8", "replace")
    if file_metric is None and metric is None:
        raise ValueError(f"{path}: the file has no 'distance' attribute; pass metric=.")
    known = isinstance(file_metric, str) and file_metric.lower() in _METRIC_ALIASES
    if file_metric is not None and not known and metric is None:
        shown = file_metric.tolist() if isinstance(file_metric, (np.generic, np.ndarray)) \
            else file_metric
        shown = repr(shown) if isinstance(shown, str) else \
            f"{shown!r} (of type {type(file_metric).__name__}, not str)"
        allowed = ", ".join(repr(m) for m in _METRIC_ALIASES)
        raise ValueError(f"{path}: attribute 'distance' is {shown}; expected one of "
                         f"{allowed}, or pass metric= to use the vectors with another "
                         f"metric (without the file's neighbours).")
    file_metric = normalize_metric(file_metric) if known else None
    metric = normalize_metric(metric) if metric is not None else file_metric
    if metric != file_metric:
        neighbors = distances = None
    return Dataset(name=path.stem, base=base, queries=queries, neighbors=neighbors,
                   metric=metric, distances=distances, source=str(path))


def _h5_read(h5py, f, path, key, kinds, expected):
    """Member ``key`` of ``f`` as an ndarray, if it is a dataset of dtype kind ``kinds``."""
    try:
        obj = f[key]
    except (KeyError, OSError) as exc:  # e.g. a dangling link
        raise ValueError(f"{path}: cannot open {key!r} ({exc}).") from None
    if not isinstance(obj, h5py.Dataset):
        what = "group" if isinstance(obj, h5py.Group) else type(obj).__name__
        raise ValueError(f"{path}: {key!r} is an HDF5 {what}, not a dataset; expected "
                         f"a dataset of {expected} ({_HDF5_LAYOUT}).")
    dtype = obj.dtype
    if dtype.kind not in kinds:
        found = "strings" if h5py.check_string_dtype(dtype) is not None or \
            dtype.kind in "SUO" else f"dtype {dtype}"
        raise ValueError(f"{path}: dataset {key!r} holds {found}; expected {expected}.")
    try:
        return np.asarray(obj[()])
    except (OSError, TypeError, ValueError) as exc:  # e.g. a missing compression filter
        raise ValueError(f"{path}: cannot read dataset {key!r} ({exc}).") from None


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _check_hdf5_vectors(path, base, queries):
    for key, arr, rows in (("train", base, "n"), ("test", queries, "nq")):
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise ValueError(f"{path}: dataset {key!r} has shape {arr.shape}; expected "
                             f"({rows}, d), 2-D with d >= 1.")
    if base.shape[1] != queries.shape[1]:
        raise ValueError(f"{path}: dataset 'test' has {queries.shape[1]} columns, but "
                         f"'train' has {base.shape[1]}; queries and base vectors must "
                         f"have the same dimension.")
    out = []
    for key, arr in (("train", base), ("test", queries)):
        with np.errstate(over="ignore"):  # float64 beyond float32 -> inf, refused below
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        # min/max propagate NaN: no (n, d) temporary unless something is wrong.
        if arr.size and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
            row, col = (int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise ValueError(f"{path}: dataset {key!r} holds {arr[row, col]} at row "
                             f"{row}, column {col}; expected finite values (within "
                             f"float32 range).")
        out.append(arr)
    return out


def _check_hdf5_neighbors(path, neighbors, n, nq):
    if neighbors.ndim != 2 or neighbors.shape[0] != nq or neighbors.shape[1] < 1:
        raise ValueError(f"{path}: dataset 'neighbors' has shape {neighbors.shape}; "
                         f"expected ({nq}, k) with k >= 1, one row of neighbour ids per "
                         f"query in 'test' ({nq} rows).")
    # Range-check before converting: uint64 ids past 2**63 would wrap to negatives.
    if neighbors.size and (neighbors.min() < -1 or neighbors.max() >= n):
        bad = np.argwhere((neighbors < -1) | (neighbors >= n))[0]
        raise ValueError(f"{path}: dataset 'neighbors' holds id "
                         f"{neighbors[tuple(bad)]} at row {bad[0]}, column {bad[1]}; "
                         f"expected ids of 'train' rows, in [0, {n}) (or -1 for "
                         f"missing).")
    return neighbors.astype(np.int64)


# -- folders: ann-data layout and TEXMEX triplets -------------------------------------

def _data_roots() -> list[Path]:
    env = os.environ.get("NUMBA_IVF_DATA")
    roots = [Path(p) for p in env.split(os.pathsep) if p] if env else []
    roots.append(Path.home() / "ann-data")
    return roots


def _load_npy_folder(folder: Path, metric: str | None) -> Dataset:
    meta = {}
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path}: not valid JSON ({exc}).") from None
    if metric is None:
        if "primary_metric" not in meta:
            # Fall back to the only ground truth present, if there is exactly one.
            found = sorted(p.stem[len("neighbors_"):]
                           for p in folder.glob("neighbors_*.npy"))
            if len(found) != 1:
                raise ValueError(f"{folder}: cannot tell the metric (no 'primary_metric' "
                                 f"in meta.json, ground truth files for {found or 'none'});"
                                 f" pass metric=.")
            meta_metric = found[0]
        else:
            meta_metric = meta["primary_metric"]
        metric = normalize_metric(meta_metric)
    else:
        metric = normalize_metric(metric)
    arrays = {}
    for key in ("base", "queries"):
        p = folder / f"{key}.npy"
        if not p.is_file():
            raise ValueError(f"{p}: no such file; a dataset folder needs base.npy and "
                             f"queries.npy.")
        arrays[key] = np.load(p)
    neighbors = distances = None
    for name in _METRIC_FILE_NAMES[metric]:
        p = folder / f"neighbors_{name}.npy"
        if p.is_file():
            neighbors = np.load(p).astype(np.int64)
            dp = folder / f"distances_{name}.npy"
            distances = np.load(dp) if dp.is_file() else None
            break
    base = np.ascontiguousarray(arrays["base"], dtype=np.float32)
    queries = np.ascontiguousarray(arrays["queries"], dtype=np.float32)
    _check_shapes(folder, base, queries, neighbors)
    return Dataset(name=meta.get("name", folder.name), base=base, queries=queries,
                   neighbors=neighbors, metric=metric, distances=distances,
                   source=str(folder), meta=meta)


def _find_one(folder: Path, patterns) -> Path | None:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def _load_vecs_folder(folder: Path, base_path: Path, metric: str | None) -> Dataset:
    if metric is None:
        raise ValueError(f"{base_path}: .fvecs/.bvecs files carry no metric; pass "
                         f"metric='l2', 'ip' or 'cosine'.")
    metric = normalize_metric(metric)
    stem = base_path.name.rsplit("base", 1)[0]  # "sift_" for sift_base.fvecs
    q_path = _find_one(folder, [f"{stem}query.*vecs", f"{stem}queries.*vecs"])
    if q_path is None:
        raise ValueError(f"{folder}: found {base_path.name} but no {stem}query.fvecs / "
                         f"{stem}queries.fvecs beside it.")
    gt_path = _find_one(folder, [f"{stem}groundtruth.ivecs", f"{stem}neighbors.ivecs"])
    base = read_vecs(base_path).astype(np.float32, copy=False)
    queries = read_vecs(q_path).astype(np.float32, copy=False)
    neighbors = read_ivecs(gt_path).astype(np.int64) if gt_path is not None else None
    _check_shapes(folder, base, queries, neighbors)
    return Dataset(name=stem.rstrip("_") or folder.name, base=base, queries=queries,
                   neighbors=neighbors, metric=metric, source=str(folder))


def _check_shapes(where, base, queries, neighbors) -> None:
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise ValueError(f"{where}: base {base.shape} and queries {queries.shape} must be "
                         f"2-D with the same number of columns.")
    if neighbors is not None and (neighbors.ndim != 2
                                  or neighbors.shape[0] != queries.shape[0]):
        raise ValueError(f"{where}: neighbors has shape {neighbors.shape}; expected "
                         f"({queries.shape[0]}, k), one row per query.")


def load_dataset(path_or_name, metric: str | None = None) -> Dataset:
    """Load a benchmark dataset from a folder, an HDF5 file or a TEXMEX file set.

    Parameters
    ----------
    path_or_name : str or Path
        One of:

        * a folder with ``base.npy``, ``queries.npy``, optional
          ``neighbors_<metric>.npy`` (int, exact top-k, ties by lower id) and
          ``meta.json`` (``primary_metric``, ``name``);
        * an ann-benchmarks ``.hdf5`` file (needs h5py);
        * a ``*base.fvecs`` / ``*base.bvecs`` file, or a folder holding one, with
          ``*query.fvecs`` and optionally ``*groundtruth.ivecs`` beside it;
        * a bare name such as ``"glove-50"``, looked up in the folders listed in the
          ``NUMBA_IVF_DATA`` environment variable and then in ``~/ann-data``.
    metric : {"l2", "ip", "cosine"} or ann-benchmarks name, optional
        Metric of the benchmark; defaults to the dataset's own (``meta.json``
        ``primary_metric`` or the HDF5 ``distance`` attribute). Ground truth is
        only attached when it exists for this metric.

    Returns
    -------
    Dataset

    Examples
    --------
    >>> ds = load_dataset("/root/ann-data/glove-50")   # doctest: +SKIP
    >>> ds.metric, ds.base.shape                      # doctest: +SKIP
    ('cosine', (100000, 50))
    """
    path = Path(path_or_name)
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        for root in _data_roots():
            if (root / path).exists():
                path = root / path
                break
    if not path.exists():
        roots = ", ".join(str(r) for r in _data_roots())
        raise ValueError(f"{path_or_name}: no such file or folder (bare names are "
                         f"looked up in {roots}).")
    if path.is_dir():
        if (path / "base.npy").is_file() or (path / "queries.npy").is_file():
            return _load_npy_folder(path, metric)
        base_path = _find_one(path, ["*base.fvecs", "*base.bvecs"])
        if base_path is not None:
            return _load_vecs_folder(path, base_path, metric)
        raise ValueError(f"{path}: folder has neither base.npy nor *base.fvecs; cannot "
                         f"read a dataset from it.")
    suffix = path.suffix.lower()
    if suffix in (".hdf5", ".h5"):
        return read_hdf5(path, metric)
    if suffix in (".fvecs", ".bvecs") and path.stem.endswith("base"):
        return _load_vecs_folder(path.parent, path, metric)
    raise ValueError(f"{path}: unsupported dataset file {suffix!r}; expected a folder, "
                     f"an .hdf5 file or a *base.fvecs file.")


# -- synthetic data -------------------------------------------------------------------

def make_synthetic(n: int = 20000, nq: int = 1000, d: int = 32, n_clusters: int = 50,
                   metric: str = "l2", seed: int = 0) -> Dataset:
    """Clustered Gaussian data: a mixture of ``n_clusters`` isotropic blobs.

    Cluster centres are drawn from N(0, I) in ``d`` dimensions (about ``sqrt(2 d)``
    apart); each point is a centre plus Gaussian noise of per-coordinate standard
    deviation ``sqrt(2) / 2``, i.e. a noise norm of about half the centre spacing, so
    clusters are distinct but wide (IVF recall then depends on nprobe, as on real
    data). Cluster sizes are uneven (Dirichlet weights). Queries come from the
    same mixture, independently of the base.

    Parameters
    ----------
    n, nq, d : int
        Number of base vectors, queries and dimensions.
    n_clusters : int, default 50
    metric : {"l2", "ip", "cosine"}, default "l2"
        Recorded in the Dataset; the data are the same for every metric.
    seed : int, default 0

    Returns
    -------
    Dataset
        float32 base (n, d) and queries (nq, d); ``neighbors`` is None (use
        :func:`ground_truth`); ``meta`` holds ``base_labels`` (n,) and ``centres``.
    """
    n = check_int("n", n, min_value=1)
    nq = check_int("nq", nq, min_value=1)
    d = check_int("d", d, min_value=1)
    n_clusters = check_int("n_clusters", n_clusters, min_value=1)
    metric = normalize_metric(metric)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    sigma = 0.5 * math.sqrt(2.0)  # ||noise|| ~ sigma sqrt(d) = half of sqrt(2 d)

    def draw(m):
        lab = rng.choice(n_clusters, size=m, p=weights)
        x = (centres[lab] + sigma * rng.standard_normal((m, d))).astype(np.float32)
        return x, lab

    base, base_labels = draw(n)
    queries, _ = draw(nq)
    return Dataset(name=f"synthetic-{n}x{d}", base=base, queries=queries, neighbors=None,
                   metric=metric, source="synthetic",
                   meta={"n_clusters": n_clusters, "seed": seed,
                         "base_labels": base_labels, "centres": centres})


# -- exact ground truth ---------------------------------------------------------------

def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0] = 1.0  # a zero vector stays zero (cosine 0 with everything)
    return x / norms[:, None]


def ground_truth(base, queries, k: int, metric: str = "l2", batch: int | None = None,
                 progress=None):
    """Exact top-k neighbours by blocked matrix products (float64), ties by lower id.

    Parameters
    ----------
    base : array-like of shape (n, d)
    queries : array-like of shape (nq, d)
    k : int
        Neighbours per query; when ``k > n`` the missing results are id -1 with
        distance inf (``l2``) or -inf (``ip``, ``cosine``).
    metric : {"l2", "ip", "cosine"}, default "l2"
        ``l2``: squared distances ascending. ``ip``: inner products descending.
        ``cosine``: cosine similarity descending (rows normalised first).
    batch : int, optional
        Queries per block. The work is tiled in (query block) x (base block) products
        whose float64 score matrix stays under ``GT_BATCH_BYTES`` from ``_config``
        (about 64 MB); ``batch`` sets the query block explicitly.
    progress : callable, optional
        Called as ``progress(n_done)`` after each query block (for progress bars).

    Returns
    -------
    D : ndarray of shape (nq, k), float32
    I : ndarray of shape (nq, k), int64

    Notes
    -----
    Scores are float64 products of float32-rounded inputs, so near-ties between
    different vectors are ordered as float64 sees them; exact ties (duplicate
    vectors) are ordered by ascending id.

    Examples
    --------
    >>> D, I = ground_truth(base, queries, k=10, metric="l2")  # doctest: +SKIP
    """
    metric = check_choice("metric", normalize_metric(metric), METRICS)
    k = check_int("k", k, min_value=1)
    x = check_vectors(base, "base").astype(np.float64)
    q = check_vectors(queries, "queries", d=x.shape[1], owner="base").astype(np.float64)
    n, nq = x.shape[0], q.shape[0]
    if metric == "cosine":
        x, q = _normalize_rows(x), _normalize_rows(q)
    # Rank by a key where smaller is better: squared distance, or minus the score.
    sign = 1.0 if metric == "l2" else -1.0
    x_norm2 = np.einsum("ij,ij->i", x, x) if metric == "l2" else None

    # Block sizes: the (bq, bb) float64 score matrix is the big temporary.
    cells = max(GT_BATCH_BYTES // 8, 1)
    if batch is None:
        bq = int(min(nq, max(1, cells // max(n, 1)), 4096))
        bq = max(bq, min(nq, 64))
    else:
        bq = check_int("batch", batch, min_value=1)
    bb = int(max(k, min(n, cells // bq)))

    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    for q0 in range(0, nq, bq):
        qb = q[q0:q0 + bq]
        m = qb.shape[0]
        best_key = np.full((m, k), np.inf)
        best_id = np.full((m, k), -1, dtype=np.int64)
        q_norm2 = np.einsum("ij,ij->i", qb, qb) if metric == "l2" else None
        for b0 in range(0, n, bb):
            xb = x[b0:b0 + bb]
            s = qb @ xb.T
            if metric == "l2":
                key = q_norm2[:, None] - 2.0 * s + x_norm2[None, b0:b0 + xb.shape[0]]
                np.maximum(key, 0.0, out=key)
            else:
                key = -s
            blk_key, blk_pos = _block_topk(key, k)
            # Running results hold lower ids than this block and are sorted by (key,
            # id); block candidates are in ascending id. A stable sort by key over the
            # concatenation therefore orders ties by ascending id.
            cat_key = np.concatenate([best_key, blk_key], axis=1)
            cat_id = np.concatenate([best_id, blk_pos + b0], axis=1)
            order = np.argsort(cat_key, axis=1, kind="stable")[:, :k]
            best_key = np.take_along_axis(cat_key, order, axis=1)
            best_id = np.take_along_axis(cat_id, order, axis=1)
        best_id[np.isinf(best_key)] = -1
        D[q0:q0 + m] = sign * best_key
        I[q0:q0 + m] = best_id
        if progress is not None:
            progress(q0 + m)
    return D, I


def _block_topk(key: np.ndarray, k: int):
    """The k smallest keys of each row and their column positions, in column order.

    Ties at the k-th value are broken by the lower column, so the selection is
    exactly what a stable sort would keep. Rows with fewer than k columns keep all.
    """
    m, w = key.shape
    if w <= k:
        return key, np.broadcast_to(np.arange(w), (m, w))
    kth = np.partition(key, k - 1, axis=1)[:, k - 1:k]
    less = key < kth
    n_less = less.sum(axis=1, keepdims=True)
    equal = key == kth
    # Among the entries equal to the k-th value, keep the leftmost k - n_less.
    keep = less | (equal & (np.cumsum(equal, axis=1) <= (k - n_less)))
    rows, cols = np.nonzero(keep)  # row-major: columns ascending within a row
    cols = cols.reshape(m, k)
    return np.take_along_axis(key, cols, axis=1), cols
