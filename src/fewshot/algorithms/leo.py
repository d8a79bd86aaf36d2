"""LEO: gradient steps on a low-dimensional latent code of the classifier, not on the classifier itself.

Rusu, Rao, Sygnowski, Vinyals, Pascanu, Osindero & Hadsell (2019). Meta-Learning with Latent Embedding
Optimization. ICLR. arXiv:1807.05960.

LEO works on a frozen embedding: table features as they are, or images embedded by a trained run
(``--embedding RUN``, e.g. a ``baseline`` run). An encoder and a relation network over every pair of support
examples give each class a Gaussian over a code ``z``; a decoder maps a code to a Gaussian over the class's
weights in a linear classifier. The inner loop takes ``inner_steps`` gradient steps on the codes only, then
``finetune_steps`` on the decoded weights, with learned step sizes (one per latent, one per feature).

Conventions of DeepMind's reference code (github.com/deepmind/leo, ``model.py``, ``data.py``, ``config.py``)
followed here: every support example holds its own sample of its class's code (``average_codes_per_class``
tiles them) and a class's weights are the mean of its examples' decoded weights (``predict``); deviations are
``max(exp(s) - 1 + offset, 1e-10)`` (``possibly_sample``); inner gradients are of the *summed* support
cross-entropy (``tf.gradients`` of per-example losses); the KL term is the one-sample estimate
``mean(log q(z) - log p(z))``; features are L2-normalised (``data.py``). At test time codes and weights are
their means and dropout is off, as there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.algorithms.base import (
    AdaptsByGradient,
    AlgorithmSpec,
    Params,
    all_finite,
    call,
    call_sub,
    check_range,
    full_precision,
    grad_and_value,
    group_sum,
    setting,
)
from fewshot.algorithms.icl import training_generator
from fewshot.baselines import embed
from fewshot.models import ModelRequest
from fewshot.tasks.episodes import Split, Task

SALT = 1_000  # training_generator(step, SALT + i): the noise of task i of a step (icl.py uses salts 1 to 4)


class LEOModel(nn.Module):
    """A frozen embedding (None: the inputs are the features) and LEO's learned parts, bias-free and
    Glorot-initialised as in the reference: ``encoder`` (d -> L), ``relation`` (2L -> 2L -> 2L -> 2L, ReLUs
    between), ``decoder`` (L -> 2d: means and raw deviations of the weights), and the step sizes
    ``inner_lr (L,)`` and ``finetune_lr (d,)``.

    ``forward(x)`` returns the features ``(n, d)``. The embedding's parameters do not require grad (no
    optimiser or route sees them) and it stays in eval mode whatever ``train()`` asks; checkpoints hold it.
    """

    def __init__(self, features: int, latent_dim: int, inner_lr: float, finetune_lr: float,
                 embedding: nn.Module | None = None) -> None:  # fmt: skip
        super().__init__()
        self.embedding = None if embedding is None else embedding.requires_grad_(False).eval()
        two = 2 * latent_dim
        self.encoder = nn.Linear(features, latent_dim, bias=False)
        layers = [nn.Linear(two, two, bias=False) for _ in range(3)]
        self.relation = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])
        self.decoder = nn.Linear(latent_dim, 2 * features, bias=False)
        for layer in (self.encoder, self.decoder, *layers):
            nn.init.xavier_uniform_(layer.weight)
        self.inner_lr = nn.Parameter(torch.full((latent_dim,), float(inner_lr)))
        self.finetune_lr = nn.Parameter(torch.full((features,), float(finetune_lr)))

    def train(self, mode: bool = True) -> LEOModel:
        super().train(mode)
        if self.embedding is not None:
            self.embedding.eval()  # frozen: its BatchNorm keeps normalising with the running statistics
        return self

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) if self.embedding is None else embed(self.embedding, {}, x)  # (n, d)


def class_mean(values: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Per class, the mean of its rows: ``(n, *f)`` -> ``(ways, *f)``."""
    counts = group_sum(torch.ones_like(values[:, :1]), labels, ways).clamp_min(1)
    return group_sum(values, labels, ways) / counts


