"""A query's PQ distance table, written in LLVM IR.

``table_rows(q, codebooks_t, l2, f, out)`` writes, for every sub-space j < m and code
c < ksub (codebooks_t of shape (m, dsub, ksub), the codebooks with their last two axes
swapped),

    out[j, c] = f * sum_t q[j*dsub + t] * codebooks_t[j, t, c]          (l2 False)
    out[j, c] =     sum_t (q[j*dsub + t] - codebooks_t[j, t, c]) ** 2   (l2 True)

summed over t in order from 0.0, in float32, the adds and multiplies marked
``contract`` (fused where the target has FMA). Each group of 16 codes is two 8-lane
accumulators that stay in registers for the dsub steps. Numba's loop over the same sum
read and wrote ``out`` at every step (it cannot prove ``out`` does not alias the
inputs): ~14 us per table at m=112, dsub=7, ksub=16, against ~1 us here.

The caller guarantees shapes: q (m*dsub,) float32 (any strides), codebooks_t (m, dsub,
ksub) and out (m, ksub) float32 C-contiguous, ksub a multiple of 16.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..simd._irutil import is_array
from ..simd._irutil import splat as _splat

__all__ = ["table_rows"]

_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_W = 8                   # lanes per accumulator
_U = 2                   # accumulators per group of codes
_CONTRACT = ("contract",)


def _codegen(context, builder, sig, cargs):
    qa = context.make_array(sig.args[0])(context, builder, cargs[0])
    ca = context.make_array(sig.args[1])(context, builder, cargs[1])
    l2 = context.cast(builder, cargs[2], sig.args[2], types.boolean)
    f = context.cast(builder, cargs[3], sig.args[3], types.float32)
    oa = context.make_array(sig.args[4])(context, builder, cargs[4])
    vf = ir.VectorType(_F32, _W)
    m = builder.extract_value(ca.shape, 0)
    dsub = builder.extract_value(ca.shape, 1)
    ksub = builder.extract_value(ca.shape, 2)
    groups = builder.udiv(ksub, ir.Constant(_I64, _W * _U))
    f_v = _splat(builder, f, vf)
    zero = ir.Constant(vf, [0.0] * _W)

    def vptr(arr, off):
        return builder.bitcast(builder.gep(arr.data, [off]), vf.as_pointer())

    def nest(is_l2):
        with cgutils.for_range(builder, m, intp=_I64) as lj:
            j = lj.index
            qrow = builder.mul(j, dsub)
            crow = builder.mul(qrow, ksub)            # codebooks_t[j, 0, 0]
            orow = builder.mul(j, ksub)
            with cgutils.for_range(builder, groups, intp=_I64) as lg:
                c0 = builder.mul(lg.index, ir.Constant(_I64, _W * _U))
                accs = [cgutils.alloca_once_value(builder, zero) for _ in range(_U)]
                with cgutils.for_range(builder, dsub, intp=_I64) as lt:
                    t = lt.index
                    qptr = cgutils.get_item_pointer(context, builder, sig.args[0], qa,
                                                    [builder.add(qrow, t)])
                    qt = _splat(builder, builder.load(qptr), vf)
                    base = builder.add(builder.add(crow, builder.mul(t, ksub)), c0)
                    for u in range(_U):
                        off = builder.add(base, ir.Constant(_I64, u * _W))
                        cb = builder.load(vptr(ca, off), align=4)
                        if is_l2:
                            d = builder.fsub(qt, cb, flags=_CONTRACT)
                            p = builder.fmul(d, d, flags=_CONTRACT)
                        else:
                            p = builder.fmul(qt, cb, flags=_CONTRACT)
                        builder.store(builder.fadd(builder.load(accs[u]), p,
                                                   flags=_CONTRACT), accs[u])
                for u in range(_U):
                    v = builder.load(accs[u])
                    if not is_l2:
                        v = builder.fmul(v, f_v)
                    dst = vptr(oa, builder.add(builder.add(orow, c0),
                                               ir.Constant(_I64, u * _W)))
                    builder.store(v, dst, align=4)

    with builder.if_else(l2) as (then, otherwise):
        with then:
            nest(True)
        with otherwise:
            nest(False)
    return context.get_dummy_value()


@intrinsic
def table_rows(typingctx, q, codebooks_t, l2, f, out):
    """The (m, ksub) table of one query into out (see the module docstring)."""
    f32 = types.float32
    if not (is_array(q, f32, 1, "CA") and is_array(codebooks_t, f32, 3)
            and is_array(out, f32, 2)
            and isinstance(l2, types.Boolean) and isinstance(f, types.Float)):
        return None
    return types.void(q, codebooks_t, l2, f, out), _codegen
