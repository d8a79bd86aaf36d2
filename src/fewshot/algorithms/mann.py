"""Memory-augmented neural network: Santoro, Bartunov, Botvinick, Wierstra & Lillicrap (2016). Meta-Learning with
Memory-Augmented Neural Networks. ICML. arXiv:1605.06065.

An LSTM controller with an external memory (:class:`~fewshot.models.sequence.MANN`: cosine-similarity reads,
least-recently-used writes) sees an episode as a sequence: at each step an image and the *previous* step's label,
and it must output the current image's label, so it can only be right about a class after it has seen one of its
labelled examples and stored the binding in memory. Meta-training follows the paper: every labelled example of
an episode (support and query) in one shuffled sequence (a stream seeded by the step), the cross-entropy at every
step. At test time the support set is read in the order given and each query is one more step after it, read
independently of the other queries. :func:`instance_accuracy` measures the paper's way: accuracy at the 1st, 2nd,
... presentation of a class within shuffled episodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import AlgorithmSpec, Params, call, check_range, full_precision, setting
from fewshot.algorithms.icl import ReadsSupport, check_ways, training_generator
from fewshot.models.sequence import MANN
from fewshot.tasks.episodes import Task


def shuffled_sequence(tasks: Sequence[Task], generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Every labelled example of each task (support, then query) in a random order per task.

    Returns:
        ``x (B, T, *f)``, ``y (B, T)`` and ``order (B, T)``: position ``t`` holds example ``order[:, t]`` of the
        concatenation.
    """
    x = torch.stack([torch.cat([t.support.x, t.query.x]) for t in tasks])
    y = torch.stack([torch.cat([t.support.y, t.query.y]) for t in tasks])
    b, n = y.shape
    order = torch.rand(b, n, generator=generator).argsort(1).to(y.device)
    return x[torch.arange(b, device=y.device).unsqueeze(1), order], y.gather(1, order), order


@dataclass(frozen=True)
class MANNLearner(ReadsSupport):
    """The MANN in meta-training (every step of the shuffled episode scored) and at test (support, then queries)."""

    def batch_loss(
        self, model: nn.Module, params: Params, tasks: Sequence[Task]
    ) -> tuple[Tensor, list[Tensor]]:
        """Mean cross-entropy over every step of the tasks' shuffled sequences; the outputs returned are those at
        the query examples' positions, in the query's order."""
        ways = tasks[0].ways
        check_ways(model, ways)
        x, y, order = shuffled_sequence(tasks, training_generator(self.step or 0, 3))
        logits = full_precision(call(model, params, x, y=y)[..., :ways])  # (B, T, ways)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        back = order.argsort(1)  # position of each example in the sequence
        n = len(tasks[0].support.y)
        queries = logits.gather(1, back[:, n:, None].expand(-1, -1, ways))  # (B, m, ways)
        return loss, list(queries)


@torch.no_grad()
def instance_accuracy(
    model: nn.Module,
    params: Params,
    tasks: Iterable[Task],
    seed: int = 0,
    instances: Sequence[int] = (1, 2, 3, 5, 10),
) -> dict[int, tuple[float, float, int]]:
    """Santoro et al.'s measure: accuracy at the ``i``-th presentation of a class, over shuffled episodes.

    Each task's labelled examples (support and query) are shuffled (task ``j`` by the stream ``(seed, j)``) and read
    as one sequence, each image given the previous label; the prediction at every step is scored, grouped by how
    many times its class has appeared so far (1 = the first, unlabelled-until-now sight of that class).

    Returns:
        instance -> ``(mean accuracy, 95% CI half-width over episodes, episodes counted)``.
    """
    hits: dict[int, list[float]] = {i: [] for i in instances}
    for j, task in enumerate(tasks):
        x, y, _ = shuffled_sequence([task], torch.Generator().manual_seed(1_000_003 * seed + j))
        predicted = call(model, params, x, y=y)[0, :, : task.ways].argmax(-1)  # (T,)
        seen = F.one_hot(y[0], task.ways).cumsum(0).gather(1, y[0].unsqueeze(1)).squeeze(1)  # (T,): 1, 2, ...
        for i in instances:
            at = seen == i
            if at.any():  # the episode's accuracy at the i-th presentations it has
                hits[i].append((predicted[at] == y[0][at]).float().mean().item())
    out = {}
    for i, values in hits.items():
        v = np.asarray(values)
        ci = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        out[i] = (float(v.mean()) if len(v) else float("nan"), float(ci), len(v))
    return out


@dataclass(frozen=True)
class MANNSettings:
    controller: int = setting(200, "LSTM controller units (200 in Santoro et al.)")
    slots: int = setting(128, "memory slots (128)")
    slot_size: int = setting(40, "numbers per memory slot (40)")
    reads: int = setting(4, "read heads (4)")
    gamma: float = setting(0.95, "usage decay per step (0.95)")
    side: int = setting(
        20,
        "images are resized to side x side pixels before they enter the controller (20 in "
        "Santoro et al.); 0 keeps their own size",
    )

    def __post_init__(self) -> None:
        check_range(
            self, {"controller": 1, "slots": 2, "slot_size": 1, "reads": 1, "side": 0}, positive=("gamma",)
        )
        if self.reads >= self.slots:
            raise ValueError(f"reads must be fewer than slots, got {self.reads} and {self.slots}")


def _model(request: Any, s: MANNSettings) -> nn.Module:
    if request.data != "images":
        return MANN(request.in_features, request.ways, s.controller, s.slots, s.slot_size, s.reads, s.gamma)
    side = s.side or request.image_size
    return MANN(
        request.in_features * side**2,
        request.ways,
        s.controller,
        s.slots,
        s.slot_size,
        s.reads,
        s.gamma,
        side,
    )


SPEC = AlgorithmSpec(
    name="mann",
    summary="memory-augmented network: LSTM with least-recently-used memory, fed the previous label "
    "(Santoro et al. 2016)",
    build=lambda s, testing: MANNLearner(),
    model=_model,
    settings=MANNSettings,
    reads_ways=True,
    routes=("autograd",),
    takes_backbone=False,  # reads raw pixels, as Santoro et al.
)
