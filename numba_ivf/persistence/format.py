"""The numba_ivf index file: one self-describing binary file per index.

Layout (every integer little-endian)::

    offset    size  field
    0         8     magic b"NUMBAIVF"
    8         4     format version, uint32
    12        8     header length H in bytes, uint64
    20        H     header: a UTF-8 JSON object (below)
    20 + H    4     crc32 of bytes [0, 20 + H): magic, version, length and JSON
    ...             zero padding
    offset_i  n_i   array i: raw C-order bytes, offset_i a multiple of 64

The JSON header::

    {"format_version": 1, "kind": "IVFFlat", "numba_ivf_version": "0.1.0",
     "checksum": "crc32", "file_size": 4194368, "params": {...},
     "arrays": {"centroids": {"dtype": "<f4", "shape": [1024, 128],
                              "offset": 448, "nbytes": 524288, "crc32": "1c291ca3"},
                ...}}

``offset`` is absolute (from the start of the file) so that any tool can map an array
with ``np.memmap(path, dtype, "r", offset, shape)``; 64-byte alignment makes those views
cache-line (and AVX-512) aligned because the mapping itself starts on a page.
``dtype`` always carries its byte order ("<f4", "|u1"): the writer converts to
little-endian, and the reader accepts only the numeric dtypes of ``ALLOWED_DTYPES`` --
there is no object dtype and no pickle anywhere, so a hostile file can at worst yield
wrong numbers, never run code.

Checksums are CRC-32 (``zlib.crc32``): stdlib, about 1.6 GB/s here (faster than
hashlib's sha1 or blake2b on this machine), and it detects every burst error up to 32
bits and all but 2**-32 of random corruption. It guards against torn writes and bit rot,
not against forgery: it is not a cryptographic MAC.

Writes are atomic: the file is built under a temporary name in the target directory,
``.<name>.<pid>.<8 random chars>.tmp``, fsync'ed, then ``os.replace``'d onto the path, so
``path`` always holds either the old complete file or the new complete file. A writer
killed mid-save leaves its temporary file behind; readers never look at it, and a later
save to the same path deletes it (see ``_remove_stale_temps``). The header is written
twice: once with placeholder checksums (CRC strings have a fixed width, so the length
does not change) and once more, after the arrays have been streamed and checksummed in
one pass.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import struct
import sys
import tempfile
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from .._config import PERSIST_IO_CHUNK_BYTES

__all__ = [
    "ALIGNMENT",
    "ALLOWED_DTYPES",
    "FORMAT_VERSION",
    "MAGIC",
    "IndexFile",
    "IndexFileError",
    "read_index_file",
    "write_index_file",
]

# The constants below define the file format itself (changing one means a new format
# version), so they live here rather than in _config.py with the tunable policy.
MAGIC = b"NUMBAIVF"
# Highest format version this module reads; also the version it writes.
FORMAT_VERSION = 1
ALIGNMENT = 64
# Headers hold parameters, not data; the cap keeps a corrupted length field from making
# the reader allocate the whole file before the checksum can reject it.
MAX_HEADER_BYTES = 64 * 1024 * 1024
# Numeric dtypes only, as numpy spells them with explicit byte order.
ALLOWED_DTYPES = frozenset({
    "|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8",
    "<f2", "<f4", "<f8", "<c8", "<c16",
})

_PREFIX = struct.Struct("<8sIQ")  # magic, format version, header length
_CRC = struct.Struct("<I")
_HEADER_START = _PREFIX.size      # 20
_CHECKSUM = "crc32"
_MAX_PARAM_DEPTH = 64
# Below this much array data a helper thread costs more than the overlap it buys.
_CRC_THREAD_MIN_BYTES = 4 * 1024 * 1024
# A temporary file of a save to ``name`` is ".<name>.<pid>.<mkstemp's 8 chars>.tmp".
_TEMP_TAIL = r"\.([0-9]+)\.[a-z0-9_]{8}\.tmp"
# A temporary file is stale when its writer's pid is dead AND it has not been written for
# this long. The pid alone is exact for writers on this machine (in this pid namespace),
# but a writer in another container or on another host sharing the directory has a pid
# we cannot probe; a live writer touches its file every chunk, last of all just before
# its final fsync, so a minute's silence plus a dead pid is a killed save. The price: a
# save within a minute of the kill leaves the file for the save after it.
_STALE_TEMP_MIN_AGE_S = 60.0

# First bytes of files people are likely to pass by mistake, for a helpful message.
_FOREIGN_SIGNATURES = (
    (b"\x93NUMPY", "a NumPy .npy file"),
    (b"PK\x03\x04", "a zip archive (a NumPy .npz file?)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x80", "a Python pickle"),
)
# FAISS writes a four-character code first: "Iw.." / "Ix.." for IVF indexes, "IxF2" /
# "IxFI" for flat ones, "IHNf" for HNSW, "IPQ." for PQ.
_FAISS_PREFIXES = (b"Iw", b"Ix", b"IH", b"IP", b"Iv", b"IL", b"IT", b"IN", b"IR",
                   b"IB")


class IndexFileError(ValueError):
    """A numba_ivf index file cannot be written or read.

    The message always starts with the file's path and says what is wrong: missing,
    not a numba_ivf index, truncated, corrupted, written by a newer numba_ivf, of the
    wrong kind, or internally inconsistent.
    """


@dataclass(frozen=True, repr=False)
class IndexFile:
    """The contents of an index file, as returned by :func:`read_index_file`.

    Attributes
    ----------
    path : str
        The file that was read.
    kind : str
        Class name of the saved object ("IVFFlat", "IVFPQ", "KMeans", ...).
    params : dict
        The JSON-serialisable parameters given to :func:`write_index_file` (tuples come
        back as lists, numpy scalars as Python numbers).
    arrays : dict of str to ndarray
        Arrays by name, in the order they were written. Read-only ``np.memmap`` views
        when the file was opened with ``mmap=True``, ordinary owned arrays otherwise.
    format_version : int
        Format version of the file.
    writer_version : str
        numba_ivf version that wrote the file ("unknown" if it could not tell).
    """

    path: str
    kind: str
    params: dict
    arrays: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    writer_version: str = "unknown"

    def __repr__(self) -> str:
        arrays = ", ".join(f"{name}: {a.dtype.str}{list(a.shape)}"
                           for name, a in self.arrays.items())
        return (f"IndexFile(path={self.path!r}, kind={self.kind!r}, "
                f"format_version={self.format_version}, arrays={{{arrays}}})")


# -- writing -----------------------------------------------------------------------

def write_index_file(path: str | os.PathLike, kind: str, params: dict,
                     arrays: dict[str, np.ndarray]) -> None:
    """Write an index to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination. Its directory must exist. An existing file is replaced only once
        the new file is complete and on disk; on any error it is left untouched.
    kind : str
        Class name of the object saved, checked on load by ``expected_kind``.
    params : dict
        Constructor arguments and scalar state. Values may be None, bool, int, float
        (inf/nan allowed), str, list, tuple (read back as list), numpy scalars (read
        back as Python numbers) and dicts with str keys, nested.
    arrays : dict of str to array_like
        Named arrays of any numeric dtype (bool, integers, floats, complex) and any
        shape, including 0-sized and 0-d. Non-contiguous or big-endian arrays are
        converted chunk by chunk while writing, never copied whole.

    Raises
    ------
    IndexFileError
        If ``kind``, ``params`` or ``arrays`` cannot be stored (checked before the disk
        is touched), or if writing fails (the OS error is chained).

    Notes
    -----
    Beyond the arrays themselves, memory use is a few ``PERSIST_IO_CHUNK_BYTES``
    (1 MiB) chunks, or a few rows along the first axis when a non-contiguous array
    has rows larger than that. The data is written in one pass; its CRC-32 is computed
    on a helper thread at the same time (for more than 4 MiB of data), then the header
    is rewritten with the checksums, the file fsync'ed and renamed onto ``path``.
    Temporary files that killed saves to ``path`` left behind (writer dead, file
    untouched for a minute) are deleted first. A
    200 MB array writes in about 1.2-1.8x the time of a bare write + fsync of its
    bytes (the range is load from other processes on a 2-core machine).

    Examples
    --------
    >>> write_index_file("index.nivf", "IVFFlat", {"nlist": 2, "metric": "l2"},
    ...                  {"centroids": np.zeros((2, 8), np.float32)})  # doctest: +SKIP
    """
    path_str = _path_str(path)
    if not isinstance(kind, str) or not kind:
        raise IndexFileError(f"'{path_str}': cannot write index: kind must be a "
                             f"non-empty str (the class name); got {kind!r}.")
    if not isinstance(params, dict):
        raise IndexFileError(f"'{path_str}': cannot write index: params must be a "
                             f"dict; got {type(params).__name__}.")
    if not isinstance(arrays, dict):
        raise IndexFileError(f"'{path_str}': cannot write index: arrays must be a "
                             f"dict of name -> ndarray; got {type(arrays).__name__}.")
    clean_params = _normalise_params(params, "params", path_str, 0)
    prepared = [_prepare_array(name, value, path_str) for name, value in arrays.items()]

    header_fields = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "numba_ivf_version": _package_version(),
        "checksum": _CHECKSUM,
        "params": clean_params,
    }
    try:
        plan, blob = _plan_layout(header_fields, prepared)
    except (TypeError, ValueError) as exc:  # only reachable through a bug above
        raise IndexFileError(f"'{path_str}': cannot write index: the header cannot be "
                             f"encoded as JSON ({exc}).") from exc
    if len(blob) > MAX_HEADER_BYTES:
        raise IndexFileError(f"'{path_str}': cannot write index: the JSON header would "
                             f"be {len(blob)} bytes, over the {MAX_HEADER_BYTES} byte "
                             f"limit; store large values in `arrays`, not `params`.")

    directory = os.path.dirname(os.path.abspath(path_str))
    name = os.path.basename(path_str)
    _remove_stale_temps(directory, name)  # first: frees their space for this write
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp",
                                   dir=directory)
    except OSError as exc:
        raise IndexFileError(f"'{path_str}': cannot write index: cannot create a "
                             f"temporary file in '{directory}' ({exc}).") from exc
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            if hasattr(os, "fchmod"):  # mkstemp makes 0o600; give the usual mode
                os.fchmod(f.fileno(), _new_file_mode(path_str))
            layout, _ = plan
            with _crc_executor(sum(entry[-1] for entry in layout)) as executor:
                crcs = _write_body(f, header_fields, plan, prepared, len(blob),
                                   executor)
            f.seek(0)  # now that the checksums are known
            _write_all(f, _header_bytes(header_fields, plan, crcs))
            os.fsync(f.fileno())
        os.replace(tmp, path_str)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise IndexFileError(f"'{path_str}': cannot write index: {exc}.") from exc
        raise
    _fsync_directory(directory)


def _prepare_array(name, value, path_str):
    """Check one array and return (name, array, little-endian dtype)."""
    if not isinstance(name, str) or not name:
        raise IndexFileError(f"'{path_str}': cannot write index: array names must be "
                             f"non-empty str; got {name!r}.")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise IndexFileError(f"'{path_str}': cannot write index: array {name!r} is not "
                             f"a numeric array ({exc}).") from None
    target = arr.dtype.newbyteorder("<") if arr.dtype.byteorder in "<>=" else arr.dtype
    if target.str not in ALLOWED_DTYPES:
        allowed = ", ".join(sorted(ALLOWED_DTYPES))
        raise IndexFileError(f"'{path_str}': cannot write index: array {name!r} has "
                             f"dtype {arr.dtype} ({arr.dtype.str!r}), which cannot be "
                             f"stored; allowed dtypes: {allowed}.")
    return name, arr, target


def _normalise_params(value, where, path_str, depth):
    """Return ``value`` as plain JSON types, or raise naming the offending entry."""
    if depth > _MAX_PARAM_DEPTH:
        raise IndexFileError(f"'{path_str}': cannot write index: {where} is nested "
                             f"more than {_MAX_PARAM_DEPTH} levels deep (a cycle?).")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_normalise_params(v, f"{where}[{i}]", path_str, depth + 1)
                for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise IndexFileError(f"'{path_str}': cannot write index: {where} has "
                                     f"key {k!r} of type {type(k).__name__}; JSON "
                                     f"object keys must be str.")
            out[k] = _normalise_params(v, f"{where}[{k!r}]", path_str, depth + 1)
        return out
    hint = " (put arrays in `arrays`, not `params`)" \
        if isinstance(value, np.ndarray) else ""
    raise IndexFileError(f"'{path_str}': cannot write index: {where} is a "
                         f"{type(value).__name__}, which is not JSON-serialisable; "
                         f"allowed: None, bool, int, float, str, list, tuple and dict "
                         f"with str keys{hint}.")


def _plan_layout(header_fields, prepared):
    """Return ((layout, file_size), placeholder header bytes).

    Arrays start at the first multiple of ALIGNMENT after the header, but the header
    holds the offsets, so its length depends on their digits: iterate. The start only
    grows and the header grows by digits, so this stops after two or three rounds,
    with ``data_start == _align(header_end)``.
    """
    zero_crcs = [0] * len(prepared)
    data_start = _align(_HEADER_START + _CRC.size)
    while True:
        layout = []
        pos = data_start
        for name, arr, target in prepared:
            pos = _align(pos)
            nbytes = int(arr.size) * target.itemsize
            layout.append((name, target.str, list(arr.shape), pos, nbytes))
            pos += nbytes
        file_size = pos
        blob = _json_header(header_fields, layout, zero_crcs, file_size)
        needed = _align(_HEADER_START + len(blob) + _CRC.size)
        if needed <= data_start:
            return (layout, file_size), blob
        data_start = needed


def _json_header(header_fields, layout, crcs, file_size):
    header = dict(header_fields)
    header["file_size"] = file_size
    header["arrays"] = {
        name: {"dtype": dtype, "shape": shape, "offset": off, "nbytes": nbytes,
               "crc32": f"{crc:08x}"}
        for (name, dtype, shape, off, nbytes), crc in zip(layout, crcs)
    }
    # allow_nan: Python's json reads NaN/Infinity back, and inf is a legitimate
    # parameter value (e.g. an unbounded radius).
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True).encode("utf-8")


def _header_bytes(header_fields, plan, crcs):
    layout, file_size = plan
    blob = _json_header(header_fields, layout, crcs, file_size)
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(blob)) + blob
    return head + _CRC.pack(zlib.crc32(head))


def _write_body(f, header_fields, plan, prepared, blob_len, executor):
    """Write the placeholder header and stream every array; return the CRCs."""
    layout, file_size = plan
    placeholder = _header_bytes(header_fields, plan, [0] * len(prepared))
    assert len(placeholder) == _HEADER_START + blob_len + _CRC.size
    _write_all(f, placeholder)
    pos = len(placeholder)
    crcs = []
    for (name, arr, target), (_, _, _, offset, nbytes) in zip(prepared, layout):
        if offset > pos:
            _write_all(f, bytes(offset - pos))
        crc = _Crc32Stream(executor)
        for chunk in _byte_chunks(arr, target):
            crc.update(chunk)  # runs on the helper thread while this chunk is written
            _write_all(f, chunk)
        crcs.append(crc.result())
        pos = offset + nbytes
    if pos < file_size:  # no arrays: pad the header to data_start
        _write_all(f, bytes(file_size - pos))
    return crcs


def _byte_chunks(arr, target):
    """Yield the C-order little-endian bytes of ``arr`` as uint8 arrays of bounded size."""
    if arr.dtype == target and arr.flags.c_contiguous:
        flat = arr.reshape(-1).view(np.uint8)  # no copy
        for start in range(0, flat.size, PERSIST_IO_CHUNK_BYTES):
            yield flat[start:start + PERSIST_IO_CHUNK_BYTES]
        return
    if arr.ndim == 0:
        yield np.ascontiguousarray(arr, dtype=target).reshape(-1).view(np.uint8)
        return
    # Convert along the first axis: consecutive leading slices are consecutive in C
    # order, so each converted block is a contiguous piece of the output.
    row_bytes = max(1, math.prod(arr.shape[1:]) * target.itemsize)
    rows = max(1, PERSIST_IO_CHUNK_BYTES // row_bytes)
    for start in range(0, arr.shape[0], rows):
        block = np.ascontiguousarray(arr[start:start + rows], dtype=target)
        yield block.reshape(-1).view(np.uint8)


def _write_all(f, data):
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = f.write(view)
        view = view[written:]


def _remove_stale_temps(directory, name):
    """Delete the temporary files that killed saves to ``directory/name`` left behind.

    Only names of exactly this target's temporary-file pattern are considered (not
    another target's, not a user's file), and of those only files whose writer's pid is
    not a live process and that have not been modified for ``_STALE_TEMP_MIN_AGE_S``:
    a save in progress in any process, this one included, keeps its file. A pid reused
    by an unrelated process only delays the cleanup. Best effort: errors are ignored,
    since the save itself does not depend on it.
    """
    if os.name != "posix":  # on Windows os.kill(pid, 0) sends CTRL_C_EVENT
        return
    pattern = re.compile(re.escape(f".{name}") + _TEMP_TAIL)
    try:
        with os.scandir(directory) as it:
            stale = [entry for entry in it if (match := pattern.fullmatch(entry.name))
                     and not _pid_alive(int(match.group(1)))]
    except OSError:
        return
    now = time.time()
    for entry in stale:
        try:
            if entry.is_file(follow_symlinks=False) and \
                    now - entry.stat(follow_symlinks=False).st_mtime >= \
                    _STALE_TEMP_MIN_AGE_S:
                os.unlink(entry.path)
        except OSError:  # gone already, or not ours to delete
            pass


def _pid_alive(pid):
    if pid <= 0 or pid == os.getpid():  # kill(0) would signal our process group
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; or not a pid
        return True
    return True


def _fsync_directory(directory):
    """Make the rename durable; not every platform or filesystem allows it."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _new_file_mode(path_str):
    """Mode the file would get from open(): keep an existing file's, else 0o666 & ~umask."""
    try:
        return os.stat(path_str).st_mode & 0o7777
    except OSError:
        pass
    umask = None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if umask is None:  # not thread-safe, hence the /proc route first
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _package_version():
    version = getattr(sys.modules.get("numba_ivf"), "__version__", None)
    if isinstance(version, str):
        return version
    import importlib.metadata  # only when the package did not say; ~30 ms to import
    try:
        return importlib.metadata.version("numba_ivf")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- reading -----------------------------------------------------------------------

