"""Recall/QPS plot (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_recall_qps", "pareto_front"]

# One hue per library, one shade per index, so curves of a library stay together.
_COLORS = {
    "numba_ivf": {"ivfflat": "#1f77b4", "ivfpq": "#0b3d91", "ivfpq4-refine": "#6baed6"},
    "faiss": {"ivfflat": "#ff7f0e", "ivfpq": "#a34700", "ivfpq4-refine": "#fdb863"},
    "hnswlib": {"hnsw": "#2ca02c"},
    "scann": {"tree-ah-reorder": "#d62728"},
}
# ivfrabitq-<B>b: one shade per bits value, taken in order of the bits in the run
# (purples for numba_ivf, browns for FAISS), so 4b and 5b curves differ.
_RABITQ_SHADES = {"numba_ivf": ("#6a3d9a", "#9e7bc4", "#3f007d", "#cab2d6"),
                  "faiss": ("#8c510a", "#c7a15a", "#543005", "#dfc27d")}
_MARKERS = {"ivfflat": "o", "ivfpq": "s", "ivfpq4-refine": "^", "ivfrabitq": "P",
            "hnsw": "D", "tree-ah-reorder": "*"}
_LINESTYLES = {"batch": "-", "single": "--"}


def _style(lib: str, index: str, rabitq_rank: dict) -> tuple:
    """(color, marker) of a curve; ``rabitq_rank`` maps an ivfrabitq label to its rank
    among the ivfrabitq labels of the run."""
    if index.startswith("ivfrabitq"):
        shades = _RABITQ_SHADES.get(lib, ("tab:gray",))
        return shades[rabitq_rank[index] % len(shades)], _MARKERS["ivfrabitq"]
    return _COLORS.get(lib, {}).get(index, "tab:gray"), _MARKERS.get(index, "x")


def pareto_front(points: list[dict]) -> list[dict]:
    """Points not beaten in both recall and QPS by another point, by ascending recall."""
    front = []
    best_qps = -1.0
    for p in sorted(points, key=lambda p: (-p["recall"], -p["qps"])):
        if p["qps"] > best_qps:
            front.append(p)
            best_qps = p["qps"]
    return front[::-1]


def plot_recall_qps(results: dict, path) -> bool:
    """Draw recall@k (x) against QPS (y, log scale), one curve per library/index/mode.

    Each curve is the Pareto front of its sweep (the best QPS reachable at each recall);
    dominated points are drawn faintly. Returns True when the file was written.

    Raises
    ------
    ImportError
        matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("matplotlib is not installed; `pip install matplotlib` (or "
                          "numba_ivf[bench]) to get recall_qps.png. results.json and "
                          "results.md were written.") from None
    ds = results["dataset"]
    threads = results["machine"].get("threads")
    curves: dict = {}
    for p in results["points"]:
        if p["qps"] > 0:
            curves.setdefault((p["library"], p["index"], p["mode"]), []).append(p)
    rabitq = sorted({ix for _, ix, _ in curves if ix.startswith("ivfrabitq")},
                    key=lambda ix: (len(ix), ix))  # 4b before 10b
    rabitq_rank = {ix: i for i, ix in enumerate(rabitq)}
    fig, ax = plt.subplots(figsize=(10.5 if len(curves) > 8 else 8, 5.5), dpi=110)
    try:
        for (lib, index, mode), pts in sorted(curves.items()):
            color, marker = _style(lib, index, rabitq_rank)
            ax.scatter([p["recall"] for p in pts], [p["qps"] for p in pts], s=10,
                       color=color, marker=marker, alpha=0.25, linewidths=0)
            front = pareto_front(pts)
            ax.plot([p["recall"] for p in front], [p["qps"] for p in front],
                    linestyle=_LINESTYLES.get(mode, ":"), marker=marker, color=color,
                    markersize=4, label=f"{lib} {index} ({mode})")
        if curves:
            ax.set_yscale("log")
            if len(curves) > 8:  # a dozen runners x two modes would cover the curves
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            else:
                ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no results (every library was skipped)",
                    ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"recall@{ds['k']}")
        ax.set_ylabel("queries per second (log scale)")
        ax.set_title(f"{ds['name']} (n={ds['n']:,}, d={ds['d']}, {ds['metric']}), "
                     f"{threads} thread{'s' if threads != 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(Path(path), bbox_inches="tight")  # keeps an outside legend
    finally:
        plt.close(fig)
    return True
