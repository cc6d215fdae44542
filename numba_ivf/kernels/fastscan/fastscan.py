"""4-bit PQ fast-scan: code packing, LUT quantization and the byte-shuffle accumulate.

Stage: the list scan of IVF-PQ with 16 centroids per sub-quantizer (FAISS's "fast-scan").
Distances are sums of M table entries; with 4-bit codes each table has 16 entries, fits
one 128-bit register once quantized to uint8, and a byte shuffle (``vpshufb`` / ``tbl``)
looks up 16-64 codes in one instruction.

Packed layout, ``packed`` uint8 of shape ``(nblocks, M2, 32)``, ``M2 = ceil(M/2)``,
``nblocks = ceil(n/32)``: ``packed[b, j, p]`` holds, for one vector of block ``b``, the
code of sub-quantizer ``2j`` in the low nibble and ``2j+1`` in the high nibble. Inside a
block, byte ``p = 2k`` holds vector ``32b + k`` and byte ``p = 2k+1`` vector ``32b + 16 + k``
(k = 0..15): this order lets the SIMD kernels widen the uint8 lookups to uint16 with two
shifts and no lane shuffle (see ``_simd.py``). An odd ``M`` pads sub-quantizer ``M`` with
code 0, rows past ``n`` are code 0 (the caller ignores their lanes).

Quantized LUT, ``lut_u8`` uint8 of shape ``(2*M2, 16)`` (a zero row pads an odd M), and the
accumulate writes uint16 sums modulo 2**16 in every backend; :func:`quantize_lut` proves
the sums of its tables never exceed ``FASTSCAN_ACC_MAX`` so no wrap-around happens.

Backends: ``"avx512"``, ``"avx2"``, ``"neon"`` (LLVM intrinsics in ``_simd.py``) and
``"portable"`` (plain loops, the bit-exactness reference). One is chosen at import from
the CPU's features without compiling anything; ``NUMBA_IVF_FASTSCAN`` forces one.

Cache safety: every backend has its own dispatchers (so its own cache entries), and the
backend is passed to kernels as a token whose Numba *type* names it
(``FastscanBackend(avx512)``), so it is part of every compiled signature and of the
on-disk cache key. A cached kernel compiled for one backend is never reused when a later
process selects another. Callers with ``cache=True`` that call :func:`accumulate_block`
must therefore take the token as an argument and pass it on (``backend=BACKEND``); a call
that omits it binds the backend selected when the *caller* was compiled.
"""

from __future__ import annotations

import os
import platform

import numpy as np
from numba import njit, prange, types
from numba.core import config
from numba.extending import NativeValue, box, models, overload, register_model, unbox

from ..._config import (FASTMATH, FASTSCAN_ACC_MAX, FASTSCAN_BLOCK, FASTSCAN_ENV,
                       FASTSCAN_LIST_CHUNK_BLOCKS, FASTSCAN_MAX_M)
from ..simd import _simd
from ._lutquant import quantize_rows1, row_extrema1

__all__ = [
    "BACKEND", "BACKENDS", "FASTSCAN_BACKEND", "Backend", "available_backends",
    "get_backend", "packed_shape", "pack_codes", "pack_codes_into", "unpack_codes",
    "quantize_lut", "quantize_lut_into", "quantize_luts", "lut_threshold",
    "accumulate_block", "accumulate_block_below", "accumulate_list", "accumulate_batch",
    "block_sums_below", "check_block_operands",
]

BACKENDS = ("portable", "avx2", "avx512", "neon")
_PREFERENCE = ("avx512", "avx2", "neon", "portable")

assert FASTSCAN_BLOCK == 32, "the SIMD kernels hard-code 32 vectors per block"


# ---------------------------------------------------------------------------------
# Backend token: a Python object whose Numba type carries the backend name.
# ---------------------------------------------------------------------------------

class BackendType(types.Dummy):
    """Numba type of a :class:`Backend`; its name (hence every signature) names the backend."""

    def __init__(self, backend: str):
        self.backend = backend
        super().__init__(name=f"FastscanBackend({backend})")


_BACKEND_TYPES: dict = {}


def _backend_type(name: str) -> BackendType:
    # Interned: building a new Numba type per call cost ~5 us, a quarter of a one-query
    # fast-scan search.
    t = _BACKEND_TYPES.get(name)
    if t is None:
        t = _BACKEND_TYPES[name] = BackendType(name)
    return t


