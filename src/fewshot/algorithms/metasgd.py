"""Meta-SGD: meta-learn the inner step size of every parameter along with the initialisation.

Li, Zhou, Chen & Li (2017). Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. arXiv:1707.09835.

The inner update is ``theta' = theta - alpha * grad L_support(theta)`` where ``alpha`` has the shape of
``theta`` and is a meta-parameter: it is returned by :meth:`MetaSGD.extra_params`, trained by the outer
optimizer with the model, and read back from the parameter dict under the names ``inner_lr.<parameter>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fewshot.algorithms import maml
from fewshot.algorithms.base import AdaptsByGradient, Params, call
from fewshot.algorithms.maml import inner_loop, name_filter
from fewshot.tasks.episodes import Split

PREFIX = "inner_lr."


@dataclass(frozen=True)
class MetaSGD(AdaptsByGradient):
    """Meta-SGD (Li et al. 2017): MAML with a learned per-parameter (per-element) inner step size.

    Args:
        init_lr: initial value of every learned step size (the paper initialises them randomly in
            [0.005, 0.1]; a constant start makes the method equal MAML at step 0, which the tests use).
        inner_steps: inner steps (the paper uses 1).
        first_order: drop second derivatives through the inner gradient.
        adapted: name prefixes of the parameters that adapt (None: all).

    Example:
        >>> algo = MetaSGD(init_lr=0.01)
        >>> params = parameters_of(model) | algo.extra_params(model)   # optimise both
    """

    init_lr: float = 0.01
    inner_steps: int = 1
    first_order: bool = False
    adapted: tuple[str, ...] | None = None
    clip: float | None = None
    check_finite: bool = True

    def extra_params(self, model: nn.Module) -> Params:
        """The learned step sizes, one tensor per adapted parameter, initialised to ``init_lr``."""
        keep = name_filter(self.adapted)
        return {
            PREFIX + name: torch.full_like(p.detach(), self.init_lr).requires_grad_()
            for name, p in model.named_parameters()
            if keep(name)
        }

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Params:
        keep = name_filter(self.adapted)
        missing = [n for n in params if not n.startswith(PREFIX) and keep(n) and PREFIX + n not in params]
        if missing:
            raise ValueError(
                f"no learned step size for {missing[:3]}; pass parameters_of(model) | algo.extra_params(model)"
            )
        lrs = {n[len(PREFIX) :]: v for n, v in params.items() if n.startswith(PREFIX)}
        return inner_loop(
            model, params, support, ways, steps=self.inner_steps, lrs=lrs,
            adapted=lambda n: not n.startswith(PREFIX) and keep(n), first_order=self.first_order,
            clip=self.clip, check_finite=self.check_finite,
        )  # fmt: skip

    def predict(self, model: nn.Module, params: Params, state: Params, x: Tensor) -> Tensor:
        return call(model, state, x)


SPEC = dataclasses.replace(
    maml.SPEC, name="metasgd",
    summary="Meta-SGD: MAML with a learned step size per parameter, initialised to inner_lr (Li et al. 2017)",
    build=lambda s, testing: MetaSGD(s.inner_lr, s.steps(testing), s.first_order, clip=s.inner_clip),
)  # fmt: skip
