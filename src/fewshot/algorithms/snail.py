"""SNAIL: Mishra, Rohaninejad, Chen & Abbeel (2018). A Simple Neural Attentive Meta-Learner. ICLR.
arXiv:1707.03141.

A sequence model reads the support set as ``(embedding, one-hot label)`` items and then the query as
``(embedding, zeros)``, and outputs the query's class at the last position. Temporal convolutions (causal, dilated)
aggregate nearby items and causal soft attention picks out the relevant ones
(:class:`~fewshot.models.sequence.SNAIL`, the paper's Omniglot network). The model depends on the order of the
support set by design: in meta-training each task's support set is shuffled (a stream seeded by the step); at
test time it is read in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import AlgorithmSpec, Params, call
from fewshot.algorithms.icl import ReadsSupport, training_generator
from fewshot.models.sequence import SNAIL
from fewshot.models.standard import embedding_features, standard_network


@dataclass(frozen=True)
class SNAILLearner(ReadsSupport):
    """SNAIL's few-shot classification: the support sequence in a random order per training task."""

    def training_logits(
        self, model: nn.Module, params: Params, x: Tensor, y: Tensor, query: Tensor, ways: int
    ) -> Tensor:
        if self.step is not None:
            b, n = y.shape
            order = (
                torch.rand(b, n, generator=training_generator(self.step, 2)).argsort(1).to(y.device)
            )  # (B, n)
            x = x[torch.arange(b, device=y.device).unsqueeze(1), order]
            y = y.gather(1, order)
        return call(model, params, x, y=y, query=query)


def _model(request: Any, settings: Any) -> nn.Module:
    # the sequence of a training episode: ways * shots support items and the query
    return SNAIL(
        standard_network(request), embedding_features(request), request.ways, request.ways * request.shots + 1
    )


SPEC = AlgorithmSpec(
    name="snail",
    summary="SNAIL: temporal convolutions and causal attention over the support sequence (Mishra et al. 2018)",
    build=lambda s, testing: SNAILLearner(),
    model=_model,
    reads_ways=True,
    routes=("autograd",),
)
