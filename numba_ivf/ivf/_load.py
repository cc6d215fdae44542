"""``numba_ivf.load``: open any saved index, dispatching on the kind stored in the file.

Index classes register a loader for their kind (``register_kind("IVFFlat", fn)``, done
when their module is imported). Built-in kinds are imported on demand, so loading an
IVFFlat file never imports the IVF-PQ code and vice versa.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

__all__ = ["load", "register_kind"]

# kind -> loader(IndexFile) -> index
_LOADERS: dict[str, Callable] = {}
# kind -> module whose import registers it
_BUILTIN = {"IVFFlat": "numba_ivf.ivf.flat", "IVFPQ": "numba_ivf.ivf.pq"}


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
        naming the file and the problem.

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
    return loader(f)
