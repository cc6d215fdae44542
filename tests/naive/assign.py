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
