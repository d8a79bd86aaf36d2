"""Bandit tasks, exact regret, the classical strategies against their textbook updates, the Gittins table against
a hand computation and a brute-force search, and the gymnasium environments."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.rl2 import RL2
from fewshot.models.policy import RecurrentPolicy
from fewshot.rl.bandits import Bandit, BanditBatch, Bandits, regret, sample_actions
from fewshot.rl.evaluate import evaluate_bandits, paired, strategy, strategy_player
from fewshot.rl.gym import BernoulliBanditEnv, EnvTasks
from fewshot.rl.strategies import (
    UCB1,
    EpsilonGreedy,
    Gittins,
    Greedy,
    Random,
    Thompson,
    argmax_ties,
    gittins_table,
    play,
)


def scripted(
    means: list[float], rewards: list[list[float]], noise: float = 0.0, seed: int = 0
) -> BanditBatch:
    """One bandit with a given reward table ``(n, arms)`` and constant uniforms (0: ties go to the lowest arm)."""
    table = torch.tensor(rewards, dtype=torch.float32)
    return BanditBatch.of([Bandit(torch.tensor(means), table, torch.full((len(rewards), 2), noise), seed)])


def test_a_bandit_depends_only_on_seed_and_index_and_pays_its_means():
    family = Bandits(arms=4, horizon=20_000, seed=3)
    a, b = family.task(5), family.task(5)
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3], strict=True)) and a.seed == b.seed
    assert not torch.equal(family.task(6).means, a.means)
    assert not torch.equal(Bandits(arms=4, horizon=20_000, seed=4).task(5).means, a.means)
    # the reward table is drawn from the means: each arm's frequency within 4 standard errors
    freq, p = a.rewards.mean(0), a.means
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / 20_000).sqrt() + 1e-6).all()
    assert a.rewards.shape == (20_000, 4) and a.noise.shape == (20_000, 2)


def test_dependent_bandits_and_priors():
    for i in range(20):
        p = Bandits(arms=2, horizon=5, dependent=True, seed=0).task(i).means
        assert torch.allclose(p.sum(), torch.tensor(1.0))
        easy = Bandits(arms=2, horizon=5, prior="easy", dependent=True, seed=0).task(i).means
        assert sorted(easy.tolist()) == pytest.approx([0.1, 0.9])
    hard = torch.stack([Bandits(2, 5, "hard", True, seed=0).task(i).means for i in range(200)])
    assert 50 < (hard[:, 0] > 0.5).sum() < 150  # which arm is better: a coin flip
    beta = torch.stack([Bandits(3, 5, "beta:20,5", seed=0).task(i).means for i in range(200)])
    assert abs(beta.mean().item() - 0.8) < 0.02  # Beta(20, 5) has mean 0.8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(arms=1), "at least 2 arms"),
        (dict(horizon=0), "horizon must be at least 1"),
        (dict(arms=3, dependent=True), "has 2 arms"),
        (dict(prior="beta:0,1"), "unknown arm prior"),
        (dict(prior="gauss"), "unknown arm prior"),
        (dict(prior="easy"), "use --dataset dependent-bandit"),
    ],
)
def test_bad_bandit_settings_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Bandits(**kwargs)


def test_regret_is_exact_for_a_fixed_action_sequence():
    means = torch.tensor([0.2, 0.5, 0.9])
    actions = torch.tensor([0, 1, 2, 2, 0])
    # by hand: (0.9 - 0.2) + (0.9 - 0.5) + 0 + 0 + (0.9 - 0.2) = 1.8
    assert regret(means, actions).item() == pytest.approx(1.8)
    batch = scripted(means.tolist(), [[1, 0, 1]] * 5)
    assert batch.regret(actions[None]).sum().item() == pytest.approx(1.8)
    # and the evaluation's regret is that of the actions played: a constant strategy on a known bandit
    family = Bandits(arms=3, horizon=7, seed=1)
    result = evaluate_bandits(
        lambda b: (torch.zeros(b.size, 7, dtype=torch.long), b.rewards[:, :, 0]), family, 50
    )
    hand = np.mean([7 * (family.task(i).means.max() - family.task(i).means[0]).item() for i in range(50)])
    assert result.regret == pytest.approx(hand, rel=1e-6)
    assert result.regret_curve[-1] == pytest.approx(hand, rel=1e-6)


def test_argmax_ties_are_broken_by_the_uniform():
    values = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]] * 3)
    assert argmax_ties(values, torch.tensor([0.0, 0.5, 0.99])).tolist() == [1, 2, 4]


def ucb1_by_hand(rewards: list[list[float]], c: float = 1.0) -> list[int]:
    """Auer et al. (2002), Figure 1, written out: each arm once, then argmax mean + c sqrt(2 ln t / n)."""
    arms = len(rewards[0])
    n, s, out = [0] * arms, [0.0] * arms, []
    for t, row in enumerate(rewards):
        if 0 in n:
            a = n.index(0)
        else:
            index = [s[i] / n[i] + c * math.sqrt(2 * math.log(t) / n[i]) for i in range(arms)]
            a = max(range(arms), key=lambda i: (index[i], -i))  # the lowest arm among ties
        n[a] += 1
        s[a] += row[a]
        out.append(a)
    return out


def test_ucb1_and_greedy_follow_their_textbook_updates_on_a_scripted_reward_sequence():
    g = np.random.default_rng(0)
    rewards = (g.random((40, 3)) < [0.3, 0.6, 0.5]).astype(float).tolist()
    for c in (1.0, 0.3):
        actions, paid = play(UCB1(c), scripted([0.3, 0.6, 0.5], rewards))
        assert actions[0].tolist() == ucb1_by_hand(rewards, c)
        assert paid[0].tolist() == [rewards[t][a] for t, a in enumerate(actions[0].tolist())]
    # a hand-checked start: arms 0, 1 once (rewards 1, 0); at t = 2, UCB of arm 0 = 1 + sqrt(2 ln 2) wins
    assert ucb1_by_hand([[1, 0], [1, 0], [0, 1]]) == [0, 1, 0]
    assert play(UCB1(), scripted([0.5, 0.5], [[1, 0], [1, 0], [0, 1]]))[0][0].tolist() == [0, 1, 0]
    # greedy: posterior means (s + 1) / (n + 2); after arm 0 fails once, 1/3 < 1/2, so arm 1
    assert play(Greedy(), scripted([0.5, 0.5], [[0, 1], [0, 1], [0, 1]]))[0][0].tolist() == [0, 1, 1]


def test_thompson_sampling_draws_from_the_beta_posterior_it_updates():
    g = np.random.default_rng(1)
    rewards = (g.random((30, 4)) < [0.2, 0.4, 0.6, 0.8]).astype(float).tolist()
    actions, _ = play(Thompson(), scripted([0.2, 0.4, 0.6, 0.8], rewards, seed=123))
    rng, a_, b_, expected = np.random.default_rng(123), np.ones(4), np.ones(4), []
    for row in rewards:  # Thompson (1933) with a Beta(1, 1) prior: draw, take the largest, update a and b
        arm = int(np.argmax(rng.beta(a_, b_)))
        a_[arm] += row[arm]
        b_[arm] += 1 - row[arm]
        expected.append(arm)
    assert actions[0].tolist() == expected


def test_epsilon_greedy_explores_with_probability_epsilon():
    """Arm 0 always pays, the others never: once arm 0 has paid, greedy sticks to it, and epsilon-greedy leaves it
    on a share epsilon * (k - 1) / k of the pulls (a uniform arm, arm 0 included)."""
    n, k = 400, 5
    means = [1.0, 0.0, 0.0, 0.0, 0.0]
    tasks = [Bandit(torch.tensor(means), torch.tensor(means).expand(n, k).clone(), Bandits(k, n, seed=0).task(i).noise, i)
             for i in range(50)]  # fmt: skip
    batch = BanditBatch.of(tasks)
    greedy, _ = play(Greedy(), batch)
    first = (greedy == 0).float().argmax(1)  # greedy's first pull of arm 0; after it, only arm 0
    assert all((greedy[b, first[b] :] == 0).all() for b in range(50))
    for eps in (0.1, 0.3):
        actions, _ = play(EpsilonGreedy(eps), batch)
        late = actions[:, 50:]  # arm 0 found long ago (an untried arm's posterior mean 1/2 < 1)
        away = (late != 0).float().mean().item()
        assert abs(away - eps * (k - 1) / k) < 0.02, (eps, away)
    assert torch.equal(play(EpsilonGreedy(0.0), batch)[0], greedy)


def gittins_brute_force(m: int, s: int, f: int) -> float:
    """The index by bisection on lam, each lam solving the stopping problem by plain recursion."""

    def value(lam: float, m: int, s: int, f: int) -> float:
        if m == 0:
            return 0.0
        p = (s + 1) / (s + f + 2)
        cont = p - lam + p * value(lam, m - 1, s + 1, f) + (1 - p) * value(lam, m - 1, s, f + 1)
        return max(0.0, cont)

    def cont(lam: float) -> float:
        p = (s + 1) / (s + f + 2)
        return p - lam + p * value(lam, m - 1, s + 1, f) + (1 - p) * value(lam, m - 1, s, f + 1)

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cont(mid) > 0 else (lo, mid)
    return lo


def test_the_gittins_table_matches_a_hand_computation_and_brute_force():
    table = gittins_table(8)
    # one pull left: the index is the posterior mean
    assert table[1, 3, 1] == pytest.approx(4 / 6) and table[1, 0, 0] == pytest.approx(0.5)
    # two pulls left from Beta(1, 1), by hand: for lam in [1/3, 2/3], playing once then only after a success is
    # worth 1/2 - lam + 1/2 (2/3 - lam) = 5/6 - 3/2 lam, zero at lam = 5/9
    assert table[2, 0, 0] == pytest.approx(5 / 9, abs=1e-9)
    for m, s, f in [(3, 0, 0), (5, 1, 2), (7, 0, 1), (8, 0, 0), (4, 3, 0)]:
        assert table[m, s, f] == pytest.approx(gittins_brute_force(m, s, f), abs=5e-4)
    # more pulls left, more worth exploring: the index of a fresh arm grows with the remaining horizon
    assert np.all(np.diff(table[1:, 0, 0]) > 0)
    with pytest.raises(ValueError, match="up to horizon 200"):
        gittins_table(201)


def test_the_strategies_rank_as_the_literature_finds_on_identical_bandits():
    family = Bandits(arms=5, horizon=100, seed=0)
    results = {n: evaluate_bandits(strategy_player(strategy(n)), family, 300, n)
               for n in ("random", "greedy", "ucb1:0.2", "thompson", "gittins")}  # fmt: skip
    assert results["random"].mean == pytest.approx(50, abs=3)
    for name in ("greedy", "ucb1:0.2", "thompson"):
        diff, ci = paired(results["gittins"], results[name])
        assert diff > -ci, name  # Gittins is never significantly behind (Duan et al. Table 1 at n = 100)
    assert paired(results["thompson"], results["random"])[0] > 15


def test_strategy_names_parse_and_bad_ones_say_what_to_write():
    assert strategy("ucb1:0.2") == UCB1(0.2) and strategy("eps-greedy:0.05") == EpsilonGreedy(0.05)
    assert isinstance(strategy("gittins"), Gittins) and isinstance(strategy("random"), Random)
    with pytest.raises(ValueError, match="unknown bandit strategy"):
        strategy("ucb2")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        strategy("eps-greedy:2")
    with pytest.raises(ValueError, match="takes no parameter"):
        strategy("gittins:3")


def test_sample_actions_inverts_the_cdf():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]])).expand(4, -1)
    assert sample_actions(logits, torch.tensor([0.1, 0.25, 0.6, 0.999])).tolist() == [0, 1, 2, 2]


def test_the_gymnasium_bandit_passes_the_env_checker_and_pays_its_means():
    env = BernoulliBanditEnv([0.1, 0.9], pulls=3)
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    for _ in range(3):
        _, r, terminated, truncated, _ = env.step(1)
    assert terminated and not truncated  # an episode is `pulls` pulls
    paid = {0: 0.0, 1: 0.0}
    for i in range(2000):  # each arm pays at its mean: 2000 episodes, within 4 standard errors
        env.reset(seed=i)
        for arm in (0, 1):
            paid[arm] += env.step(arm)[1]
    assert (
        abs(paid[0] / 2000 - 0.1) < 4 * (0.09 / 2000) ** 0.5
        and abs(paid[1] / 2000 - 0.9) < 4 * (0.09 / 2000) ** 0.5
    )
    with pytest.raises(ValueError, match="an arm in 0..1"):
        env.step(2)
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        BernoulliBanditEnv([0.5, 1.5])
    assert isinstance(env, gymnasium.Env)


def test_rl2_plays_gymnasium_tasks_as_it_plays_tensor_bandits(one_thread):
    """Arms that always or never pay make both paths deterministic: with the same uniforms, the same play."""
    means = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    torch.manual_seed(0)
    model = RecurrentPolicy(0, 3, 16)
    tasks = EnvTasks(lambda rng: BernoulliBanditEnv(means[int(rng.integers(3))]), horizon=12, seed=5)
    gym_batch = type(tasks.task(0)).batch([tasks.task(i) for i in range(6)])
    chosen = [env.means for env in gym_batch.envs]
    tensor_batch = BanditBatch.of([Bandit(torch.tensor(m, dtype=torch.float32), torch.tensor(m).float().expand(12, 3),
                                          gym_batch.noise[i], 0) for i, m in enumerate(chosen)])  # fmt: skip
    a1, r1 = RL2().play(model, parameters_of(model), gym_batch)
    a2, r2 = RL2().play(model, parameters_of(model), tensor_batch)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)
    assert tasks.obs_dim == 0 and tasks.actions == 3
    # and it trains on them: a loss with gradients for every weight
    loss, _ = RL2().batch_loss(model, parameters_of(model), [tasks.task(i) for i in range(4)])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
