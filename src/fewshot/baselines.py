"""Baselines every meta-learning claim is measured against."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.algorithms.base import loss_fn


def pretrain_jointly(
    model: nn.Module, family, steps: int, tasks_per_step: int = 25, outer_lr: float = 1e-3
) -> nn.Module:
    """Fits ``model`` to the points of all training tasks at once, as one regression problem.

    The "pretrained" comparison of Finn et al. 2017 (figure 2): the same data a meta-learner sees, without the
    learning-to-adapt objective. Step ``s`` uses tasks ``s * tasks_per_step ...`` of ``family`` (e.g. a
    :class:`~fewshot.tasks.regression.Sinusoid`), support and query points pooled. Adam, ``outer_lr``.
    """
    opt = torch.optim.Adam(model.parameters(), outer_lr)
    for step in range(steps):
        tasks = family.batch(range(tasks_per_step * step, tasks_per_step * (step + 1)))
        x = torch.cat([tasks.support.x, tasks.query.x], 1).flatten(0, 1)  # (tasks * points, features)
        y = torch.cat([tasks.support.y, tasks.query.y], 1).flatten(0, 1)
        opt.zero_grad()
        loss_fn(model(x), y, 0).backward()
        opt.step()
    return model
