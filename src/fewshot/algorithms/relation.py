"""Relation Networks.

Sung, Yang, Zhang, Xiang, Torr & Hospedales (2018). Learning to Compare: Relation Network for Few-Shot
Learning. CVPR. arXiv:1711.06025.

An embedding module maps images to feature maps; a class is the sum of its support feature maps; a learned
*relation module* reads the channel-wise concatenation [class map, query map] and outputs a relation score in
[0, 1]. Training regresses the scores onto one-hot targets with mean squared error, as in the paper (the
score is a similarity to fit, not a class probability).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import (
    Algorithm,
    AlgorithmSpec,
    Params,
    call,
    call_sub,
    full_precision,
    group_sum,
    query_logits,
)
from fewshot.tasks.episodes import Split, Task


def _block(cin: int, cout: int, padding: int, pool: bool, track_running_stats: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=padding),
        nn.BatchNorm2d(cout, track_running_stats=track_running_stats),
        nn.ReLU(),
    ]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


class RelationModel(nn.Module):
    """The embedding and relation modules of Sung et al. (2018), figure 2, Omniglot / miniImageNet version.

    Embedding: four blocks of [3x3 conv with ``hidden`` channels, BatchNorm, ReLU], the first two unpadded and
    followed by 2x2 max-pooling, the last two padded (28x28 input -> ``hidden`` x 5 x 5 maps). Relation: two
    such blocks on the ``2 * hidden`` concatenated channels, each with padding and pooling (5 -> 2 -> 1), then
    ``Linear(hidden, relation_dim)``, ReLU, ``Linear(relation_dim, 1)``, sigmoid.

    ``forward(x)`` returns feature maps ``(n, hidden, s, s)``; the algorithm runs ``relation`` itself.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        relation_dim: int = 8,
        image_size: int = 28,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        t = track_running_stats
        self.encoder = nn.Sequential(
            _block(in_channels, hidden, 0, True, t),
            _block(hidden, hidden, 0, True, t),
            _block(hidden, hidden, 1, False, t),
            _block(hidden, hidden, 1, False, t),
        )
        side = ((image_size - 2) // 2 - 2) // 2
        if side < 4:  # the relation module pools twice more: 4 -> 2 -> 1
            raise ValueError(
                f"image_size={image_size} is too small for the relation network; use at least 22"
            )
        after = side // 2 // 2
        self.relation = nn.Sequential(
            _block(2 * hidden, hidden, 1, True, t),
            _block(hidden, hidden, 1, True, t),
            nn.Flatten(),
            nn.Linear(hidden * after**2, relation_dim),
            nn.ReLU(),
            nn.Linear(relation_dim, 1),
        )  # logits; sigmoid in the algorithm
        self.feature_side = side

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # (n, hidden, side, side)


def relation_pairs(classes: Tensor, queries: Tensor) -> Tensor:
    """Every (query, class) pair as concatenated maps: ``(n_query * ways, 2c, h, w)``, query-major.

    Args:
        classes: ``(ways, c, h, w)`` class feature maps.
        queries: ``(n_query, c, h, w)`` query feature maps.
    """
    n, ways = queries.shape[0], classes.shape[0]
    c = classes.unsqueeze(0).expand(n, *classes.shape)  # (n, ways, c, h, w)
    q = queries.unsqueeze(1).expand(n, ways, *queries.shape[1:])
    return torch.cat([c, q], dim=2).flatten(0, 1)


@dataclass(frozen=True)
class RelationNet(Algorithm):
    """Relation Networks (Sung et al. 2018): a learned similarity between class and query feature maps.

    The model must be a :class:`RelationModel` (or any module with a ``relation`` submodule that maps
    ``(n, 2c, h, w)`` concatenated maps to ``(n, 1)`` logits). The state of :meth:`adapt` is the ``(ways, c,
    h, w)`` class maps (sums over shots, as in the paper); :meth:`predict` returns relation scores in [0, 1],
    shape ``(n, ways)``, and :meth:`task_loss` the paper's MSE to one-hot targets.
    """

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Tensor:
        z = call(model, params, support.x)  # (n_support, c, h, w)
        # summed in at least float32: under bf16 autocast the maps are bf16, and a sum of shots would lose digits
        return group_sum(full_precision(z), support.y, ways)  # (ways, c, h, w)

    def predict(self, model: nn.Module, params: Params, state: Tensor, x: Tensor) -> Tensor:
        q = call(model, params, x)  # (n, c, h, w)
        logits = call_sub(model, params, "relation", relation_pairs(state, q))  # (n * ways, 1)
        if logits.dtype in (torch.bfloat16, torch.float16):  # from autocast: scores in float32
            logits = logits.float()  # (float32 and float64 keep their dtype)
        return torch.sigmoid(logits).view(x.shape[0], state.shape[0])  # (n, ways)

    def probabilities(self, outputs: Tensor) -> Tensor:
        """Relation scores in [0, 1] normalised to sum to 1 over the classes (they are not logits)."""
        return outputs / outputs.sum(-1, keepdim=True).clamp_min(1e-12)

    def task_loss(self, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        scores = query_logits(self, model, params, task)
        target = F.one_hot(task.query.y, task.ways).to(scores.dtype)
        return F.mse_loss(scores, target), scores


SPEC = AlgorithmSpec(
    name="relation",
    summary="Relation Networks: a learned similarity of class and query feature maps (Sung et al. 2018)",
    build=lambda settings, testing: RelationNet(),
    model=lambda request, settings: RelationModel(
        request.in_features, request.hidden, image_size=request.image_size
    ),
    data=("images",),
    takes_backbone=False,  # its embedding gives feature maps for the relation module, not pooled vectors
)
