"""Where tensors live: choosing a torch device, moving a task there, autocast for its kind.

Library code creates tensors on the device of the tensors it is given (``x.new_zeros``, ``device=x.device``), so
a model and its data on one device keep every computation there; these helpers are for the edges: the command
line's ``--device`` and the trainer moving each step's episodes once.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fewshot.tasks.episodes import Split, Task

CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve(name: str | torch.device = "auto") -> torch.device:
    """The device ``name`` asks for: ``auto`` is CUDA if present, else MPS (Apple), else the CPU.

    Raises:
        ValueError: the name is not a device, or that device is not on this machine (saying what is).
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(CHOICES)}") from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {name} asked for, but this machine has no CUDA GPU; use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name} asked for, but this machine has {count} CUDA GPU(s): cuda:0..{count - 1}"
            )
    elif device.type == "mps" and not _mps_available():
        raise ValueError(
            f"device {name} asked for, but MPS is not available here; use --device cpu (or auto)"
        )
    elif device.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"device {name} is not supported; choose one of {', '.join(CHOICES)}")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def device_of(
    params: Mapping[str, torch.Tensor] | None = None, model: nn.Module | None = None
) -> torch.device | None:
    """Where a learner computes: the device of its first parameter in ``params``, else of ``model``'s first
    parameter or buffer; None when it has none (nearest neighbour in pixel space: the data's device is kept)."""
    for t in (params or {}).values():
        return t.device
    if model is not None:
        for t in itertools.chain(model.parameters(), model.buffers()):
            return t.device
    return None


def synchronize(device: torch.device | None) -> None:
    """Waits for the work queued on ``device`` (CUDA, MPS) to finish, so that a clock read afterwards times it;
    nothing to wait for on the CPU."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


def move_task(task: Task, device: torch.device) -> Task:
    """``task`` with every tensor on ``device`` (a no-op for tensors already there). From the CPU to CUDA the
    copy comes from pinned memory and does not block, so it overlaps with the work already queued."""
    if task.support.x.device == device:
        return task

    def move(t: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    return Task(Split(move(task.support.x), move(task.support.y)), Split(move(task.query.x), move(task.query.y)),
                task.ways)  # fmt: skip


def autocast(device: torch.device, enabled: bool) -> Any:
    """bfloat16 autocast for ``device``'s kind (CPU, CUDA, MPS), or nothing when not ``enabled``."""
    if not enabled or device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