def read_index_file(path: str | os.PathLike, *, mmap: bool = False,
                    expected_kind: str | None = None, verify: bool = True) -> IndexFile:
    """Read an index file written by :func:`write_index_file`.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.
    mmap : bool, default False
        If True, arrays are read-only ``np.memmap`` views into the file, 64-byte
        aligned: nothing is copied and pages are loaded on first touch, so opening is
        O(header) when ``verify=False``. (A 0-sized array has no bytes to map and is a
        plain read-only empty ndarray.) The file must not be truncated while views
        exist; replacing it with :func:`write_index_file` is safe, since ``os.replace``
        leaves the mapped inode alive. If False, every array is read into newly
        allocated, 64-byte aligned memory.
    expected_kind : str, optional
        If given, raise unless the file holds this kind ("IVFFlat", ...).
    verify : bool, default True
        Check every array's CRC-32 (about 1.6 GB/s on one core). With ``mmap=False``
        the checksum runs on a helper thread while the next chunk is read, adding
        roughly 0.3-1x to the read time of a cached file. With ``mmap=True`` it is a
        pass over the whole mapping that faults every page in: the cost of reading the
        full file (from disk if it is not cached) instead of O(header), which is the
        price of proving the data good. ``verify=False`` skips array checksums only:
        the magic, version, header checksum and the consistency of the header
        (dtypes, shapes, offsets, sizes, file size) are always checked.

    Returns
    -------
    IndexFile
        With ``.kind``, ``.params``, ``.arrays``, ``.format_version``, ``.path``.

    Raises
    ------
    IndexFileError
        Naming the path and the problem: missing file, not a numba_ivf index,
        truncated, corrupted (header or array checksum, the array named), written by a
        newer numba_ivf, wrong kind, malformed or inconsistent header, disallowed dtype.

    Examples
    --------
    >>> f = read_index_file("index.nivf", expected_kind="IVFFlat")  # doctest: +SKIP
    >>> f.params["nlist"], f.arrays["centroids"].shape              # doctest: +SKIP
    (2, (2, 8))
    """
    path_str = _path_str(path)
    if expected_kind is not None and not isinstance(expected_kind, str):
        raise TypeError(f"expected_kind must be a str or None; got {expected_kind!r}.")

    def fail(problem):
        return IndexFileError(f"'{path_str}': {problem}")

    try:
        f = open(path_str, "rb", buffering=0)
    except FileNotFoundError:
        raise fail("no such file.") from None
    except IsADirectoryError:
        raise fail("is a directory, not an index file.") from None
    except OSError as exc:
        raise fail(f"cannot open ({exc}).") from exc
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            header, data_start = _read_header(f, size, fail)
            kind, params, version, writer, entries, file_size = \
                _check_header(header, data_start, fail)
            if expected_kind is not None and kind != expected_kind:
                article = "an" if kind[:1].upper() in "AEIOU" else "a"
                raise fail(f"file holds {article} {kind} index, expected "
                           f"{expected_kind}.")
            _check_size(entries, size, file_size, fail)
            if mmap:
                arrays = _map_arrays(f, size, entries, verify, fail)
            else:
                arrays = _read_arrays(f, entries, verify, fail)
        except IndexFileError:
            raise
        except OSError as exc:
            raise fail(f"read failed ({exc}).") from exc
    return IndexFile(path=path_str, kind=kind, params=params, arrays=arrays,
                     format_version=version, writer_version=writer)


