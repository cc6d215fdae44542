"""Calling a compiled Numba kernel without the dispatcher's argument typing.

A dispatcher call types every argument and looks the signature up before it runs the
compiled code: for the 29 arguments of a one-query IVF-PQ kernel that costs ~1.5-2 us
(an empty kernel of the same arguments: 2.7-3.7 us through the dispatcher, 1.4 us
through its entry point, this machine), a twentieth of a 40 us search. An index that
calls one kernel again and again with arguments whose types it fixes (its own arrays,
plain ints, a query it has checked) can call the compiled entry point directly.

The entry point converts each argument as its signature says and checks nothing, so a
caller may only use it for arguments of exactly the types it was found for: key the
cache on everything that decides them (here: the query's dtype, writeability and
alignment; the rest is the caller's own, fixed per cache).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Q_KEY_FLAGS", "compiled_entry", "row_key"]

# numpy's flag bits that decide a 1-D array's Numba type besides its dtype (layout "C"
# once C-contiguous, readonly, aligned): NPY_ARRAY_C_CONTIGUOUS | ALIGNED | WRITEABLE.
Q_KEY_FLAGS = 0x1 | 0x100 | 0x400


def row_key(q: np.ndarray):
    """A key that fixes the Numba type of the 1-D array ``q`` (dtype character and the
    flags above), or None unless q is C-contiguous float32 or float64."""
    flags = q.flags.num & Q_KEY_FLAGS
    char = q.dtype.char
    if not flags & 0x1 or (char != "f" and char != "d"):
        return None
    return char, flags


def compiled_entry(kernel, args: tuple):
    """What to call for ``kernel(*args)`` from now on with arguments of these types:
    the compiled entry point of the overload the dispatcher runs for them, or
    ``kernel`` itself when there is none (a Python function in its place, as a test's
    counting wrapper, or an overload reached only by conversion)."""
    overloads = getattr(kernel, "overloads", None)
    typeof = getattr(kernel, "typeof_pyval", None)
    if overloads is None or typeof is None:
        return kernel
    try:
        sig = tuple(typeof(a) for a in args)
    except Exception:       # an argument Numba cannot type: let the dispatcher say so
        return kernel
    cres = overloads.get(sig)
    return kernel if cres is None else cres.entry_point