class Backend:
    """A fast-scan backend, passed to kernels so that it is part of their signature.

    Obtain one with :func:`get_backend` (or use :data:`BACKEND`, the process default).
    Two tokens are equal when their names are.
    """

    # Numba types an argument it cannot fingerprint by ``_numba_type_`` when no
    # ``typeof_impl`` is registered for its class: 0.9 us per call here, against 2.4 us
    # through a registered ``typeof_impl`` (singledispatch), paid on every one-query
    # search.
    __slots__ = ("name", "_numba_type_")

    def __init__(self, name: str):
        self.name = name
        self._numba_type_ = _backend_type(name)

    def __eq__(self, other):
        return isinstance(other, Backend) and other.name == self.name

    def __hash__(self):
        return hash(("numba_ivf.fastscan.Backend", self.name))

    def __repr__(self):
        return f"fastscan.Backend({self.name!r})"

    def __reduce__(self):
        return (Backend, (self.name,))


register_model(BackendType)(models.OpaqueModel)


@unbox(BackendType)
def _unbox_backend(typ, obj, c):
    # The value carries no data: everything it says is in its type.
    return NativeValue(c.context.get_dummy_value())


@box(BackendType)
def _box_backend(typ, val, c):
    cls = c.pyapi.unserialize(c.pyapi.serialize_object(Backend))
    name = c.pyapi.unserialize(c.pyapi.serialize_object(typ.backend))
    res = c.pyapi.call_function_objargs(cls, (name,))
    c.pyapi.decref(cls)
    c.pyapi.decref(name)
    return res


# ---------------------------------------------------------------------------------
# Backend selection (import time, nothing compiled)
# ---------------------------------------------------------------------------------

def _target_features() -> set[str]:
    """CPU features Numba will compile for (NUMBA_CPU_NAME/FEATURES override the host)."""
    if config.CPU_FEATURES is not None:
        return {f[1:] for f in str(config.CPU_FEATURES).split(",") if f.startswith("+")}
    if config.CPU_NAME not in (None, "host"):
        return set()     # e.g. NUMBA_CPU_NAME=generic for portable caches: no extensions
    import llvmlite.binding as llb
    try:
        feats = llb.get_host_cpu_features()
    except RuntimeError:     # some platforms cannot report features
        return set()
    return {k for k, v in feats.items() if v}


def available_backends() -> tuple[str, ...]:
    """Backends that can run on this CPU (and Numba target), fastest first."""
    machine = platform.machine().lower()
    found = []
    if machine in ("x86_64", "amd64"):
        feats = _target_features()
        if {"avx512bw", "avx512f", "avx2"} <= feats:
            found.append("avx512")
        if "avx2" in feats:
            found.append("avx2")
    elif machine in ("aarch64", "arm64"):
        found.append("neon")     # Advanced SIMD is mandatory on AArch64
    found.append("portable")
    return tuple(found)


def _select_backend(requested: str | None) -> str:
    allowed = BACKENDS + ("auto",)
    req = (requested or "auto").strip().lower()
    if req not in allowed:
        raise ValueError(f"{FASTSCAN_ENV} must be one of {', '.join(allowed)}; got "
                         f"{requested!r}.")
    avail = available_backends()
    if req == "auto":
        return avail[0]
    if req not in avail:
        raise ValueError(f"{FASTSCAN_ENV}={req!r} is not supported on this CPU "
                         f"({platform.machine()}); available here: {', '.join(avail)}.")
    return req


#: Name of the backend chosen for this process.
FASTSCAN_BACKEND: str = _select_backend(os.environ.get(FASTSCAN_ENV))
#: Token of the process backend; pass it to kernels (it is part of their signature).
BACKEND = Backend(FASTSCAN_BACKEND)


def get_backend(backend=None) -> Backend:
    """Return the :class:`Backend` token for ``backend``.

    Parameters
    ----------
    backend : None, str or Backend
        ``None`` for the process backend (:data:`FASTSCAN_BACKEND`), or one of
        ``"portable"``, ``"avx2"``, ``"avx512"``, ``"neon"`` available on this CPU.
    """
    if backend is None:
        return BACKEND
    if isinstance(backend, Backend):
        backend = backend.name
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {', '.join(BACKENDS)}; got "
                         f"{backend!r}.")
    avail = available_backends()
    if backend not in avail:
        raise ValueError(f"backend {backend!r} is not supported on this CPU "
                         f"({platform.machine()}); available here: {', '.join(avail)}.")
    return Backend(backend)


# ---------------------------------------------------------------------------------
# Block kernels: one dispatcher per backend (own cache file each)
# ---------------------------------------------------------------------------------

