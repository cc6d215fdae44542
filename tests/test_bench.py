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
    rows = [line for line in md.split("## All points")[1].splitlines()
            if line.startswith("| batch |") or line.startswith("| single |")]
    assert len(rows) == len(results["points"])
    summary = md.split("## Best QPS at a recall target")[1].split("## Builds")[0]
    assert "| batch | ivfflat | faiss | " in summary and "(nprobe=" in summary
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
    assert done | skipped == {"ivfflat", "ivfpq", "ivfpq4-refine", "ivfrabitq-4b",
                              "ivfrabitq-5b"}
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


# -- ivfrabitq and ScaNN --------------------------------------------------------------

@pytest.fixture(scope="session")
def rabitq_scann_run(tmp_path_factory, no_repeat_floor):
    """--quick sweep of ivfrabitq (numba_ivf, and FAISS where importable) and ScaNN
    (where importable) on n=2000, d=32, 50 queries."""
    ds = make_synthetic(n=2000, nq=50, d=32, n_clusters=10, seed=7)
    _, ds.neighbors = ground_truth(ds.base, ds.queries, 10, ds.metric)
    libs = ("numba_ivf",) + tuple(lib for lib in ("faiss", "scann")
                                  if harness._try_import(lib) is not None)
    out = tmp_path_factory.mktemp("rabitq")
    cfg = BenchConfig(quick=True, libs=libs, indexes=("ivfrabitq",), repeats=1,
                      single_queries=10, modes=("batch", "single"), out=str(out),
                      quiet=True)
    return run_benchmark(cfg, dataset=ds), out


def _points(results, library, index):
    return [p for p in results["points"]
            if p["library"] == library and p["index"] == index]


