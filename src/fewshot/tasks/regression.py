"""Few-shot regression task families.

Sinusoid regression as in Finn et al. (2017), section 5.1: every task is ``y = A sin(x - b)`` with amplitude
``A ~ U[0.1, 5]``, phase ``b ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; the learner sees ``shots`` points and is
scored on ``queries`` more. Task ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fewshot.tasks.episodes import Split, Task


def generator(seed: int, i: int) -> torch.Generator:
    """A torch random stream for item ``i`` under ``seed``, independent of every other ``(seed, i)``."""
    state = np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _check_range(name: str, low_high: tuple[float, float]) -> None:
    low, high = low_high
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"{name} must be (low, high) with low <= high, got {low_high}")


@dataclass(frozen=True)
class Sinusoid:
    """Sinusoid regression tasks (Finn et al. 2017), with configurable ranges.

    Args:
        shots: support points per task (K: 5, 10 or 20 in the paper).
        queries: query points per task.
        amplitude, phase, x_range: ``(low, high)`` of the uniform distributions.
        seed: task ``i`` is a pure function of ``(seed, i)``.

    Example:
        >>> tasks = Sinusoid(shots=10, queries=10, seed=0)
        >>> batch = tasks.batch(range(25))     # 25 stacked tasks: support.x (25, 10, 1)
    """

    shots: int = 10
    queries: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    seed: int = 0
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.shots < 1 or self.queries < 1:
            raise ValueError(f"shots and queries must be at least 1, got {self.shots} and {self.queries}")
        for name in ("amplitude", "phase", "x_range"):
            _check_range(name, getattr(self, name))

    @property
    def in_features(self) -> int:
        return 1

    def parameters(self, i: int) -> tuple[float, float]:
        """``(amplitude, phase)`` of task ``i``."""
        g = generator(self.seed, i)
        u = torch.rand(2, generator=g, dtype=torch.float64)
        amplitude = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[0].item()
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * u[1].item()
        return amplitude, phase

    def function(self, i: int, x: Tensor) -> Tensor:
        """The true curve of task ``i`` at ``x``."""
        amplitude, phase = self.parameters(i)
        return amplitude * torch.sin(x - phase)

    def task(self, i: int) -> Task:
        """Task ``i``: support ``(shots, 1)`` and query ``(queries, 1)`` inputs and targets."""
        g = generator(self.seed, i)
        torch.rand(2, generator=g, dtype=torch.float64)  # the same draws as parameters(i), then the inputs
        low, high = self.x_range
        x = low + (high - low) * torch.rand(self.shots + self.queries, 1, generator=g, dtype=torch.float64)
        y = self.function(i, x)
        x, y = x.to(self.dtype), y.to(self.dtype)
        return Task(Split(x[: self.shots], y[: self.shots]), Split(x[self.shots :], y[self.shots :]), ways=0)

    def batch(self, indices) -> Task:
        """Tasks at ``indices`` stacked along a leading dimension (for one meta-training step)."""
        from fewshot.tasks.episodes import stack_tasks

        return stack_tasks([self.task(int(i)) for i in indices])
