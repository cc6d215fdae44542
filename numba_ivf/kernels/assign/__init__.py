"""Coarse assignment and k-means: the tiled dot-plus-argmax (and its LLVM-IR register block), the centroid update."""
