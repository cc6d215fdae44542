"""Input checks shared by every public entry point.

Each check converts at most once, copies only when it must, and raises an error that
names the parameter, what is allowed and what was received.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._config import VALUE_LIMIT_FACTOR

METRICS = ("l2", "ip", "cosine")

FLT_MAX = float(np.finfo(np.float32).max)


def value_limit(d: int) -> float:
    """The largest |value| accepted in a vector of ``d`` features (float64):
    sqrt(FLT_MAX / (VALUE_LIMIT_FACTOR * d)), derived in ``_config``. The one-query
    kernels compute the same expression (``list_scan.value_limit``), bit for bit."""
    return math.sqrt(FLT_MAX / (VALUE_LIMIT_FACTOR * d))


def _float32_at_most(v: float) -> np.float32:
    """The largest float32 <= v (v >= 0): |x| <= v and |x| <= it agree for float32 x."""
    f = np.float32(min(v, FLT_MAX))
    return np.nextafter(f, np.float32(0)) if float(f) > v else f


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
                  min_rows: int = 0, allow_1d: bool = False,
                  max_abs: float | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 array of shape (n, d).

    float32/float64 (and integer) input in any memory order is accepted and converted
    once; a C-contiguous float32 array is returned as is, without a copy. NaN/inf,
    values beyond ``max_abs`` (default ``value_limit(d)``: larger ones overflow
    float32 squared distances), wrong ndim, complex or object data and a wrong feature
    count raise.
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
    _check_values(out, name, value_limit(out.shape[1]) if max_abs is None else max_abs)
    return out


def _check_values(out: np.ndarray, name: str, max_abs: float) -> None:
    """Raise unless every entry of the float32 array ``out`` is finite and within
    ``max_abs``: one vectorised pass (no temporary array), which also catches NaN."""
    from .kernels.scan.list_scan import count_within
    lim = _float32_at_most(max_abs)
    flat = out.reshape(-1)
    if count_within(flat, lim) == flat.shape[0]:
        return
    # Error path only: the first offender, and which rule it breaks.
    bad = ~np.isfinite(out)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{name} contains NaN or infinity (first at row {r}, column "
                         f"{c}; float64 values beyond float32's range count as "
                         f"infinity); remove or impute them first.")
    r, c = np.argwhere(np.abs(out) > lim)[0]
    raise ValueError(f"{name} holds {float(out[r, c]):.6g} at row {r}, column {c}, but "
                     f"the largest magnitude accepted with {out.shape[1]} features is "
                     f"{float(lim):.6g} (beyond it squared distances and inner products "
                     f"overflow float32; see VALUE_LIMIT_FACTOR in numba_ivf._config); "
                     f"rescale the data, which changes no ranking.")


def check_metric(metric) -> str:
    return check_choice("metric", metric, METRICS)
