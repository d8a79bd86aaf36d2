"""Multi-armed bandits as tasks: Bernoulli bandits (Duan et al. 2016) and the dependent two-armed bandit of Wang et
al. (2016), each bandit a value, a batch of them a tensor environment.

A task is a :class:`Bandit`: its arms' success probabilities, *and* the reward every arm would pay at every pull,
drawn once from those probabilities (``rewards (horizon, arms)``), plus uniforms for the agent's own random
choices (``noise (horizon, 2)``). Every method compared on bandit ``i`` therefore meets the very same luck (common
random numbers): differences between methods are differences of play, not of draws. Bandit ``i`` depends only on
``(seed, i)``.

:class:`BanditBatch` stacks bandits into tensors and plays them in lock step (thousands per call); it follows the
small environment-batch protocol the RL algorithms use (``reset``, ``step``, ``noise``), which
:mod:`fewshot.rl.gym` also implements for any gymnasium environment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from fewshot.tasks.regression import generator


def stream(seed: int, i: int, salt: int) -> torch.Generator:
    """A torch random stream for item ``i`` under ``seed``, independent of :func:`generator`'s ``(seed, i)`` stream
    and of every other ``(seed, i, salt)`` (not a shifted seed: seed + c would be another family's means)."""
    state = np.random.SeedSequence([seed, i, salt]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class Bandit(NamedTuple):
    """One bandit task (a value).

    Attributes:
        means: ``(arms,)`` the success probability of each arm.
        rewards: ``(horizon, arms)`` the 0/1 reward arm ``a`` pays if pulled at time ``t``.
        noise: ``(horizon, 2)`` uniforms on [0, 1) for the agent's random choices at time ``t``.
        seed: a per-bandit integer for agents that need more randomness (Thompson sampling's Beta draws).
    """

    means: Tensor
    rewards: Tensor
    noise: Tensor
    seed: int

    @staticmethod
    def batch(tasks: list[Bandit]) -> BanditBatch:
        """The environment batch that plays ``tasks`` together (what RL algorithms call on a list of tasks)."""
        return BanditBatch.of(tasks)


PRIORS = ("uniform", "easy", "medium", "hard")


@dataclass(frozen=True)
class Bandits:
    """A distribution of Bernoulli bandits: a task family like :class:`~fewshot.tasks.regression.Sinusoid`.

    Args:
        arms: k, the number of arms.
        horizon: n, pulls per bandit (one trial).
        prior: how each bandit's arm means are drawn: ``uniform`` (each mean U[0, 1], Duan et al. 2016),
            ``beta:A,B`` (each mean Beta(A, B)), or, for the dependent bandit, Wang et al.'s fixed pairs
            ``easy`` {0.1, 0.9}, ``medium`` {0.25, 0.75}, ``hard`` {0.4, 0.6} (which arm is better: a coin flip).
        dependent: Wang et al.'s two-armed dependent bandit: ``p_2 = 1 - p_1`` (``arms`` must be 2).
        seed: bandit ``i`` is a pure function of ``(seed, i)``.

    Example:
        >>> family = Bandits(arms=5, horizon=100, seed=0)
        >>> batch = family.batch(range(1000))      # 1000 bandits as tensors: batch.rewards (1000, 100, 5)
    """

    arms: int = 5
    horizon: int = 100
    prior: str = "uniform"
    dependent: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arms < 2:
            raise ValueError(f"a bandit needs at least 2 arms, got arms={self.arms}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1 pull, got {self.horizon}")
        if self.dependent and self.arms != 2:
            raise ValueError(f"the dependent bandit (p_2 = 1 - p_1) has 2 arms; drop --arms {self.arms}")
        self.beta_prior()  # checks the spelling

    def beta_prior(self) -> tuple[float, float] | None:
        """``(A, B)`` of a ``beta:A,B`` prior, None for the others (a bad spelling is refused)."""
        if self.prior in ("uniform", "easy", "medium", "hard"):
            if self.prior != "uniform" and not self.dependent:
                raise ValueError(
                    f"prior {self.prior} is one of Wang et al.'s dependent bandits: use --dataset dependent-bandit"
                )
            return None
        try:
            assert self.prior.startswith("beta:")
            a, b = (float(v) for v in self.prior[5:].split(","))
            assert a > 0 and b > 0 and math.isfinite(a + b)
        except (AssertionError, ValueError):
            raise ValueError(
                f"unknown arm prior {self.prior!r}; choose uniform, beta:A,B (A, B > 0, e.g. beta:2,2), or for "
                "the dependent bandit easy, medium or hard"
            ) from None
        return a, b

    @property
    def in_features(self) -> int:
        return 0  # a bandit shows no observation: the agent sees only its own actions and rewards

    def means(self, i: int) -> Tensor:
        """``(arms,)`` the arm means of bandit ``i`` (float64)."""
        g = generator(self.seed, i)
        if self.prior in ("easy", "medium", "hard"):
            low = {"easy": 0.1, "medium": 0.25, "hard": 0.4}[self.prior]
            p1 = low if torch.rand((), generator=g, dtype=torch.float64) < 0.5 else 1 - low
            return torch.tensor([p1, 1 - p1], dtype=torch.float64)
        size = 1 if self.dependent else self.arms
        ab = self.beta_prior()
        if ab is None:
            p = torch.rand(size, generator=g, dtype=torch.float64)
        else:  # Beta(A, B) through numpy's generator, seeded from the same stream
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=g)))
            p = torch.from_numpy(rng.beta(*ab, size=size))
        return torch.cat([p, 1 - p]) if self.dependent else p

    def task(self, i: int) -> Bandit:
        """Bandit ``i``: its means, the reward table drawn from them, and the agent's uniforms."""
        means = self.means(i)
        g = stream(self.seed, i, 1)  # its own stream: the table never depends on how the means were drawn
        u = torch.rand(self.horizon, self.arms, generator=g, dtype=torch.float64)
        noise = torch.rand(self.horizon, 2, generator=g)
        seed = int(torch.randint(0, 2**62, (), generator=g))
        return Bandit(means.float(), (u < means).float(), noise, seed)

    def batch(self, indices: range | list[int]) -> BanditBatch:
        return BanditBatch.of([self.task(i) for i in indices])


