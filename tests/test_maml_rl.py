"""MAML-RL: the policy-gradient estimator is unbiased, the meta-gradient equals finite differences of the exactly
enumerated objective (float64), first order is the sum of the blocks' policy gradients at their adapted weights,
and vmap over bandits equals a loop."""

from __future__ import annotations

import itertools
import json

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.maml_rl import MAMLRL, leave_one_out, reinforce
from fewshot.cli import main
from fewshot.models.policy import PolicyMLP
from fewshot.rl.bandits import Bandits

NOTHING = torch.zeros(1, 0, dtype=torch.float64)  # a bandit's observation


def policy(layers: int = 1, seed: int = 0) -> PolicyMLP:
    torch.manual_seed(seed)
    return PolicyMLP(0, 2, hidden=3, layers=layers).double()


def test_the_leave_one_out_policy_gradient_is_unbiased_on_a_two_armed_bandit():
    model, means = policy(layers=0), torch.tensor([0.3, 0.8], dtype=torch.float64)
    params = parameters_of(model)
    exact = torch.autograd.grad(
        (torch.softmax(functional_call(model, params, (NOTHING,))[0], -1) * means).sum(),
        list(params.values()),
    )
    g = torch.Generator().manual_seed(0)
    batches, m = 40_000, 4
    probs = torch.softmax(functional_call(model, params, (NOTHING,))[0], -1).detach()
    actions = torch.multinomial(probs.expand(batches * m, -1), 1, generator=g).view(batches, m)
    rewards = (torch.rand(batches, m, generator=g, dtype=torch.float64) < means[actions]).double()

    def estimate(p, a, r):  # the inner loop's gradient estimate from m one-pull trajectories
        logits = functional_call(model, p, (NOTHING,)).expand(m, -1)
        return reinforce(F.log_softmax(logits, -1).gather(1, a[:, None])[:, 0], r)

    per_batch = vmap(grad(estimate), in_dims=(None, 0, 0))(params, actions, rewards)
    for (name, est), true in zip(per_batch.items(), exact, strict=True):
        mean, se = est.mean(0), est.std(0) / batches**0.5
        assert ((mean - true).abs() <= 4 * se + 1e-12).all(), (name, mean, true, se)
        assert (se < 0.2 * true.abs().max()).all()  # a test with power: the error bars are tight
    # the naive baseline (the mean of the block, the pull's own reward included) is biased by (m - 1) / m
    assert leave_one_out(torch.tensor([1.0, 0.0, 0.0])).tolist() == [0.0, 0.5, 0.5]


def table(n: int) -> torch.Tensor:
    """A deterministic toy bandit (rewards fixed per pull): arm 0 pays on every pull, arm 1 on pulls 2 and 5.
    In a block of two pulls the leave-one-out step is (r_1 - r_2)(grad log pi(a_1) - grad log pi(a_2)): it moves
    only when the two pulls pay differently; and adapting matters only where the arms' block totals differ."""
    t = torch.zeros(n, 2, dtype=torch.float64)
    t[:, 0] = 1
    t[[i for i in (2, 5) if i < n], 1] = 1
    return t


def exact_objective(model, params, rewards, algorithm: MAMLRL) -> torch.Tensor:
    """The expected total reward, every action sequence enumerated; the inner steps written out with
    torch.autograd.grad(create_graph=True), independently of MAMLRL.trial."""
    n, total = rewards.shape[0], rewards.new_zeros(())
    spans = algorithm.blocks(n)
    for seq in itertools.product(range(2), repeat=n):
        acts = torch.tensor(seq)
        theta, log_p, reward = dict(params), rewards.new_zeros(()), rewards.new_zeros(())
        for j, (a, b) in enumerate(spans):
            log_pi = F.log_softmax(functional_call(model, theta, (NOTHING,))[0], -1)
            lp = log_pi[acts[a:b]]
            r = rewards[torch.arange(a, b), acts[a:b]]
            log_p, reward = log_p + lp.sum(), reward + r.sum()
            if j + 1 < len(spans):
                inner = ((r - leave_one_out(r)) * lp).mean()
                g = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
                theta = {k: v + algorithm.inner_lr * gk for (k, v), gk in zip(theta.items(), g, strict=True)}
        total = total + log_p.exp() * reward
    return total


def expected_estimate(model, params, rewards, algorithm: MAMLRL) -> dict[str, torch.Tensor]:
    """The mean of MAML-RL's meta-gradient estimate over all action sequences, each weighted by its probability."""
    out = {k: torch.zeros_like(v) for k, v in params.items()}
    for seq in itertools.product(range(2), repeat=rewards.shape[0]):
        with torch.no_grad():
            weight = exact_probability(model, params, rewards, algorithm, torch.tensor(seq))
        own, logps, totals, _ = algorithm.trial(model, params, rewards, None, torch.tensor(seq))
        s = algorithm.surrogate(own[None], logps[None], totals[None])[0]
        for acc, g in zip(out.values(), torch.autograd.grad(s, list(params.values())), strict=True):
            acc += weight * g
    return out


