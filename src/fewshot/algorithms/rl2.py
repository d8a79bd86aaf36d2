"""RL²: a recurrent policy meta-trained across tasks learns to explore a new one within a trial.

Duan, Schulman, Chen, Bartlett, Sutskever & Abbeel (2016). RL²: Fast Reinforcement Learning via Slow Reinforcement
Learning. arXiv:1611.02779. Wang, Kurth-Nelson, Tirumala, Soyer, Leibo, Munos, Blundell, Kumaran & Botvinick
(2016). Learning to reinforcement learn. arXiv:1611.05763.

A trial is ``horizon`` steps on one task (for a bandit: ``horizon`` episodes of one pull each, as in Duan et al.).
At every step the GRU (:class:`~fewshot.models.policy.RecurrentPolicy`) reads the observation, the previous action
(one-hot), the previous reward and the previous termination flag (Duan et al.), and the time ``t / horizon`` (Wang
et al. feed the trial number: without it the critic cannot tell how much reward is still to come, and its error
swamps the policy's gradient at horizon 100); its hidden state is never reset within the trial, so what it learned from earlier pulls or episodes of the task stays with it. Nothing is adapted by
gradient at test time: the "inner loop" is the GRU's own dynamics, the "outer loop" ordinary RL across tasks.

Objective: advantage actor-critic (A2C, the objective of Wang et al.) over whole trials, with generalised advantage
estimation (Schulman et al. 2016) across the episodes of the trial (the return of a pull includes what it taught
for later pulls), advantages normalised per batch, an entropy bonus, and a squared-error value loss: one
gradient step per batch of ``tasks_per_step`` trials. Duan et al. used TRPO; A2C fits fewshot's one loss per step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fewshot.algorithms.base import Algorithm, AlgorithmSpec, Params, check_range, full_precision, setting
from fewshot.models.policy import RecurrentPolicy
from fewshot.rl.bandits import sample_actions


@dataclass
class Rollout:
    """One trial of each of ``B`` tasks: ``(B, n)`` tensors."""

    actions: Tensor
    rewards: Tensor
    logp: Tensor  # log-probability of each action taken (with gradient)
    entropy: Tensor  # entropy of each step's action distribution
    values: Tensor  # the critic's value of each step's state


@dataclass(frozen=True)
class RL2(Algorithm):
    """RL² with an A2C objective.

    Args:
        gamma: discount across the whole trial (Duan et al. used 0.99 with TRPO; with A2C here, 0.99 and lambda
            0.3 left the policy stuck near random at horizon 100 or collapsed onto one arm, while 0.9 learned).
        gae_lambda: GAE's lambda (0.3 for Duan et al.'s bandits; 0.95 here, see gamma).
        entropy: entropy bonus coefficient at step 0.
        entropy_final: the coefficient reached at ``entropy_steps`` (linear; Wang et al. anneal it to 0).
        entropy_steps: steps of the annealing (0: the coefficient stays ``entropy``).
        value_coef: weight of the critic's squared error.
        greedy: play the most probable action instead of sampling (test time only; sampling by default).
        step: the meta-training step (set by :meth:`at_step`; None at test time).

    Example:
        >>> rl2 = RL2()
        >>> tasks = [Bandits(arms=5, horizon=100).task(i) for i in range(64)]
        >>> loss, rewards = rl2.batch_loss(model, parameters_of(model), tasks)   # loss.backward(); step
    """

    gamma: float = 0.9
    gae_lambda: float = 0.95
    entropy: float = 0.05
    entropy_final: float = 0.0
    entropy_steps: int = 0
    value_coef: float = 0.5
    greedy: bool = False
    step: int | None = None

    def at_step(self, step: int) -> RL2:
        return replace(self, step=step)

    def entropy_coef(self) -> float:
        if not self.entropy_steps or self.step is None:
            return self.entropy
        f = min(self.step / self.entropy_steps, 1.0)
        return self.entropy + f * (self.entropy_final - self.entropy)

    def rollout(self, model: nn.Module, params: Params, env: Any) -> Rollout:
        """Plays one trial of every task of the environment batch ``env`` (a
        :class:`~fewshot.rl.bandits.BanditBatch` or :class:`~fewshot.rl.gym.EnvBatch`)."""
        first = next(iter(params.values()))
        device, dtype = first.device, first.dtype  # inputs in the model's precision (float64 in checks)
        env = env.to(device)
        B, k, n = env.size, env.arms, env.horizon
        obs = env.reset().to(dtype)  # (B, obs_dim)
        # one-hot previous action, previous reward, previous done flag
        prev = torch.zeros(B, k + 2, device=device, dtype=dtype)
        h = None
        out: dict[str, list[Tensor]] = {"actions": [], "rewards": [], "logp": [], "entropy": [], "values": []}
        for t in range(n):
            now = torch.full(
                (B, 1), t / n, device=device, dtype=dtype
            )  # the time, as a fraction of the trial
            logits, value, h = functional_call(model, params, (torch.cat([obs, prev, now], 1), h))
            logits = full_precision(logits)
            log_probs = F.log_softmax(logits, -1)  # (B, k)
            a = (
                logits.argmax(-1)
                if self.greedy and self.step is None
                else sample_actions(logits, env.noise[:, t, 0])
            )
            obs, r, done = env.step(t, a)
            obs, r = obs.to(dtype), r.to(dtype)
            prev = torch.cat([F.one_hot(a, k).to(dtype), r[:, None], done[:, None].to(dtype)], 1)
            out["actions"].append(a)
            out["rewards"].append(r)
            out["logp"].append(log_probs.gather(1, a[:, None])[:, 0])
            out["entropy"].append(-(log_probs.exp() * log_probs).sum(-1))
            out["values"].append(full_precision(value))
        return Rollout(**{key: torch.stack(v, 1) for key, v in out.items()})

    def play(self, model: nn.Module, params: Params, env: Any) -> tuple[Tensor, Tensor]:
        """``(actions (B, n), rewards (B, n))`` of one trial per task, without gradients."""
        with torch.no_grad():
            r = self.rollout(model, params, env)
        return r.actions, r.rewards

    def advantages(self, rewards: Tensor, values: Tensor) -> Tensor:
        """GAE advantages ``(B, n)`` over the trial (the value after the last step is 0: the trial ends)."""
        values = values.detach()
        nxt = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
        delta = rewards + self.gamma * nxt - values
        adv = torch.zeros_like(delta)
        running = torch.zeros_like(delta[:, 0])
        for t in range(delta.shape[1] - 1, -1, -1):
            running = delta[:, t] + self.gamma * self.gae_lambda * running
            adv[:, t] = running
        return adv

    def batch_loss(self, model: nn.Module, params: Params, tasks: list[Any]) -> tuple[Tensor, list[Tensor]]:
        """``(A2C loss, total reward of each task's trial)`` of one trial per task."""
        r = self.rollout(model, params, type(tasks[0]).batch(tasks))
        adv = self.advantages(r.rewards, r.values)
        returns = adv + r.values.detach()
        norm = (adv - adv.mean()) / (adv.std() + 1e-8) if adv.numel() > 1 else adv
        loss = (
            -(norm * r.logp).mean()
            + self.value_coef * (r.values - returns).square().mean()
            - self.entropy_coef() * r.entropy.mean()
        )
        return loss, list(r.rewards.sum(1).detach())


@dataclass(frozen=True)
class RL2Settings:
    gamma: float = setting(0.9, "discount across the trial (Duan et al.'s 0.99 did not learn with A2C here)")
    gae_lambda: float = setting(0.95, "GAE lambda (Duan et al.: 0.3 with TRPO)")
    entropy: float = setting(0.05, "entropy bonus coefficient")
    entropy_final: float = setting(0.0, "entropy coefficient reached after entropy_steps steps (linear)")
    entropy_steps: int = setting(
        0, "steps over which the entropy coefficient goes to entropy_final (0: constant)"
    )
    value_coef: float = setting(0.5, "weight of the critic's squared error")
    greedy: bool = setting(False, "test time: play the most probable arm instead of sampling")

    def __post_init__(self) -> None:
        check_range(self, {"entropy": 0.0, "entropy_final": 0.0, "entropy_steps": 0, "value_coef": 0.0})
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")


def _model(request: Any, settings: Any) -> nn.Module:
    return RecurrentPolicy(request.in_features, request.actions, request.hidden)


SPEC = AlgorithmSpec(
    name="rl2",
    summary="RL²: a GRU policy meta-trained with A2C across bandits explores a new one (Duan et al. 2016)",
    build=lambda s, testing: RL2(
        s.gamma, s.gae_lambda, s.entropy, s.entropy_final, s.entropy_steps, s.value_coef, s.greedy
    ),  # fmt: skip
    model=_model,
    settings=RL2Settings,
    data=("bandit",),
    routes=("autograd",),
)
