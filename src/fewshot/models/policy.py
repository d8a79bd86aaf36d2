"""Policies for meta-reinforcement learning: plain ``nn.Module``\\ s, run through ``functional_call``.

* :class:`RecurrentPolicy`: the RL² agent (Duan et al. 2016): a GRU that reads, at every step, the observation,
  the previous action (one-hot), the previous reward, the previous termination flag and the time (the step's
  fraction of the trial, as Wang et al. 2016 feed the trial number), and outputs action logits and a value. Its hidden state is the agent's memory of the task: kept across the episodes of a trial.
* :class:`PolicyMLP`: a feed-forward policy ``observation -> action logits`` for MAML-RL (Finn et al. 2017): all
  task knowledge is in its weights, which the inner loop adapts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RecurrentPolicy(nn.Module):
    """A GRU actor-critic: ``forward(x (B, inputs), h (B, hidden) | None) -> (logits (B, actions), value (B,), h)``.

    Args:
        obs_dim: observation features (0 for a bandit: nothing to observe but one's own actions and rewards).
        actions: number of discrete actions (a bandit's arms).
        hidden: GRU units (256 in Duan et al. 2016; 48 LSTM units in Wang et al. 2016).
    """

    def __init__(self, obs_dim: int, actions: int, hidden: int = 256) -> None:
        super().__init__()
        self.obs_dim, self.actions, self.hidden = obs_dim, actions, hidden
        # observation, one-hot previous action, previous reward, previous done flag, time
        self.inputs = obs_dim + actions + 3
        self.gru = nn.GRUCell(self.inputs, hidden)
        self.policy = nn.Linear(hidden, actions)
        self.value = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        h = self.gru(x, h)
        return self.policy(h), self.value(h)[:, 0], h


class PolicyMLP(nn.Module):
    """``forward(obs (B, obs_dim)) -> logits (B, actions)``: an MLP on the observation and a constant 1 (so a
    bandit's policy, which observes nothing, still has weights to adapt below its output layer).

    Args:
        obs_dim: observation features (0 for a bandit).
        actions: number of discrete actions.
        hidden: units of each hidden layer; ``layers`` 0 makes the policy a linear map (a bandit: a logit per arm).
    """

    def __init__(self, obs_dim: int, actions: int, hidden: int = 64, layers: int = 1) -> None:
        super().__init__()
        sizes = [obs_dim + 1] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            body += [nn.Linear(a, b), nn.Tanh()]
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(sizes[-1], actions)

    def forward(self, obs: Tensor) -> Tensor:
        x = torch.cat([obs, obs.new_ones(*obs.shape[:-1], 1)], -1)
        return self.head(self.body(x))
