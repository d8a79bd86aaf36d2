"""Conditional and attentive neural processes: networks that read a context set of (x, y) pairs and give a
Gaussian predictive distribution at target inputs.

* Conditional neural process (Garnelo, Rosenbaum, Maddison, Ramalho, Saxton, Shanahan, Teh, Rezende & Eslami
  2018, "Conditional Neural Processes", ICML, arXiv 1807.01613): an MLP encodes each pair ``(x_i, y_i)`` into
  ``r_i``; their mean ``r`` is the task's representation; an MLP decoder reads ``(r, x)`` and gives the mean and
  standard deviation of ``y``.
* Attentive neural process (Kim, Mnih, Schwarz, Garnelo, Eslami, Rosenbaum, Vinyals & Teh 2019, "Attentive Neural
  Processes", ICLR, arXiv 1901.05761), its deterministic path: the pairs' encodings pass through self-attention,
  and each target reads them by multi-head cross-attention with its own ``x`` as the query and the context ``x`` as
  the keys, so that nearby context points weigh more than a mean would let them. (The paper adds a latent path
  trained with a variational bound; this module has the deterministic path only and is trained, like the CNP, on
  the log-likelihood.)

Both are invariant to the order of the context points (a mean, or attention without positions) and predict each
target from the context alone. As in both papers, ``sd = 0.1 + 0.9 softplus(.)`` keeps the deviation away from 0.

Shapes: ``forward(x (B, k, dx), y (B, k, dy), query (B, m, dx)) -> (mean (B, m, dy), sd (B, m, dy))``; ``k`` may be
0 (the prior guess).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no activation after the last layer


class NeuralProcess(nn.Module):
    """A conditional (``attention=False``) or attentive (``attention=True``) neural process.

    Args:
        x_dim, y_dim: input and target sizes (1 and 1 for sinusoids and Gaussian-process curves).
        width: hidden units of every layer (128 in both papers).
        attention: cross-attention aggregation (ANP) instead of the mean (CNP).
        heads: attention heads (8 in Kim et al.).
    """

    def __init__(
        self, x_dim: int = 1, y_dim: int = 1, width: int = 128, attention: bool = False, heads: int = 8
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width must be a multiple of heads, got {width} and {heads}")
        self.attention = attention
        self.encoder = _mlp([x_dim + y_dim, width, width, width])
        self.decoder = _mlp([width + x_dim, width, width, 2 * y_dim])
        self.empty = nn.Parameter(torch.zeros(width))  # the representation of an empty context
        if attention:
            self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
            self.keys = _mlp([x_dim, width, width])  # the same map for target and context inputs
            self.cross_attention = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: Tensor, y: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        b, m = query.shape[0], query.shape[1]
        if x.shape[1] == 0:
            r = self.empty.expand(b, m, -1)
        else:
            r_i = self.encoder(torch.cat([x, y], -1))  # (B, k, width): one code per context pair
            if self.attention:
                r_i = r_i + self.self_attention(r_i, r_i, r_i, need_weights=False)[0]
                r = self.cross_attention(self.keys(query), self.keys(x), r_i, need_weights=False)[
                    0
                ]  # (B, m, w)
            else:
                r = r_i.mean(1, keepdim=True).expand(b, m, -1)  # (B, m, width): the same for every target
        out = self.decoder(torch.cat([r, query], -1))  # (B, m, 2 dy)
        mean, raw = out.chunk(2, -1)
        return mean, 0.1 + 0.9 * F.softplus(raw)