def gaussian(params: Tensor, offset: float, noise: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(sample, mean, std)`` from ``params (..., 2k)`` = [means, raw deviations]; the mean without noise."""
    mean, raw = params.chunk(2, dim=-1)
    std = (torch.exp(raw) - (1.0 - offset)).clamp_min(1e-10)  # the reference's possibly_sample
    return (mean if noise is None else mean + std * noise), mean, std


def orthogonality(weight: Tensor) -> Tensor:
    """Mean squared difference of the correlations of the decoder's latent directions from the identity (the
    reference's regulariser on its ``(L, 2d)`` matrix: the transpose of ``nn.Linear``'s weight)."""
    w = weight.T  # (L, 2d)
    norms = w.norm(dim=1, keepdim=True) + 1e-32
    corr = (w @ w.T) / (norms @ norms.T)  # (L, L)
    return (corr - torch.eye(len(w), dtype=w.dtype, device=w.device)).pow(2).mean()


def _normal(like: Tensor, g: torch.Generator | None) -> Tensor | None:
    """Standard normal noise shaped like ``like``, drawn on the CPU from ``g`` and moved (None without g)."""
    return None if g is None else torch.randn(like.shape, generator=g, dtype=like.dtype).to(like.device)


def _drop(x: Tensor, rate: float, g: torch.Generator | None) -> Tensor:
    """Inverted dropout with a mask drawn from ``g``; the identity without ``g`` (test time) or at rate 0."""
    if g is None or rate == 0:
        return x
    return x * (torch.rand(x.shape, generator=g) >= rate).to(x.device) / (1 - rate)


@dataclass(frozen=True)
class LEO(AdaptsByGradient):
    """LEO (Rusu et al. 2019) on a :class:`LEOModel`; :meth:`adapt` returns the classifier ``(ways, d)``.

    Noise and dropout are drawn only in meta-training (``training``) at a step set by :meth:`at_step`, task
    ``i`` of the step from ``training_generator(step, SALT + i)``: no global RNG. Without a step, codes and
    weights are their means and dropout is off (zero noise), as at test time.

    Example:
        >>> model = LEOModel(features=64, latent_dim=16, inner_lr=1.0, finetune_lr=1e-3)
        >>> loss, logits = LEO().task_loss(model, parameters_of(model), task)
    """

    inner_steps: int = 5
    finetune_steps: int = 5
    kl_weight: float = 1e-3
    encoder_penalty: float = 1e-9
    orthogonality_penalty: float = 1e-3
    l2_penalty: float = 1e-8
    dropout: float = 0.5
    normalize: bool = True
    first_order: bool = False
    training: bool = False
    step: int | None = None
    check_finite: bool = True

    def at_step(self, step: int) -> LEO:
        return dataclasses.replace(self, step=step) if self.training else self

    def features(self, model: nn.Module, params: Params, x: Tensor) -> Tensor:
        f = full_precision(call(model, params, x))  # (n, d)
        return F.normalize(f, dim=-1) if self.normalize else f

    def encode(self, model: nn.Module, params: Params, f: Tensor, y: Tensor, ways: int,
               g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``(z (n, L), kl)``: each support example's sample of its class's code, and the KL estimate."""
        e = full_precision(call_sub(model, params, "encoder", _drop(f, self.dropout, g)))  # (n, L)
        n = len(e)
        pairs = torch.cat([e.unsqueeze(1).expand(n, n, -1), e.unsqueeze(0).expand(n, n, -1)], -1)
        # (n, n, 2L) -> each example's output averaged over its partners, then over its class's examples
        relation = full_precision(call_sub(model, params, "relation", pairs)).mean(1)  # (n, 2L)
        dist = class_mean(relation, y, ways)[y]  # (n, 2L): every example holds its class's parameters
        z, mean, std = gaussian(dist, 0.0, _normal(dist[:, : dist.shape[1] // 2], g))
        # log N(z; mean, std) - log N(z; 0, 1), averaged over entries (the log(2 pi) terms cancel)
        return z, (0.5 * z**2 - 0.5 * ((z - mean) / std) ** 2 - torch.log(std)).mean()

    def decode(
        self, model: nn.Module, params: Params, z: Tensor, ways: int, noise: Tensor | None = None
    ) -> Tensor:
        """Each example's sample (with ``noise (n, d)``) or mean of its class's weights: (n, L) -> (n, d)."""
        out = full_precision(call_sub(model, params, "decoder", z))  # (n, 2d)
        offset = math.sqrt(2.0 / (out.shape[1] // 2 + ways))  # Glorot's scale of a (d -> ways) layer
        return gaussian(out, offset, noise)[0]

    def inner_loop(self, model: nn.Module, params: Params, f: Tensor, y: Tensor, ways: int, z: Tensor,
                   g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``(adapted codes (n, L), adapted per-example weights (n, d))`` from codes ``z`` on features ``f``:
        ``inner_steps`` steps on the codes, then ``finetune_steps`` on the decoded weights."""

        def loss(w: Tensor, fd: Tensor) -> Tensor:  # summed over the support, as the reference
            return F.cross_entropy(fd @ class_mean(w, y, ways).T, y, reduction="sum")

        def step(name: str, start: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
            grad = grad_and_value(lambda p: fn(p["v"]), {"v": start}, not self.first_order)[0]["v"]
            if self.check_finite and not all_finite({"grad": grad}):
                raise FloatingPointError(f"a LEO inner step produced a NaN or Inf gradient; lower --{name}")
            return start - params[name] * grad  # learned step sizes, per latent or per feature

        for _ in range(self.inner_steps):  # a fresh weight sample and dropout mask per step, as the reference
            noise, fd = _normal(f, g), _drop(f, self.dropout, g)
            z = step(
                "inner_lr", z, lambda v, e=noise, fd=fd: loss(self.decode(model, params, v, ways, e), fd)
            )
        w = self.decode(model, params, z, ways, _normal(f, g))
        for _ in range(self.finetune_steps):
            fd = _drop(f, self.dropout, g)
            w = step("finetune_lr", w, lambda v, fd=fd: loss(v, fd))
        return z, w

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Tensor:
        f = self.features(model, params, support.x)
        z, _ = self.encode(model, params, f, support.y, ways)
        w = self.inner_loop(model, params, f, support.y, ways, z)[1]
        return class_mean(w, support.y, ways)  # (ways, d)

    def predict(self, model: nn.Module, params: Params, state: Tensor, x: Tensor) -> Tensor:
        return self.features(model, params, x) @ state.T  # (n, ways)

    def task_loss(
        self, model: nn.Module, params: Params, task: Task, index: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Query cross-entropy + ``kl_weight`` KL + ``encoder_penalty`` mean((z - stopgrad(z'))^2) +
        ``orthogonality_penalty`` decoder orthogonality + ``l2_penalty`` sum(w^2) / 2 of the encoder, relation
        and decoder weights (the reference's ``_build``). ``index``: the task's place in its step (noise)."""
        g = training_generator(self.step, SALT + index) if self.training and self.step is not None else None
        s, ways = task.support, task.ways
        f = self.features(model, params, s.x)
        z0, kl = self.encode(model, params, f, s.y, ways, g)
        z, w = self.inner_loop(model, params, f, s.y, ways, z0, g)
        query = _drop(self.features(model, params, task.query.x), self.dropout, g)
        logits = query @ class_mean(w, s.y, ways).T  # (n_query, ways)
        penalty = (z0 - z.detach()).pow(2).mean()  # pulls the encoder's codes towards the adapted ones
        weights = [p for k, p in params.items() if k.split(".")[0] in ("encoder", "relation", "decoder")]
        l2 = sum(p.pow(2).sum() for p in weights) / 2
        loss = F.cross_entropy(logits, task.query.y) + self.kl_weight * kl + self.encoder_penalty * penalty
        orth = orthogonality(params["decoder.weight"])
        return loss + self.orthogonality_penalty * orth + self.l2_penalty * l2, logits

    def batch_loss(
        self, model: nn.Module, params: Params, tasks: Sequence[Task]
    ) -> tuple[Tensor, list[Tensor]]:
        """The mean of :meth:`task_loss` over ``tasks``, task ``i`` drawing noise stream ``i``."""
        losses, outs = zip(*(self.task_loss(model, params, t, i) for i, t in enumerate(tasks)), strict=True)
        return torch.stack(losses).mean(), list(outs)


@dataclass(frozen=True)
class LEOSettings:
    # defaults: the reference's config.py (its miniImageNet 5-way 1-shot set-up)
    embedding: str | None = setting(
        None,
        "images: a trained run (e.g. --algorithm baseline) whose frozen network embeds them; its copy is saved "
        "in the checkpoints, but the run must stay at its path for its architecture to be rebuilt on loading",
    )
    latent_dim: int = setting(64, "size of the latent code of a class's weights (64 in Rusu et al.)")
    inner_lr: float = setting(1.0, "initial value of the learned step sizes on the codes")
    inner_steps: int = setting(5, "inner gradient steps on the latent codes")
    finetune_steps: int = setting(
        5, "steps fitting the classifier to support sets (leo: its decoded weights)"
    )
    finetune_lr: float = setting(1e-3, "learning rate of those steps (leo: initial, learned, per feature)")
    kl_weight: float = setting(1e-3, "weight of KL(q(z | support) || N(0, I)) (beta)")
    encoder_penalty: float = setting(1e-9, "weight of the squared distance of initial to adapted codes")
    orthogonality_penalty: float = setting(1e-3, "weight of the decoder orthogonality penalty")
    l2_penalty: float = setting(1e-8, "weight of the L2 penalty on the encoder, relation and decoder")
    dropout: float = setting(0.5, "dropout rate on the features in meta-training")
    normalize: bool = setting(True, "L2-normalise the features (the reference's data pipeline does)")
    first_order: bool = setting(False, "drop second derivatives through the inner loop")

    def __post_init__(self) -> None:
        check_range(
            self, {"latent_dim": 1, "inner_steps": 1, "finetune_steps": 0}, ("inner_lr", "finetune_lr")
        )
        for name in ("kl_weight", "encoder_penalty", "orthogonality_penalty", "l2_penalty"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be 0 or a positive number, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be at least 0 and below 1, got {self.dropout}")
        if self.embedding is not None:  # stored absolute, so the run loads from any working directory
            object.__setattr__(self, "embedding", str(Path(self.embedding).expanduser().resolve()))


def build(s: LEOSettings, testing: bool) -> LEO:
    return LEO(
        s.inner_steps, s.finetune_steps, s.kl_weight, s.encoder_penalty, s.orthogonality_penalty,
        s.l2_penalty, s.dropout, s.normalize, s.first_order, training=not testing,
    )  # fmt: skip


def frozen_embedding(path: str, request: ModelRequest) -> tuple[nn.Module, int]:
    """The network of the run in ``path`` (best checkpoint) and its embedding size, checked for the data."""
    from fewshot.runs import load_run  # here: runs imports the registry, which imports this module

    try:
        run = load_run(path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--embedding {path}: {e}") from e
    c = run.config
    if c.data != "images" or (c.in_features, c.image_size) != (request.in_features, request.image_size):
        raise ValueError(
            f"--embedding {path} read {c.data} of {c.in_features} channels at {c.image_size} pixels, these "
            f"images have {request.in_features} at {request.image_size}; give a run trained on such images"
        )
    model = run.model.eval()
    probe = torch.zeros(1, c.in_features, c.image_size, c.image_size, device=next(model.parameters()).device)
    with torch.no_grad():
        return model, embed(model, {}, probe).shape[1]


def _model(request: ModelRequest, s: LEOSettings) -> LEOModel:
    if request.data != "images":
        return LEOModel(request.in_features, s.latent_dim, s.inner_lr, s.finetune_lr)
    if s.embedding is None:
        raise ValueError(
            "leo reads images through a frozen embedding: pass --embedding RUN, a trained run such as one of "
            "`fewshot train --algorithm baseline`"
        )
    embedding, features = frozen_embedding(s.embedding, request)
    return LEOModel(features, s.latent_dim, s.inner_lr, s.finetune_lr, embedding)


SPEC = AlgorithmSpec(
    name="leo",
    summary="LEO: gradient steps on latent codes decoded into a linear classifier over a frozen embedding "
    "(Rusu et al. 2019)",
    build=build, model=_model, settings=LEOSettings, data=("images", "vectors"), routes=("autograd",),
    takes_backbone=False,  # images go through the frozen embedding of --embedding RUN, whatever its backbone
)  # fmt: skip
