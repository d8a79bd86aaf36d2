"""Bad input, table-driven: every case ends with one line on stderr that says what to change, exit code 2, and
no file left behind or changed. Then the runs that go wrong (exit code 3, a finite checkpoint kept), and the
files a user made that a command must never destroy."""

from __future__ import annotations

import errno
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot import io
from fewshot.cli import main

TINY = ["--ways", "5", "--shots", "1", "--queries", "2", "--steps", "4", "--hidden", "8", "--val-every", "2",
        "--val-episodes", "3", "--log-every", "2", "--quiet", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small finished run on the embedded Omniglot (never changed by the tests: they copy it first)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "--test-episodes", "3", "--test-shots", "1"]) == 0
    return run


@pytest.fixture
def work(tmp_path, trained, monkeypatch) -> Path:
    """A folder with a copy of the trained run (``run``), a small table (``table.csv``) and a file (``a_file``);
    the command runs from inside it."""
    run = tmp_path / "run"
    run.mkdir()
    for f in trained.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    rng = np.random.default_rng(0)
    rows = ["label,a,b"] + [f"k{i % 6},{rng.normal():.4f},{rng.normal():.4f}" for i in range(60)]
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "latin1.json").write_bytes('{"shots": 5, "note": "d\u00e9j\u00e0"}'.encode("latin-1"))
    np.savez(tmp_path / "objects.npz", x=np.array([[1.0, 2.0], [3.0]], dtype=object), y=np.array([0, 1]))
    nan_rows = rows[:5] + ["k1,nan,0.5"] + rows[5:]
    (tmp_path / "nan.csv").write_text("\n".join(nan_rows) + "\n")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "a.png").write_bytes(b"\x89PNG not really")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> content hash (folders: 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


CASES = [
    # (argv, what stderr must say)
    (["train", "--lr-decay-every", "0"], "lr_decay_every must be at least 1"),
    (["train", "--threads", "0"], "threads must be at least 1"),
    (["train", "--hidden", "100000"], "GiB for its weights in training, more than this machine's"),
    (["train", "--val-every", "-1"], "val_every must be at least 0"),
    (["train", "--max-minutes", "nan"], "max_minutes must be a positive number"),
    (["train", "--outer-lr", "inf"], "outer_lr must be a positive number"),
    (["train", "--queries", "0"], "queries must be at least 1"),
    (["train", "--ways", "1"], "ways must be at least 2"),
    (["train", "--val-ways", "1"], "val_ways must be at least 2"),
    (["train", "--test-ways", "1"], "--test-ways must be at least 2"),
    (["train", "--algorithm", "maml", "--inner-steps", "0"], "inner_steps must be at least 1"),
    (
        ["train", "--algorithm", "cavia", "--dataset", "sinusoid", "--test-inner-steps", "0"],
        "test_inner_steps must be at least 1",
    ),
    (["train", "--algorithm", "baseline", "--batch-size", "0"], "batch_size must be at least 1"),
    (
        ["train", "--dataset", "table", "--data-root", "table.csv", "--val-fraction", "-0.5"],
        "val_fraction must be at least 0 and below 1",
    ),
    (["train", "--val-fraction", "0.6", "--test-fraction", "0.5"], "must leave classes to train on"),
    (["train", "--ways", "abc"], "invalid int value: 'abc' (see `fewshot train --help`)"),
    (["train", "--run-dir", "a_file"], "--run-dir a_file is a file; give a folder"),
    (["train", "--run-dir", "a_file/run"], "a_file is a file, not a folder; give another --run-dir"),
    (["train", "--run-dir", "/proc/fewshot-run"], "no permission to write in /proc"),
    (["train", "--run-dir", "run"], "run already holds a run (config.json"),
    (["eval", "run", "--ways", "1", "--episodes", "2", "--quiet"], "ways must be at least 2"),
    (["compare", "run", "pixel-nn", "--ways", "1", "--no-plots", "--quiet"], "--ways must be at least 2"),
    (
        ["compare", "=run", "pixel-nn", "--episodes", "2", "--no-plots", "--quiet"],
        "the label before '=' is empty; write LABEL=run or just run",
    ),
    (["compare", "run", "pixel-nn", "--out", "a_file", "--no-plots", "--quiet"], "--out a_file is a file"),
    (["report", "run", "--out", "a_file", "--quiet"], "--out a_file is a file"),
    (["report", "run", "--shots", "25", "--episodes", "2", "--quiet"], "give --shots below 20 (got 25)"),
    (["train", "--config", "latin1.json"], "latin1.json"),
    (["train", "--dataset", "table", "--data-root", "objects.npz"], "objects.npz"),
    (
        ["train", "--dataset", "table", "--data-root", "nan.csv", "--ways", "3", "--val-ways", "3"],
        "nan.csv: row 6, column 'a' is 'nan', not a finite number",
    ),
    (["predict", "run", "--support", "loose", "--query", "a_file"], "loose has no class folders"),
    (["serve", "--host", "256.1.1.1"], "256.1.1.1"),
    (["train", "--device", "cuda"], "this machine has no CUDA GPU; use --device cpu"),
    (["eval", "run", "--device", "cuda:1", "--quiet"], "no CUDA GPU"),
    (["compare", "run", "--device", "banana", "--no-plots"], "unknown device 'banana'"),
    (
        ["train", "--route", "threads", "--device", "meta", "--algorithm", "maml"],
        "route threads splits tasks",
    ),
]


CASES += [
    (["train", "--val-ways", "3000"], "ways=3000 but the dataset has only 688 classes"),
    (["train", "--test-episodes", "-1"], "--test-episodes must be 0 (no test) or more"),
    (["train", "--resume", "run", "--run-dir", "elsewhere"], "drop --run-dir"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(argv, message, work, capsys):
    before = snapshot(work)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fewshot: error: ") and message in err, err
    assert "Traceback" not in err and "Errno" not in err
    assert snapshot(work) == before  # nothing left behind, nothing changed


def test_retraining_into_a_run_leaves_its_files_byte_identical(work, capsys):
    before = snapshot(work / "run")
    assert main(["train", "--run-dir", "run", *TINY, "--test-episodes", "0"]) == 2
    assert "--resume run, give another --run-dir, or add --overwrite" in capsys.readouterr().err
    assert snapshot(work / "run") == before
    assert (
        main(["train", "--run-dir", "run", *TINY, "--steps", "2", "--overwrite", "--test-episodes", "0"]) == 0
    )
    assert not (work / "run" / "eval.json").exists()  # replaced on purpose: the old run's files are gone


def test_plain_train_makes_a_new_directory_each_time_and_links_latest(work, capsys):
    argv = ["train", *TINY, "--steps", "2", "--val-every", "0", "--test-episodes", "0"]
    assert main(argv) == 0 and main(argv) == 0
    runs = sorted(p for p in (work / "runs").iterdir() if not p.is_symlink())
    assert len(runs) == 2 and all(p.name.startswith("protonet-") for p in runs)
    assert (work / "runs" / "latest").resolve() == runs[-1].resolve()


def test_a_diverging_run_stops_with_exit_3_and_keeps_finite_weights(work, capsys):
    argv = ["train", "--run-dir", "diverged", "--optimizer", "sgd", "--outer-lr", "1e30", *TINY, "--steps", "6",
            "--test-episodes", "3"]  # fmt: skip
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training diverged at step" in err and "learning rate" in err, err
    run = work / "diverged"
    for name in ("model.safetensors", "best.safetensors", "resume.safetensors"):
        if (run / name).exists():
            assert all(torch.isfinite(t).all() for t in io.load_tensors(run / name).values()), name
    assert (run / "model.safetensors").exists()
    metrics = run / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:  # strict JSON: no NaN tokens
        json.loads(line, parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))
    assert not (run / "eval.json").exists()  # a diverged run is not tested


def test_inner_loop_divergence_is_exit_3_too(work, capsys):
    argv = ["train", "--run-dir", "inner", "--algorithm", "maml", "--dataset", "sinusoid", "--inner-lr", "1e30",
            "--steps", "3", "--tasks-per-step", "2", "--route", "loop", "--val-every", "0", "--test-episodes", "0",
            "--quiet"]  # fmt: skip
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert "training diverged at step 1" in err and "inner_lr" in err and len(err.splitlines()) == 1


def test_damaged_eval_json_is_left_alone_and_the_evaluation_kept(work, capsys):
    (work / "run" / "eval.json").write_text('{"mine": 1}')
    assert main(["eval", "run", "--shots", "1", "--episodes", "3", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "5-way 1-shot" in captured.out
    assert "run/eval.json holds a JSON dict, not a list" in captured.err and "eval-2.json" in captured.err
    assert (work / "run" / "eval.json").read_text() == '{"mine": 1}'  # never rewritten into another shape
    assert json.loads((work / "run" / "eval-2.json").read_text())[0]["results"][0]["episodes"] == 3


@pytest.mark.parametrize(
    ("error", "message"),
    [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "no permission to write in")],
)
def test_a_write_that_fails_names_the_file_and_keeps_the_old_one(work, capsys, monkeypatch, error, message):
    before = snapshot(work)

    def fail(fd: int) -> None:
        raise OSError(error, "simulated")

    monkeypatch.setattr("fewshot.io.os.fsync", fail)
    assert main(["eval", "run", "--shots", "1", "--episodes", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot write {Path('run') / 'eval.json'}: {message}" in err, err
    assert "was left as it was" in err and ".tmp" not in err
    assert snapshot(work) == before


def test_metrics_are_strict_json_even_for_nan_scores(tmp_path):
    io.append_jsonl(tmp_path / "m.jsonl", {"loss": math.nan, "score": math.inf, "ok": 1.5})
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"loss": None, "score": None, "ok": 1.5}


def test_progress_in_a_log_is_plain_lines_not_carriage_return_frames(tmp_path):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "fewshot", "train", "--run-dir", str(tmp_path / "r"), *TINY[:-3], "--steps", "6",
            "--test-episodes", "3", "--test-shots", "1"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)  # stderr is a pipe, as in CI or `> log`
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr
    assert "train protonet: 6/6 (100%)" in proc.stderr and "eval 5w1s: 3/3 (100%)" in proc.stderr


def test_an_all_nan_table_is_refused_or_with_allow_nonfinite_stops_as_diverged(work, capsys):
    rows = ["label,a,b"] + [f"k{i % 6},nan,nan" for i in range(60)]
    (work / "allnan.csv").write_text("\n".join(rows) + "\n")
    argv = ["train", "--dataset", "table", "--data-root", "allnan.csv", "--ways", "3", "--shots", "2", "--queries",
            "2", "--val-ways", "3", "--steps", "3", "--val-every", "0", "--test-episodes", "0", "--quiet",
            "--run-dir", "nan-run"]  # fmt: skip
    assert main(argv) == 2
    assert "allnan.csv: row 2, column 'a' is 'nan'" in capsys.readouterr().err
    assert not (work / "nan-run").exists()
    assert main([*argv, "--allow-nonfinite"]) == 3
    err = capsys.readouterr().err
    assert (
        "training diverged at step 1: the loss is nan" in err and "NaN or infinite values in the data" in err
    )
    assert all(
        torch.isfinite(t).all() for t in io.load_tensors(work / "nan-run" / "model.safetensors").values()
    )


def test_resume_through_runs_latest_keeps_the_link(work, capsys):
    argv = ["train", *TINY, "--steps", "2", "--val-every", "0", "--test-episodes", "0"]
    assert main(argv) == 0
    target = (work / "runs" / "latest").resolve()
    assert main(["train", "--resume", "runs/latest", "--quiet", "--test-episodes", "0"]) == 0
    assert (work / "runs" / "latest").resolve() == target and target.is_dir()


def test_a_run_stopped_before_its_first_resume_point_resumes_from_step_0(work, capsys):
    run = work / "run"
    for name in ("resume.safetensors", "model.safetensors", "best.safetensors", "metrics.jsonl", "eval.json"):
        (run / name).unlink(missing_ok=True)  # as if killed before the first logged step
    assert main(["train", "--resume", "run", "--quiet", "--test-episodes", "0"]) == 0
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4


def test_a_run_trained_on_another_device_loads_here(work, capsys):
    config = json.loads((work / "run" / "config.json").read_text())
    config["config"]["device"] = "cuda:3"  # trained on a machine with GPUs
    (work / "run" / "config.json").write_text(json.dumps(config))
    assert main(["eval", "run", "--shots", "1", "--episodes", "2", "--device", "cpu", "--quiet"]) == 0
    assert "5-way 1-shot" in capsys.readouterr().out


def test_default_run_directories_started_in_one_second_differ(work):
    from fewshot.cli import new_run_dir
    from fewshot.config import TrainConfig

    made = [new_run_dir(TrainConfig()) for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