@njit(nogil=True, cache=True)
def _block_portable(packed, b, lut_u8, out, t):
    """Plain-loop block kernel: sums modulo 2**16, mask of lanes with sum <= t."""
    m2 = packed.shape[1]
    mask = np.uint32(0)
    for p in range(32):
        v = (p >> 1) + 16 * (p & 1)          # byte p holds vector v of the block
        s = 0
        for j in range(m2):
            c = packed[b, j, p]
            s += lut_u8[2 * j, c & 15] + lut_u8[2 * j + 1, c >> 4]
        s16 = np.uint16(s & 0xFFFF)
        out[v] = s16
        if s16 <= t:
            mask |= np.uint32(1) << np.uint32(v)
    return mask


@njit(nogil=True, cache=True)
def _block_avx2(packed, b, lut_u8, out, t):
    return _simd.block_avx2(packed, b, lut_u8, out, t)


@njit(nogil=True, cache=True)
def _block_avx512(packed, b, lut_u8, out, t):
    return _simd.block_avx512(packed, b, lut_u8, out, t)


@njit(nogil=True, cache=True)
def _block_neon(packed, b, lut_u8, out, t):
    return _simd.block_neon(packed, b, lut_u8, out, t)


_BLOCK_KERNELS = {"portable": _block_portable, "avx2": _block_avx2,
                  "avx512": _block_avx512, "neon": _block_neon}


def _token_backend(backend) -> str:
    """Backend name from a token's Numba type (None/omitted -> process backend)."""
    if isinstance(backend, types.Omitted):
        val = backend.value
        return FASTSCAN_BACKEND if val is None else val.name
    if backend is None or isinstance(backend, types.NoneType):
        return FASTSCAN_BACKEND
    if isinstance(backend, BackendType):
        return backend.backend
    raise TypeError(f"backend must be a fastscan.Backend token (fastscan.BACKEND or "
                    f"fastscan.get_backend(name)); got Numba type {backend}.")


def _block_sums(packed, b, lut_u8, out, t, backend):
    """Unchecked block kernel of ``backend`` (resolved at typing time); njit only."""
    raise NotImplementedError("_block_sums is only callable from Numba-compiled code")


@overload(_block_sums, jit_options={"cache": True})
def _ol_block_sums(packed, b, lut_u8, out, t, backend):
    kernel = _BLOCK_KERNELS[_token_backend(backend)]

    def impl(packed, b, lut_u8, out, t, backend):
        return kernel(packed, b, lut_u8, out, t)
    return impl


def _backend_id(backend):
    """Index in BACKENDS of the backend a kernel was compiled for (njit only)."""
    raise NotImplementedError("_backend_id is only callable from Numba-compiled code")


@overload(_backend_id, jit_options={"cache": True})
def _ol_backend_id(backend):
    # Resolved by the same typing-time rule that picks the block kernel, so a driver
    # returning it reports the machine code it actually contains (the cache test uses
    # this: inspect_asm is unavailable for code loaded from the on-disk cache).
    ident = BACKENDS.index(_token_backend(backend))

    def impl(backend):
        return ident
    return impl


@njit(nogil=True, cache=True)
def _check_block_operands(packed, lut_u8, out_len, out_stride):
    """Raise unless the operands have the shapes and strides the SIMD IR relies on."""
    if packed.shape[2] != 32 or packed.strides[2] != 1 or packed.strides[1] != 32:
        raise ValueError("packed must have shape (nblocks, M2, 32) with contiguous "
                         "blocks (as made by pack_codes)")
    if (lut_u8.shape[0] < 2 * packed.shape[1] or lut_u8.shape[1] != 16
            or lut_u8.strides[1] != 1):
        raise ValueError("lut_u8 must have shape (2*M2, 16) with contiguous rows, "
                         "M2 = packed.shape[1] (as made by quantize_lut)")
    if out_len < 32 or out_stride != 2:
        raise ValueError("out must be a contiguous uint16 array of at least 32 entries")


# ---------------------------------------------------------------------------------
# Public accumulate primitives (njit-callable)
# ---------------------------------------------------------------------------------

@njit(nogil=True, cache=True)
def check_block_operands(packed, lut_u8, out_u16_32):
    """Raise unless ``block_sums_below`` may run on these operands (the checks that
    :func:`accumulate_block_below` repeats on every call)."""
    _check_block_operands(packed, lut_u8, out_u16_32.shape[0], out_u16_32.strides[0])


