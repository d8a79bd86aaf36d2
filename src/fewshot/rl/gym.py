"""Meta-RL on gymnasium environments: a Bernoulli bandit environment, and tasks made of any environment.

Needs the ``gymnasium`` package (``pip install 'fewshot[rl]'``); the tensor bandits of :mod:`fewshot.rl.bandits`
do not.

* :class:`BernoulliBanditEnv`: a k-armed Bernoulli bandit with the gymnasium API (``reset``/``step``, spaces);
  each episode is ``pulls`` pulls (1 by default: Duan et al.'s episodes of one pull).
* :class:`EnvTasks`: the task-sampling wrapper. ``make(rng)`` draws one task's parameters from ``rng`` and returns
  its environment (a maze's goal, a bandit's means, a pendulum's mass, ...); task ``i`` uses
  ``numpy.random.default_rng([seed, i])``, so it depends only on ``(seed, i)``.
* :class:`EnvBatch`: the environments of a list of tasks stepped together for ``horizon`` steps (one trial); an
  environment whose episode ends is reset and the trial goes on, so a recurrent agent (RL²) keeps its memory of the
  task across episodes. It has the environment-batch interface of :class:`~fewshot.rl.bandits.BanditBatch`, so
  RL²'s ``batch_loss`` and ``play`` take either (MAML-RL's one-pull trajectories are bandits' alone).

Example (RL² on your own environment, from Python)::

    tasks = EnvTasks(lambda rng: MyEnv(goal=rng.uniform(-1, 1)), horizon=200, seed=0)
    model = RecurrentPolicy(tasks.obs_dim, tasks.actions, hidden=128)
    rl2, opt = RL2(), torch.optim.Adam(model.parameters(), 1e-3)
    for step in range(1000):
        loss, _ = rl2.batch_loss(model, parameters_of(model), [tasks.task(step * 16 + j) for j in range(16)])
        opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

try:
    import gymnasium
    from gymnasium import spaces
except ImportError as e:  # pragma: no cover - the extra is installed with the tests
    raise ImportError("fewshot.rl.gym needs gymnasium: pip install 'fewshot[rl]'") from e

from fewshot.rl.bandits import stream


class BernoulliBanditEnv(gymnasium.Env):
    """A Bernoulli bandit with the gymnasium API: action ``a`` pays 1 with probability ``means[a]``, else 0.

    Args:
        means: ``(arms,)`` success probabilities.
        pulls: pulls per episode (the episode terminates after them).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, means: Any, pulls: int = 1) -> None:
        self.means = np.asarray(means, dtype=np.float64)
        if self.means.ndim != 1 or len(self.means) < 2 or not ((self.means >= 0) & (self.means <= 1)).all():
            raise ValueError(f"means must be 2 or more probabilities in [0, 1], got {means}")
        if pulls < 1:
            raise ValueError(f"pulls must be at least 1, got {pulls}")
        self.pulls = pulls
        self.action_space = spaces.Discrete(len(self.means))
        self.observation_space = spaces.Box(0.0, 1.0, shape=(0,))  # nothing to observe
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(0, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm in 0..{len(self.means) - 1}, got {action!r}")
        reward = float(self.np_random.random() < self.means[int(action)])
        self._t += 1
        return np.zeros(0, dtype=np.float32), reward, self._t >= self.pulls, False, {}


class EnvTask(NamedTuple):
    """Task ``index`` of an :class:`EnvTasks` family (a value: the recipe of its environment)."""

    make: Callable[[np.random.Generator], gymnasium.Env]
    index: int
    seed: int
    horizon: int

    @staticmethod
    def batch(tasks: list[EnvTask]) -> EnvBatch:
        return EnvBatch(tasks)


@dataclass(frozen=True)
class EnvTasks:
    """A distribution of tasks given by ``make(rng) -> gymnasium.Env`` (the task-sampling wrapper).

    Args:
        make: draws one task's parameters from the generator and returns its environment (discrete actions).
        horizon: steps per trial, across as many episodes as fit.
        seed: task ``i`` depends only on ``(seed, i)``.
    """

    make: Callable[[np.random.Generator], gymnasium.Env]
    horizon: int
    seed: int = 0

    def task(self, i: int) -> EnvTask:
        return EnvTask(self.make, i, self.seed, self.horizon)

    @property
    def _probe(self) -> EnvBatch:
        return EnvBatch([self.task(0)])

    @property
    def obs_dim(self) -> int:
        return self._probe.obs_dim

    @property
    def actions(self) -> int:
        return self._probe.arms


class EnvBatch:
    """The environments of ``tasks`` played in lock step for one trial of ``horizon`` steps."""

    def __init__(self, tasks: list[EnvTask]) -> None:
        if not tasks:
            raise ValueError("no tasks to play")
        self.tasks = tasks
        self.envs = [t.make(np.random.default_rng([t.seed, t.index])) for t in tasks]
        first = self.envs[0]
        for env in self.envs:
            if not isinstance(env.action_space, spaces.Discrete):
                raise ValueError(
                    f"fewshot's RL agents take discrete actions; this environment has {env.action_space}"
                )
            if env.action_space.n != first.action_space.n or spaces.flatdim(
                env.observation_space
            ) != spaces.flatdim(first.observation_space):
                raise ValueError("every task's environment must have the same action and observation spaces")
        self.arms = int(first.action_space.n)
        self.obs_dim = spaces.flatdim(first.observation_space)
        self.horizon = tasks[0].horizon
        self.size = len(tasks)
        # the agent's uniforms, a function of the task alone (as a bandit's)
        self.noise = torch.stack([torch.rand(self.horizon, 2, generator=stream(t.seed, t.index, 2))
                                  for t in tasks])  # fmt: skip
        self.device = torch.device("cpu")
        self._episode = [0] * self.size

    def to(self, device: torch.device | str) -> EnvBatch:
        self.device = torch.device(device)
        self.noise = self.noise.to(self.device)
        return self

    def _obs(self, observations: list[Any]) -> Tensor:
        flat = [
            spaces.flatten(env.observation_space, o) for env, o in zip(self.envs, observations, strict=True)
        ]
        return torch.as_tensor(np.stack(flat), dtype=torch.float32, device=self.device).reshape(self.size, -1)

    def _reset(self, i: int) -> Any:
        t = self.tasks[i]
        # each episode of the trial has its own seed, a function of (task, episode)
        seed = int(np.random.SeedSequence([t.seed, t.index, self._episode[i]]).generate_state(1)[0])
        self._episode[i] += 1
        return self.envs[i].reset(seed=seed)[0]

    def reset(self) -> Tensor:
        self._episode = [0] * self.size
        return self._obs([self._reset(i) for i in range(self.size)])

    def step(self, t: int, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Steps every environment (resetting those whose episode ended): ``(obs (B, d), reward (B,), done (B,))``."""
        observations, rewards, dones = [], [], []
        for i, (env, a) in enumerate(zip(self.envs, actions.tolist(), strict=True)):
            obs, reward, terminated, truncated, _ = env.step(a)
            done = terminated or truncated
            observations.append(self._reset(i) if done else obs)
            rewards.append(float(reward))
            dones.append(float(done))
        return (self._obs(observations), torch.tensor(rewards, device=self.device),
                torch.tensor(dones, device=self.device))  # fmt: skip


__all__ = ["BernoulliBanditEnv", "EnvBatch", "EnvTask", "EnvTasks"]
