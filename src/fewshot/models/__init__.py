"""Plain ``nn.Module`` backbones; any other module works with every algorithm too."""

from fewshot.models.batchnorm import BatchNorm2d
from fewshot.models.conv4 import Conv4
from fewshot.models.mlp import MLP

__all__ = ["MLP", "BatchNorm2d", "Conv4"]
