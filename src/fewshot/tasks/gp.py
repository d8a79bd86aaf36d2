"""Samples of a Gaussian process as regression tasks (the 1-D curves of Garnelo et al. 2018 and Kim et al. 2019).

Task ``i`` is one function drawn from a zero-mean Gaussian process with the squared-exponential (RBF) kernel
``k(x, x') = scale^2 exp(-(x - x')^2 / (2 length_scale^2))``, observed at ``shots + queries`` inputs drawn uniformly
from ``x_range`` (Kim et al.: ``[-2, 2]``, length scale 0.6, scale 1). ``noise`` is the standard deviation of the
observation noise (also what keeps the kernel matrix positive definite). Task ``i`` is a pure function of
``(seed, i)``, as every task family here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fewshot.tasks.episodes import Split, Task
from fewshot.tasks.regression import generator


@dataclass(frozen=True)
class GaussianProcess:
    """Functions drawn from an RBF Gaussian process: support ``(shots, 1)``, query ``(queries, 1)``.

    Example:
        >>> task = GaussianProcess(shots=10, queries=20, seed=0).task(3)
        >>> task.support.x.shape, task.query.y.shape        # (10, 1), (20, 1)
    """

    shots: int = 10
    queries: int = 10
    length_scale: float = 0.6
    scale: float = 1.0
    noise: float = 0.02
    x_low: float = -2.0
    x_high: float = 2.0
    seed: int = 0
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.shots < 0 or self.queries < 1:
            raise ValueError(
                f"shots must be at least 0 and queries at least 1, got {self.shots} and {self.queries}"
            )
        for name in ("length_scale", "scale", "noise"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not (math.isfinite(self.x_low) and math.isfinite(self.x_high) and self.x_low < self.x_high):
            raise ValueError(f"x_low must be below x_high, got {self.x_low} and {self.x_high}")

    @property
    def in_features(self) -> int:
        return 1

    def kernel(self, a: Tensor, b: Tensor) -> Tensor:
        """The RBF kernel between inputs ``a (n,)`` and ``b (m,)``: ``(n, m)``."""
        return self.scale**2 * torch.exp(-((a[:, None] - b[None, :]) ** 2) / (2 * self.length_scale**2))

    def task(self, i: int) -> Task:
        g = generator(self.seed, i)
        n = self.shots + self.queries
        x = self.x_low + (self.x_high - self.x_low) * torch.rand(n, generator=g, dtype=torch.float64)
        cov = self.kernel(x, x) + self.noise**2 * torch.eye(n, dtype=torch.float64)
        y = torch.linalg.cholesky(cov) @ torch.randn(n, generator=g, dtype=torch.float64)  # ~ N(0, cov)
        x, y = x[:, None].to(self.dtype), y[:, None].to(self.dtype)
        return Task(Split(x[: self.shots], y[: self.shots]), Split(x[self.shots :], y[self.shots :]), ways=0)

    def posterior(self, support: Split, x: Tensor) -> tuple[Tensor, Tensor]:
        """The exact posterior predictive mean and standard deviation (noise included) at ``x (m, 1)`` given
        ``support``: what a neural process approximates, and the best any model can do on these tasks."""
        xs, ys, xq = support.x.double()[:, 0], support.y.double()[:, 0], x.double()[:, 0]
        k_ss = self.kernel(xs, xs) + self.noise**2 * torch.eye(len(xs), dtype=torch.float64)
        k_qs = self.kernel(xq, xs)
        chol = torch.linalg.cholesky(k_ss)
        mean = k_qs @ torch.cholesky_solve(ys[:, None], chol)[:, 0]
        v = torch.cholesky_solve(k_qs.T, chol)
        var = self.scale**2 + self.noise**2 - (k_qs * v.T).sum(1)
        return mean[:, None], var.clamp_min(1e-12).sqrt()[:, None]
