"""RL²: its inputs and memory, its advantages by hand, learning on 2-armed bandits, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import resume_ends_where_one_go_does
from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.rl2 import RL2
from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.models.policy import RecurrentPolicy
from fewshot.rl.bandits import Bandits
from fewshot.rl.evaluate import evaluate_bandits, model_player, paired, strategy, strategy_player
from fewshot.train import Trainer


def test_the_gru_remembers_earlier_rewards_across_the_episodes_of_a_trial(one_thread):
    torch.manual_seed(0)
    model = RecurrentPolicy(0, 3, 16)
    family = Bandits(arms=3, horizon=8, seed=0)
    batch = family.batch(range(4))
    other = dataclasses.replace(batch, rewards=batch.rewards.clone())
    other.rewards[:, 0] = 1 - other.rewards[:, 0]  # only the first pull's rewards differ
    a, b = (
        RL2().rollout(model, parameters_of(model), batch),
        RL2().rollout(model, parameters_of(model), other),
    )
    assert torch.equal(a.actions[:, 0], b.actions[:, 0])  # the first choice knows nothing yet
    assert not torch.allclose(
        a.values[:, 5], b.values[:, 5]
    )  # five pulls later, the first reward still counts
    assert a.logp.shape == a.entropy.shape == a.values.shape == (4, 8)
    assert torch.equal(a.rewards, batch.rewards.gather(2, a.actions[..., None])[..., 0])


def test_advantages_are_gae_by_hand():
    rl2 = RL2(gamma=0.9, gae_lambda=0.5)
    r, v = torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.4]])
    d = [1 + 0.9 * 0.2 - 0.5, 0 + 0.9 * 0.4 - 0.2, 1 - 0.4]  # TD errors; the trial ends after the last pull
    a2 = d[2]
    a1 = d[1] + 0.45 * a2
    a0 = d[0] + 0.45 * a1
    assert rl2.advantages(r, v)[0].tolist() == pytest.approx([a0, a1, a2])
    # lambda = 1, gamma = 1: the return to go minus the value
    assert RL2(gamma=1, gae_lambda=1).advantages(r, v)[0].tolist() == pytest.approx([1.5, 0.8, 0.6])


def test_the_entropy_bonus_anneals_linearly():
    rl2 = RL2(entropy=0.1, entropy_final=0.0, entropy_steps=100)
    assert rl2.at_step(0).entropy_coef() == 0.1
    assert rl2.at_step(50).entropy_coef() == pytest.approx(0.05)
    assert rl2.at_step(500).entropy_coef() == 0.0 and rl2.entropy_coef() == 0.1  # test time: unused


@pytest.mark.slow
def test_rl2_learns_to_beat_random_play_on_two_armed_bandits_of_horizon_10(tmp_path, one_thread):
    """1000 steps of 64 trials (~10 s): RL² reaches ~5.9 against random's ~5.1 (Gittins ~6.1)."""
    config = TrainConfig.of(algorithm="rl2", dataset="bandit", arms=2, horizon=10, steps=1000, tasks_per_step=64,
                            hidden=64, outer_lr=3e-3, entropy=0.01, entropy_steps=1000, lr_schedule="constant",
                            val_every=0, log_every=500, seed=0)  # fmt: skip
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run()
    test = Bandits(arms=2, horizon=10, seed=99)
    algorithm = config.build_algorithm(testing=True)
    learned = evaluate_bandits(model_player(algorithm, trainer.model, trainer.params()), test, 1000)
    chance = evaluate_bandits(strategy_player(strategy("random")), test, 1000)
    diff, ci = paired(learned, chance)
    assert diff - ci > 0.3, (learned.mean, chance.mean)


