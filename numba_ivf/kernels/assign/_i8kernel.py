"""Register-blocked uint8 x int8 dot-product micro-kernel (AVX-512 VNNI), in LLVM IR.

``dot_block_u8s8(xu, i0, panels, p, init, out)`` writes an MR x NR block of exact int32
sums

    out[i0 + r, p NR + c] = init[p NR + c]
                            + sum_j xu[min(i0 + r, n - 1), j] * panels[p, j // 4, 4 c + j % 4]

(r < MR, c < NR; xu uint8, panels int8, init and out int32, out with at least i0 + MR
rows). ``init`` starts the accumulators: -128 * (sum of the centroid's codes) turns the
offset queries' sums back into signed products at no cost. Per group
of four features: NR/16 loads of 64 centroid bytes, MR broadcasts of four query bytes
and MR*NR/16 ``vpdpbusd`` (four u8 x s8 products added into each int32 lane), with the
accumulators in zmm registers for the whole walk, like the float32 kernel
(``_microkernel``). Integer sums are exact, so every backend gives the same bits:
``dot_block_portable`` is the same sum in plain loops (LLVM vectorises what it can),
for CPUs without VNNI and for the parity tests.

Sums of d terms of at most 255 * 128 stay below 2**31 for d < 65,000; the caller
(``screen``) checks d.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ..._config import SCREEN_MR as MR
from ..._config import SCREEN_NR as NR
from ..simd._irutil import is_array, splat

_IS_X86 = platform.machine().lower() in ("x86_64", "amd64")
NV = NR // 16  # zmm vectors of int32 per accumulator row


def has_vnni() -> bool:
    """Whether Numba compiles for a CPU with AVX-512 VNNI (reads features only)."""
    if not _IS_X86:
        return False
    from ..fastscan.fastscan import _target_features
    return {"avx512f", "avx512bw", "avx512vnni"} <= _target_features()


@intrinsic
def dot_block_u8s8(typingctx, xu, i0, panels, p, init, out):
    if not (is_array(xu, types.uint8, 2) and is_array(panels, types.int8, 3)
            and is_array(init, types.int32, 1) and is_array(out, types.int32, 2)
            and isinstance(i0, types.Integer)
            and isinstance(p, types.Integer)):
        return None
    if not has_vnni():
        # Refuse at typing time: emitting vpdpbusd for a CPU without it would abort
        # LLVM ("Cannot select") instead of raising.
        raise TypingError("dot_block_u8s8 needs AVX-512 VNNI; use dot_block_portable")

    def codegen(context, builder, sig, args):
        xa = context.make_array(sig.args[0])(context, builder, args[0])
        pa = context.make_array(sig.args[2])(context, builder, args[2])
        ia = context.make_array(sig.args[4])(context, builder, args[4])
        oa = context.make_array(sig.args[5])(context, builder, args[5])
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        vt = ir.VectorType(i32, 16)
        dp = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt, vt]),
            "llvm.x86.avx512.vpdpbusd.512")
        i0v = context.cast(builder, args[1], sig.args[1], types.int64)
        pv = context.cast(builder, args[3], sig.args[3], types.int64)
        n = builder.extract_value(xa.shape, 0)
        dx = builder.extract_value(xa.shape, 1)            # bytes per row, 4 * groups
        groups = builder.extract_value(pa.shape, 1)
        kout = builder.extract_value(oa.shape, 1)
        last = builder.sub(n, ir.Constant(i64, 1))
        xbase = builder.bitcast(xa.data, ir.IntType(8).as_pointer())
        rows = []
        for r in range(MR):
            ri = builder.add(i0v, ir.Constant(i64, r))
            ri = builder.select(builder.icmp_signed("<", ri, last), ri, last)
            rows.append(builder.bitcast(builder.gep(xbase, [builder.mul(ri, dx)]),
                                        i32.as_pointer()))
        pbase = builder.bitcast(pa.data, ir.IntType(8).as_pointer())
        panel = builder.gep(pbase, [builder.mul(builder.mul(pv, groups),
                                                ir.Constant(i64, 4 * NR))])
        panel = builder.bitcast(panel, vt.as_pointer())

        col0 = builder.mul(pv, ir.Constant(i64, NR))
        ibase = builder.bitcast(ia.data, i32.as_pointer())
        start = [builder.load(builder.bitcast(builder.gep(ibase, [builder.add(
            col0, ir.Constant(i64, 16 * v))]), vt.as_pointer()), align=4)
            for v in range(NV)]
        entry = builder.basic_block
        loop = builder.append_basic_block("dot_i8.loop")
        done = builder.append_basic_block("dot_i8.done")
        builder.cbranch(builder.icmp_signed(">", groups, ir.Constant(i64, 0)), loop, done)

        builder.position_at_end(loop)
        g = builder.phi(i64)
        g.add_incoming(ir.Constant(i64, 0), entry)
        acc = [[builder.phi(vt) for _ in range(NV)] for _ in range(MR)]
        for row in acc:
            for v, phi in enumerate(row):
                phi.add_incoming(start[v], entry)
        cvec = [builder.load(builder.gep(panel, [builder.add(
            builder.mul(g, ir.Constant(i64, NV)), ir.Constant(i64, v))]), align=1)
            for v in range(NV)]
        nxt = []
        for r in range(MR):
            xb = splat(builder, builder.load(builder.gep(rows[r], [g]), align=1), vt)
            nxt.append([builder.call(dp, [acc[r][v], xb, cvec[v]]) for v in range(NV)])
        for r in range(MR):
            for v in range(NV):
                acc[r][v].add_incoming(nxt[r][v], loop)
        g1 = builder.add(g, ir.Constant(i64, 1))
        g.add_incoming(g1, loop)
        builder.cbranch(builder.icmp_signed("<", g1, groups), loop, done)

        builder.position_at_end(done)
        vals = []
        for r in range(MR):          # phis first: d = 0 gives init
            vals.append([])
            for v in range(NV):
                val = builder.phi(vt)
                val.add_incoming(start[v], entry)
                val.add_incoming(nxt[r][v], loop)
                vals[r].append(val)
        obase = builder.bitcast(oa.data, i32.as_pointer())
        for r in range(MR):
            orow = builder.add(builder.mul(builder.add(i0v, ir.Constant(i64, r)), kout),
                               col0)
            for v in range(NV):
                dst = builder.gep(obase, [builder.add(orow, ir.Constant(i64, 16 * v))])
                builder.store(vals[r][v], builder.bitcast(dst, vt.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(xu, i0, panels, p, init, out), codegen


@njit(nogil=True, cache=True)
def dot_block_portable(xu, i0, panels, p, init, out):
    """``dot_block_u8s8`` in plain loops (any CPU; the same exact int32 sums)."""
    n = xu.shape[0]
    groups = panels.shape[1]
    for r in range(MR):
        row = min(i0 + r, n - 1)
        o = out[i0 + r, p * NR:(p + 1) * NR]
        for c in range(NR):
            o[c] = init[p * NR + c]
        for g in range(groups):
            for k in range(4):
                xv = np.int32(xu[row, 4 * g + k])
                for c in range(NR):
                    o[c] += xv * np.int32(panels[p, g, 4 * c + k])
