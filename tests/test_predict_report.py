"""fewshot predict on your own images and tables, and fewshot report's plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fewshot.cli import main
from test_own_data import omniglot_folder

TINY = ["--steps", "4", "--log-every", "2", "--val-every", "2", "--val-episodes", "2", "--hidden", "8",
        "--test-queries", "2", "--test-episodes", "0", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("predict")
    root = omniglot_folder(base / "chars", classes=12, per_class=5, size=40)
    run = base / "run"
    argv = ["train", "--dataset", "folder", "--data-root", str(root), "--invert", "--ways", "3", "--shots", "1",
            "--queries", "2", "--val-ways", "2", "--val-shots", "1", "--run-dir", str(run), *TINY]  # fmt: skip
    assert main(argv) == 0
    return run, root


def _support_and_queries(root: Path, base: Path, classes: int = 3) -> tuple[Path, Path]:
    support, queries = base / "support", base / "queries"
    for folder in sorted(p for p in root.iterdir() if p.is_dir())[:classes]:
        (support / folder.name).mkdir(parents=True)
        first = sorted(folder.iterdir())[0]
        shutil.copy(first, support / folder.name / first.name)
        queries.mkdir(exist_ok=True)
        shutil.copy(first, queries / f"{folder.name}.png")  # the support image itself, as a query
    return support, queries


def test_predict_labels_each_query_with_probabilities(image_run, tmp_path, capsys):
    run, root = image_run
    support, queries = _support_and_queries(root, tmp_path)
    capsys.readouterr()
    assert main(["predict", str(run), "--support", str(support), "--query", str(queries), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"] == sorted(p.name for p in support.iterdir())
    assert any("40x40" in n and "28x28" in n for n in out["notes"])  # the size conversion is reported
    for p in out["predictions"]:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        # one shot per class and the query is that very image: the nearest prototype is its own class
        assert p["label"] == Path(p["query"]).stem
    assert main(["predict", str(run), "--support", str(support), "--query", str(queries)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(not line.startswith("note: ") for line in lines) == 3  # notes, then one line per query


def test_predict_bad_inputs_end_in_one_line(image_run, tmp_path, capsys):
    run, root = image_run
    support, queries = _support_and_queries(root, tmp_path)
    cases = [
        (["--support", str(support), "--query", str(tmp_path / "missing.png")], "does not exist"),
        (["--support", str(tmp_path / "nope"), "--query", str(queries)], "does not exist"),
        (["--support", str(support), "--query", str(queries)], "has no images"),
    ]
    for i, (args, message) in enumerate(cases):
        if i == 2:
            (support / "empty").mkdir()
        assert main(["predict", str(run), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_predict_on_a_table_run_and_a_head_of_the_wrong_size(tmp_path, capsys):
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(3 * c, 0.3, size=(8, 4)) for c in range(12)]).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=np.repeat(np.arange(12), 8))
    run = tmp_path / "maml"
    argv = ["train", "--algorithm", "maml", "--dataset", "table", "--data-root", str(tmp_path / "t.npz"), "--ways",
            "2", "--shots", "1", "--queries", "2", "--tasks-per-step", "2", "--run-dir", str(run), *TINY]  # fmt: skip
    assert main(argv) == 0
    (tmp_path / "s.csv").write_text("a,b,c,d,label\n0,0,0,0,zero\n30,30,30,30,ten\n")
    (tmp_path / "q.csv").write_text("a,b,c,d\n0.1,0,0,0\n29,30,31,30\n")
    capsys.readouterr()
    assert main(["predict", str(run), "--support", str(tmp_path / "s.csv"), "--query", str(tmp_path / "q.csv"),
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert [p["query"] for p in out["predictions"]] == ["q.csv:1", "q.csv:2"]
    (tmp_path / "s3.csv").write_text("a,b,c,d,label\n0,0,0,0,x\n1,1,1,1,y\n2,2,2,2,z\n")
    assert (
        main(["predict", str(run), "--support", str(tmp_path / "s3.csv"), "--query", str(tmp_path / "q.csv")])
        == 2
    )
    assert "2-way head; give exactly 2 support classes" in capsys.readouterr().err


def test_report_writes_the_plots(image_run, tmp_path, capsys):
    run, _ = image_run
    out = tmp_path / "report"
    assert (
        main(["report", str(run), "--out", str(out), "--shots", "1", "2", "--episodes", "3", "--quiet"]) == 0
    )
    assert (out / "training.png").stat().st_size > 0 and (out / "shots.png").stat().st_size > 0
    summary = json.loads((out / "report.json").read_text())
    assert [p["shots"] for p in next(iter(summary["shots"]["shots"].values()))] == [1, 2]
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_predict_support_folder_without_class_folders_says_so(image_run, tmp_path, capsys):
    run, root = image_run
    _, queries = _support_and_queries(root, tmp_path)
    loose = tmp_path / "loose"  # the images put straight into the support folder
    shutil.copytree(queries, loose)
    (tmp_path / "empty").mkdir()
    for folder in (loose, tmp_path / "empty"):
        capsys.readouterr()
        assert main(["predict", str(run), "--support", str(folder), "--query", str(queries)]) == 2
        err = capsys.readouterr().err
        assert f"{folder} has no class folders: put each class's images in its own subfolder" in err, err
        assert "does not exist" not in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("table")
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(3 * c, 0.3, size=(8, 4)) for c in range(12)]).astype(np.float32)
    np.savez(base / "t.npz", x=x, y=np.repeat(np.arange(12), 8))
    argv = ["train", "--algorithm", "protonet", "--dataset", "table", "--data-root", str(base / "t.npz"), "--ways",
            "2", "--shots", "1", "--queries", "2", "--val-ways", "2", "--val-shots", "1", "--run-dir", str(base / "run"),
            *TINY]  # fmt: skip
    assert main(argv) == 0
    return base / "run"


def test_predict_refuses_nonfinite_tables_naming_file_row_and_column(table_run, tmp_path, capsys):
    from fewshot.predict import predict

    (tmp_path / "s.csv").write_text("a,b,c,d,label\n0,0,0,0,zero\n30,30,30,30,ten\n")
    (tmp_path / "q.csv").write_text("a,b,c,d\n0.1,0,0,0\n29,nan,31,30\n")
    (tmp_path / "ql.csv").write_text("a,b,c,d,label\n0.1,0,0,0,?\n29,30,inf,30,?\n")  # with a label column
    (tmp_path / "bad_s.csv").write_text("a,b,c,d,label\n0,0,0,0,zero\n30,30,30,-inf,ten\n")
    cases = [
        ("s.csv", "q.csv", "q.csv: row 3, column 'b' is 'nan'"),
        ("s.csv", "ql.csv", "ql.csv: row 3, column 'c' is 'inf'"),
        ("bad_s.csv", "q.csv", "bad_s.csv: row 3, column 'd' is '-inf'"),
    ]
    for support, query, message in cases:
        capsys.readouterr()
        args = [
            "predict",
            str(table_run),
            "--support",
            str(tmp_path / support),
            "--query",
            str(tmp_path / query),
        ]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and "not a finite number" in err and len(err.strip().splitlines()) == 1, err
    # allowed explicitly, a non-finite input still never gives a NaN probability: the query is named
    with pytest.raises(ValueError) as e:
        predict(table_run, tmp_path / "s.csv", [str(tmp_path / "q.csv")], allow_nonfinite=True)
    message = str(e.value)
    assert "query q.csv:2" in message and "not finite" in message and "inputs" in message, message
    assert "\n" not in message


def test_predict_never_returns_nan_probabilities_from_nan_weights(table_run, tmp_path, monkeypatch, capsys):
    import fewshot.runs
    from fewshot.predict import predict

    (tmp_path / "s.csv").write_text("a,b,c,d,label\n0,0,0,0,zero\n30,30,30,30,ten\n")
    (tmp_path / "q.csv").write_text("a,b,c,d\n0.1,0,0,0\n29,30,31,30\n")
    assert np.isfinite(predict(table_run, tmp_path / "s.csv", [str(tmp_path / "q.csv")]).probabilities).all()
    real = fewshot.runs.load_run

    def diverged(*args, **kwargs):  # a run whose training diverged: a weight is NaN
        run = real(*args, **kwargs)
        next(iter(run.model.parameters())).data[0].fill_(float("nan"))
        return run

    monkeypatch.setattr(fewshot.runs, "load_run", diverged)
    with pytest.raises(ValueError) as e:
        predict(table_run, tmp_path / "s.csv", [str(tmp_path / "q.csv")])
    message = str(e.value)
    assert (
        message.startswith("query q.csv:1:") and "weights are not finite" in message and "\n" not in message
    )
    assert main(["predict", str(table_run), "--support", str(tmp_path / "s.csv"), "--query",
                 str(tmp_path / "q.csv")]) == 2  # fmt: skip
    out, err = capsys.readouterr()
    assert "nan" not in out.lower() and "weights are not finite" in err
