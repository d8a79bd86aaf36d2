"""A plain multilayer perceptron: the 1 -> 40 -> 40 -> 1 ReLU network of Finn et al. (2017) by default."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fewshot.models.conv4 import CosineLinear


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
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
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
