"""Oracles for the assignment kernels: numpy float64, all pairs, obviously correct."""

import numpy as np


def all_scores(x, centroids, metric):
    """(n, k) float64 matrix: squared distances for "l2", dot products for "ip"."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    if metric == "l2":
        return ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    return x @ c.T


def best_two(x, centroids, metric):
    """Per row: best index (lowest on ties), best value, second-best value, all values."""
    s = all_scores(x, centroids, metric)
    key = s if metric == "l2" else -s
    order = np.argsort(key, axis=1, kind="stable")
    rows = np.arange(s.shape[0])
    best = order[:, 0]
    second = s[rows, order[:, 1]] if s.shape[1] > 1 else np.full(s.shape[0], np.inf)
    return best, s[rows, best], second, s


def tolerance(x, centroids, metric, rtol):
    """Absolute tolerance per row for comparing float32 scores with the float64 oracle.

    The float32 kernels compute ||x||^2 - 2 x.c + ||c||^2 (or x.c); the rounding error
    scales with the magnitude of the terms that cancel, not with the result.
    """
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    xn = np.einsum("ij,ij->i", x, x)
    cn = np.einsum("ij,ij->i", c, c).max()
    if metric == "l2":
        return rtol * (xn + cn + 1e-30)
    return rtol * (np.sqrt(xn * cn) + 1e-30)


def topk_exact(x, centroids, l2, p):
    """Top-p of each row by the float64 score x.c - ||c||^2/2 (L2) or x.c, ties to the
    lower index: (scores (n, p) as squared distances for L2, inner products otherwise;
    indices (n, p))."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    c = np.asarray(centroids, dtype=np.float32).astype(np.float64)
    f = x @ c.T
    if l2:
        f = f - 0.5 * np.einsum("ij,ij->i", c, c)[None, :]
    idx = np.broadcast_to(np.arange(c.shape[0]), f.shape)
    order = np.lexsort((idx, -f), axis=1)[:, :p]
    best = np.take_along_axis(f, order, 1)
    if l2:
        best = np.maximum(np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * best, 0.0)
    return best, order


def int8_codes(v):
    """Per-row symmetric int8 quantization, as the screen does: (codes, scales)."""
    v = np.asarray(v, dtype=np.float32).astype(np.float64)
    s = np.abs(v).max(axis=1) / 127.0
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(s[:, None] > 0, np.rint(v / s[:, None]), 0.0)
    return np.clip(q, -127, 127).astype(np.int64), s


def screen_bound(x, centroids):
    """(approximate dot products sx sc xq.cq, bound B) for every pair: the true x.c is
    within B of the approximation (Cauchy-Schwarz on both quantization errors)."""
    x64 = np.asarray(x, dtype=np.float32).astype(np.float64)
    c64 = np.asarray(centroids, dtype=np.float32).astype(np.float64)
    xq, sx = int8_codes(x64)
    cq, sc = int8_codes(c64)
    approx = (xq @ cq.T) * sx[:, None] * sc[None, :]
    xr = np.linalg.norm(x64 - sx[:, None] * xq, axis=1)
    xh = np.linalg.norm(sx[:, None] * xq, axis=1)
    cr = np.linalg.norm(c64 - sc[:, None] * cq, axis=1)
    cn = np.linalg.norm(c64, axis=1)
    return approx, xr[:, None] * cn[None, :] + xh[:, None] * cr[None, :]
