"""Coarse top-p through an int8 screen: exact results at a quarter of the float32 FLOPs.

The coarse step of an IVF search (and k-means' assignment) is a dense (n, k) block of
dot products, and only its best p columns per row matter. Here every row x and every
centroid c is quantized to int8 with one scale per row (x ~ sx * xq, c ~ sc * cq, the
query side offset by 128 for ``vpdpbusd``'s unsigned operand), the int32 products
xq . cq are exact (``_i8kernel``), and

    |x.c - sx sc xq.cq| <= ||x - sx xq|| ||c|| + ||sx xq|| ||c - sc cq||    (*)

(x.c - x^.c^ = (x - x^).c + x^.(c - c^), then Cauchy-Schwarz), so every true score lies
in an interval [a - B, a + B] around the approximate one. Let t be the p-th largest
lower bound a - B: p centroids score at least t, so every centroid of the top p (ties
included) has a + B >= t. Only those candidates (on gcide-minilm-384 about 2p of 1265
for p = 32, a handful for p = 1) are scored again, in float64, and the best p of them
by (score desc, index asc) are exactly the best p of all k by the float64 score. B gets
a slack (``SCREEN_SLACK``) for the float32 rounding of the intervals and the float64
rounding of the re-score.

Scores returned are float32 of the float64 ones: inner products, or for L2 squared
distances ||x||^2 - 2 (x.c - ||c||^2 / 2) clamped at 0, like ``assign.tiled_topk``
(whose float32 FMA chains may round the last bit differently, so near-ties can resolve
differently between the two; each is exact for its own scores).

Layers: ``prepare_screen`` (centroids -> ``ScreenPanels``, once per index),
``screened_topk`` (Python: picks the kernel and the tile) -> the parallel driver (prange
over tiles of rows: quantize the tile, int8 block, then rows one by one) -> serial
workers ``quantize_row`` and ``select_row``. Oracle: ``tests/naive/assign.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..._config import (FASTMATH, SCREEN_ABS_SLACK, SCREEN_MIN_D, SCREEN_MIN_K,
                       SCREEN_MR, SCREEN_NR, SCREEN_SLACK, SCREEN_TILE_BYTES)
from ..common.topk import insert_best
from .assign import floor_at_least
from ._i8kernel import dot_block_portable, dot_block_u8s8, has_vnni

__all__ = ["KERNELS", "ScreenPanels", "default_kernel", "prepare_screen", "screened_topk",
           "worth_screening"]

KERNELS = ("vnni", "portable")
# |xq . cq| <= d * 255 * 127 must fit int32 (and the offset sum 128 * sum cq).
_MAX_D = 65_000


class ScreenPanels(NamedTuple):
    """Centroids prepared for the int8 screen (k real centroids, kp = npanel * NR).

    panels int8 (npanel, ceil(d/4), 4 NR): centroid p*NR + c, features 4g..4g+3 at
    panels[p, g, 4c:4c+4] (zero padding); init int32 (kp,): -128 * the sum of its codes
    (``_i8kernel``'s accumulator start);
    coef float32 (4, kp): rows sc, ||c||, ||c - sc cq|| and the bias (-||c||^2 / 2 for
    L2, else 0), for the intervals; bias64 (kp,): the bias in float64, for the re-score;
    cent float32 (k, d): the centroids.
    """

    panels: np.ndarray
    init: np.ndarray
    coef: np.ndarray
    bias64: np.ndarray
    cent: np.ndarray
    k: int
    l2: bool


@njit(nogil=True, cache=True)
def quantize_row(v, out, offset):
    """out[j] = round(v[j] / s) + offset (|code| <= 127; padding entries = offset) with
    s = max |v| / 127; returns (s, ||v - s q||, ||s q||, ||v||^2) in float64.
    No fastmath: the norms enter the bound (*)."""
    d = v.shape[0]
    amax = 0.0
    for j in range(d):
        amax = max(amax, abs(np.float64(v[j])))
    s = amax / 127.0
    r2 = 0.0
    h2 = 0.0
    n2 = 0.0
    for j in range(d):
        x = np.float64(v[j])
        q = min(127.0, max(-127.0, np.rint(x / s))) if s > 0.0 else 0.0
        out[j] = np.int64(q) + offset
        e = x - s * q
        r2 += e * e
        h2 += (s * q) * (s * q)
        n2 += x * x
    for j in range(d, out.shape[0]):
        out[j] = offset
    return s, np.sqrt(r2), np.sqrt(h2), n2


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _dot64(x, c):
    acc = 0.0
    for j in range(x.shape[0]):
        acc += np.float64(x[j]) * np.float64(c[j])
    return acc


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _intervals(srow, sx, xr, xh, xn, coef, lo, up):
    """lo[c], up[c] = a - B, a + B (see (*)) for the k = len(lo) real centroids, in
    float32 (16 lanes a vector): one pass. Its rounding (a few ulps of terms no larger
    than ||x|| ||c|| + |bias|) is far inside the slack of SCREEN_SLACK times that, and
    SCREEN_ABS_SLACK covers the subnormal range, where rounding is absolute.
    The centroid constants are rows of one array: with one array each, the loop had
    too many possible aliases for LLVM's run-time checks and stayed scalar."""
    sx32 = np.float32(sx)
    xr32 = np.float32(xr + SCREEN_SLACK * xn)
    xh32 = np.float32(xh)
    sl32 = np.float32(SCREEN_SLACK)
    ab32 = np.float32(SCREEN_ABS_SLACK)
    for c in range(lo.shape[0]):
        a = sx32 * coef[0, c] * np.float32(srow[c]) + coef[3, c]
        b = xr32 * coef[1, c] + xh32 * coef[2, c] + (sl32 * abs(coef[3, c]) + ab32)
        lo[c] = a - b
        up[c] = a + b


@njit(nogil=True, cache=True)
def select_row(srow, x, sx, xr, xh, xn2, coef, bias64, cent, l2,
               lo, up, cf, ci, bs, bi, out_s, out_i):
    """Exact top-p (p = len(out_s)) of one row from its int32 screen ``srow`` (kp,):
    the intervals, a floor t that at least p lower bounds reach
    (``assign.floor_at_least``), and the float64 re-score of every centroid whose upper
    bound reaches t, best p of them by (score desc, index asc). Scratch: lo, up (k,) float32, cf (k,) float64, ci (k,) int64,
    bs (p,) float64, bi (p,) int64."""
    p = out_s.shape[0]
    _intervals(srow, sx, xr, xh, np.sqrt(xn2), coef, lo, up)
    t = floor_at_least(lo, p)
    w = 0
    for c in range(lo.shape[0]):     # candidates, in index order, without branches
        ci[w] = c
        w += np.int64(up[c] >= t)
    for j in range(w):
        cf[j] = _dot64(x, cent[ci[j]]) + bias64[ci[j]]
    # Candidates come in index order: equal scores keep the lower index first.
    insert_best(cf, ci, w, bs, bi)
    for j in range(p):
        f = bs[j]
        out_s[j] = np.float32(max(xn2 - 2.0 * f, 0.0)) if l2 else np.float32(f)
        out_i[j] = bi[j]


@njit(nogil=True, cache=True)
def _tile_quantize(x, s0, nt, groups, kp):
    """Rows s0..s0+nt of x quantized (uint8, offset 128), their (s, ||r||, ||x^||,
    ||x||^2), and the int32 block to fill (rows rounded up to SCREEN_MR)."""
    xu = np.empty((nt, 4 * groups), dtype=np.uint8)
    st = np.empty((nt, 4), dtype=np.float64)
    for i in range(nt):
        s, r, h, n2 = quantize_row(x[s0 + i], xu[i], 128)
        st[i, 0] = s
        st[i, 1] = r
        st[i, 2] = h
        st[i, 3] = n2
    S = np.empty(((nt + SCREEN_MR - 1) // SCREEN_MR * SCREEN_MR, kp), dtype=np.int32)
    return xu, st, S


@njit(nogil=True, cache=True)
def _tile_select(x, s0, nt, S, st, coef, bias64, cent, l2, top_s, top_i):
    k = cent.shape[0]
    p = top_s.shape[1]
    lo = np.empty(k, dtype=np.float32)
    up = np.empty(k, dtype=np.float32)
    cf = np.empty(k, dtype=np.float64)
    ci = np.empty(k, dtype=np.int64)
    bs = np.empty(p, dtype=np.float64)
    bi = np.empty(p, dtype=np.int64)
    for i in range(nt):
        select_row(S[i], x[s0 + i], st[i, 0], st[i, 1], st[i, 2], st[i, 3], coef, bias64,
                   cent, l2, lo, up, cf, ci, bs, bi, top_s[s0 + i], top_i[s0 + i])


# Two drivers that differ only in the block kernel they call. Written out rather than
# made by a factory: Numba's on-disk cache did not recognise a factory's closures in a
# new process (a recompile every time).

@njit(nogil=True, cache=True, parallel=True)
def _driver_vnni(x, panels, init, coef, bias64, cent, l2, tile, p_top):
    n = x.shape[0]
    npanel, groups, _ = panels.shape
    top_s = np.empty((n, p_top), dtype=np.float32)
    top_i = np.empty((n, p_top), dtype=np.int64)
    for t in prange((n + tile - 1) // tile):
        s0 = t * tile
        nt = min(s0 + tile, n) - s0
        xu, st, S = _tile_quantize(x, s0, nt, groups, npanel * SCREEN_NR)
        for p in range(npanel):              # a panel stays in L1 across the tile
            for i0 in range(0, nt, SCREEN_MR):
                dot_block_u8s8(xu, i0, panels, p, init, S)
        _tile_select(x, s0, nt, S, st, coef, bias64, cent, l2, top_s, top_i)
    return top_s, top_i


@njit(nogil=True, cache=True, parallel=True)
def _driver_portable(x, panels, init, coef, bias64, cent, l2, tile, p_top):
    n = x.shape[0]
    npanel, groups, _ = panels.shape
    top_s = np.empty((n, p_top), dtype=np.float32)
    top_i = np.empty((n, p_top), dtype=np.int64)
    for t in prange((n + tile - 1) // tile):
        s0 = t * tile
        nt = min(s0 + tile, n) - s0
        xu, st, S = _tile_quantize(x, s0, nt, groups, npanel * SCREEN_NR)
        for p in range(npanel):
            for i0 in range(0, nt, SCREEN_MR):
                dot_block_portable(xu, i0, panels, p, init, S)
        _tile_select(x, s0, nt, S, st, coef, bias64, cent, l2, top_s, top_i)
    return top_s, top_i


_DRIVERS = {"portable": _driver_portable}
if has_vnni():
    _DRIVERS["vnni"] = _driver_vnni


def worth_screening(k: int, d: int) -> bool:
    """Whether the screen beats the float32 tiled kernel for k centroids of d features
    on this CPU: only with VNNI (the portable int8 loops are ~10x slower than the
    float32 kernel), and only from SCREEN_MIN_D features and SCREEN_MIN_K centroids
    (below, quantizing the rows and selecting cost more than the FLOPs saved)."""
    return "vnni" in _DRIVERS and d >= SCREEN_MIN_D and k >= SCREEN_MIN_K and d <= _MAX_D


def default_kernel() -> str:
    """"vnni" where the CPU (as Numba compiles for it) has AVX-512 VNNI, else
    "portable"."""
    return "vnni" if "vnni" in _DRIVERS else "portable"


@njit(nogil=True, cache=True)
def _quantize_centroids(c, panels, csum, scale, norm, rnorm):
    k, d = c.shape
    row = np.empty(panels.shape[1] * 4, dtype=np.int8)
    for i in range(k):
        s, r, _, n2 = quantize_row(c[i], row, 0)
        p, col = divmod(i, SCREEN_NR)
        total = 0
        for j in range(row.shape[0]):
            panels[p, j // 4, 4 * col + j % 4] = row[j]
            total += np.int64(row[j])
        csum[i] = total
        scale[i] = s
        norm[i] = np.sqrt(n2)
        rnorm[i] = r


def prepare_screen(centroids: np.ndarray, l2: bool) -> ScreenPanels:
    """Quantize float32 C-contiguous centroids (k, d) for ``screened_topk``."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    k, d = c.shape
    if d > _MAX_D:
        raise ValueError(f"the int8 screen takes d <= {_MAX_D} (int32 sums); got d={d}")
    npanel = -(-k // SCREEN_NR)
    kp = npanel * SCREEN_NR
    panels = np.zeros((npanel, -(-d // 4), 4 * SCREEN_NR), dtype=np.int8)
    csum = np.zeros(kp, dtype=np.int32)
    stats = np.zeros((3, kp), dtype=np.float64)
    _quantize_centroids(c, panels, csum, stats[0], stats[1], stats[2])
    bias64 = np.zeros(kp, dtype=np.float64)
    if l2:
        c64 = c.astype(np.float64)
        bias64[:k] = -0.5 * np.einsum("ij,ij->i", c64, c64)
    coef = np.concatenate([stats, bias64[None]]).astype(np.float32)
    return ScreenPanels(panels, -128 * csum, coef, bias64, c, k, bool(l2))


def screen_tile(n: int, kp: int, n_threads: int) -> int:
    """Rows per prange task: the (rows, kp) int32 block within SCREEN_TILE_BYTES, and
    at least four tiles per thread when n allows."""
    tile = max(SCREEN_MR, SCREEN_TILE_BYTES // (4 * kp))
    tile = min(tile, max(SCREEN_MR, -(-n // (4 * max(n_threads, 1)))))
    return -(-tile // SCREEN_MR) * SCREEN_MR


def screened_topk(x: np.ndarray, sp: ScreenPanels, p: int, kernel: str | None = None,
                  n_threads: int = 1):
    """Exact top-p of validated float32 rows x (n, d) against prepared centroids, best
    first: (scores float32 (n, p): squared distances for L2, inner products otherwise;
    indices int64 (n, p)). 1 <= p <= k. ``kernel``: "vnni" or "portable" (default: the
    fastest this CPU runs); every kernel gives the same result."""
    kernel = default_kernel() if kernel is None else kernel
    if kernel not in _DRIVERS:
        raise ValueError(f"kernel must be one of {tuple(_DRIVERS)} on this CPU; got "
                         f"{kernel!r}")
    if not 1 <= p <= sp.k:
        raise ValueError(f"p must be in [1, k={sp.k}]; got {p}")
    tile = screen_tile(x.shape[0], sp.panels.shape[0] * SCREEN_NR, n_threads)
    return _DRIVERS[kernel](x, sp.panels, sp.init, sp.coef, sp.bias64, sp.cent, sp.l2,
                            tile, int(p))