def test_rabitq_numba_ivf(rabitq_scann_run):
    results, out = rabitq_scann_run
    assert not [s for s in results["skipped"] if s["library"] == "numba_ivf"]
    nprobe = results["config"]["resolved"]["nprobe"]
    assert nprobe == [1, 4, 16]  # --quick
    for bits in (4, 5):
        pts = _points(results, "numba_ivf", f"ivfrabitq-{bits}b")
        assert len(pts) == 3 * 2  # 3 nprobe x 2 modes
        assert all(0.0 <= p["recall"] <= 1.0 for p in pts)
        assert all(p["bytes_per_vector"] == 32 * bits // 8 + 24 for p in pts)
        top = [p for p in pts if p["params"]["nprobe"] == max(nprobe)]
        assert all(p["recall"] > 0.5 for p in top), top
        b = next(b for b in results["builds"] if b["index"] == f"ivfrabitq-{bits}b"
                 and b["library"] == "numba_ivf")
        assert b["build_params"] == {"nlist": 179, "bits": bits} and b["error"] is None
    md = (out / "results.md").read_text()
    assert "| memory | bytes/vector | error |" in md
    assert "| numba_ivf | ivfrabitq-4b | nlist=179 bits=4 |" in md
    assert "| batch | ivfrabitq-5b | numba_ivf | " in md  # the summary row


def test_rabitq_faiss(rabitq_scann_run):
    faiss = pytest.importorskip("faiss")
    results, _ = rabitq_scann_run
    for bits in (4, 5):
        pts = _points(results, "faiss", f"ivfrabitq-{bits}b")
        assert len(pts) == 6 and all(0.0 <= p["recall"] <= 1.0 for p in pts)
        inner = faiss.IndexIVFRaBitQFastScan(faiss.IndexFlatL2(32), 32, 179,
                                             faiss.METRIC_L2, 32, True, bits)
        assert pts[0]["bytes_per_vector"] == inner.code_size + 8
        assert max(p["recall"] for p in pts) > 0.5


def test_scann_runner(rabitq_scann_run):
    pytest.importorskip("scann")
    results, out = rabitq_scann_run
    pts = _points(results, "scann", "tree-ah-reorder")
    # --quick: nprobe 1,4,16 x re-ordered candidates 10 x (4, 16), in both modes.
    assert sorted({tuple(p["params"].values()) for p in pts}) == [
        (p, r) for p in (1, 4, 16) for r in (40, 160)]
    assert len(pts) == 12 and all(0.0 <= p["recall"] <= 1.0 for p in pts)
    by = {(p["mode"], tuple(p["params"].values())): p["recall"] for p in pts}
    assert by[("batch", (16, 160))] > 0.5
    assert by[("batch", (16, 160))] == pytest.approx(by[("single", (16, 160))], abs=0.2)
    b = next(b for b in results["builds"] if b["library"] == "scann")
    assert b["build_params"]["distance"] == "squared_l2"
    assert "anisotropic_threshold" not in b["build_params"]  # L2: left to ScaNN (NaN)
    assert b["memory_bytes"] > 2000 * 32 * 4  # keeps the float rows for re-ordering
    threads = results["machine"]["threads"]
    note = next(n for n in results["notes"] if n.startswith("scann: "))
    assert f"set_n_training_threads({threads})" in note
    md = (out / "results.md").read_text()
    assert f"- {note}" in md and "| scann | tree-ah-reorder |" in md


def test_plot_styles_are_distinct():
    from numba_ivf.bench.plot import _style
    rank = {"ivfrabitq-4b": 0, "ivfrabitq-5b": 1}
    labels = [(lib, ix) for lib in ("numba_ivf", "faiss")
              for ix in ("ivfflat", "ivfpq", "ivfpq4-refine", "ivfrabitq-4b",
                         "ivfrabitq-5b")] + [("hnswlib", "hnsw"),
                                             ("scann", "tree-ah-reorder")]
    styles = [_style(lib, ix, rank) for lib, ix in labels]
    assert len(set(styles)) == len(labels)
    assert all(color != "tab:gray" for color, _ in styles)


def test_scann_skipped_without_scann(tiny, tmp_path, monkeypatch, no_repeat_floor):
    monkeypatch.setitem(sys.modules, "scann", None)
    results = run_benchmark(_config(tmp_path, libs=("scann",), modes=("batch",)),
                            dataset=tiny)
    assert results["points"] == []
    assert results["skipped"][0]["library"] == "scann"
    assert any("skipping scann tree-ah-reorder: scann is not installed" in n
               for n in results["notes"])


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
    assert "--libs must be a comma-separated subset of numba_ivf,faiss,hnswlib,scann" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--rabitq-bits", "4,9"])
    assert "--rabitq-bits values must be in 1..8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--indexes", "ivfflat,rabitq"])
    assert "subset of ivfflat,ivfpq,ivfpq4-refine,ivfrabitq" in capsys.readouterr().err
    assert main(["--filter", "--libs", "faiss,scann", "--quiet",
                 "--out", str(tmp_path / "o")]) == 1
    assert "--libs scann is not supported with --filter" in capsys.readouterr().err
    assert main(["--dataset", str(tmp_path / "missing"), "--quiet",
                 "--out", str(tmp_path / "o")]) == 1
    assert "missing: no such file or folder" in capsys.readouterr().err
    assert main(["--n", "300", "--nq", "5", "--d", "10", "--pq-m", "3", "--quiet",
                 "--out", str(tmp_path / "o")]) == 1
    assert "pq_m (--pq-m) must divide d=10" in capsys.readouterr().err


def test_cli_parser_defaults():
    args = build_parser().parse_args([])
    assert args.dataset == "synthetic" and args.k == 10 and args.mode == "batch"
    assert args.libs == ("numba_ivf", "faiss", "hnswlib", "scann")
    assert args.indexes == ("ivfflat", "ivfpq", "ivfpq4-refine", "ivfrabitq")
    assert args.rabitq_bits == (4, 5)
    assert build_parser().parse_args(["--rabitq-bits", "5,1,5"]).rabitq_bits == (1, 5)
    args = build_parser().parse_args(["--mode", "both", "--k-factor", "2,4",
                                      "--libs", "faiss,faiss"])
    assert args.k_factor == (2, 4) and args.libs == ("faiss",)


def test_resolve_defaults(tiny):
    ctx = harness._resolve(BenchConfig(), tiny)
    assert ctx["nlist"] == round(4 * np.sqrt(2000))  # 179
    assert ctx["nprobe"] == [1, 2, 4, 8, 16, 32, 64, 128, 179]
    assert ctx["rabitq_bits"] == [4, 5]
    assert ctx["k_factor"] == [2, 4, 8] and ctx["scann_k_factor"] == [2, 4, 8, 16]
    assert harness._resolve(BenchConfig(k_factor=(3,)), tiny)["scann_k_factor"] == [3]
    with pytest.raises(ValueError, match=r"rabitq_bits \(--rabitq-bits\) values must "
                                         r"be in 1..8; got \[0\]"):
        harness._resolve(BenchConfig(rabitq_bits=(0,)), tiny)
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


# -- numba-ivf bench --filter ---------------------------------------------------------

