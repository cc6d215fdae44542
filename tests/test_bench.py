import io
import json
import sys

import numpy as np
import pytest

from numba_ivf.bench import harness, timing
from numba_ivf.bench.cli import build_parser, main
from numba_ivf.bench.harness import BenchConfig, recall_at_k, run_benchmark
from numba_ivf.bench.plot import pareto_front
from numba_ivf.bench.progress import Progress
from numba_ivf.datasets import ground_truth, make_synthetic

NLIST = 16


@pytest.fixture(scope="session")
def tiny():
    """n=2000, d=16 clustered data with 40 queries and exact top-10."""
    ds = make_synthetic(n=2000, nq=40, d=16, n_clusters=10, seed=21)
    _, ds.neighbors = ground_truth(ds.base, ds.queries, 10, ds.metric)
    return ds


def _config(out, **kw):
    base = dict(k=10, nlist=NLIST, nprobe=(1, 4, NLIST), k_factor=(2,), ef=(16, 64),
                pq_m=4, repeats=1, single_queries=10, out=str(out), quiet=True,
                modes=("batch", "single"))
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="session")
def no_repeat_floor():
    # One pass per timed repeat: the tests check outputs, not speed.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timing, "BENCH_MIN_REPEAT_S", 0.0)
        yield


@pytest.fixture(scope="session")
def faiss_hnsw_run(tiny, tmp_path_factory, no_repeat_floor):
    pytest.importorskip("faiss")
    pytest.importorskip("hnswlib")
    out = tmp_path_factory.mktemp("bench")
    cfg = _config(out, libs=("faiss", "hnswlib"),
                  indexes=("ivfflat", "ivfpq", "ivfpq4-refine"))
    return run_benchmark(cfg, dataset=tiny), out


# -- results.json schema --------------------------------------------------------------

POINT_KEYS = {"library": str, "index": str, "params": dict, "build_params": dict,
              "mode": str, "k": int, "recall": float, "qps": float, "search_s": float,
              "n_queries": int, "repeats": int, "threads": int}
OPTIONAL_FLOAT = ("train_s", "add_s", "build_s", "compile_s")


def test_results_json_schema(faiss_hnsw_run, tiny):
    results, out = faiss_hnsw_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == harness.SCHEMA_VERSION
    for key in ("command", "machine", "dataset", "config", "builds", "points", "notes",
                "skipped", "outputs"):
        assert key in on_disk, key
    m = on_disk["machine"]
    for key in ("cpu_model", "cpu_count", "threads", "python", "numpy", "numba",
                "faiss", "hnswlib", "blas", "date", "platform"):
        assert key in m, key
    assert isinstance(m["threads"], int) and m["threads"] >= 1
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert m["faiss"] and m["hnswlib"]
    assert on_disk["dataset"] == {"name": tiny.name, "source": "synthetic", "n": 2000,
                                  "d": 16, "n_queries": 40, "metric": "l2", "k": 10,
                                  "ground_truth": "file"}
    pts = on_disk["points"]
    combos = {(p["library"], p["index"]) for p in pts}
    assert combos == {("faiss", "ivfflat"), ("faiss", "ivfpq"),
                      ("faiss", "ivfpq4-refine"), ("hnswlib", "hnsw")}
    # 3 nprobe x 2 modes per IVF index (one k_factor), 2 ef x 2 modes for HNSW.
    assert len(pts) == 3 * 6 + 4
    for p in pts:
        for key, typ in POINT_KEYS.items():
            assert isinstance(p[key], typ), (key, p[key])
        for key in OPTIONAL_FLOAT:
            assert p[key] is None or isinstance(p[key], float), (key, p[key])
        assert p["memory_bytes"] is None or isinstance(p["memory_bytes"], int)
        assert p["mode"] in ("batch", "single")
        assert 0.0 <= p["recall"] <= 1.0 and p["qps"] > 0
        assert p["n_queries"] == (40 if p["mode"] == "batch" else 10)
    for b in on_disk["builds"]:
        assert b["error"] is None
        assert b["train_s"] >= 0 and b["add_s"] >= 0
        assert isinstance(b["memory_bytes"], int) and b["memory_bytes"] > 0
    assert on_disk["outputs"] == {"plot": "recall_qps.png", "json": "results.json",
                                  "markdown": "results.md"}
    assert on_disk == json.loads(json.dumps(results, default=harness._json_default))


