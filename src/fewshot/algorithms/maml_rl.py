"""MAML for policies: a bandit policy adapted by policy-gradient steps within the trial, meta-trained through them.

Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML, section 3.3
(reinforcement learning); the term for the inner samples' distribution as in Al-Shedivat et al. (2018) and
Stadie et al. (2018, E-MAML).

The ``horizon`` pulls of a trial are cut into ``inner_steps + 1`` equal blocks. Block 0 is played by the meta-learned
policy ``theta_0``; after block j the policy takes one REINFORCE step on that block's pulls (each pull a trajectory
of one step, its baseline the mean reward of the block's other pulls, which keeps the estimate unbiased):

    theta_{j+1} = theta_j + inner_lr * 1/m sum_{t in block j} (r_t - b_t) grad log pi_{theta_j}(a_t)

The meta-objective is the expected total reward of the trial. Its gradient, estimated exactly (``first_order``
False), is the gradient of the surrogate

    S = sum_t log pi_{theta_j(t)}(a_t) * [ (r_t - b_t) + (F_j(t) - c_j(t)) ]

where ``theta_j(t)`` is a differentiable function of ``theta_0`` (the inner steps taken with ``create_graph``, so
second derivatives flow), ``F_j`` is the reward of the blocks after block j (the inner samples change the
adapted policy, hence all later rewards: the term MAML's original estimator dropped) and ``c_j`` its mean over
the other tasks of the batch (a baseline that does not depend on this task's samples). The expected gradient of
S equals the gradient of the expected total reward: ``tests/test_maml_rl.py`` checks it against finite
differences of the exactly enumerated objective, in float64. With ``first_order`` the inner steps are constants
and the ``F`` term is dropped (FOMAML: the sum of each block's policy gradient at its adapted weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fewshot.algorithms.base import Algorithm, AlgorithmSpec, Params, check_range, full_precision, setting
from fewshot.models.policy import PolicyMLP
from fewshot.rl.bandits import BanditBatch, sample_actions


def leave_one_out(r: Tensor) -> Tensor:
    """The baseline of each of ``r (m,)``: the mean of the others (0 when alone)."""
    m = r.shape[-1]
    return (r.sum(-1, keepdim=True) - r) / (m - 1) if m > 1 else torch.zeros_like(r)


def reinforce(logp: Tensor, rewards: Tensor) -> Tensor:
    """The REINFORCE surrogate of ``m`` one-step trajectories: ``1/m sum (r - b) log pi(a)``; its gradient is the
    unbiased leave-one-out policy-gradient estimate (Kool et al. 2019)."""
    return ((rewards - leave_one_out(rewards)).detach() * logp).mean()


@dataclass(frozen=True)
class MAMLRL(Algorithm):
    """MAML-RL on bandits (Finn et al. 2017, section 3.3), online: adapt every ``horizon / (inner_steps + 1)`` pulls.

    Args:
        inner_lr: REINFORCE step size (gradient ascent on the reward).
        inner_steps: adaptation steps within a trial (the trial has ``inner_steps + 1`` blocks of pulls).
        first_order: drop second derivatives and the inner samples' distribution term.

    Example:
        >>> maml = MAMLRL(inner_lr=1.0, inner_steps=1)
        >>> loss, rewards = maml.batch_loss(model, parameters_of(model), [Bandits(2, 10).task(i) for i in range(32)])
    """

    inner_lr: float = 1.0
    inner_steps: int = 1
    first_order: bool = False

    def blocks(self, horizon: int) -> list[tuple[int, int]]:
        """``[(start, end), ...]``: the pulls of each block (the last takes the remainder)."""
        if self.inner_steps + 1 > horizon:
            raise ValueError(
                f"inner_steps={self.inner_steps} cuts a trial of {horizon} pulls into {self.inner_steps + 1} blocks; "
                f"use --inner-steps {horizon - 1} or fewer"
            )
        size = horizon // (self.inner_steps + 1)
        edges = [min(j * size, horizon) for j in range(self.inner_steps + 1)] + [horizon]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]

    def trial(
        self, model: nn.Module, params: Params, rewards: Tensor, noise: Tensor, actions: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One task's trial: ``(own surrogate, log-probability sum per block (J,), reward per block (J,), actions
        (n,))`` for its reward table ``rewards (n, arms)`` and uniforms ``noise (n,)`` (or given ``actions``, to
        enumerate outcomes in tests). Differentiable w.r.t. ``params`` through every inner step."""
        theta, own, logps, totals, taken = params, rewards.new_zeros(()), [], [], []
        spans = self.blocks(rewards.shape[0])
        obs = next(iter(params.values())).new_zeros(1, 0)  # a bandit observes nothing (in the policy's dtype)

        def log_pi(p: Params, acts: Tensor) -> Tensor:  # (m,) log pi_p(a_t) of one block's pulls
            logits = functional_call(model, p, (obs,)).expand(acts.shape[0], -1)
            return F.log_softmax(full_precision(logits), -1).gather(1, acts[:, None])[:, 0]

        for j, (a, b) in enumerate(spans):
            if actions is None:
                acts = sample_actions(functional_call(model, theta, (obs,)).expand(b - a, -1), noise[a:b])
            else:
                acts = actions[a:b]
            r = rewards[a:b].gather(1, acts[:, None])[:, 0]
            logp = log_pi(theta, acts)
            own = own + ((r - leave_one_out(r)).detach() * logp).sum()
            logps.append(logp.sum())
            totals.append(r.sum())
            taken.append(acts)
            if j + 1 < len(spans):  # adapt on this block for the next
                g = grad(lambda p, acts=acts, r=r: reinforce(log_pi(p, acts), r))(theta)
                if self.first_order:
                    g = {k: v.detach() for k, v in g.items()}
                theta = {k: theta[k] + self.inner_lr * g[k] for k in theta}
        return own, torch.stack(logps), torch.stack(totals), torch.cat(taken)

    def surrogate(self, own: Tensor, logps: Tensor, totals: Tensor) -> Tensor:
        """``(B,)`` the surrogate S of each task from :meth:`trial`'s outputs (``(B,)``, ``(B, J)``, ``(B, J)``)."""
        if self.first_order:
            return own
        future = totals.flip(1).cumsum(1).flip(1) - totals  # (B, J) reward of the blocks after block j
        B = future.shape[0]
        baseline = (future.sum(0, keepdim=True) - future) / (B - 1) if B > 1 else torch.zeros_like(future)
        return own + ((future - baseline).detach() * logps).sum(1)

    def batch_loss(self, model: nn.Module, params: Params, tasks: list[Any]) -> tuple[Tensor, list[Tensor]]:
        """``(-S / horizon averaged over tasks, total reward of each task's trial)``."""
        env = BanditBatch.of(tasks).to(next(iter(params.values())).device)
        own, logps, totals, _ = vmap(lambda rw, u: self.trial(model, params, rw, u))(
            env.rewards, env.noise[:, :, 0]
        )
        loss = -self.surrogate(own, logps, totals).mean() / env.horizon
        return loss, list(totals.sum(1).detach())

    def play(self, model: nn.Module, params: Params, env: BanditBatch) -> tuple[Tensor, Tensor]:
        """``(actions (B, n), rewards (B, n))`` of one trial per bandit (adapting as in training)."""
        env = env.to(next(iter(params.values())).device)
        with torch.no_grad():
            _, _, _, actions = vmap(lambda rw, u: self.trial(model, params, rw, u))(
                env.rewards, env.noise[:, :, 0]
            )
        return actions, env.rewards.gather(2, actions[..., None])[..., 0]


@dataclass(frozen=True)
class MAMLRLSettings:
    inner_lr: float = setting(1.0, "REINFORCE step size of the inner loop (ascent on the reward)")
    inner_steps: int = setting(
        1,
        "policy-gradient steps within a trial (cut into inner_steps + 1 blocks of pulls; a step after each but the last)",
    )
    first_order: bool = setting(False, "first-order MAML-RL: no second derivatives, no inner-sampling term")
    layers: int = setting(1, "hidden layers of the policy MLP (0: a logit per arm)")

    def __post_init__(self) -> None:
        check_range(self, {"inner_steps": 0, "layers": 0}, ("inner_lr",))


SPEC = AlgorithmSpec(
    name="maml-rl",
    summary="MAML-RL: a policy adapted by REINFORCE steps within the trial, meta-trained through them (Finn et al. 2017)",
    build=lambda s, testing: MAMLRL(s.inner_lr, s.inner_steps, s.first_order),
    model=lambda request, s: PolicyMLP(request.in_features, request.actions, request.hidden, s.layers),
    settings=MAMLRLSettings,
    data=("bandit",),
    routes=("autograd",),
)
