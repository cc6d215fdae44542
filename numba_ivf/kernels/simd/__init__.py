"""Byte-shuffle intrinsics (AVX2 / AVX-512 vpshufb, NEON tbl) and shared LLVM-IR helpers."""
