"""LLVM intrinsics for the 4-bit PQ fast-scan block kernel (byte-shuffle table lookups).

Numba has no vector types and LLVM's auto-vectoriser never turns a 16-entry table
lookup into a byte shuffle, so the SIMD block kernels are written directly in LLVM IR
with :func:`numba.extending.intrinsic`. One IR generator serves every backend; only the
register width and the shuffle instruction differ:

========  =====  ==========================================  ==========================
backend   width  shuffle                                     one shuffle covers
========  =====  ==========================================  ==========================
avx512    64 B   ``llvm.x86.avx512.pshuf.b.512`` (vpshufb)   2 pairs of sub-quantizers
avx2      32 B   ``llvm.x86.avx2.pshuf.b`` (vpshufb)         1 pair
neon      16 B   ``llvm.aarch64.neon.tbl1.v16i8`` (tbl)      half a pair (16 vectors)
========  =====  ==========================================  ==========================

Nothing here is compiled at import: the intrinsics emit IR only when a kernel that
calls them is compiled, and :mod:`numba_ivf.kernels.fastscan.fastscan` decides in Python which
backend may be compiled at all (an x86 intrinsic compiled on aarch64 aborts LLVM with
"Cannot select"; the typers below also refuse the wrong architecture).

Block layout (see ``fastscan.py``): ``packed[b, j, p]`` is one byte holding the codes of
sub-quantizers ``2j`` (low nibble) and ``2j+1`` (high nibble) of the vector stored at byte
``p`` of the block, where byte ``2k`` holds vector ``k`` and byte ``2k+1`` holds vector
``16+k`` (k = 0..15).

Widening without losing bits (FAISS's trick): a shuffle returns one uint8 per byte.
Viewed as uint16 lanes, lane ``k`` of a 32-byte chunk is ``e + 256*o`` with ``e`` the
lookup of vector ``k`` (even byte) and ``o`` that of vector ``16+k`` (odd byte). Two
uint16 accumulators are kept, ``A += lane`` and ``B += lane >> 8``; modulo 2**16,
``A = S_even + 256*S_odd`` and ``B = S_odd``, so ``S_even = A - (B << 8)`` exactly
(mod 2**16, the same wrap-around as the portable kernel's uint16 sums). The byte order
above makes ``S_even`` the sums of vectors 0..15 and ``S_odd`` those of vectors 16..31,
so both are stored with plain vector stores and no cross-lane shuffle is needed.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)

_IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_IS_ARM64 = platform.machine().lower() in ("aarch64", "arm64")

# Shuffle intrinsic per register width in bytes, per architecture.
_X86_SHUFFLES = {32: "llvm.x86.avx2.pshuf.b", 64: "llvm.x86.avx512.pshuf.b.512"}
_NEON_SHUFFLES = {16: "llvm.aarch64.neon.tbl1.v16i8"}


def _vec(elem, n):
    return ir.VectorType(elem, n)


def _splat(elem, n, value):
    return ir.Constant(_vec(elem, n), [ir.Constant(elem, value)] * n)


def _load_vec(builder, ptr_i8, offset, nbytes):
    """Unaligned load of ``nbytes`` bytes at ``ptr_i8 + offset`` as <nbytes x i8>."""
    vt = _vec(_I8, nbytes)
    p = builder.gep(ptr_i8, [offset], source_etype=_I8)
    p = builder.bitcast(p, vt.as_pointer())
    return builder.load(p, align=1, typ=vt)


def _shuffle(builder, table, index, shuffles):
    """Per-16-byte-lane table lookup: ``table[lane][index & 15]`` for every byte."""
    width = table.type.count
    vt = _vec(_I8, width)
    fnty = ir.FunctionType(vt, [vt, vt])
    fn = cgutils.get_or_insert_function(builder.module, fnty, shuffles[width])
    return builder.call(fn, [table, index])


def _concat(builder, parts):
    """Concatenate equal-width vectors (a power-of-two count) with shufflevector."""
    while len(parts) > 1:
        n = parts[0].type.count
        mask = ir.Constant(_vec(_I32, 2 * n), [ir.Constant(_I32, i) for i in range(2 * n)])
        parts = [builder.shuffle_vector(parts[i], parts[i + 1], mask)
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _halves(builder, v):
    n = v.type.count // 2
    lo = ir.Constant(_vec(_I32, n), [ir.Constant(_I32, i) for i in range(n)])
    hi = ir.Constant(_vec(_I32, n), [ir.Constant(_I32, n + i) for i in range(n)])
    return (builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), lo),
            builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), hi))


def _tables(builder, lut_data, lut_row_stride, first_byte, width):
    """Lookup tables for the ``width`` code bytes starting at byte ``first_byte`` of a block.

    Each 16-byte lane of the shuffle needs the LUT row of the pair its bytes belong to:
    lane ``l`` covers block bytes ``first_byte + 16 l``, i.e. pair ``(first_byte+16 l)//32``,
    whose low nibbles index row ``2*pair`` and high nibbles row ``2*pair + 1``.
    ``first_byte`` is an IR value; the lane offsets are compile-time constants.
    """
    pair0 = builder.udiv(first_byte, ir.Constant(first_byte.type, 32))
    lo_rows, hi_rows = [], []
    cache = {}
    for lane in range(width // 16):
        dpair = (16 * lane) // 32   # first_byte is a multiple of 32 whenever width > 16
        if dpair not in cache:
            pair = builder.add(pair0, ir.Constant(first_byte.type, dpair))
            row_lo = builder.mul(builder.mul(pair, ir.Constant(pair.type, 2)), lut_row_stride)
            row_hi = builder.add(row_lo, lut_row_stride)
            cache[dpair] = (_load_vec(builder, lut_data, row_lo, 16),
                            _load_vec(builder, lut_data, row_hi, 16))
        lo_rows.append(cache[dpair][0])
        hi_rows.append(cache[dpair][1])
    return _concat(builder, lo_rows), _concat(builder, hi_rows)


def _emit_block(context, builder, sig, args, width, shuffles, tail_width=None,
                tail_shuffles=None):
    """Emit the block kernel body; returns the uint32 lane mask ``sum <= t``.

    Writes ``out[0:32]`` (uint16 sums of the 32 vectors of block ``b``). ``width`` is the
    shuffle register width in bytes (16, 32 or 64); a 64-byte kernel covers two pairs per
    step and finishes an odd pair count with one ``tail_width``-byte step.
    """
    packed_t, _, lut_t, out_t, _ = sig.args
    packed = context.make_array(packed_t)(context, builder, args[0])
    lut = context.make_array(lut_t)(context, builder, args[2])
    out = context.make_array(out_t)(context, builder, args[3])
    b, thr = args[1], args[4]
    intp = context.get_value_type(types.intp)

    pshape = cgutils.unpack_tuple(builder, packed.shape, 3)
    pstrides = cgutils.unpack_tuple(builder, packed.strides, 3)
    lstrides = cgutils.unpack_tuple(builder, lut.strides, 2)
    m2 = pshape[1]
    block = builder.gep(packed.data, [builder.mul(b, pstrides[0])], source_etype=_I8)
    lut_data = builder.bitcast(lut.data, _I8.as_pointer())
    row_stride = lstrides[0]

    nbytes = builder.mul(m2, ir.Constant(intp, 32))     # code bytes in this block
    low4 = _splat(_I8, width, 0x0F)

    # Accumulators: 32 code bytes = 16 uint16 lanes per "half-pair slot". A 16-byte
    # kernel walks each pair in two slots (vectors k and 16+k of lanes 0..7, then 8..15),
    # kept in separate accumulators because they hold different vectors.
    nslots = max(1, 32 // width)
    lanes = width // 2
    zero16 = ir.Constant(_vec(_I16, lanes), None)
    acc_a = [cgutils.alloca_once_value(builder, zero16) for _ in range(nslots)]
    acc_b = [cgutils.alloca_once_value(builder, zero16) for _ in range(nslots)]

    def step(first_byte, w, shuf, slot):
        codes = _load_vec(builder, block, first_byte, w)
        lo = builder.and_(codes, _splat(_I8, w, 0x0F) if w != width else low4)
        hi = builder.lshr(codes, _splat(_I8, w, 4))
        t_lo, t_hi = _tables(builder, lut_data, row_stride, first_byte, w)
        r_lo = builder.bitcast(_shuffle(builder, t_lo, lo, shuf), _vec(_I16, w // 2))
        r_hi = builder.bitcast(_shuffle(builder, t_hi, hi, shuf), _vec(_I16, w // 2))
        eight = _splat(_I16, w // 2, 8)
        s = builder.add(r_lo, r_hi)
        o = builder.add(builder.lshr(r_lo, eight), builder.lshr(r_hi, eight))
        if w == width:
            builder.store(builder.add(builder.load(acc_a[slot]), s), acc_a[slot])
            builder.store(builder.add(builder.load(acc_b[slot]), o), acc_b[slot])
        else:   # tail of a 64-byte kernel: add into the low half of the accumulator
            pad = ir.Constant(_vec(_I32, width // 2),
                              [ir.Constant(_I32, i) for i in range(w // 2)]
                              + [ir.Constant(_I32, w // 2)] * (width // 2 - w // 2))
            zero_t = ir.Constant(_vec(_I16, w // 2), None)
            s = builder.shuffle_vector(s, zero_t, pad)
            o = builder.shuffle_vector(o, zero_t, pad)
            builder.store(builder.add(builder.load(acc_a[0]), s), acc_a[0])
            builder.store(builder.add(builder.load(acc_b[0]), o), acc_b[0])

    stride = ir.Constant(intp, width * nslots)   # bytes consumed per loop iteration
    if width == 64:
        full = builder.mul(builder.udiv(m2, ir.Constant(intp, 2)), ir.Constant(intp, 64))
    else:
        full = nbytes
    with cgutils.for_range_slice(builder, ir.Constant(intp, 0), full, stride,
                                 intp=intp) as (pos, _):
        for slot in range(nslots):
            first = builder.add(pos, ir.Constant(intp, slot * width))
            step(first, width, shuffles, slot)
    if width == 64:
        has_tail = builder.icmp_unsigned("!=", full, nbytes)
        with builder.if_then(has_tail, likely=False):
            step(full, tail_width, tail_shuffles, 0)

    # Reduce to one 16-lane (A, B) pair per slot, then S_even = A - (B << 8), S_odd = B.
    res = []
    for slot in range(nslots):
        a = builder.load(acc_a[slot])
        bb = builder.load(acc_b[slot])
        if width == 64:   # both 32-byte halves hold the same 32 vectors
            a0, a1 = _halves(builder, a)
            b0, b1 = _halves(builder, bb)
            a, bb = builder.add(a0, a1), builder.add(b0, b1)
        res.append((a, bb))
    if nslots == 2:       # 16-byte kernel: slot 0 = u16 lanes 0..7, slot 1 = lanes 8..15
        a = _concat(builder, [res[0][0], res[1][0]])
        bb = _concat(builder, [res[0][1], res[1][1]])
    else:
        a, bb = res[0]
    even = builder.sub(a, builder.shl(bb, _splat(_I16, 16, 8)))   # vectors 0..15
    odd = bb                                                       # vectors 16..31
    out16 = builder.bitcast(out.data, _vec(_I16, 16).as_pointer())
    builder.store(even, out16, align=1)
    builder.store(odd, builder.gep(out16, [ir.Constant(intp, 1)],
                                   source_etype=_vec(_I16, 16)), align=1)

    # Lane mask in the SIMD domain: compare, then movemask (bitcast <32 x i1> -> i32).
    tv = builder.insert_element(ir.Constant(_vec(_I16, 16), ir.Undefined), thr,
                                ir.Constant(_I32, 0))
    tv = builder.shuffle_vector(tv, ir.Constant(_vec(_I16, 16), ir.Undefined),
                                ir.Constant(_vec(_I32, 16), [ir.Constant(_I32, 0)] * 16))
    below = _concat(builder, [builder.icmp_unsigned("<=", even, tv),
                              builder.icmp_unsigned("<=", odd, tv)])
    return builder.bitcast(below, _I32)


def _check_types(name, packed, b, lut, out, thr):
    # Layout "A" is accepted: the contiguity the IR relies on (pair stride 32, byte and
    # LUT column stride 1, out stride 2) is checked at run time by fastscan's callers.
    ok = (isinstance(packed, types.Array) and packed.ndim == 3
          and packed.dtype == types.uint8
          and isinstance(lut, types.Array) and lut.ndim == 2
          and lut.dtype == types.uint8
          and isinstance(out, types.Array) and out.ndim == 1 and out.dtype == types.uint16
          and isinstance(b, types.Integer) and isinstance(thr, types.Integer))
    if not ok:
        raise TypingError(f"{name} expects (uint8 3-D packed, integer b, uint8 2-D lut_u8, "
                          f"uint16 1-D out, integer t); got "
                          f"({packed}, {b}, {lut}, {out}, {thr}).")


def _make_intrinsic(name, arch_ok, width, shuffles, tail_width=None, tail_shuffles=None):
    def typer(typingctx, packed, b, lut, out, thr):
        if not arch_ok:
            # Refuse at typing time: emitting the intrinsic on the wrong architecture
            # would abort the process inside LLVM instead of raising.
            raise TypingError(f"{name} needs {'x86-64' if 'neon' not in name else 'aarch64'}"
                              f"; this machine is {platform.machine()}.")
        _check_types(name, packed, b, lut, out, thr)
        sig = types.uint32(packed, types.intp, lut, out, types.uint16)

        def codegen(context, builder, signature, args):
            return _emit_block(context, builder, signature, args, width, shuffles,
                               tail_width, tail_shuffles)
        return sig, codegen
    typer.__name__ = name
    return intrinsic(typer)


# block_<backend>(packed, b, lut_u8, out, t) -> uint32: writes the 32 uint16 sums of block
# b into out[0:32] and returns the mask of lanes with sum <= t (bit i <-> out[i]).
block_avx512 = _make_intrinsic("block_avx512", _IS_X86, 64, _X86_SHUFFLES, 32, _X86_SHUFFLES)
block_avx2 = _make_intrinsic("block_avx2", _IS_X86, 32, _X86_SHUFFLES)
block_neon = _make_intrinsic("block_neon", _IS_ARM64, 16, _NEON_SHUFFLES)
