"""Networks that classify by reading the labelled support set: SNAIL, an in-context transformer, a MANN.

Each takes the support images ``x (B, n, *features)`` with their labels ``y (B, n)`` (class ids below ``ways``, the
most classes the network was built for) and the query images ``query (B, m, *features)``, and returns query logits
``(B, m, ways)``; a caller with fewer classes reads the first columns. Every query is read as if it came alone after
the support set: no query sees another one. ``model(x, features=True)`` is the item embedding alone, ``(N, d)``, as
for :class:`~fewshot.models.Conv4`, so the test-time baselines (``RUN:nn``, ``RUN:finetune``) run on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.models.attention import Block


def _embed(embedding: nn.Module, x: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Support and query items through ``embedding`` in one batch: ``(B, n, d)``, ``(B, m, d)``."""
    b, n, m = x.shape[0], x.shape[1], query.shape[1]
    z = embedding(torch.cat([x.flatten(0, 1), query.flatten(0, 1)]))  # (B n + B m, d)
    return z[: b * n].view(b, n, -1), z[b * n :].view(b, m, -1)


class _Dense(nn.Module):
    """SNAIL's dense block: a causal convolution of kernel 2 and ``dilation`` with a gated activation, its
    ``filters`` outputs appended to the input channels (Mishra et al. 2018, appendix B).

    The kernel's two taps are two linear maps: ``out[t] = A h[t] + B h[t - dilation]``. A query stands at position
    ``n`` (right after the ``n`` support items), so its earlier tap is the support item ``n - dilation``.
    """

    def __init__(self, channels: int, dilation: int, filters: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.now, self.before = nn.Linear(channels, 2 * filters), nn.Linear(channels, 2 * filters, bias=False)

    def forward(self, s: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        n, r = s.shape[1], self.dilation
        earlier = F.pad(s, (0, 0, r, 0))[:, :n]  # (B, n, C): h[t - r], zeros before the start
        before_q = s[:, n - r : n - r + 1] if n >= r else torch.zeros_like(q[:, :1])  # (B, 1, C)
        out = []
        for h, prev in ((s, earlier), (q, before_q)):
            f, g = (self.now(h) + self.before(prev)).chunk(2, -1)
            out.append(torch.cat([h, torch.tanh(f) * torch.sigmoid(g)], -1))
        return out[0], out[1]


class _Attention(nn.Module):
    """SNAIL's attention block: single-head causal soft attention (keys and queries of ``key_size``), the
    ``value_size`` values read appended to the input channels. A support item attends to itself and the items
    before it; a query to the whole support set and itself."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.scale = 1 / math.sqrt(key_size)
        self.key, self.query = nn.Linear(channels, key_size), nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)

    def forward(self, s: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        n = s.shape[1]
        ks, vs = self.key(s), self.value(s)  # (B, n, key), (B, n, value)
        logits = self.query(s) @ ks.transpose(1, 2) * self.scale  # (B, n, n)
        causal = torch.ones(n, n, dtype=torch.bool, device=s.device).tril()
        read_s = logits.masked_fill(~causal, -torch.inf).softmax(-1) @ vs
        qq = self.query(q)  # (B, m, key)
        to_support = qq @ ks.transpose(1, 2) * self.scale  # (B, m, n)
        to_self = (qq * self.key(q)).sum(-1, keepdim=True) * self.scale  # (B, m, 1)
        p = torch.cat([to_support, to_self], -1).softmax(-1)
        read_q = p[..., :n] @ vs + p[..., n:] * self.value(q)
        return torch.cat([s, read_s], -1), torch.cat([q, read_q], -1)


class SNAIL(nn.Module):
    """A Simple Neural Attentive meta-Learner for classification (Mishra, Rohaninejad, Chen & Abbeel 2018, "A Simple
    Neural Attentive Meta-Learner", arXiv 1707.03141, appendix B, Omniglot).

    The sequence is the support items ``(embedding, one-hot label)`` and then one query ``(embedding, zeros)``; the
    network is AttentionBlock(64, 32), TCBlock(T, 128), AttentionBlock(256, 128), TCBlock(T, 128),
    AttentionBlock(512, 256) and a 1x1 convolution to ``ways`` logits, read at the query. A TCBlock is
    ``ceil(log2 T)`` dense blocks of dilations 2, 4, 8, ..., with ``T = ways * shots + 1`` the training sequence's
    length. All queries of a task are computed in one pass, each exactly as if it were the sequence's only query
    (tested against one sequence per query).

    Args:
        embedding: the image (or vector) network, ``(N, *features) -> (N, features)``.
        features: its output size.
        ways: classes of the one-hot labels and of the output (the most a task may have).
        length: ``T``, which sets the number of dense blocks.
    """

    def __init__(self, embedding: nn.Module, features: int, ways: int, length: int) -> None:
        super().__init__()
        self.embedding, self.ways = embedding, ways
        dense = max(1, math.ceil(math.log2(length)))
        blocks: list[nn.Module] = []
        c = features + ways
        for key, value in ((64, 32), (256, 128), (512, 256)):
            blocks.append(_Attention(c, key, value))
            c += value
            if value != 256:  # a TC block after the first two attention blocks
                for i in range(1, dense + 1):  # the paper's dilations 2, 4, ..., 2^ceil(log2 T)
                    blocks.append(_Dense(c, 2**i, 128))
                    c += 128
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Linear(c, ways)

    def forward(
        self, x: Tensor, y: Tensor | None = None, query: Tensor | None = None, features: bool = False
    ) -> Tensor:
        if features:
            return self.embedding(x)
        zs, zq = _embed(self.embedding, x, query)
        s = torch.cat([zs, F.one_hot(y, self.ways).to(zs.dtype)], -1)  # (B, n, d + ways)
        q = torch.cat([zq, zq.new_zeros(*zq.shape[:2], self.ways)], -1)  # (B, m, d + ways)
        for block in self.blocks:
            s, q = block(s, q)
        return self.out(q)  # (B, m, ways)


class InContextClassifier(nn.Module):
    """A transformer that classifies queries by attending to the labelled support set.

    Tokens: a support item is ``W f(x) + e_y`` (its embedding read in, plus a learned vector for its label), a query
    ``W f(x) + e_?`` (a learned "unknown" vector). Standard pre-norm transformer blocks follow, without positions:
    support tokens attend to all support tokens, a query to the support and itself only, so the output does not
    depend on the order of the support set nor on the other queries, and one network takes any number of shots. A
    linear read-out of the query tokens gives ``ways`` logits.

    Args:
        embedding, features: the item network and its output size.
        ways: label vectors and outputs (the most classes a task may have).
        width, depth, heads: the transformer's size.

    ``forward(x, y, query, keep=None)``: ``keep (B, n)`` bool hides the support items where it is False (training
    with fewer shots in the same batch).
    """

    def __init__(
        self, embedding: nn.Module, features: int, ways: int, width: int = 128, depth: int = 4, heads: int = 8
    ) -> None:
        super().__init__()
        self.embedding, self.ways = embedding, ways
        self.read_in = nn.Linear(features, width)
        # label vectors of unit-size entries, as large as the read-in images: a small start drowns the labels
        self.labels = nn.Parameter(torch.randn(ways + 1, width))  # row `ways`: the unknown label
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm, self.read_out = nn.LayerNorm(width), nn.Linear(width, ways)

    def forward(
        self, x: Tensor, y: Tensor | None = None, query: Tensor | None = None, keep: Tensor | None = None,
        features: bool = False,
    ) -> Tensor:  # fmt: skip
        if features:
            return self.embedding(x)
        zs, zq = _embed(self.embedding, x, query)
        b, n, m = zs.shape[0], zs.shape[1], zq.shape[1]
        h = torch.cat([self.read_in(zs) + self.labels[y], self.read_in(zq) + self.labels[self.ways]], 1)
        seen = torch.ones(b, n, dtype=torch.bool, device=h.device) if keep is None else keep
        # allowed[b, i, j]: token i may attend to token j: every kept support item, and itself
        allowed = torch.cat([seen, seen.new_zeros(b, m)], 1).unsqueeze(1).expand(b, n + m, n + m)
        allowed = allowed | torch.eye(n + m, dtype=torch.bool, device=h.device)
        for block in self.blocks:
            h = block(h, allowed.unsqueeze(1))  # (B, 1, L, L): the same for every head
        return self.read_out(self.norm(h[:, n:]))  # (B, m, ways)


class MANN(nn.Module):
    """A memory-augmented neural network with least-recently-used access (Santoro, Bartunov, Botvinick, Wierstra
    & Lillicrap 2016, "Meta-Learning with Memory-Augmented Neural Networks", ICML, section 3).

    An LSTM controller reads ``(x_t, one-hot y_{t-1}, r_{t-1})``; each of ``reads`` heads emits a key ``k_t`` and a
    gate ``alpha``. Writing: the least-used slot (by ``w^u_{t-1}``) is cleared, then each head adds ``k_t`` with
    weights ``sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}``, where head ``i``'s ``w^lu`` marks the
    ``i``-th least-used slot (ties broken by position, as in the reimplementations: never-used slots tie). Reading: softmax of the cosine
    similarity of ``k_t`` to every slot. Usage decays: ``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t`` (summed over
    heads). The output is a linear map of ``(h_t, r_t)`` to ``ways`` logits.
    Sizes default to the paper's (controller 200, memory 128 x 40, 4 read heads, gamma 0.95). With ``side``, images
    ``(c, h, w)`` are first resized to ``side x side`` by area averaging (20 in the paper, from 105x105);
    ``in_features`` is then ``c * side * side``.

    ``step(x (B, d), previous label (B, ways), state) -> (logits (B, ways), state)`` runs one time step;
    ``initial_state(B)`` is the empty memory.
    """

    def __init__(
        self, in_features: int, ways: int, controller: int = 200, slots: int = 128, slot_size: int = 40,
        reads: int = 4, gamma: float = 0.95, side: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.side = side
        self.ways, self.slots, self.slot_size, self.reads, self.gamma = ways, slots, slot_size, reads, gamma
        self.lstm = nn.LSTMCell(in_features + ways + reads * slot_size, controller)
        self.keys = nn.Linear(controller, reads * slot_size)
        self.gates = nn.Linear(controller, reads)
        self.out = nn.Linear(controller + reads * slot_size, ways)
        # the memory's starting value: small and fixed (a buffer), so cosine similarities are defined at t = 0
        self.register_buffer("memory0", torch.full((slots, slot_size), 1e-6))

    def initial_state(self, batch: int) -> tuple[Tensor, ...]:
        z = self.memory0.new_zeros
        h = z(batch, self.lstm.hidden_size)
        read_weights = z(batch, self.reads, self.slots)
        usage = z(batch, self.slots)
        # head i writes to the i-th least-used slot; at the start all are unused: take slots 0..reads-1
        first = torch.arange(self.reads, device=self.memory0.device)
        least_used = F.one_hot(first, self.slots).to(h.dtype).expand(batch, -1, -1)  # (B, heads, slots)
        memory = self.memory0.expand(batch, -1, -1)
        return h, h.clone(), memory, read_weights, usage, least_used, z(batch, self.reads * self.slot_size)

    def inputs(self, x: Tensor) -> Tensor:
        """``(B, *f)`` items as the controller's input vectors ``(B, in_features)``."""
        if self.side is not None and x.dim() == 4 and x.shape[-2:] != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="area")
        return x.flatten(1)

    def step(
        self, x: Tensor, previous: Tensor, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        h, c, memory, read_weights, usage, least_used, read = state
        b = x.shape[0]
        h, c = self.lstm(torch.cat([self.inputs(x), previous, read], -1), (h, c))
        keys = torch.tanh(self.keys(h)).view(b, self.reads, self.slot_size)  # (B, heads, slot)
        alpha = torch.sigmoid(self.gates(h)).unsqueeze(-1)  # (B, heads, 1)
        write_weights = alpha * read_weights + (1 - alpha) * least_used  # (B, heads, slots)
        # clear the least-used slot (by the previous usage), then write every head's key
        cleared = F.one_hot(usage.argmin(-1), self.slots).to(memory.dtype)  # (B, slots)
        memory = (
            memory * (1 - cleared).unsqueeze(-1) + write_weights.transpose(1, 2) @ keys
        )  # (B, slots, slot)
        similarity = F.cosine_similarity(keys.unsqueeze(2), memory.unsqueeze(1), dim=-1, eps=1e-8)
        read_weights = similarity.softmax(-1)  # (B, heads, slots)
        read = (read_weights @ memory).flatten(1)  # (B, heads * slot)
        usage = self.gamma * usage + read_weights.sum(1) + write_weights.sum(1)
        # the `reads` least-used slots, one per head (ties, such as never-used slots, broken by position)
        lowest = usage.topk(self.reads, -1, largest=False).indices  # (B, heads)
        least_used = F.one_hot(lowest, self.slots).to(usage.dtype)  # (B, heads, slots)
        logits = self.out(torch.cat([h, read], -1))
        return logits, (h, c, memory, read_weights, usage, least_used, read)

    def forward(
        self, x: Tensor, y: Tensor | None = None, query: Tensor | None = None, features: bool = False
    ) -> Tensor:
        """The sequence ``x (B, T, *f)`` with labels ``y (B, T)``, each input given the label before it: logits at
        every step, ``(B, T, ways)``. With ``query (B, m, *f)``: each query read once after the whole sequence
        (given the sequence's last label), independently, ``(B, m, ways)``. ``features``: the flattened inputs
        (the MANN has no embedding of its own)."""
        if features:
            return self.inputs(x)
        b, t = y.shape
        state = self.initial_state(b)
        onehot = F.one_hot(y, self.ways).to(state[0].dtype)
        previous = onehot.new_zeros(b, self.ways)
        outputs = []
        for i in range(t):
            logits, state = self.step(x[:, i], previous, state)
            outputs.append(logits)
            previous = onehot[:, i]
        if query is None:
            return torch.stack(outputs, 1)
        m = query.shape[1]
        many = tuple(s.repeat_interleave(m, 0) for s in state)  # one copy of the state per query
        logits, _ = self.step(query.flatten(0, 1), previous.repeat_interleave(m, 0), many)
        return logits.view(b, m, self.ways)
