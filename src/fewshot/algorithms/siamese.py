"""Siamese networks: a twin embedding with shared weights, trained to tell same-class pairs from others.

Koch, Zemel & Salakhutdinov (2015). Siamese Neural Networks for One-shot Image Recognition. ICML Deep
Learning Workshop. (Weighted L1 distance, sigmoid, binary cross-entropy on pairs.)
Hadsell, Chopra & LeCun (2006). Dimensionality Reduction by Learning an Invariant Mapping. CVPR.
(Contrastive loss.)
Schroff, Kalenichenko & Philbin (2015). FaceNet: A Unified Embedding for Face Recognition and Clustering. CVPR.
arXiv:1503.03832. (Triplet loss.)

Both twins are one network, so similarity is symmetric by construction. One-shot classification labels a
query with the class of its most similar support example. Training here reads an episode: every pair (or
every valid triplet) of its support and query examples, with same-class and different-class pairs weighted
equally. :mod:`fewshot.tasks.pairs` samples pairs and triplets from a labelled dataset directly, for
verification (is this pair the same class?) and for training on pairs outside episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import (
    Algorithm,
    AlgorithmSpec,
    ModelRequest,
    Params,
    call,
    call_sub,
    class_scores,
    full_precision,
    setting,
)
from fewshot.models import standard_network
from fewshot.tasks.episodes import Split, Task

LOSSES = ("bce", "contrastive", "triplet")


class SiameseModel(nn.Module):
    """An embedding network and Koch et al.'s similarity head ``sigmoid(w . |z1 - z2| + b)``.

    ``forward(x)`` is the embedding; the head (``Linear(dim, 1)``, logits) is used by the ``bce`` loss only.
    """

    def __init__(self, encoder: nn.Module, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``values`` where the boolean ``mask`` (same shape) is true, as ``values[mask].mean()``.

    Without the data-dependent shape of ``values[mask]``: no wait for the GPU to say how many entries there
    are, and it runs on the meta device (shapes only) as well. ``mask`` must select at least one entry.
    """
    return torch.where(mask, values, 0).sum() / mask.sum()


