"""Matching Networks.

Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016). Matching Networks for One Shot Learning. NeurIPS.
arXiv:1606.04080.

A query's label distribution is an attention-weighted vote of the support labels,
``P(y | x, S) = sum_i a(x, x_i) onehot(y_i)``, with ``a`` a softmax over cosine similarities between the
embedded query and the embedded support examples. With *full context embeddings* (FCE) each support embedding
is re-read by a bidirectional LSTM over the whole support set, and each query embedding by an attention LSTM
that attends over the support ``query_steps`` times, so both embeddings depend on the task.
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
    check_range,
    full_precision,
    setting,
)
from fewshot.models import standard_network
from fewshot.tasks.episodes import Split


class FullContextEmbedding(nn.Module):
    """The two LSTMs of Matching Networks' full context embeddings (Vinyals et al. 2016, appendix A).

    Support: ``g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)``, a bidirectional LSTM over the support embeddings in
    their given order, with a skip connection. Query: ``query_steps`` reads of an attention LSTM,
    ``h_k, c_k = LSTM(f'(x), (h_{k-1} + r_{k-1}, c_{k-1}))``, ``h_k += f'(x)``,
    ``r_k = sum_i softmax(h_k . g_i) g_i``. The paper concatenates ``h`` and ``r`` as the LSTM state; adding them
    (as most re-implementations do) keeps the state size at ``dim``. Both cells are ``nn.LSTMCell``, stepped in
    Python, so they run under ``functional_call`` with any parameter dict.

    Args:
        dim: embedding size of the backbone.
        query_steps: attention reads of the query LSTM (K in the paper).
    """

    def __init__(self, dim: int, query_steps: int = 5) -> None:
        super().__init__()
        self.forward_cell = nn.LSTMCell(dim, dim)
        self.backward_cell = nn.LSTMCell(dim, dim)
        self.query_cell = nn.LSTMCell(dim, dim)
        self.query_steps = query_steps

    def forward(self, x: Tensor, support: Tensor | None = None) -> Tensor:
        """Context embeddings, same shape as ``x``.

        ``forward(g)``: ``g`` is the embedded support set ``(n_support, dim)``, read by the bidirectional LSTM.
        ``forward(f, g)``: ``f`` are embedded queries ``(n_query, dim)``, read against the context support
        embeddings ``g``.
        """
        return self.embed_support(x) if support is None else self.embed_query(x, support)

    def embed_support(self, g: Tensor) -> Tensor:
        n, dim = g.shape
        x = g.unsqueeze(1)  # the support set as one sequence of n steps, batch 1: (n, 1, dim)
        hf, cf, hb, cb = (g.new_zeros(1, dim) for _ in range(4))
        fwd, bwd = [], []
        for i in range(n):
            hf, cf = self.forward_cell(x[i], (hf, cf))
            fwd.append(hf)
            hb, cb = self.backward_cell(x[n - 1 - i], (hb, cb))
            bwd.append(hb)
        return g + torch.cat(fwd) + torch.cat(bwd[::-1])  # (n, dim)

    def embed_query(self, f: Tensor, g: Tensor) -> Tensor:
        h, c = torch.zeros_like(f), torch.zeros_like(f)  # (n_query, dim)
        r = torch.zeros_like(f)
        for _ in range(self.query_steps):
            h, c = self.query_cell(f, (h + r, c))
            h = h + f
            r = torch.softmax(h @ g.T, dim=-1) @ g  # read the support: (n_query, dim)
        return h


class MatchingModel(nn.Module):
    """A backbone plus the full-context-embedding LSTMs, for ``MatchingNet(fce=True)``.

    ``forward(x)`` is the backbone's embedding; the algorithm runs ``fce`` itself (``call_sub``).
    """

    def __init__(self, encoder: nn.Module, dim: int, query_steps: int = 5) -> None:
        super().__init__()
        self.encoder = encoder
        self.fce = FullContextEmbedding(dim, query_steps)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def attention_log_probs(query: Tensor, support: Tensor, labels: Tensor, ways: int, scale: float) -> Tensor:
    """``log sum_i softmax_i(scale * cos(query, support_i)) onehot(y_i)``: ``(n_query, ways)``.

    Returned as log-probabilities so that cross-entropy on them is the paper's negative log-likelihood
    (``log_softmax`` of log-probabilities that already sum to 1 leaves them unchanged).
    """
    cos = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).T  # (n_query, n_support)
    attention = torch.softmax(scale * cos, dim=-1)
    probs = attention @ F.one_hot(labels, ways).to(attention.dtype)  # (n_query, ways)
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


@dataclass(frozen=True)
class MatchingNet(Algorithm):
    """Matching Networks (Vinyals et al. 2016): attention over the embedded support set.

    The state of :meth:`adapt` is ``(support embeddings, support labels, ways)``; :meth:`predict` returns
    log-probabilities ``(n, ways)``. Nothing is adapted by gradient.

    Args:
        fce: full context embeddings; the model must be a :class:`MatchingModel` (it holds the LSTMs).
        scale: multiplies the cosine similarities before the softmax (1 in the paper; a larger value sharpens
            the attention, and can be learned in other work).
    """

    fce: bool = False
    scale: float = 1.0

    def adapt(
        self, model: nn.Module, params: Params, support: Split, ways: int
    ) -> tuple[Tensor, Tensor, int]:
        g = full_precision(call(model, params, support.x))  # (n_support, d)
        if self.fce:
            g = call_sub(model, params, "fce", g)
        return g, support.y, ways

    def predict(
        self, model: nn.Module, params: Params, state: tuple[Tensor, Tensor, int], x: Tensor
    ) -> Tensor:
        g, labels, ways = state
        f = full_precision(call(model, params, x))  # (n, d)
        if self.fce:
            f = call_sub(model, params, "fce", f, g)
        return attention_log_probs(f, g, labels, ways, self.scale)


@dataclass(frozen=True)
class MatchingSettings:
    fce: bool = setting(False, "full context embeddings: the support read by a bidirectional LSTM, each query by an "
                        "attention LSTM over the support (Vinyals et al. 2016, appendix A)")  # fmt: skip
    matching_scale: float = setting(1.0, "cosine similarities are multiplied by this before the attention softmax "
                                    "(1: the paper; 10 learns far faster, BENCHMARKS.md)")  # fmt: skip

    def __post_init__(self) -> None:
        check_range(self, positive=("matching_scale",))


def _model(request: ModelRequest, settings: MatchingSettings) -> nn.Module:
    encoder = standard_network(request)
    return MatchingModel(encoder, encoder.embedding_dim) if settings.fce else encoder


SPEC = AlgorithmSpec(
    name="matching",
    summary="Matching Networks: attention over the embedded support set (Vinyals et al. 2016)",
    build=lambda s, testing: MatchingNet(fce=s.fce, scale=s.matching_scale),
    model=_model,
    settings=MatchingSettings,
)
