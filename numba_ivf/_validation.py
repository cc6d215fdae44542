"""Input checks shared by every public entry point.

Each check converts at most once, copies only when it must, and raises an error that
names the parameter, what is allowed and what was received.
"""

from __future__ import annotations

import numbers

import numpy as np

METRICS = ("l2", "ip", "cosine")


def check_choice(name: str, value, allowed) -> str:
    """Return ``value`` if it is one of ``allowed``; raise naming all choices otherwise."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
    return value


def check_int(name: str, value, *, min_value: int | None = None,
              max_value: int | None = None) -> int:
    """Return ``value`` as a Python int, checking type and range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} of type "
                        f"{type(value).__name__}.")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}; got {value}.")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value}; got {value}.")
    return value


def check_vectors(x, name: str = "x", *, d: int | None = None, owner: str | None = None,
                  min_rows: int = 0, allow_1d: bool = False) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 array of shape (n, d).

    float32/float64 (and integer) input in any memory order is accepted and converted
    once; a C-contiguous float32 array is returned as is, without a copy. NaN/inf,
    wrong ndim, complex or object data and a wrong feature count raise.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be array-like of numbers; got "
                            f"{type(x).__name__} ({exc}).") from None
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers (float32 or float64); got "
                        f"dtype {arr.dtype}.")
    if arr.ndim == 1 and allow_1d:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        what = "a 1-D vector or a 2-D array" if allow_1d else "a 2-D array of shape (n, d)"
        raise ValueError(f"{name} must be {what}; got an array with ndim={arr.ndim} "
                         f"and shape {arr.shape}.")
    if d is not None and arr.shape[1] != d:
        who = owner or "the model"
        raise ValueError(f"{name} has {arr.shape[1]} features, but {who} expects {d}.")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least 1 feature; got shape {arr.shape}.")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows; got "
                         f"{arr.shape[0]}.")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype.kind == "f":
        # The conversion can overflow float64 -> float32: check the converted values.
        if not np.isfinite(out).all():
            bad = np.argwhere(~np.isfinite(out))[0]
            raise ValueError(f"{name} contains NaN or infinity (first at row {bad[0]}, "
                             f"column {bad[1]}; float64 values beyond float32's range "
                             f"count as infinity); remove or impute them first.")
    return out


def check_metric(metric) -> str:
    return check_choice("metric", metric, METRICS)
