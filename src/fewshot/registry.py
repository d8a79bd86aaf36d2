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
from fewshot.algorithms.matching import MatchingModel, MatchingNet
from fewshot.algorithms.metasgd import MetaSGD
from fewshot.algorithms.protonet import ProtoNet
from fewshot.algorithms.relation import RelationModel, RelationNet
from fewshot.algorithms.reptile import Reptile
from fewshot.algorithms.siamese import Siamese, SiameseModel
from fewshot.baselines import FineTune, NearestNeighbour, Scratch
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
    "matching": lambda c: MatchingNet(fce=c.fce, scale=c.matching_scale),
    "relation": lambda c: RelationNet(),
    "siamese": lambda c: Siamese(loss=c.siamese_loss, margin=c.margin),
    # supervised pretraining on all training classes; tested by fine-tuning a new head (Chen et al. 2019)
    "baseline": lambda c: FineTune("linear", c.finetune_steps, c.finetune_lr),
    "baselinepp": lambda c: FineTune("cosine", c.finetune_steps, c.finetune_lr),
    # no training at all: the network learns each episode's support set from its initial weights
    "scratch": lambda c: Scratch(c.finetune_steps, c.finetune_lr),
}
# algorithms that embed and compare (no classifier head, BatchNorm with running statistics)
METRIC = {"protonet", "matching", "relation", "siamese"}
SUPERVISED = {"baseline", "baselinepp"}  # trained as ordinary classifiers over all training classes
UNTRAINED = {"scratch"}
HEADLESS = METRIC | SUPERVISED  # tested with any number of ways (no `ways`-output head to match)
# test-time replacements for a run's own algorithm (``fewshot compare RUN:nn``): any trained embedding works
TEST_ALGORITHMS: dict[str, Callable[[TrainConfig], Algorithm]] = {
    "nn": lambda c: NearestNeighbour("embedding"),
    "nn-cosine": lambda c: NearestNeighbour("embedding", "cosine"),
    "finetune": lambda c: FineTune("linear", c.finetune_steps, c.finetune_lr),
    "finetune-cosine": lambda c: FineTune("cosine", c.finetune_steps, c.finetune_lr),
    "finetune-all": lambda c: FineTune("linear", c.finetune_steps, c.finetune_lr, all_layers=True),
}
DATASETS = ("omniglot", "sinusoid", "folder", "table")


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
    size, hidden = config.image_size, config.hidden
    if config.dataset == "table":  # feature vectors: an MLP of two hidden layers instead of conv4
        return _table_model(config, in_features)
    if config.algorithm == "relation":
        return RelationModel(in_features, hidden, image_size=size)
    if config.algorithm in SUPERVISED:
        if config.classes is None:
            raise ValueError("a baseline model needs `classes` (the trainer sets it from the training split)")
        return Conv4(
            in_features, hidden, config.classes, image_size=size, cosine_head=config.algorithm == "baselinepp"
        )
    if config.algorithm in METRIC:
        encoder = Conv4(in_features, hidden, image_size=size)
        if config.algorithm == "matching" and config.fce:
            return MatchingModel(encoder, encoder.embedding_dim)
        if config.algorithm == "siamese":
            return SiameseModel(encoder, encoder.embedding_dim)
        return encoder
    # classifiers adapted by gradient: an N-way head, BatchNorm on batch statistics (Finn et al. 2017)
    return Conv4(
        in_features,
        config.hidden,
        out_features=config.ways,
        track_running_stats=False,
        image_size=config.image_size,
    )


def _table_model(config: TrainConfig, d: int) -> nn.Module:
    h = config.hidden
    if config.algorithm in SUPERVISED:
        if config.classes is None:
            raise ValueError("a baseline model needs `classes` (the trainer sets it from the training split)")
        return MLP(d, (h, h), config.classes, cosine_head=config.algorithm == "baselinepp")
    if config.algorithm in METRIC:
        encoder = MLP(d, (h, h), None)  # the embedding: two hidden layers of h, no head
        if config.algorithm == "matching" and config.fce:
            return MatchingModel(encoder, h)
        if config.algorithm == "siamese":
            return SiameseModel(encoder, h)
        return encoder
    return MLP(d, (h, h), config.ways)


def extra_params(algorithm: Any, model: nn.Module) -> dict:
    """The algorithm's own meta-parameters (Meta-SGD's step sizes, MAML++'s), or none."""
    make = getattr(algorithm, "extra_params", None)
    return make(model) if make is not None else {}
