"""fewshot compare: identical episodes, paired differences, the table and curve files, and the CLI."""

from __future__ import annotations

import json

import torch

from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.maml import MAML
from fewshot.algorithms.mamlpp import MAMLPlusPlus
from fewshot.algorithms.protonet import ProtoNet
from fewshot.baselines import FineTune, NearestNeighbour
from fewshot.cli import main
from fewshot.compare import Method, compare, curves, markdown
from fewshot.models import Conv4


def _methods() -> list[Method]:
    torch.manual_seed(0)
    model = Conv4(hidden=8)
    params = parameters_of(model)
    return [
        Method("proto", ProtoNet(), model, params, "test"),
        Method("proto again", ProtoNet(), model, params, "test"),
        Method("pixels", NearestNeighbour("pixel"), model, params, "test"),
    ]


def test_a_method_against_itself_differs_by_exactly_zero(blobs, one_thread):
    table = compare(_methods(), blobs, ways=3, shots=1, queries=4, episodes=12, seed=5, progress=False)
    rows = {r["method"]: r for r in table["rows"]}
    assert rows["proto"]["accuracies"] == rows["proto again"]["accuracies"]  # the very same episodes
    best = table["best"]
    assert rows[best]["diff_to_best"] == 0.0 and rows[best]["diff_to_best_ci95"] == 0.0
    # the twins differ from the best by exactly the same paired difference, whichever method is best
    assert rows["proto"]["diff_to_best"] == rows["proto again"]["diff_to_best"]
    assert rows["proto"]["diff_to_best_ci95"] == rows["proto again"]["diff_to_best_ci95"]
    if best == "proto":
        assert rows["proto again"]["diff_to_best"] == 0.0 and rows["proto again"]["diff_to_best_ci95"] == 0.0
    # the paired difference is the mean of per-episode differences, not the difference of independent means
    diff = torch.tensor(rows["pixels"]["accuracies"]) - torch.tensor(rows[best]["accuracies"])
    assert abs(rows["pixels"]["diff_to_best"] - diff.double().mean().item()) < 1e-12
    assert rows["pixels"]["parameters"] == rows["proto"]["parameters"] > 0
    assert "| proto |" in markdown(table) and "best" in markdown(table)


def test_adaptation_steps_and_step_curves(blobs, one_thread):
    assert MAML(inner_steps=3).adaptation_steps == 3 and ProtoNet().adaptation_steps == 0
    assert (
        FineTune(steps=100).with_adaptation_steps(4).steps == 4
        and ProtoNet().with_adaptation_steps(4) is None
    )
    assert (
        MAMLPlusPlus(inner_steps=3).adaptation_steps == 3 and MAMLPlusPlus().with_adaptation_steps(2) is None
    )
    torch.manual_seed(0)
    model = Conv4(hidden=8)
    methods = [Method("finetune", FineTune(steps=5), model, parameters_of(model), "test")]
    data = curves(
        methods, blobs, 3, shots_list=(1, 2), steps_list=(0, 5), queries=4, episodes=3, progress=False
    )
    assert [p["shots"] for p in data["shots"]["finetune"]] == [1, 2]
    assert [p["steps"] for p in data["steps"]["finetune"]] == [0, 5]


def test_cli_compare_writes_the_table_and_refuses_unknown_methods(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "pixel-nn", "again=pixel-nn", "--shots", "1", "--episodes", "6", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    table = json.loads((out / "compare_5w1s.json").read_text())
    assert [r["method"] for r in table["rows"]] == ["pixel-nn", "again"]
    assert all(r["diff_to_best"] == 0.0 for r in table["rows"])
    assert (out / "compare_5w1s.png").stat().st_size > 0 and (out / "compare_5w1s.md").is_file()
    assert main(["compare", "no/such/run", "--episodes", "2", "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "neither a run directory nor one of" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", "pixel-nn", "pixel-nn", "--episodes", "2", "--out", str(out), "--no-plots"]) == 2
    assert "share a label" in capsys.readouterr().err


def test_compare_refuses_runs_whose_test_classes_differ(tmp_path, capsys):
    from test_own_data import omniglot_folder

    root = omniglot_folder(tmp_path / "chars", classes=12, per_class=4)
    for seed in (0, 1):
        argv = ["train", "--algorithm", "scratch", "--dataset", "folder", "--data-root", str(root), "--ways", "2",
                "--split-seed", str(seed), "--run-dir", str(tmp_path / f"s{seed}"), "--test-episodes", "0", "--quiet"]  # fmt: skip
        assert main(argv) == 0
    capsys.readouterr()
    argv = [
        "compare",
        str(tmp_path / "s0"),
        str(tmp_path / "s1"),
        "--ways",
        "2",
        "--episodes",
        "2",
        "--no-plots",
    ]
    assert main([*argv, "--out", str(tmp_path / "c")]) == 2
    assert "differ in split_seed" in capsys.readouterr().err
