"""The algorithm contract: what every few-shot learner is, and what the rest of the package may ask of it.

An algorithm is a frozen dataclass of settings that subclasses :class:`Algorithm`: it must define ``adapt`` (learn
from a support set, return the task *state*) and ``predict`` (outputs for new inputs given that state); every
other method has a documented default that an algorithm overrides only when it differs. Learned tensors live in
the model (or in :meth:`Algorithm.extra_params`), and the per-task state is returned rather than stored anywhere,
so adaptation is re-entrant and can be mapped over tasks with ``torch.func.vmap``.

What the *package* needs to know about an algorithm (its default network, the data and routes it supports, its
own settings, how it trains) is declared once, in its own module, as an :class:`AlgorithmSpec`; the registry
(:mod:`fewshot.registry`) maps names to specs. Nothing else in the package asks an algorithm what it is.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fewshot.models import ModelRequest, in_transform
from fewshot.tasks.episodes import Split, Task

Params = dict[str, Tensor]


class Algorithm:
    """The base of every few-shot learner: two required methods, and hooks with defaults.

    Subclasses are frozen dataclasses (hashable values: the settings), so ``dataclasses.replace`` derives
    variants and a compiled meta-gradient can be cached per algorithm.
    """

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Any:
        """Learns from the support set and returns the task state (fast weights, prototypes, ...), without
        side effects.

        Args:
            model: the network, run as ``functional_call(model, params, x)``.
            params: name -> tensor, the model's parameters plus the algorithm's own (:meth:`extra_params`).
            support: ``x (n_support, *features)``, ``y (n_support,)`` class ids in ``0..ways-1`` (or targets).
            ways: number of classes; 0 for regression.
        """
        raise NotImplementedError(f"{type(self).__name__} must define adapt()")

    def predict(self, model: nn.Module, params: Params, state: Any, x: Tensor) -> Tensor:
        """Outputs for ``x (n, *features)`` given the task state: logits ``(n, ways)`` (or scores that rank the
        classes, see :meth:`probabilities`), or regression outputs ``(n, *targets)``."""
        raise NotImplementedError(f"{type(self).__name__} must define predict()")

    def query_logits(self, model: nn.Module, params: Params, task: Task) -> Tensor:
        """The query outputs of one task, ``(n_query, ways)``: ``predict(adapt(support), query.x)`` by default;
        an algorithm may fuse the two (ProtoNet embeds support and query in one pass)."""
        state = self.adapt(model, params, task.support, task.ways)
        return self.predict(model, params, state, task.query.x)

    def task_loss(self, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        """``(loss, outputs)``: the scalar meta-training loss of one task and its query outputs. By default the
        query cross-entropy (MSE for regression) of :meth:`query_logits`."""
        outputs = self.query_logits(model, params, task)
        return loss_fn(outputs, task.query.y, task.ways), outputs

    def batch_loss(
        self, model: nn.Module, params: Params, tasks: Sequence[Task]
    ) -> tuple[Tensor, list[Tensor]]:
        """``(mean loss, outputs per task)`` over ``tasks``: what the autograd route differentiates once per step.
        :meth:`task_loss` per task by default; an algorithm whose tasks batch into one forward pass (the
        in-context learners: one prompt per row) overrides it for speed, with the same value."""
        losses, outputs = zip(*(self.task_loss(model, params, t) for t in tasks), strict=True)
        return torch.stack(losses).mean(), list(outputs)

    def task_gradient(self, model: nn.Module, params: Params, task: Task) -> tuple[Params, Tensor]:
        """``(gradient, loss)`` of one task w.r.t. ``params``: the gradient of :meth:`task_loss` by default;
        an algorithm with its own update direction (Reptile: ``theta - theta'``) returns that instead."""
        return grad_and_value(lambda p: self.task_loss(model, p, task)[0], params, create_graph=False)

    def extra_params(self, model: nn.Module) -> Params:
        """The algorithm's own meta-parameters for ``model`` (Meta-SGD's step sizes), trained with the model's
        and saved in its checkpoints under ``algorithm.<name>``. None by default."""
        return {}

    def at_step(self, step: int) -> Algorithm:
        """The algorithm to use at meta-training step ``step`` (MAML++ anneals its loss weights and derivative
        order by epoch). Itself by default."""
        return self

    @property
    def adaptation_steps(self) -> int:
        """Gradient steps taken on each support set (0 by default: metric learners, nearest neighbour)."""
        return 0

    def with_adaptation_steps(self, steps: int) -> Algorithm | None:
        """The same algorithm taking ``steps`` adaptation steps, or None when that is not a free choice (no
        gradient steps at all, or, like MAML++, learned per-step parameters)."""
        return None

    def probabilities(self, outputs: Tensor) -> Tensor:
        """Class probabilities ``(n, ways)`` from :meth:`predict`'s outputs: a softmax by default."""
        return torch.softmax(full_precision(outputs), dim=-1)


class AdaptsByGradient(Algorithm):
    """An algorithm that takes ``inner_steps`` (a dataclass field) gradient steps on each support set, any number
    of which is a valid choice at test time."""

    inner_steps: int

    @property
    def adaptation_steps(self) -> int:
        return self.inner_steps

    def with_adaptation_steps(self, steps: int) -> Algorithm | None:
        return dataclasses.replace(self, inner_steps=steps)  # type: ignore[type-var]


@dataclass(frozen=True)
class NoSettings:
    """An algorithm without settings of its own."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """Everything the package needs to know about an algorithm, declared in the algorithm's own module.

    Attributes:
        name: the name a configuration uses (``--algorithm NAME``).
        summary: one line with the paper, shown by ``fewshot list`` and ``--help``.
        build: ``(settings, testing) -> Algorithm``; with ``testing`` the algorithm for validation and test
            (MAML: ``test_inner_steps`` steps).
        model: ``(request, settings) -> nn.Module``: the default network for the data (a
            :class:`ModelRequest`); any other module works from Python.
        settings: a frozen dataclass of the algorithm's own settings; each field is a ``--flag`` and a config key,
            with its help in the field's metadata (:func:`setting`).
        training: ``"episodes"`` (meta-training on tasks), ``"batches"`` (ordinary classification over all
            training classes, then a test-time learner; Chen et al. 2019) or ``"none"`` (nothing to learn
            before test time).
        fixed_ways: the network's head answers exactly the training ``ways`` classes, so it is validated,
            tested and used with that many classes only.
        reads_ways: the network reads at most the training ``ways`` classes (label inputs and outputs of that
            size: SNAIL, the in-context classifier, the MANN), so more are refused before training starts.
        data: the kinds of data it works on: ``"images"``, ``"vectors"``, ``"regression"``, ``"bandit"`` (an RL
            algorithm: its ``batch_loss`` plays the tasks, and it defines ``play(model, params, env) -> (actions,
            rewards)`` for evaluation, as :class:`~fewshot.algorithms.rl2.RL2` does).
        routes: the ways a meta-gradient may be computed (:func:`~fewshot.algorithms.routes.meta_gradient`, or
            ``"autograd"``: one backward through the summed task losses). ``--route auto`` takes ``"autograd"`` when
            it comes first, else, among these, ``vmap`` for regression, ``threads`` on a CPU with several cores and
            one process, and ``loop`` otherwise. ``"threads"`` and ``"vmap"`` need a model without BatchNorm running
            statistics.
        takes_backbone: its image network is :func:`~fewshot.models.standard_network`'s, so ``--backbone`` (and
            ``--dropblock``) choose it; False when the algorithm builds its own (relation modules on feature maps,
            raw pixels, a frozen embedding), and only the default is accepted.
    """

    name: str
    summary: str
    build: Callable[[Any, bool], Algorithm]
    model: Callable[[ModelRequest, Any], nn.Module]
    settings: type = NoSettings
    training: str = "episodes"
    fixed_ways: bool = False
    reads_ways: bool = False
    data: tuple[str, ...] = ("images", "vectors")
    routes: tuple[str, ...] = ("autograd", "loop")
    takes_backbone: bool = True

    def __post_init__(self) -> None:
        if self.training not in ("episodes", "batches", "none"):
            raise ValueError(
                f"{self.name}: training must be episodes, batches or none, got {self.training!r}"
            )
        unknown = set(self.routes) - {"autograd", "loop", "threads", "vmap"}
        if unknown or not self.routes:
            raise ValueError(
                f"{self.name}: routes must come from autograd, loop, threads, vmap; got {self.routes}"
            )
        if not set(self.data) <= {"images", "vectors", "regression", "bandit"} or not self.data:
            raise ValueError(
                f"{self.name}: data must come from images, vectors, regression, bandit; got {self.data}"
            )


def setting(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A settings field with its ``--help`` text (meaning and unit) and, optionally, its allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def check_range(settings: Any, at_least: dict[str, float] = {}, positive: tuple[str, ...] = ()) -> None:  # noqa: B006
    """Refuses settings out of range, naming the setting: ``at_least`` name -> lowest value (None passes),
    ``positive`` names that must be finite and above 0 (None passes)."""
    for name, low in at_least.items():
        value = getattr(settings, name)
        if value is not None and value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    for name in positive:
        value = getattr(settings, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, got {value}")


def full_precision(z: Tensor) -> Tensor:
    """Half-precision tensors (bfloat16 / float16, from autocast) as float32; float32 and float64 unchanged.

    Distances, means and softmaxes are taken in at least float32: bf16's 8-bit mantissa swamps the small
    differences between classes."""
    return z.float() if z.dtype in (torch.bfloat16, torch.float16) else z


def group_sum(values: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Per class, the sum of its rows: ``(n, *f)`` with labels ``(n,)`` in ``0..ways-1`` -> ``(ways, *f)``."""
    return values.new_zeros(ways, *values.shape[1:]).index_add_(0, labels, values)


