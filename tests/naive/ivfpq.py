"""Oracles for IVF-PQ search: plain loops, float64 (except where the kernel's float32
table and key formulas must be replayed bit for bit), exact tie order (key, then id)."""

import math

import numpy as np

from tests.naive.fastscan import quantize_lut
from tests.naive.pq import decode


def topk(keys_ids, k):
    """Best k of a list of (key, id) pairs, ascending key then id; padded with (inf, -1)."""
    best = sorted(keys_ids)[:k]
    return best + [(np.inf, -1)] * (k - len(best))


def stored_codes(index):
    """{id: (list, codes (m,))} read back from the index's storage."""
    L = index._lists
    out = {}
    for lst in range(index.nlist):
        for o in range(int(L.sizes[lst])):
            row = int(L.starts[lst]) + o
            out[int(L.ids[row])] = (lst, L.codes_of_row("codes", row, index.m))
    return out


def adc_search(index, q, k):
    """Exhaustive ADC (every list): key of id = distance of q to centroid + decoded code
    (L2: squared distance; ip/cosine: negated inner product). Returns FAISS-style D, I."""
    cb = index.pq.codebooks
    cent = np.asarray(index.centroids, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if index.metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    codes = stored_codes(index)
    D = np.zeros((len(q), k))
    I = np.zeros((len(q), k), dtype=np.int64)
    for qi in range(len(q)):
        pairs = []
        for id_, (lst, c) in codes.items():
            y = decode(c[None].astype(np.int64), cb)[0]
            if index.by_residual:
                y = y + cent[lst]
            if index.metric == "l2":
                key = float(((q[qi] - y) ** 2).sum())
            else:
                key = -float(q[qi] @ y)
            pairs.append((key, id_))
        for j, (key, id_) in enumerate(topk(pairs, k)):
            D[qi, j] = key if index.metric == "l2" else -key
            I[qi, j] = id_
    return D, I


def shared_scale_tables(luts):
    """Quantize the float32 pair tables (m, 16) of one query's probed lists with one
    shared scale (the kernel's L2-by-residual scheme): per-table row minima, row spans
    r = hi - lo in float64, scale = min(255 / max r, (65535 - 0.50005 m) / max_table
    sum r) rounded down to a float32 (1 if every span is 0), q = floor((x - lo) * scale
    + 0.5) with every operation rounded to float32, bias = sum of minima (float64).
    Returns ([lut_u8], [bias], scale)."""
    m = luts[0].shape[0] if luts else 1
    rmax, rsum_max, mins = 0.0, 0.0, []
    for lut in luts:
        lo = [min(float(v) for v in lut[j]) for j in range(m)]
        rsum = 0.0
        for j in range(m):
            r = max(float(v) for v in lut[j]) - lo[j]
            rmax = max(rmax, r)
            rsum += r
        rsum_max = max(rsum_max, rsum)
        mins.append(lo)
    scale = 1.0
    if rsum_max > 0:
        scale = min(255.0 / rmax, (65535 - 0.50005 * m) / rsum_max,
                    float(np.finfo(np.float32).max))
        s32 = np.float32(scale)        # the largest float32 not above it
        scale = float(s32 if float(s32) <= scale else np.nextafter(s32, np.float32(0)))
    out, biases = [], []
    f32, s32 = np.float32, np.float32(scale)
    for lut, lo in zip(luts, mins):
        u8 = np.zeros((2 * ((m + 1) // 2), 16), dtype=np.uint8)
        for j in range(m):
            for c in range(16):
                x = f32(f32(f32(lut[j, c]) - f32(lo[j])) * s32) + f32(0.5)
                u8[j, c] = int(math.floor(x))
        bias = 0.0
        for v in lo:
            bias += v
        out.append(u8)
        biases.append(bias)
    return out, biases, scale


def fastscan_search(index, qn, probes, base, qluts, term, use_term, k):
    """Quantized fast-scan search replayed with plain loops from the kernel's own float32
    tables. L2 by residual (use_term): pair tables qlut + term[list] (float32 add), all
    of a query's non-empty probed lists quantized with one shared scale
    (``shared_scale_tables``); otherwise the query's one table qlut with the reference
    per-table quantization. Exact integer sums of the stored codes,
    key = float32(base + (bias + sum / scale)).
    Returns minimised keys (nq, k) float32 and ids (nq, k) (-1 padding)."""
    codes = stored_codes(index)
    by_list = {}
    for id_, (lst, c) in codes.items():
        by_list.setdefault(lst, []).append((id_, c))
    keys = np.zeros((len(qn), k), dtype=np.float32)
    ids = np.zeros((len(qn), k), dtype=np.int64)
    for qi in range(len(qn)):
        live = [(p, int(lst)) for p, lst in enumerate(probes[qi])
                if lst >= 0 and int(lst) in by_list]
        if use_term:
            u8s, biases, scale = shared_scale_tables([qluts[qi] + term[lst]
                                                      for _, lst in live])
        else:
            u8, bias, scale = quantize_lut(qluts[qi])
            u8s, biases = [u8] * len(live), [bias] * len(live)
        pairs = []
        for (p, lst), lut_u8, bias in zip(live, u8s, biases):
            for id_, c in by_list[lst]:
                s = sum(int(lut_u8[j, int(c[j])]) for j in range(len(c)))
                key = np.float32(float(base[qi, p]) + (bias + s / scale))
                pairs.append((key, id_))
        for j, (key, id_) in enumerate(topk(pairs, k)):
            keys[qi, j] = key
            ids[qi, j] = id_
    return keys, ids
