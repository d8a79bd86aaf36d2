"""What an in-context learner of linear functions is measured against (Garg et al. 2022, section 3.1).

Each estimator reads the prompt's examples (the support set: ``x (k, d)``, ``y (k,)``) and predicts ``y`` for new
``x``. They follow the adapt / predict contract, so :func:`fewshot.evaluate.evaluate_regression` scores them on the
very prompts a trained model sees; the model is not used (pass ``nn.Identity()``). Computed in float64.

* :class:`LeastSquares`: the minimum-norm least-squares solution (the pseudo-inverse): optimal for noiseless
  linear functions once ``k >= d``.
* :class:`Ridge`: ``(X'X + lambda I)^-1 X'y``; with ``w ~ N(0, I)`` and label noise ``sigma``, ``lambda = sigma^2``
  gives the posterior mean, the Bayes-optimal prediction.
* :class:`NearestNeighbours`: the mean label of the ``k`` nearest examples (3 in Garg et al.).
* :class:`Averaging`: ``w = mean(y_i x_i)``, Garg et al.'s "averaging" estimator.
* :class:`GradientDescent`: ``steps`` steps of gradient descent from ``w = 0`` on the in-context squared loss
  ``L(w) = 1/(2k) sum (w . x_i - y_i)^2``: what a linear self-attention layer can compute (von Oswald et al. 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import Algorithm, Params
from fewshot.tasks.episodes import Split


class _Linear(Algorithm):
    """An estimator whose state is a weight vector ``w (d,)`` (float64); predictions are ``x . w``."""

    def weights(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Tensor:
        x, y = support.x.double().flatten(1), support.y.double().flatten()
        if len(x) == 0:  # no examples: predict 0, the prior mean
            return x.new_zeros(x.shape[1])
        return self.weights(x, y)

    def predict(self, model: nn.Module, params: Params, state: Tensor, x: Tensor) -> Tensor:
        return (x.double().flatten(1) @ state).to(x.dtype)


@dataclass(frozen=True)
class LeastSquares(_Linear):
    """Minimum-norm least squares: ``w = pinv(X) y``."""

    def weights(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.linalg.pinv(x) @ y


@dataclass(frozen=True)
class Ridge(_Linear):
    """Ridge regression, ``w = (X'X + penalty I)^-1 X'y``; ``penalty = noise^2`` is Bayes-optimal for ``w ~ N(0, I)``."""

    penalty: float = 0.0

    def weights(self, x: Tensor, y: Tensor) -> Tensor:
        if self.penalty == 0:
            return torch.linalg.pinv(x) @ y
        gram = x.T @ x + self.penalty * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return torch.linalg.solve(gram, x.T @ y)


@dataclass(frozen=True)
class Averaging(_Linear):
    """Garg et al.'s averaging estimator, ``w = (1/k) sum y_i x_i``."""

    def weights(self, x: Tensor, y: Tensor) -> Tensor:
        return (y[:, None] * x).mean(0)


@dataclass(frozen=True)
class GradientDescent(_Linear):
    """``steps`` steps of size ``lr`` of gradient descent on ``1/(2k) sum (w . x_i - y_i)^2`` from ``w = 0``."""

    lr: float = 0.1
    steps: int = 1

    def weights(self, x: Tensor, y: Tensor) -> Tensor:
        w = x.new_zeros(x.shape[1])
        for _ in range(self.steps):
            w = w - self.lr * x.T @ (x @ w - y) / len(x)
        return w

    @property
    def adaptation_steps(self) -> int:
        return self.steps


@dataclass(frozen=True)
class NearestNeighbours(Algorithm):
    """The mean label of the ``k`` nearest examples in Euclidean distance (all of them when fewer)."""

    k: int = 3

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> tuple[Tensor, Tensor]:
        return support.x.double().flatten(1), support.y.double().flatten()

    def predict(self, model: nn.Module, params: Params, state: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        xs, ys = state
        if len(xs) == 0:
            return x.new_zeros(x.shape[0])
        nearest = torch.cdist(x.double().flatten(1), xs).topk(min(self.k, len(xs)), largest=False).indices
        return ys[nearest].mean(-1).to(x.dtype)  # (n,)


def tuned_gradient_descent(
    family: Any, steps: int = 1, prompts: int = 1000, seed_offset: int = 7_000_001
) -> GradientDescent:
    """Gradient descent with the learning rate that minimises the query error on ``prompts`` prompts of
    ``family`` drawn with another seed (never the prompts it is then tested on).

    One step has a closed form: the prediction is ``lr * p`` with ``p = x_q . X'y / k``, so the best ``lr`` is
    ``sum(y_q p) / sum(p^2)`` (the line search of von Oswald et al., done exactly). For more steps the error is
    a polynomial in ``lr``: the best of a fine logarithmic grid from 1e-3 to 10 is taken.
    """
    tasks = replace(family, seed=family.seed + seed_offset)
    xs, ys, xq, yq = [], [], [], []
    for i in range(prompts):
        t = tasks.task(i)
        xs.append(t.support.x.double().flatten(1))
        ys.append(t.support.y.double().flatten())
        xq.append(t.query.x.double().flatten(1))
        yq.append(t.query.y.double().flatten())
    x, y, q, target = (
        torch.stack(xs),
        torch.stack(ys),
        torch.stack(xq),
        torch.stack(yq),
    )  # (P, k, d), (P, k), ...
    if x.shape[1] == 0:  # no examples: any rate predicts 0
        return GradientDescent(lr=1.0, steps=steps)

    def predictions(lr: Tensor) -> Tensor:  # (L,) rates -> (L, P, m)
        w = x.new_zeros(len(lr), *x.shape[::2])  # (L, P, d)
        for _ in range(steps):
            residual = torch.einsum("pkd,lpd->lpk", x, w) - y  # (L, P, k)
            w = w - lr[:, None, None] * torch.einsum("pkd,lpk->lpd", x, residual) / x.shape[1]
        return torch.einsum("pmd,lpd->lpm", q, w)

    if steps == 1:
        p = predictions(torch.ones(1, dtype=x.dtype))[0]
        return GradientDescent(lr=float((target * p).sum() / (p * p).sum().clamp_min(1e-300)), steps=1)
    grid = torch.logspace(-3, 1, 400, dtype=x.dtype)
    errors = torch.nan_to_num(((predictions(grid) - target) ** 2).mean((1, 2)), nan=math.inf, posinf=math.inf)
    return GradientDescent(lr=float(grid[errors.argmin()]), steps=steps)


def prompt_baselines(family: Any, gd_steps: tuple[int, ...] = (1,)) -> dict[str, Algorithm]:
    """The estimators of Garg et al. (2022) and von Oswald et al. (2023) for prompts of ``family`` (a
    :class:`~fewshot.tasks.linear.FunctionTasks` or any family with ``shots`` and ``seed``): least squares,
    ridge with the Bayes-optimal penalty (``noise^2``; when the family has label noise), 3 nearest neighbours,
    averaging, and ``steps`` steps of gradient descent at the best learning rate for this number of examples."""
    noise = getattr(family, "noise", 0.0)
    out: dict[str, Algorithm] = {"least squares": LeastSquares()}
    if noise:  # the posterior mean for linear functions with w ~ N(0, I); for other classes, just ridge
        bayes = getattr(family, "function", "linear") == "linear"
        out["ridge (Bayes-optimal)" if bayes else "ridge (penalty noise^2)"] = Ridge(penalty=noise**2)
    out |= {"3-nearest neighbours": NearestNeighbours(3), "averaging": Averaging()}
    for steps in gd_steps:
        out[f"gradient descent, {steps} step{'s' if steps > 1 else ''} (best lr)"] = tuned_gradient_descent(
            family, steps
        )
    return out
