"""KMeans.fit (25 iterations, no subsampling) per assignment variant, and its memory."""

import warnings

from ._common import QUICK, clustered

N, D, K = (10000, 64, 128) if QUICK else (50000, 128, 512)


class TimeKMeansFit:
    params = ["monolithic", "tiled", "screened"]
    param_names = ["variant"]
    timeout = 600

    def setup(self, variant):
        import numba_ivf
        self.x = clustered(N, D, n_centres=K, seed=3)
        numba_ivf.KMeans(K, n_iter=1, variant=variant, max_points_per_centroid=None).fit(self.x)
        self.cls = numba_ivf.KMeans

    def time_fit(self, variant):
        self.cls(K, n_iter=25, variant=variant, max_points_per_centroid=None).fit(self.x)

    def peakmem_fit(self, variant):
        self.cls(K, n_iter=25, variant=variant, max_points_per_centroid=None).fit(self.x)

    def track_objective(self, variant):
        km = self.cls(K, n_iter=25, variant=variant, max_points_per_centroid=None).fit(self.x)
        return km.objective[-1] / len(self.x)

    track_objective.unit = "mean squared distance"


class TimeKMeansFaiss:
    """faiss.Kmeans on the same data: the peer the fit time is read against."""

    timeout = 600

    def setup(self):
        try:
            import faiss
        except ImportError:
            raise NotImplementedError("faiss-cpu is not installed")
        self.faiss = faiss
        self.x = clustered(N, D, n_centres=K, seed=3)

    def time_faiss_fit(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.faiss.Kmeans(D, K, niter=25, max_points_per_centroid=10**9).train(self.x)
