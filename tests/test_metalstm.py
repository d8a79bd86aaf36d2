"""The meta-learner LSTM (Ravi & Larochelle 2017) against first principles: one update worked by hand, plain SGD
as the special case f = 1, i = lr, its meta-gradient against float64 finite differences of the objective it
defines (the learner's loss and gradient are constant inputs), every route agreeing, and learning end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fewshot import io
from fewshot.algorithms.base import loss_fn, parameters_of, task_loss
from fewshot.algorithms.maml import fomaml, inner_loop
from fewshot.algorithms.metalstm import PREFIX, MetaLSTM, meta_step, preprocess
from fewshot.algorithms.routes import meta_gradient, task_at
from fewshot.cli import main
from fewshot.models import Conv4
from fewshot.tasks.episodes import Task
from fewshot.train import TrainConfig, Trainer
from test_maml import image_tasks as maml_image_tasks
from test_mamlpp import vector_tasks

pytestmark = pytest.mark.usefixtures(
    "one_thread"
)  # tiny models: one thread is faster, and leaves a core free


def image_tasks(n: int = 3, ways: int = 2, shots: int = 2, queries: int = 2, size: int = 16) -> Task:
    return maml_image_tasks(n, ways, shots, queries, size)  # test_maml's tasks, two shots by default


def bn_mlp() -> nn.Module:
    """A smooth (tanh) float64 classifier with a BatchNorm on batch statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Tanh(), nn.Linear(4, 2)
    )
    return model.double()


def conv4() -> nn.Module:
    torch.manual_seed(0)
    return Conv4(hidden=4, out_features=2, track_running_stats=False, image_size=16).double()