def exact_probability(model, params, rewards, algorithm, acts) -> torch.Tensor:
    with torch.enable_grad():  # the inner steps need gradients; the weight itself is a constant
        p = dict(params)
        prob = rewards.new_ones(())
        spans = algorithm.blocks(rewards.shape[0])
        for j, (a, b) in enumerate(spans):
            log_pi = F.log_softmax(functional_call(model, p, (NOTHING,))[0], -1)
            prob = prob * log_pi[acts[a:b]].sum().exp()
            if j + 1 < len(spans):
                r = rewards[torch.arange(a, b), acts[a:b]]
                g = torch.autograd.grad(((r - leave_one_out(r)) * log_pi[acts[a:b]]).mean(), list(p.values()))
                p = {k: v + algorithm.inner_lr * gk for (k, v), gk in zip(p.items(), g, strict=True)}
    return prob.detach()


def finite_differences(f, params, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in params.items():
        g = torch.zeros_like(v)
        for i in range(v.numel()):
            plus, minus = {**params, k: v.detach().clone()}, {**params, k: v.detach().clone()}
            plus[k].view(-1)[i] += eps
            minus[k].view(-1)[i] -= eps
            plus[k].requires_grad_(), minus[k].requires_grad_()  # the inner steps differentiate w.r.t. them
            g.view(-1)[i] = (f(plus) - f(minus)) / (2 * eps)
        out[k] = g
    return out


def test_the_meta_gradient_equals_finite_differences_of_the_enumerated_objective_in_float64():
    model = policy()
    params = {k: v.detach().requires_grad_() for k, v in parameters_of(model).items()}
    for algorithm, n in [(MAMLRL(inner_lr=0.7, inner_steps=1), 4), (MAMLRL(inner_lr=0.5, inner_steps=2), 6)]:
        rewards = table(n)
        fd = finite_differences(
            lambda p, r=rewards, a=algorithm: exact_objective(model, p, r, a).detach(), params
        )
        est = expected_estimate(model, params, rewards, algorithm)
        for k in params:
            torch.testing.assert_close(est[k], fd[k], rtol=1e-6, atol=1e-8, msg=k)
        # the term for the inner samples' distribution matters: without it (first order) the mean is off
        fo = expected_estimate(
            model, params, rewards, MAMLRL(algorithm.inner_lr, algorithm.inner_steps, True)
        )
        assert max((fo[k] - fd[k]).abs().max().item() for k in params) > 1e-3


def test_first_order_is_the_sum_of_each_blocks_policy_gradient_at_its_adapted_weights():
    model = policy(seed=1)
    params = {k: v.detach().requires_grad_() for k, v in parameters_of(model).items()}
    rewards, acts, algorithm = table(4), torch.tensor([0, 1, 1, 0]), MAMLRL(inner_lr=0.9, first_order=True)
    own, logps, totals, _ = algorithm.trial(model, params, rewards, None, acts)
    got = torch.autograd.grad(
        algorithm.surrogate(own[None], logps[None], totals[None])[0], list(params.values())
    )

    def block(p, a, b):  # the block's own REINFORCE surrogate, summed over its pulls
        lp = F.log_softmax(functional_call(model, p, (NOTHING,))[0], -1)[acts[a:b]]
        r = rewards[torch.arange(a, b), acts[a:b]]
        return ((r - leave_one_out(r)) * lp).sum()

    g0 = grad(block)(params, 0, 2)
    theta1 = {k: (v + 0.9 * g0[k] / 2).detach() for k, v in params.items()}  # the inner step uses the mean
    g1 = grad(block)(theta1, 2, 4)
    for (k, _), gk in zip(params.items(), got, strict=True):
        torch.testing.assert_close(gk, g0[k] + g1[k], rtol=1e-12, atol=1e-12)


def test_vmap_over_bandits_equals_a_loop(one_thread):
    model = PolicyMLP(0, 3, hidden=5).double()
    params = {k: v.detach().requires_grad_() for k, v in parameters_of(model).items()}
    tasks = [
        t._replace(rewards=t.rewards.double()) for t in (Bandits(3, 9, seed=2).task(i) for i in range(4))
    ]
    algorithm = MAMLRL(inner_lr=0.5, inner_steps=2)
    loss, rewards = algorithm.batch_loss(model, params, tasks)
    fast = torch.autograd.grad(loss, list(params.values()))
    parts = [algorithm.trial(model, params, t.rewards, t.noise[:, 0]) for t in tasks]
    own, logps, totals = (torch.stack([p[i] for p in parts]) for i in range(3))
    slow = torch.autograd.grad(-algorithm.surrogate(own, logps, totals).mean() / 9, list(params.values()))
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert [r.item() for r in rewards] == [p[2].sum().item() for p in parts]
    # play takes the actions training takes
    actions, paid = algorithm.play(model, params, Bandits(3, 9, seed=2).batch(range(4)))
    assert torch.equal(actions, torch.stack([p[3] for p in parts]))


def test_maml_rl_trains_and_is_tested_from_the_cli(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    assert main(["train", "--algorithm", "maml-rl", "--dataset", "dependent-bandit", "--horizon", "10",
                 "--inner-steps", "1", "--steps", "6", "--tasks-per-step", "4", "--hidden", "4", "--val-every", "3",
                 "--val-episodes", "10", "--log-every", "3", "--test-episodes", "20", "--run-dir", str(run),
                 "--quiet"]) == 0  # fmt: skip
    assert "2-armed bandits, horizon 10" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["arms"] == 2 and config["dataset"] == "dependent-bandit"
    assert len(json.loads((run / "eval.json").read_text())[0]["results"][0]["totals"]) == 20
