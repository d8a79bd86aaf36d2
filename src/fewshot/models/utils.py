"""Facts about modules and the autograd context that models and algorithms both need."""

from __future__ import annotations

import torch
from torch import nn


def in_transform() -> bool:
    """True while a ``torch.func`` transform (``vmap``, ``grad``, ...) is running around the caller."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def running_stats_layers(model: nn.Module, tracking: bool = True) -> list[str]:
    """Names of the normalisation layers (BatchNorm, InstanceNorm) of ``model`` that keep running statistics:
    layers whose buffers a forward pass in training mode writes. With ``tracking=False``, those that do not
    (they normalise every batch with its own statistics, so one input's output depends on the others')."""
    return [
        name or type(model).__name__
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats == tracking
    ]
