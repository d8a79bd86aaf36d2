"""The four-block convolutional backbone used across the few-shot literature.

Vinyals et al. 2016 (Matching Networks), Snell et al. 2017 (Prototypical Networks) and Finn et al. 2017 (MAML)
all use 4 x [3x3 conv with ``hidden`` channels, BatchNorm, ReLU, 2x2 max-pool]. On 28x28 Omniglot the spatial
size goes 28 -> 14 -> 7 -> 3 -> 1, so the embedding has ``hidden`` features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.models.batchnorm import BatchNorm2d


def conv_block(in_channels: int, out_channels: int, track_running_stats: bool) -> nn.Sequential:
    """3x3 conv (padding 1) -> BatchNorm -> 2x2 max-pool -> ReLU; halves height and width (floor).

    The papers write ReLU before the pool. ReLU is monotonic, so ``relu(maxpool(x)) == maxpool(relu(x))``
    exactly (values and gradients); pooling first applies ReLU, and its backward pass, to 4x fewer elements.
    It made a 60-way ProtoNet training episode on a 2-core CPU about 20% faster (BENCHMARKS.md).

    The BatchNorm is :class:`fewshot.models.batchnorm.BatchNorm2d`: ``nn.BatchNorm2d`` with the same values and
    derivatives, whose second derivative (second-order MAML) is computed in fewer operations.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )


class Conv4(nn.Module):
    """conv4 embedding network, optionally with a linear classifier head.

    Works in any memory format; ``model.to(memory_format=torch.channels_last)`` with channels-last inputs is
    about 1.5x faster on CPU, and ``torch.autocast("cpu", dtype=torch.bfloat16)`` faster again.

    Args:
        in_channels: image channels (1 for Omniglot, 3 for colour images).
        hidden: channels of every block (64 in all three papers above).
        out_features: if given, a linear head maps the flattened embedding to this many logits (MAML-style
            classifiers); if None the model returns the embedding (ProtoNet-style metric learners).
        track_running_stats: BatchNorm mode. True (default): running statistics are kept and used in
            ``eval()`` mode, the usual setting for metric learners. False: every forward pass normalises with the
            statistics of the batch it is given (the transductive MAML setting), which is what
            ``torch.func.vmap`` over tasks needs.
        cosine_head: the head is a :class:`CosineLinear` (Baseline++) instead of ``nn.Linear``.

    Shapes:
        input ``(n, in_channels, h, w)``; output ``(n, hidden * (h // 16) * (w // 16))`` or ``(n, out_features)``.

    Example:
        >>> Conv4()(torch.zeros(10, 1, 28, 28)).shape
        torch.Size([10, 64])
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_features: int | None = None,
        track_running_stats: bool = True,
        image_size: int = 28,
        cosine_head: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            conv_block(in_channels, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
        )
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for 4 pooling blocks; use at least 16")
        self.embedding_dim = hidden * side * side
        head = CosineLinear if cosine_head else nn.Linear
        self.head = head(self.embedding_dim, out_features) if out_features else None

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        """Logits ``(n, out_features)``, or the embedding ``(n, embedding_dim)`` if ``features`` or headless."""
        z = self.encoder(x).flatten(1)  # (n, hidden * side * side)
        return self.head(z) if self.head is not None and not features else z


class CosineLinear(nn.Module):
    """Cosine-similarity classifier: ``scale * cos(z, w_k)`` for each class k (Baseline++ of Chen et al. 2019).

    Normalising both the features and the class weights makes the logits depend on direction only, which
    reduces intra-class variation (Chen et al., section 3.2). ``scale`` sets the softmax temperature.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation
        self.scale = scale

    def forward(self, z: Tensor) -> Tensor:
        return self.scale * F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).T  # (n, out_features)
