"""MAML++: the training tricks that make MAML stable, each one switchable on its own.

Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR. arXiv:1810.09502.

* multi-step loss (MSL): the query loss after *every* inner step, weighted; the weights start uniform and
  anneal towards the last step over ``msl_epochs`` epochs;
* learned per-layer per-step inner step sizes (LSLR): one learned scalar per parameter tensor and step;
* per-step BatchNorm weights and biases (BNWB): a separate copy of every normalisation layer's affine
  parameters for each step, meta-learned and not adapted (batch statistics are used, as in MAML);
* derivative-order annealing (DA): first-order inner gradients for the first ``first_order_epochs`` epochs,
  then exact second order;
* cosine annealing of the outer learning rate: a schedule of the outer optimizer
  (``torch.optim.lr_scheduler.CosineAnnealingLR``), chosen in the training configuration.

The algorithm is a frozen value: the epoch-dependent settings come from :meth:`MAMLPlusPlus.at_epoch`, which
returns the value to use in that epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import Params, all_finite, call, grad_and_value, loss_fn
from fewshot.algorithms.maml import name_filter
from fewshot.tasks.episodes import Split, Task

PREFIX = "mamlpp."


def norm_parameter_names(model: nn.Module) -> list[str]:
    """Names of the affine parameters of every BatchNorm / GroupNorm / LayerNorm / InstanceNorm layer."""
    kinds = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return [
        f"{module_name}.{p}" if module_name else p
        for module_name, module in model.named_modules()
        if isinstance(module, kinds)
        for p, _ in module.named_parameters(recurse=False)
    ]


@dataclass(frozen=True)
class MAMLPlusPlus:
    """MAML++ (Antoniou et al. 2019).

    Args:
        inner_lr: inner step size (the initial value of the learned ones when ``learned_lrs``).
        inner_steps: inner steps (5 in the paper).
        multi_step_loss: MSL on or off.
        msl_epochs: epochs over which the MSL weights anneal to the last step (10 in the paper's code).
        learned_lrs: LSLR on or off.
        per_step_bn: BNWB on or off.
        first_order_epochs: DA: epochs of first-order training before switching to second order (0: off).
        epoch: the current epoch (set with :meth:`at_epoch`).
        adapted: name prefixes of the parameters that adapt (None: all but per-step norm parameters).

    Meta-parameters of its own come from :meth:`extra_params` and are optimised with the model's.
    """

    inner_lr: float = 0.1
    inner_steps: int = 5
    multi_step_loss: bool = True
    msl_epochs: int = 10
    learned_lrs: bool = True
    per_step_bn: bool = True
    first_order_epochs: int = 0
    epoch: int = 0
    adapted: tuple[str, ...] | None = None
    check_finite: bool = True

    def __post_init__(self) -> None:
        if self.inner_steps < 1:
            raise ValueError(f"MAML++ needs inner_steps >= 1, got {self.inner_steps}")
        if self.inner_lr <= 0:
            raise ValueError(f"inner_lr must be positive, got {self.inner_lr}")

    def at_epoch(self, epoch: int) -> MAMLPlusPlus:
        """The settings for ``epoch`` (MSL weights and derivative order depend on it)."""
        return replace(self, epoch=epoch)

    @property
    def first_order(self) -> bool:
        return self.epoch < self.first_order_epochs

    def step_weights(self) -> list[float]:
        """Weights of the query losses after steps 1..T: uniform at epoch 0, annealed linearly so that by
        ``msl_epochs`` every step but the last keeps ``0.03 / T`` (the minimum in the paper's code)."""
        steps = self.inner_steps
        if not self.multi_step_loss or steps == 1:
            return [0.0] * (steps - 1) + [1.0]
        progress = min(self.epoch / max(self.msl_epochs, 1), 1.0)
        low = 0.03 / steps
        early = (1 - progress) / steps + progress * low
        return [early] * (steps - 1) + [1.0 - early * (steps - 1)]

    def extra_params(self, model: nn.Module) -> Params:
        """Learned step sizes ``mamlpp.lr.<step>.<name>`` and per-step norm parameters ``mamlpp.bn.<step>.<name>``."""
        extra: Params = {}
        norms = set(norm_parameter_names(model)) if self.per_step_bn else set()
        for name, p in model.named_parameters():
            if self.learned_lrs and name not in norms and name_filter(self.adapted)(name):
                for t in range(self.inner_steps):
                    extra[f"{PREFIX}lr.{t}.{name}"] = torch.tensor(
                        self.inner_lr, dtype=p.dtype
                    ).requires_grad_()
            if name in norms:
                for t in range(self.inner_steps + 1):  # set t is used with the weights after t steps
                    extra[f"{PREFIX}bn.{t}.{name}"] = p.detach().clone().requires_grad_()
        return extra

    def _trajectory(self, model: nn.Module, params: Params, support: Split, ways: int) -> list[Params]:
        """Weights after steps 1..T, each with the norm parameters of its step."""
        norms = [n for n in norm_parameter_names(model) if f"{PREFIX}bn.0.{n}" in params]
        keep = name_filter(self.adapted)
        model_names = [n for n, _ in model.named_parameters()]
        names = [n for n in model_names if keep(n) and n not in norms]

        def with_norms(weights: Params, t: int) -> Params:
            return weights | {n: params[f"{PREFIX}bn.{t}.{n}"] for n in norms}

        if self.learned_lrs and names and f"{PREFIX}lr.0.{names[0]}" not in params:
            raise ValueError(
                "MAML++ step sizes are missing; pass parameters_of(model) | algo.extra_params(model)"
            )
        fast = with_norms({n: params[n] for n in model_names}, 0)
        states = []
        for t in range(self.inner_steps):
            current = fast

            def support_loss(sub: Params, current: Params = current) -> Tensor:
                return loss_fn(call(model, current | sub, support.x), support.y, ways)

            grads, _ = grad_and_value(
                support_loss, {n: fast[n] for n in names}, create_graph=not self.first_order
            )
            if self.check_finite and not all_finite(grads):
                raise FloatingPointError(
                    f"inner-loop step {t + 1} produced a NaN or Inf gradient; use a smaller inner_lr (now {self.inner_lr})"
                )
            stepped = {
                n: fast[n] - (params[f"{PREFIX}lr.{t}.{n}"] if self.learned_lrs else self.inner_lr) * grads[n]
                for n in names
            }
            fast = with_norms(fast | stepped, t + 1)
            states.append(fast)
        return states

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Params:
        return self._trajectory(model, params, support, ways)[-1]

    def predict(self, model: nn.Module, params: Params, state: Params, x: Tensor) -> Tensor:
        return call(model, state, x)

    def task_loss(self, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        """Multi-step loss: ``sum_t w_t L_query(theta_t)``; returns it and the final query predictions."""
        states = self._trajectory(model, params, task.support, task.ways)
        total = torch.zeros((), dtype=task.query.x.dtype)
        for weight, state in zip(self.step_weights(), states, strict=True):
            if weight > 0:
                logits = call(model, state, task.query.x)
                total = total + weight * loss_fn(logits, task.query.y, task.ways)
        return total, logits