@njit(nogil=True, cache=True)
def block_sums_below(packed, b, lut_u8, out_u16_32, t, backend=BACKEND):
    """:func:`accumulate_block_below` without its checks, for a scan's inner loop: the
    caller has passed the operands to :func:`check_block_operands`, keeps
    ``0 <= b < nblocks`` and gives the bound as ``t = min(threshold - 1, 65535)``
    (uint16, threshold >= 1). Returns the mask of lanes with sum <= t. Per block, the
    checks and the threshold conversion cost ~15 % of a one-query glove scan (m=50).
    """
    return _block_sums(packed, b, lut_u8, out_u16_32, t, backend)


@njit(nogil=True, cache=True)
def accumulate_block(packed, b, lut_u8, out_u16_32, backend=BACKEND):
    """Write the 32 uint16 LUT sums of block ``b`` into ``out_u16_32[0:32]``.

    ``out_u16_32[i]`` is the sum for vector ``32*b + i``: ``sum_j lut_u8[j, code_j]``
    (modulo 2**16; never wraps for tables from :func:`quantize_lut`). Identical in every
    backend. Callable from Numba-compiled code (and from Python).

    Parameters
    ----------
    packed : ndarray of uint8, shape (nblocks, M2, 32)
        Codes packed by :func:`pack_codes` / :func:`pack_codes_into`.
    b : int
        Block index, ``0 <= b < nblocks``.
    lut_u8 : ndarray of uint8, shape (2*M2, 16)
        Quantized table from :func:`quantize_lut`.
    out_u16_32 : ndarray of uint16, shape (>= 32,), contiguous
        Receives the sums.
    backend : Backend, default BACKEND
        Backend token. A ``cache=True`` caller must take it as an argument and pass it
        on, so that the backend is part of the caller's signature (cache key).

    Examples
    --------
    >>> packed = pack_codes(codes)                         # doctest: +SKIP
    >>> lut_u8, bias, scale = quantize_lut(lut)            # doctest: +SKIP
    >>> out = np.empty(32, np.uint16)                      # doctest: +SKIP
    >>> accumulate_block(packed, 0, lut_u8, out, BACKEND)  # doctest: +SKIP
    """
    _check_block_operands(packed, lut_u8, out_u16_32.shape[0], out_u16_32.strides[0])
    if b < 0 or b >= packed.shape[0]:
        raise IndexError("block index b out of range [0, nblocks)")
    _block_sums(packed, b, lut_u8, out_u16_32, np.uint16(0), backend)


@njit(nogil=True, cache=True)
def accumulate_block_below(packed, b, lut_u8, threshold, out_u16_32, backend=BACKEND):
    """Like :func:`accumulate_block`, and return the mask of lanes with sum < threshold.

    Bit ``i`` of the returned uint32 is set iff ``out_u16_32[i] < threshold``; the
    comparison runs in the SIMD registers (compare + movemask). ``threshold`` is any
    integer: ``<= 0`` selects no lane, ``> 65535`` every lane. Lanes of padding rows
    (past the list's length) are included; the caller masks them off.
    """
    _check_block_operands(packed, lut_u8, out_u16_32.shape[0], out_u16_32.strides[0])
    if b < 0 or b >= packed.shape[0]:
        raise IndexError("block index b out of range [0, nblocks)")
    thr = np.int64(threshold)
    t = np.uint16(0)
    if thr > 0:
        t = np.uint16(min(thr - 1, 65535))       # sum < thr  <=>  sum <= thr - 1
    mask = _block_sums(packed, b, lut_u8, out_u16_32, t, backend)
    if thr <= 0:
        return np.uint32(0)
    return mask


# ---------------------------------------------------------------------------------
# Drivers (prange) and their Python wrappers
# ---------------------------------------------------------------------------------

@njit(nogil=True, parallel=True, cache=True)
def _accumulate_list_driver(packed, lut_u8, out, backend):
    nb = packed.shape[0]
    ch = FASTSCAN_LIST_CHUNK_BLOCKS
    nchunks = (nb + ch - 1) // ch
    for c in prange(nchunks):                 # each chunk owns out[32*b0 : 32*b1]
        b1 = min(nb, (c + 1) * ch)
        for b in range(c * ch, b1):
            _block_sums(packed, b, lut_u8, out[32 * b:32 * b + 32], np.uint16(0),
                        backend)
    return _backend_id(backend)


