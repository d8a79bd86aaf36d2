"""The classical bandit strategies that meta-RL is measured against (Duan et al. 2016, Table 1), batched.

Each strategy looks only at the counts of each arm (pulls, successes) and the time, and picks one arm per bandit:

* :class:`Random`: a uniform arm every pull.
* :class:`Greedy` and :class:`EpsilonGreedy`: the highest posterior mean under a Beta(1, 1) prior, ``(s + 1) / (n + 2)``
  (so untried arms count as 0.5), with probability ``epsilon`` a uniform arm instead.
* :class:`UCB1`: each arm once, then ``mean + c * sqrt(2 ln t / n_a)`` (Auer, Cesa-Bianchi and Fischer 2002, c = 1).
* :class:`Thompson`: a draw from each arm's Beta(1 + s, 1 + f) posterior, the largest taken (Thompson 1933).
* :class:`Gittins`: the finite-horizon Gittins index (Gittins 1979; the finite-horizon form of Kaufmann 2016,
  "On Bayesian index policies for sequential resource allocation"), computed exactly by dynamic programming.

Ties are broken uniformly at random with the bandit's own uniforms (:attr:`Bandit.noise`), so a strategy's play
depends only on the bandit: every strategy meets the same rewards and the same tie-breaking luck.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fewshot.rl.bandits import BanditBatch


@dataclass
class Counts:
    """What a strategy sees at time ``t`` of ``horizon``: per bandit and arm, pulls and successes ``(B, arms)``;
    ``noise (B, 2)`` the bandits' uniforms for this pull, ``rngs`` their own numpy generators."""

    pulls: Tensor
    wins: Tensor
    t: int
    horizon: int
    noise: Tensor
    rngs: list[np.random.Generator] = field(default_factory=list)


def argmax_ties(values: Tensor, u: Tensor) -> Tensor:
    """``(B,)`` the arm of largest ``values (B, arms)``, ties broken by ``u (B,)`` uniforms on [0, 1)."""
    best = values >= values.max(1, keepdim=True).values - 1e-9  # (B, arms)
    count = best.sum(1)
    pick = (u * count).long().clamp(max=count - 1)  # the pick-th tied arm
    return (best.cumsum(1) <= pick[:, None]).sum(1)


class Strategy:
    """A bandit strategy: ``choose(counts) -> (B,) arms``."""

    name = "strategy"

    def choose(self, c: Counts) -> Tensor:
        raise NotImplementedError


class Random(Strategy):
    name = "random"

    def choose(self, c: Counts) -> Tensor:
        return (c.noise[:, 1] * c.pulls.shape[1]).long().clamp(max=c.pulls.shape[1] - 1)


@dataclass
class EpsilonGreedy(Strategy):
    """With probability ``epsilon`` a uniform arm, else the best posterior mean (epsilon 0: :class:`Greedy`)."""

    epsilon: float = 0.1

    @property
    def name(self) -> str:
        return "greedy" if self.epsilon == 0 else f"eps-greedy({self.epsilon:g})"

    def choose(self, c: Counts) -> Tensor:
        mean = (c.wins + 1) / (c.pulls + 2)  # posterior mean under Beta(1, 1)
        greedy = argmax_ties(mean, c.noise[:, 1])
        if self.epsilon == 0:
            return greedy
        explore = c.noise[:, 0] < self.epsilon
        # the same uniform picks the random arm, rescaled from the part of [0, epsilon) it fell in
        arm = (c.noise[:, 0] / self.epsilon * c.pulls.shape[1]).long().clamp(max=c.pulls.shape[1] - 1)
        return torch.where(explore, arm, greedy)


def Greedy() -> EpsilonGreedy:  # noqa: N802 (a named variant, as the literature names it)
    return EpsilonGreedy(0.0)


@dataclass
class UCB1(Strategy):
    """Auer et al. (2002): every arm once, then the largest ``mean + c sqrt(2 ln t / n_a)`` (t: pulls so far)."""

    c: float = 1.0
    name: str = "ucb1"

    def choose(self, c: Counts) -> Tensor:
        untried = c.pulls == 0
        n = c.pulls.clamp(min=1)
        bonus = self.c * torch.sqrt(2 * torch.log(torch.tensor(max(c.t, 1), dtype=n.dtype)) / n)
        value = torch.where(untried, torch.full_like(n, float("inf")), c.wins / n + bonus)
        return argmax_ties(value, c.noise[:, 1])


@dataclass
class Thompson(Strategy):
    """Thompson (1933) sampling with a Beta(``prior``) prior on each arm: the arm of the largest posterior draw."""

    prior: tuple[float, float] = (1.0, 1.0)
    name: str = "thompson"

    def choose(self, c: Counts) -> Tensor:
        a = (c.wins + self.prior[0]).double().numpy()
        b = (c.pulls - c.wins + self.prior[1]).double().numpy()
        draws = np.stack([rng.beta(a[i], b[i]) for i, rng in enumerate(c.rngs)])  # each bandit its own stream
        return argmax_ties(torch.from_numpy(draws), c.noise[:, 1])


GITTINS_HORIZON = 200  # ~1.3 GB of float64 at once at 200


