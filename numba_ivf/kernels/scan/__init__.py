"""Inverted-list scans: IVF-Flat (and its LLVM-IR row keys), 8-bit PQ (ADC), exact re-ranking, range search, the fused one-query IVF-PQ kernels."""
