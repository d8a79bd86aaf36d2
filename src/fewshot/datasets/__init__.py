"""Data sets as in-memory :class:`ClassDataset` objects, and the file plumbing behind them."""

from fewshot.datasets.base import ClassDataset
from fewshot.datasets.omniglot import (
    OmniglotImages,
    download_omniglot,
    load_omniglot_images,
    omniglot,
    vinyals_classes,
)
from fewshot.datasets.storage import DatasetError

__all__ = [
    "ClassDataset",
    "DatasetError",
    "OmniglotImages",
    "download_omniglot",
    "load_omniglot_images",
    "omniglot",
    "vinyals_classes",
]