@functools.lru_cache(maxsize=4)
def gittins_table(horizon: int, grid: int = 1001) -> np.ndarray:
    """The finite-horizon Gittins index of a Bernoulli arm with a Beta(1, 1) prior, for every state.

    ``table[m, s, f]`` is the index of an arm with ``s`` successes and ``f`` failures when ``m`` pulls remain
    (this one included): the largest retirement reward ``lam`` per remaining pull for which playing the arm,
    with the option to retire for good after any pull, is still worth at least retiring now. For a fixed ``lam``
    the value of that stopping problem obeys, for every state at once,

        V_m(s, f) = max(0, p - lam + p V_{m-1}(s + 1, f) + (1 - p) V_{m-1}(s, f + 1)),  p = (s + 1) / (s + f + 2),

    so one sweep over m gives it for all states; the index is where the continuation value (the max's second
    term, continuous, piecewise linear and decreasing in ``lam``) crosses zero, found on a grid of ``grid``
    values of ``lam`` in [0, 1] and refined by linear interpolation (exact unless a kink falls between two grid
    points; within 1e-3 of a 2001-point grid at horizon 100). With ``m`` pulls left an arm has ``s, f <= horizon -
    m``: that square is computed (it holds every reachable state, ``s + f <= horizon - m``), the rest is NaN. About
    ``grid * horizon^3 / 3`` operations and ``grid * horizon^2`` floats at once: 3 s at horizon 100.
    """
    if horizon > GITTINS_HORIZON:
        raise ValueError(
            f"the Gittins table is computed up to horizon {GITTINS_HORIZON} (its cost grows as horizon^3 and its "
            f"memory as horizon^2), got {horizon}; compare with the other strategies"
        )
    lam = np.linspace(0.0, 1.0, grid)[:, None, None]  # (G, 1, 1)
    step = 1.0 / (grid - 1)
    table = np.full((horizon + 1, horizon + 1, horizon + 1), np.nan)
    value = np.zeros((grid, horizon + 1, horizon + 1))  # V_0 on the states reachable with 0 pulls left
    for m in range(1, horizon + 1):
        side = horizon - m + 1  # s, f in [0, horizon - m]
        s = np.arange(side)[:, None]
        f = np.arange(side)[None, :]
        p = (s + 1) / (s + f + 2)  # (side, side) posterior mean
        cont = (
            p - lam + p * value[:, 1 : side + 1, :side] + (1 - p) * value[:, :side, 1 : side + 1]
        )  # (G, side, side)
        positive = (cont > 0).sum(
            0
        )  # cont is decreasing in lam: the crossing is just after the last positive
        lo = np.clip(positive - 1, 0, grid - 2)
        c_lo = np.take_along_axis(cont, lo[None], 0)[0]
        c_hi = np.take_along_axis(cont, (lo + 1)[None], 0)[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            root = lo * step + step * np.where(c_lo != c_hi, c_lo / (c_lo - c_hi), 0.0)
        table[m, :side, :side] = np.clip(root, 0.0, 1.0)
        value = np.maximum(cont, 0.0, out=cont)
    return table


@dataclass
class Gittins(Strategy):
    """The arm of the largest finite-horizon Gittins index (:func:`gittins_table`): Bayes-optimal in the
    discounted infinite-horizon problem (Gittins 1979), a strong and near-optimal index rule at finite horizons."""

    name: str = "gittins"

    def choose(self, c: Counts) -> Tensor:
        table = torch.from_numpy(gittins_table(c.horizon))
        s, f = c.wins.long(), (c.pulls - c.wins).long()
        index = table[c.horizon - c.t][s, f]  # (B, arms)
        return argmax_ties(index, c.noise[:, 1])


STRATEGIES = {
    "random": Random,
    "greedy": Greedy,
    "eps-greedy": EpsilonGreedy,
    "ucb1": UCB1,
    "thompson": Thompson,
    "gittins": Gittins,
}


def play(strategy: Strategy, batch: BanditBatch) -> tuple[Tensor, Tensor]:
    """Plays every bandit of ``batch`` for its whole horizon: ``(actions (B, n) long, rewards (B, n))``."""
    B, k, n = batch.size, batch.arms, batch.horizon
    pulls = torch.zeros(B, k, dtype=torch.float64)
    wins = torch.zeros(B, k, dtype=torch.float64)
    rngs = [np.random.default_rng(s) for s in batch.seeds] if isinstance(strategy, Thompson) else []
    actions = torch.zeros(B, n, dtype=torch.long)
    rewards = torch.zeros(B, n)
    rows = torch.arange(B)
    for t in range(n):
        a = strategy.choose(Counts(pulls, wins, t, n, batch.noise[:, t], rngs))
        _, r, _ = batch.step(t, a)
        pulls[rows, a] += 1
        wins[rows, a] += r.double()
        actions[:, t], rewards[:, t] = a, r
    return actions, rewards


__all__ = ["GITTINS_HORIZON", "STRATEGIES", "Counts", "EpsilonGreedy", "Gittins", "Greedy", "Random", "Strategy", "Thompson", "UCB1",
           "argmax_ties", "gittins_table", "play"]  # fmt: skip