def test_train_eval_compare_and_resume_from_the_cli(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    argv = ["train", "--algorithm", "rl2", "--dataset", "bandit", "--arms", "3", "--horizon", "6", "--steps", "20",
            "--tasks-per-step", "8", "--hidden", "8", "--val-every", "10", "--val-episodes", "20", "--log-every",
            "10", "--test-episodes", "30", "--run-dir", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3-armed bandits, horizon 6" in out and "testing on held-out bandits" in out
    result = json.loads((run / "eval.json").read_text())[0]["results"][0]
    assert result["metric"] == "total reward" and len(result["totals"]) == 30
    assert main(["eval", str(run), "--episodes", "30", "--baselines", "--quiet"]) == 0
    records = json.loads((run / "eval.json").read_text())
    assert records[-1]["results"][0]["mean"] == result["mean"]  # the checkpoint plays as trained
    assert [r["method"] for r in records[-1]["results"]][1:] == ["random", "greedy", "eps-greedy", "ucb1",
                                                                 "thompson", "gittins"]  # fmt: skip
    out_dir = tmp_path / "cmp"
    assert main(["compare", str(run), "ucb1:0.2", "gittins", "--episodes", "30", "--out", str(out_dir), "--quiet",
                 "--no-plots"]) == 0  # fmt: skip
    table = json.loads((out_dir / "compare_bandit_3a6n.json").read_text())
    assert [r["method"] for r in table["rows"]] == [str(run), "ucb1:0.2", "gittins"]
    assert table["rows"][0]["totals"] == records[-1]["results"][0]["totals"]  # the same test bandits

    capsys.readouterr()
    assert main(["eval", str(run), "--ways", "5", "--quiet"]) == 2
    assert "--ways, --shots, --queries and --attack are for classifiers" in capsys.readouterr().err
    assert main(["eval", str(run), "--episodes", "30", "--seed", "1", "--quiet"]) == 0  # other bandits
    assert json.loads((run / "eval.json").read_text())[-1]["results"][0]["totals"] != result["totals"]
    assert main(["report", str(run), "--quiet"]) == 0  # training curve of total reward per trial
    assert (run / "report" / "training.png").is_file()
    capsys.readouterr()
    assert main(["predict", str(run), "--support", str(tmp_path), "--query", str(tmp_path)]) == 2
    assert "this run plays bandits" in capsys.readouterr().err

    # resume: stopped after step 10, resumed: the same weights as 20 steps in one go
    config = TrainConfig.of(algorithm="rl2", dataset="bandit", arms=3, horizon=6, steps=20, tasks_per_step=8,
                            hidden=8, val_every=0, log_every=10)  # fmt: skip
    resume_ends_where_one_go_does(config, tmp_path, stop_at=10)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algorithm", "rl2", "--dataset", "bandit", "--arms", "1"], "at least 2 arms"),
        (["--algorithm", "rl2", "--dataset", "dependent-bandit", "--arms", "3"], "has 2 arms"),
        (["--algorithm", "rl2", "--dataset", "bandit", "--arm-prior", "gauss"], "unknown arm prior"),
        (["--algorithm", "rl2", "--dataset", "bandit", "--gamma", "1.5"], "gamma must be between 0 and 1"),
        (["--algorithm", "protonet", "--dataset", "bandit"], "protonet does not work on bandit"),
        (["--algorithm", "rl2", "--dataset", "omniglot"], "rl2 does not work on images"),
        (["--algorithm", "maml", "--dataset", "sinusoid", "--arms", "3"], "arms is a bandit setting"),
        (["--algorithm", "maml", "--dataset", "sinusoid", "--horizon", "3"], "horizon is a bandit setting"),
        (
            ["--algorithm", "maml-rl", "--dataset", "bandit", "--horizon", "3", "--inner-steps", "3"],
            "use --inner-steps 2 or fewer",
        ),
    ],
)
def test_bad_bandit_runs_are_refused_with_exit_2(tmp_path, capsys, argv, message):
    assert main(["train", *argv, "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_compare_refuses_a_bandit_run_beside_a_missing_one(tmp_path, capsys):
    assert main(["train", "--algorithm", "rl2", "--dataset", "bandit", "--arms", "2", "--horizon", "4", "--steps",
                 "2", "--tasks-per-step", "2", "--hidden", "4", "--val-every", "0", "--test-episodes", "0",
                 "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "run"), "nowhere", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "neither a run directory nor a bandit strategy" in capsys.readouterr().err
    for methods, said in [(["ucb1", "thompson"], "give a bandit run directory too"),
                          ([str(tmp_path / "run"), "ucb1", "baselines"], "ucb1 given twice")]:  # fmt: skip
        assert main(["compare", *methods, "--out", str(tmp_path / "c"), "--quiet"]) == 2
        assert said in capsys.readouterr().err
