"""Plain ``nn.Module`` backbones; any other module works with every algorithm too."""

from fewshot.models.conv4 import Conv4

__all__ = ["Conv4"]
