import os

import numpy as np
import pytest

# Hypothesis: few examples in CI (the JIT compile per new signature is the cost).
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=25, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=60, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def blobs():
    """Five well-separated Gaussian blobs in 8-d: (x float32 (1000, 8), centres (5, 8))."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((5, 8)) * 20.0
    labels = np.repeat(np.arange(5), 200)
    x = centres[labels] + rng.standard_normal((1000, 8))
    return x.astype(np.float32), centres.astype(np.float32)
