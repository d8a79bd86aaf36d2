"""Honest bandit evaluation: total reward per bandit over many test bandits, mean and 95% CI, exact regret.

Every method is played on the same bandits (``Bandits(seed=...).task(i)``, with their reward tables and uniforms),
so two methods' per-bandit totals are paired: :func:`compare_bandits` reports the paired differences too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewshot.evaluate import mean_ci95
from fewshot.progress import progress as show_progress
from fewshot.rl.bandits import BanditBatch, Bandits
from fewshot.rl.strategies import STRATEGIES, Strategy, play

Player = Callable[
    [BanditBatch], tuple[Tensor, Tensor]
]  # a batch of bandits -> (actions (B, n), rewards (B, n))


@dataclass
class BanditResult:
    """One method's play on ``episodes`` test bandits.

    Attributes:
        totals: total reward of each bandit's trial, in bandit order (bandit i is the same for every method
            evaluated with the same family).
        mean, ci95: their mean and 95% confidence half-width.
        regret, regret_ci95: mean expected total regret ``sum_t (max_a p_a - p_{a_t})`` (exact given the
            actions: free of the reward draws) and its 95% half-width.
        regret_curve: mean cumulative expected regret after each pull ``(horizon,)``.
    """

    method: str
    arms: int
    horizon: int
    episodes: int
    seed: int
    totals: list[float] = field(repr=False)
    mean: float = 0.0
    ci95: float = 0.0
    regret: float = 0.0
    regret_ci95: float = 0.0
    regret_curve: list[float] = field(default_factory=list, repr=False)
    seconds: float = 0.0
    metric: str = "total reward"

    def __str__(self) -> str:
        return (
            f"{self.method + ': ' if self.method else ''}{self.arms}-armed bandits, horizon {self.horizon}: total "
            f"reward {self.mean:.2f} +- {self.ci95:.2f}, regret {self.regret:.2f} +- {self.regret_ci95:.2f} "
            f"({self.episodes} bandits, 95% CI)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_bandits(
    player: Player, family: Bandits, episodes: int = 1000, method: str = "", progress: bool = False,
    chunk: int = 500,
) -> BanditResult:  # fmt: skip
    """Plays bandits ``0..episodes-1`` of ``family`` with ``player``, ``chunk`` at a time."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    start = time.perf_counter()
    totals, regrets, curve = [], [], torch.zeros(family.horizon, dtype=torch.float64)
    starts = range(0, episodes, chunk)
    for a in show_progress(starts, f"eval {method or 'bandits'}", enabled=progress):
        batch = family.batch(range(a, min(a + chunk, episodes)))
        actions, rewards = player(batch)
        actions, rewards = actions.cpu(), rewards.cpu()
        per_pull = batch.regret(actions).double()  # (B, n)
        totals.append(rewards.double().sum(1))
        regrets.append(per_pull.sum(1))
        curve += per_pull.cumsum(1).sum(0)
    t = torch.cat(totals).numpy()
    g = torch.cat(regrets).numpy()
    mean, ci = mean_ci95(t)
    regret, regret_ci = mean_ci95(g)
    return BanditResult(method, family.arms, family.horizon, episodes, family.seed, t.tolist(), mean, ci, regret,
                        regret_ci, (curve / episodes).tolist(), time.perf_counter() - start)  # fmt: skip


def strategy_player(strategy: Strategy) -> Player:
    return lambda batch: play(strategy, batch)


def model_player(algorithm: Any, model: torch.nn.Module, params: dict[str, Tensor]) -> Player:
    """A trained RL algorithm (:class:`~fewshot.algorithms.rl2.RL2`, :class:`~fewshot.algorithms.maml_rl.MAMLRL`)
    as a player, in eval mode on its parameters' device."""
    model.eval()
    return lambda batch: algorithm.play(model, params, batch)


def strategy(name: str) -> Strategy:
    """A strategy by name: ``random``, ``greedy``, ``eps-greedy[:EPSILON]``, ``ucb1[:C]``, ``thompson``,
    ``gittins`` (defaults: epsilon 0.1, c 1)."""
    base, _, arg = name.partition(":")
    if base not in STRATEGIES:
        raise ValueError(
            f"unknown bandit strategy {name!r}; choose one of {', '.join(STRATEGIES)} (eps-greedy:E, ucb1:C)"
        )
    if not arg:
        return STRATEGIES[base]()
    if base not in ("eps-greedy", "ucb1"):
        raise ValueError(f"{base} takes no parameter; write {base}")
    try:
        value = float(arg)
        assert value >= 0 and (base != "eps-greedy" or value <= 1)
    except (ValueError, AssertionError):
        raise ValueError(
            f"{name!r}: {base} takes a number {'in [0, 1]' if base == 'eps-greedy' else '>= 0'}"
        ) from None
    return STRATEGIES[base](value)


def tune(names: list[str], family: Bandits, episodes: int = 500) -> Strategy:
    """The best of ``names`` (strategy names with parameters) by mean total reward on ``family``'s bandits: tune
    on training bandits, then test on others (as Duan et al. tuned epsilon and UCB1's c per setting)."""
    scored = [(evaluate_bandits(strategy_player(strategy(n)), family, episodes).mean, n) for n in names]
    return strategy(max(scored)[1])


def paired(a: BanditResult, b: BanditResult) -> tuple[float, float]:
    """Mean and 95% half-width of ``a``'s total reward minus ``b``'s, bandit by bandit."""
    if (a.episodes, a.seed, a.arms, a.horizon) != (b.episodes, b.seed, b.arms, b.horizon):
        raise ValueError("paired differences need results on the same bandits")
    return mean_ci95(np.asarray(a.totals) - np.asarray(b.totals))


__all__ = [
    "BanditResult",
    "evaluate_bandits",
    "model_player",
    "paired",
    "strategy",
    "strategy_player",
    "tune",
]
