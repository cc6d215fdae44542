"""RaBitQ codes (Gao & Long, SIGMOD 2024; extended bits, SIGMOD 2025): encoding of
rotated residuals and the gated IVF scan (1-bit stage by fast-scan, extra bits for the
candidates whose error bound can still beat the k-th result)."""
