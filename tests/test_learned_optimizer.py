"""The learned optimizer (Andrychowicz et al. 2016): SGD as a special case, meta-gradients, learning."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot import io
from fewshot.learned_optimizer import (
    LearnedOptimizer,
    LSTMOptimizerNet,
    OmniglotMLP,
    Quadratics,
    meta_train,
    optimize,
    preprocess,
    unroll,
)


def _seeded_model(seed: int = 0) -> torch.nn.Module:
    """A small float64 MLP (weights of several shapes) with weights from its own generator."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def _flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(params), params)])


def test_the_sgd_net_steps_exactly_like_torch_sgd(one_thread):
    learned, plain = _seeded_model(), _seeded_model()
    opt = LearnedOptimizer(learned.parameters(), LSTMOptimizerNet.sgd(0.05, torch.float64))
    sgd = torch.optim.SGD(plain.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = (
            torch.randn(8, 3, generator=g, dtype=torch.float64),
            torch.randn(8, 2, generator=g, dtype=torch.float64),
        )
        for model, o in ((learned, opt), (plain, sgd)):
            o.zero_grad()
            (model(x) - y).square().mean().backward()
            o.step()
        for a, b in zip(learned.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not torch.equal(learned[0].weight, _seeded_model()[0].weight)  # it did move
    assert opt.state[learned[0].weight]["h"].shape == (2, 20, 15)  # (layers, hidden, coordinates)


def test_meta_gradient_matches_finite_differences_with_the_optimizees_gradients_as_inputs(one_thread):
    net = LSTMOptimizerNet(seed=3).double()
    problem = Quadratics(dim=6, dtype=torch.float64)(torch.Generator().manual_seed(0))
    theta0 = problem.params[0].requires_grad_()
    grad0 = _flat_grad(problem.loss, [theta0])
    meta_loss, *_ = unroll(net, problem.loss, [theta0], grad0, net.initial_state(6), steps=3)
    weights = {
        "weight_ih.0": net.weight_ih[0],
        "weight_hh.1": net.weight_hh[1],
        "bias.1": net.bias[1],
        "out_weight": net.out_weight,
    }
    analytic = dict(zip(weights, torch.autograd.grad(meta_loss, list(weights.values())), strict=True))

    def replay(grads: list[torch.Tensor] | None) -> tuple[float, list[torch.Tensor]]:
        """The meta-loss with the optimizee's gradients fixed to ``grads`` (recorded when None)."""
        with torch.no_grad():
            theta, state, total, seen = theta0.detach(), net.initial_state(6), 0.0, [grad0]
            for t in range(3):
                update, state = net(seen[t] if grads is None else grads[t], state)
                theta = theta + update.view_as(theta)
                total += problem.loss([theta]).item()
                with torch.enable_grad():
                    seen.append(_flat_grad(problem.loss, [theta.requires_grad_()]))
        return total, seen

    base, grads = replay(None)
    assert base == pytest.approx(meta_loss.item(), rel=1e-12)
    eps, second_order = 1e-6, []
    for name, w in weights.items():
        for index in [(0,) * w.dim(), tuple(s - 1 for s in w.shape)]:
            with torch.no_grad():
                w[index] += eps
                up, up_full = replay(grads)[0], replay(None)[0]
                w[index] -= 2 * eps
                down, down_full = replay(grads)[0], replay(None)[0]
                w[index] += eps
            exact = analytic[name][index].item()
            assert exact == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-7)
            second_order.append(abs((up_full - down_full) / (2 * eps) - exact) / abs(exact))
    # the derivative with the optimizee's gradients recomputed is another number: the check above can tell
    assert max(second_order) > 1e-3


def test_preprocessing_is_the_papers_formula_on_hand_values():
    p = 10.0
    g = torch.tensor([1.0, -(math.e**2), 3e-4, 1e-6, -1e-6, 0.0, math.exp(-p) * 1.001], dtype=torch.float64)
    expected = torch.tensor(
        [
            [0.0, 1.0],  # log 1 / p, sign
            [0.2, -1.0],  # log e^2 / 10
            [math.log(3e-4) / p, 1.0],
            [-1.0, math.exp(p) * 1e-6],  # below e^-p: (-1, e^p g)
            [-1.0, -math.exp(p) * 1e-6],
            [-1.0, 0.0],
            [(-p + math.log(1.001)) / p, 1.0],  # just above the threshold: still the log branch
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(preprocess(g, p), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        preprocess(torch.tensor([1e-3]), 2.0), torch.tensor([[-1.0, math.e**2 * 1e-3]])
    )


def test_meta_training_on_quadratics_beats_the_untrained_net_on_held_out_quadratics(one_thread):
    held_out = Quadratics(batch=100)(torch.Generator().manual_seed(12345))  # 100 functions, summed loss

    def final_loss(net: LSTMOptimizerNet) -> float:
        return optimize(held_out, lambda ps: LearnedOptimizer(ps, net), 100)[-1].item() / 100

    untrained = final_loss(LSTMOptimizerNet(seed=0))
    net, history = meta_train(Quadratics(batch=128), steps=40, meta_lr=0.01, seed=0)
    trained = final_loss(net)
    assert len(history) == 40 and all(math.isfinite(h) for h in history)
    assert trained < untrained / 10, (trained, untrained)
    assert trained < 2.0  # SGD at its best fixed step reaches ~1.1 in 100 steps on these


def test_meta_training_is_seeded_and_keeps_the_linear_term_at_zero(one_thread):
    nets = [
        meta_train(Quadratics(batch=4), steps=3, unroll_steps=5, optimizee_steps=10, seed=7)[0]
        for _ in range(2)
    ]
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(nets[0].out_weight, LSTMOptimizerNet(seed=7).out_weight)
    assert nets[0].linear.item() == 0.0  # the paper's optimizer: a is not meta-trained


def test_the_ordinary_optimizer_loop_follows_the_meta_training_unroll(one_thread):
    net = LSTMOptimizerNet(seed=5).double()
    problem = Quadratics(batch=3, dtype=torch.float64)(torch.Generator().manual_seed(2))
    losses = optimize(problem, lambda ps: LearnedOptimizer(ps, net), 7)  # zero_grad, backward, step
    theta = problem.params[0].clone().requires_grad_()
    meta_loss, *_ = unroll(
        net, problem.loss, [theta], _flat_grad(problem.loss, [theta]), net.initial_state(30), 7
    )
    assert losses[1:].sum().item() == pytest.approx(meta_loss.item(), rel=1e-12)


def test_save_and_load_round_trip_and_the_loaded_net_optimizes(tmp_path, one_thread):
    net = LSTMOptimizerNet(hidden=7, out_scale=0.05, seed=4).double()
    path = net.save(tmp_path / "opt.safetensors")
    loaded = LSTMOptimizerNet.load(path)
    assert (loaded.hidden, loaded.layers, loaded.out_scale, loaded.p) == (7, 2, 0.05, 10.0)
    for (k, a), (j, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == j and a.dtype == b.dtype == torch.float64 and torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["opt.safetensors"]  # no temporary file left behind
    model = _seeded_model()
    opt = LearnedOptimizer(model.parameters(), loaded)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(4, 3, dtype=torch.float64)).sum().backward()
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_bad_input_is_refused_with_a_message_that_says_what_to_do(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="LSTMOptimizerNet"):
        LearnedOptimizer(model.parameters(), torch.nn.LSTM(2, 20))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LSTMOptimizerNet.load(tmp_path / "missing.safetensors")
    io.save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="not a learned-optimizer file"):
        LSTMOptimizerNet.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        LSTMOptimizerNet.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="multiple of unroll_steps"):
        meta_train(Quadratics(), steps=1, unroll_steps=20, optimizee_steps=30)


def test_the_omniglot_mlp_problem_draws_whole_classes(blobs, one_thread):
    make = OmniglotMLP(blobs, ways=4)  # 12 synthetic classes of 10 images
    problem = make(torch.Generator().manual_seed(0))
    assert [tuple(p.shape) for p in problem.params] == [(784, 20), (20,), (20, 4), (4,)]
    assert problem.loss(problem.params).item() == pytest.approx(math.log(4), abs=0.3)
    losses = optimize(problem, lambda ps: torch.optim.Adam(ps, lr=0.03), 30)
    assert losses[-1] < 0.5 * losses[0]
    again = make(torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(problem.params, again.params, strict=True))
    with pytest.raises(ValueError, match="fewer ways"):
        OmniglotMLP(blobs, ways=13)
