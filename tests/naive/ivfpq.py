"""Oracles for IVF-PQ search: plain loops, float64 (except where the kernel's float32
table and key formulas must be replayed bit for bit), exact tie order (key, then id)."""

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


def fastscan_search(index, qn, probes, base, qluts, term, use_term, k):
    """Quantized fast-scan search replayed with plain loops from the kernel's own float32
    tables: per (query, list) table qlut (+ term[list]), reference quantization, exact
    integer sums of the stored codes, key = float32(base + (bias + sum / scale)).
    Returns minimised keys (nq, k) float32 and ids (nq, k) (-1 padding)."""
    codes = stored_codes(index)
    by_list = {}
    for id_, (lst, c) in codes.items():
        by_list.setdefault(lst, []).append((id_, c))
    keys = np.zeros((len(qn), k), dtype=np.float32)
    ids = np.zeros((len(qn), k), dtype=np.int64)
    for qi in range(len(qn)):
        pairs = []
        for p, lst in enumerate(probes[qi]):
            lut = qluts[qi] + term[lst] if use_term else qluts[qi]   # float32 add
            lut_u8, bias, scale = quantize_lut(lut)
            for id_, c in by_list.get(int(lst), []):
                s = sum(int(lut_u8[j, int(c[j])]) for j in range(len(c)))
                key = np.float32(float(base[qi, p]) + (bias + s / scale))
                pairs.append((key, id_))
        for j, (key, id_) in enumerate(topk(pairs, k)):
            keys[qi, j] = key
            ids[qi, j] = id_
    return keys, ids