@njit(nogil=True, parallel=True, cache=True)
def _accumulate_batch_driver(packed, luts_u8, out, backend):
    nb = packed.shape[0]
    for q in prange(luts_u8.shape[0]):        # each query owns its row of out
        lut = luts_u8[q]
        row = out[q]
        for b in range(nb):
            _block_sums(packed, b, lut, row[32 * b:32 * b + 32], np.uint16(0), backend)
    return _backend_id(backend)


def _check_packed(packed) -> np.ndarray:
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 3 \
            or packed.shape[2] != 32:
        got = (f"dtype {packed.dtype} and shape {packed.shape}"
               if isinstance(packed, np.ndarray) else type(packed).__name__)
        raise ValueError(f"packed must be a uint8 array of shape (nblocks, M2, 32) as made "
                         f"by pack_codes; got {got}.")
    return np.ascontiguousarray(packed)


def _check_lut_u8(lut_u8, m2: int, name: str, ndim: int) -> np.ndarray:
    shape = ("(2*M2, 16)" if ndim == 2 else "(nq, 2*M2, 16)")
    ok = (isinstance(lut_u8, np.ndarray) and lut_u8.dtype == np.uint8
          and lut_u8.ndim == ndim and lut_u8.shape[-2:] == (2 * m2, 16))
    if not ok:
        got = (f"dtype {lut_u8.dtype} and shape {lut_u8.shape}"
               if isinstance(lut_u8, np.ndarray) else type(lut_u8).__name__)
        raise ValueError(f"{name} must be a uint8 array of shape {shape} with M2 = "
                         f"packed.shape[1] = {m2} (as made by quantize_lut); got {got}.")
    return np.ascontiguousarray(lut_u8)


def accumulate_list(packed, lut_u8, backend=None) -> np.ndarray:
    """uint16 LUT sums of every vector of one packed list (threads over blocks).

    Parameters
    ----------
    packed : ndarray of uint8, shape (nblocks, M2, 32)
    lut_u8 : ndarray of uint8, shape (2*M2, 16)
    backend : None, str or Backend
        Backend to run (default: the process backend).

    Returns
    -------
    ndarray of uint16, shape (nblocks*32,)
        Sums in vector order, padding rows included.
    """
    packed = _check_packed(packed)
    lut_u8 = _check_lut_u8(lut_u8, packed.shape[1], "lut_u8", 2)
    token = get_backend(backend)
    out = np.empty(packed.shape[0] * 32, dtype=np.uint16)
    _accumulate_list_driver(packed, lut_u8, out, token)
    return out


def accumulate_batch(packed, luts_u8, backend=None) -> np.ndarray:
    """uint16 LUT sums of one packed list for ``nq`` queries (threads over queries).

    Parameters
    ----------
    packed : ndarray of uint8, shape (nblocks, M2, 32)
    luts_u8 : ndarray of uint8, shape (nq, 2*M2, 16)
    backend : None, str or Backend

    Returns
    -------
    ndarray of uint16, shape (nq, nblocks*32)
    """
    packed = _check_packed(packed)
    luts_u8 = _check_lut_u8(luts_u8, packed.shape[1], "luts_u8", 3)
    token = get_backend(backend)
    out = np.empty((luts_u8.shape[0], packed.shape[0] * 32), dtype=np.uint16)
    _accumulate_batch_driver(packed, luts_u8, out, token)
    return out


# ---------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------

