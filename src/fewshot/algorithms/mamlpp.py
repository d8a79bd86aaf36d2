"""MAML++: the training tricks that make MAML stable, each one switchable on its own.

Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR. arXiv:1810.09502.

* multi-step loss (MSL): the query loss after *every* inner step, weighted; the weights start uniform and
  anneal towards the last step over ``msl_epochs`` epochs, after which only the last step's loss counts;
* learned per-layer per-step inner step sizes (LSLR): one learned scalar per parameter tensor and step;
* per-step BatchNorm weights and biases (BNWB): a separate copy of every normalisation layer's affine
  parameters for each step, meta-learned and not adapted (batch statistics are used, as in MAML); set ``t``
  serves the support pass of inner step ``t`` and the query pass after that step;
* derivative-order annealing (DA): first-order inner gradients for the first ``first_order_epochs`` epochs,
  then exact second order;
* cosine annealing of the outer learning rate: a schedule of the outer optimizer
  (``torch.optim.lr_scheduler.CosineAnnealingLR``), chosen in the training configuration.

The algorithm is a frozen value: the epoch-dependent settings come from :meth:`MAMLPlusPlus.at_epoch`, which
returns the value to use in that epoch.

By default the MSL weights and the per-step BatchNorm indexing follow the authors' code
(AntreasAntoniou/HowToTrainYourMAMLPytorch: ``get_per_step_loss_importance_vector`` and ``forward`` in
``few_shot_learning_system.py``, ``MetaBatchNormLayer`` in ``meta_neural_network_architectures.py``), since the
paper does not give the schedule or the indexing. Where this module differs from that code, and why:

* BNWB keeps no per-step running statistics: the authors collect them but always normalise with batch
  statistics (``F.batch_norm(..., training=True)``), so the outputs are the same; models here are built with
  ``track_running_stats=False`` (:func:`~fewshot.algorithms.maml.check_model` refuses the others).
* LSLR has ``inner_steps`` step sizes per parameter; the authors allocate one more, which is never used.
* DA counts first-order epochs (``first_order_epochs=k``); the authors name the last first-order epoch
  (``first_order_to_second_order_epoch=k-1``). Same schedule.
* With ``per_step_bn=False`` the normalisation parameters adapt in the inner loop, as in MAML (so that every
  trick off is exactly MAML, which the tests check); the authors' code keeps them out of the inner loop.
* ``msl_schedule="linear"`` and ``bn_query_step="next"`` are this library's earlier conventions, kept to
  reproduce runs recorded with them (see :class:`MAMLPlusPlus`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import (
    Algorithm,
    AlgorithmSpec,
    Params,
    all_finite,
    call,
    check_range,
    grad_and_value,
    loss_fn,
    setting,
)
from fewshot.algorithms.maml import GRADIENT_ROUTES, check_model, classifier, name_filter
from fewshot.tasks.episodes import Split, Task

PREFIX = "mamlpp."
MSL_SCHEDULES = ("authors", "linear")
BN_QUERY_STEPS = ("authors", "next")


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
class MAMLPlusPlus(Algorithm):
    """MAML++ (Antoniou et al. 2019).

    Args:
        inner_lr: inner step size (the initial value of the learned ones when ``learned_lrs``).
        inner_steps: inner steps (5 in the paper).
        multi_step_loss: MSL on or off.
        msl_epochs: epochs over which the MSL weights anneal to the last step (10 in the paper's code).
        msl_schedule: ``"authors"`` (default): the authors' schedule (:meth:`step_weights`); from epoch
            ``msl_epochs`` on only the last step's loss counts. ``"linear"``: this library's earlier schedule,
            which reaches the same end point by linear interpolation but keeps the floor ``0.03 / T`` on the
            early steps forever; it exists to reproduce runs recorded with it.
        learned_lrs: LSLR on or off.
        per_step_bn: BNWB on or off.
        bn_query_step: which per-step norm parameters the query pass after inner step ``t`` (0-based) uses.
            ``"authors"`` (default): set ``t``, the set of that step's support pass; ``inner_steps`` sets.
            ``"next"``: set ``t + 1``, the set the support pass of the following step would use;
            ``inner_steps + 1`` sets. The earlier convention of this library, kept to reproduce runs and
            checkpoints recorded with it (their ``mamlpp.bn.<inner_steps>.*`` entries exist only in this mode).
        first_order_epochs: DA: epochs of first-order training before switching to second order (0: off).
        epoch_steps: meta-training steps per epoch (:meth:`at_step`).
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
    epoch_steps: int = 500
    epoch: int = 0
    adapted: tuple[str, ...] | None = None
    check_finite: bool = True
    msl_schedule: str = "authors"
    bn_query_step: str = "authors"

    def __post_init__(self) -> None:
        if self.inner_steps < 1:
            raise ValueError(f"MAML++ needs inner_steps >= 1, got {self.inner_steps}")
        if self.inner_lr <= 0:
            raise ValueError(f"inner_lr must be positive, got {self.inner_lr}")
        if self.msl_schedule not in MSL_SCHEDULES:
            raise ValueError(f"msl_schedule must be one of {list(MSL_SCHEDULES)}, got {self.msl_schedule!r}")
        if self.bn_query_step not in BN_QUERY_STEPS:
            raise ValueError(
                f"bn_query_step must be one of {list(BN_QUERY_STEPS)}, got {self.bn_query_step!r}"
            )

    def at_step(self, step: int) -> MAMLPlusPlus:
        """The settings for meta-training step ``step`` (epochs of ``epoch_steps`` steps)."""
        return self.at_epoch(step // self.epoch_steps)

    @property
    def adaptation_steps(self) -> int:
        return self.inner_steps  # and only this many: the learned step sizes exist for these steps alone

    def at_epoch(self, epoch: int) -> MAMLPlusPlus:
        """The settings for ``epoch`` (MSL weights and derivative order depend on it)."""
        return replace(self, epoch=epoch)

    @property
    def first_order(self) -> bool:
        return self.epoch < self.first_order_epochs

    def step_weights(self) -> list[float]:
        """Weights of the query losses after inner steps 1..T, for the current epoch ``e``.

        ``"authors"``: every weight starts at ``1 / T``; each early step loses ``e / (T * msl_epochs)``, down
        to the floor ``0.03 / T``, and the last step gains what they lose, up to ``1 - (T - 1) * 0.03 / T``.
        From ``e >= msl_epochs`` on only the last step counts (weight 1, no floor), as in the authors' forward
        pass. ``"linear"``: interpolates from uniform to the floor over ``msl_epochs`` and stays there.

        Returns:
            ``T`` floats that sum to 1.
        """
        steps = self.inner_steps
        last_only = [0.0] * (steps - 1) + [1.0]
        if not self.multi_step_loss or steps == 1:
            return last_only
        low = 0.03 / steps  # 0.03: the floor of the non-final weights in the authors' code
        if self.msl_schedule == "linear":
            progress = min(self.epoch / max(self.msl_epochs, 1), 1.0)
            early = (1 - progress) / steps + progress * low
            return [early] * (steps - 1) + [1.0 - early * (steps - 1)]
        if self.epoch >= self.msl_epochs:
            return last_only
        decay = self.epoch / (steps * self.msl_epochs)  # what each early step has lost by this epoch
        early = max(1.0 / steps - decay, low)
        last = min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * low)
        return [early] * (steps - 1) + [last]  # the two clamps bind at the same epoch, so the sum stays 1

    def extra_params(self, model: nn.Module) -> Params:
        """Learned step sizes ``mamlpp.lr.<step>.<name>`` and per-step norm parameters ``mamlpp.bn.<step>.<name>``."""
        extra: Params = {}
        norms = set(norm_parameter_names(model)) if self.per_step_bn else set()
        for name, p in model.named_parameters():
            if self.learned_lrs and name not in norms and name_filter(self.adapted)(name):
                for t in range(self.inner_steps):
                    extra[f"{PREFIX}lr.{t}.{name}"] = torch.tensor(
                        self.inner_lr, dtype=p.dtype, device=p.device
                    ).requires_grad_()
            if name in norms:
                for t in range(self.bn_sets):
                    extra[f"{PREFIX}bn.{t}.{name}"] = p.detach().clone().requires_grad_()
        return extra

    @property
    def bn_sets(self) -> int:
        """Per-step norm parameter sets: one per inner step, plus one for the last query pass in ``"next"``."""
        return self.inner_steps + (self.bn_query_step == "next")

    def _trajectory(self, model: nn.Module, params: Params, support: Split, ways: int) -> list[Params]:
        """Weights after steps 1..T, each with the norm parameters its query pass uses (``bn_query_step``)."""
        check_model(model)  # inner steps would write running statistics into the shared buffers
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
        # a set too few or too many: parameters made for the other bn_query_step, which would silently shift
        # every query pass onto another step's norm parameters
        if norms and (
            f"{PREFIX}bn.{self.bn_sets - 1}.{norms[0]}" not in params
            or f"{PREFIX}bn.{self.bn_sets}.{norms[0]}" in params
        ):
            raise ValueError(
                f"MAML++ with bn_query_step={self.bn_query_step!r} needs {self.bn_sets} per-step norm parameter "
                "sets; pass algo.extra_params(model) of this algorithm (or the bn_query_step they were made for)"
            )
        query_step = 0 if self.bn_query_step == "authors" else 1  # offset of the query pass's norm set
        fast = {n: params[n] for n in model_names}
        states = []
        for t in range(self.inner_steps):
            current = with_norms(fast, t)  # the support pass of step t uses set t

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
            fast = fast | stepped
            states.append(with_norms(fast, t + query_step))  # the query pass after step t
        return states

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Params:
        return self._trajectory(model, params, support, ways)[-1]

    def predict(self, model: nn.Module, params: Params, state: Params, x: Tensor) -> Tensor:
        return call(model, state, x)

    def task_loss(self, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        """Multi-step loss: ``sum_t w_t L_query(theta_t)``; returns it and the final query predictions."""
        states = self._trajectory(model, params, task.support, task.ways)
        total = task.query.x.new_zeros(())
        for weight, state in zip(self.step_weights(), states, strict=True):
            if weight > 0:
                logits = call(model, state, task.query.x)
                total = total + weight * loss_fn(logits, task.query.y, task.ways)
        return total, logits


@dataclass(frozen=True)
class MAMLPlusPlusSettings:
    inner_lr: float = setting(0.4, "inner-loop step size (the start of the learned ones; 0.1 in the paper)")
    inner_steps: int = setting(1, "inner-loop steps, in training and test (5 in the paper)")
    first_order_epochs: int = setting(0, "derivative-order annealing: first-order epochs before second order")
    epoch_steps: int = setting(
        500, "meta-steps per epoch, the unit of the annealing schedules (500 in the paper)"
    )
    msl_epochs: int = setting(
        10, "epochs of the multi-step loss before only the last step counts (10 in the paper)"
    )
    msl_schedule: str = setting(
        "authors", "multi-step loss weights: authors (the authors' code: the early steps decay to 0.03/T, then the "
        "last step alone) or linear (a linear decay that keeps the floor)", MSL_SCHEDULES,
    )  # fmt: skip
    bn_query_step: str = setting(
        "authors", "per-step BatchNorm set of the query after inner step t: authors (set t, as the authors' code) "
        "or next (set t+1)", BN_QUERY_STEPS,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_range(
            self,
            {"inner_steps": 1, "first_order_epochs": 0, "epoch_steps": 1, "msl_epochs": 1},
            ("inner_lr",),
        )


SPEC = AlgorithmSpec(
    name="mamlpp",
    summary="MAML++: multi-step loss, learned per-step step sizes, per-step BatchNorm (Antoniou et al. 2019)",
    build=lambda s, testing: MAMLPlusPlus(
        s.inner_lr, s.inner_steps, msl_epochs=s.msl_epochs, first_order_epochs=s.first_order_epochs,
        epoch_steps=s.epoch_steps, msl_schedule=s.msl_schedule, bn_query_step=s.bn_query_step,
    ),
    model=classifier, settings=MAMLPlusPlusSettings, fixed_ways=True, data=("images", "vectors", "regression"),
    routes=GRADIENT_ROUTES,
)  # fmt: skip
