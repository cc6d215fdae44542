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

from ..._config import ASSIGN_NR as NR
from ..._config import ASSIGN_VW as VW

__all__ = ["keys4_l2", "keys4_ip", "key1_l2", "key1_ip", "panelkeys_l2", "panelkeys_ip",
           "prefetch_span", "lowest_bit"]

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


# -- keys of one query against centroid panels ------------------------------------------
# ``panelkeys_l2(q, panels, p0, out)`` / ``panelkeys_ip``: panels is the tiled kernel's
# centroid layout (npanel, d, NR) (``assign.prepare_centroids``), and out[j] is the key
# of column j % NR of panel p0 + j // NR for j < len(out) (a multiple of NR):
# sum_t (q[t] - panels[p, t, c])^2, or -sum_t q[t] * panels[p, t, c]. Each key is one
# FMA chain over t in order, so its bits do not depend on which loop (four panels at a
# time, or one) or which range computed it. Four panels give eight vector accumulators
# in registers and four contiguous streams; over a (d, nlist) transposed matrix the same
# walk read 4 KB-strided rows (a new page per feature), and a loop over a scores array
# loaded and stored every score once per feature (at glove-50: 9 -> 4 us; at
# fashion-mnist-784, 3 MB of centroids per query, the memory walk dominates).

_PANEL_GROUP = 4


def _make_panels(l2: bool):
    def impl(typingctx, q, panels, p0, out):
        f32 = types.float32
        if not (isinstance(q, types.Array) and q.dtype == f32 and q.ndim == 1
                and q.layout == "C" and isinstance(panels, types.Array)
                and panels.dtype == f32 and panels.ndim == 3 and panels.layout == "C"
                and isinstance(p0, types.Integer) and isinstance(out, types.Array)
                and out.dtype == f32 and out.ndim == 1 and out.layout == "C"):
            return None

        def codegen(context, builder, sig, args):
            qa = context.make_array(sig.args[0])(context, builder, args[0])
            pa = context.make_array(sig.args[1])(context, builder, args[1])
            pstart = context.cast(builder, args[2], sig.args[2], types.int64)
            oa = context.make_array(sig.args[3])(context, builder, args[3])
            vt = ir.VectorType(_F32, VW)
            fma_v = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{VW}f32")
            d = builder.extract_value(pa.shape, 1)
            nr = builder.extract_value(pa.shape, 2)
            nv = NR // VW
            panel_len = builder.mul(d, nr)
            npan = builder.sdiv(builder.extract_value(oa.shape, 0), nr)

            def splat(x):
                v = builder.insert_element(ir.Constant(vt, ir.Undefined), x,
                                           ir.Constant(_I32, 0))
                return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                              ir.Constant(ir.VectorType(_I32, VW), [0] * VW))

            def update(qv, cv, acc):
                if l2:
                    diff = builder.fsub(qv, cv)
                    return builder.call(fma_v, [diff, diff, acc])
                return builder.call(fma_v, [qv, cv, acc])

            def group(ng):
                def body(g0, _):
                    bases = [builder.gep(pa.data, [builder.mul(builder.add(
                        builder.add(pstart, g0), ir.Constant(_I64, g)), panel_len)])
                        for g in range(ng)]
                    zero = ir.Constant(vt, [0.0] * VW)

                    def step(t, accs):
                        qv = splat(builder.load(builder.gep(qa.data, [t])))
                        off = builder.mul(t, nr)
                        out_ = []
                        for g in range(ng):
                            for v in range(nv):
                                ptr = builder.gep(bases[g], [builder.add(
                                    off, ir.Constant(_I64, v * VW))])
                                cv = builder.load(builder.bitcast(ptr, vt.as_pointer()),
                                                  align=4)
                                out_.append(update(qv, cv, accs[g * nv + v]))
                        return out_
                    accs, _ = _loop(builder, "pant", ir.Constant(_I64, 0), d, 1,
                                    [zero] * (ng * nv), step)
                    for g in range(ng):
                        for v in range(nv):
                            x = accs[g * nv + v]
                            if not l2:
                                x = builder.fneg(x)
                            col = builder.add(builder.mul(builder.add(
                                g0, ir.Constant(_I64, g)), nr), ir.Constant(_I64, v * VW))
                            builder.store(x, builder.bitcast(builder.gep(oa.data, [col]),
                                                             vt.as_pointer()), align=4)
                    return []
                return body

            _, g1 = _loop(builder, "pangrp", ir.Constant(_I64, 0), npan, _PANEL_GROUP, [],
                          group(_PANEL_GROUP))
            _loop(builder, "panone", g1, npan, 1, [], group(1))
            return context.get_dummy_value()

        return types.void(q, panels, p0, out), codegen

    impl.__name__ = f"panelkeys_{'l2' if l2 else 'ip'}"
    return intrinsic(impl)


panelkeys_l2 = _make_panels(True)
panelkeys_ip = _make_panels(False)


@intrinsic
def prefetch_span(typingctx, arr, start, nbytes):
    """Prefetch (for reading) the 64-byte lines covering bytes [start, start + nbytes)
    of a C-contiguous array's buffer; a hint, so no bounds matter."""
    if not (isinstance(arr, types.Array) and arr.layout == "C"
            and isinstance(start, types.Integer) and isinstance(nbytes, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        aa = context.make_array(sig.args[0])(context, builder, args[0])
        s = context.cast(builder, args[1], sig.args[1], types.int64)
        nb = context.cast(builder, args[2], sig.args[2], types.int64)
        i8p = ir.IntType(8).as_pointer()
        base = builder.gep(builder.bitcast(aa.data, i8p), [s])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
            "llvm.prefetch.p0")
        nlines = builder.sdiv(builder.add(nb, ir.Constant(_I64, 63)), ir.Constant(_I64, 64))
        with cgutils.for_range(builder, nlines, intp=_I64) as loop:
            p = builder.gep(base, [builder.mul(loop.index, ir.Constant(_I64, 64))])
            builder.call(fn, [p, ir.Constant(_I32, 0), ir.Constant(_I32, 3),
                              ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(arr, start, nbytes), codegen


@intrinsic
def lowest_bit(typingctx, mask):
    """Index (int64) of the lowest set bit of a non-zero unsigned integer (``tzcnt`` /
    ``rbit`` + ``clz``)."""
    if not (isinstance(mask, types.Integer) and not mask.signed and mask.bitwidth <= 64):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        if mask.bitwidth < 64:
            x = builder.zext(x, _I64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I64, [_I64, ir.IntType(1)]), "llvm.cttz.i64")
        return builder.call(fn, [x, ir.Constant(ir.IntType(1), 1)])

    return types.int64(mask), codegen
