"""A plain multilayer perceptron: the 1 -> 40 -> 40 -> 1 ReLU network of Finn et al. (2017) by default."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fewshot.models.conv4 import CosineLinear


def hidden_layers(in_features: int, hidden: Sequence[int]) -> tuple[list[nn.Module], int]:
    """``[Linear, ReLU]`` per hidden size, and the width they end at."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return layers, width


class MLP(nn.Module):
    """Fully connected ReLU network.

    Args:
        in_features: input size (1 for sinusoids).
        hidden: sizes of the hidden layers ((40, 40) in Finn et al. 2017).
        out_features: output size; None for an embedding network without a head (the last hidden layer, after
            its ReLU, is the output).
        cosine_head: the last layer is a :class:`~fewshot.models.conv4.CosineLinear` (Baseline++).

    The last layer is named ``head`` so head-only adaptation (ANIL) can address it.

    Shapes: ``(n, in_features) -> (n, out_features)``.
    """

    def __init__(
        self,
        in_features: int = 1,
        hidden: Sequence[int] = (40, 40),
        out_features: int | None = 1,
        cosine_head: bool = False,
    ) -> None:
        super().__init__()
        layers, width = hidden_layers(in_features, hidden)
        self.body = nn.Sequential(*layers)
        self.embedding_dim = width  # size of the last hidden layer: the embedding
        self.head: nn.Module | None = None
        if out_features is not None:
            self.head = CosineLinear(width, out_features) if cosine_head else nn.Linear(width, out_features)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        """Outputs ``(n, out_features)``, or the last hidden layer ``(n, hidden[-1])`` if ``features`` or the
        network has no head (``out_features=None``: an embedding network)."""
        z = self.body(x)
        return z if features or self.head is None else self.head(z)


class ResidualMLP(nn.Module):
    """``x + f(x)``: an MLP whose output is added to its input, with the last layer initialised to zero.

    The network starts as the identity, so a metric learner on top of a pretrained embedding (a sentence
    encoder's, say) starts from that embedding's own geometry and meta-training moves away from it only as far as
    the episodes reward: a plain MLP of random weights first scrambles a good embedding. (The residual form is He
    et al. 2016's; the zero-initialised last layer, Goyal et al. 2017's.)

    Args:
        in_features: input size, also the embedding size.
        hidden: sizes of the hidden layers of ``f``.
        out_features: a linear head on ``x + f(x)`` with this many outputs; None for an embedding network.
        cosine_head: the head is a :class:`~fewshot.models.conv4.CosineLinear` (Baseline++).

    Shapes: ``(n, in_features) -> (n, in_features)`` (embedding) or ``(n, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256,),
        out_features: int | None = None,
        cosine_head: bool = False,
    ) -> None:
        super().__init__()
        layers, width = hidden_layers(in_features, hidden)
        last = nn.Linear(width, in_features)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)
        self.embedding_dim = in_features
        self.head: nn.Module | None = None
        if out_features is not None:
            self.head = (
                CosineLinear(in_features, out_features)
                if cosine_head
                else nn.Linear(in_features, out_features)
            )

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        z = x + self.body(x)  # (n, in_features)
        return z if features or self.head is None else self.head(z)