def test_recall_values_are_meaningful(faiss_hnsw_run):
    results, _ = faiss_hnsw_run
    by = {(p["library"], p["index"], p["mode"], tuple(sorted(p["params"].items()))): p
          for p in results["points"]}
    # Probing every list of an IVF-Flat index is exhaustive search: recall 1.
    assert by[("faiss", "ivfflat", "batch", (("nprobe", NLIST),))]["recall"] == 1.0
    # Recall grows with nprobe.
    r = [by[("faiss", "ivfflat", "batch", (("nprobe", p),))]["recall"]
         for p in (1, 4, NLIST)]
    assert r[0] < r[1] <= r[2]
    assert by[("hnswlib", "hnsw", "batch", (("ef", 64),))]["recall"] > 0.9


def test_markdown_and_png(faiss_hnsw_run):
    results, out = faiss_hnsw_run
    md = (out / "results.md").read_text()
    assert "| mode | index | params | library | recall@10 | QPS | ms/query |" in md
    assert "## Best QPS at a recall target" in md
    rows = [line for line in md.splitlines()
            if line.startswith("| batch |") or line.startswith("| single |")]
    assert len(rows) == len(results["points"])
    # faiss and hnswlib rows for the same index family sit side by side in one table.
    assert any("| faiss |" in r for r in rows) and any("| hnswlib |" in r for r in rows)
    png = (out / "recall_qps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_harness_without_faiss_and_hnswlib(tiny, tmp_path, monkeypatch, no_repeat_floor):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    monkeypatch.setitem(sys.modules, "hnswlib", None)
    results = run_benchmark(_config(tmp_path, libs=("faiss", "hnswlib")), dataset=tiny)
    assert results["points"] == []
    assert {s["library"] for s in results["skipped"]} == {"faiss", "hnswlib"}
    assert any("skipping faiss ivfflat: faiss is not installed" in n
               for n in results["notes"])
    assert results["machine"]["threads"] >= 1
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["points"] == [] and data["skipped"]
    assert "no points: every library was skipped" in (tmp_path / "results.md").read_text()
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot is optional; test_harness_without_matplotlib covers it
        assert any("matplotlib is not installed" in n for n in results["notes"])
    else:
        assert (tmp_path / "recall_qps.png").stat().st_size > 0


def test_harness_without_faiss_keeps_hnswlib(tiny, tmp_path, monkeypatch,
                                             no_repeat_floor):
    pytest.importorskip("hnswlib")
    monkeypatch.setitem(sys.modules, "faiss", None)
    results = run_benchmark(_config(tmp_path, libs=("faiss", "hnswlib"), ef=(32,),
                                    modes=("batch",)), dataset=tiny)
    assert [p["library"] for p in results["points"]] == ["hnswlib"]
    assert {s["library"] for s in results["skipped"]} == {"faiss"}


def test_harness_without_matplotlib(tiny, tmp_path, monkeypatch, no_repeat_floor):
    pytest.importorskip("hnswlib")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    results = run_benchmark(_config(tmp_path, libs=("hnswlib",), ef=(32,),
                                    modes=("batch",)), dataset=tiny)
    assert not (tmp_path / "recall_qps.png").exists()
    assert any("matplotlib is not installed" in n for n in results["notes"])
    assert (tmp_path / "results.json").exists() and (tmp_path / "results.md").exists()
    assert "plot" not in results["outputs"]


def test_cosine_gives_other_libraries_normalised_ip(tmp_path, no_repeat_floor):
    pytest.importorskip("faiss")
    ds = make_synthetic(n=1000, nq=20, d=8, n_clusters=5, metric="cosine", seed=3)
    ds.base *= np.linspace(0.1, 10, 1000, dtype=np.float32)[:, None]  # norms vary
    results = run_benchmark(_config(tmp_path, libs=("faiss",), indexes=("ivfflat",),
                                    nprobe=(NLIST,), modes=("batch",)), dataset=ds)
    assert results["dataset"]["metric"] == "cosine"
    assert results["dataset"]["ground_truth"] == "computed"
    # Exhaustive IVF-Flat on normalised vectors with inner product = exact cosine.
    assert results["points"][0]["recall"] == 1.0


def test_numba_ivf_adapters(tiny, tmp_path, no_repeat_floor):
    """numba_ivf's indexes run where importable; otherwise they are skipped, noted."""
    results = run_benchmark(_config(tmp_path, libs=("numba_ivf",), nprobe=(2, NLIST),
                                    modes=("batch", "single")), dataset=tiny)
    done = {p["index"] for p in results["points"]}
    skipped = {s["index"] for s in results["skipped"]}
    assert done | skipped == {"ivfflat", "ivfpq", "ivfpq4-refine"}
    assert not done & skipped
    for s in results["skipped"]:
        assert any(s["index"] in n for n in results["notes"])
        # Only "not written yet" may skip; an exception inside a run is a failure.
        assert "is not importable" in s["reason"], (
            f"numba_ivf {s['index']} raised inside the harness: {s['reason']}")
    for p in results["points"]:
        assert p["library"] == "numba_ivf"
        if p["index"] == "ivfflat" and p["params"]["nprobe"] == NLIST:
            assert p["recall"] == 1.0
    if "ivfflat" in done:
        b = next(b for b in results["builds"] if b["index"] == "ivfflat")
        assert b["compile_s"] is not None and b["memory_bytes"] > 2000 * 16 * 4


# -- CLI ------------------------------------------------------------------------------

def test_cli_runs_and_records_command(tmp_path, capsys, no_repeat_floor):
    pytest.importorskip("hnswlib")
    rc = main(["--n", "1500", "--nq", "15", "--d", "8", "--libs", "hnswlib",
               "--ef", "16", "--repeats", "1", "--no-plot", "--quiet",
               "--out", str(tmp_path), "--threads", "1"])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["command"].startswith("numba-ivf bench --n 1500")
    assert data["dataset"]["ground_truth"] == "computed"
    assert data["machine"]["threads"] == 1
    assert len(data["points"]) == 1 and not (tmp_path / "recall_qps.png").exists()
    assert capsys.readouterr().err == ""


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--nprobe", "1,x"])
    assert exc.value.code == 2
    assert "--nprobe must be a comma-separated list of integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--libs", "faiss,annoy"])
    assert "--libs must be a comma-separated subset of numba_ivf,faiss,hnswlib" in \
        capsys.readouterr().err
    assert main(["--dataset", str(tmp_path / "missing"), "--quiet",
                 "--out", str(tmp_path / "o")]) == 1
    assert "missing: no such file or folder" in capsys.readouterr().err
    assert main(["--n", "300", "--nq", "5", "--d", "10", "--pq-m", "3", "--quiet",
                 "--out", str(tmp_path / "o")]) == 1
    assert "pq_m (--pq-m) must divide d=10" in capsys.readouterr().err


