"""The networks of the literature, chosen by the kind of data: what an algorithm builds by default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from fewshot.models.conv4 import Conv4
from fewshot.models.mlp import MLP, ResidualMLP
from fewshot.models.resnet12 import MIN_SIDE, ResNet12, resnet12_widths

BACKBONES = ("conv4", "resnet12")  # the image networks standard_network builds


@dataclass(frozen=True)
class ModelRequest:
    """What a run's network must fit: the kind of data and the run's size settings.

    Attributes:
        data: ``"images"`` ``(n, c, h, w)``, ``"vectors"`` ``(n, d)`` (tables) or ``"regression"`` (``(n, 1)``
            inputs and targets: the sinusoids).
        in_features: image channels or vector features.
        image_size: image side in pixels.
        hidden: width of the backbone (conv4 channels, MLP hidden units, the first of ResNet-12's four block
            widths, which scale with it: 64 gives 64-160-320-640).
        ways: classes per training episode.
        classes: number of training classes (for a classifier over all of them), when known.
        shots: support examples per class in a training episode (SNAIL sizes its network by the sequence length).
        actions: discrete actions of a policy (a bandit's arms); 0 for the other kinds of data.
        backbone: the image network, ``"conv4"`` or ``"resnet12"`` (:class:`~fewshot.models.ResNet12`), or the
            vector network, ``"mlp"`` or ``"residual-mlp"`` (:class:`~fewshot.models.mlp.ResidualMLP`); ``"auto"``:
            conv4, mlp.
        dropblock: ResNet-12's DropBlock rate in its last two blocks (0: off).
        encoder, finetune_layers, tokens: text whose encoder's last ``finetune_layers`` layers are trained: the
            vectors are :class:`~fewshot.encoders.TokenStates` of ``tokens`` word pieces, read by an
            :class:`~fewshot.encoders.EncoderTop` of ``encoder`` below the MLP.
    """

    data: str
    in_features: int = 1
    image_size: int = 28
    hidden: int = 64
    ways: int = 5
    classes: int | None = None
    shots: int = 1
    actions: int = 0
    backbone: str = "auto"
    dropblock: float = 0.0
    encoder: str = ""
    finetune_layers: int = 0
    tokens: int = 32


def embedding_features(request: ModelRequest) -> int:
    """The output size of :func:`standard_network` without a head: conv4's flattened ``hidden x (side // 16)^2``
    or ResNet-12's pooled ``10 x hidden`` (640) for images, the MLP's ``hidden`` for vectors."""
    if request.data == "images" and request.backbone == "resnet12":
        return resnet12_widths(request.hidden)[-1]
    if request.data == "vectors" and request.backbone == "residual-mlp":
        if request.finetune_layers:  # the sentence embedding's width, from the encoder's transformer config
            import json

            from fewshot.encoders import model_folder

            return int(json.loads((model_folder(request.encoder) / "config.json").read_text())["hidden_size"])
        return request.in_features
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
    """The literature's network for the data: conv4 for images (or ResNet-12 with ``backbone="resnet12"``, its
    widths scaled by ``hidden``), an MLP with two hidden layers of ``hidden`` for vectors, the 1-40-40-1 MLP of
    Finn et al. (2017, section 5.1) for regression (``in_features`` inputs).

    Args:
        request: the data and sizes.
        out_features: a head with this many outputs (None: the embedding itself; regression always has 1).
        batch_statistics: BatchNorm normalises with the statistics of each batch and keeps no running ones
            (the transductive MAML setting, needed by per-task copies and ``vmap``).
        cosine_head: a cosine-similarity head (Baseline++).
        extra_inputs: inputs appended to each vector (CAVIA's context).
    """
    vector_networks = ("auto", "mlp", "residual-mlp")
    if request.data != "images" and (request.backbone not in vector_networks or request.dropblock):
        raise ValueError(f"the {request.backbone} backbone and DropBlock read images, not {request.data}")
    if request.data == "regression":
        return MLP(request.in_features + extra_inputs, (40, 40), 1)  # 1 input for sinusoids
    if request.data == "vectors":
        top = None
        if request.finetune_layers:
            if extra_inputs:
                raise ValueError(
                    "the encoder's layers take no extra inputs; fine-tune them with another algorithm"
                )
            from fewshot.encoders import EncoderTop

            top = EncoderTop(request.encoder, request.finetune_layers, request.tokens)
        h, n = request.hidden, (top.width if top is not None else request.in_features) + extra_inputs
        if request.backbone == "residual-mlp":  # one hidden layer of 4 x hidden: starts as the identity
            rest = ResidualMLP(n, (4 * h,), out_features, cosine_head=cosine_head)
        else:
            rest = MLP(n, (h, h), out_features, cosine_head=cosine_head)
        return rest if top is None else TextNetwork(top, rest)
    if request.backbone == "auto":
        request = dataclasses.replace(request, backbone="conv4")
    if request.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {request.backbone!r}; choose one of {list(BACKBONES)}")
    if extra_inputs:
        raise ValueError(
            f"{request.backbone} takes no extra inputs; give images without a context, or vectors"
        )
    if request.backbone == "resnet12":
        if request.image_size < MIN_SIDE:
            raise ValueError(
                f"image_size={request.image_size} is too small for ResNet-12's 4 pooling blocks; use at least "
                f"{MIN_SIDE}"
            )
        return ResNet12(
            request.in_features, out_features, track_running_stats=not batch_statistics, cosine_head=cosine_head,
            widths=resnet12_widths(request.hidden), drop_rate=request.dropblock,
        )  # fmt: skip
    if request.dropblock:
        raise ValueError("DropBlock is part of the resnet12 backbone; conv4 has none (drop dropblock)")
    return Conv4(
        request.in_features, request.hidden, out_features, track_running_stats=not batch_statistics,
        image_size=request.image_size, cosine_head=cosine_head,
    )  # fmt: skip


class TextNetwork(nn.Module):
    """The encoder's fine-tuned top layers (``top``, token states to a sentence embedding) under the network
    (``rest``, an MLP or residual MLP with the optional head); ``features`` as for every standard network."""

    def __init__(self, top: nn.Module, rest: nn.Module) -> None:
        super().__init__()
        self.top, self.rest = top, rest

    def forward(self, x, features: bool = False):
        return self.rest(self.top(x), features=features)
