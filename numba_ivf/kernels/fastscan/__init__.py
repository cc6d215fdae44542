"""4-bit PQ fast-scan: packed blocks of 32 codes, quantized tables, the block accumulate and the list scans over it."""