def lively(algo: MetaLSTM, model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Model and meta-learner weights, the latter larger than at initialisation, so that every input of the
    gates (x_t, theta_{t-1}, the previous gate) matters, and with gates near 0.7 (forget) and 0.3 (input)."""
    params = {k: v.detach().clone() for k, v in (parameters_of(model) | algo.extra_params(model)).items()}
    g = torch.Generator().manual_seed(seed)
    for k in params:
        if k.startswith(PREFIX):
            params[k] = 0.5 * torch.randn(params[k].shape, generator=g, dtype=torch.float64)
    params[PREFIX + "forget.bias"] = torch.tensor(1.0, dtype=torch.float64)
    params[PREFIX + "input.bias"] = torch.tensor(-1.0, dtype=torch.float64)
    return params


def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


def test_preprocessing_is_andrychowicz_et_al():
    x = torch.tensor([0.0, 1e-6, -1e-5, 0.5, -3.0, math.exp(-10)], dtype=torch.float64)
    want = [(-1.0, 0.0), (-1.0, 1e-6 * math.exp(10)), (-1.0, -1e-5 * math.exp(10)),
            (math.log(0.5) / 10, 1.0), (math.log(3.0) / 10, -1.0), (-1.0, 1.0)]  # fmt: skip
    assert torch.allclose(preprocess(x), torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=1e-15)


def test_two_updates_equal_a_hand_computation():
    """Linear learner (8 weights), hidden 3, two updates: every gate and cell computed coordinate by coordinate
    in Python floats, with the gradient of the softmax cross-entropy in closed form."""
    torch.manual_seed(0)
    model, hidden = nn.Linear(3, 2).double(), 3
    algo = MetaLSTM(inner_steps=2, hidden=hidden)
    params = lively(algo, model)
    task = task_at(vector_tasks(n=1), 0)
    x, y = task.support.x, task.support.y
    meta = {k[len(PREFIX) :]: v.tolist() for k, v in params.items() if k.startswith(PREFIX)}

    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    def prep(v: float) -> tuple[float, float]:  # Andrychowicz et al.'s preprocessing, p = 10
        if abs(v) >= math.exp(-10):
            return math.log(abs(v)) / 10, math.copysign(1.0, v)
        return -1.0, math.exp(10) * v

    weight, bias = (
        params["weight"].clone(),
        params["bias"].clone(),
    )  # theta = [weight (2, 3) row-major, bias (2,)]
    n = 8
    h, c, f_prev, i_prev = (
        [[0.0] * hidden for _ in range(n)],
        [[0.0] * hidden for _ in range(n)],
        [0.0] * n,
        [0.0] * n,
    )
    for _ in range(2):
        p = torch.softmax(x @ weight.T + bias, -1)
        loss = -p[torch.arange(len(y)), y].log().mean().item()
        d = (p - nn.functional.one_hot(y, 2)) / len(y)  # dL/dlogits of the mean cross-entropy
        grad = torch.cat([(d.T @ x).reshape(-1), d.sum(0)]).tolist()
        theta = torch.cat([weight.reshape(-1), bias]).tolist()
        new = []
        for j in range(n):
            inputs = [*prep(loss), *prep(grad[j]), *h[j]]
            z = [sum(inputs[m] * meta["lstm.weight"][m][k] for m in range(4 + hidden)) + meta["lstm.bias"][k]
                 for k in range(4 * hidden)]  # fmt: skip
            for k in range(hidden):  # gates in the order input, forget, output, cell
                c[j][k] = sig(z[hidden + k]) * c[j][k] + sig(z[k]) * math.tanh(z[3 * hidden + k])
                h[j][k] = sig(z[2 * hidden + k]) * math.tanh(c[j][k])
            wf, wi = meta["forget.weight"], meta["input.weight"]
            f_prev[j] = sig(
                sum(h[j][k] * wf[k] for k in range(hidden))
                + theta[j] * wf[hidden]
                + f_prev[j] * wf[hidden + 1]
                + meta["forget.bias"]
            )  # noqa: E501
            i_prev[j] = sig(
                sum(h[j][k] * wi[k] for k in range(hidden))
                + theta[j] * wi[hidden]
                + i_prev[j] * wi[hidden + 1]
                + meta["input.bias"]
            )  # noqa: E501
            new.append(f_prev[j] * theta[j] - i_prev[j] * grad[j])
        weight, bias = (
            torch.tensor(new[:6], dtype=torch.float64).view(2, 3),
            torch.tensor(new[6:], dtype=torch.float64),
        )
        assert 0.05 < min(i_prev) and max(f_prev) < 0.95  # the gates are far from 0 and 1: a real test

    fast = algo.adapt(model, params, task.support, 2)
    assert torch.allclose(fast["weight"], weight, rtol=1e-12, atol=1e-14)
    assert torch.allclose(fast["bias"], bias, rtol=1e-12, atol=1e-14)


def test_forget_gate_one_and_input_gate_lr_is_plain_sgd():
    """With zero gate weights the gates are sigmoid(bias): sigmoid(40) is exactly 1.0 in float64, and the input
    gate is whatever sigmoid(b_I) is; the updates are then SGD steps with that step size (conv4, BatchNorm)."""
    model, tasks = conv4(), image_tasks(n=1)
    task = task_at(tasks, 0)
    algo = MetaLSTM(inner_steps=3, hidden=4)
    params = {k: v.detach() for k, v in (parameters_of(model) | algo.extra_params(model)).items()}
    params[PREFIX + "forget.weight"] = torch.zeros_like(params[PREFIX + "forget.weight"])
    params[PREFIX + "input.weight"] = torch.zeros_like(params[PREFIX + "input.weight"])
    params[PREFIX + "forget.bias"] = torch.tensor(40.0, dtype=torch.float64)
    params[PREFIX + "input.bias"] = torch.tensor(math.log(0.1 / 0.9), dtype=torch.float64)  # logit(0.1)
    assert torch.sigmoid(params[PREFIX + "forget.bias"]).item() == 1.0
    lr = torch.sigmoid(params[PREFIX + "input.bias"]).item()
    assert lr == pytest.approx(0.1, rel=1e-14)

    fast = algo.adapt(model, params, task.support, 2)
    model_params = parameters_of(model)
    sgd = inner_loop(
        model, model_params, task.support, 2, steps=3, lrs=lr, adapted=lambda n: True, first_order=True
    )
    assert fast.keys() == sgd.keys()
    for k in sgd:
        assert torch.allclose(fast[k], sgd[k], rtol=1e-12, atol=1e-14), k
    # and, the learner's gradient being a constant, the meta-gradient of the initial weights is first-order
    # MAML's: d theta_T / d theta_0 = f^T = 1 (the gates' derivative f (1 - f) is exactly 0)
    grads, _ = algo.task_gradient(model, params, task)
    fo, _ = fomaml(inner_lr=lr, inner_steps=3).task_gradient(model, model_params, task)
    for k in fo:
        assert torch.allclose(grads[k], fo[k], rtol=1e-10, atol=1e-13), k


def test_meta_gradient_equals_finite_differences_of_the_defined_objective():
    """The objective treats the learner's loss and gradient at each update as constants. Recorded once at the
    base point, they define a function of the meta-learner's and the initial weights alone; its central
    differences (float64) must equal autograd's meta-gradient through the algorithm."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Tanh(), nn.Linear(4, 2)
    )
    model = model.double()
    algo = MetaLSTM(inner_steps=3, hidden=4)
    params, task = lively(algo, model, seed=2), task_at(vector_tasks(n=1), 0)
    names = [n for n, _ in model.named_parameters()]
    meta_of = lambda p: {k[len(PREFIX) :]: v for k, v in p.items() if k.startswith(PREFIX)}  # noqa: E731

    def unflatten(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = theta.split([params[n].numel() for n in names])
        return {n: piece.view(params[n].shape) for n, piece in zip(names, pieces, strict=True)}

    def run(p: dict[str, torch.Tensor], recorded: list | None) -> tuple[torch.Tensor, list]:
        theta = torch.cat([p[n].reshape(-1) for n in names])
        zeros = theta.new_zeros(len(theta), 4)
        state, seen = (zeros, zeros, 0 * theta, 0 * theta, theta), []
        for t in range(3):
            if recorded is None:  # the learner's loss and gradient at the current weights
                w = {k: v.detach().requires_grad_() for k, v in unflatten(state[-1]).items()}
                loss = loss_fn(torch.func.functional_call(model, w, task.support.x), task.support.y, 2)
                seen.append(
                    (
                        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(w.values()))]),
                        loss.detach(),
                    )
                )
            state = meta_step(meta_of(p), state, *(recorded or seen)[t])
        logits = torch.func.functional_call(model, unflatten(state[-1]), task.query.x)
        return loss_fn(logits, task.query.y, 2), seen

    base, recorded = run(params, None)
    assert base.item() == pytest.approx(task_loss(algo, model, params, task)[0].item(), rel=1e-14)
    grads, _ = algo.task_gradient(model, params, task)
    own = [("forget.bias", ()), ("input.bias", ()), ("input.weight", (4,)), ("forget.weight", (5,)),
           ("lstm.weight", (1, 9)), ("lstm.bias", (3,))]  # fmt: skip
    probes = [(PREFIX + k, i) for k, i in own] + [("0.weight", (2, 1)), ("1.weight", (3,)), ("3.bias", (0,))]
    eps = 1e-6
    for name, index in probes:
        plus, minus = dict(params), dict(params)
        plus[name], minus[name] = params[name].clone(), params[name].clone()
        plus[name][index] += eps
        minus[name][index] -= eps
        fd = (run(plus, recorded)[0].item() - run(minus, recorded)[0].item()) / (2 * eps)
        assert grads[name][index].item() == pytest.approx(fd, rel=1e-6, abs=1e-10), name
    # the constants matter: differences of the loss with the learner's gradient recomputed disagree
    plus, minus = dict(params), dict(params)
    plus["0.weight"], minus["0.weight"] = params["0.weight"].clone(), params["0.weight"].clone()
    plus["0.weight"][2, 1] += eps
    minus["0.weight"][2, 1] -= eps
    full = (run(plus, None)[0].item() - run(minus, None)[0].item()) / (2 * eps)
    assert abs(full - grads["0.weight"][2, 1].item()) > 1e-4 * abs(full)


