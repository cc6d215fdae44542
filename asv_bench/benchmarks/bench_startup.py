"""Start-up costs in a fresh process: import, and first call with a warm on-disk cache.

``timeraw_*`` code runs in a new interpreter each time. Each benchmark's ``setup``
first makes the same calls in the runner's process, which fills Numba's on-disk cache,
so the timed code measures import + cache load + first call, not compilation.
"""

import numpy as np

ASSIGN = ("import numpy as np, numba_ivf\n"
          "x = np.ones((64, 8), np.float32)\n"
          "numba_ivf.assign_nearest(x, x[:4])\n")
KMEANS = ("import numpy as np, numba_ivf\n"
          "x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)\n"
          "numba_ivf.KMeans(4, n_iter=2).fit(x)\n")


def _warm(code):
    def setup():
        exec(code, {"np": np})
    return setup


def timeraw_import():
    return "import numba_ivf"


def timeraw_import_and_kernels():
    return "import numba_ivf.kernels.assign.assign, numba_ivf.kmeans"


def timeraw_first_assign_warm_cache():
    return ASSIGN


timeraw_first_assign_warm_cache.setup = _warm(ASSIGN)


def timeraw_first_kmeans_warm_cache():
    return KMEANS


timeraw_first_kmeans_warm_cache.setup = _warm(KMEANS)
