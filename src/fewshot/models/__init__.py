"""Plain ``nn.Module`` backbones; any other module works with every algorithm too."""

from fewshot.models.conv4 import Conv4
from fewshot.models.mlp import MLP

__all__ = ["MLP", "Conv4"]
