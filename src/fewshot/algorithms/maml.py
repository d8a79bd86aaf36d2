"""Model-Agnostic Meta-Learning and its first-order and head-only variants.

Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. ICML.
arXiv:1703.03400. (FOMAML, the first-order approximation, is section 5.2 of the same paper.)
Raghu, Raghu, Bengio & Vinyals (2020). Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML. ICLR. arXiv:1909.09157 (ANIL: only the head adapts).

MAML learns an initialisation ``theta`` such that a few gradient steps on a task's support set give weights
``theta'`` that do well on its query set. The inner loop here is a pure function of a parameter dict built on
``torch.func.grad``, so it works with any ``nn.Module`` and can be mapped over tasks with ``torch.func.vmap``.

BatchNorm: use batch statistics of the set being processed and no running statistics
(``Conv4(track_running_stats=False)``), as in Finn et al.'s code; a model that tracks running statistics is
refused by :func:`check_model`, since adaptation would silently write into shared buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import Params, all_finite, call, grad_and_value, loss_fn
from fewshot.tasks.episodes import Split


def check_model(model: nn.Module) -> None:
    """Refuses normalisation layers that keep running statistics (they would be updated by every inner step).

    Raises:
        ValueError: naming the layer and saying how to build it instead.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) tracks running statistics, which inner-loop steps "
                "would overwrite; build it with track_running_stats=False (e.g. Conv4(track_running_stats=False))"
            )


def inner_loop(
    model: nn.Module,
    params: Params,
    support: Split,
    ways: int,
    *,
    steps: int,
    lrs: dict[str, Tensor] | float,
    adapted: Callable[[str], bool],
    first_order: bool,
    clip: float | None = None,
    check_finite: bool = True,
) -> Params:
    """Gradient steps on the support loss: ``theta_{t+1} = theta_t - lr * grad L_support(theta_t)``.

    Args:
        model: the network, called as ``functional_call(model, params, x)``.
        params: starting weights (name -> tensor); not modified.
        support: the task's support set.
        ways: number of classes (0: regression).
        steps: number of inner steps (0 returns ``params`` unchanged).
        lrs: one step size for all, or one (scalar or same-shape tensor) per adapted parameter (Meta-SGD).
        adapted: which parameter names take inner steps; the others stay shared.
        first_order: treat the inner gradient as a constant (FOMAML): no second derivatives.
        clip: clip each inner gradient to this global L2 norm.
        check_finite: raise on a NaN or Inf loss (disabled under vmap, where values cannot be inspected).

    Returns:
        The adapted weights, a new dict with the same keys as ``params``.
    """
    names = [n for n in params if adapted(n)]
    if not names:
        raise ValueError("no parameter is adapted in the inner loop; check the names passed to `adapted`")
    fast = dict(params)

    def loss_of(sub: Params) -> Tensor:
        return loss_fn(call(model, {**fast, **sub}, support.x), support.y, ways)

    for step in range(steps):
        sub = {n: fast[n] for n in names}
        grads, _ = grad_and_value(loss_of, sub, create_graph=not first_order)
        if check_finite and not all_finite(grads):
            raise FloatingPointError(
                f"inner-loop step {step + 1} produced a NaN or Inf gradient; use a smaller inner_lr "
                f"(now {lrs if isinstance(lrs, float) else 'learned'}) or set an inner gradient clip"
            )
        if clip is not None:
            norm = torch.sqrt(sum(g.square().sum() for g in grads.values()))
            scale = torch.clamp(clip / (norm + 1e-12), max=1.0)
            grads = {n: g * scale for n, g in grads.items()}
        for n in names:
            lr = lrs if isinstance(lrs, float) else lrs[n]
            fast[n] = keep_strides(fast[n] - lr * grads[n], params[n])
    return fast


def keep_strides(new: Tensor, old: Tensor) -> Tensor:
    """``new`` in ``old``'s channels_last layout when ``old`` is a channels_last conv weight (same values).

    Elementwise arithmetic may return a different but equivalent layout when a dimension has size 1: for a
    ``(64, 1, 3, 3)`` channels_last conv weight, ``w - lr * g`` comes back with default strides, and the
    convolution then writes its whole output in the default layout, which made everything after it (BatchNorm,
    max-pool: 12x slower) several times slower in a channels_last model. ``clone(memory_format=...)`` computes
    the strides afresh, out of place (works under ``grad``; under ``vmap`` it cannot, and the layout is left as
    is); one copy of a small tensor.
    """
    if old.dim() != 4 or new.stride() == old.stride() or new.shape != old.shape:
        return new
    channels_last = torch.empty(old.shape, device="meta", memory_format=torch.channels_last).stride()
    if old.stride() != channels_last:
        return new
    try:
        return new.clone(memory_format=torch.channels_last)
    except RuntimeError:  # vmap cannot clone into channels_last (torch 2.13): keep the values, lose the speed
        return new


def name_filter(prefixes: tuple[str, ...] | None) -> Callable[[str], bool]:
    """``None`` adapts every parameter; otherwise those whose name starts with one of ``prefixes``."""
    if prefixes is None:
        return lambda name: True
    return lambda name: name.startswith(prefixes)


@dataclass(frozen=True)
class MAML:
    """MAML (Finn et al. 2017): meta-learn an initialisation for a few steps of gradient descent.

    The state returned by :meth:`adapt` is the adapted weight dict ``theta'``; :meth:`predict` runs the model
    with it. The meta-gradient flows through every inner step (exact second order) unless ``first_order``.

    Args:
        inner_lr: inner step size (0.4 for Omniglot 5-way, 0.01 for sinusoids in Finn et al.).
        inner_steps: steps in training; ``replace(maml, inner_steps=10)`` for the paper's test setting.
        first_order: FOMAML; the meta-gradient is the query gradient at the adapted weights.
        adapted: name prefixes of the parameters that adapt (None: all; ``("head.",)``: ANIL).
        clip: clip each inner gradient to this L2 norm (None: no clipping).

    Example:
        >>> maml = MAML(inner_lr=0.4, inner_steps=1)
        >>> loss, logits = task_loss(maml, model, parameters_of(model), task)
        >>> loss.backward()   # second-order meta-gradient in model.parameters()
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    first_order: bool = False
    adapted: tuple[str, ...] | None = None
    clip: float | None = None
    check_finite: bool = True

    def __post_init__(self) -> None:
        if not (self.inner_lr > 0 and math.isfinite(self.inner_lr)):
            raise ValueError(f"inner_lr must be a positive number, got {self.inner_lr}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be 0 or more, got {self.inner_steps}")

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Params:
        return inner_loop(
            model, params, support, ways, steps=self.inner_steps, lrs=self.inner_lr,
            adapted=name_filter(self.adapted), first_order=self.first_order, clip=self.clip,
            check_finite=self.check_finite,
        )  # fmt: skip

    def predict(self, model: nn.Module, params: Params, state: Params, x: Tensor) -> Tensor:
        return call(model, state, x)


def fomaml(**kwargs) -> MAML:
    """First-order MAML (Finn et al. 2017, section 5.2): MAML without second derivatives."""
    return MAML(first_order=True, **kwargs)


def anil(head: str = "head.", **kwargs) -> MAML:
    """ANIL (Raghu et al. 2020): MAML where only the parameters under ``head`` adapt in the inner loop."""
    return MAML(adapted=(head,), **kwargs)


__all__ = ["MAML", "anil", "check_model", "fomaml", "inner_loop", "name_filter", "replace"]
