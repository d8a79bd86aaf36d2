"""Prototypical Networks.

Snell, Swersky & Zemel (2017). Prototypical Networks for Few-shot Learning. NeurIPS. arXiv:1703.05175.

A class is represented by the mean of its embedded support examples (its *prototype*); a query is classified
by a softmax over negative squared Euclidean distances to the prototypes. Nothing is adapted by gradient: the
embedding network is meta-trained so that this nearest-mean rule works on classes it has never seen.

``metric_scale`` multiplies the distances (Oreshkin, Rodriguez & Lacoste 2018, TADAM, arXiv:1805.10123, section
2.1: metric scaling): with embeddings of unit length, as sentence encoders give, squared distances lie in [0, 4]
and the softmax over them is nearly flat, so the loss is spent on stretching the embedding; a scale of about 10
lets it shape the embedding instead (BENCHMARKS.md, few-shot text).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import (
    Algorithm,
    AlgorithmSpec,
    Params,
    call,
    check_range,
    full_precision,
    group_sum,
    setting,
)
from fewshot.models import standard_network
from fewshot.tasks.episodes import Split, Task


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means of embedded support examples.

    Args:
        embeddings: ``(n, d)`` embedded support set.
        labels: ``(n,)`` class ids in ``0..ways-1``; every class must occur.
        ways: number of classes.

    Returns:
        ``(ways, d)``: row k is the mean embedding of class k.
    """
    counts = group_sum(labels.new_ones(labels.shape, dtype=embeddings.dtype), labels, ways)  # (ways,)
    return group_sum(embeddings, labels, ways) / counts.unsqueeze(-1)


def squared_euclidean(x: Tensor, centers: Tensor) -> Tensor:
    """``||x_i - c_k||^2`` for every pair, via ``|x|^2 - 2 x.c + |c|^2`` (one matmul) after centring.

    The expansion subtracts numbers of size ``|x|^2`` to get one of size ``|x - c|^2``: with large, close
    embeddings (``|z| ~ 80``, classes ~0.3 apart) that lost 1-5% in float32. Distances do not change when
    both sides are shifted by one vector, so both are first centred on the mean of the centers; the
    terms are then of the size of the distances themselves (relative error ~1e-6, tested). This costs two
    subtractions, against the ``(n, k, d)`` intermediate of direct differences (~115 MB for 300 queries and
    60 prototypes of 1600 features). Rounding can leave a tiny negative value: clamped at 0.

    Computed in at least float32 even under bfloat16 autocast: bf16's 8-bit mantissa would swamp the
    differences between classes.

    Args:
        x: ``(n, d)`` embedded queries.
        centers: ``(k, d)`` prototypes.

    Returns:
        ``(n, k)`` squared distances, float32 (or float64 for float64 inputs).
    """
    kind = x.device.type
    # autocast off for x's kind of device; the meta device (shapes only) has none to turn off
    available = torch.amp.is_autocast_available(kind)
    with torch.autocast(kind, enabled=False) if available else contextlib.nullcontext():
        x, centers = full_precision(x), full_precision(centers)
        origin = centers.mean(0)  # (d,): any common shift works; this one sits among the classes
        x, centers = x - origin, centers - origin
        d2 = (x * x).sum(-1, keepdim=True) - 2.0 * x @ centers.T + (centers * centers).sum(-1)  # (n, k)
        return d2.clamp_min(0.0)


@dataclass(frozen=True)
class ProtoNet(Algorithm):
    """Prototypical Networks (Snell et al. 2017): nearest class mean in a learned embedding.

    The state returned by :meth:`adapt` is the ``(ways, d)`` prototype matrix; :meth:`predict` returns logits
    ``-||f(x) - c_k||^2``. With squared Euclidean distance this is a linear classifier on ``f(x)`` with weights
    ``2 c_k`` and biases ``-||c_k||^2`` (the ``||f(x)||^2`` term is the same for every class).

    Example:
        >>> algo, model = ProtoNet(), Conv4()
        >>> loss, logits = task_loss(algo, model, parameters_of(model), task)
    """

    scale: float = 1.0  # logits are -scale * squared distance (1: Snell et al.)

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Tensor:
        # under bf16 autocast the embedding is bf16; means and distances are taken in float32
        return prototypes(full_precision(call(model, params, support.x)), support.y, ways)  # (ways, d)

    def predict(self, model: nn.Module, params: Params, state: Tensor, x: Tensor) -> Tensor:
        return -self.scale * squared_euclidean(full_precision(call(model, params, x)), state)  # (n, ways)

    def query_logits(self, model: nn.Module, params: Params, task: Task) -> Tensor:
        """Query logits with support and query embedded in one forward pass, as in the paper's code.

        One pass is faster, and in training mode BatchNorm then normalises with the statistics of the whole
        episode; in evaluation mode (running statistics) it equals ``predict(adapt(...))`` exactly.
        """
        n_support = task.support.x.shape[0]
        z = full_precision(
            call(model, params, torch.cat([task.support.x, task.query.x]))
        )  # (n_support + n_query, d)
        centers = prototypes(z[:n_support], task.support.y, task.ways)  # (ways, d)
        return -self.scale * squared_euclidean(z[n_support:], centers)  # (n_query, ways)


@dataclass(frozen=True)
class ProtoNetSettings:
    metric_scale: float = setting(1.0, "logits are -metric_scale x squared distance (1: Snell et al.; TADAM's metric "
                                  "scaling, Oreshkin et al. 2018; about 10 for unit-length sentence embeddings)")  # fmt: skip

    def __post_init__(self) -> None:
        check_range(self, positive=("metric_scale",))


SPEC = AlgorithmSpec(
    name="protonet",
    summary="Prototypical Networks: nearest class mean in a learned embedding (Snell et al. 2017)",
    build=lambda settings, testing: ProtoNet(scale=settings.metric_scale),
    model=lambda request, settings: standard_network(request),
    settings=ProtoNetSettings,
)