def pair_distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances ``||a_i - b_j||``, ``(n, m)``, differentiable at 0 (a small floor under the root)."""
    d2 = (a.unsqueeze(1) - b.unsqueeze(0)).square().sum(-1)
    return torch.sqrt(d2.clamp_min(1e-12))


@dataclass(frozen=True)
class Siamese(Algorithm):
    """Siamese network (Koch et al. 2015) with a choice of pair or triplet objective.

    Args:
        loss: ``"bce"`` (Koch et al.: weighted L1 head, binary cross-entropy; needs a :class:`SiameseModel`),
            ``"contrastive"`` (Hadsell et al.: ``d^2`` for same-class pairs, ``max(0, margin - d)^2`` for
            others) or ``"triplet"`` (Schroff et al.: ``max(0, d(a, p)^2 - d(a, n)^2 + margin)`` over every
            valid triplet of the episode). ``d`` is the Euclidean distance between embeddings.
        margin: of the contrastive and triplet losses.

    Similarity (higher: more alike) is the head's logit for ``bce`` and ``-d`` otherwise. :meth:`predict`
    returns, per class, the similarity to the class's most similar support example: ``(n, ways)``.
    """

    loss: str = "bce"
    margin: float = 1.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown Siamese loss {self.loss!r}; choose one of {list(LOSSES)}")
        if not self.margin > 0:
            raise ValueError(f"margin must be positive, got {self.margin}")

    def similarity(self, model: nn.Module, params: Params, a: Tensor, b: Tensor) -> Tensor:
        """Similarity of every embedded ``a_i`` to every embedded ``b_j``: ``(n, m)``; symmetric."""
        if self.loss == "bce":
            diff = (a.unsqueeze(1) - b.unsqueeze(0)).abs()  # (n, m, d)
            return full_precision(call_sub(model, params, "head", diff).squeeze(-1))
        return -pair_distances(a, b)

    def adapt(
        self, model: nn.Module, params: Params, support: Split, ways: int
    ) -> tuple[Tensor, Tensor, int]:
        return full_precision(call(model, params, support.x)), support.y, ways

    def predict(
        self, model: nn.Module, params: Params, state: tuple[Tensor, Tensor, int], x: Tensor
    ) -> Tensor:
        z, labels, ways = state
        return class_scores(
            self.similarity(model, params, full_precision(call(model, params, x)), z), labels, ways
        )

    def task_loss(self, model: nn.Module, params: Params, task: Task) -> tuple[Tensor, Tensor]:
        """The pair (or triplet) loss over all examples of the episode, and the query predictions."""
        n_support = task.support.x.shape[0]
        z = full_precision(call(model, params, torch.cat([task.support.x, task.query.x])))  # (n, d): one pass
        loss = self.pair_loss(model, params, z, torch.cat([task.support.y, task.query.y]))
        with torch.no_grad():
            sim = self.similarity(model, params, z[n_support:], z[:n_support])
            logits = class_scores(sim, task.support.y, task.ways)
        return loss, logits

    def pair_loss(self, model: nn.Module, params: Params, z: Tensor, y: Tensor) -> Tensor:
        """Loss over every pair ``i < j`` (triplet: every anchor, positive, negative) of embeddings ``z``."""
        same = y.unsqueeze(0) == y.unsqueeze(1)  # (n, n)
        upper = torch.ones_like(same).triu(1)
        pos, neg = same & upper, ~same & upper
        # (labels on the meta device have no values to check: they are tensors of a shape only)
        if not y.is_meta and (not pos.any() or not neg.any()):
            raise ValueError("pair losses need at least two examples of one class and two classes")
        if self.loss == "triplet":
            d2 = pair_distances(z, z).square()
            # violation[a, p, n] = d(a, p)^2 - d(a, n)^2 + margin for p of a's class (p != a), n of another
            others = ~torch.eye(len(y), dtype=torch.bool, device=y.device)  # p != a
            valid = (same & others).unsqueeze(2) & ~same.unsqueeze(1)
            violation = d2.unsqueeze(2) - d2.unsqueeze(1) + self.margin
            return masked_mean(F.relu(violation), valid)
        if self.loss == "bce":
            logits = self.similarity(model, params, z, z)
            per_pair = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype), reduction="none")
        else:
            d = pair_distances(z, z)
            d2 = (z.unsqueeze(1) - z.unsqueeze(0)).square().sum(-1)  # exact 0 for identical embeddings
            per_pair = torch.where(same, d2, F.relu(self.margin - d).square())
        # same and different pairs weigh alike
        return 0.5 * (masked_mean(per_pair, pos) + masked_mean(per_pair, neg))

    def verify(self, model: nn.Module, params: Params, a: Tensor, b: Tensor) -> Tensor:
        """Similarity of each pair ``(a_i, b_i)``: ``(n,)``; higher means more likely the same class."""
        za, zb = full_precision(call(model, params, a)), full_precision(call(model, params, b))
        if self.loss == "bce":
            return full_precision(call_sub(model, params, "head", (za - zb).abs()).squeeze(-1))
        return -(za - zb).square().sum(-1).clamp_min(1e-12).sqrt()

    def threshold(self) -> float | None:
        """The decision threshold the loss implies on :meth:`verify`'s similarity, if any.

        ``bce``: logit 0 (probability 1/2). ``contrastive``: distance ``margin / 2``, halfway between where
        same-class pairs are pulled (0) and others pushed (``margin``). ``triplet`` fixes only relative
        distances, so it implies none: fit one on held-out pairs with :func:`best_threshold`.
        """
        return {"bce": 0.0, "contrastive": -self.margin / 2}.get(self.loss)


def best_threshold(similarity: Tensor, same: Tensor) -> float:
    """The threshold on ``similarity`` that classifies the most pairs correctly (``same`` iff ``>=``)."""
    # on the CPU: a threshold is a Python float, and float64 is not on every device (MPS)
    s, order = similarity.detach().cpu().double().sort()
    y = same.cpu()[order].double()
    # predicting "same" for s[k:] is right on the same pairs at k.. and the different pairs before k
    right = torch.cat([y.new_zeros(1), (1 - y).cumsum(0)]) + torch.cat(
        [y.flip(0).cumsum(0).flip(0), y.new_zeros(1)]
    )
    k = int(right.argmax())
    if k == 0:
        return float(s[0]) - 1.0
    if k == len(s):
        return float(s[-1]) + 1.0
    return float((s[k - 1] + s[k]) / 2)


def verification_accuracy(similarity: Tensor, same: Tensor, threshold: float) -> float:
    """Fraction of pairs called correctly: same class iff ``similarity >= threshold``."""
    return ((similarity >= threshold) == same.bool()).sum().item() / same.numel()  # as a float64 mean


@dataclass(frozen=True)
class SiameseSettings:
    siamese_loss: str = setting("bce", "bce (Koch et al.: weighted L1 head, binary cross-entropy), contrastive "
                                "(Hadsell et al.) or triplet (Schroff et al.)", LOSSES)  # fmt: skip
    margin: float = setting(1.0, "margin of the contrastive and triplet losses, in embedding distance")


def _model(request: ModelRequest, settings: SiameseSettings) -> nn.Module:
    encoder = standard_network(request)
    return SiameseModel(encoder, encoder.embedding_dim)


SPEC = AlgorithmSpec(
    name="siamese",
    summary="Siamese networks: same-or-different on pairs (Koch et al. 2015), contrastive or triplet losses",
    build=lambda s, testing: Siamese(loss=s.siamese_loss, margin=s.margin),
    model=_model,
    settings=SiameseSettings,
)
