"""A transformer in-context classifier: the support set is the prompt, no weight changes at test time.

The in-context classifiers of Kirsch, Harrison, Sohl-Dickstein, Gao & Metz (2022, "General-Purpose In-Context
Learning by Meta-Learning Transformers", arXiv 2212.04458) and the label-token sequence model of Chan et al. (2022,
"Data Distributional Properties Drive Emergent In-Context Learning in Transformers", arXiv 2205.05055) read
(embedding, label) tokens and a query; here the query attends to the support set (never to other queries) and no
positions are used, so predictions do not depend on the support set's order and one network serves any number
of shots and any number of ways up to the one it was built for
(:class:`~fewshot.models.sequence.InContextClassifier`). With ``vary_shots`` each training task keeps between 1
and ``shots`` support items per class (drawn per task), so the network learns every support size it will meet.

:class:`ReadsSupport` is the part shared with SNAIL and the MANN: ``adapt`` keeps the support set and ``predict``
runs the network on it with the queries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import (
    Algorithm,
    AlgorithmSpec,
    Params,
    call,
    check_range,
    full_precision,
    setting,
)
from fewshot.models.sequence import InContextClassifier
from fewshot.models.standard import embedding_features, standard_network
from fewshot.tasks.episodes import Split, Task


def training_generator(step: int, salt: int) -> torch.Generator:
    """The random stream of meta-training step ``step`` (its support orders or sizes): a pure function of the
    step, so a resumed run draws the same. It is a CPU generator on every device (its draws are moved to the
    data's device: a few numbers per task), so the draws do not depend on the device either."""
    return torch.Generator().manual_seed(1_000_003 * step + salt)


@dataclass(frozen=True)
class ReadsSupport(Algorithm):
    """A network that reads the labelled support set with the queries: the task state is the support set.

    The model is called as ``model(x (B, n, *f), y=(B, n), query=(B, m, *f)) -> (B, m, max ways)`` and has the
    attribute ``ways`` (the most classes it reads). ``step`` is the meta-training step (set by :meth:`at_step`; None
    at test time), which seeds any training-time randomness of a subclass.
    """

    step: int | None = None

    def at_step(self, step: int) -> Algorithm:
        return dataclasses.replace(self, step=step)

    def adapt(
        self, model: nn.Module, params: Params, support: Split, ways: int
    ) -> tuple[Tensor, Tensor, int]:
        check_ways(model, ways)
        return support.x, support.y, ways

    def predict(
        self, model: nn.Module, params: Params, state: tuple[Tensor, Tensor, int], x: Tensor
    ) -> Tensor:
        sx, sy, ways = state
        return call(model, params, sx.unsqueeze(0), y=sy.unsqueeze(0), query=x.unsqueeze(0))[0, :, :ways]

    def training_logits(
        self, model: nn.Module, params: Params, x: Tensor, y: Tensor, query: Tensor, ways: int
    ) -> Tensor:
        """Query logits ``(B, m, max ways)`` in meta-training, for episodes of ``ways`` classes with the same number of
        support items each; a subclass adds its training-time randomness."""
        return call(model, params, x, y=y, query=query)

    def batch_loss(
        self, model: nn.Module, params: Params, tasks: Sequence[Task]
    ) -> tuple[Tensor, list[Tensor]]:
        """The query cross-entropy of tasks of one shape, as one batch of sequences (one forward pass)."""
        ways = tasks[0].ways
        check_ways(model, ways)
        x, y = torch.stack([t.support.x for t in tasks]), torch.stack([t.support.y for t in tasks])
        query, target = torch.stack([t.query.x for t in tasks]), torch.stack([t.query.y for t in tasks])
        logits = full_precision(
            self.training_logits(model, params, x, y, query, ways)[..., :ways]
        )  # (B, m, ways)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten()), list(logits)


def check_ways(model: nn.Module, ways: int) -> None:
    """Refuses regression tasks and tasks with more classes than the network reads."""
    if not ways:
        raise ValueError("this network classifies; for regression use cnp, anp, transformer or lsa")
    limit = getattr(model, "ways", None)
    if limit is not None and ways > limit:
        raise ValueError(
            f"this network reads at most {limit} classes (it was built with ways={limit}); use {limit} or fewer "
            "ways, or train it with more"
        )


@dataclass(frozen=True)
class InContextLearner(ReadsSupport):
    """The transformer in-context classifier; ``vary_shots``: train on 1 to ``shots`` support items per class."""

    vary_shots: bool = True

    def training_logits(
        self, model: nn.Module, params: Params, x: Tensor, y: Tensor, query: Tensor, ways: int
    ) -> Tensor:
        if self.step is None:
            return call(model, params, x, y=y, query=query)
        keep = None
        if self.vary_shots:
            # rank of each support item within its class (0, 1, ...), then keep ranks below a per-task size
            onehot = F.one_hot(y, ways)  # (B, n, ways)
            rank = ((onehot.cumsum(1) - 1) * onehot).sum(-1)  # (B, n)
            shots = y.shape[1] // ways  # episodes have as many support items of every class
            size = torch.randint(1, shots + 1, (len(y), 1), generator=training_generator(self.step, 1))
            keep = rank < size.to(rank.device)
        # each task's classes take random label slots among the network's `model.ways`, read back in class order,
        # so every slot is trained even while a curriculum has fewer ways
        slots = getattr(model, "ways", None)
        if slots is None or slots <= ways:
            return call(model, params, x, y=y, query=query, keep=keep)
        order = torch.rand(len(y), slots, generator=training_generator(self.step, 4)).argsort(1)[:, :ways]
        order = order.to(y.device)  # (B, ways): the slot of each class
        logits = call(model, params, x, y=order.gather(1, y), query=query, keep=keep)  # (B, m, slots)
        return logits.gather(2, order.unsqueeze(1).expand(-1, logits.shape[1], -1))  # (B, m, ways)


@dataclass(frozen=True)
class ICLSettings:
    width: int = setting(128, "the transformer's width")
    depth: int = setting(4, "transformer blocks")
    heads: int = setting(8, "attention heads")
    vary_shots: bool = setting(
        True,
        "train each task on 1 to --shots support items per class, so one network serves every number of shots",
    )

    def __post_init__(self) -> None:
        check_range(self, {"width": 1, "depth": 1, "heads": 1})
        if self.width % self.heads:
            raise ValueError(f"width must be a multiple of heads, got {self.width} and {self.heads}")


def _model(request: Any, s: ICLSettings) -> nn.Module:
    embedding = standard_network(request)
    return InContextClassifier(
        embedding, embedding_features(request), request.ways, s.width, s.depth, s.heads
    )


SPEC = AlgorithmSpec(
    name="icl",
    summary="a transformer in-context classifier reading (embedding, label) tokens of the support set "
    "(Kirsch et al. 2022)",
    build=lambda s, testing: InContextLearner(vary_shots=s.vary_shots),
    model=_model,
    settings=ICLSettings,
    reads_ways=True,
    routes=("autograd",),
)
