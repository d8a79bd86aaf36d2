"""Baselines every meta-learning claim is measured against.

* :class:`Scratch`: train the network on the support set alone, from its initial weights, every episode.
* :class:`FineTune`: Chen, Liu, Kira, Wang & Huang (2019). A Closer Look at Few-shot Classification. ICLR.
  arXiv:1904.04232. "Baseline" (a new linear head) and "Baseline++" (a cosine head) on a network pretrained by
  ordinary supervised learning on all meta-training classes (:func:`fewshot.train` with ``algorithm=baseline``
  or ``baselinepp``), optionally fine-tuning every layer.
* :class:`NearestNeighbour`: 1-nearest neighbour in pixel space or in an embedding.
* :func:`pretrain_jointly`: the "pretrained" regression baseline of Finn et al. (2017), figure 2.

All follow the adapt / predict protocol, so :func:`fewshot.evaluate.evaluate` and ``fewshot compare`` score
them on the same episodes as every meta-learner. Adaptation by gradient happens inside ``adapt`` with plain
autograd (``torch.enable_grad``), so evaluation can still wrap everything in ``no_grad``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import (
    Algorithm,
    AlgorithmSpec,
    ModelRequest,
    Params,
    call,
    check_range,
    class_scores,
    full_precision,
    group_sum,
    loss_fn,
    setting,
)
from fewshot.algorithms.protonet import squared_euclidean
from fewshot.models import standard_network
from fewshot.tasks.episodes import Split


def _check_steps(steps: int, lr: float) -> None:
    if steps < 0:
        raise ValueError(f"steps must be 0 or more, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr}")


@dataclass(frozen=True)
class Scratch(Algorithm):
    """Train the whole network on the support set only: the small-data learner without any meta-learning.

    Every episode starts again from the given weights (the model's initialisation) and takes ``steps`` full-batch
    Adam steps on the support cross-entropy. It fits the support set (up to 100%) and generalises far less to
    the query set; ``evaluate(..., support=True)`` reports both. The model needs a ``ways``-output head and
    batch-statistics BatchNorm (``Conv4(out_features=ways, track_running_stats=False)``).
    """

    steps: int = 100
    lr: float = 1e-2

    def __post_init__(self) -> None:
        _check_steps(self.steps, self.lr)

    @property
    def adaptation_steps(self) -> int:
        return self.steps

    def with_adaptation_steps(self, steps: int) -> Scratch:
        return replace(self, steps=steps)

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Params:
        fast = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        opt = torch.optim.Adam(fast.values(), lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                opt.zero_grad()
                loss_fn(call(model, fast, support.x), support.y, ways).backward()
                opt.step()
        return {k: v.detach() for k, v in fast.items()}

    def predict(self, model: nn.Module, params: Params, state: Params, x: Tensor) -> Tensor:
        return call(model, state, x)


def _init_head(
    ways: int, dim: int, seed: int, dtype: torch.dtype, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Weights ``(ways, dim)`` as nn.Linear initialises them (uniform in +-1/sqrt(dim)), from a generator seeded
    with ``seed``; biases ``(ways,)`` zero. Both on ``device``.

    The draw is made on the CPU and copied: the same head on every device (a CUDA generator would give other
    numbers, and float64 is not on every device).
    """
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(dim)
    weight = (torch.rand(ways, dim, generator=g, dtype=torch.float64) * 2 - 1) * bound
    return weight.to(device=device, dtype=dtype), torch.zeros(ways, dtype=dtype, device=device)


@dataclass(frozen=True)
class FineTune(Algorithm):
    """Baseline / Baseline++ (Chen et al. 2019): a new classifier head trained on the support set.

    The backbone's embedding (``model(x, features=True)`` for a :class:`~fewshot.models.Conv4`; any model
    without a ``features`` argument is used as the embedding itself) feeds a fresh ``ways``-way head, trained
    for ``steps`` full-batch Adam steps on the support cross-entropy. Chen et al. use SGD with momentum over
    mini-batches of 4 for 100 epochs; with at most a few dozen support examples one full batch per step is
    the same problem, solved deterministically.

    Args:
        head: ``"linear"`` (Baseline) or ``"cosine"`` (Baseline++: ``scale * cos(z, w_k)``).
        all_layers: fine-tune the backbone too (BatchNorm as the model is: running statistics in ``eval()``).
        steps, lr: the head's (and backbone's) training.
        scale: temperature of the cosine head.
        seed: the head's initialisation (the same in every episode).
    """

    head: str = "linear"
    steps: int = 100
    lr: float = 1e-2
    all_layers: bool = False
    scale: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in ("linear", "cosine"):
            raise ValueError(f"head must be 'linear' or 'cosine', got {self.head!r}")
        _check_steps(self.steps, self.lr)

    @property
    def adaptation_steps(self) -> int:
        return self.steps

    def with_adaptation_steps(self, steps: int) -> FineTune:
        return replace(self, steps=steps)

    def logits(self, z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if self.head == "cosine":
            return self.scale * F.normalize(z, dim=-1) @ F.normalize(weight, dim=-1).T
        return z @ weight.T + bias

    def adapt(
        self, model: nn.Module, params: Params, support: Split, ways: int
    ) -> tuple[Params, Tensor, Tensor]:
        backbone = {k: v.detach().clone().requires_grad_(self.all_layers) for k, v in params.items()}
        with torch.no_grad():
            z = full_precision(embed(model, backbone, support.x))
        head = _init_head(ways, z.shape[-1], self.seed, z.dtype, z.device)
        weight, bias = (t.requires_grad_() for t in head)
        trainable = [weight, bias] + (list(backbone.values()) if self.all_layers else [])
        opt = torch.optim.Adam(trainable, lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                if self.all_layers:
                    z = full_precision(embed(model, backbone, support.x))
                opt.zero_grad()
                F.cross_entropy(self.logits(z, weight, bias), support.y).backward()
                opt.step()
        return {k: v.detach() for k, v in backbone.items()}, weight.detach(), bias.detach()

    def predict(
        self, model: nn.Module, params: Params, state: tuple[Params, Tensor, Tensor], x: Tensor
    ) -> Tensor:
        backbone, weight, bias = state
        return self.logits(full_precision(embed(model, backbone, x)), weight, bias)


def embed(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """The model's embedding, flattened to ``(n, d)``: ``model(x, features=True)`` if it takes that argument
    (a :class:`~fewshot.models.Conv4` with a head), else ``model(x)`` (feature maps are flattened)."""
    try:
        z = call(model, params, x, features=True)
    except TypeError as e:
        if "features" not in str(e):
            raise
        z = call(model, params, x)
    return z.flatten(1)


@dataclass(frozen=True)
class NearestMean(Algorithm):
    """Nearest class mean in the model's embedding (:func:`embed`): ProtoNet's rule (Snell et al. 2017) on any
    trained network, with no meta-training. Logits are negative squared Euclidean distances to the class means."""

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Tensor:
        z = full_precision(embed(model, params, support.x))
        counts = group_sum(torch.ones_like(z[:, :1]), support.y, ways)
        return group_sum(z, support.y, ways) / counts  # (ways, d)

    def predict(self, model: nn.Module, params: Params, state: Tensor, x: Tensor) -> Tensor:
        return -squared_euclidean(full_precision(embed(model, params, x)), state)  # centred: exact in float32


@dataclass(frozen=True)
class NearestNeighbour(Algorithm):
    """1-nearest neighbour: a query takes the class of its closest support example.

    Args:
        space: ``"pixel"`` (the raw inputs, flattened; the model is not used) or ``"embedding"`` (the model's
            embedding, see :func:`embed`).
        metric: ``"euclidean"`` or ``"cosine"``.

    Logits are, per class, the negative distance (or the cosine similarity) of the nearest example of that class.
    """

    space: str = "pixel"
    metric: str = "euclidean"

    def __post_init__(self) -> None:
        if self.space not in ("pixel", "embedding"):
            raise ValueError(f"space must be 'pixel' or 'embedding', got {self.space!r}")
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {self.metric!r}")

    def features(self, model: nn.Module, params: Params, x: Tensor) -> Tensor:
        z = x.flatten(1) if self.space == "pixel" else embed(model, params, x)
        return full_precision(z).float() if z.dtype != torch.float64 else z

    def adapt(
        self, model: nn.Module, params: Params, support: Split, ways: int
    ) -> tuple[Tensor, Tensor, int]:
        return self.features(model, params, support.x), support.y, ways

    def predict(
        self, model: nn.Module, params: Params, state: tuple[Tensor, Tensor, int], x: Tensor
    ) -> Tensor:
        z, labels, ways = state
        q = self.features(model, params, x)
        if self.metric == "cosine":
            sim = F.normalize(q, dim=-1) @ F.normalize(z, dim=-1).T
        else:
            sim = -torch.cdist(q, z)
        return class_scores(sim, labels, ways)


def pretrain_jointly(
    model: nn.Module, family, steps: int, tasks_per_step: int = 25, outer_lr: float = 1e-3
) -> nn.Module:
    """Fits ``model`` to the points of all training tasks at once, as one regression problem.

    The "pretrained" comparison of Finn et al. 2017 (figure 2): the same data a meta-learner sees, without the
    learning-to-adapt objective. Step ``s`` uses tasks ``s * tasks_per_step ...`` of ``family`` (e.g. a
    :class:`~fewshot.tasks.regression.Sinusoid`), support and query points pooled. Adam, ``outer_lr``. The
    points are moved to the device of the model's parameters.
    """
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), outer_lr)
    for step in range(steps):
        tasks = family.batch(range(tasks_per_step * step, tasks_per_step * (step + 1)))
        x = torch.cat([tasks.support.x, tasks.query.x], 1).flatten(0, 1)  # (tasks * points, features)
        y = torch.cat([tasks.support.y, tasks.query.y], 1).flatten(0, 1)
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss_fn(model(x), y, 0).backward()
        opt.step()
    return model


@dataclass(frozen=True)
class FineTuneSettings:
    finetune_steps: int = setting(100, "full-batch Adam steps on each test support set")
    finetune_lr: float = setting(1e-2, "learning rate of those steps")

    def __post_init__(self) -> None:
        check_range(self, {"finetune_steps": 1}, ("finetune_lr",))


@dataclass(frozen=True)
class PretrainSettings(FineTuneSettings):
    batch_size: int = setting(64, "images per step of supervised pretraining over all training classes")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, {"batch_size": 1})


def _pretrained(cosine: bool):
    def build(request: ModelRequest, settings: PretrainSettings) -> nn.Module:
        if request.classes is None:
            raise ValueError("a baseline network needs the number of training classes (the trainer sets it)")
        return standard_network(request, request.classes, cosine_head=cosine)

    return build


BASELINE_SPEC = AlgorithmSpec(
    name="baseline",
    summary="Baseline: supervised pretraining on all training classes, a new linear head per task (Chen et al. 2019)",
    build=lambda s, testing: FineTune("linear", s.finetune_steps, s.finetune_lr),
    model=_pretrained(False), settings=PretrainSettings, training="batches", routes=("autograd",),
)  # fmt: skip
BASELINEPP_SPEC = dataclasses.replace(
    BASELINE_SPEC, name="baselinepp", summary="Baseline++: as baseline, with a cosine classifier (Chen et al. 2019)",
    build=lambda s, testing: FineTune("cosine", s.finetune_steps, s.finetune_lr), model=_pretrained(True),
)  # fmt: skip
SCRATCH_SPEC = AlgorithmSpec(
    name="scratch",
    summary="no meta-learning: the network trained from its initial weights on each support set alone",
    build=lambda s, testing: Scratch(s.finetune_steps, s.finetune_lr),
    model=lambda request, s: standard_network(request, request.ways, batch_statistics=True),
    settings=FineTuneSettings, training="none", fixed_ways=True, routes=("autograd",),
)  # fmt: skip
