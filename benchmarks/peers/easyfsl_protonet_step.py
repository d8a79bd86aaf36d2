"""Times easyfsl's Prototypical Networks training episode; run inside ``benchmarks/.venv-peers``.

Started by ``benchmarks/protonet_speed.py``, one process per (round, workload). One episode is what easyfsl's
episodic-training example does per task, with Adam:

    optimizer.zero_grad()
    model.process_support_set(support_images, support_labels)   # embeds the support set, builds prototypes
    scores = model(query_images)                                 # embeds the queries, -cdist to prototypes
    loss = cross_entropy(scores, query_labels); loss.backward(); optimizer.step()

The backbone is the standard conv4 (4 x [3x3 conv 64, BatchNorm2d, ReLU, 2x2 max-pool], flatten) as a plain
``nn.Sequential``; inputs are random tensors of Omniglot's shape (1 x 28 x 28) from a seeded generator: a few
distinct episodes, cycled (the driver checks that fewshot's side draws exactly the same ones).
Prints one JSON object (the per-step times in seconds and versions) as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version

import torch
from easyfsl.methods import PrototypicalNetworks
from torch import nn


def conv4(in_channels: int = 1, hidden: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [
            nn.Conv2d(in_channels if i == 0 else hidden, hidden, kernel_size=3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ways", type=int, required=True)
    p.add_argument("--shots", type=int, required=True)
    p.add_argument("--queries", type=int, required=True, help="query examples per class")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--episodes", type=int, default=4, help="distinct random episodes, cycled")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    side = args.image_size
    # a few distinct episodes, cycled, so the loss does not collapse on one repeated batch
    episodes = []
    for _ in range(args.episodes):
        xs = torch.randn(args.ways * args.shots, 1, side, side, generator=gen)
        xq = torch.randn(args.ways * args.queries, 1, side, side, generator=gen)
        episodes.append((xs, xq))
    checksum = sum(float(xs.double().sum() + xq.double().sum()) for xs, xq in episodes)  # driver compares
    ys = torch.arange(args.ways).repeat_interleave(args.shots)
    yq = torch.arange(args.ways).repeat_interleave(args.queries)

    model = PrototypicalNetworks(conv4())
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(i: int) -> torch.Tensor:
        xs, xq = episodes[i % len(episodes)]
        optimizer.zero_grad()
        model.process_support_set(xs, ys)
        scores = model(xq)
        loss = loss_fn(scores, yq)
        loss.backward()
        optimizer.step()
        return loss.detach()

    for i in range(args.warmup):
        step(i)
    times, losses = [], []
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step(i)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))  # after the clock stops

    print(
        json.dumps(
            {
                "contender": "easyfsl",
                "times_s": times,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "input_checksum": checksum,
                "threads": torch.get_num_threads(),
                "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
                "python": platform.python_version(),
                "executable": sys.executable,
                "torch": torch.__version__,
                "easyfsl": version("easyfsl"),
            }
        )
    )


if __name__ == "__main__":
    main()
