"""Shared pieces of the asv suite: the profile switch and seeded data generators.

NUMBA_IVF_ASV_PROFILE=quick (the default) keeps every benchmark small enough that
`asv run --quick` finishes in a few minutes on 2 cores; =full uses the issue-sized
shapes (n=50,000, d=128, k=512 and the real datasets' sizes).
"""

import os

import numpy as np

PROFILE = os.environ.get("NUMBA_IVF_ASV_PROFILE", "quick")
QUICK = PROFILE != "full"


def clustered(n, d, n_centres=64, seed=0):
    """Gaussian blobs, float32 (n, d): a stand-in for real embeddings' cluster structure."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, d)).astype(np.float32) * 2.0
    return centres[rng.integers(0, n_centres, size=n)] + rng.standard_normal(
        (n, d), dtype=np.float32)