def test_every_route_gives_the_same_meta_gradient_with_batchnorm():
    model, tasks = bn_mlp(), vector_tasks(n=3)
    algo = MetaLSTM(inner_steps=2, hidden=5)
    params = lively(algo, model)
    g_loop, l_loop = meta_gradient(algo, model, params, tasks, route="loop")
    for route, options in (("vmap", {}), ("threads", {"workers": 2})):
        g, loss = meta_gradient(algo, model, params, tasks, route=route, **options)
        assert torch.allclose(loss, l_loop, rtol=1e-12), route
        assert torch.allclose(flat(g), flat(g_loop), rtol=1e-9, atol=1e-13), route
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}  # the autograd route: one backward
    loss, _ = algo.batch_loss(model, leaves, [task_at(tasks, i) for i in range(3)])
    loss.backward()
    assert torch.allclose(flat({k: v.grad for k, v in leaves.items()}), flat(g_loop), rtol=1e-9, atol=1e-13)
    assert set(g_loop) == set(params) and all(g.abs().sum() > 0 for g in g_loop.values())


def test_missing_meta_weights_and_bad_settings_are_refused():
    model, task = conv4(), task_at(image_tasks(n=1), 0)
    with pytest.raises(ValueError, match="extra_params"):
        MetaLSTM().adapt(model, parameters_of(model), task.support, 2)
    with pytest.raises(ValueError, match="inner_steps must be at least 1"):
        TrainConfig.of(algorithm="metalstm", inner_steps=0)
    config = TrainConfig.of(algorithm="metalstm", inner_steps=8, test_inner_steps=3, lstm_hidden=7)
    assert config.build_algorithm() == MetaLSTM(8, 7)
    assert config.build_algorithm(testing=True) == MetaLSTM(3, 7)


