"""What the four browser explorers compute, as plain functions over fewshot (no web framework here).

The server (:mod:`fewshot.web.app`) validates requests and calls these; tests call them directly too, to
check the HTTP answers against fewshot's own results.

* ProtoNet explorer: 2-D Gaussian class clusters (:class:`GaussianClusters`), classified by
  :class:`~fewshot.algorithms.protonet.ProtoNet` with the identity as embedding, so prototypes are class means
  in the plane and decision regions are the nearest-prototype (Voronoi) cells.
* MAML visualizer: :class:`~fewshot.algorithms.maml.MAML`'s inner loop (plain SGD steps of ``inner_lr`` on the
  support MSE) from the meta-learned initialisation, and the same steps from a jointly pretrained MLP; beside
  them, an attentive neural process's predictive mean and standard deviation given the same points
  (:class:`~fewshot.algorithms.neural_process.NeuralProcessLearner`; no weight changes).
* One-shot Omniglot: ProtoNet with the shipped conv4 on one drawing per class from held-out alphabets, the
  user's drawing and the support drawings prepared alike (:mod:`fewshot.web.drawing`).
* In-context lines: the shipped :class:`~fewshot.models.attention.PromptTransformer` reads the user's points as its
  prompt (:class:`~fewshot.algorithms.lsa.InContext`; no weight changes), beside the estimators of
  :mod:`fewshot.regression_baselines` fitted to the same points (least squares, ridge, one gradient-descent step).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fewshot.algorithms.lsa import InContext
from fewshot.algorithms.maml import MAML
from fewshot.algorithms.neural_process import NeuralProcessLearner
from fewshot.algorithms.protonet import ProtoNet
from fewshot.regression_baselines import GradientDescent, LeastSquares, Ridge, tuned_gradient_descent
from fewshot.tasks.episodes import Split, Task
from fewshot.tasks.linear import FunctionTasks
from fewshot.tasks.regression import Sinusoid, generator
from fewshot.web import drawing
from fewshot.web.models import Loaded

# ----------------------------------------------------------------------------------------------------------
# ProtoNet on 2-D points


@dataclass(frozen=True)
class GaussianClusters:
    """2-D classification tasks: ``ways`` Gaussian clusters with random centres and spreads.

    Centres lie in ``[-box, box]^2``; each is the farthest from the centres before it among 16 uniform candidates
    (so clusters rarely sit on top of each other, but may touch). Each class has its own standard deviation in
    ``spread``. The task is a pure function of ``seed``: "a new task" is a new seed.

    Args:
        ways: classes (N).
        shots: support points per class (K).
        queries: query points per class (scored, not used to adapt).
        seed: the task.

    Example:
        >>> task = GaussianClusters(ways=3, shots=5, queries=10, seed=7).task()   # support.x (15, 2)
    """

    ways: int = 5
    shots: int = 5
    queries: int = 10
    seed: int = 0
    box: float = 3.5
    spread: tuple[float, float] = (0.4, 1.1)

    def __post_init__(self) -> None:
        for name, low in (("ways", 1), ("shots", 1), ("queries", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")

    def centres(self) -> tuple[Tensor, Tensor]:
        """``(ways, 2)`` class centres and ``(ways,)`` standard deviations."""
        g = generator(self.seed, 0)
        centres: list[Tensor] = []
        for _ in range(self.ways):
            candidates = (torch.rand(16, 2, generator=g, dtype=torch.float64) * 2 - 1) * self.box  # (16, 2)
            if centres:
                nearest = torch.cdist(candidates, torch.stack(centres)).min(1).values  # (16,)
                centres.append(candidates[nearest.argmax()])
            else:
                centres.append(candidates[0])
        low, high = self.spread
        stds = low + (high - low) * torch.rand(self.ways, generator=g, dtype=torch.float64)
        return torch.stack(centres), stds

    def task(self) -> Task:
        """Support ``(ways * shots, 2)`` and query ``(ways * queries, 2)`` points, class-major, float32."""
        centres, stds = self.centres()
        g = generator(self.seed, 1)
        per_class = self.shots + self.queries
        noise = torch.randn(self.ways, per_class, 2, generator=g, dtype=torch.float64)
        x = (centres[:, None] + stds[:, None, None] * noise).float()  # (ways, shots + queries, 2)
        y = torch.arange(self.ways)[:, None].expand(self.ways, per_class)
        return Task(
            Split(x[:, : self.shots].reshape(-1, 2), y[:, : self.shots].reshape(-1)),
            Split(x[:, self.shots :].reshape(-1, 2), y[:, self.shots :].reshape(-1)),
            self.ways,
        )


IDENTITY = nn.Identity()  # the embedding of the 2-D explorer: prototypes are class means in the plane


def protonet_2d(support: Split, ways: int, points: Tensor, bounds: tuple[float, float, float, float],
                resolution: int) -> dict:  # fmt: skip
    """Prototypes, a grid of decision regions and class probabilities of ``points``.

    Args:
        support: ``(n, 2)`` points and ``(n,)`` labels; every class ``0..ways-1`` occurs.
        ways: number of classes.
        points: ``(m, 2)`` points to classify (the user's clicks, the task's queries).
        bounds: ``(x_min, x_max, y_min, y_max)`` of the grid.
        resolution: cells per side.

    Returns:
        ``prototypes`` ``(ways, 2)``; ``labels`` and ``probabilities`` of ``points`` (``(m,)``, ``(m, ways)``);
        ``grid_labels`` ``(resolution, resolution)``, row ``i`` at the ``i``-th y from the bottom, column ``j``
        at the ``j``-th x from the left (cell centres), and ``grid_confidence``, the top probability there.
    """
    algorithm = ProtoNet()
    with torch.no_grad():
        state = algorithm.adapt(IDENTITY, {}, support, ways)  # (ways, 2)
        x_min, x_max, y_min, y_max = bounds
        # cell centres, made where the support points are
        steps = torch.arange(resolution, dtype=torch.float64, device=support.x.device) + 0.5
        xs = x_min + steps * (x_max - x_min) / resolution
        ys = y_min + steps * (y_max - y_min) / resolution
        # cell centres (x, y), row-major from the bottom-left: (resolution * resolution, 2)
        cells = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).reshape(-1, 2).float()
        grid = algorithm.predict(IDENTITY, {}, state, cells).softmax(-1)  # (r * r, ways)
        probabilities = algorithm.predict(IDENTITY, {}, state, points).softmax(-1)  # (m, ways)
    top = grid.max(-1)
    return {
        "prototypes": state,
        "labels": probabilities.argmax(-1),
        "probabilities": probabilities,
        "grid_labels": top.indices.reshape(resolution, resolution),
        "grid_confidence": top.values.reshape(resolution, resolution),
    }


# ----------------------------------------------------------------------------------------------------------
# MAML on sinusoids

X_RANGE = (-5.0, 5.0)  # the sinusoid tasks' input range (Finn et al. 2017)


def sinusoid_task(seed: int, shots: int) -> tuple[Task, float, float]:
    """Task ``0`` of ``Sinusoid(seed=seed)`` with ``shots`` support points, and its amplitude and phase."""
    family = Sinusoid(shots=shots, queries=1, seed=seed)
    amplitude, phase = family.parameters(0)
    return family.task(0), amplitude, phase


def adaptation_curves(loaded: Loaded, support: Split, steps: int, inner_lr: float, x: Tensor) -> Tensor:
    """Predictions at ``x`` after 0, 1, ..., ``steps`` SGD steps on the support MSE, ``(steps + 1, n)``.

    Step ``k`` is ``MAML(inner_lr, inner_steps=1).adapt`` applied to the weights of step ``k - 1``, which is
    exactly ``MAML(inner_lr, inner_steps=k).adapt`` from the start (the same operations in the same order; tested).

    Args:
        loaded: a 1-40-40-1 MLP (the meta-learned or the pretrained one).
        support: ``(k, 1)`` inputs and ``(k, 1)`` targets, on any device (moved to the network's).
        x: ``(n, 1)`` inputs to predict.

    Returns:
        The curves on the CPU (the web answers are built there), whatever the network's device.
    """
    one_step = MAML(inner_lr=inner_lr, inner_steps=1)
    device = loaded.device
    support, x = Split(support.x.to(device), support.y.to(device)), x.to(device)
    # no graph is kept; the inner loop still takes its gradients (it enables grad for them itself)
    with loaded.lock, torch.no_grad():
        fast = weights(loaded)
        curves = [one_step.predict(loaded.model, fast, fast, x)]
        for _ in range(steps):
            fast = one_step.adapt(loaded.model, fast, support, 0)
            curves.append(one_step.predict(loaded.model, fast, fast, x))
    return torch.stack(curves)[..., 0].cpu()  # (steps + 1, n)


def neural_process_curve(loaded: Loaded, support: Split, x: Tensor) -> tuple[Tensor, Tensor]:
    """The neural process's predictive mean and standard deviation at ``x`` given the ``k`` points of ``support``
    as its context (:class:`~fewshot.algorithms.neural_process.NeuralProcessLearner`: one forward pass, no weight
    changes); with ``k = 0``, its prior guess.

    Args:
        loaded: the shipped attentive neural process.
        support: ``(k, 1)`` inputs and ``(k, 1)`` targets, ``k >= 0``, on any device (moved to the network's).
        x: ``(n, 1)`` inputs to predict.

    Returns:
        ``mean`` and ``sd``, each ``(n,)``, on the CPU; every ``sd`` is at least 0.1 (the network's floor).
    """
    learner, device = NeuralProcessLearner(), loaded.device
    context = Split(support.x.to(device), support.y.to(device))
    with loaded.lock, torch.no_grad():
        params = weights(loaded)
        state = learner.adapt(loaded.model, params, context, 0)
        mean, sd = learner.distribution(loaded.model, params, state, x.to(device))  # (n, 1) each
    return mean[:, 0].cpu(), sd[:, 0].cpu()


def weights(loaded: Loaded) -> dict[str, Tensor]:
    """The network's weights as a name -> tensor dict for ``functional_call``.

    Not :func:`~fewshot.algorithms.base.parameters_of`, which keeps only tensors that require gradients: the
    shipped networks have gradients switched off, and the inner loop does not need them (it makes its own leaves).
    """
    return dict(loaded.model.named_parameters())


def sinusoid_grid(points: int) -> Tensor:
    """``points`` evenly spaced inputs over the sinusoid range, ``(points, 1)``."""
    return torch.linspace(*X_RANGE, points).unsqueeze(-1)


def true_curve(amplitude: float, phase: float, x: Tensor) -> Tensor:
    """``amplitude * sin(x - phase)``, the sinusoid family's function (Finn et al. 2017)."""
    return amplitude * torch.sin(x - phase)


# ----------------------------------------------------------------------------------------------------------
# One-shot Omniglot


@dataclass(frozen=True)
class OmniglotSupport:
    """One drawing of each of ``ways`` characters from the held-out alphabets (unrotated test classes)."""

    names: list[str]
    images: Tensor  # (ways, 1, 28, 28) uint8, ink 255: the drawings as in the dataset (shown on the page)
    prepared: Tensor  # the same through the drawings' preprocessing (drawing.from_omniglot): what is compared
    seed: int


def omniglot_support(test, ways: int, seed: int) -> OmniglotSupport:
    """Characters for the one-shot page: ``ways`` unrotated classes of ``test`` and one drawing of each.

    The choice is a pure function of ``(seed, ways)``: numpy's generator seeded with ``[seed, ways]``.

    Args:
        test: ``omniglot("test")`` (Vinyals split: alphabets never seen in training).
    """
    upright = [c for c, name in enumerate(test.class_names) if name.endswith("/rot000")]
    rng = np.random.default_rng([seed, ways])
    classes = rng.choice(upright, size=ways, replace=False)
    picks = []
    for c in classes:
        members = torch.nonzero(test.labels == int(c)).flatten()
        picks.append(int(members[rng.integers(len(members))]))
    names = [test.class_names[int(c)].removesuffix("/rot000") for c in classes]
    images = test.images[torch.tensor(picks)]  # (ways, 1, 28, 28)
    prepared = np.stack([drawing.from_omniglot(image[0].numpy()) for image in images])  # (ways, 28, 28)
    return OmniglotSupport(names, images, torch.from_numpy(prepared).unsqueeze(1), seed)


def omniglot_probabilities(loaded: Loaded, support: Tensor, query: Tensor) -> Tensor:
    """ProtoNet class probabilities of ``query`` images given one support image per class.

    Args:
        support: ``(ways, 1, 28, 28)`` uint8 images, class k in row k.
        query: ``(m, 1, 28, 28)`` uint8 images.

    Returns:
        ``(m, ways)`` softmax over negative squared distances to the prototypes, on the CPU (whatever the
        network's device; the images are moved there).
    """
    algorithm = ProtoNet()
    ways, device = support.shape[0], loaded.device
    support_set = Split(support.to(device).float() / 255, torch.arange(ways, device=device))
    with loaded.lock, torch.no_grad():
        params = weights(loaded)
        state = algorithm.adapt(loaded.model, params, support_set, ways)
        logits = algorithm.predict(loaded.model, params, state, query.to(device).float() / 255)  # (m, ways)
        return logits.softmax(-1).cpu()


# ----------------------------------------------------------------------------------------------------------
# In-context learning of 1-D lines

LINE_X_RANGE = (-3.0, 3.0)  # the page's inputs: the training inputs are N(0, 1), so 99.7% of them lie here
LINE_Y_LIMIT = 6.0  # |y| of a sampled task's points (the page's plot)


def line_task(seed: int, shots: int, noise: float) -> tuple[Task, float]:
    """A noisy line ``y = w x + N(0, noise^2)`` with ``shots`` points, ``x, w ~ N(0, 1)``, and its slope ``w``.

    It is the first task ``i = 0, 1, ...`` of ``FunctionTasks(dim=1, shots, noise=noise, seed=seed)`` whose points
    all lie in the page's plot (``|x| <= 3``, ``|y| <= 6``; most tasks do), so a pure function of ``(seed, shots,
    noise)``. Its one query point is unused.
    """
    family = FunctionTasks(dim=1, shots=shots, queries=1, noise=noise, seed=seed)
    for i in range(1000):
        task = family.task(i)
        if task.support.x.abs().max() <= LINE_X_RANGE[1] and task.support.y.abs().max() <= LINE_Y_LIMIT:
            break
    return task, float(family.function_of(i)[0][0])


def line_grid(points: int) -> Tensor:
    """``points`` evenly spaced inputs over the page's range, ``(points, 1)``."""
    return torch.linspace(*LINE_X_RANGE, points).unsqueeze(-1)


_RATES: dict[tuple[int, float], float] = {}
_RATES_LOCK = threading.Lock()


def gradient_step_rate(k: int, noise: float) -> float:
    """The learning rate of one gradient-descent step from ``w = 0`` that is best on prompts of ``k`` noisy 1-D
    lines (:func:`~fewshot.regression_baselines.tuned_gradient_descent`: a closed form over 1000 prompts of
    another seed); computed once per ``(k, noise)`` (a few tenths of a second) and then remembered."""
    with _RATES_LOCK:
        if (k, noise) not in _RATES:
            family = FunctionTasks(dim=1, shots=k, queries=1, noise=noise)
            _RATES[k, noise] = tuned_gradient_descent(family, 1).lr
        return _RATES[k, noise]


def line_fits(loaded: Loaded, support: Split, x: Tensor, noise: float) -> dict[str, dict]:
    """Every method's prediction at ``x`` from the ``k`` points of ``support``, and its slope.

    * ``transformer``: the shipped network reading ``x_1, y_1, ..., x_k, y_k, x_q`` for each query ``x_q``
      (:class:`~fewshot.algorithms.lsa.InContext`): a curve, not necessarily a line. Its ``slope`` is that of the
      least-squares line through its curve on ``x`` (with an intercept).
    * ``least_squares``: ``w = sum(x y) / sum(x^2)`` (the pseudo-inverse: 0 when every ``x`` is 0).
    * ``ridge``: ``w = sum(x y) / (sum(x^2) + noise^2)``, the posterior mean for ``w ~ N(0, 1)``: Bayes-optimal.
    * ``gradient_descent``: one step of ``lr`` from ``w = 0`` on ``1/(2k) sum (w x_i - y_i)^2``, ``lr`` tuned for
      ``k`` (:func:`gradient_step_rate`), which is also returned.

    With no points every estimator predicts 0 (the prior mean) and the transformer reads the query alone.

    Args:
        loaded: the shipped in-context transformer.
        support: ``(k, 1)`` inputs and ``(k,)`` targets, ``0 <= k <= 20``, on the CPU.
        x: ``(m, 1)`` inputs to predict, on the CPU.

    Returns:
        ``{name: {"y": (m,) predictions, "slope": float, ...}}`` with the tensors on the CPU.
    """
    k = len(support.x)
    algorithm, device = InContext(), loaded.device
    with loaded.lock, torch.no_grad():
        params = weights(loaded)
        prompt = Split(support.x.to(device), support.y.to(device))
        state = algorithm.adapt(loaded.model, params, prompt, 0)
        curve = algorithm.predict(loaded.model, params, state, x.to(device)).cpu()  # (m,)
    centred = x[:, 0] - x[:, 0].mean()
    out = {"transformer": {"y": curve, "slope": float((centred * curve).sum() / centred.square().sum())}}
    rate = gradient_step_rate(k, noise)
    estimators = {
        "least_squares": LeastSquares(),
        "ridge": Ridge(penalty=noise**2),
        "gradient_descent": GradientDescent(lr=rate, steps=1),
    }
    for name, estimator in estimators.items():
        w = estimator.adapt(IDENTITY, {}, support, 0)  # (1,) float64
        out[name] = {"y": estimator.predict(IDENTITY, {}, w, x), "slope": float(w[0])}
    out["ridge"]["penalty"] = noise**2
    out["gradient_descent"]["lr"] = rate
    return out


__all__ = [
    "GaussianClusters",
    "adaptation_curves",
    "gradient_step_rate",
    "line_fits",
    "line_grid",
    "line_task",
    "neural_process_curve",
    "omniglot_probabilities",
    "omniglot_support",
    "protonet_2d",
    "sinusoid_grid",
    "sinusoid_task",
    "true_curve",
]