from numba_ivf.bench import filtered  # noqa: E402
from numba_ivf.bench.cli import config_from_args  # noqa: E402
from numba_ivf.datasets import Dataset  # noqa: E402


def _fconfig(out, **kw):
    base = dict(k=10, nlist=NLIST, nprobe=(1, NLIST), k_factor=(2,), ef=(16,), pq_m=4,
                repeats=1, single_queries=5, out=str(out), quiet=True,
                modes=("batch", "single"), indexes=filtered.FILTER_INDEXES, filter=True)
    base.update(kw)
    return BenchConfig(**base)


def _naive_filtered_topk(base, queries, mask, k):
    """Plain float64 loops: the k nearest allowed rows (squared l2), ties by lower id."""
    out = np.full((queries.shape[0], k), -1, dtype=np.int64)
    for qi, q in enumerate(queries.astype(np.float64)):
        cand = sorted((float(((base[i].astype(np.float64) - q) ** 2).sum()), i)
                      for i in np.flatnonzero(mask))
        ids = [i for _, i in cand[:k]]
        out[qi, :len(ids)] = ids
    return out


def test_random_filters_are_seeded_and_sized():
    fs = filtered.random_filters(2000, (0.5, 0.1, 0.001), seed=3)
    assert [f.name for f in fs] == ["random 50%", "random 10%", "random 0.1%"]
    assert [f.n_allowed for f in fs] == [1000, 200, 2]
    assert all(f.kind == "random" and f.mask.dtype == bool for f in fs)
    again = filtered.random_filters(2000, (0.1,), seed=3)[0]
    assert np.array_equal(again.mask, fs[1].mask)  # independent of the other fractions
    other = filtered.random_filters(2000, (0.1,), seed=4)[0]
    assert not np.array_equal(other.mask, fs[1].mask)
    assert filtered.random_filters(10, (0.001,))[0].n_allowed == 1  # at least one id
    with pytest.raises(ValueError, match=r"filter fractions must be in \(0, 1\]; got 0"):
        filtered.random_filters(10, (0.0,))


def test_correlated_filters(tmp_path):
    syn = make_synthetic(n=3000, nq=5, d=4, n_clusters=8, seed=1)
    f = filtered.correlated_filter(syn)
    labels = syn.meta["base_labels"]
    c = int(f.name.split()[1])
    assert f.kind == "correlated" and np.array_equal(f.mask, labels == c)
    share = np.bincount(labels) / 3000
    assert abs(share[c] - 0.1) == np.abs(share - 0.1).min()

    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    fm = tmp_path / "fm"
    fm.mkdir()
    np.save(fm / "base_labels.npy", np.arange(40) % 4)
    ds = Dataset("fashion-mnist-784", x, x[:2], None, "l2", source=str(fm))
    f = filtered.correlated_filter(ds)
    assert f.name == "class 0 (T-shirt/top)" and f.n_allowed == 10
    assert np.array_equal(np.flatnonzero(f.mask), np.arange(0, 40, 4))

    gl = tmp_path / "gl"
    gl.mkdir()
    src = np.arange(40) * 2000  # source rows 0, 2000, ..., 78000
    np.save(gl / "base_source_ids.npy", src.astype(np.int32))
    ds = Dataset("glove-50", x, x[:2], None, "cosine", source=str(gl))
    f = filtered.correlated_filter(ds)
    assert f.name == "top 40k words"
    assert np.array_equal(f.mask, src < filtered.GLOVE_FREQUENT_WORDS)
    # Source ids of other data say nothing about frequency: no correlated filter.
    ds = Dataset("other", x, x[:2], None, "l2", source=str(gl))
    assert filtered.correlated_filter(ds) is None
    notes = []
    fs = filtered.make_filters(ds, (0.5,), notes=notes)
    assert len(fs) == 1 and "no correlated filter" in notes[0]


def test_filtered_ground_truth_against_naive():
    rng = np.random.default_rng(11)
    base = rng.standard_normal((300, 5)).astype(np.float32)
    base[7] = base[3]  # a duplicate: tie broken by the lower id
    q = rng.standard_normal((6, 5)).astype(np.float32)
    q[0] = base[3] + 1e-3
    mask = rng.random(300) < 0.2
    mask[[3, 7]] = True
    _, I = filtered.filtered_ground_truth(base, q, mask, 10, "l2")
    assert np.array_equal(I, _naive_filtered_topk(base, q, mask, 10))
    assert mask[I].all()
    few = np.zeros(300, dtype=bool)
    few[[5, 250]] = True
    _, I = filtered.filtered_ground_truth(base, q, few, 4, "l2")
    assert np.array_equal(I, _naive_filtered_topk(base, q, few, 4))
    assert (I[:, 2:] == -1).all() and set(I[:, :2].ravel()) == {5, 250}
    _, I = filtered.filtered_ground_truth(base, q, np.zeros(300, dtype=bool), 3, "l2")
    assert (I == -1).all()