def packed_shape(n: int, M: int) -> tuple[int, int, int]:
    """Shape ``(ceil(n/32), ceil(M/2), 32)`` of ``n`` packed codes of ``M`` sub-quantizers."""
    return ((n + 31) // 32, (M + 1) // 2, 32)


@njit(nogil=True, cache=True)
def _pack_rows(codes, packed, offset):
    n, m = codes.shape
    m2 = (m + 1) // 2
    for i in range(n):
        v = offset + i
        b = v >> 5
        k = v & 31
        p = 2 * k if k < 16 else 2 * (k - 16) + 1   # byte of vector k in its block
        for j in range(m2):
            lo = codes[i, 2 * j] & 15
            hi = codes[i, 2 * j + 1] & 15 if 2 * j + 1 < m else 0
            packed[b, j, p] = np.uint8(lo | (hi << 4))


@njit(nogil=True, cache=True)
def pack_codes_into(codes, packed, offset):
    """Pack ``codes`` (n, M) into ``packed`` as vectors ``offset .. offset+n-1``.

    njit-callable append for growing lists: ``packed`` is a zero-initialised array of
    shape ``(capacity_blocks, ceil(M/2), 32)``; bytes of other vectors are untouched.
    Codes are taken modulo 16 (validate them first; :func:`pack_codes` does).
    """
    n, m = codes.shape
    if packed.shape[1] != (m + 1) // 2 or packed.shape[2] != 32:
        raise ValueError("packed must have shape (nblocks, ceil(M/2), 32) for codes "
                         "of shape (n, M)")
    if offset < 0 or offset + n > packed.shape[0] * 32:
        raise ValueError("offset + n exceeds the capacity of packed (nblocks*32 "
                         "vectors); grow the list first")
    _pack_rows(codes, packed, offset)


def _check_codes(codes) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must be a 2-D array of shape (n, M); got ndim={arr.ndim} "
                         f"and shape {arr.shape}.")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"codes must hold integers in 0..15 (uint8); got dtype {arr.dtype}.")
    if arr.shape[1] < 1:
        raise ValueError(f"codes must have at least 1 sub-quantizer; got shape {arr.shape}.")
    if arr.size and (arr.min() < 0 or arr.max() > 15):
        bad = np.argwhere((arr < 0) | (arr > 15))[0]
        raise ValueError(f"codes must be 4-bit values in 0..15; got {arr[bad[0], bad[1]]} "
                         f"at row {bad[0]}, column {bad[1]}.")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def pack_codes(codes) -> np.ndarray:
    """Pack 4-bit PQ codes into fast-scan blocks.

    Parameters
    ----------
    codes : array-like of int, shape (n, M)
        Values in 0..15.

    Returns
    -------
    ndarray of uint8, shape (ceil(n/32), ceil(M/2), 32)
        See the module docstring for the byte order; padding is code 0.

    Examples
    --------
    >>> codes = np.arange(40 * 3).reshape(40, 3) % 16
    >>> packed = pack_codes(codes)
    >>> packed.shape
    (2, 2, 32)
    >>> bool((unpack_codes(packed, 40, 3) == codes).all())
    True
    """
    codes = _check_codes(codes)
    packed = np.zeros(packed_shape(*codes.shape), dtype=np.uint8)
    if codes.shape[0]:
        _pack_rows(codes, packed, 0)
    return packed


@njit(nogil=True, cache=True)
def _unpack_rows(packed, n, m, out):
    for v in range(n):
        b = v >> 5
        k = v & 31
        p = 2 * k if k < 16 else 2 * (k - 16) + 1
        for s in range(m):
            byte = packed[b, s >> 1, p]
            out[v, s] = (byte >> 4) if s & 1 else (byte & 15)


