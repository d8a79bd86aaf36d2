"""Times learn2learn's MAML meta-iteration; run inside ``benchmarks/.venv-peers``.

Started by ``benchmarks/maml_speed.py``, one process per (round, workload). One meta-iteration is what
learn2learn's MAML examples do, with Adam as the outer optimiser:

    optimizer.zero_grad()
    for each task:
        learner = maml.clone()                                     # l2l.algorithms.MAML(model, lr, first_order)
        for _ in range(inner_steps): learner.adapt(loss(learner(support_x), support_y))
        loss(learner(query_x), query_y).backward()                 # gradients accumulate over tasks
    for p in maml.parameters(): p.grad.mul_(1 / tasks)
    optimizer.step()

This file is also the single source of the workloads, the seeded data and the peer models: ``maml_speed.py``
imports ``WORKLOADS`` and ``make_batches`` from it, so fewshot's side draws exactly the same tasks (the
driver also compares input checksums). Nothing but the ``main``
function imports learn2learn, so importing this module needs only torch.

Models (built right after ``torch.manual_seed(seed)``, so both sides draw identical initial weights):

* conv4 as a plain ``nn.Sequential``: 4 x [3x3 conv 64, BatchNorm2d(track_running_stats=False), ReLU, 2x2
  max-pool], flatten, ``Linear(64, ways)``; inputs 1 x 28 x 28;
* the sinusoid MLP of Finn et al. (2017): 1-40-40-1 with ReLU.

Prints one JSON object (per-step times in seconds, losses, peak RSS, versions) as the last line of stdout. With
``--dump PATH`` it also saves, with ``torch.save``, the initial weights and the meta-gradient of the first
meta-iteration (on the first batch, before the Adam step), in parameter order, for the driver to compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from importlib.metadata import version

import torch
from torch import Tensor, nn

# workload name -> settings. kind "conv4": Omniglot-shaped N-way K-shot classification; "sine": regression.
WORKLOADS: dict[str, dict] = {
    "conv4_maml": {
        "kind": "conv4", "ways": 5, "shots": 1, "queries": 15, "tasks": 32,
        "inner_lr": 0.4, "inner_steps": 1, "first_order": False, "meta_lr": 1e-3,
    },
    "conv4_fomaml": {
        "kind": "conv4", "ways": 5, "shots": 1, "queries": 15, "tasks": 32,
        "inner_lr": 0.4, "inner_steps": 1, "first_order": True, "meta_lr": 1e-3,
    },
    "sine_maml": {
        "kind": "sine", "shots": 10, "queries": 10, "tasks": 25,
        "inner_lr": 0.01, "inner_steps": 1, "first_order": False, "meta_lr": 1e-3,
    },
    "conv4_maml_10step": {
        "kind": "conv4", "ways": 5, "shots": 1, "queries": 15, "tasks": 32,
        "inner_lr": 0.4, "inner_steps": 10, "first_order": False, "meta_lr": 1e-3,
    },
}  # fmt: skip
IMAGE = (1, 28, 28)

# A meta-batch: support x, support y, query x, query y, each stacked over tasks (leading dimension = tasks).
Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def make_batches(
    workload: dict, seed: int, batches: int, tasks: int | None = None
) -> tuple[list[Batch], float]:
    """``batches`` distinct random meta-batches from a generator seeded with ``seed``, and their checksum.

    conv4: standard-normal images, labels ``0..ways-1`` (class-major). sine: ``y = A sin(x - b)`` with
    ``A ~ U[0.1, 5]``, ``b ~ U[0, pi]``, ``x ~ U[-5, 5]`` (Finn et al. 2017), shots + queries points per task.
    """
    n = tasks or workload["tasks"]
    gen = torch.Generator().manual_seed(seed)
    out: list[Batch] = []
    for _ in range(batches):
        if workload["kind"] == "conv4":
            ways, shots, queries = workload["ways"], workload["shots"], workload["queries"]
            xs = torch.randn(n, ways * shots, *IMAGE, generator=gen)
            xq = torch.randn(n, ways * queries, *IMAGE, generator=gen)
            ys = torch.arange(ways).repeat_interleave(shots).expand(n, -1).contiguous()
            yq = torch.arange(ways).repeat_interleave(queries).expand(n, -1).contiguous()
        else:
            shots, queries = workload["shots"], workload["queries"]
            amplitude = 0.1 + 4.9 * torch.rand(n, 1, 1, generator=gen)
            phase = math.pi * torch.rand(n, 1, 1, generator=gen)
            x = -5.0 + 10.0 * torch.rand(n, shots + queries, 1, generator=gen)
            y = amplitude * torch.sin(x - phase)
            xs, xq = x[:, :shots].contiguous(), x[:, shots:].contiguous()
            ys, yq = y[:, :shots].contiguous(), y[:, shots:].contiguous()
        out.append((xs, ys, xq, yq))
    checksum = sum(float(t.double().sum()) for batch in out for t in batch)
    return out, checksum


def conv4(ways: int, hidden: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [
            nn.Conv2d(IMAGE[0] if i == 0 else hidden, hidden, kernel_size=3, padding=1),
            nn.BatchNorm2d(hidden, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden, ways))


def sine_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=tuple(WORKLOADS), required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, default=2, help="distinct random meta-batches, cycled")
    p.add_argument("--tasks", type=int, default=None, help="override tasks per meta-iteration (smoke tests)")
    p.add_argument("--dump", default=None, help="save initial weights and the first meta-gradient here")
    args = p.parse_args()

    import learn2learn as l2l

    workload = WORKLOADS[args.workload]
    torch.set_num_threads(args.threads)
    batches, checksum = make_batches(workload, args.seed, args.batches, args.tasks)
    torch.manual_seed(args.seed)
    if workload["kind"] == "conv4":
        model: nn.Module = conv4(workload["ways"])
        loss_fn: nn.Module = nn.CrossEntropyLoss()
    else:
        model = sine_mlp()
        loss_fn = nn.MSELoss()
    model.train()
    maml = l2l.algorithms.MAML(model, lr=workload["inner_lr"], first_order=workload["first_order"])
    optimizer = torch.optim.Adam(maml.parameters(), lr=workload["meta_lr"])
    initial = [q.detach().clone() for q in maml.parameters()]

    def step(i: int, capture: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        xs, ys, xq, yq = batches[i % len(batches)]
        n = xs.shape[0]
        optimizer.zero_grad()
        total = torch.zeros(())
        for t in range(n):
            learner = maml.clone()
            for _ in range(workload["inner_steps"]):
                learner.adapt(loss_fn(learner(xs[t]), ys[t]))
            query_loss = loss_fn(learner(xq[t]), yq[t])
            query_loss.backward()
            total += query_loss.detach()
        for q in maml.parameters():
            q.grad.mul_(1.0 / n)
        grads = [q.grad.detach().clone() for q in maml.parameters()] if capture else None
        optimizer.step()
        return total / n, grads

    rss_before = rss_mb()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss, grads = step(i, capture=i == 0 and args.dump is not None)
        elapsed = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(elapsed)
        losses.append(float(loss))  # after the clock stops
        if grads is not None:
            names = [name for name, _ in maml.named_parameters()]
            torch.save({"names": names, "weights": initial, "grads": grads, "loss": losses[0]}, args.dump)

    print(
        json.dumps(
            {
                "contender": "learn2learn",
                "workload": args.workload,
                "times_s": times,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "input_checksum": checksum,
                "tasks": batches[0][0].shape[0],
                "peak_rss_mb": rss_mb(),
                "rss_before_steps_mb": rss_before,
                "threads": torch.get_num_threads(),
                "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
                "python": platform.python_version(),
                "executable": sys.executable,
                "torch": torch.__version__,
                "learn2learn": version("learn2learn"),
            }
        )
    )


if __name__ == "__main__":
    main()