def test_cli_parser_defaults():
    args = build_parser().parse_args([])
    assert args.dataset == "synthetic" and args.k == 10 and args.mode == "batch"
    assert args.libs == ("numba_ivf", "faiss", "hnswlib")
    assert args.indexes == ("ivfflat", "ivfpq", "ivfpq4-refine")
    args = build_parser().parse_args(["--mode", "both", "--k-factor", "2,4",
                                      "--libs", "faiss,faiss"])
    assert args.k_factor == (2, 4) and args.libs == ("faiss",)


def test_resolve_defaults(tiny):
    ctx = harness._resolve(BenchConfig(), tiny)
    assert ctx["nlist"] == round(4 * np.sqrt(2000))  # 179
    assert ctx["nprobe"] == [1, 2, 4, 8, 16, 32, 64, 128, 179]
    assert ctx["ef"] == [16, 32, 64, 128, 256, 512]
    assert ctx["pq_m"] == 8 and 16 % ctx["pq_m"] == 0
    assert harness._default_pq_m(50) == 25 and harness._default_pq_m(784) == 56
    assert harness._default_pq_m(1) == 1 and harness._default_pq_m(13) == 1


# -- small pieces ---------------------------------------------------------------------

def test_recall_at_k():
    gt = np.array([[0, 1, 2], [3, 4, -1]])
    I = np.array([[0, 9, 2], [4, -1, -1]])
    assert recall_at_k(I, gt, 3) == pytest.approx(3 / 5)
    assert recall_at_k(I, gt, 1) == pytest.approx(1 / 2)  # row 1: 4 is not gt[1, 0]
    assert recall_at_k(gt, gt, 3) == 1.0
    with pytest.raises(ValueError, match=r"I has 1 rows but gt has 2"):
        recall_at_k(I[:1], gt, 3)


def test_pareto_front():
    pts = [{"recall": 0.5, "qps": 100.0}, {"recall": 0.6, "qps": 50.0},
           {"recall": 0.55, "qps": 40.0}, {"recall": 0.9, "qps": 10.0}]
    assert pareto_front(pts) == [pts[0], pts[1], pts[3]]


def test_progress_quiet_unless_tty_or_asked():
    s = io.StringIO()
    with Progress(3, "work", stream=s) as bar:  # StringIO is not a TTY: quiet
        bar.update(3)
    assert s.getvalue() == ""
    s = io.StringIO()
    with Progress(3, "work", stream=s, enabled=True) as bar:
        for _ in range(3):
            bar.update(postfix="x")
    text = s.getvalue()
    assert text.endswith("\n") and "work [" in text and "3/3" in text and " x" in text

    class Tty(io.StringIO):
        def isatty(self):
            return True

    t = Tty()
    with Progress(2, "tty", stream=t) as bar:
        bar.update(2)
    assert "2/2" in t.getvalue()
