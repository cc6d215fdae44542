"""``numba_ivf.load``: open any saved index, dispatching on the kind stored in the file.

Index classes register a loader for their kind (``register_kind("IVFFlat", fn)``, done
when their module is imported). Built-in kinds are imported on demand, so loading an
IVFFlat file never imports the IVF-PQ code and vice versa.

Before a built-in kind's loader runs, :func:`_check_ivf_file` checks what the file's
checksums cannot: that its contents are an index ``save`` could have written (a file
crafted or edited with valid checksums must not become an index that returns duplicate
or sentinel ids, or scans rows outside its arrays). The checks are vectorised numpy over
the ids and the per-list arrays; they never read the vectors, so a memory-mapped load
costs O(ids), not O(data).
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

import numpy as np

__all__ = ["load", "register_kind"]

# kind -> loader(IndexFile) -> index
_LOADERS: dict[str, Callable] = {}
# kind -> module whose import registers it
_BUILTIN = {"IVFFlat": "numba_ivf.ivf.flat", "IVFPQ": "numba_ivf.ivf.pq",
            "IVFRaBitQ": "numba_ivf.ivf.rabitq"}
# A bitmap over the id range finds duplicates in one scatter (~3 ms per million ids,
# against ~20 ms for a sort) while it is at most this many bytes per stored id; sparser
# ids are sorted instead.
_ID_BITMAP_BYTES_PER_ID = 4
# 4-bit codes are packed in blocks of this many vectors (the layout of
# kernels.fastscan.fastscan).
_FASTSCAN_BLOCK = 32


def register_kind(kind: str, loader: Callable) -> None:
    """Make :func:`load` build ``kind`` files with ``loader(index_file)``."""
    _LOADERS[kind] = loader


def load(path, mmap: bool = False, *, verify: bool = True):
    """Load an index saved with ``index.save(path)``.

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool, default False
        Serve the inverted lists straight from the file (read-only memory map); the
        first add/remove copies them to memory.
    verify : bool, default True
        Check the checksum of every array (one pass over the file).

    Returns
    -------
    IVFFlat or IVFPQ (whatever was saved)

    Raises
    ------
    IndexFileError
        Missing, foreign, truncated, corrupted, newer-format or inconsistent files,
        naming the file and the problem. Whatever ``verify`` says, the contents are
        checked for consistency: parameter types and ranges, array shapes, finite
        centroids and codebooks, lists that tile the stored rows, unique ids in
        [0, 2**63 - 2] below ``next_id``, zero padding of 4-bit codes. (This reads the
        ids: about 6 ms per million ids for a memory-mapped file, whose load is
        otherwise O(header). Vectors are not read, nor codes except one byte column
        of the 4-bit blocks when m is odd.)

    Examples
    --------
    >>> index = numba_ivf.load("index.nivf", mmap=True)   # doctest: +SKIP
    """
    from ..persistence.format import IndexFileError, read_index_file
    if not isinstance(mmap, bool):
        raise TypeError(f"mmap must be True or False; got {mmap!r}.")
    f = read_index_file(os.fspath(path), mmap=mmap, verify=verify)
    if f.kind not in _LOADERS and f.kind in _BUILTIN:
        importlib.import_module(_BUILTIN[f.kind])
    loader = _LOADERS.get(f.kind)
    if loader is None:
        known = ", ".join(sorted(set(_LOADERS) | set(_BUILTIN)))
        raise IndexFileError(f"'{f.path}': holds a {f.kind!r} object, which "
                             f"numba_ivf.load cannot build (known kinds: {known}).")
    if f.kind in _BUILTIN:
        _check_ivf_file(f)
    return loader(f)


# -- consistency of IVFFlat / IVFPQ files ------------------------------------------

def _check_ivf_file(f) -> None:
    """Raise IndexFileError naming ``f.path`` unless the file is a consistent index.

    Mirrors what ``IVFBase.save`` writes: the parameters, then (trained files only)
    ``centroids``, ``list_starts``, ``list_sizes``, ``ids`` and the payload arrays of
    ``InvertedLists.compact_arrays``, where the lists tile the stored rows exactly.
    """
    from .._config import RABITQ_DIM_ALIGN
    from .._validation import METRICS
    from ..persistence.format import IndexFileError
    from ..pq import NBITS
    from .base import MAX_ID

    def bad(problem):
        return IndexFileError(f"'{f.path}': inconsistent {f.kind} file: {problem}.")

    p = f.params
    d = _int_param(p, "d", bad, 1)
    nlist = _int_param(p, "nlist", bad, 1)
    metric = p.get("metric")
    if type(metric) is not str or metric not in METRICS:
        raise bad(f"parameter 'metric' is {metric!r}; expected one of "
                  f"{', '.join(map(repr, METRICS))}")
    _int_param(p, "n_iter", bad, 0)
    _int_param(p, "seed", bad, None)
    _int_param(p, "max_points_per_centroid", bad, 1)
    # MAX_ID + 1: the next default id after storing the largest id an index accepts.
    next_id = _int_param(p, "next_id", bad, 0, MAX_ID + 1)
    ntotal = _int_param(p, "ntotal", bad, 0)
    trained = _bool_param(p, "trained", bad)
    if f.kind == "IVFPQ":
        m = _int_param(p, "m", bad, 1, d)
        if d % m:
            raise bad(f"parameter 'm' is {m}, which does not divide d={d}")
        nbits = p.get("nbits")
        if type(nbits) is not int or nbits not in NBITS:
            raise bad(f"parameter 'nbits' is {nbits!r}; expected one of "
                      f"{', '.join(map(str, NBITS))}")
        _bool_param(p, "by_residual", bad)
        refine = _bool_param(p, "refine", bad)
    elif f.kind == "IVFRaBitQ":
        bits = _int_param(p, "bits", bad, 1, 8)
        refine = _bool_param(p, "refine", bad)
        rot_kind = p.get("rotation")
        if rot_kind not in ("fht", "dense"):
            raise bad(f"parameter 'rotation' is {rot_kind!r}; expected 'fht' or 'dense'")
        D = -(-d // RABITQ_DIM_ALIGN) * RABITQ_DIM_ALIGN

    a = f.arrays
    if not trained:
        if ntotal or a:
            held = ", ".join(repr(name) for name in a) or "no arrays"
            raise bad(f"'trained' is false, but 'ntotal' is {ntotal} and the file holds "
                      f"{held}; an untrained index has no vectors and no arrays")
        return

    ids = _array(a, "ids", np.int64, None, bad)
    if ids.ndim != 1:
        raise bad(f"array 'ids' has shape {ids.shape}; expected (n,)")
    n = ids.shape[0]
    _array(a, "centroids", np.float32, (nlist, d), bad)
    starts = _array(a, "list_starts", np.int64, (nlist,), bad)
    sizes = _array(a, "list_sizes", np.int64, (nlist,), bad)
    if f.kind == "IVFFlat":
        _array(a, "data", np.float32, (n, d), bad)
    elif f.kind == "IVFRaBitQ":
        if rot_kind == "dense":
            _array(a, "rotation", np.float32, (D, D), bad)
        _array(a, "codes", np.uint8, (-(-n // _FASTSCAN_BLOCK), D // 8, _FASTSCAN_BLOCK),
               bad)
        _array(a, "fac", np.float32, (n, 4), bad)
        if bits > 1:
            _array(a, "ex", np.uint8, (n, (bits - 1) * D // 8), bad)
        if refine:
            _array(a, "data", np.float32, (n, d), bad)
    else:
        _array(a, "codebooks", np.float32, (m, 1 << nbits, d // m), bad)
        if nbits == 8:
            _array(a, "codes", np.uint8, (n, m), bad)
        else:
            _array(a, "codes", np.uint8, (-(-n // _FASTSCAN_BLOCK), (m + 1) // 2,
                                          _FASTSCAN_BLOCK), bad)
        if refine:
            _array(a, "data", np.float32, (n, d), bad)
    for name in ("centroids", "codebooks", "rotation", "fac"):
        if name in a and not np.isfinite(a[name]).all():
            where = np.argwhere(~np.isfinite(a[name]))[0]
            raise bad(f"array {name!r} holds {a[name][tuple(where)]} at index "
                      f"{tuple(int(i) for i in where)}; expected finite values")
    if ntotal != n:
        raise bad(f"'ntotal' is {ntotal}, but the file stores {n} ids")
    _check_tiling(np.asarray(starts), np.asarray(sizes), n, bad)
    _check_ids(np.asarray(ids), np.asarray(starts), np.asarray(sizes), next_id, MAX_ID,
               bad)
    if f.kind == "IVFPQ" and nbits == 4:
        _check_nibble_padding(np.asarray(a["codes"]), n, m, bad)
    if f.kind == "IVFRaBitQ":
        _check_nibble_padding(np.asarray(a["codes"]), n, D // 4, bad)


def _int_param(p, name, bad, lo, hi=None):
    """The int ``p[name]`` in [lo, hi] (None: unbounded, as the constructor allows)."""
    value = p.get(name)
    # bool is an int subclass, and JSON true must not pass for 1.
    if type(value) is not int:
        raise bad(f"parameter {name!r} is {value!r} ({type(value).__name__}); expected "
                  f"an integer")
    if lo is not None and value < lo or hi is not None and value > hi:
        want = (f"in [{lo}, {hi}]" if lo is not None and hi is not None
                else f">= {lo}" if lo is not None else f"<= {hi}")
        raise bad(f"parameter {name!r} is {value}; expected an integer {want}")
    return value


def _bool_param(p, name, bad):
    value = p.get(name)
    # A truthiness test would read the string "false" as True.
    if type(value) is not bool:
        raise bad(f"parameter {name!r} is {value!r} ({type(value).__name__}); expected "
                  f"true or false (a JSON boolean)")
    return value


def _array(a, name, dtype, shape, bad):
    arr = a.get(name)
    if arr is None:
        raise bad(f"array {name!r} is missing")
    dtype = np.dtype(dtype)
    if arr.dtype != dtype or shape is not None and arr.shape != shape:
        raise bad(f"array {name!r} has dtype {arr.dtype} and shape {arr.shape}; "
                  f"expected {dtype} and {shape if shape is not None else '(n,)'}")
    return arr


def _check_tiling(starts, sizes, n, bad):
    """Each list's rows [start, start + size) lie in [0, n), no two lists share a row,
    and together they cover all n stored rows (lists are saved compacted, unpadded)."""
    for name, arr in (("list_starts", starts), ("list_sizes", sizes)):
        wrong = np.flatnonzero((arr < 0) | (arr > n))
        if wrong.size:
            i = int(wrong[0])
            raise bad(f"{name}[{i}] is {arr[i]}; expected a value in [0, {n}] (the "
                      f"number of stored rows)")
    ends = starts + sizes  # no overflow: both are in [0, n]
    past = np.flatnonzero(ends > n)
    if past.size:
        i = int(past[0])
        raise bad(f"list {i} holds rows [{starts[i]}, {ends[i]}), past the {n} stored "
                  f"rows")
    full = np.flatnonzero(sizes)
    order = full[np.argsort(starts[full], kind="stable")]
    clash = np.flatnonzero(ends[order[:-1]] > starts[order[1:]])
    if clash.size:
        i, j = (int(v) for v in order[clash[0]:clash[0] + 2])
        raise bad(f"lists {i} (rows [{starts[i]}, {ends[i]})) and {j} (rows "
                  f"[{starts[j]}, {ends[j]})) overlap")
    total = int(sizes.sum())  # <= n: disjoint runs inside [0, n)
    if total != n:
        raise bad(f"the lists hold {total} rows, but {n} ids are stored; every stored "
                  f"row must belong to exactly one list")


def _check_ids(ids, starts, sizes, next_id, max_id, bad):
    n = ids.shape[0]
    if n == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi > max_id:
        row = int(np.argmin(ids) if lo < 0 else np.argmax(ids))
        raise bad(f"ids[{row}] is {ids[row]}; ids must be in [0, {max_id}] (2**63 - 1 "
                  f"marks a missing result)")
    dup = _first_duplicate(ids, lo, hi)
    if dup is not None:
        r0, r1 = (int(r) for r in np.flatnonzero(ids == dup)[:2])
        l0, l1 = (int(np.flatnonzero((starts <= r) & (r < starts + sizes))[0])
                  for r in (r0, r1))
        raise bad(f"id {dup} is stored twice (rows {r0} and {r1}, in lists {l0} and "
                  f"{l1}); ids must be unique")
    if next_id <= hi:
        raise bad(f"'next_id' is {next_id}, but id {hi} is stored; next_id (the next "
                  f"default id) must be above every stored id")


def _first_duplicate(ids, lo, hi):
    """An id stored more than once, or None."""
    n = ids.shape[0]
    if hi - lo < _ID_BITMAP_BYTES_PER_ID * n:
        seen = np.zeros(hi - lo + 1, dtype=np.bool_)
        seen[ids - lo if lo else ids] = True
        if np.count_nonzero(seen) == n:
            return None
    s = np.sort(ids)
    dup = np.flatnonzero(s[1:] == s[:-1])
    return int(s[dup[0]]) if dup.size else None


def _check_nibble_padding(codes, n, m, bad):
    """4-bit codes: lanes past the n stored rows and the high nibble that pads an odd m
    are 0, as ``kernels.fastscan.fastscan`` documents its packed layout."""
    tail = n % _FASTSCAN_BLOCK
    if tail:
        k = np.arange(tail, _FASTSCAN_BLOCK)
        lanes = np.where(k < 16, 2 * k, 2 * (k - 16) + 1)  # fastscan's byte order
        if codes[-1][:, lanes].any():
            raise bad(f"array 'codes' has non-zero bytes in the lanes of the last block "
                      f"past the {n} stored rows; padding lanes must be 0")
    if m % 2 and codes.shape[0]:
        high = np.flatnonzero((codes[:, -1, :] >> 4).any(axis=1))
        if high.size:
            raise bad(f"array 'codes' block {int(high[0])} has a non-zero high nibble "
                      f"in byte {codes.shape[1] - 1}, which pads the odd m={m}; it must "
                      f"be 0")
