"""Quantization of a fast-scan pair table to uint8, written in LLVM IR.

``quantize_rows(qlut, term_l, lo, scale, out_u8)`` writes, for every row j < m and
column c < 16 (``quantize_rows1(lut, lo, scale, out_u8)``: the same with one table),

    out_u8[j, c] = floor((float64(qlut[j, c] + term_l[j, c]) - lo[j]) * scale + 0.5)

(the float32 sum first, then float64 arithmetic without fused multiply-adds: the same
operations, in the same order, as the plain-loop oracle in ``tests/naive/ivfpq.py``).
Numba's loop did not vectorise (the float -> int -> uint8 conversion of a 16-column row
stayed scalar: 2.9 us per table at m=112); here each row is two 8-lane vectors through
fpext, fsub, fmul, fadd, fptosi and trunc. The caller guarantees shapes: qlut, term_l
(m, 16) float32 C-contiguous, lo (>= m,) float32, out_u8 (>= m, 16) uint8.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["quantize_rows", "quantize_rows1"]

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_F64 = ir.DoubleType()
_W = 8     # lanes per vector; a row of 16 columns is two vectors


def _splat(builder, scalar, vt):
    first = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar,
                                   ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))


def _is_arr(a, dtype, ndim):
    return (isinstance(a, types.Array) and a.dtype == dtype and a.ndim == ndim
            and a.layout == "C")


def _codegen(two):
    """Codegen of quantize_rows (two tables summed) or quantize_rows1 (one table)."""
    i_lo, i_scale, i_out = (2, 3, 4) if two else (1, 2, 3)

    def codegen(context, builder, sig, cargs):
        qa = context.make_array(sig.args[0])(context, builder, cargs[0])
        ta = context.make_array(sig.args[1])(context, builder, cargs[1]) if two else None
        la = context.make_array(sig.args[i_lo])(context, builder, cargs[i_lo])
        oa = context.make_array(sig.args[i_out])(context, builder, cargs[i_out])
        s = context.cast(builder, cargs[i_scale], sig.args[i_scale], types.float64)
        vf = ir.VectorType(_F32, _W)
        vd = ir.VectorType(_F64, _W)
        vi = ir.VectorType(_I32, _W)
        vb = ir.VectorType(ir.IntType(8), _W)
        scale_v = _splat(builder, s, vd)
        half_v = ir.Constant(vd, [0.5] * _W)
        m = builder.extract_value(qa.shape, 0)
        with cgutils.for_range(builder, m, intp=_I64) as loop:
            j = loop.index
            lo_v = _splat(builder, builder.fpext(builder.load(builder.gep(la.data, [j])),
                                                 _F64), vd)
            row = builder.mul(j, ir.Constant(_I64, 16))
            for h in range(2):
                off = builder.add(row, ir.Constant(_I64, h * _W))

                def vload(arr, vt):
                    ptr = builder.bitcast(builder.gep(arr.data, [off]), vt.as_pointer())
                    return builder.load(ptr, align=1)

                v = vload(qa, vf)
                if two:
                    v = builder.fadd(v, vload(ta, vf))
                x = builder.fadd(builder.fmul(builder.fsub(builder.fpext(v, vd), lo_v),
                                              scale_v), half_v)
                u = builder.trunc(builder.fptosi(x, vi), vb)
                dst = builder.bitcast(builder.gep(oa.data, [off]), vb.as_pointer())
                builder.store(u, dst, align=1)
        return context.get_dummy_value()
    return codegen


@intrinsic
def quantize_rows(typingctx, qlut, term_l, lo, scale, out_u8):
    """The table qlut + term_l (L2 by residual), quantized into out_u8."""
    if not (_is_arr(qlut, types.float32, 2) and _is_arr(term_l, types.float32, 2)
            and _is_arr(lo, types.float32, 1) and isinstance(scale, types.Float)
            and _is_arr(out_u8, types.uint8, 2)):
        return None
    return types.void(qlut, term_l, lo, scale, out_u8), _codegen(True)


@intrinsic
def quantize_rows1(typingctx, lut, lo, scale, out_u8):
    """One table (a query's own), quantized into out_u8."""
    if not (_is_arr(lut, types.float32, 2) and _is_arr(lo, types.float32, 1)
            and isinstance(scale, types.Float) and _is_arr(out_u8, types.uint8, 2)):
        return None
    return types.void(lut, lo, scale, out_u8), _codegen(False)
