"""Plain ``nn.Module`` backbones; any other module works with every algorithm too."""

from fewshot.models.batchnorm import BatchNorm2d
from fewshot.models.conv4 import Conv4
from fewshot.models.mlp import MLP
from fewshot.models.resnet12 import DropBlock, ResNet12
from fewshot.models.standard import ModelRequest, standard_network
from fewshot.models.utils import in_transform, running_stats_layers

__all__ = [
    "MLP", "BatchNorm2d", "Conv4", "DropBlock", "ModelRequest", "ResNet12", "in_transform", "running_stats_layers",
    "standard_network",
]  # fmt: skip