def _read_header(f, size, fail):
    """Check magic, version and header checksum; return (header dict, data start)."""
    prefix = _read_exact(f, min(size, _HEADER_START))
    if size == 0:
        raise fail("is empty (0 bytes), not a numba_ivf index file.")
    if len(prefix) < len(MAGIC) and MAGIC.startswith(prefix):
        raise fail(f"is truncated: {size} bytes, shorter than the {len(MAGIC)}-byte "
                   f"magic {MAGIC!r}.")
    if prefix[:len(MAGIC)] != MAGIC:
        raise fail(f"not a numba_ivf index file: it starts with "
                   f"{bytes(prefix[:8])!r}, not {MAGIC!r}{_guess_foreign(prefix)}.")
    if size < _HEADER_START:
        raise fail(f"is truncated: {size} bytes, shorter than the "
                   f"{_HEADER_START}-byte fixed header.")
    _, version, header_len = _PREFIX.unpack(prefix)
    if version > FORMAT_VERSION:
        raise fail(f"written by a newer numba_ivf (format {version}); this version "
                   f"reads formats <= {FORMAT_VERSION}: upgrade numba_ivf.")
    if version == 0:
        raise fail("is corrupted: format version 0 does not exist.")
    if header_len > MAX_HEADER_BYTES:
        raise fail(f"is corrupted: header length {header_len} exceeds the "
                   f"{MAX_HEADER_BYTES}-byte limit.")
    header_end = _HEADER_START + header_len + _CRC.size
    if size < header_end:
        raise fail(f"is truncated: the header needs {header_end} bytes but the file "
                   f"has only {size}.")
    blob = _read_exact(f, header_len + _CRC.size)
    (stored,) = _CRC.unpack(blob[header_len:])
    computed = zlib.crc32(blob[:header_len], zlib.crc32(prefix))
    if stored != computed:
        raise fail(f"is corrupted: header checksum mismatch (stored {stored:08x}, "
                   f"computed {computed:08x}).")
    try:
        header = json.loads(bytes(blob[:header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise fail(f"malformed JSON header ({exc}).") from None
    if not isinstance(header, dict):
        raise fail(f"malformed JSON header: expected an object, got "
                   f"{type(header).__name__}.")
    stated = header.get("format_version")
    if type(stated) is not int or stated != version:
        raise fail(f"inconsistent header: format_version "
                   f"{header.get('format_version')!r} in the JSON header, {version} in "
                   f"the fixed header.")
    return header, _align(header_end)


def _check_header(header, data_start, fail):
    """Check the header's fields and array table; return its parts."""
    def field_of(obj, key, kind, where="header"):
        value = obj.get(key)
        # bool is an int subclass in Python, but never a valid size or offset.
        if not isinstance(value, kind) or kind is int and isinstance(value, bool):
            raise fail(f"malformed header: {where} field {key!r} is {value!r}.")
        return value

    kind = field_of(header, "kind", str)
    params = field_of(header, "params", dict)
    arrays = field_of(header, "arrays", dict)
    file_size = field_of(header, "file_size", int)
    writer = header.get("numba_ivf_version")
    writer = writer if isinstance(writer, str) else "unknown"
    checksum = header.get("checksum")
    if checksum != _CHECKSUM:
        raise fail(f"unsupported checksum {checksum!r}; this version knows "
                   f"{_CHECKSUM!r}.")

    entries = []
    end = data_start
    for name, spec in arrays.items():
        where = f"array {name!r}"
        if not isinstance(spec, dict):
            raise fail(f"malformed header: {where} is {spec!r}, not an object.")
        dtype = field_of(spec, "dtype", str, where)
        if dtype not in ALLOWED_DTYPES:
            raise fail(f"{where} has dtype {dtype!r}, which is not allowed (allowed: "
                       f"{', '.join(sorted(ALLOWED_DTYPES))}).")
        dt = np.dtype(dtype)
        shape = field_of(spec, "shape", list, where)
        if len(shape) > 32 or not all(type(s) is int and 0 <= s <= sys.maxsize
                                      for s in shape):
            raise fail(f"malformed header: {where} has shape {shape!r}.")
        if math.prod(max(s, 1) for s in shape) * dt.itemsize > sys.maxsize:
            raise fail(f"inconsistent header: {where} of shape {shape} is too large.")
        offset = field_of(spec, "offset", int, where)
        nbytes = field_of(spec, "nbytes", int, where)
        expected = math.prod(shape) * dt.itemsize
        if nbytes != expected:
            raise fail(f"inconsistent header: {where} has nbytes {nbytes}, but shape "
                       f"{shape} of dtype {dtype} needs {expected}.")
        if offset % ALIGNMENT or offset < end:
            raise fail(f"inconsistent header: {where} has offset {offset}; offsets must "
                       f"be multiples of {ALIGNMENT}, at or past {end} (the end of the "
                       f"header or of the previous array).")
        crc = field_of(spec, "crc32", str, where)
        try:
            crc_value = int(crc, 16)
        except ValueError:
            crc_value = -1
        if len(crc) != 8 or not 0 <= crc_value <= 0xFFFFFFFF:
            raise fail(f"malformed header: {where} has crc32 {crc!r}.")
        end = offset + nbytes
        entries.append((name, dt, tuple(shape), offset, nbytes, crc_value))
    if file_size != end:
        raise fail(f"inconsistent header: file_size is {file_size} but the data ends "
                   f"at {end}.")
    return kind, params, header["format_version"], writer, entries, file_size


def _check_size(entries, size, file_size, fail):
    if size < file_size:
        cut = [name for name, _, _, off, n, _ in entries if n and off + n > size]
        where = f"; array {cut[0]!r} is incomplete" if cut else ""
        raise fail(f"is truncated: the header says {file_size} bytes but the file has "
                   f"only {size}{where}.")
    if size > file_size:
        raise fail(f"is corrupted: {size - file_size} unexpected bytes after the end "
                   f"of the data at {file_size}.")


def _read_arrays(f, entries, verify, fail):
    arrays = {}
    data_bytes = sum(entry[4] for entry in entries) if verify else 0
    with _crc_executor(data_bytes) as executor:
        for name, dt, shape, offset, nbytes, stored in entries:
            arr = _empty_aligned(shape, dt)
            flat = arr.reshape(-1).view(np.uint8)
            f.seek(offset)
            crc = _Crc32Stream(executor)
            for start in range(0, nbytes, PERSIST_IO_CHUNK_BYTES):
                chunk = flat[start:start + PERSIST_IO_CHUNK_BYTES]
                if _readinto_exact(f, chunk) != chunk.size:
                    raise fail(f"is truncated inside array {name!r} (file changed "
                               f"while reading?).")
                if verify:  # checksummed on the helper thread while the next chunk is read
                    crc.update(chunk)
            if verify and crc.result() != stored:
                raise _array_crc_error(fail, name, stored, crc.result())
            arrays[name] = arr
    return arrays


def _map_arrays(f, size, entries, verify, fail):
    # One read-only mapping of the file we validated (same descriptor, so a concurrent
    # os.replace cannot swap in another file); every array is a view into it.
    whole = np.memmap(f, dtype=np.uint8, mode="r", shape=(size,))
    arrays = {}
    for name, dt, shape, offset, nbytes, stored in entries:
        raw = whole[offset:offset + nbytes]
        if verify:
            crc = 0
            for start in range(0, nbytes, PERSIST_IO_CHUNK_BYTES):
                crc = zlib.crc32(raw[start:start + PERSIST_IO_CHUNK_BYTES], crc)
            if crc != stored:
                raise _array_crc_error(fail, name, stored, crc)
        arrays[name] = raw.view(dt).reshape(shape)
    return arrays


def _empty_aligned(shape, dt):
    """np.empty aligned to ALIGNMENT bytes, like the mmap views (numpy gives 16)."""
    nbytes = math.prod(shape) * dt.itemsize
    buf = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -buf.ctypes.data % ALIGNMENT
    return buf[start:start + nbytes].view(dt).reshape(shape)


def _array_crc_error(fail, name, stored, computed):
    return fail(f"is corrupted: checksum mismatch in array {name!r} (stored "
                f"{stored:08x}, computed {computed:08x}).")


def _read_exact(f, n):
    buf = bytearray(n)
    got = _readinto_exact(f, memoryview(buf))
    return memoryview(buf)[:got]


def _readinto_exact(f, buf):
    """Fill ``buf`` from ``f``; return the number of bytes read (short only at EOF)."""
    view = memoryview(buf).cast("B")
    total = 0
    while total < view.nbytes:
        got = f.readinto(view[total:])
        if not got:
            break
        total += got
    return total


# -- helpers -----------------------------------------------------------------------

class _Crc32Stream:
    """CRC-32 of a sequence of chunks, computed on a helper thread if one is given.

    zlib.crc32 and file reads/writes both release the GIL for large buffers, so the
    checksum of one chunk overlaps the I/O of the next instead of adding to it. The
    executor has a single worker, so steps run in submission order and may chain
    through ``_value``. At most two chunks are in flight, which bounds the memory held
    by converted (non-contiguous) chunks.
    """

    def __init__(self, executor):
        self._executor = executor
        self._value = 0
        self._pending = deque()

    def _step(self, chunk):
        self._value = zlib.crc32(chunk, self._value)

    def update(self, chunk):
        if self._executor is None:
            self._step(chunk)
            return
        self._pending.append(self._executor.submit(self._step, chunk))
        if len(self._pending) > 2:
            self._pending.popleft().result()

    def result(self):
        while self._pending:
            self._pending.popleft().result()
        return self._value


def _crc_executor(data_bytes):
    if data_bytes < _CRC_THREAD_MIN_BYTES:
        return nullcontext(None)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="numba_ivf-crc32")


def _path_str(path):
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike; got "
                        f"{type(path).__name__}.") from None


def _align(pos):
    return -(-pos // ALIGNMENT) * ALIGNMENT


def _guess_foreign(prefix):
    head = bytes(prefix)
    for signature, what in _FOREIGN_SIGNATURES:
        if head.startswith(signature):
            return f" (this looks like {what})"
    if len(head) >= 4 and head[:2] in _FAISS_PREFIXES and head[2:4].isalnum():
        return f" (this looks like a FAISS index, fourcc {head[:4].decode()!r})"
    if all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return " (this looks like a text file)"
    return ""
