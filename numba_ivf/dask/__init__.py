"""An IVF index sharded by inverted list across a Dask cluster (optional extra ``dask``).

``ShardedIVF(template, client)`` trains the quantizer once, deals the inverted lists to
shards held by the workers, routes each query to the shards owning its probed lists and
merges their top-k: results equal the single index's. See ``sharded.py`` and
``docs/scaling.md``.
"""

from __future__ import annotations

try:
    import distributed  # noqa: F401
except ImportError as exc:      # pragma: no cover - the message is the point
    raise ImportError("numba_ivf.dask needs dask and distributed: pip install "
                      "'numba_ivf[dask]'.") from exc

from ._worker import ShardMissingError
from .sharded import MANIFEST, ShardedIVF, ShardLostError, balance

__all__ = ["ShardedIVF", "ShardLostError", "ShardMissingError", "MANIFEST", "balance"]
