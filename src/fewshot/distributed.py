"""Training one run with many processes: ``torchrun --nproc-per-node N -m fewshot train ...``.

PyTorch's own machinery does the work: ``torchrun`` starts the processes and sets ``RANK``/``WORLD_SIZE``;
``torch.distributed`` (gloo on the CPU, NCCL on CUDA) averages the gradients. Each meta-step's tasks (or a
supervised baseline's batch) are split between the ranks in contiguous blocks, each rank computes the gradient of
its block, one all-reduce sums them, and every rank takes the same optimizer step: the result is the one-process
gradient up to the order of float additions. Episode ``i`` is the same episode whatever the number of processes.
Rank 0 alone writes the run directory, logs, validates and tests.
"""

from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (``rank`` 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory, logs and tests (rank 0)."""
        return self.rank == 0

    def block(self, n: int) -> range:
        """This rank's share of ``n`` items: a contiguous block, the blocks of all ranks covering ``0..n-1`` in
        order (a rank may get none when ``n`` is smaller than the number of processes)."""
        return range(n * self.rank // self.size, n * (self.rank + 1) // self.size)


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device) -> World:
    """Joins the run's process group when launched by ``torchrun`` (gloo for the CPU, NCCL for CUDA);
    otherwise the one-process world. The timeout is long: rank 0 validates while the others wait."""
    if not launched():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        # torchrun ends the others with SIGTERM when one process fails: say so instead of vanishing silently
        signal.signal(signal.SIGTERM, _terminated)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class ProcessLost(RuntimeError):
    """Another process of a distributed run stopped (killed, out of memory, its machine gone)."""


def _terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the message short
    raise ProcessLost(
        "this process was told to stop (SIGTERM: torchrun stops every process when one of them fails)"
    )


def local_device(device: torch.device) -> torch.device:
    """Under ``torchrun``, ``cuda`` without an index means this process's own GPU, ``cuda:LOCAL_RANK`` (made the
    current device, as NCCL and ``broadcast_object_list`` expect); anything else is left as it is."""
    if launched() and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def from_main(flag: bool, world: World, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (every rank must call it: a collective)."""
    if world.size == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_(tensors: list[torch.Tensor], world: World) -> None:
    """Sums ``tensors`` over all ranks in place, in one all-reduce of one flat buffer (~112k floats for conv4:
    one message instead of 18)."""
    if world.size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def any_(flag: bool, world: World, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call it: a collective)."""
    if world.size == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(tensors: list[torch.Tensor], world: World) -> None:
    """Rank 0's values of ``tensors`` on every rank, in place."""
    if world.size == 1:
        return
    for t in tensors:
        dist.broadcast(t, src=0)


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` (anything picklable) on every rank."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
