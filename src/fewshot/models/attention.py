"""Networks that read a prompt of examples: linear self-attention (von Oswald et al. 2023).

A prompt is the context ``x (B, N, d)``, ``y (B, N)`` and the query inputs ``(B, M, d)``; a network returns the
predicted ``y`` of every query, ``(B, M)``, each query read against the context alone (never against the other
queries).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearSelfAttention(nn.Module):
    """``layers`` layers of single-head linear self-attention over tokens ``e = (x, c)`` (von Oswald, Niklasson,
    Randazzo, Sacramento, Mordvintsev, Zhmoginov & Vladymyrov 2023, "Transformers learn in-context by gradient
    descent", arXiv 2212.07677, section 2).

    Context tokens start as ``(x_i, y_i)``, query tokens as ``(x_q, 0)``. Each layer adds to every token ``j``

        ``P V sum_i e_i (K e_i) . (Q e_j) / N``

    where ``i`` runs over the ``N`` context tokens (a query is never a key: queries are independent of one another,
    and the constructed layers below then equal gradient descent for any number of layers), with no softmax. The
    prediction is minus the last entry of the query token, the paper's read-out. ``K, Q, V, P`` are
    ``(d + 1, d + 1)``, initialised at random (``std`` ``init``) for training, or set by :func:`gradient_descent_layers`.

    Shapes: ``forward(x (B, N, d), y (B, N), query (B, M, d)) -> (B, M)``.
    """

    def __init__(self, dim: int, layers: int = 1, init: float = 0.02) -> None:
        super().__init__()
        if dim < 1 or layers < 1:
            raise ValueError(f"dim and layers must be at least 1, got {dim} and {layers}")
        self.dim = dim
        size = (layers, dim + 1, dim + 1)
        self.key, self.query, self.value, self.projection = (
            nn.Parameter(init * torch.randn(size)) for _ in range(4)
        )

    def forward(self, x: Tensor, y: Tensor, query: Tensor) -> Tensor:
        context = torch.cat([x, y.unsqueeze(-1)], -1)  # (B, N, d + 1)
        queries = torch.cat([query, query.new_zeros(*query.shape[:-1], 1)], -1)  # (B, M, d + 1)
        n = max(x.shape[-2], 1)
        for k, q, v, p in zip(self.key, self.query, self.value, self.projection, strict=True):
            keys, values = context @ k.T, context @ v.T @ p.T  # (B, N, d + 1): K e_i and P V e_i
            # every token j reads the context: sum_i (P V e_i) (K e_i . Q e_j) / N
            context, queries = (
                t + ((t @ q.T) @ keys.transpose(-1, -2)) @ values / n for t in (context, queries)
            )
        return -queries[..., -1]  # (B, M)


def gradient_descent_layers(
    dim: int, lr: float, layers: int = 1, dtype: torch.dtype = torch.float64
) -> dict[str, Tensor]:
    """Weights with which :class:`LinearSelfAttention` computes ``layers`` steps of gradient descent of step ``lr``
    from ``w = 0`` on ``L(w) = 1/(2N) sum (w . x_i - y_i)^2`` (von Oswald et al. 2023, proposition 1).

    With ``K = Q = diag(I_d, 0)``, ``V = diag(0, 1)``, ``P = diag(0, -lr)`` a layer adds ``-lr/N sum_i c_i x_i . x_j`` to
    the last entry ``c_j`` of every token: context tokens carry the residuals ``y_i - w_t . x_i`` and query tokens
    ``-w_t . x_q``, exactly one gradient step on ``w`` each.
    """
    eye = torch.eye(dim + 1, dtype=dtype)
    kq = eye.clone()
    kq[dim, dim] = 0
    v, p = torch.zeros_like(eye), torch.zeros_like(eye)
    v[dim, dim], p[dim, dim] = 1.0, -lr
    stack = lambda m: m.expand(layers, -1, -1).clone()  # noqa: E731
    return {"key": stack(kq), "query": stack(kq), "value": stack(v), "projection": stack(p)}


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention, causal unless ``allowed`` (bool, True where a token
    may attend) is given, then a 4x-wide GELU MLP; residuals around both (GPT-2's layout)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: Tensor, allowed: Tensor | None = None) -> Tensor:
        b, t, w = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, is_causal=allowed is None
        )  # (b, heads, t, w / heads)
        h = h + self.out(a.transpose(1, 2).reshape(b, t, w))
        return h + self.mlp(self.norm2(h))


class PromptTransformer(nn.Module):
    """A decoder-only transformer that reads ``x_1, y_1, ..., x_n, y_n`` as ``2n`` tokens and predicts each ``y_i``
    from the tokens before it (Garg, Tsipras, Liang & Valiant 2022, arXiv 2208.01066, section 2).

    As in Garg et al.: ``y_i`` enters as the vector ``(y_i, 0, ..., 0)`` of the inputs' size, one linear read-in
    maps every token to ``width``, learned positions are added, and a linear read-out of the ``x`` tokens gives the
    predictions; attention is causal, so the prediction at ``x_i`` depends on ``x_1, y_1, ..., x_i`` only. Garg et
    al. use width 256, 12 layers, 8 heads for ``d = 20``.

    Shapes: ``forward(x (B, n, d), y (B, n))`` gives the prediction at every ``x``, ``(B, n)``; with
    ``query (B, M, d)`` it gives each query's prediction from the whole context ``(x, y)``, ``(B, M)``.
    """

    def __init__(
        self, dim: int, width: int = 256, depth: int = 12, heads: int = 8, max_points: int = 101
    ) -> None:
        super().__init__()
        self.dim, self.max_points = dim, max_points
        self.read_in = nn.Linear(dim, width)
        self.position = nn.Parameter(0.02 * torch.randn(2 * max_points, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm, self.read_out = nn.LayerNorm(width), nn.Linear(width, 1)

    def forward(self, x: Tensor, y: Tensor, query: Tensor | None = None) -> Tensor:
        if query is not None:  # each query after the whole context, as one sequence per query
            b, n, d = x.shape
            m = query.shape[1]
            xs = torch.cat([x.unsqueeze(1).expand(b, m, n, d), query.unsqueeze(2)], 2).reshape(
                b * m, n + 1, d
            )
            ys = torch.cat([y.unsqueeze(1).expand(b, m, n), y.new_zeros(b, m, 1)], 2).reshape(b * m, n + 1)
            return self(xs, ys)[:, -1].view(b, m)  # the last y token is never read: attention is causal
        b, n, d = x.shape
        if n > self.max_points:
            raise ValueError(
                f"a prompt of {n} points is longer than this transformer's max_points={self.max_points}"
            )
        y_tokens = torch.cat([y.unsqueeze(-1), y.new_zeros(b, n, d - 1)], -1)  # (B, n, d)
        tokens = torch.stack([x, y_tokens], 2).reshape(b, 2 * n, d)  # x_1, y_1, x_2, y_2, ...
        h = self.read_in(tokens) + self.position[: 2 * n]
        for block in self.blocks:
            h = block(h)
        return self.read_out(self.norm(h))[:, 0::2, 0]  # (B, n): the x tokens' outputs
