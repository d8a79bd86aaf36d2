"""CAVIA: fast context adaptation; only a small context vector adapts, the network is shared.

Zintgraf, Shiarlis, Kurin, Hofmann & Whiteson (2019). Fast Context Adaptation via Meta-Learning. ICML.
arXiv:1810.03642.

Each task starts from a context ``phi = 0``; the inner loop takes gradient steps on ``phi`` only, and the
network weights ``theta`` are learned in the outer loop through those steps. Fewer adapted numbers than MAML
(a handful instead of every weight) make the inner loop cheap and less prone to overfitting.

How the model sees the context: for inputs of shape ``(n, features)`` the context is appended to every input
(the paper's regression set-up), so the model's first layer takes ``features + context_dim`` inputs. For other
inputs the model is called as ``model(x, context=phi)`` and must use it itself (e.g. FiLM in conv layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fewshot.algorithms.base import (
    AdaptsByGradient,
    AlgorithmSpec,
    Params,
    all_finite,
    check_range,
    grad_and_value,
    loss_fn,
    setting,
)
from fewshot.algorithms.maml import GRADIENT_ROUTES, check_model
from fewshot.models import standard_network
from fewshot.tasks.episodes import Split


def call_with_context(model: nn.Module, params: Params, x: Tensor, context: Tensor) -> Tensor:
    """``model([x, context])`` for vector inputs ``(n, features)``, else ``model(x, context=context)``."""
    model_params = {k: v for k, v in params.items() if not k.startswith("cavia.")}
    if x.dim() == 2:
        return functional_call(model, model_params, (torch.cat([x, context.expand(x.shape[0], -1)], -1),))
    return functional_call(model, model_params, (x,), {"context": context})


@dataclass(frozen=True)
class CAVIA(AdaptsByGradient):
    """CAVIA (Zintgraf et al. 2019): adapt a task context vector, share the network.

    Args:
        context_dim: size of the context vector (4 or 5 for sinusoids in the paper).
        inner_lr: inner step size on the context (1.0 in the paper's regression experiments).
        inner_steps: inner steps (1 in training; more at test time).
        first_order: drop second derivatives through the inner gradient.

    The state returned by :meth:`adapt` is the adapted context ``(context_dim,)``.

    Example:
        >>> model = MLP(in_features=1 + 4)          # input + context
        >>> loss, _ = task_loss(CAVIA(context_dim=4), model, parameters_of(model), task)
    """

    context_dim: int = 4
    inner_lr: float = 1.0
    inner_steps: int = 1
    first_order: bool = False
    check_finite: bool = True

    def __post_init__(self) -> None:
        if self.context_dim < 1:
            raise ValueError(f"context_dim must be at least 1, got {self.context_dim}")

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Tensor:
        check_model(model)  # inner steps would write running statistics into the shared buffers
        dtype = next(iter(params.values())).dtype
        context = torch.zeros(self.context_dim, dtype=dtype, device=support.x.device)  # reset for every task

        def support_loss(phi: Tensor) -> Tensor:
            return loss_fn(call_with_context(model, params, support.x, phi), support.y, ways)

        for step in range(self.inner_steps):
            g = grad_and_value(lambda c: support_loss(c["context"]), {"context": context},
                               create_graph=not self.first_order)[0]["context"]  # fmt: skip
            if self.check_finite and not all_finite({"context": g}):
                raise FloatingPointError(
                    f"inner-loop step {step + 1} produced a NaN or Inf gradient; use a smaller inner_lr "
                    f"(now {self.inner_lr})"
                )
            context = context - self.inner_lr * g
        return context

    def predict(self, model: nn.Module, params: Params, state: Tensor, x: Tensor) -> Tensor:
        return call_with_context(model, params, x, state)


@dataclass(frozen=True)
class CAVIASettings:
    context_dim: int = setting(4, "size of the adapted context vector (4 or 5 for sinusoids in the paper)")
    inner_lr: float = setting(0.4, "inner-loop step size on the context (1.0 in the paper's regression runs)")
    inner_steps: int = setting(1, "inner-loop gradient steps per task in training")
    test_inner_steps: int | None = setting(10, "inner steps at validation and test")
    first_order: bool = setting(False, "drop second derivatives through the inner loop")

    def __post_init__(self) -> None:
        check_range(self, {"inner_steps": 1, "test_inner_steps": 1, "context_dim": 1}, ("inner_lr",))

    def steps(self, testing: bool) -> int:
        return self.test_inner_steps if testing and self.test_inner_steps is not None else self.inner_steps


SPEC = AlgorithmSpec(
    name="cavia",
    summary="CAVIA: adapt a context vector appended to the inputs, share the network (Zintgraf et al. 2019)",
    build=lambda s, testing: CAVIA(s.context_dim, s.inner_lr, s.steps(testing), s.first_order),
    model=lambda request, s: standard_network(request, request.ways, extra_inputs=s.context_dim),
    settings=CAVIASettings, fixed_ways=True, data=("vectors", "regression"), routes=GRADIENT_ROUTES,
)  # fmt: skip
