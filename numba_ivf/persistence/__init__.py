"""Saving and loading indexes: one self-describing, checksummed, mmap-able file each.

Index classes call :func:`write_index_file` with their class name, JSON parameters and
named arrays, and :func:`read_index_file` to get them back. The layout is documented in
:mod:`numba_ivf.persistence.format`.
"""

from .format import (
    FORMAT_VERSION,
    IndexFile,
    IndexFileError,
    read_index_file,
    write_index_file,
)

__all__ = [
    "FORMAT_VERSION",
    "IndexFile",
    "IndexFileError",
    "read_index_file",
    "write_index_file",
]