@dataclass
class BanditBatch:
    """``B`` bandits as tensors, played in lock step: the environment batch of the RL algorithms.

    Every step of a trial is one pull (Duan et al.'s episodes of one pull), so ``done`` is 1 at every step; the
    observation is empty (``obs_dim`` 0).
    """

    means: Tensor  # (B, arms)
    rewards: Tensor  # (B, horizon, arms)
    noise: Tensor  # (B, horizon, 2)
    seeds: list[int]

    @classmethod
    def of(cls, tasks: list[Bandit]) -> BanditBatch:
        if not tasks:
            raise ValueError("no bandits to play")
        return cls(torch.stack([t.means for t in tasks]), torch.stack([t.rewards for t in tasks]),
                   torch.stack([t.noise for t in tasks]), [t.seed for t in tasks])  # fmt: skip

    @property
    def size(self) -> int:
        return self.means.shape[0]

    @property
    def arms(self) -> int:
        return self.means.shape[1]

    @property
    def horizon(self) -> int:
        return self.rewards.shape[1]

    @property
    def obs_dim(self) -> int:
        return 0

    def to(self, device: torch.device | str) -> BanditBatch:
        return BanditBatch(self.means.to(device), self.rewards.to(device), self.noise.to(device), self.seeds)

    def reset(self) -> Tensor:
        """The first observation, ``(B, 0)``."""
        return self.means.new_zeros(self.size, 0)

    def step(self, t: int, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pulls arm ``actions (B,)`` at time ``t``: ``(observation (B, 0), reward (B,), done (B,))``."""
        reward = self.rewards[:, t].gather(1, actions[:, None])[:, 0]
        return self.reset(), reward, torch.ones_like(reward)

    def regret(self, actions: Tensor) -> Tensor:
        """``(B, t)`` expected regret of each pull, ``max_a p_a - p_{a_t}``: exact, free of the reward draws."""
        return self.means.max(1, keepdim=True).values - self.means.gather(1, actions)


def regret(means: Tensor, actions: Tensor) -> Tensor:
    """Expected total regret of playing ``actions (..., n)`` on bandits with arm means ``means (..., arms)``:
    ``n * max_a p_a - sum_t p_{a_t}`` (Lai and Robbins 1985), exact for any fixed action sequence."""
    return (means.max(-1, keepdim=True).values - means.gather(-1, actions)).sum(-1)


def sample_actions(logits: Tensor, u: Tensor) -> Tensor:
    """``(B,)`` actions drawn from ``softmax(logits (B, actions))`` by inverting the CDF at uniforms ``u (B,)``
    (the bandit's own noise: the draw is a function of the task, as the rewards are)."""
    # float64: the same draw whatever the model's precision (float32 on Apple's MPS, which has no float64)
    cdf = torch.softmax(
        logits.detach().to(torch.float32 if logits.device.type == "mps" else torch.float64), -1
    )
    cdf = cdf.cumsum(-1)
    return (cdf < u[:, None]).sum(-1).clamp(max=logits.shape[-1] - 1)
