"""In-context learning: function-class tasks, linear self-attention as gradient descent, the prompt transformer's
causality, and the closed-form baselines (Garg et al. 2022; von Oswald et al. 2023)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fewshot.algorithms.base import parameters_of, task_loss
from fewshot.algorithms.lsa import InContext
from fewshot.algorithms.transformer import PromptLearner
from fewshot.models.attention import LinearSelfAttention, PromptTransformer, gradient_descent_layers
from fewshot.regression_baselines import Averaging, GradientDescent, LeastSquares, NearestNeighbours, Ridge
from fewshot.tasks.episodes import Split
from fewshot.tasks.linear import FunctionTasks

NONE: dict = {}


def fit(estimator, support: Split, x: torch.Tensor) -> torch.Tensor:
    return estimator.predict(nn.Identity(), NONE, estimator.adapt(nn.Identity(), NONE, support, 0), x)


def test_function_tasks_are_seeded_per_task_and_respect_their_class():
    tasks = FunctionTasks(dim=6, shots=8, queries=3, seed=4)
    a, b = tasks.task(7), tasks.task(7)
    assert torch.equal(a.support.x, b.support.x) and torch.equal(a.query.y, b.query.y)
    assert not torch.equal(tasks.task(8).support.x, a.support.x)
    (w,) = tasks.function_of(7)
    torch.testing.assert_close(a.support.y.double(), a.support.x.double() @ w, rtol=1e-6, atol=1e-5)
    sparse = FunctionTasks(dim=6, function="sparse", sparsity=2)
    assert all(int((sparse.function_of(i)[0] != 0).sum()) == 2 for i in range(20))
    small = FunctionTasks(dim=6, shots=8, active=3).task(0)
    assert (small.support.x[:, 3:] == 0).all() and (small.support.x[:, :3] != 0).all()
    # the active coordinates do not change the function's other draws: w's first entries stay the same
    assert torch.equal(
        FunctionTasks(dim=6, active=3).function_of(0)[0][:3], FunctionTasks(dim=6).function_of(0)[0][:3]
    )
    relu = FunctionTasks(dim=10, shots=400, queries=1, function="relu")
    ys = torch.cat([relu.task(i).support.y for i in range(20)])
    assert 5 < ys.double().var().item() < 20  # variance about d = 10, as w . x has
    noisy = FunctionTasks(dim=4, shots=50, noise=0.5).task(0)
    residual = noisy.support.y.double() - noisy.support.x.double() @ FunctionTasks(dim=4).function_of(0)[0]
    assert 0.3 < residual.std().item() < 0.7
    with pytest.raises(ValueError, match="unknown function class 'cubic'"):
        FunctionTasks(function="cubic")


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_constructed_linear_self_attention_is_gradient_descent(layers):
    """von Oswald et al., proposition 1: K constructed layers predict what K steps of GD from w = 0 predict."""
    task = FunctionTasks(dim=5, shots=12, queries=6, noise=0.1, dtype=torch.float64, seed=1).task(3)
    model = LinearSelfAttention(5, layers).double()
    params = gradient_descent_layers(5, lr=0.3, layers=layers)
    learner = InContext()
    lsa = learner.predict(model, params, learner.adapt(model, params, task.support, 0), task.query.x)
    gd = fit(GradientDescent(lr=0.3, steps=layers), task.support, task.query.x)
    torch.testing.assert_close(lsa, gd, rtol=0, atol=1e-10)
    assert lsa.abs().max() > 0.1  # not trivially zero


def test_queries_are_read_against_the_context_alone():
    torch.manual_seed(0)
    model = LinearSelfAttention(4, 2).double()
    x, y, q = (
        torch.randn(1, 7, 4, dtype=torch.float64),
        torch.randn(1, 7, dtype=torch.float64),
        torch.randn(1, 3, 4, dtype=torch.float64),
    )
    together = model(x, y, q)
    alone = torch.cat([model(x, y, q[:, i : i + 1]) for i in range(3)], 1)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)


def test_prompt_transformer_is_causal():
    torch.manual_seed(0)
    model = PromptTransformer(3, width=32, depth=2, heads=4, max_points=20).double()
    x, y = torch.randn(2, 8, 3, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    before = model(x, y)
    later_x, later_y = x.clone(), y.clone()
    later_x[:, 5:] += 1.0  # points 6.. change
    later_y[:, 4:] -= 2.0  # labels 5.. change
    after = model(later_x, later_y)
    torch.testing.assert_close(
        after[:, :5], before[:, :5], rtol=0, atol=1e-12
    )  # x_1..x_5 read y_1..y_4 at most
    assert (after[:, 5:] - before[:, 5:]).abs().max() > 1e-3
    q = torch.randn(2, 3, 3, dtype=torch.float64)
    each = model(x, y, q)  # (2, 3): every query after the whole context
    last = model(torch.cat([x, q[:, 2:]], 1), torch.cat([y, torch.zeros(2, 1, dtype=torch.float64)], 1))[
        :, -1
    ]
    torch.testing.assert_close(each[:, 2], last, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="longer than this transformer's max_points=20"):
        model(torch.randn(1, 21, 3, dtype=torch.float64), torch.randn(1, 21, dtype=torch.float64))


def test_baselines_equal_their_closed_forms():
    tasks = FunctionTasks(dim=6, shots=15, queries=5, noise=0.2, dtype=torch.float64, seed=2)
    t = tasks.task(0)
    x, y, q = t.support.x, t.support.y, t.query.x
    torch.testing.assert_close(fit(LeastSquares(), t.support, q), q @ (torch.linalg.pinv(x) @ y))
    lam = 0.04  # noise^2: the posterior mean for w ~ N(0, I)
    ridge = q @ torch.linalg.inv(x.T @ x + lam * torch.eye(6, dtype=torch.float64)) @ x.T @ y
    torch.testing.assert_close(fit(Ridge(lam), t.support, q), ridge)
    torch.testing.assert_close(fit(Averaging(), t.support, q), q @ (x * y[:, None]).mean(0))
    gd_step = q @ (0.1 * x.T @ y / len(x))
    torch.testing.assert_close(fit(GradientDescent(lr=0.1, steps=1), t.support, q), gd_step)
    d = torch.cdist(q, x)
    knn = torch.stack([y[d[i].argsort()[:3]].mean() for i in range(len(q))])
    torch.testing.assert_close(fit(NearestNeighbours(3), t.support, q), knn)
    # noiseless, k >= d: least squares recovers w exactly; with k < d it is the minimum-norm solution
    exact = FunctionTasks(dim=6, shots=10, queries=4, dtype=torch.float64).task(1)
    torch.testing.assert_close(
        fit(LeastSquares(), exact.support, exact.query.x), exact.query.y, rtol=1e-9, atol=1e-9
    )
    few = FunctionTasks(dim=6, shots=3, queries=4, dtype=torch.float64).task(1)
    w = torch.linalg.pinv(few.support.x) @ few.support.y
    torch.testing.assert_close(few.support.x @ w, few.support.y)  # interpolates the examples
    empty = Split(torch.zeros(0, 6, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    assert (
        fit(LeastSquares(), empty, q).abs().max() == 0 and fit(NearestNeighbours(), empty, q).abs().max() == 0
    )


def test_lsa_trained_from_random_weights_learns_linear_functions():
    """A few hundred Adam steps on d = 3 linear prompts bring one LSA layer's error far below its start."""
    torch.manual_seed(0)
    tasks = FunctionTasks(dim=3, shots=20, queries=5, seed=9)
    model = LinearSelfAttention(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def error(first: int) -> float:
        with torch.no_grad():
            return sum(task_loss(InContext(), model, parameters_of(model), tasks.task(i))[0].item()
                       for i in range(first, first + 200)) / 200  # fmt: skip

    start = error(1_000_000)
    for step in range(300):
        opt.zero_grad()
        sum(
            task_loss(InContext(), model, parameters_of(model), tasks.task(8 * step + j))[0] for j in range(8)
        ).backward()
        opt.step()
    end = error(1_000_000)
    assert end < 0.5 * start, (start, end)


def test_prompt_learner_trains_on_every_prefix():
    torch.manual_seed(0)
    model = PromptTransformer(2, width=16, depth=1, heads=2, max_points=10)
    task = FunctionTasks(dim=2, shots=4, queries=2).task(0)
    loss, query_out = task_loss(PromptLearner(), model, parameters_of(model), task)
    x = torch.cat([task.support.x, task.query.x])[None]
    y = torch.cat([task.support.y, task.query.y])[None]
    every = functional_call(model, parameters_of(model), (x, y))[0]
    assert math.isclose(loss.item(), ((every - y[0]) ** 2).mean().item(), rel_tol=1e-6)
    torch.testing.assert_close(query_out, every[4:])


def test_transformer_and_lsa_train_and_test_on_linear_prompts_from_the_command_line(
    tmp_path, capsys, one_thread
):
    from fewshot.cli import main

    for algorithm in (
        ["lsa"],
        ["transformer", "--width", "16", "--depth", "1", "--heads", "2", "--max-points", "12"],
    ):
        argv = ["train", "--algorithm", *algorithm, "--dataset", "linear", "--dim", "3", "--shots", "8", "--queries",
                "2", "--noise", "0.1", "--curriculum", "garg", "--curriculum-every", "2", "--steps", "6", "--tasks-per-step", "4",
                "--val-every", "3", "--val-episodes", "5", "--test-episodes", "10", "--test-shots", "2", "6",
                "--quiet", "--run-dir", str(tmp_path / algorithm[0])]  # fmt: skip
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "2-shot regression: MSE" in out and "6-shot regression: MSE" in out and "held-out tasks" in out


def test_batched_losses_equal_the_mean_of_the_task_losses():
    """The autograd route's one forward pass over a step's prompts gives the mean of the per-task losses."""
    torch.manual_seed(0)
    tasks = [FunctionTasks(dim=3, shots=6, queries=2, seed=4).task(i) for i in range(5)]
    for algorithm, model in ((InContext(), LinearSelfAttention(3, 2)),
                             (PromptLearner(), PromptTransformer(3, width=16, depth=1, heads=2, max_points=8))):  # fmt: skip
        params = parameters_of(model)
        loss, outs = algorithm.batch_loss(model, params, tasks)
        one = [algorithm.task_loss(model, params, t) for t in tasks]
        torch.testing.assert_close(loss, torch.stack([o[0] for o in one]).mean())
        for out, (_, expected) in zip(outs, one, strict=True):
            torch.testing.assert_close(out, expected)


def test_tuned_gradient_descent_takes_the_best_learning_rate():
    from fewshot.regression_baselines import tuned_gradient_descent

    family = FunctionTasks(dim=4, shots=6, queries=1, inputs="uniform", seed=3)
    tuning = [
        family.__class__(**{**family.__dict__, "seed": family.seed + 7_000_001}).task(i) for i in range(300)
    ]

    def error(gd) -> float:
        return sum(((gd.predict(None, {}, gd.adapt(None, {}, t.support, 0), t.query.x) - t.query.y) ** 2).item()
                   for t in tuning)  # fmt: skip

    for steps in (1, 2):
        best = tuned_gradient_descent(family, steps, prompts=300)
        assert best.steps == steps
        for factor in (0.8, 0.95, 1.05, 1.25):  # a minimum on the prompts it was tuned on
            assert error(best) <= error(GradientDescent(best.lr * factor, steps)) + 1e-9


def test_eval_scores_the_baselines_on_the_same_prompts(tmp_path, capsys, one_thread):
    from fewshot.cli import main

    run = str(tmp_path / "run")
    assert main(["train", "--algorithm", "lsa", "--dataset", "linear", "--dim", "3", "--shots", "6", "--queries",
                 "1", "--steps", "3", "--val-every", "0", "--test-episodes", "5", "--quiet", "--run-dir", run]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", run, "--shots", "2", "5", "--episodes", "40", "--baselines", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("least squares", "3-nearest neighbours", "averaging", "gradient descent, 1 step (best lr)"):
        assert sum(line.strip().startswith(name + ": ") for line in lines) == 2, (name, lines)
    ls_at_5 = next(line for line in lines if line.strip().startswith("least squares: 5-shot"))
    assert "MSE 0.0000 +- 0.0000" in ls_at_5  # 5 examples of a 3-d linear function: solved exactly


def test_compare_puts_regression_runs_beside_the_baselines_on_the_same_tasks(tmp_path, capsys, one_thread):
    import json

    from fewshot.cli import main

    run = str(tmp_path / "run")
    assert main(["train", "--algorithm", "lsa", "--dataset", "linear", "--dim", "3", "--shots", "6", "--queries",
                 "1", "--steps", "3", "--val-every", "0", "--test-episodes", "5", "--quiet", "--run-dir", run]) == 0  # fmt: skip
    out = tmp_path / "cmp"
    argv = ["compare", f"mine={run}", "ls=least-squares", "gd1=gd", "baselines", "--shots", "0", "5", "--episodes", "50",
            "--quiet", "--no-plots", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    at5 = json.loads((out / "compare_regression_5shot.json").read_text())
    rows = {r["method"]: r for r in at5["rows"]}
    assert list(rows)[:3] == ["mine", "ls", "gd1"]
    assert rows["ls"]["errors"] == rows["least squares"]["errors"]  # the same estimator on the same tasks
    assert at5["best"] == "ls" and rows["least squares"]["mse"] < 1e-10  # 5 examples of a 3-d line
    assert rows["averaging"]["errors"] != rows["mine"]["errors"] and len(rows["mine"]["errors"]) == 50
    at0 = json.loads((out / "compare_regression_0shot.json").read_text())
    errors = [r["errors"] for r in at0["rows"] if r["method"] != "mine"]
    assert all(e == errors[0] for e in errors)  # no examples: every estimator predicts 0, on the same tasks
    assert (out / "curve_error.json").exists()
    capsys.readouterr()
    assert main(["compare", run, "ridge", "--shots", "2", "--quiet", "--out", str(tmp_path / "bad")]) == 2
    assert "no label noise" in capsys.readouterr().err
    assert (
        main(["compare", run, "gd", "baselines", "--shots", "2", "--quiet", "--out", str(tmp_path / "bad")])
        == 2
    )
    assert "two methods share a label" in capsys.readouterr().err