def accuracy(outputs: Tensor, y: Tensor) -> float:
    """Fraction of rows of ``outputs (n, ways)`` whose arg-max is the label ``y (n,)``.

    The hits are counted on the outputs' device and divided in Python: the same float as a float64 mean, on
    devices without float64 too (MPS).
    """
    return (outputs.argmax(-1) == y).sum().item() / y.numel()


def parameters_of(model: nn.Module) -> Params:
    """The model's trainable parameters as a name -> tensor dict (the tensors themselves, not copies)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


_NAMES: weakref.WeakKeyDictionary[nn.Module, frozenset[str]] = weakref.WeakKeyDictionary()


def call(model: nn.Module, params: Params, x: Tensor, **kwargs: Any) -> Tensor:
    """Runs ``model`` on ``x`` with ``params`` in place of its own parameters (buffers stay the model's).

    Entries of ``params`` that are not the model's (an algorithm's own meta-parameters, such as Meta-SGD's
    step sizes) are left out: ``functional_call`` would otherwise set them as new attributes or fail.
    """
    names = _NAMES.get(model)
    if names is None:
        names = _NAMES[model] = frozenset(n for n, _ in model.named_parameters())
    if not names.issuperset(params):
        params = {k: v for k, v in params.items() if k in names}
    return functional_call(model, params, (x,), kwargs or None)


def call_sub(model: nn.Module, params: Params, name: str, *args: Any) -> Any:
    """Runs the submodule ``model.<name>`` with its entries of ``params`` (keys ``"<name>.<...>"``).

    For algorithms whose own learned parts live in the model (Matching Networks' context LSTMs, a relation
    module): the parameters stay in one dict, so every route and optimiser sees them.
    """
    module = getattr(model, name, None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"the model has no submodule {name!r}; build it with the model this algorithm needs")
    prefix = name + "."
    sub = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    return functional_call(module, sub, args)


def grad_and_value(
    f: Callable[[Params], Tensor], at: Params, create_graph: bool = True
) -> tuple[Params, Tensor]:
    """``(gradient of the scalar f at at, f(at))``, by whichever autograd is cheaper where it is called.

    Inside a ``torch.func`` transform (the vmap route, or a caller's ``torch.func.grad``) it is
    ``torch.func.grad_and_value``. Elsewhere (the loop and threads routes, evaluation) it is plain reverse-mode
    autograd, ``torch.autograd.grad``: the same numbers (the routes-agree tests in float64), but without
    functorch's per-operation wrapping, which made a second-order conv4 MAML task ~10% slower (measured on a 2-core CPU).

    Args:
        f: scalar function of a name -> tensor dict.
        at: where to differentiate; tensors that do not require grad are treated as new leaves.
        create_graph: keep the gradient differentiable (second order). Ignored (off) when the caller disabled
            grad, since then nothing will differentiate it; with ``False`` the gradient is detached.

    Returns:
        ``(grads, value)``: name -> gradient (zeros where ``f`` does not depend on an entry) and ``f(at)``.
    """
    if in_transform():
        grads, value = torch.func.grad_and_value(f)(at)
        return (grads if create_graph else {k: g.detach() for k, g in grads.items()}), value
    create_graph = create_graph and torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in at.items()}
        value = f(leaves)
        grads = torch.autograd.grad(
            value, list(leaves.values()), create_graph=create_graph, allow_unused=True
        )
    out = {
        k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads, strict=True)
    }
    return out, (value if create_graph else value.detach())


def all_finite(tensors: dict[str, Tensor]) -> bool:
    """Whether no entry of any tensor is NaN or Inf: one fused max-abs per tensor, then one check (an inner-loop
    step's gradients, checked at every step, are ~18 small tensors for conv4).

    Inside a ``torch.func`` transform values cannot be inspected, so it answers True there; the vmap route of
    :func:`~fewshot.algorithms.routes.meta_gradient` checks the per-task losses once the map is done. Tensors on
    the ``meta`` device have no values either (shapes and devices only: the device-placement tests run every
    algorithm there), so it answers True for them too.
    """
    values = list(tensors.values())
    if not values or in_transform() or values[0].is_meta:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(values, math.inf))).all())


def task_loss(algorithm: Algorithm, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
    """Adapts on the support set and scores the query set: ``algorithm.task_loss(model, params, task)``.

    Returns:
        ``(loss, logits)``: the task's scalar loss (mean cross-entropy, MSE for regression, or the algorithm's
        own) and the query predictions ``(queries_total, ways)`` (or ``(queries_total, *targets)``).
    """
    return algorithm.task_loss(model, params, task)


def loss_fn(predictions: Tensor, y: Tensor, ways: int) -> Tensor:
    """Cross-entropy for classification (``ways > 0``), mean squared error for regression (``ways == 0``)."""
    return F.cross_entropy(predictions, y) if ways else F.mse_loss(predictions, y)


def query_logits(algorithm: Algorithm, model: nn.Module, params: Params, task: Task) -> Tensor:
    """``algorithm.query_logits(model, params, task)``: the query outputs of one task."""
    return algorithm.query_logits(model, params, task)


def class_scores(similarity: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Per class, the largest similarity to one of its support examples: ``(n, n_support)`` -> ``(n, ways)``."""
    out = similarity.new_full((similarity.shape[0], ways), -torch.inf)
    return out.scatter_reduce(1, labels.expand_as(similarity), similarity, reduce="amax")


@torch.no_grad()
def predict_task(algorithm: Algorithm, model: nn.Module, params: Params, task: Task) -> Tensor:
    """Query logits of one task without building a graph (gradient-based inner loops still work: torch.func
    transforms ignore an outer ``no_grad``)."""
    return query_logits(algorithm, model, params, task)