def unpack_codes(packed, n: int, M: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: the (n, M) uint8 codes of the first ``n`` vectors."""
    packed = _check_packed(packed)
    if not isinstance(n, (int, np.integer)) or not 0 <= n <= packed.shape[0] * 32:
        raise ValueError(f"n must be an integer in [0, {packed.shape[0] * 32}] for packed "
                         f"of shape {packed.shape}; got {n!r}.")
    if not isinstance(M, (int, np.integer)) or (int(M) + 1) // 2 != packed.shape[1] \
            or M < 1:
        raise ValueError(f"M must be {2 * packed.shape[1] - 1} or {2 * packed.shape[1]} "
                         f"for packed of shape {packed.shape}; got {M!r}.")
    out = np.zeros((int(n), int(M)), dtype=np.uint8)
    if n:
        _unpack_rows(packed, int(n), int(M), out)
    return out


# ---------------------------------------------------------------------------------
# LUT quantization
# ---------------------------------------------------------------------------------

@njit(nogil=True, cache=True)
def quantize_lut_into(lut, out_u8):
    """Quantize a float table to uint8 in place; njit-callable. Returns ``(bias, scale)``.

    ``lut`` float (M, 16), "smaller is better"; ``out_u8`` uint8 (2*ceil(M/2), 16) is
    overwritten (its padding row zeroed). For every code vector c,
    ``sum_j lut[j, c_j] ~= bias + sum_j out_u8[j, c_j] / scale`` within
    ``M * 0.5 / scale`` (each entry is rounded to the nearest step), and every such
    sum of quantized entries is <= FASTSCAN_ACC_MAX, so the uint16 accumulators of the
    block kernels never wrap.

    Proof of the bound. Let r_j = fl(max_j - min_j) (float64) and
    s = min(255 / max_j r_j, (A - M/2) / R) with A = FASTSCAN_ACC_MAX, R = fl(sum_j r_j).
    Entries are q = floor(fl(fl(x - min_j) * s) + 0.5). Rounded subtraction and
    multiplication are monotonic, so every q of row j is <= Q_j = floor(fl(r_j s) + 0.5).
    (i) Q_j <= 255: r_j s <= 255 up to a few ulps, and floor(255 + tiny + 0.5) = 255.
    (ii) sum_j Q_j <= sum_j (fl(r_j s) + 0.5) <= s R (1 + (M+3) eps) + M/2
         <= (A - M/2)(1 + (M+3) eps) + M/2 = A + (A - M/2)(M+3) eps < A + 1
    for M <= FASTSCAN_MAX_M (eps = 2**-53). The left side is an integer, so it is <= A.
    With M <= 257 the first term of the min always binds (255 M <= A).
    All rows constant (R = 0): scale = 1 and every entry is 0 (sums are exact).

    Whatever the values, nothing faults: the scale is always positive and finite (1
    when the spans are NaN or infinite, which validated queries never give) and every
    entry is clamped to [0, 255] before its conversion (NaN -> 255), so only the
    meaning of the sums depends on finite input, never memory safety.
    """
    m = lut.shape[0]
    m2 = (m + 1) // 2
    if lut.shape[1] != 16:
        raise ValueError("lut must have shape (M, 16)")
    if m < 1 or m > FASTSCAN_MAX_M:
        raise ValueError("lut must have between 1 and FASTSCAN_MAX_M rows")
    if out_u8.shape[0] != 2 * m2 or out_u8.shape[1] != 16:
        raise ValueError("out_u8 must have shape (2*ceil(M/2), 16)")
    bias = 0.0
    rmax = 0.0
    rsum = 0.0
    lows = np.empty(m, dtype=lut.dtype)   # row minima, exact in the table's own dtype
    highs = np.empty(m, dtype=lut.dtype)
    _row_minmax(lut, lows, highs)
    for j in range(m):
        lo = np.float64(lows[j])
        bias += lo
        r = np.float64(highs[j]) - lo
        rmax = max(rmax, r)
        rsum += r
    scale = 1.0
    if rsum > 0.0:
        s = min(255.0 / rmax, (FASTSCAN_ACC_MAX - 0.5 * m) / rsum)
        if s > 0.0 and s < np.inf:    # False for NaN/inf spans: keep 1
            scale = s
    _quantize_entries(lut, lows, scale, out_u8)
    for j in range(m, 2 * m2):
        for k in range(16):
            out_u8[j, k] = 0
    return bias, scale


def _row_minmax(lut, lows, highs):
    """lows[j], highs[j] = min, max of row j of lut (in its dtype, exact); njit only."""
    raise NotImplementedError("_row_minmax is only callable from Numba-compiled code")


@overload(_row_minmax, jit_options={"cache": True})
def _ol_row_minmax(lut, lows, highs):
    # The search path's float32 tables take the LLVM-IR rows (two 8-lane vectors and a
    # halving tree each); other dtypes and layouts the plain loop. Min and max are
    # exact, so both give the same values for finite tables.
    if (isinstance(lut, types.Array) and lut.dtype == types.float32 and lut.layout == "C"
            and lows.layout == "C" and highs.layout == "C"):
        def impl(lut, lows, highs):
            row_extrema1(lut, lows, highs)
        return impl

    def impl_loop(lut, lows, highs):
        for j in range(lut.shape[0]):
            lo = lut[j, 0]
            hi = lo
            for k in range(1, 16):
                lo = min(lo, lut[j, k])
                hi = max(hi, lut[j, k])
            lows[j] = lo
            highs[j] = hi
    return impl_loop


def _quantize_entries(lut, lows, scale, out_u8):
    """out_u8[j, k] = floor((float64(lut[j, k]) - lows[j]) * scale + 0.5), clamped to
    [0, 255] (NaN -> 255; the bound proof keeps finite tables inside); njit only."""
    raise NotImplementedError("_quantize_entries is only callable from Numba-compiled code")


@overload(_quantize_entries, jit_options={"cache": True})
def _ol_quantize_entries(lut, lows, scale, out_u8):
    # The search path's float32 tables take the vectorised LLVM-IR loop (Numba's kept
    # the float -> uint8 conversion scalar); other dtypes and layouts the plain one.
    # Both compute the same float64 expression, so the entries are the same.
    if (isinstance(lut, types.Array) and lut.dtype == types.float32 and lut.layout == "C"
            and lows.layout == "C" and out_u8.layout == "C"):
        def impl(lut, lows, scale, out_u8):
            quantize_rows1(lut, lows, scale, out_u8)
        return impl

    def impl_loop(lut, lows, scale, out_u8):
        for j in range(lut.shape[0]):
            lo = np.float64(lows[j])
            for k in range(16):
                v = (np.float64(lut[j, k]) - lo) * scale + 0.5
                # A float -> uint8 conversion out of range (or of NaN) is undefined.
                if not v < 255.0:
                    v = 255.0
                if not v >= 0.0:
                    v = 0.0
                out_u8[j, k] = np.uint8(np.floor(v))
    return impl_loop


@njit(nogil=True, parallel=True, cache=True)
def _quantize_luts_driver(luts, out_u8, bias, scale):
    for q in prange(luts.shape[0]):          # each query owns its table and scalars
        b, s = quantize_lut_into(luts[q], out_u8[q])
        bias[q] = b
        scale[q] = s


def _check_lut(lut, name, ndim):
    arr = np.asarray(lut) if not isinstance(lut, np.ndarray) else lut
    if arr.ndim != ndim or arr.shape[-1] != 16:
        shape = "(M, 16)" if ndim == 2 else "(nq, M, 16)"
        raise ValueError(f"{name} must have shape {shape} (16 centroids per sub-quantizer); "
                         f"got shape {arr.shape}.")
    if arr.shape[-2] < 1 or arr.shape[-2] > FASTSCAN_MAX_M:
        raise ValueError(f"{name} must have 1 to {FASTSCAN_MAX_M} sub-quantizers (M); got "
                         f"{arr.shape[-2]}.")
    from ..._validation import FLT_MAX, check_vectors
    # Entries are distances, not vectors: any finite float32 quantizes (float64 spans).
    flat = check_vectors(arr.reshape(-1, 16), name, d=16, owner="a 4-bit PQ table",
                         max_abs=FLT_MAX)
    return flat.reshape(arr.shape)


def quantize_lut(lut):
    """Quantize a per-sub-quantizer distance table to uint8 for fast-scan.

    Parameters
    ----------
    lut : array-like of float, shape (M, 16)
        Partial distances, smaller is better (negate inner products first).

    Returns
    -------
    lut_u8 : ndarray of uint8, shape (2*ceil(M/2), 16)
    bias : float
    scale : float
        ``sum_j lut[j, c_j] ~= bias + sum_j lut_u8[j, c_j] / scale`` within
        ``M * 0.5 / scale``; sums of ``lut_u8`` entries never exceed 65535.

    Examples
    --------
    >>> lut_u8, bias, scale = quantize_lut(np.arange(32.0).reshape(2, 16))
    >>> lut_u8.shape, bias
    ((2, 16), 16.0)
    """
    lut = _check_lut(lut, "lut", 2)
    m = lut.shape[0]
    out = np.empty((2 * ((m + 1) // 2), 16), dtype=np.uint8)
    bias, scale = quantize_lut_into(lut, out)
    return out, float(bias), float(scale)


def quantize_luts(luts):
    """Batched :func:`quantize_lut` over queries (threads over queries).

    Parameters
    ----------
    luts : array-like of float, shape (nq, M, 16)

    Returns
    -------
    luts_u8 : ndarray of uint8, shape (nq, 2*ceil(M/2), 16)
    bias : ndarray of float64, shape (nq,)
    scale : ndarray of float64, shape (nq,)
    """
    luts = _check_lut(luts, "luts", 3)
    nq, m, _ = luts.shape
    out = np.empty((nq, 2 * ((m + 1) // 2), 16), dtype=np.uint8)
    bias = np.empty(nq, dtype=np.float64)
    scale = np.empty(nq, dtype=np.float64)
    if nq:
        _quantize_luts_driver(luts, out, bias, scale)
    return out, bias, scale


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def lut_threshold(dist_threshold, bias, scale, M):
    """uint16-domain threshold for :func:`accumulate_block_below` from a float one.

    Returns an int64 ``t`` such that every vector whose exact float distance is
    ``< dist_threshold`` has quantized sum ``< t`` (the ``M * 0.5 / scale`` rounding error
    is added as slack), so no true candidate is skipped; candidates that pass are
    re-ranked by the caller. ``inf`` gives 65536 (every lane).
    """
    if not dist_threshold < np.inf:
        return np.int64(FASTSCAN_ACC_MAX + 1)
    x = (dist_threshold - bias) * scale + 0.5 * M
    if x < 0.0:
        return np.int64(0)
    if x >= FASTSCAN_ACC_MAX:
        return np.int64(FASTSCAN_ACC_MAX + 1)
    return np.int64(np.floor(x)) + 1
