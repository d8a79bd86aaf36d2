"""Linear self-attention that learns in context: von Oswald, Niklasson, Randazzo, Sacramento, Mordvintsev, Zhmoginov &
Vladymyrov (2023). Transformers learn in-context by gradient descent. ICML. arXiv:2212.07677.

No weight changes with the task: ``adapt`` keeps the prompt's examples and ``predict`` runs the network on the
examples and the new inputs together (:class:`~fewshot.models.attention.LinearSelfAttention`). Meta-training fits
the attention weights so that this forward pass predicts well; the paper finds that one trained layer converges to
one step of gradient descent on the in-context squared loss, which
:func:`~fewshot.models.attention.gradient_descent_layers` constructs exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import Algorithm, AlgorithmSpec, Params, call, check_range, setting
from fewshot.models.attention import LinearSelfAttention
from fewshot.tasks.episodes import Split, Task


@dataclass(frozen=True)
class InContext(Algorithm):
    """A network that reads the support set with the inputs to predict: the state is the support itself.

    The model is called as ``model(x (1, k, d), y=(1, k), query=(1, n, d)) -> (1, n)``; regression only.
    """

    def adapt(
        self, model: nn.Module, params: Params, support: Split, ways: int
    ) -> tuple[Tensor, Tensor, tuple]:
        if ways:
            raise ValueError("in-context regression networks predict numbers; use a regression task (ways 0)")
        # (k, d) inputs, (k,) targets, and the targets' own shape per point ((1,) for sinusoids, () for FunctionTasks)
        return support.x.flatten(1), support.y.reshape(len(support.y)), tuple(support.y.shape[1:])

    def predict(
        self, model: nn.Module, params: Params, state: tuple[Tensor, Tensor, tuple], x: Tensor
    ) -> Tensor:
        xs, ys, shape = state
        out = call(
            model, params, xs.unsqueeze(0), y=ys.unsqueeze(0), query=x.flatten(1).unsqueeze(0)
        )  # (1, n)
        return out[0].view(x.shape[0], *shape)  # (n, *target shape)

    def batch_loss(
        self, model: nn.Module, params: Params, tasks: Sequence[Task]
    ) -> tuple[Tensor, list[Tensor]]:
        """The query squared error over tasks of one shape, as one batch of prompts (one forward pass)."""
        xs = torch.stack([t.support.x.flatten(1) for t in tasks])  # (B, k, d)
        ys = torch.stack([t.support.y.flatten() for t in tasks])  # (B, k)
        query = torch.stack([t.query.x.flatten(1) for t in tasks])  # (B, m, d)
        target = torch.stack([t.query.y.flatten() for t in tasks])  # (B, m)
        out = call(model, params, xs, y=ys, query=query)  # (B, m)
        return F.mse_loss(out, target), [o.view(t.query.y.shape) for o, t in zip(out, tasks, strict=True)]


@dataclass(frozen=True)
class LSASettings:
    layers: int = setting(
        1, "linear self-attention layers (1: one gradient-descent step in von Oswald et al.)"
    )

    def __post_init__(self) -> None:
        check_range(self, {"layers": 1})


SPEC = AlgorithmSpec(
    name="lsa",
    summary="linear self-attention learning in context, as gradient descent (von Oswald et al. 2023)",
    build=lambda s, testing: InContext(),
    model=lambda request, s: LinearSelfAttention(request.in_features, s.layers),
    settings=LSASettings,
    data=("regression",),
)
