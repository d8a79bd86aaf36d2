"""Adversarial examples for few-shot classifiers: FGSM, PGD, and an evaluation under attack for every algorithm.

Goodfellow, Shlens & Szegedy (2015). Explaining and Harnessing Adversarial Examples. ICLR. arXiv:1412.6572 (FGSM).
Madry, Makelov, Schmidt, Tsipras & Vladu (2018). Towards Deep Learning Models Resistant to Adversarial Attacks.
ICLR. arXiv:1706.06083 (PGD in an L-infinity ball, with a random start).

An attack moves each input inside the L-infinity ball of radius ``epsilon`` around it (and inside the valid
pixel range, ``[0, 1]`` for fewshot's image loaders) to raise a loss. The evaluation (:func:`attacked_scores`)
works for any :class:`~fewshot.algorithms.base.Algorithm`: the learner adapts on the clean support set (or,
with ``Attack.support``, on a support set perturbed to raise its own loss after adaptation), then its query
inputs are perturbed against the adapted learner (white box: the attacker knows the adapted state). Clean and
adversarial accuracy come from the same episodes.

The support attack differentiates through ``adapt``; a learner whose adaptation treats its inputs' gradients as
constants (the meta-learner LSTM) or is not differentiable (fine-tuning baselines under ``no_grad``) is attacked
through its prediction on the support set only. A learner with no input gradient at all is not perturbed, and
its attacked accuracy equals its clean one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import Algorithm, Params, accuracy, grad_and_value
from fewshot.tasks.episodes import Split, Task

KINDS = ("fgsm", "pgd")
PIXELS = (0.0, 1.0)  # fewshot's image loaders give pixels in [0, 1]


def bounds_for(x: Tensor) -> tuple[float, float] | None:
    """The valid input range: ``[0, 1]`` for images ``(n, c, h, w)``, none for feature vectors ``(n, d)``."""
    return PIXELS if x.dim() == 4 else None


def input_gradient(loss_of: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``d loss_of(x) / dx``, detached: the attacker's direction is a constant (no second derivatives through it)."""
    return grad_and_value(lambda d: loss_of(d["x"]), {"x": x.detach()}, create_graph=False)[0]["x"]


def _project(x: Tensor, x0: Tensor, epsilon: float, bounds: tuple[float, float] | None) -> Tensor:
    x = torch.minimum(torch.maximum(x, x0 - epsilon), x0 + epsilon)  # into the epsilon ball around x0
    return x if bounds is None else x.clamp(*bounds)


def fgsm(
    loss_of: Callable[[Tensor], Tensor],
    x: Tensor,
    epsilon: float,
    bounds: tuple[float, float] | None = PIXELS,
) -> Tensor:
    """One signed gradient step of size ``epsilon``: ``clip(x + epsilon * sign(grad_x loss))`` (Goodfellow et al.).

    Args:
        loss_of: the loss to raise as a function of the inputs (a scalar).
        x: clean inputs, any shape.
        epsilon: the L-infinity radius (0 returns ``x`` clipped to ``bounds``).
        bounds: the valid input range, or None.
    """
    if epsilon == 0:
        return _project(x.detach(), x.detach(), 0.0, bounds)
    step = epsilon * input_gradient(loss_of, x).sign()
    return _project(x.detach() + step, x.detach(), epsilon, bounds)


def pgd(
    loss_of: Callable[[Tensor], Tensor],
    x: Tensor,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    bounds: tuple[float, float] | None = PIXELS,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent in the L-infinity ball (Madry et al. 2018).

    Args:
        steps: signed gradient steps.
        step_size: size of each step (default ``2.5 * epsilon / steps``: a common rule, not the paper's own
            settings, that lets the walk cross the ball and back within ``steps``).
        generator: with one, the walk starts at a uniform random point of the ball (Madry et al.'s random
            start), drawn from it; without, at ``x``.
    """
    x0 = x.detach()
    if epsilon == 0 or steps == 0:
        return _project(x0, x0, 0.0, bounds)
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    adv = x0
    if generator is not None:
        noise = torch.rand(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(
            x0.device
        )
        adv = _project(x0 + (2 * noise - 1) * epsilon, x0, epsilon, bounds)
    for _ in range(steps):
        adv = _project(adv + step_size * input_gradient(loss_of, adv).sign(), x0, epsilon, bounds)
    return adv


@dataclass(frozen=True)
class Attack:
    """An attack's settings.

    Attributes:
        kind: ``"fgsm"`` or ``"pgd"``.
        epsilon: L-infinity radius, in input units (pixels in ``[0, 1]``).
        steps: PGD steps.
        step_size: PGD step size (default ``2.5 * epsilon / steps``).
        random_start: PGD starts at a random point of the ball (seeded per episode in evaluation).
        support: evaluation also perturbs the support set before the learner adapts to it.
    """

    kind: str = "pgd"
    epsilon: float = 0.1
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    support: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attack must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (self.epsilon >= 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be a number of at least 0, got {self.epsilon}")
        if self.steps < 1:
            raise ValueError(f"attack steps must be at least 1, got {self.steps}")
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"attack step size must be a positive number, got {self.step_size}")

    def __call__(
        self, loss_of: Callable[[Tensor], Tensor], x: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Perturbed ``x`` raising ``loss_of``; PGD's random start is drawn from ``generator`` when given."""
        bounds = bounds_for(x)
        if self.kind == "fgsm":
            return fgsm(loss_of, x, self.epsilon, bounds)
        start = generator if self.random_start else None
        return pgd(loss_of, x, self.epsilon, self.steps, self.step_size, bounds, start)


def attacked_scores(
    algorithm: Algorithm,
    model: nn.Module,
    params: Params,
    task: Task,
    attack: Attack,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """``(clean accuracy, adversarial accuracy)`` of one classification task.

    The learner adapts on the clean support set and labels the clean queries; then the queries are perturbed to
    raise the adapted learner's query loss and labelled again. With ``attack.support`` the support set is first
    perturbed to raise the learner's loss on its own support set after adapting to it (through the adaptation),
    and the learner adapts to that instead before the query attack.
    """
    if not task.ways:
        raise ValueError("attacks score classifiers; regression tasks have no accuracy to attack")
    support = task.support
    with torch.no_grad():
        clean = algorithm.predict(
            model, params, algorithm.adapt(model, params, support, task.ways), task.query.x
        )
    if attack.support:

        def support_loss(x: Tensor) -> Tensor:
            state = algorithm.adapt(model, params, Split(x, support.y), task.ways)
            return F.cross_entropy(algorithm.predict(model, params, state, x).float(), support.y)

        support = Split(attack(support_loss, support.x, generator), support.y)
    with torch.no_grad():
        state = algorithm.adapt(model, params, support, task.ways)

    def query_loss(x: Tensor) -> Tensor:
        return F.cross_entropy(algorithm.predict(model, params, state, x).float(), task.query.y)

    adversarial = attack(query_loss, task.query.x, generator)
    with torch.no_grad():
        out = algorithm.predict(model, params, state, adversarial)
    return accuracy(clean, task.query.y), accuracy(out, task.query.y)


__all__ = ["KINDS", "Attack", "attacked_scores", "bounds_for", "fgsm", "input_gradient", "pgd"]
