"""A transformer that learns linear functions in context: Garg, Tsipras, Liang & Valiant (2022). What Can
Transformers Learn In-Context? A Case Study of Simple Function Classes. NeurIPS. arXiv:2208.01066.

The decoder-only :class:`~fewshot.models.attention.PromptTransformer` reads ``x_1, y_1, ..., x_n, y_n``; training
minimises the squared error of its prediction at *every* ``x_i`` from the points before it (Garg et al., equation
(1)), so one prompt of ``n`` points teaches prompts of every length up to ``n``. At test time the state is the
prompt's examples and each query is predicted after all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import AlgorithmSpec, Params, call, check_range, setting
from fewshot.algorithms.lsa import InContext
from fewshot.models.attention import PromptTransformer
from fewshot.tasks.episodes import Task


@dataclass(frozen=True)
class PromptLearner(InContext):
    """Garg et al.'s training objective over every prefix of the prompt; prediction as :class:`InContext`."""

    def task_loss(self, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        """Mean squared error of the prediction at every point of ``support + query`` from the points before it;
        also returns the query points' predictions."""
        loss, outputs = self.batch_loss(model, params, [task])
        return loss, outputs[0]

    def batch_loss(
        self, model: nn.Module, params: Params, tasks: Sequence[Task]
    ) -> tuple[Tensor, list[Tensor]]:
        """The same over tasks of one shape, as one batch of prompts (one forward pass)."""
        x = torch.stack([torch.cat([t.support.x, t.query.x]).flatten(1) for t in tasks])  # (B, n, d) prompts
        y = torch.stack([torch.cat([t.support.y, t.query.y]).flatten() for t in tasks])  # (B, n)
        out = call(model, params, x, y=y)  # (B, n): each point predicted from its prefix
        k = len(tasks[0].support.x)
        return F.mse_loss(out, y), [o[k:].view(t.query.y.shape) for o, t in zip(out, tasks, strict=True)]


@dataclass(frozen=True)
class TransformerSettings:
    width: int = setting(256, "the transformer's width (256 in Garg et al.)")
    depth: int = setting(12, "transformer blocks (12 in Garg et al.)")
    heads: int = setting(8, "attention heads (8 in Garg et al.)")
    max_points: int = setting(101, "the longest prompt, in points (positions are learned up to it)")

    def __post_init__(self) -> None:
        check_range(self, {"width": 1, "depth": 1, "heads": 1, "max_points": 1})
        if self.width % self.heads:
            raise ValueError(f"width must be a multiple of heads, got {self.width} and {self.heads}")


SPEC = AlgorithmSpec(
    name="transformer",
    summary="a decoder-only transformer learning functions in context from its prompt (Garg et al. 2022)",
    build=lambda s, testing: PromptLearner(),
    model=lambda request, s: PromptTransformer(request.in_features, s.width, s.depth, s.heads, s.max_points),
    settings=TransformerSettings,
    data=("regression",),
)
