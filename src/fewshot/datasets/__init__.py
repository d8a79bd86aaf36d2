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
    "load_split",
    "load_omniglot_images",
    "omniglot",
    "vinyals_classes",
]


def load_split(config, split: str):
    """The data of one split of a run's configuration (a :class:`~fewshot.config.TrainConfig`): a
    :class:`ClassDataset` of images or table rows, or a regression task family for sinusoids; the training split
    with its rotated classes added when ``config.rotations``."""
    data = _load_split(config, split)
    if getattr(config, "rotations", False) and split == config.train_split:
        data = data.with_rotations()
    return data


def _load_split(config, split: str):
    from fewshot.config import IMAGESET_NAMES

    if config.dataset in IMAGESET_NAMES:
        from fewshot.datasets.imagesets import load_imageset

        return load_imageset(config.dataset, config.data_root, split, config.image_size)
    if config.dataset == "text":
        from fewshot.datasets.text import text_dataset

        return text_dataset(config.data_root, split, config.text_column, config.label_column,
                            (config.val_fraction, config.test_fraction), config.split_seed, config.encoder,
                            config.split_lists, finetune_layers=config.finetune_layers,
                            max_tokens=config.max_tokens)  # fmt: skip
    if config.dataset in ("folder", "table"):
        from fewshot.datasets.folder import image_folder
        from fewshot.datasets.table import table_dataset

        fractions = (config.val_fraction, config.test_fraction)
        if config.dataset == "table":
            return table_dataset(config.data_root, split, config.label_column, fractions, config.split_seed,
                                 allow_nonfinite=config.allow_nonfinite)  # fmt: skip
        return image_folder(config.data_root, split, config.image_size, config.channels, config.invert, fractions,
                            config.split_seed)  # fmt: skip
    # regression families: each split is its own random stream of tasks (same distribution, never the same tasks)
    offset = {"train": 0, "val": 1_000_003, "test": 2_000_003}.get(split, 3_000_017)
    if config.data == "bandit":
        from fewshot.rl.bandits import Bandits

        return Bandits(config.arms, config.horizon, config.arm_prior, config.dataset == "dependent-bandit",
                       seed=config.seed + offset)  # fmt: skip
    if config.dataset in ("linear", "sparse", "relu"):
        from fewshot.tasks.linear import FunctionTasks

        return FunctionTasks(config.dim, config.shots, config.queries, config.dataset, config.noise,
                             inputs=config.inputs, seed=config.seed + offset)  # fmt: skip
    if config.dataset == "gp":
        from fewshot.tasks.gp import GaussianProcess

        return GaussianProcess(shots=config.shots, queries=config.queries, seed=config.seed + offset)
    if config.dataset == "sinusoid":
        from fewshot.tasks.regression import Sinusoid

        return Sinusoid(shots=config.shots, queries=config.queries, seed=config.seed + offset)
    return omniglot(split, scheme=config.split_scheme, root=config.data_root, image_size=config.image_size,
                    download=config.download)  # fmt: skip