def test_tie_aware_recall():
    base = np.array([[0.0], [1.0], [-1.0], [2.0], [3.0], [1.0]], dtype=np.float32)
    q = np.zeros((1, 1), dtype=np.float32)
    mask = np.array([True, True, True, True, True, False])
    gt = np.array([[0, 1, 2]])  # ids 1 and 2 tie at distance 1
    r = filtered.tie_aware_recall(gt, gt, base, q, mask, 3, "l2")
    assert r == {"recall": 1.0, "recall_ids": 1.0, "violations": 0, "short_rows": 0}
    # k=2: the true top-2 is (0, 1); (0, 2) is as good, id overlap says otherwise.
    r = filtered.tie_aware_recall(np.array([[0, 2]]), gt, base, q, mask, 2, "l2")
    assert r["recall"] == 1.0 and r["recall_ids"] == 0.5
    # Id 5 also ties but is not allowed: a violation, not a hit; repeats count once.
    r = filtered.tie_aware_recall(np.array([[0, 5, 0]]), gt, base, q, mask, 3, "l2")
    assert r["recall"] == pytest.approx(1 / 3) and r["violations"] == 1
    assert r["short_rows"] == 1
    # Fewer allowed rows than k: only the -1-free part of the ground truth counts.
    r = filtered.tie_aware_recall(np.array([[3, -1, -1]]), np.array([[3, -1, -1]]), base,
                                  q, mask, 3, "l2")
    assert r["recall"] == 1.0 and r["short_rows"] == 0
    r = filtered.tie_aware_recall(np.array([[4, 3]]), np.array([[3, 4]]), base, q, mask,
                                  1, "cosine")
    assert r["recall"] == 1.0  # same direction: cosine distance ties
    with pytest.raises(ValueError, match=r"I has 2 rows but gt has 1"):
        filtered.tie_aware_recall(np.zeros((2, 3), int), gt, base, q, mask, 3, "l2")


@pytest.fixture(scope="session")
def filtered_faiss_hnsw_run(tiny, tmp_path_factory, no_repeat_floor):
    pytest.importorskip("faiss")
    pytest.importorskip("hnswlib")
    out = tmp_path_factory.mktemp("filtered")
    cfg = _fconfig(out, libs=("faiss", "hnswlib"), indexes=("ivfflat",))
    return filtered.run_filtered_benchmark(cfg, dataset=tiny), out


