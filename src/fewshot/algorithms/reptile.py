"""Reptile: move the initialisation towards the weights that plain SGD reaches on each task.

Nichol, Achiam & Schulman (2018). On First-Order Meta-Learning Algorithms. arXiv:1803.02999.

The meta-update is ``theta <- theta + epsilon * mean_tasks(theta'_T - theta)``, where ``theta'_T`` is the result
of ``inner_steps`` SGD steps on the task. It is expressed as a gradient, ``theta - theta'_T``, so that any torch
optimizer applies it: ``torch.optim.SGD(lr=epsilon)`` gives exactly the paper's update, Adam its adaptive form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import AdaptsByGradient, AlgorithmSpec, Params, call, loss_fn
from fewshot.algorithms.maml import StepSettings, classifier, inner_loop, name_filter
from fewshot.tasks.episodes import Split, Task


@dataclass(frozen=True)
class Reptile(AdaptsByGradient):
    """Reptile (Nichol et al. 2018), with plain SGD in the inner loop.

    Args:
        inner_lr: inner SGD step size.
        inner_steps: inner steps per task (the paper: 5 for Omniglot in training, 50 at test time).
        adapted: name prefixes of the parameters that adapt (None: all).

    Adaptation (``adapt``/``predict``) is the same SGD from the learned initialisation, as at test time in the
    paper. :meth:`task_gradient` is Reptile's own update direction, used by
    :func:`~fewshot.algorithms.routes.meta_gradient` instead of the query-loss gradient.
    """

    inner_lr: float = 0.02
    inner_steps: int = 5
    adapted: tuple[str, ...] | None = None
    clip: float | None = None
    check_finite: bool = True

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Params:
        return inner_loop(
            model, params, support, ways, steps=self.inner_steps, lrs=self.inner_lr,
            adapted=name_filter(self.adapted), first_order=True, clip=self.clip,
            check_finite=self.check_finite,
        )  # fmt: skip

    def predict(self, model: nn.Module, params: Params, state: Params, x: Tensor) -> Tensor:
        return call(model, state, x)

    def task_gradient(self, model: nn.Module, params: Params, task: Task) -> tuple[Params, Tensor]:
        """``(theta - theta'_T, query loss at theta'_T)``: a descent direction towards the adapted weights."""
        with (
            torch.no_grad()
        ):  # Reptile never differentiates through the inner loop (torch.func.grad still works)
            fast = self.adapt(model, params, task.support, task.ways)
            loss = loss_fn(call(model, fast, task.query.x), task.query.y, task.ways)
        return {k: params[k] - fast[k] for k in params}, loss


SPEC = AlgorithmSpec(
    name="reptile",
    summary="Reptile: move the initialisation towards the weights SGD reaches on each task (Nichol et al. 2018)",
    build=lambda s, testing: Reptile(s.inner_lr, s.steps(testing), clip=s.inner_clip),
    model=classifier, settings=StepSettings, fixed_ways=True, data=("images", "vectors", "regression"),
    routes=("threads", "loop", "vmap"),  # its update is not the gradient of a loss: no autograd route
)  # fmt: skip
