"""Names to objects: the algorithms, models and task sources a configuration can ask for.

Each algorithm name maps to a function of the training configuration, so every setting has one spelling
(``inner_lr``, ``inner_steps``, ...) whatever the algorithm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from fewshot.algorithms.base import Algorithm
from fewshot.algorithms.cavia import CAVIA
from fewshot.algorithms.maml import MAML
from fewshot.algorithms.mamlpp import MAMLPlusPlus
from fewshot.algorithms.metasgd import MetaSGD
from fewshot.algorithms.protonet import ProtoNet
from fewshot.algorithms.reptile import Reptile
from fewshot.models.conv4 import Conv4
from fewshot.models.mlp import MLP

if TYPE_CHECKING:
    from fewshot.train import TrainConfig

ALGORITHMS: dict[str, Callable[[TrainConfig], Algorithm]] = {
    "protonet": lambda c: ProtoNet(),
    "maml": lambda c: MAML(c.inner_lr, c.inner_steps, first_order=c.first_order, clip=c.inner_clip),
    "fomaml": lambda c: MAML(c.inner_lr, c.inner_steps, first_order=True, clip=c.inner_clip),
    "anil": lambda c: MAML(c.inner_lr, c.inner_steps, c.first_order, adapted=("head.",), clip=c.inner_clip),
    "metasgd": lambda c: MetaSGD(c.inner_lr, c.inner_steps, c.first_order, clip=c.inner_clip),
    "reptile": lambda c: Reptile(c.inner_lr, c.inner_steps, clip=c.inner_clip),
    "cavia": lambda c: CAVIA(c.context_dim, c.inner_lr, c.inner_steps, c.first_order),
    "mamlpp": lambda c: MAMLPlusPlus(c.inner_lr, c.inner_steps, first_order_epochs=c.first_order_epochs),
}
METRIC = {"protonet"}  # algorithms that embed (no classifier head, BatchNorm with running statistics)
DATASETS = ("omniglot", "sinusoid")


def build_algorithm(config: TrainConfig, testing: bool = False) -> Algorithm:
    """The algorithm of a config; with ``testing``, gradient-based ones take ``test_inner_steps`` steps."""
    algorithm = ALGORITHMS[config.algorithm](config)
    if testing and hasattr(algorithm, "inner_steps") and config.test_inner_steps is not None:
        if isinstance(algorithm, MAMLPlusPlus):  # its learned step sizes exist for the training steps only
            return algorithm
        algorithm = dataclasses.replace(algorithm, inner_steps=config.test_inner_steps)
    return algorithm


def build_model(config: TrainConfig, in_features: int = 1) -> nn.Module:
    """The network of a config: conv4 for images, the 1-40-40-1 MLP for sinusoids."""
    if config.dataset == "sinusoid":
        extra = config.context_dim if config.algorithm == "cavia" else 0
        return MLP(1 + extra, (40, 40), 1)  # Finn et al. 2017, section 5.1
    if config.algorithm in METRIC:
        return Conv4(in_features, config.hidden, image_size=config.image_size)
    # classifiers adapted by gradient: an N-way head, BatchNorm on batch statistics (Finn et al. 2017)
    return Conv4(
        in_features,
        config.hidden,
        out_features=config.ways,
        track_running_stats=False,
        image_size=config.image_size,
    )


def extra_params(algorithm: Any, model: nn.Module) -> dict:
    """The algorithm's own meta-parameters (Meta-SGD's step sizes, MAML++'s), or none."""
    make = getattr(algorithm, "extra_params", None)
    return make(model) if make is not None else {}
