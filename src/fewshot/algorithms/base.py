"""What every algorithm is: ``adapt`` on a support set, ``predict`` on new inputs.

Settings live in a frozen dataclass, learned tensors in the model, and the per-task *state* (fast weights,
prototypes, an embedded support set) is returned by ``adapt`` rather than stored anywhere, so adaptation is
re-entrant and can be mapped over tasks with ``torch.func.vmap``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fewshot.tasks.episodes import Split, Task

Params = dict[str, Tensor]


class Algorithm(Protocol):
    """The protocol every few-shot learner follows."""

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Any:
        """Learns from the support set; returns the task state (no side effects)."""
        ...

    def predict(self, model: nn.Module, params: Params, state: Any, x: Tensor) -> Tensor:
        """Logits ``(n, ways)`` (or regression outputs) for inputs ``x`` given the task state."""
        ...


def parameters_of(model: nn.Module) -> Params:
    """The model's trainable parameters as a name -> tensor dict (the tensors themselves, not copies)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def call(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """Runs ``model`` on ``x`` with ``params`` in place of its own parameters (buffers stay the model's)."""
    return functional_call(model, params, (x,))


def task_loss(algorithm: Algorithm, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
    """Adapts on the support set and scores the query set.

    Returns:
        ``(loss, logits)``: mean cross-entropy over the query set (a scalar) and the query logits
        ``(queries_total, ways)``.
    """
    logits = query_logits(algorithm, model, params, task)
    return F.cross_entropy(logits, task.query.y), logits


def query_logits(algorithm: Algorithm, model: nn.Module, params: Params, task: Task) -> Tensor:
    """``predict(adapt(support), query.x)``, or the algorithm's own fused route when it has one (ProtoNet
    embeds support and query in one pass)."""
    fused = getattr(algorithm, "query_logits", None)
    if fused is not None:
        return fused(model, params, task)
    state = algorithm.adapt(model, params, task.support, task.ways)
    return algorithm.predict(model, params, state, task.query.x)


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return (logits.argmax(-1) == y).float().mean().item()


@torch.no_grad()
def predict_task(algorithm: Algorithm, model: nn.Module, params: Params, task: Task) -> Tensor:
    """Query logits of one task without building a graph (gradient-based inner loops still work: torch.func
    transforms ignore an outer ``no_grad``)."""
    return query_logits(algorithm, model, params, task)
