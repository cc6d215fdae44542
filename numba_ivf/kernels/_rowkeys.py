"""Exact query-to-row keys for a few stored rows at a time, written in LLVM IR.

``keys4_l2(q, data, r)`` / ``keys4_ip(q, data, r)`` return the float32 keys of rows
``r .. r+3`` of the row arena ``data`` as a 4-tuple (rows past the end are clamped to the
last row; the caller ignores their keys):

    l2: sum_j (q[j] - data[r, j])^2          ip: -sum_j q[j] * data[r, j]

``key1_l2`` / ``key1_ip`` compute the same key of one row. The summation order is fixed
here, not by LLVM's vectoriser: per row one accumulator of ``VW`` lanes takes feature
``j`` in lane ``j % VW`` while whole vectors remain, its lanes are then added pairwise
(halves, quarters, ...), and the last ``d % VW`` features follow as one scalar chain
added last. So a row's key has the same bits whichever function computed it, and every
IVF-Flat scan plan and the exact re-ranking rank the same way.

Why IR: the plain Numba loop (``fastmath`` reassociation) vectorised the bulk but left
the ``d % 32`` remainder as a scalar chain (at d=50, 18 dependent FMAs: 18 of 12 ns per
row), and its order was LLVM's choice. Four rows share every query load and give four
independent FMA chains; measured here (AVX2, rows in L2), 9 ns per row at d=50 against
18 ns for the Numba loop, and 80 against 110 ns at d=784, where the L2 cache's bandwidth
is the limit.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._config import ASSIGN_VW as VW

__all__ = ["keys4_l2", "keys4_ip", "key1_l2", "key1_ip"]

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()


def _hsum(builder, v, width):
    """The lanes of v added pairwise, low half + high half, down to one lane."""
    while width > 1:
        half = width // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half),
                                                      list(range(half))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half),
                                                      list(range(half, width))))
        v = builder.fadd(lo, hi)
        width = half
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _loop(builder, name, start, stop, step, inits, body):
    """``for j in range(start, stop, step)`` carrying the values ``inits``; body(j,
    values) returns the next values. Returns the values after the loop and the final j
    (``start`` when the loop does not run)."""
    head = builder.basic_block
    loop = builder.append_basic_block(f"rk.{name}")
    done = builder.append_basic_block(f"rk.{name}_done")
    step_c = ir.Constant(_I64, step)
    builder.cbranch(builder.icmp_signed("<=", builder.add(start, step_c), stop)
                    if step > 1 else builder.icmp_signed("<", start, stop), loop, done)
    builder.position_at_end(loop)
    j = builder.phi(_I64)
    j.add_incoming(start, head)
    vals = [builder.phi(v.type) for v in inits]
    for phi, v in zip(vals, inits):
        phi.add_incoming(v, head)
    nxt = body(j, vals)
    j1 = builder.add(j, step_c)
    tail = builder.basic_block
    j.add_incoming(j1, tail)
    for phi, v in zip(vals, nxt):
        phi.add_incoming(v, tail)
    builder.cbranch(builder.icmp_signed("<=", builder.add(j1, step_c), stop)
                    if step > 1 else builder.icmp_signed("<", j1, stop), loop, done)
    builder.position_at_end(done)
    outs = [builder.phi(v.type) for v in inits]
    for phi, v0, v1 in zip(outs, inits, nxt):
        phi.add_incoming(v0, head)
        phi.add_incoming(v1, tail)
    jout = builder.phi(_I64)
    jout.add_incoming(start, head)
    jout.add_incoming(j1, tail)
    return outs, jout


def _make(nrows: int, l2: bool):
    def impl(typingctx, q, data, r):
        f32 = types.float32
        if not (isinstance(q, types.Array) and q.dtype == f32 and q.ndim == 1
                and q.layout == "C" and isinstance(data, types.Array)
                and data.dtype == f32 and data.ndim == 2 and data.layout == "C"
                and isinstance(r, types.Integer)):
            return None
        ret = types.UniTuple(f32, nrows) if nrows > 1 else f32

        def codegen(context, builder, sig, args):
            qa = context.make_array(sig.args[0])(context, builder, args[0])
            da = context.make_array(sig.args[1])(context, builder, args[1])
            r0 = context.cast(builder, args[2], sig.args[2], types.int64)
            vt = ir.VectorType(_F32, VW)
            fma_v = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{VW}f32")
            fma_s = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_F32, [_F32, _F32, _F32]), "llvm.fma.f32")
            n = builder.extract_value(da.shape, 0)
            d = builder.extract_value(da.shape, 1)
            last = builder.sub(n, ir.Constant(_I64, 1))
            rows = []
            for u in range(nrows):
                ri = builder.add(r0, ir.Constant(_I64, u))
                ri = builder.select(builder.icmp_signed("<", ri, last), ri, last)
                rows.append(builder.gep(da.data, [builder.mul(ri, d)]))

            def term(fma, qv, xv, acc):
                if l2:
                    diff = builder.fsub(qv, xv)
                    return builder.call(fma, [diff, diff, acc])
                return builder.call(fma, [qv, xv, acc])

            def vec_body(j, accs):
                qv = builder.load(builder.bitcast(builder.gep(qa.data, [j]),
                                                  vt.as_pointer()), align=4)
                return [term(fma_v, qv, builder.load(builder.bitcast(
                    builder.gep(rows[u], [j]), vt.as_pointer()), align=4), accs[u])
                    for u in range(nrows)]

            def scalar_body(j, accs):
                qs = builder.load(builder.gep(qa.data, [j]), align=4)
                return [term(fma_s, qs, builder.load(builder.gep(rows[u], [j]), align=4),
                             accs[u]) for u in range(nrows)]

            zero_v = ir.Constant(vt, [0.0] * VW)
            accs, jv = _loop(builder, "vec", ir.Constant(_I64, 0), d, VW,
                             [zero_v] * nrows, vec_body)
            tails, _ = _loop(builder, "scalar", jv, d, 1, [ir.Constant(_F32, 0.0)] * nrows,
                             scalar_body)
            out = []
            for u in range(nrows):
                key = builder.fadd(_hsum(builder, accs[u], VW), tails[u])
                out.append(key if l2 else builder.fneg(key))
            if nrows == 1:
                return out[0]
            return context.make_tuple(builder, sig.return_type, out)

        return ret(q, data, r), codegen

    impl.__name__ = f"keys{nrows}_{'l2' if l2 else 'ip'}"
    return intrinsic(impl)


keys4_l2 = _make(4, True)
keys4_ip = _make(4, False)
key1_l2 = _make(1, True)
key1_ip = _make(1, False)
