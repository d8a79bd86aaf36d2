"""The `fewshot` command end to end on the embedded Omniglot, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.cli import main

TINY = ["--ways", "5", "--shots", "1", "--queries", "3", "--steps", "12", "--hidden", "8",
        "--val-every", "6", "--val-episodes", "5", "--log-every", "3", "--quiet"]  # fmt: skip
# supervised pretraining takes batches of all training classes, not episodes
BATCHES = ["--steps", "4", "--hidden", "8", "--val-every", "2", "--val-episodes", "5", "--log-every", "3",
           "--batch-size", "16", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--run-dir", str(run), *TINY, "--test-episodes", "10", "--test-shots", "1"]) == 0
    return run


def test_train_writes_a_complete_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "metrics.jsonl", "model.safetensors", "best.safetensors", "eval.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]  # nothing half-written left behind
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["ways"] == 5 and config["config"]["seed"] == 0
    assert config["env"]["torch"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 6, 9, 12]
    assert all("val_score" in m for m in metrics if m["step"] % 6 == 0)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation[0]["results"][0]["episodes"] == 10


def test_eval_is_reproducible_and_appends(run_dir, capsys):
    args = ["eval", str(run_dir), "--shots", "1", "5", "--episodes", "8", "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "5-way 1-shot" in first and "5-way 5-shot" in first and "95% CI" in first
    assert main(args) == 0
    assert capsys.readouterr().out == first
    records = json.loads((run_dir / "eval.json").read_text())
    assert len(records) == 3
    assert records[1]["results"][0]["accuracies"] == records[2]["results"][0]["accuracies"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "no/such/run"], "does not exist"),
        (["train", "--ways", "0", "--quiet"], "ways must be at least 2"),
        (["train", "--algorithm", "magic", "--quiet"], "unknown algorithm 'magic'; choose one of"),
        (["train", "--ways", "5000", "--steps", "1", "--val-every", "0", "--quiet"], "ways=5000 but"),
        # a setting the chosen algorithm does not use is refused, naming the algorithms that use it
        (
            ["train", "--algorithm", "mamlpp", "--inner-clip", "1"],
            "--inner-clip is not used by mamlpp; it is a setting of maml, fomaml, anil, metasgd, reptile",
        ),
        (["train", "--algorithm", "mamlpp", "--first-order"], "--first-order is not used by mamlpp"),
        (
            ["train", "--algorithm", "cavia", "--dataset", "sinusoid", "--inner-clip", "1"],
            "--inner-clip is not used by cavia",
        ),
        (["train", "--algorithm", "protonet", "--inner-lr", "0.1"], "--inner-lr is not used by protonet"),
        (["train", "--algorithm", "baseline", "--ways", "5"], "--ways is not used by baseline"),
        (["train", "--algorithm", "scratch", "--steps", "5"], "--steps is not used by scratch"),
        # impossible combinations are refused when the configuration is built, not at step 0
        (
            ["train", "--algorithm", "reptile", "--route", "autograd"],
            "route autograd does not work with reptile; choose one of threads, loop, vmap",
        ),
        (["train", "--algorithm", "protonet", "--route", "vmap"], "route vmap does not work with protonet"),
        (
            ["train", "--algorithm", "relation", "--dataset", "table", "--data-root", "x.csv"],
            "relation does not work on vectors",
        ),
        (
            ["train", "--algorithm", "protonet", "--dataset", "sinusoid"],
            "protonet does not work on regression",
        ),
        (["train", "--algorithm", "maml", "--inner-lr", "-1"], "inner_lr must be a positive number"),
        (
            ["train", "--preset", "maml-omniglot-5w1s", "--algorithm", "protonet"],
            "preset maml-omniglot-5w1s: inner_lr is not used by protonet",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = [argv[0], "--run-dir", str(tmp_path / "r"), *argv[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("fewshot: error:")


def test_truncated_checkpoint_is_refused_clearly(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((run_dir / "config.json").read_text())
    data = (run_dir / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["eval", str(broken), "--episodes", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "not a readable safetensors checkpoint" in err


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("fewshot")
    proc = subprocess.run([str(exe), "eval", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "metasgd", "reptile", "cavia", "mamlpp"])
def test_gradient_based_algorithms_train_and_test_on_sinusoids(algorithm, tmp_path, capsys, one_thread):
    run = tmp_path / algorithm
    argv = ["train", "--run-dir", str(run), "--algorithm", algorithm, "--dataset", "sinusoid", "--shots", "5",
            "--queries", "5", "--steps", "6", "--tasks-per-step", "4", "--inner-lr", "0.01", "--inner-steps", "2",
            "--val-every", "3", "--val-episodes", "4", "--log-every", "3", "--test-episodes", "5",
            "--test-shots", "5", "--route", "vmap", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "5-shot regression: MSE" in out
    # the algorithm's own meta-parameters are checkpointed and restored
    assert main(["eval", str(run), "--shots", "5", "--episodes", "3", "--quiet"]) == 0


def test_maml_classifier_on_omniglot_and_its_head_size(tmp_path, capsys):
    run = tmp_path / "maml"
    argv = ["train", "--run-dir", str(run), "--algorithm", "maml", "--ways", "3", "--shots", "1", "--queries",
            "2", "--steps", "2", "--tasks-per-step", "2", "--hidden", "8", "--val-every", "0",
            "--test-episodes", "3", "--test-shots", "1", "--test-inner-steps", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "3-way 1-shot" in capsys.readouterr().out
    assert main(["eval", str(run), "--ways", "5", "--quiet"]) == 2
    assert "has a 3-way head; test with --ways 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "algorithm", ["matching", "relation", "siamese", "baseline", "baselinepp", "scratch"]
)
def test_metric_and_baseline_algorithms_train_test_and_compare(tmp_path, algorithm, one_thread):
    run = tmp_path / algorithm
    own = {
        "matching": [*TINY, "--steps", "4", "--fce"],
        "relation": [*TINY, "--steps", "4"],
        "siamese": [*TINY, "--steps", "4"],
        "baseline": [*BATCHES, "--finetune-steps", "3"],
        "baselinepp": [*BATCHES, "--finetune-steps", "3"],
        "scratch": ["--hidden", "8", "--ways", "5", "--quiet", "--finetune-steps", "3"],
    }[algorithm]
    argv = ["train", "--algorithm", algorithm, "--run-dir", str(run), *own, "--test-episodes", "3",
            "--test-shots", "1"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["algorithm"] == algorithm and (run / "best.safetensors").is_file()
    if algorithm.startswith("baseline"):
        assert config["classes"] == 4112  # every class of the Vinyals training split
    out = tmp_path / "cmp"
    specs = [str(run), f"nn={run}:nn"] if algorithm != "scratch" else [str(run)]
    assert (
        main(
            ["compare", *specs, "--shots", "1", "--episodes", "3", "--out", str(out), "--no-plots", "--quiet"]
        )
        == 0
    )
    rows = json.loads((out / "compare_5w1s.json").read_text())["rows"]
    assert all(0.0 <= r["mean"] <= 1.0 for r in rows)


def test_tensorboard_logging_writes_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    assert (
        main(["train", "--run-dir", str(run), *TINY, "--steps", "6", "--tensorboard", "--test-episodes", "0"])
        == 0
    )
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss", "score", "val_score"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [3, 6]


def test_checkpoint_of_another_architecture_is_refused(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    config["config"]["hidden"] = 16  # the weights on disk are hidden=8
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    assert main(["eval", str(other), "--episodes", "2", "--quiet", "--checkpoint", "last"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the run's model" in err and len(err.strip().splitlines()) == 1


def test_class_folders_with_fewer_images_than_shots_are_named(tmp_path, capsys):
    from test_own_data import omniglot_folder

    root = omniglot_folder(tmp_path / "small", classes=12, per_class=3)
    argv = ["train", "--dataset", "folder", "--data-root", str(root), "--ways", "3", "--shots", "5", "--queries", "1",
            "--val-every", "0", "--run-dir", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "shots+queries=5+1=6 examples per class are needed" in err and "lower shots or queries" in err


def test_output_into_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """`fewshot list | head -1`: the reader goes away; no error, exit code 0 (BrokenPipeError is an OSError)."""

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["list"]) == 0
    assert capsys.readouterr().err == ""


def test_python_m_fewshot_is_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fewshot", "eval", str(tmp_path / "missing")], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_train_help_explains_every_flag_grouped_by_algorithm(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "settings of maml, fomaml, anil, metasgd, reptile" in text and "settings of matching" in text
    assert "--route {auto,autograd,loop,threads,vmap}" in text  # choices are named
    # every flag has its own explanation, not just a default
    import re

    flags = re.findall(r"^  (--[a-z0-9-]+)(?: [A-Z{][^ ]*)?\n? +(.*)$", text, flags=re.M)
    assert len(flags) > 50 and all(not h.startswith("(default") for _, h in flags)
