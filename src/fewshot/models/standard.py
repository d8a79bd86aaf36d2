"""The networks of the literature, chosen by the kind of data: what an algorithm builds by default."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fewshot.models.conv4 import Conv4
from fewshot.models.mlp import MLP


@dataclass(frozen=True)
class ModelRequest:
    """What a run's network must fit: the kind of data and the run's size settings.

    Attributes:
        data: ``"images"`` ``(n, c, h, w)``, ``"vectors"`` ``(n, d)`` (tables) or ``"regression"`` (``(n, 1)``
            inputs and targets: the sinusoids).
        in_features: image channels or vector features.
        image_size: image side in pixels.
        hidden: width of the backbone (conv4 channels, MLP hidden units).
        ways: classes per training episode.
        classes: number of training classes (for a classifier over all of them), when known.
        shots: support examples per class in a training episode (SNAIL sizes its network by the sequence length).
        actions: discrete actions of a policy (a bandit's arms); 0 for the other kinds of data.
    """

    data: str
    in_features: int = 1
    image_size: int = 28
    hidden: int = 64
    ways: int = 5
    classes: int | None = None
    shots: int = 1
    actions: int = 0


def embedding_features(request: ModelRequest) -> int:
    """The output size of :func:`standard_network` without a head: conv4's flattened ``hidden x (side // 16)^2``
    for images, the MLP's ``hidden`` for vectors."""
    if request.data == "images":
        return request.hidden * (request.image_size // 16) ** 2
    return request.hidden


def standard_network(
    request: ModelRequest,
    out_features: int | None = None,
    *,
    batch_statistics: bool = False,
    cosine_head: bool = False,
    extra_inputs: int = 0,
) -> nn.Module:
    """The literature's network for the data: conv4 for images, an MLP with two hidden layers of ``hidden``
    for vectors, the 1-40-40-1 MLP of Finn et al. (2017, section 5.1) for regression (``in_features`` inputs).

    Args:
        request: the data and sizes.
        out_features: a head with this many outputs (None: the embedding itself; regression always has 1).
        batch_statistics: BatchNorm normalises with the statistics of each batch and keeps no running ones
            (the transductive MAML setting, needed by per-task copies and ``vmap``).
        cosine_head: a cosine-similarity head (Baseline++).
        extra_inputs: inputs appended to each vector (CAVIA's context).
    """
    if request.data == "regression":
        return MLP(request.in_features + extra_inputs, (40, 40), 1)  # 1 input for sinusoids
    if request.data == "vectors":
        h = request.hidden
        return MLP(request.in_features + extra_inputs, (h, h), out_features, cosine_head=cosine_head)
    if extra_inputs:
        raise ValueError("conv4 takes no extra inputs; give images without a context, or vectors")
    return Conv4(
        request.in_features, request.hidden, out_features, track_running_stats=not batch_statistics,
        image_size=request.image_size, cosine_head=cosine_head,
    )  # fmt: skip
