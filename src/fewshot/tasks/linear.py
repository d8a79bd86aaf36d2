"""Function-class regression tasks for in-context learning (Garg, Tsipras, Liang & Valiant 2022, arXiv 2208.01066).

A task is a function ``f`` drawn from a class; its prompt is ``x_1, f(x_1), ..., x_k, f(x_k)`` with ``x_i ~ N(0, I_d)``.
The classes of Garg et al., section 3 and appendix A:

* ``linear``: ``f(x) = w . x``, ``w ~ N(0, I_d)``;
* ``sparse``: the same with all but ``sparsity`` coordinates of ``w`` zeroed (a random set per task);
* ``relu``: a two-layer ReLU network ``f(x) = sum_j a_j relu(v_j . x)`` with ``hidden`` units, ``a_j, v_j ~ N(0, 1)``,
  scaled by ``sqrt(2 / hidden)`` so that ``f(x)`` has a variance of about ``d``, as ``w . x`` has (errors are then
  reported divided by ``d``, as in Garg et al.).

Inputs are ``N(0, I_d)`` (Garg et al.) or ``U(-1, 1)^d`` (``inputs="uniform"``, von Oswald et al. 2023); for the
out-of-distribution tests of Garg et al. (section 3.2) they can be multiplied by ``scale`` or drawn with a skewed
covariance (``skew``: the coordinates mixed so that, for normal inputs, the covariance's eigenvalues are
proportional to ``i^-skew`` and sum to the number of active coordinates, in a random orthonormal basis fixed by the
seed; uniform inputs have a third of that). ``noise`` adds ``N(0, noise^2)`` to every label. ``active`` of the
``dim`` coordinates are non-zero (the rest of
``x`` is 0): a curriculum (:mod:`fewshot.tasks.curriculum`) grows it during training while every tensor keeps its shape. Task ``i`` is a
pure function of ``(seed, i)``, as every task family here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fewshot.tasks.episodes import Split, Task
from fewshot.tasks.regression import generator

FUNCTIONS = ("linear", "sparse", "relu")


@dataclass(frozen=True)
class FunctionTasks:
    """Prompts of a function class: ``shots`` in-context examples and ``queries`` points to predict.

    Args:
        dim: input dimension ``d`` (20 in Garg et al.).
        shots: in-context examples ``k`` (the support).
        queries: points to predict per task (each predicted from the same ``shots`` examples).
        function: ``linear``, ``sparse`` or ``relu``.
        noise: standard deviation of the label noise (0: noiseless, as in most of the paper).
        sparsity: non-zero coordinates of ``w`` for ``sparse`` (3 in the paper).
        hidden: units of the ``relu`` networks (100 in the paper).
        active: coordinates of ``x`` that are not zero (default all: ``dim``); the curriculum's knob.
        inputs: ``normal`` (``N(0, 1)`` coordinates) or ``uniform`` (``U(-1, 1)``).
        scale: every input multiplied by it (2 and 3: Garg et al.'s scaled-input test).
        skew: covariance eigenvalues proportional to ``i^-skew`` (0: isotropic; 2: Garg et al.'s skewed test).
        seed: task ``i`` depends only on ``(seed, i)``.

    Example:
        >>> task = FunctionTasks(dim=5, shots=10, queries=3).task(0)
        >>> task.support.x.shape, task.support.y.shape      # (10, 5), (10,)
    """

    dim: int = 20
    shots: int = 40
    queries: int = 1
    function: str = "linear"
    noise: float = 0.0
    sparsity: int = 3
    hidden: int = 100
    active: int | None = None
    inputs: str = "normal"
    scale: float = 1.0
    skew: float = 0.0
    seed: int = 0
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise ValueError(f"unknown function class {self.function!r}; choose one of {list(FUNCTIONS)}")
        for name, low in (("dim", 1), ("shots", 0), ("queries", 1), ("sparsity", 1), ("hidden", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.active is None:
            object.__setattr__(self, "active", self.dim)  # so that a curriculum can grow it up to dim
        elif not 1 <= self.active <= self.dim:
            raise ValueError(f"active must be from 1 to dim={self.dim}, got {self.active}")
        for name in ("noise", "skew"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be 0 or a positive number, got {getattr(self, name)}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale must be a positive number, got {self.scale}")
        if self.inputs not in ("normal", "uniform"):
            raise ValueError(f"inputs must be normal or uniform, got {self.inputs!r}")

    @property
    def in_features(self) -> int:
        return self.dim

    def function_of(self, i: int) -> tuple[Tensor, ...]:
        """The parameters of task ``i``'s function (float64): ``(w,)`` for linear and sparse, ``(a, v)`` for relu."""
        g = generator(self.seed, i)
        active = self.active or self.dim
        if self.function == "relu":
            v = torch.zeros(self.hidden, self.dim, dtype=torch.float64)
            v[:, :active] = torch.randn(self.hidden, active, generator=g, dtype=torch.float64)
            a = torch.randn(self.hidden, generator=g, dtype=torch.float64) * math.sqrt(2 / self.hidden)
            return a, v
        w = torch.zeros(self.dim, dtype=torch.float64)
        w[:active] = torch.randn(active, generator=g, dtype=torch.float64)
        if self.function == "sparse":
            keep = torch.randperm(active, generator=g)[: min(self.sparsity, active)]
            mask = torch.zeros(self.dim, dtype=torch.bool)
            mask[keep] = True
            w = torch.where(mask, w, torch.zeros_like(w))
        return (w,)

    def evaluate(self, i: int, x: Tensor) -> Tensor:
        """Task ``i``'s noiseless function at ``x (n, dim)``: ``(n,)``."""
        params = self.function_of(i)
        x = x.to(torch.float64)
        if self.function == "relu":
            a, v = params
            return torch.relu(x @ v.T) @ a
        return x @ params[0]

    def covariance_root(self, active: int) -> Tensor:
        """``R (active, active)`` with ``R'R`` the skewed covariance: eigenvalues ``i^-skew`` scaled to sum to
        ``active``, in an orthonormal basis drawn once from the seed (the same for every task)."""
        g = generator(self.seed + 2_000_000_011, 0)
        basis, _ = torch.linalg.qr(torch.randn(active, active, generator=g, dtype=torch.float64))
        eigen = torch.arange(1, active + 1, dtype=torch.float64) ** -self.skew
        eigen = eigen * active / eigen.sum()
        return eigen.sqrt()[:, None] * basis.T  # rows of z @ R: z (n, active) ~ N(0, I) -> N(0, Q diag Q')

    def task(self, i: int) -> Task:
        """Task ``i``: support ``x (shots, dim)``, ``y (shots,)``; query ``x (queries, dim)``, ``y (queries,)``."""
        n = self.shots + self.queries
        active = self.active or self.dim
        x = torch.zeros(n, self.dim, dtype=torch.float64)
        g = generator(
            self.seed + 1_000_000_007, i
        )  # the points: a stream of their own, so active leaves w alone
        if self.inputs == "uniform":
            x[:, :active] = 2 * torch.rand(n, active, generator=g, dtype=torch.float64) - 1
        else:
            x[:, :active] = torch.randn(n, active, generator=g, dtype=torch.float64)
        if self.skew:
            x[:, :active] = x[:, :active] @ self.covariance_root(active)
        x = self.scale * x
        y = self.evaluate(i, x)
        if self.noise:
            y = y + self.noise * torch.randn(n, generator=g, dtype=torch.float64)
        x, y = x.to(self.dtype), y.to(self.dtype)
        return Task(Split(x[: self.shots], y[: self.shots]), Split(x[self.shots :], y[self.shots :]), ways=0)

    def batch(self, indices) -> Task:
        """Tasks at ``indices`` stacked along a leading dimension."""
        from fewshot.tasks.episodes import stack_tasks

        return stack_tasks([self.task(int(i)) for i in indices])
