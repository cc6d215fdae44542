"""Quantization of a fast-scan pair table to uint8, written in LLVM IR.

``quantize_rows(qlut, term_l, lo, scale, out_u8)`` writes, for every row j < m and
column c < 16, in float32 arithmetic (every operation rounded to float32, no fused
multiply-adds; s = float32(scale)),

    out_u8[j, c] = floor(((qlut[j, c] + term_l[j, c]) - lo[j]) * s + 0.5)

clamped to [0, 255] (NaN -> 255) before the conversion, so any values, even those of
tables that no validated query produces, give defined entries;

and ``quantize_rows1(lut, lo, scale, out_u8)`` the same for one table in float64:
floor((float64(lut[j, c]) - lo[j]) * scale + 0.5). Both are the operations, in the same
order, of the plain-loop oracles in ``tests/naive``. The pair tables (one per probed
list of every query, L2 by residual) take float32: half the lanes per instruction of
float64 (0.7 -> 0.35 us per table at m=112); the scale is a float32 and the bound it
obeys allows for this rounding (see ``fastscan_search.shared_scale``).

``row_extrema(qlut, term_l, lo, hi)``: the row minima and maxima of qlut + term_l;
``row_extrema1(lut, lo, hi)`` those of one table.

Numba's loops did not vectorise (the float -> int -> uint8 conversion of a 16-column row
stayed scalar: 2.9 us per table at m=112; the row extrema, even as a halving tree, ~1 us);
here each row is two 8-lane vectors. The caller guarantees shapes: qlut, term_l (m, 16)
float32 C-contiguous, lo and hi (>= m,) float32, out_u8 (>= m, 16) uint8.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..simd._irutil import is_array as _is_arr
from ..simd._irutil import splat as _splat

__all__ = ["quantize_rows", "quantize_rows1", "row_extrema"]

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_F64 = ir.DoubleType()
_W = 8     # lanes per vector; a row of 16 columns is two vectors


def _codegen(two):
    """Codegen of quantize_rows (two tables summed, float32 arithmetic) or
    quantize_rows1 (one table, float64 arithmetic)."""
    i_lo, i_scale, i_out = (2, 3, 4) if two else (1, 2, 3)
    ft = _F32 if two else _F64

    def codegen(context, builder, sig, cargs):
        qa = context.make_array(sig.args[0])(context, builder, cargs[0])
        ta = context.make_array(sig.args[1])(context, builder, cargs[1]) if two else None
        la = context.make_array(sig.args[i_lo])(context, builder, cargs[i_lo])
        oa = context.make_array(sig.args[i_out])(context, builder, cargs[i_out])
        s = context.cast(builder, cargs[i_scale], sig.args[i_scale],
                         types.float32 if two else types.float64)
        vf = ir.VectorType(_F32, _W)
        vt = ir.VectorType(ft, _W)
        vi = ir.VectorType(_I32, 2 * _W)
        vb = ir.VectorType(ir.IntType(8), 2 * _W)
        scale_v = _splat(builder, s, vt)
        half_v = ir.Constant(vt, [0.5] * _W)
        top_v = ir.Constant(vt, [255.0] * _W)
        zero_v = ir.Constant(vt, [0.0] * _W)
        m = builder.extract_value(qa.shape, 0)
        with cgutils.for_range(builder, m, intp=_I64) as loop:
            j = loop.index
            lo_s = builder.load(builder.gep(la.data, [j]))
            lo_v = _splat(builder, lo_s if two else builder.fpext(lo_s, _F64), vt)
            row = builder.mul(j, ir.Constant(_I64, 16))
            halves = []
            for h in range(2):
                off = builder.add(row, ir.Constant(_I64, h * _W))

                def vload(arr):
                    ptr = builder.bitcast(builder.gep(arr.data, [off]), vf.as_pointer())
                    return builder.load(ptr, align=1)

                v = vload(qa)
                if two:
                    v = builder.fadd(v, vload(ta))
                else:
                    v = builder.fpext(v, vt)
                e = builder.fadd(builder.fmul(builder.fsub(v, lo_v), scale_v), half_v)
                # Clamp to [0, 255] before fptosi, whose result out of range (or for
                # NaN) is poison: a finite table stays inside by the bound proof, so
                # this changes no entry of one; NaN goes to 255 (ordered compares).
                e = builder.select(builder.fcmp_ordered("<", e, top_v), e, top_v)
                e = builder.select(builder.fcmp_ordered(">=", e, zero_v), e, zero_v)
                halves.append(e)
            # One 16-lane conversion and narrowing per row (two 8-lane ones each
            # went through their own shuffle and a 64-bit store).
            x = builder.shuffle_vector(halves[0], halves[1],
                                       ir.Constant(ir.VectorType(_I32, 2 * _W),
                                                   list(range(2 * _W))))
            u = builder.trunc(builder.fptosi(x, vi), vb)
            dst = builder.bitcast(builder.gep(oa.data, [row]), vb.as_pointer())
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


def _extrema_codegen(context, builder, sig, cargs):
    """Row extrema of qlut + term_l (four arguments) or of one table (three)."""
    has_term = len(sig.args) == 4
    qa = context.make_array(sig.args[0])(context, builder, cargs[0])
    ta = context.make_array(sig.args[1])(context, builder, cargs[1]) if has_term else None
    la = context.make_array(sig.args[-2])(context, builder, cargs[-2])
    ha = context.make_array(sig.args[-1])(context, builder, cargs[-1])
    vf = ir.VectorType(_F32, _W)
    m = builder.extract_value(qa.shape, 0)

    def pick(a, b, less):
        # fcmp + select, not minnum: the tables are finite and the select keeps
        # the same value a Python min / max would.
        return builder.select(builder.fcmp_ordered("<" if less else ">", a, b), a, b)

    def reduce(v, less):
        n = _W
        while n > 1:
            n //= 2
            upper = builder.shuffle_vector(
                v, ir.Constant(v.type, ir.Undefined),
                ir.Constant(ir.VectorType(_I32, _W), [n + i if i < n else i
                                                      for i in range(_W)]))
            v = pick(v, upper, less)
        return builder.extract_element(v, ir.Constant(_I32, 0))

    with cgutils.for_range(builder, m, intp=_I64) as loop:
        row = builder.mul(loop.index, ir.Constant(_I64, 16))
        halves = []
        for h in range(2):
            off = builder.add(row, ir.Constant(_I64, h * _W))
            pq = builder.bitcast(builder.gep(qa.data, [off]), vf.as_pointer())
            v = builder.load(pq, align=1)
            if has_term:
                pt = builder.bitcast(builder.gep(ta.data, [off]), vf.as_pointer())
                v = builder.fadd(v, builder.load(pt, align=1))
            halves.append(v)
        builder.store(reduce(pick(halves[0], halves[1], True), True),
                      builder.gep(la.data, [loop.index]))
        builder.store(reduce(pick(halves[0], halves[1], False), False),
                      builder.gep(ha.data, [loop.index]))
    return context.get_dummy_value()


@intrinsic
def row_extrema(typingctx, qlut, term_l, lo, hi):
    """lo[j], hi[j] = min, max over c of the float32 sum qlut[j, c] + term_l[j, c]:
    per row two 8-lane adds and a halving tree of compare-selects (Numba's loop, even
    written as a tree, took ~1 us per table at m=112). Finite tables (the callers
    reject NaN and inf queries): with NaN the result is unspecified."""
    if not (_is_arr(qlut, types.float32, 2) and _is_arr(term_l, types.float32, 2)
            and _is_arr(lo, types.float32, 1) and _is_arr(hi, types.float32, 1)):
        return None
    return types.void(qlut, term_l, lo, hi), _extrema_codegen


@intrinsic
def row_extrema1(typingctx, lut, lo, hi):
    """lo[j], hi[j] = min, max of row j of one float32 table (m, 16), as ``row_extrema``
    without the term: the row minima of a query's own table (``quantize_lut_into``;
    its float64 loop took ~0.7 of the 1.2 us quantization of an m=96 table)."""
    if not (_is_arr(lut, types.float32, 2) and _is_arr(lo, types.float32, 1)
            and _is_arr(hi, types.float32, 1)):
        return None
    return types.void(lut, lo, hi), _extrema_codegen
