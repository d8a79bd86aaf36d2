"""Curriculum task sampling (fewshot.tasks.curriculum): stages as a function of the step, on any task family,
recorded in the run directory and resumed exactly."""

from __future__ import annotations

import json

import pytest

from conftest import resume_ends_where_one_go_does, write_image_folder
from fewshot import io
from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.tasks.curriculum import Curriculum
from fewshot.tasks.linear import FunctionTasks
from fewshot.tasks.regression import Sinusoid
from fewshot.train import Trainer


def test_stages_grow_towards_the_runs_own_values_and_stop_there():
    c = Curriculum.parse("garg", every=2000)
    targets = {"active": 20, "shots": 40}
    assert c.values(targets, 0) == {"active": 5, "shots": 10}
    assert c.values(targets, 1999) == {"active": 5, "shots": 10}
    assert c.values(targets, 4000) == {"active": 7, "shots": 14}
    assert c.values(targets, 30_000) == {"active": 20, "shots": 40}  # stage 15: both reached
    assert c.values(targets, 10**9) == {"active": 20, "shots": 40}
    assert c.values({"active": 3, "shots": 4}, 0) == {"active": 3, "shots": 4}  # smaller targets start there
    down = Curriculum.parse("noise=1-0.25", every=10)  # a setting may also shrink, to the run's value
    assert [down.values({"noise": 0.1}, s)["noise"] for s in (0, 10, 20, 30, 40)] == [
        1.0,
        0.75,
        0.5,
        0.25,
        0.1,
    ]
    assert isinstance(c.values(targets, 0)["shots"], int)  # whole-number settings stay whole


def test_any_task_family_takes_it():
    c = Curriculum.parse("shots=2+3", every=5)
    assert c.at(Sinusoid(shots=10), 7).shots == 5
    linear = Curriculum.parse("garg", every=1).at(FunctionTasks(dim=8, shots=16, queries=2), 2)
    task = linear.task(0)
    assert task.support.x.shape == (14, 8)  # shots 10 + 2 * 2
    assert (task.support.x[:, 7:] == 0).all() and (
        task.support.x[:, :7] != 0
    ).all()  # 5 + 2 active dimensions


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(curriculum="garg"), "--curriculum needs --curriculum-every"),
        (dict(curriculum_every=5), "--curriculum-every needs --curriculum"),
        (dict(curriculum="shots=2*3", curriculum_every=5), "is not NAME=START\\+STEP"),
        (dict(curriculum="ways=5+1", curriculum_every=5), "which these tasks do not have"),
        (dict(curriculum="dim=2+1", curriculum_every=5), "cannot change \\['dim'\\]"),
        (dict(curriculum="active=0+1", curriculum_every=5), "first stage .* is not valid: active must be"),
        (dict(curriculum="noise=-1+1", curriculum_every=5), "first stage .* is not valid: noise must be"),
        (dict(curriculum="shots=1+1,shots=2+1", curriculum_every=5), "names each setting once"),
    ],
)
def test_bad_curricula_are_refused_when_configured(flags, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.of(algorithm="lsa", dataset="linear", dim=4, **flags)


def test_a_fixed_head_refuses_a_curriculum_of_ways():
    with pytest.raises(ValueError, match="which these tasks do not have"):
        TrainConfig.of(
            algorithm="maml", dataset="omniglot", ways=5, curriculum="ways=2+1", curriculum_every=5
        )
    TrainConfig.of(algorithm="protonet", ways=10, curriculum="ways=5+1", curriculum_every=5)  # any ways
    with pytest.raises(ValueError, match="starts at shots=0; episodes need at least 1"):
        TrainConfig.of(algorithm="protonet", ways=10, curriculum="shots=0+1", curriculum_every=5)


def test_runs_from_before_general_curricula_still_load():
    """config.json of a run trained with --curriculum-every alone (Garg et al.'s schedule, then the only one)."""
    config = TrainConfig.of(
        stored=True, algorithm="lsa", dataset="linear", dim=8, shots=16, curriculum_every=3
    )
    assert config.curriculum == "active=5+1,shots=11+2"
    assert Curriculum.parse(config.curriculum, 3).values({"active": 8, "shots": 16}, 3) == {
        "active": 6,
        "shots": 13,
    }
    assert Curriculum.parse("noise=1e-3-1e-4", 1).values({"noise": 0.0}, 2) == {"noise": 1e-3 - 2e-4}


def test_episodes_follow_the_curriculum_of_ways_and_shots(tmp_path, one_thread):
    folder = write_image_folder(tmp_path / "images", classes=20, per_class=6)
    config = TrainConfig.of(algorithm="protonet", dataset="folder", data_root=str(folder), image_size=16, ways=5, shots=3, queries=2,
                            curriculum="ways=2+1,shots=1+1", curriculum_every=2, steps=10, val_every=0, hidden=8,
                            log_every=2)  # fmt: skip
    trainer = Trainer(config, tmp_path / "run", progress=False)
    for step, (ways, shots) in [(0, (2, 1)), (1, (2, 1)), (2, (3, 2)), (4, (4, 3)), (6, (5, 3)), (9, (5, 3))]:
        task = trainer.task(step)
        assert (
            task.ways == ways
            and task.support.x.shape[0] == ways * shots
            and task.query.x.shape[0] == ways * 2
        )
    trainer.run()
    rows = io.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["curriculum"] for r in rows] == [{"ways": 2, "shots": 1}, {"ways": 3, "shots": 2},
                                               {"ways": 4, "shots": 3}, {"ways": 5, "shots": 3},
                                               {"ways": 5, "shots": 3}]  # fmt: skip


def test_a_resumed_curriculum_run_ends_with_the_same_weights(tmp_path, one_thread):
    config = TrainConfig.of(algorithm="transformer", dataset="linear", dim=4, shots=10, queries=1, width=16, depth=1,
                            heads=2, max_points=12, tasks_per_step=4, steps=12, log_every=3, val_every=0,
                            curriculum="garg", curriculum_every=4, lr_schedule="constant", threads=1)  # fmt: skip
    assert config.route == "autograd"
    resume_ends_where_one_go_does(config, tmp_path, stop_at=6)  # stopped at step 6, mid-stage
    stored = json.loads((tmp_path / "half" / "config.json").read_text())["config"]
    assert stored["curriculum"] == "garg" and stored["curriculum_every"] == 4
    rows = io.read_jsonl(tmp_path / "half" / "metrics.jsonl")
    assert [r["curriculum"] for r in rows] == [
        {"active": 4, "shots": 10}
    ] * 4  # dim 4 < 5: the targets at once


def test_the_command_line_takes_a_curriculum(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    argv = ["train", "--algorithm", "lsa", "--dataset", "sinusoid", "--shots", "6", "--curriculum", "shots=2+2",
            "--curriculum-every", "2", "--steps", "6", "--tasks-per-step", "2", "--log-every", "2", "--val-every", "0",
            "--test-episodes", "5", "--quiet", "--run-dir", str(run)]  # fmt: skip
    assert main(argv) == 0
    assert [r["curriculum"]["shots"] for r in io.read_jsonl(run / "metrics.jsonl")] == [2, 4, 6]
    assert main([*argv[:-1], str(tmp_path / "bad"), "--curriculum", "amplitude=1+1"]) == 2
    assert "which these tasks do not have" in capsys.readouterr().err