def test_learns_from_the_cli_evaluates_and_resumes(tmp_path, capsys):
    """3-way 2-shot episodes of 8-d Gaussian clusters, labels drawn anew in every episode: only adaptation helps.
    150 episodes lift the test accuracy from chance (1/3) to ~85-90% (seeds 0-2)."""
    g = np.random.default_rng(0)
    means = g.normal(0, 1, size=(40, 8))
    x = np.concatenate([g.normal(m, 0.3, size=(10, 8)) for m in means]).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=np.repeat(np.arange(40), 10))
    run = tmp_path / "run"
    argv = ["train", "--algorithm", "metalstm", "--dataset", "table", "--data-root", str(tmp_path / "t.npz"),
            "--ways", "3", "--shots", "2", "--queries", "3", "--hidden", "16", "--outer-lr", "0.003",
            "--lr-schedule", "constant", "--steps", "150", "--val-every", "50", "--val-episodes", "10",
            "--val-ways", "3", "--log-every", "50", "--test-episodes", "100", "--test-shots", "2",
            "--test-ways", "3", "--test-queries", "5", "--run-dir", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((run / "eval.json").read_text())[0]["results"][0]
    assert result["mean"] > 0.7, result["mean"]
    saved = io.load_tensors(run / "model.safetensors")
    assert {k for k in saved if k.startswith("algorithm.")} == {
        "algorithm." + k for k in MetaLSTM().extra_params(nn.Linear(1, 1))
    }
    capsys.readouterr()
    args = ["eval", str(run), "--ways", "3", "--shots", "2", "--queries", "5", "--episodes", "100", "--quiet"]
    assert main(args) == 0  # the meta-learner's weights come back from the checkpoint: the same accuracy
    assert json.loads((run / "eval.json").read_text())[-1]["results"][0]["mean"] == result["mean"]
    assert main(["eval", str(run), "--ways", "4", "--quiet"]) == 2  # a 3-way head
    assert "test with --ways 3" in capsys.readouterr().err

    # resume: killed in step 8, resumed from the resume point of step 5, the same 10 steps as in one go
    config = TrainConfig.of(
        algorithm="metalstm", dataset="table", data_root=str(tmp_path / "t.npz"), ways=3, shots=2, queries=3,
        hidden=8, steps=10, log_every=5, val_every=0, threads=1,
    )  # fmt: skip
    whole = Trainer(config, tmp_path / "whole", progress=False)
    whole.run()
    half = Trainer(config, tmp_path / "half", progress=False)
    step = half.guarded_step

    def killed_after_step_7(i: int):  # after the resume point of step 5
        if i == 7:
            raise KeyboardInterrupt
        return step(i)

    half.guarded_step = killed_after_step_7
    with pytest.raises(KeyboardInterrupt):
        half.run()
    resumed = Trainer.resumed(tmp_path / "half", progress=False)
    resumed.run()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.extra.keys() == resumed.extra.keys()
    assert all(torch.equal(whole.extra[k], resumed.extra[k]) for k in whole.extra)
