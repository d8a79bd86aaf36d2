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

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import (
    AdaptsByGradient,
    AlgorithmSpec,
    Params,
    all_finite,
    call,
    check_range,
    grad_and_value,
    loss_fn,
    setting,
)
from fewshot.models import running_stats_layers, standard_network
from fewshot.tasks.episodes import Split


def check_model(model: nn.Module) -> None:
    """Refuses normalisation layers that keep running statistics (they would be updated by every inner step).

    Called by every gradient-based adaptation (:func:`inner_loop`, CAVIA, MAML++) before its first forward
    pass, so a refused model's buffers are left untouched. It reads module attributes only, so it also runs
    inside ``torch.func`` transforms.

    Raises:
        ValueError: naming the layer and saying how to build it instead.
    """
    layers = running_stats_layers(model)
    if layers:
        raise ValueError(
            f"normalisation layer {layers[0]!r} tracks running statistics, which inner-loop steps would overwrite; build it with track_running_stats=False (e.g. "
            "Conv4(track_running_stats=False))"
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

    Raises:
        ValueError: if a normalisation layer of ``model`` tracks running statistics (:func:`check_model`).
    """
    # every gradient-based adaptation comes through here (MAML, FOMAML, ANIL, Meta-SGD, Reptile): refuse
    # running statistics before the first forward pass writes them (~20 us for conv4, against ~35 ms a task)
    check_model(model)
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
class MAML(AdaptsByGradient):
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


@dataclass(frozen=True)
class StepSettings:
    """The settings of a learner that adapts by gradient steps."""

    inner_lr: float = setting(0.4, "inner-loop step size (0.4: MAML, Omniglot 5-way, Finn et al. 2017)")
    inner_steps: int = setting(1, "inner-loop gradient steps per task in training")
    test_inner_steps: int | None = setting(10, "inner steps at validation and test (10: Finn et al.)")
    inner_clip: float | None = setting(None, "clip each inner gradient to this L2 norm (none: no clipping)")

    def __post_init__(self) -> None:
        # 0 steps would test the initialisation itself (compare's step curves do that on purpose)
        check_range(self, {"inner_steps": 1, "test_inner_steps": 1}, ("inner_lr", "inner_clip"))

    def steps(self, testing: bool) -> int:
        """Inner steps in training, or at validation and test."""
        return self.test_inner_steps if testing and self.test_inner_steps is not None else self.inner_steps


@dataclass(frozen=True)
class MAMLSettings(StepSettings):
    first_order: bool = setting(
        False, "drop second derivatives through the inner loop (the first-order approximation)"
    )


def classifier(request, settings) -> nn.Module:
    """The MAML family's network: a ``ways``-output head, BatchNorm on batch statistics (Finn et al. 2017)."""
    return standard_network(request, request.ways, batch_statistics=True)


GRADIENT_ROUTES = ("threads", "loop", "vmap", "autograd")
SPEC = AlgorithmSpec(
    name="maml",
    summary="MAML: an initialisation for a few gradient steps, exact second order (Finn et al. 2017)",
    build=lambda s, testing: MAML(s.inner_lr, s.steps(testing), s.first_order, clip=s.inner_clip),
    model=classifier, settings=MAMLSettings, fixed_ways=True, data=("images", "vectors", "regression"),
    routes=GRADIENT_ROUTES,
)  # fmt: skip
FOMAML_SPEC = dataclasses.replace(
    SPEC, name="fomaml", summary="first-order MAML: no second derivatives (Finn et al. 2017, section 5.2)",
    build=lambda s, testing: MAML(s.inner_lr, s.steps(testing), first_order=True, clip=s.inner_clip),
    settings=StepSettings,
)  # fmt: skip
ANIL_SPEC = dataclasses.replace(
    SPEC, name="anil", summary="ANIL: MAML adapting only the head (Raghu et al. 2020)",
    build=lambda s, testing: MAML(s.inner_lr, s.steps(testing), s.first_order, adapted=("head.",), clip=s.inner_clip),
)  # fmt: skip