def test_filtered_outputs(filtered_faiss_hnsw_run, tiny):
    results, out = filtered_faiss_hnsw_run
    on_disk = json.loads((out / "filter_results.json").read_text())
    assert on_disk["outputs"] == {"plot": "filter_recall_qps.png",
                                  "json": "filter_results.json",
                                  "tables": "filter_tables.txt"}
    names = [f["name"] for f in on_disk["filters"]]
    assert names[:4] == ["random 50%", "random 10%", "random 1%", "random 0.1%"]
    assert names[4].startswith("cluster ") and len(names) == 5
    assert [f["n_allowed"] for f in on_disk["filters"][:4]] == [1000, 200, 20, 2]
    pts = on_disk["points"]
    assert {(p["library"], p["index"]) for p in pts} == {("faiss", "ivfflat"),
                                                         ("hnswlib", "hnsw")}
    for p in pts:
        assert p["violations"] == 0 and 0.0 <= p["recall"] <= 1.0 and p["qps"] > 0
        assert p["n_queries"] == (40 if p["mode"] == "batch" else 5)
        assert p["threads"] == 1 or p["library"] != "hnswlib"
    by = {(p["library"], p["filter"], p["mode"], tuple(p["params"].values())): p
          for p in pts}
    for name in names:
        # Every list probed: exact over the allowed rows, whatever the filter.
        assert by[("faiss", name, "batch", (NLIST,))]["recall"] == 1.0
        # hnswlib returns what it can when fewer than k rows are allowed (2 here).
        assert ("hnswlib", name, "single", (16,)) in by
    assert by[("hnswlib", "random 0.1%", "batch", (16,))]["recall"] == 1.0
    conv = {(c["library"], c["filter"]) for c in on_disk["conversions"]}
    assert conv == {(lib, n) for lib in ("faiss", "hnswlib") for n in names}
    assert any("num_threads=1" in n for n in on_disk["notes"])
    text = (out / "filter_tables.txt").read_text()
    assert text == results["tables"] == filtered.render_tables(on_disk)
    assert "== batch (all queries in one call) ==" in text
    assert "== single (one query per call) ==" in text
    assert "random 0.1%: 2 allowed (0.1%)" in text and "conversion: faiss ivfflat" in text
    try:    # threadpoolctl is a bench extra, not a test one
        import threadpoolctl  # noqa: F401
        assert "BLAS (threadpoolctl): " in text and "numpy: " in text
    except ImportError:
        assert "BLAS: unknown (threadpoolctl not installed)" in text
    assert "load average" in text
    png = (out / "filter_recall_qps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_render_tables_ratio_and_targets():
    pts = []
    for lib, qps in (("numba_ivf", (300.0, 100.0)), ("faiss", (100.0, 50.0))):
        for (nprobe, recall), q in zip(((4, 0.92), (16, 0.97)), qps):
            pts.append({"library": lib, "index": "ivfflat", "filter": "f", "mode": "batch",
                        "params": {"nprobe": nprobe}, "recall": recall, "qps": q,
                        "violations": 0})
    pts.append({"library": "faiss", "index": "ivfpq4-refine", "filter": "f",
                "mode": "batch", "params": {"nprobe": 4, "k_factor": 2}, "recall": 0.91,
                "qps": 80.0, "violations": 0})
    results = {"dataset": {"name": "x", "n": 100, "d": 2, "metric": "l2", "k": 10,
                           "n_queries": 5},
               "machine": {"threads": 2}, "points": pts, "conversions": [],
               "filters": [{"name": "f", "n_allowed": 10, "fraction": 0.1}]}
    text = filtered.render_tables(results)
    row = next(line for line in text.splitlines() if "numba_ivf  ivfflat" in line)
    assert "300 (nprobe=4)" in row and "100 (nprobe=16)" in row
    assert "3.00x" in row and "2.00x" in row
    row = next(line for line in text.splitlines() if "faiss      ivfpq4-refine" in line)
    assert "80 (nprobe=4 k_factor=2)" in row and row.split()[5] == "-"  # 0.95 unmet


def test_filtered_numba_ivf(tiny, tmp_path, no_repeat_floor):
    """numba_ivf's filtered search where it exists; otherwise skipped with a reason."""
    results = filtered.run_filtered_benchmark(
        _fconfig(tmp_path, libs=("numba_ivf",), filter_fractions=(0.1, 0.001),
                 correlated=False), dataset=tiny)
    for s in results["skipped"]:
        assert "is not importable" in s["reason"] or "no filter=" in s["reason"], (
            f"numba_ivf {s['index']} raised inside the filtered sweep: {s['reason']}")
    for p in results["points"]:
        assert p["violations"] == 0, p
        if p["index"] == "ivfflat" and p["params"]["nprobe"] == NLIST:
            assert p["recall"] == 1.0
        if p["filter"] == "random 0.1%":  # 2 allowed rows: searched exactly
            assert p["recall"] == 1.0
    for c in results["conversions"]:
        assert c["one_query_mask_s"] > 0 and c["one_query_unfiltered_s"] > 0


def test_cli_filter(tmp_path, capsys, no_repeat_floor):
    pytest.importorskip("faiss")
    rc = main(["--filter", "--quick", "--n", "1500", "--nq", "12", "--d", "8",
               "--libs", "faiss", "--indexes", "ivfflat", "--nprobe", "1,8",
               "--nlist", "8", "--filter-fractions", "0.2,0.01", "--no-correlated",
               "--repeats", "1", "--single-queries", "4", "--no-plot", "--no-progress",
               "--out", str(tmp_path), "--threads", "1"])
    assert rc == 0
    data = json.loads((tmp_path / "filter_results.json").read_text())
    assert data["command"].startswith("numba-ivf bench --filter --quick")
    assert [f["name"] for f in data["filters"]] == ["random 20%", "random 1%"]
    assert {p["mode"] for p in data["points"]} == {"batch", "single"}  # --filter: both
    assert data["machine"]["threads"] == 1
    assert not (tmp_path / "filter_recall_qps.png").exists()
    captured = capsys.readouterr()
    assert "Filtered search: synthetic-1500x8" in captured.out
    assert "random 1%: 15 allowed (1%)" in captured.out
    assert "wrote filter_results.json, filter_tables.txt" in captured.err


def test_cli_filter_defaults_and_errors(capsys):
    p = build_parser()
    cfg = config_from_args(p.parse_args(["--filter"]))
    assert cfg.filter and cfg.modes == ("batch", "single")
    assert cfg.indexes == ("ivfflat", "ivfpq4-refine") and cfg.correlated
    cfg = config_from_args(p.parse_args(["--filter", "--mode", "batch", "--indexes",
                                         "ivfpq", "--min-candidates", "50"]))
    assert cfg.modes == ("batch",) and cfg.indexes == ("ivfpq",)
    assert cfg.min_candidates == 50
    assert cfg.libs == ("numba_ivf", "faiss", "hnswlib")  # no filtered ScaNN runner
    cfg = config_from_args(p.parse_args([]))  # without --filter nothing changes
    assert not cfg.filter and cfg.modes == ("batch",) and cfg.indexes == harness.INDEXES
    assert cfg.libs == harness.LIBRARIES
    with pytest.raises(SystemExit):
        p.parse_args(["--filter-fractions", "0.5,2"])
    assert "--filter-fractions values must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["--filter-fractions", "half"])
    assert "--filter-fractions must be a comma-separated list" in capsys.readouterr().err


def test_filtered_failure_is_per_filter(tiny, tmp_path, monkeypatch, no_repeat_floor):
    pytest.importorskip("faiss")
    real = filtered._FaissFiltered.fsearch

    def flaky(self, q, params, state):
        if state[0].size and np.unpackbits(state[0]).sum() == 2:  # the 0.1% filter
            raise RuntimeError("boom")
        return real(self, q, params, state)

    monkeypatch.setattr(filtered._FaissFiltered, "fsearch", flaky)
    results = filtered.run_filtered_benchmark(
        _fconfig(tmp_path, libs=("faiss",), indexes=("ivfflat",), modes=("batch",),
                 correlated=False), dataset=tiny)
    assert {p["filter"] for p in results["points"]} == {"random 50%", "random 10%",
                                                        "random 1%"}
    assert results["skipped"] == [{"library": "faiss", "index": "ivfflat",
                                   "filter": "random 0.1%",
                                   "reason": "RuntimeError('boom')"}]
    assert any("random 0.1% failed and was skipped" in n for n in results["notes"])
    assert results["builds"][0]["error"] is None


def test_guidance_picks_the_fastest_point_per_target(tmp_path, no_repeat_floor):
    import json
    from numba_ivf.bench import guidance
    rng = np.random.default_rng(3)
    c = rng.standard_normal((10, 16)) * 3
    x = (c[rng.integers(10, size=1500)] + rng.standard_normal((1500, 16))).astype(np.float32)
    q = (c[rng.integers(10, size=40)] + rng.standard_normal((40, 16))).astype(np.float32)
    d2 = ((q[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)
    folder = tmp_path / "tiny16"
    folder.mkdir()
    np.save(folder / "base.npy", x)
    np.save(folder / "queries.npy", q)
    np.save(folder / "neighbors_euclidean.npy", np.argsort(d2, axis=1, kind="stable")[:, :10])
    (folder / "meta.json").write_text(json.dumps({"name": "tiny16",
                                                  "primary_metric": "euclidean"}))
    lines = []
    rows = guidance.run(folder, [0.9, 0.99], threads=1, repeats=1, single_queries=5,
                        n_iter=2, out=lines.append)
    names = {r[0] for r in rows}
    assert {"IVFFlat", "IVFRaBitQ 4-bit", "IVFRaBitQ 2-bit + refine"} <= names
    assert any(n.startswith("IVFPQ m=") for n in names)
    table = [ln for ln in lines if ln.startswith("| 0.9")]
    assert len(table) == 4                       # two targets x (batch, one query)
    for r in rows:
        assert 0.0 <= r[2] <= 1.0 and r[3] > 0 and r[6] > 0
    # The printed batch winner at 0.9 is the fastest row that reaches 0.9.
    ok = [r for r in rows if r[2] >= 0.9]
    best = max(ok, key=lambda r: r[3])
    assert f"| 0.9 | batch | {best[0]} |" in "\n".join(lines)
