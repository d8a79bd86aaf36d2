"""Neural processes as few-shot regressors: Garnelo et al. (2018), "Conditional Neural Processes", ICML,
arXiv 1807.01613; Kim et al. (2019), "Attentive Neural Processes", ICLR, arXiv 1901.05761.

No weight changes with the task: ``adapt`` keeps the support set (the context) and ``predict`` runs the network on
it and the new inputs (:class:`~fewshot.models.neural_process.NeuralProcess`), returning the predictive mean, so
MSE evaluation, ``compare`` and the baselines treat it as any regressor. Meta-training maximises the Gaussian
log-likelihood of the query targets under the predicted mean and standard deviation (both papers' objective for
the deterministic models), one batch of tasks per forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import Algorithm, AlgorithmSpec, Params, call, check_range, setting
from fewshot.models.neural_process import NeuralProcess
from fewshot.tasks.episodes import Split, Task


def gaussian_nll(mean: Tensor, sd: Tensor, y: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``y`` under ``N(mean, sd^2)``, per target value (nats)."""
    return (torch.log(sd) + 0.5 * ((y - mean) / sd) ** 2 + 0.5 * math.log(2 * math.pi)).mean()


@torch.no_grad()
def task_nll(model: nn.Module, params: Params, task_at: Callable[[int], Task], tasks: int) -> list[float]:
    """The query Gaussian NLL (nats per target) of each of tasks ``task_at(0..tasks-1)``, after reading its
    support set as the context."""
    learner, out = NeuralProcessLearner(), []
    for i in range(tasks):
        t = task_at(i)
        mean, sd = learner.distribution(model, params, learner.adapt(model, params, t.support, 0), t.query.x)
        out.append(gaussian_nll(mean, sd, t.query.y.reshape(mean.shape)).item())
    return out


def _targets(y: Tensor, n: int) -> Tensor:
    # (n, dy): sinusoids and GP curves have (n, 1), FunctionTasks (n,); n may be 0 (an empty context)
    return y.reshape(n, math.prod(y.shape[1:]))


@dataclass(frozen=True)
class NeuralProcessLearner(Algorithm):
    """Adapt = keep the context; predict = the predictive mean; train on the query log-likelihood."""

    def adapt(
        self, model: nn.Module, params: Params, support: Split, ways: int
    ) -> tuple[Tensor, Tensor, tuple]:
        if ways:
            raise ValueError("neural processes here are regressors; use a regression task (ways 0)")
        # (k, dx) inputs, (k, dy) targets, and the targets' own shape per point ((1,) for curves, () for prompts)
        return support.x.flatten(1), _targets(support.y, len(support.y)), tuple(support.y.shape[1:])

    def distribution(
        self, model: nn.Module, params: Params, state: tuple, x: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Predictive ``(mean, sd)`` at ``x (n, *features)``, each ``(n, dy)``."""
        xs, ys, _ = state
        mean, sd = call(model, params, xs[None], y=ys[None], query=x.flatten(1)[None])
        return mean[0], sd[0]

    def predict(self, model: nn.Module, params: Params, state: tuple, x: Tensor) -> Tensor:
        mean, _ = self.distribution(model, params, state, x)
        return mean.reshape(x.shape[0], *state[2])  # (n, *target shape)

    def task_loss(self, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        loss, outputs = self.batch_loss(model, params, [task])
        return loss, outputs[0]

    def batch_loss(
        self, model: nn.Module, params: Params, tasks: Sequence[Task]
    ) -> tuple[Tensor, list[Tensor]]:
        """Query negative log-likelihood over tasks of one shape, in one forward pass; the outputs are the
        predictive means, shaped as each task's query targets."""
        xs = torch.stack([t.support.x.flatten(1) for t in tasks])  # (B, k, dx)
        ys = torch.stack([_targets(t.support.y, len(t.support.y)) for t in tasks])  # (B, k, dy)
        xq = torch.stack([t.query.x.flatten(1) for t in tasks])  # (B, m, dx)
        yq = torch.stack([_targets(t.query.y, len(t.query.y)) for t in tasks])  # (B, m, dy)
        mean, sd = call(model, params, xs, y=ys, query=xq)
        return gaussian_nll(mean, sd, yq), [
            mu.reshape(t.query.y.shape) for mu, t in zip(mean, tasks, strict=True)
        ]


@dataclass(frozen=True)
class NeuralProcessSettings:
    width: int = setting(128, "hidden units of the neural process's encoder and decoder (128 in both papers)")

    def __post_init__(self) -> None:
        check_range(self, {"width": 8})
        if self.width % 8:
            raise ValueError(f"width must be a multiple of 8 (the attention heads), got {self.width}")


def _model(attention: bool):
    return lambda request, s: NeuralProcess(request.in_features, 1, s.width, attention)


CNP_SPEC = AlgorithmSpec(
    name="cnp",
    summary="conditional neural process: mean of encoded context pairs, Gaussian decoder (Garnelo et al. 2018)",
    build=lambda s, testing: NeuralProcessLearner(),
    model=_model(False),
    settings=NeuralProcessSettings,
    data=("regression",),
)
ANP_SPEC = AlgorithmSpec(
    name="anp",
    summary="attentive neural process, deterministic path: cross-attention to the context (Kim et al. 2019)",
    build=lambda s, testing: NeuralProcessLearner(),
    model=_model(True),
    settings=NeuralProcessSettings,
    data=("regression",),
)
