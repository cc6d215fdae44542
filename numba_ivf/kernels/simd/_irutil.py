"""Small llvmlite helpers shared by the kernels written in LLVM IR."""

from __future__ import annotations

from llvmlite import ir
from numba import types

__all__ = ["is_array", "splat"]


def splat(builder, scalar, vt):
    """A vector of type ``vt`` with every lane equal to ``scalar``."""
    i32 = ir.IntType(32)
    first = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar,
                                   ir.Constant(i32, 0))
    mask = ir.Constant(ir.VectorType(i32, vt.count), [0] * vt.count)
    return builder.shuffle_vector(first, ir.Constant(vt, ir.Undefined), mask)


def is_array(a, dtype, ndim, layouts="C"):
    """Whether the Numba type ``a`` is an array of ``dtype`` and ``ndim`` whose layout
    is one of ``layouts``."""
    return (isinstance(a, types.Array) and a.dtype == dtype and a.ndim == ndim
            and a.layout in layouts)
