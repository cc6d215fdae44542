"""Register-blocked dot-product micro-kernel, written in LLVM IR.

``dot_block(x, i0, panels, p, bias, out, rowmax)`` computes an MR x NR block of scores,

    out[r, c] = sum_j x[min(i0 + r, n - 1), j] * panels[p, j, c] + bias[p * NR + c]
    rowmax[r] = max_c out[r, c]                                    (r < MR, c < NR)

with the MR*NR accumulators held in vector registers for the whole walk over the
feature dimension. Numba cannot express this: its local arrays live on the heap (or, via
alloca, are not promoted to registers once LLVM's loop vectoriser has picked another
loop to vectorise), and the result was a 7 GFLOP/s kernel that spilled every
accumulator. Emitting the loop ourselves makes the shape explicit: per feature j, NR/VW
vector loads of the centroid panel, MR broadcasts of x[r, j] and MR*NR/VW packed FMAs
(``vfmadd231ps zmm`` with AVX-512; ``fmla`` on NEON), nothing else.

Rows past the end of ``x`` are clamped to the last row (their results are discarded by
the caller), so the kernel needs no tail variant. The row maxima let the caller skip
the scalar scan of a block row that cannot beat its running best, which is most rows
once a few panels have been seen.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..._config import ASSIGN_MR as MR
from ..._config import ASSIGN_NR as NR
from ..._config import ASSIGN_VW as VW
from ..simd._irutil import splat as _splat

NV = NR // VW  # vectors per accumulator row


@intrinsic
def dot_block(typingctx, x, i0, panels, p, bias, out, rowmax):
    """Write the MR x NR score block of rows i0.. against panel p, and its row maxima.

    x: float32[:, ::1] (n, d), n >= 1, d >= 1; panels: float32[:, :, ::1] (npanel, d, NR);
    bias: float32[::1] (npanel * NR,); out: float32[:, ::1] (MR, NR); rowmax:
    float32[::1] (MR,). No bounds checks: the caller guarantees the shapes.
    """
    f32 = types.float32

    def is_f32(a, ndim):
        return isinstance(a, types.Array) and a.dtype == f32 and a.ndim == ndim

    if not (is_f32(x, 2) and is_f32(panels, 3) and is_f32(bias, 1) and is_f32(out, 2)
            and is_f32(rowmax, 1) and isinstance(i0, types.Integer)
            and isinstance(p, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        xa = context.make_array(sig.args[0])(context, builder, args[0])
        pa = context.make_array(sig.args[2])(context, builder, args[2])
        ba = context.make_array(sig.args[4])(context, builder, args[4])
        oa = context.make_array(sig.args[5])(context, builder, args[5])
        ma = context.make_array(sig.args[6])(context, builder, args[6])
        i64 = ir.IntType(64)
        i0v = context.cast(builder, args[1], sig.args[1], types.int64)
        pv = context.cast(builder, args[3], sig.args[3], types.int64)
        vt = ir.VectorType(ir.FloatType(), VW)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{VW}f32")
        vmax = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt]), f"llvm.maxnum.v{VW}f32")
        hmax = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.FloatType(), [vt]),
            f"llvm.vector.reduce.fmax.v{VW}f32")

        n = builder.extract_value(xa.shape, 0)
        d = builder.extract_value(xa.shape, 1)
        last = builder.sub(n, ir.Constant(i64, 1))
        rows = []
        for r in range(MR):
            ri = builder.add(i0v, ir.Constant(i64, r))
            ri = builder.select(builder.icmp_signed("<", ri, last), ri, last)
            rows.append(builder.gep(xa.data, [builder.mul(ri, d)]))
        panel = builder.gep(pa.data, [builder.mul(builder.mul(pv, d), ir.Constant(i64, NR))])

        entry = builder.basic_block
        loop = builder.append_basic_block("dot_block.loop")
        done = builder.append_basic_block("dot_block.done")
        builder.branch(loop)

        builder.position_at_end(loop)
        j = builder.phi(i64)
        j.add_incoming(ir.Constant(i64, 0), entry)
        zero = ir.Constant(vt, [0.0] * VW)
        acc = [[builder.phi(vt) for _ in range(NV)] for _ in range(MR)]
        for row in acc:
            for phi in row:
                phi.add_incoming(zero, entry)
        crow = builder.gep(panel, [builder.mul(j, ir.Constant(i64, NR))])
        cvec = [builder.load(builder.bitcast(builder.gep(crow, [ir.Constant(i64, v * VW)]),
                                             vt.as_pointer()), align=4)
                for v in range(NV)]
        nxt = []
        for r in range(MR):
            xb = _splat(builder, builder.load(builder.gep(rows[r], [j])), vt)
            nxt.append([builder.call(fma, [xb, cvec[v], acc[r][v]]) for v in range(NV)])
        for r in range(MR):
            for v in range(NV):
                acc[r][v].add_incoming(nxt[r][v], loop)
        j1 = builder.add(j, ir.Constant(i64, 1))
        j.add_incoming(j1, loop)
        builder.cbranch(builder.icmp_signed("<", j1, d), loop, done)

        builder.position_at_end(done)
        bvec = []
        for v in range(NV):
            off = builder.add(builder.mul(pv, ir.Constant(i64, NR)), ir.Constant(i64, v * VW))
            bvec.append(builder.load(builder.bitcast(builder.gep(ba.data, [off]),
                                                     vt.as_pointer()), align=4))
        for r in range(MR):
            row = [builder.fadd(nxt[r][v], bvec[v]) for v in range(NV)]
            for v in range(NV):
                dst = builder.gep(oa.data, [ir.Constant(i64, r * NR + v * VW)])
                builder.store(row[v], builder.bitcast(dst, vt.as_pointer()), align=4)
            m = row[0]
            for v in range(1, NV):
                m = builder.call(vmax, [m, row[v]])
            builder.store(builder.call(hmax, [m]),
                          builder.gep(ma.data, [ir.Constant(i64, r)]))
        return context.get_dummy_value()

    return types.void(x, i0, panels, p, bias, out, rowmax), codegen
