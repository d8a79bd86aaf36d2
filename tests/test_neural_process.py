"""Neural processes (Garnelo et al. 2018; Kim et al. 2019) and Gaussian-process tasks."""

from __future__ import annotations

import pytest
import torch

from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.neural_process import NeuralProcessLearner, gaussian_nll
from fewshot.models.neural_process import NeuralProcess
from fewshot.tasks.episodes import Split
from fewshot.tasks.gp import GaussianProcess


def test_gaussian_process_tasks_are_seeded_per_task_and_have_the_kernels_variance():
    family = GaussianProcess(shots=5, queries=5, seed=3)
    assert torch.equal(family.task(7).support.y, family.task(7).support.y)
    assert not torch.equal(family.task(7).support.y, family.task(8).support.y)
    assert not torch.equal(
        family.task(7).support.y, GaussianProcess(shots=5, queries=5, seed=4).task(7).support.y
    )
    y = torch.cat([family.task(i).query.y for i in range(2000)]).double()
    assert abs(y.var().item() - (1 + 0.02**2)) < 0.08  # scale^2 + noise^2, whatever the inputs
    # the exact posterior beats the prior: it is what a neural process approximates
    task = GaussianProcess(shots=15, queries=30, seed=1).task(0)
    mean, sd = family.posterior(task.support, task.query.x)
    prior = gaussian_nll(torch.zeros_like(task.query.y), torch.ones_like(task.query.y), task.query.y)
    assert gaussian_nll(mean.float(), sd.float(), task.query.y) < prior - 0.5


def test_gaussian_nll_is_the_normal_log_likelihood():
    g = torch.Generator().manual_seed(0)
    mean, y = torch.randn(7, 1, generator=g), torch.randn(7, 1, generator=g)
    sd = torch.rand(7, 1, generator=g) + 0.1
    expected = -torch.distributions.Normal(mean, sd).log_prob(y).mean()
    torch.testing.assert_close(gaussian_nll(mean, sd, y), expected)


@pytest.mark.parametrize("attention", [False, True])
def test_predictions_ignore_the_order_of_the_context_and_the_other_targets(attention):
    torch.manual_seed(0)
    model = NeuralProcess(1, 1, width=16, attention=attention, heads=4).double()
    params = parameters_of(model)
    task = GaussianProcess(shots=8, queries=6, dtype=torch.float64).task(0)
    np_ = NeuralProcessLearner()
    out = np_.predict(model, params, np_.adapt(model, params, task.support, 0), task.query.x)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    shuffled = Split(task.support.x[order], task.support.y[order])
    again = np_.predict(model, params, np_.adapt(model, params, shuffled, 0), task.query.x)
    torch.testing.assert_close(out, again, rtol=1e-10, atol=1e-12)
    alone = np_.predict(model, params, np_.adapt(model, params, task.support, 0), task.query.x[2:3])
    torch.testing.assert_close(alone, out[2:3], rtol=1e-10, atol=1e-12)
    assert out.shape == task.query.y.shape
    empty = np_.adapt(model, params, Split(task.support.x[:0], task.support.y[:0]), 0)
    assert torch.isfinite(
        np_.predict(model, params, empty, task.query.x)
    ).all()  # no context: the prior guess


def test_neural_processes_learn_gaussian_process_curves_and_attention_helps(one_thread):
    """500 Adam steps take the query log-likelihood well above the untrained network's; the attentive one
    fits far better than the conditional one (Kim et al.'s finding: CNPs underfit)."""
    held_out = [GaussianProcess(shots=10, queries=10, seed=99).task(i) for i in range(100)]
    np_ = NeuralProcessLearner()
    end = {}
    for attention in (False, True):
        torch.manual_seed(0)
        family = GaussianProcess(shots=10, queries=10, seed=5)
        model = NeuralProcess(1, 1, width=32, attention=attention, heads=4)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)

        def nll(model: NeuralProcess) -> float:
            with torch.no_grad():
                return np_.batch_loss(model, parameters_of(model), held_out)[0].item()

        start = nll(model)
        for step in range(500):
            opt.zero_grad()
            tasks = [family.task(16 * step + j) for j in range(16)]
            np_.batch_loss(model, parameters_of(model), tasks)[0].backward()
            opt.step()
        end[attention] = nll(model)
        assert end[attention] < start - 0.3, (attention, start, end)  # nats per target; N(0, 1) scores 1.42
    assert end[True] < 0.8 and end[True] < end[False] - 0.2, end


def test_neural_processes_from_the_command_line(tmp_path, capsys, one_thread):
    from fewshot.cli import main

    for algorithm, dataset in (("cnp", "gp"), ("anp", "sinusoid")):
        run = str(tmp_path / algorithm)
        assert main(["train", "--algorithm", algorithm, "--dataset", dataset, "--width", "16", "--shots", "5",
                     "--queries", "5", "--tasks-per-step", "4", "--steps", "4", "--val-every", "2", "--val-episodes",
                     "5", "--test-episodes", "10", "--test-shots", "5", "--quiet", "--run-dir", run]) == 0  # fmt: skip
        assert "5-shot regression: MSE" in capsys.readouterr().out
        assert main(["compare", run, "least-squares", "--shots", "3", "--episodes", "10", "--quiet", "--no-plots",
                     "--out", str(tmp_path / f"cmp-{algorithm}")]) == 0  # fmt: skip
        table = (tmp_path / f"cmp-{algorithm}" / "compare_regression_3shot.md").read_text()
        assert f"| {run} |" in table and "| least squares |" in table
