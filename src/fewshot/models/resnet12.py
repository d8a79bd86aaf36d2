"""ResNet-12, the residual backbone of the few-shot literature since 2018, with optional DropBlock.

Oreshkin, Rodriguez & Lacoste (2018). TADAM: Task dependent adaptive metric for improved few-shot learning.
NeurIPS. arXiv:1805.10123 (section 3.4: the architecture).
Lee, Maji, Ravichandran & Soatto (2019). Meta-Learning with Differentiable Convex Optimization (MetaOptNet).
CVPR. arXiv:1904.03758 (the 64-160-320-640 widths and DropBlock used by most later work).
Ghiasi, Lin & Le (2018). DropBlock: A regularization method for convolutional networks. NeurIPS.
arXiv:1810.12890.

Four residual blocks, each: three [3x3 conv (no bias), BatchNorm, LeakyReLU(0.1)] with the residual (a 1x1
conv and BatchNorm shortcut) added before the third activation, then 2x2 max-pooling. On 84x84 miniImageNet
the spatial size goes 84 -> 42 -> 21 -> 10 -> 5; on 32x32 (CIFAR-FS) 32 -> 16 -> 8 -> 4 -> 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.models.batchnorm import BatchNorm2d
from fewshot.models.conv4 import CosineLinear

WIDTHS = (64, 160, 320, 640)  # Lee et al. 2019; TADAM's were 64-128-256-512
SLOPE = 0.1  # LeakyReLU negative slope, Lee et al. 2019 (TADAM used the plain ReLU)
MIN_SIDE = 16  # four 2x2 poolings: 16 -> 8 -> 4 -> 2 -> 1


def resnet12_widths(hidden: int = 64) -> tuple[int, int, int, int]:
    """Block widths scaled from the first: ``(h, 2.5 h, 5 h, 10 h)``, rounded up; 64 gives 64-160-320-640."""
    return hidden, (5 * hidden + 1) // 2, 5 * hidden, 10 * hidden


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): zeroes random ``block_size x block_size`` squares of every feature map.

    In training, block corners are drawn per example and channel with probability ``gamma`` (eq. 1 of the
    paper, so that about ``drop_rate`` of the units fall in a dropped block), each grown into a square that
    lies inside the map, and the kept units are scaled by ``(all units) / (kept units)`` so the mean activation
    is unchanged. In ``eval()`` mode it is the identity. Squares are clipped to the map (side
    ``min(block_size, h, w)``), so a map smaller than the block is dropped whole with probability ``drop_rate``.

    The draws come from torch's global random generator, as ``nn.Dropout``'s do (``torch.manual_seed`` makes
    them repeatable); ``torch.func.vmap`` then needs ``randomness="different"`` or ``"same"``.

    Args:
        drop_rate: fraction of units to drop, ``1 - keep_prob`` in the paper (0.1 in Lee et al. 2019).
        block_size: side of a dropped square (5 in Lee et al. 2019).
    """

    def __init__(self, drop_rate: float, block_size: int = 5) -> None:
        super().__init__()
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be at least 0 and below 1, got {drop_rate}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(n, c, h, w)`` with blocks zeroed and the rest rescaled (training), or ``x`` itself."""
        if not self.training or self.drop_rate == 0:
            return x
        h, w = x.shape[-2:]
        b = min(self.block_size, h, w)
        # eq. 1 of Ghiasi et al.: corners only where a whole block fits, (h - b + 1) x (w - b + 1) places
        gamma = self.drop_rate / b**2 * (h * w) / ((h - b + 1) * (w - b + 1))
        corners = torch.bernoulli(
            x.new_full((*x.shape[:-2], h - b + 1, w - b + 1), gamma, dtype=torch.float32)
        )
        # a corner at (i, j) covers rows i..i+b-1, columns j..j+b-1: max-pooling the padded corners grows it
        dropped = F.max_pool2d(F.pad(corners, (b - 1, b - 1, b - 1, b - 1)), b, stride=1)  # (n, c, h, w)
        keep = 1 - dropped
        scale = keep.numel() / keep.sum().clamp_min(1.0)  # Ghiasi et al.: count(M) / count_ones(M)
        return x * (keep * scale).to(x.dtype)  # x first: the product keeps x's memory format


class ResidualBlock(nn.Module):
    """One ResNet-12 block: three 3x3 conv + BatchNorm (+ LeakyReLU), a 1x1 conv + BatchNorm shortcut added
    before the last activation, 2x2 max-pooling, then DropBlock when ``drop_rate > 0``. Halves height and width.

    LeakyReLU is increasing, so ``act(maxpool(x)) == maxpool(act(x))``: pooling first applies the last
    activation (and its backward pass) to 4x fewer elements, with the same values (as conv4 does with its ReLU).
    """

    def __init__(
        self, in_channels: int, out_channels: int, track_running_stats: bool, drop_rate: float = 0.0,
        block_size: int = 5,
    ) -> None:  # fmt: skip
        super().__init__()
        t = track_running_stats
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, padding=1, bias=False
        )  # BatchNorm follows: no bias
        self.bn1 = BatchNorm2d(out_channels, track_running_stats=t)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels, track_running_stats=t)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = BatchNorm2d(out_channels, track_running_stats=t)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            BatchNorm2d(out_channels, track_running_stats=t),
        )
        self.dropblock = DropBlock(drop_rate, block_size) if drop_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), SLOPE)
        out = F.leaky_relu(self.bn2(self.conv2(out)), SLOPE)
        out = self.bn3(self.conv3(out)) + self.shortcut(x)  # (n, out_channels, h, w)
        out = F.leaky_relu(F.max_pool2d(out, 2), SLOPE)  # (n, out_channels, h // 2, w // 2)
        return self.dropblock(out)


class ResNet12(nn.Module):
    """ResNet-12 embedding network (Oreshkin et al. 2018; Lee et al. 2019), optionally with a classifier head.

    The embedding is the global average of the last feature map: ``widths[-1]`` (640) features for any image
    at least 16 pixels a side. MetaOptNet flattened its 640 x 5 x 5 map at 84 pixels instead (16,000 features);
    averaging is what most later work does (e.g. Tian et al. 2020, Chen et al. 2021), and lets one network read
    any size. Weights are initialised as in Lee et al.'s code (Kaiming normal, fan-out, for LeakyReLU).

    Works in any memory format and under ``torch.autocast("cpu", dtype=torch.bfloat16)``, like :class:`Conv4`.
    With ``track_running_stats=False`` every BatchNorm normalises with the statistics of the batch it is given
    (the transductive MAML setting), which ``torch.func.vmap`` over tasks needs; with DropBlock such a vmap also
    needs ``randomness="different"`` (the package's MAML routes refuse random operations: use the loop route).

    Args:
        in_channels: image channels (3 for colour images).
        out_features: if given, a linear head maps the embedding to this many logits (MAML-style classifiers);
            if None the model returns the embedding (ProtoNet-style metric learners).
        track_running_stats: BatchNorm mode, as in :class:`Conv4`: True keeps running statistics for
            ``eval()``, False normalises every batch with its own statistics.
        cosine_head: the head is a :class:`CosineLinear` (Baseline++) instead of ``nn.Linear``.
        widths: channels of the four blocks (:func:`resnet12_widths` scales the standard ones).
        drop_rate: DropBlock rate in the last two blocks (0: off; 0.1 in Lee et al. 2019). Lee et al. also
            ramp the rate up over training and apply plain dropout at the same rate in the first two blocks;
            neither is done here.
        block_size: side of a DropBlock square (5 in Lee et al. 2019).

    Shapes:
        input ``(n, in_channels, h, w)``, ``h, w >= 16``; output ``(n, widths[-1])`` or ``(n, out_features)``.

    Example:
        >>> ResNet12()(torch.zeros(2, 3, 84, 84)).shape
        torch.Size([2, 640])
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_features: int | None = None,
        track_running_stats: bool = True,
        cosine_head: bool = False,
        widths: tuple[int, ...] = WIDTHS,
        drop_rate: float = 0.0,
        block_size: int = 5,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNet-12 has four blocks; give four widths, got {tuple(widths)}")
        channels = (in_channels, *widths)
        self.encoder = nn.Sequential(*(
            ResidualBlock(channels[i], channels[i + 1], track_running_stats, drop_rate if i >= 2 else 0.0,
                          block_size)
            for i in range(4)
        ))  # fmt: skip
        self.embedding_dim = widths[-1]
        head = CosineLinear if cosine_head else nn.Linear
        self.head = head(self.embedding_dim, out_features) if out_features else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        """Logits ``(n, out_features)``, or the embedding ``(n, embedding_dim)`` if ``features`` or no head."""
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(
                f"ResNet-12 pools four times and needs images of at least {MIN_SIDE}x{MIN_SIDE}, got "
                f"{tuple(x.shape[-2:])}; use a larger --image-size or the conv4 backbone"
            )
        z = self.encoder(x).mean((-2, -1))  # (n, widths[-1]): global average pooling
        return self.head(z) if self.head is not None and not features else z


__all__ = ["DropBlock", "ResNet12", "ResidualBlock", "resnet12_widths"]
