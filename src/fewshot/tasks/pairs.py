"""Pairs and triplets of examples, for Siamese verification and training.

Like the episode sampler, batch ``i`` depends only on ``(seed, i)``, so two models scored with one seed see
identical pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from fewshot.tasks.episodes import group_by_label


class Pairs(NamedTuple):
    """``n`` pairs of dataset indices and whether each pair shares a class."""

    first: Tensor  # (n,) int64
    second: Tensor  # (n,) int64
    same: Tensor  # (n,) bool


class Triplets(NamedTuple):
    """``n`` (anchor, positive, negative) index triplets: positive shares the anchor's class, negative not."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


class _ClassIndex:
    def __init__(self, labels: Sequence[int] | Tensor | np.ndarray, batch: int, seed: int) -> None:
        labels_np = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
        if labels_np.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels_np.shape}")
        if batch < 1 or seed < 0:
            raise ValueError(f"batch must be at least 1 and seed at least 0, got batch={batch}, seed={seed}")
        classes, self.members = group_by_label(labels_np)
        counts = np.array([len(m) for m in self.members])
        self.pairable = np.flatnonzero(counts >= 2)  # classes that can give a same-class pair
        if len(classes) < 2 or len(self.pairable) == 0:
            raise ValueError(
                f"pairs need at least 2 classes and one class with 2 examples; got {len(classes)} classes, "
                f"largest with {int(counts.max()) if counts.size else 0} examples"
            )
        self.classes, self.batch, self.seed = len(classes), batch, seed

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    def same(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        cls = rng.choice(self.pairable, size=n)
        picks = [rng.choice(self.members[c], size=2, replace=False) for c in cls]
        return np.array([p[0] for p in picks]), np.array([p[1] for p in picks])

    def different(self, rng: np.random.Generator, first_classes: np.ndarray) -> np.ndarray:
        # another class, uniformly: draw from classes-1 and skip over the first one
        other = rng.integers(0, self.classes - 1, size=len(first_classes))
        other = other + (other >= first_classes)
        return np.array([rng.choice(self.members[c]) for c in other])


class PairSampler(_ClassIndex):
    """Batches of ``batch`` pairs, half from one class (rounded up) and half from two different classes.

    Args:
        labels: class label of every dataset item.
        batch: pairs per batch.
        seed: batch ``i`` depends only on ``(seed, i)``.
    """

    def pairs(self, i: int) -> Pairs:
        rng = self.rng(i)
        n_same = (self.batch + 1) // 2
        a1, b1 = self.same(rng, n_same)
        first_cls = rng.integers(0, self.classes, size=self.batch - n_same)
        a2 = np.array([rng.choice(self.members[c]) for c in first_cls], dtype=np.int64)
        b2 = self.different(rng, first_cls)
        same = np.r_[np.ones(n_same, bool), np.zeros(self.batch - n_same, bool)]
        return Pairs(
            torch.as_tensor(np.r_[a1, a2].astype(np.int64)),
            torch.as_tensor(np.r_[b1, b2].astype(np.int64)),
            torch.as_tensor(same),
        )


class TripletSampler(_ClassIndex):
    """Batches of ``batch`` (anchor, positive, negative) triplets; see :class:`PairSampler` for arguments."""

    def triplets(self, i: int) -> Triplets:
        rng = self.rng(i)
        cls = rng.choice(self.pairable, size=self.batch)
        picks = [rng.choice(self.members[c], size=2, replace=False) for c in cls]
        negative = self.different(rng, cls)
        return Triplets(
            torch.as_tensor(np.array([p[0] for p in picks], dtype=np.int64)),
            torch.as_tensor(np.array([p[1] for p in picks], dtype=np.int64)),
            torch.as_tensor(negative.astype(np.int64)),
        )
