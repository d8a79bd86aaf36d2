"""A learned optimizer: a coordinate-wise LSTM meta-trained to minimise functions.

Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient descent" (arXiv 1606.04474):
one small two-layer LSTM, shared by every coordinate of the optimizee's parameters, reads that coordinate's
gradient and proposes its update, ``theta_{t+1} = theta_t + g_t``. It is meta-trained by truncated
backpropagation through time on the summed optimizee losses of an unroll, the optimizee's gradients taken as
inputs (no second derivatives).

Addition to the paper: the update is ``out_scale * (W h + b) + a * grad`` with a scalar ``a`` (``linear``).
The paper's update is bounded (``|h| < 1``) and sees the gradient only through its log-magnitude and sign, so
no setting of its weights is plain SGD; with ``W = b = 0`` and ``a = -lr`` this net *is* SGD, which lets the
whole stepping machinery be tested against ``torch.optim.SGD``. ``a`` is a buffer, 0 unless set (by
:meth:`LSTMOptimizerNet.sgd`), and is not meta-trained, so a trained net is the paper's optimizer.
(Meta-training ``a`` as well diverged on quadratics: each Adam step moves it by about ``meta_lr``, and SGD
with a step of 0.03 already diverges on some of them.)

Example:
    >>> net, losses = meta_train(Quadratics(batch=128), steps=500, seed=0)
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = LearnedOptimizer(model.parameters(), net)
    >>> model(torch.ones(2, 3)).sum().backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot import io
from fewshot.datasets.base import ClassDataset
from fewshot.progress import progress

_FORMAT = "fewshot-learned-optimizer/1"
# (h, c), each (layers, hidden, n): one LSTM state per coordinate, coordinates last so that every gate of the
# (4 hidden, n) gate matrix is a contiguous block (elementwise ops on strided gate slices ran ~10x slower)
State = tuple[Tensor, Tensor]
Loss = Callable[[list[Tensor]], Tensor]  # parameters (as in Problem.params) -> scalar loss


def _tanh(x: Tensor) -> Tensor:
    # tanh x = 2 sigmoid(2x) - 1: the same function, but torch's CPU tanh ran ~5x slower than its sigmoid here
    return 2 * torch.sigmoid(2 * x) - 1


def preprocess(grad: Tensor, p: float = 10.0) -> Tensor:
    """The paper's gradient preprocessing (appendix A): ``(log|g| / p, sign g)`` if ``|g| >= e^-p``, else
    ``(-1, e^p g)``. Keeps the scale information of gradients spanning many orders of magnitude.

    Args:
        grad: gradients, shape ``(n,)``.
        p: 10 in the paper.

    Returns:
        LSTM inputs, shape ``(n, 2)``.
    """
    big = grad.abs() >= math.exp(-p)
    log_part = grad.abs().clamp_min(math.exp(-p)).log() / p  # clamp: no log(0) = -inf, even unused
    first = torch.where(big, log_part, torch.full_like(grad, -1.0))
    second = torch.where(big, grad.sign(), math.exp(p) * grad)
    return torch.stack([first, second], dim=-1)


class LSTMOptimizerNet(nn.Module):
    """The coordinate-wise LSTM optimizer (Andrychowicz et al. 2016, section 2.1): two layers of 20 units.

    Args:
        hidden: units per LSTM layer (20 in the paper).
        layers: LSTM layers (2 in the paper).
        out_scale: factor on the LSTM's linear output (0.1 in the paper).
        p: preprocessing constant (10 in the paper).
        seed: initialises the weights uniformly in ``+-1/sqrt(hidden)`` (PyTorch's LSTM rule) from its own
            generator; the global RNG is not touched.
    """

    def __init__(
        self, hidden: int = 20, layers: int = 2, out_scale: float = 0.1, p: float = 10.0, seed: int = 0
    ) -> None:
        super().__init__()
        self.hidden, self.layers, self.out_scale, self.p = hidden, layers, out_scale, p
        # gates (input, forget, cell, output) stacked as in nn.LSTM; layer 0 reads the 2 preprocessed values
        self.weight_ih = nn.ParameterList(
            [nn.Parameter(torch.empty(4 * hidden, 2 if i == 0 else hidden)) for i in range(layers)]
        )
        self.weight_hh = nn.ParameterList(
            [nn.Parameter(torch.empty(4 * hidden, hidden)) for _ in range(layers)]
        )
        self.bias = nn.ParameterList([nn.Parameter(torch.empty(4 * hidden)) for _ in range(layers)])
        self.out_weight = nn.Parameter(torch.empty(hidden))
        self.out_bias = nn.Parameter(torch.empty(()))
        self.register_buffer("linear", torch.zeros(()))  # a: the coefficient of the raw gradient (module doc)
        g = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(hidden)
        with torch.no_grad():
            for w in (*self.weight_ih, *self.weight_hh, *self.bias, self.out_weight, self.out_bias):
                w.uniform_(-bound, bound, generator=g)

    @classmethod
    def sgd(cls, lr: float, dtype: torch.dtype = torch.float32, **kwargs) -> LSTMOptimizerNet:
        """A net of ``dtype`` whose update is exactly ``-lr * grad``: SGD (output weights 0, ``a = -lr``).

        ``a`` is set after the cast: ``sgd(lr).double()`` would carry ``lr`` rounded to float32.
        """
        net = cls(**kwargs).to(dtype)
        with torch.no_grad():
            net.out_weight.zero_()
            net.out_bias.zero_()
            net.linear.fill_(-lr)
        return net

    def initial_state(self, n: int, dtype: torch.dtype | None = None, device=None) -> State:
        """Zero LSTM states for ``n`` coordinates: ``(h, c)``, each ``(layers, hidden, n)``."""
        dtype = dtype or self.out_weight.dtype
        zeros = torch.zeros(self.layers, self.hidden, n, dtype=dtype, device=device)
        return zeros, zeros.clone()

    def forward(self, grad: Tensor, state: State) -> tuple[Tensor, State]:
        """Updates for ``n`` coordinates from their gradients.

        Args:
            grad: gradients, shape ``(n,)``; data (the paper drops the optimizee's second derivatives).
            state: ``(h, c)``, each ``(layers, hidden, n)``.

        Returns:
            The update to add to the parameters, shape ``(n,)``, and the new state.
        """
        x = preprocess(grad, self.p).T  # (2, n)
        hs, cs = [], []
        for i in range(self.layers):
            gates = torch.addmm(self.bias[i][:, None], self.weight_ih[i], x) + self.weight_hh[i] @ state[0][i]
            in_gate, forget, cell, out_gate = gates.chunk(4)  # each (hidden, n)
            c = torch.sigmoid(forget) * state[1][i] + torch.sigmoid(in_gate) * _tanh(cell)
            x = torch.sigmoid(out_gate) * _tanh(c)  # (hidden, n): h of this layer, input of the next
            hs.append(x)
            cs.append(c)
        update = self.out_scale * (self.out_weight @ x + self.out_bias) + self.linear * grad  # (n,)
        return update, (torch.stack(hs), torch.stack(cs))

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the weights and settings as safetensors, atomically (temporary file, then rename)."""
        settings = dict(hidden=self.hidden, layers=self.layers, out_scale=self.out_scale, p=self.p)
        meta = {"format": _FORMAT, **{k: repr(v) for k, v in settings.items()}}
        return io.save_tensors(path, self.state_dict(), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LSTMOptimizerNet:
        """Reads a net written by :meth:`save`; a missing, damaged or foreign file raises a ValueError."""
        tensors, meta = io.load_tensors_and_metadata(path)
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not a learned-optimizer file (format {meta.get('format')!r}, expected "
                f"{_FORMAT!r}); write one with LSTMOptimizerNet.save"
            )
        net = cls(int(meta["hidden"]), int(meta["layers"]), float(meta["out_scale"]), float(meta["p"]))
        net = net.to(tensors["out_weight"].dtype)  # before loading, so float64 weights are not rounded
        net.load_state_dict(tensors)
        return net


class LearnedOptimizer(torch.optim.Optimizer):
    """A trained :class:`LSTMOptimizerNet` used like any optimizer: ``loss.backward(); opt.step()``.

    Each parameter's LSTM state is kept in ``self.state[p]`` as ``"h"`` and ``"c"``, each
    ``(layers, hidden, p.numel())``. The net is not trained here. Gradients are cast to the net's dtype and
    updates to the parameter's dtype.

    Args:
        params: parameters (or parameter groups) to optimise.
        net: the trained net.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], net: LSTMOptimizerNet) -> None:
        if not isinstance(net, LSTMOptimizerNet):
            raise TypeError(
                "net must be an LSTMOptimizerNet (from meta_train or LSTMOptimizerNet.load), "
                f"got {type(net).__name__}"
            )
        super().__init__(params, defaults={})
        self.net = net

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        dtype = self.net.out_weight.dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["h"], state["c"] = self.net.initial_state(p.numel(), dtype, p.device)
                update, (state["h"], state["c"]) = self.net(
                    p.grad.reshape(-1).to(dtype), (state["h"], state["c"])
                )
                p.add_(update.view_as(p).to(p.dtype))
        return loss


# ----------------------------------------------------------------------------------------------------------
# Optimizees: a problem is a list of initial parameters and a loss function of such a list.


class Problem(NamedTuple):
    params: list[Tensor]  # initial parameters (any shapes)
    loss: Loss


class Quadratics:
    """Random quadratics ``f(theta) = ||W theta - y||^2``, ``W`` (dim, dim) and ``y`` (dim,) standard normal
    (the paper's section 3.1), ``theta_0 ~ N(0, 0.01^2)`` as in the paper's code.

    ``batch`` independent functions make one problem: the loss is their *sum*, so each coordinate sees the
    gradient of its own function, exactly as if optimised alone (the optimizer is coordinate-wise). Call with
    a ``torch.Generator`` to draw a :class:`Problem`; its parameter has shape ``(batch, dim)``.
    """

    def __init__(self, dim: int = 10, batch: int = 1, dtype: torch.dtype = torch.float32) -> None:
        self.dim, self.batch, self.dtype = dim, batch, dtype

    def __call__(self, generator: torch.Generator) -> Problem:
        kw = dict(generator=generator, dtype=self.dtype)
        w = torch.randn(self.batch, self.dim, self.dim, **kw)
        y = torch.randn(self.batch, self.dim, **kw)
        theta = 0.01 * torch.randn(self.batch, self.dim, **kw)  # 0.01: stddev in the paper's code
        return Problem([theta], lambda ps: ((w @ ps[0].unsqueeze(-1)).squeeze(-1) - y).square().sum())


class OmniglotMLP:
    """An MLP with one hidden layer (20 sigmoid units, as the paper's MNIST experiment) classifying flattened
    images of ``ways`` classes drawn from ``dataset``, all drawings of each (20 on Omniglot: 200 images for 10
    ways) in one full batch; mean cross-entropy. Parameters ``W1 (784, hidden), b1 (hidden,), W2 (hidden,
    ways), b2 (ways,)``, weights uniform in ``+-1/sqrt(fan_in)``, biases zero.
    """

    def __init__(self, dataset: ClassDataset, ways: int = 10, hidden: int = 20) -> None:
        if ways > dataset.num_classes:
            raise ValueError(f"ways={ways} but the dataset has {dataset.num_classes} classes; use fewer ways")
        self.x = dataset.images.flatten(1).float() / 255  # (n, 784)
        self.labels, self.ways, self.hidden = dataset.labels, ways, hidden
        order = torch.argsort(self.labels, stable=True)
        self.by_class = order.split(torch.bincount(self.labels, minlength=dataset.num_classes).tolist())

    def __call__(self, generator: torch.Generator) -> Problem:
        classes = torch.randperm(len(self.by_class), generator=generator)[: self.ways]
        rows = [self.by_class[c] for c in classes.tolist()]
        x = self.x[torch.cat(rows)]  # (ways * drawings, 784)
        y = torch.cat([torch.full((len(r),), k) for k, r in enumerate(rows)])
        d = x.shape[1]
        w1 = (torch.rand(d, self.hidden, generator=generator) * 2 - 1) / math.sqrt(d)
        w2 = (torch.rand(self.hidden, self.ways, generator=generator) * 2 - 1) / math.sqrt(self.hidden)
        params = [w1, torch.zeros(self.hidden), w2, torch.zeros(self.ways)]

        def loss(ps: list[Tensor]) -> Tensor:
            return F.cross_entropy(torch.sigmoid(x @ ps[0] + ps[1]) @ ps[2] + ps[3], y)

        return Problem(params, loss)


# ----------------------------------------------------------------------------------------------------------
# Meta-training by truncated backpropagation through time


def unroll(
    net: LSTMOptimizerNet, loss: Loss, params: list[Tensor], grad: Tensor, state: State, steps: int
) -> tuple[Tensor, list[Tensor], Tensor, State]:
    """``steps`` optimizer steps from ``params``; meta-loss ``sum_{t=1..steps} f(theta_t)`` (all w_t = 1).

    Args:
        net: the optimizer.
        loss: the optimizee's loss function.
        params: current parameters (any shapes; must require grad if they are leaves).
        grad: the gradient at ``params``, flattened and concatenated, shape ``(n,)``, no graph.
        state: LSTM state for the ``n`` coordinates.
        steps: how many updates.

    Returns:
        The meta-loss (with a graph to the net's weights), the new parameters, their gradient (no graph) and
        the new state. The optimizee's gradients enter as data, ``d theta_{t+1} / d theta_t = I`` (the paper's
        assumption), so no second derivatives are formed.
    """
    meta_loss = torch.zeros((), dtype=grad.dtype)
    for _ in range(steps):
        update, state = net(grad, state)
        params = [
            p + u.view_as(p) for p, u in zip(params, update.split([p.numel() for p in params]), strict=True)
        ]
        value = loss(params)
        meta_loss = meta_loss + value
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params, retain_graph=True)])
    return meta_loss, params, grad, state


def meta_train(
    make_problem: Callable[[torch.Generator], Problem],
    steps: int,
    unroll_steps: int = 20,
    optimizee_steps: int = 100,
    meta_lr: float = 1e-3,
    seed: int = 0,
    net: LSTMOptimizerNet | None = None,
    max_seconds: float | None = None,
    show_progress: bool = False,
) -> tuple[LSTMOptimizerNet, list[float]]:
    """Meta-trains a learned optimizer with Adam by truncated backpropagation through time (paper, section 2).

    Each optimizee run of ``optimizee_steps`` steps from a fresh ``make_problem(generator)`` is cut into
    truncations of ``unroll_steps``; each truncation is one Adam step on its meta-loss (:func:`unroll`). The
    parameters and LSTM states are carried to the next truncation with their graphs cut.

    Args:
        make_problem: ``generator -> Problem``, e.g. :class:`Quadratics` or :class:`OmniglotMLP`.
        steps: meta-updates (truncations) at most.
        unroll_steps: optimizee steps per truncation (20 in the paper).
        optimizee_steps: steps of one optimizee run (100 in the paper); a multiple of ``unroll_steps``.
        meta_lr: Adam's learning rate for the net.
        seed: seeds the problems (and the net's initialisation when ``net`` is None).
        net: a net to train further (in place); default a new ``LSTMOptimizerNet(seed=seed)``.
        max_seconds: stop after this much wall time, whatever ``steps`` is.
        show_progress: a progress bar (or lines) on stderr.

    Returns:
        The trained net and the meta-loss of each truncation divided by ``unroll_steps``. A truncation whose
        meta-loss or meta-gradient is not finite (the optimizee diverged) makes no update, ends that
        optimizee's run, and appears in the list as ``inf`` or ``nan``.
    """
    if optimizee_steps % unroll_steps:
        raise ValueError(
            f"optimizee_steps={optimizee_steps} must be a multiple of unroll_steps={unroll_steps}"
        )
    net = net if net is not None else LSTMOptimizerNet(seed=seed)
    weights = list(net.parameters())
    meta_opt = torch.optim.Adam(weights, lr=meta_lr)
    generator = torch.Generator().manual_seed(seed)
    start, history, done = time.monotonic(), [], optimizee_steps
    for _ in progress(range(steps), "meta-training", enabled=show_progress):
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            break
        if done == optimizee_steps:  # a new optimizee
            params, loss = make_problem(generator)
            params = [p.detach().to(net.out_weight.dtype).requires_grad_() for p in params]
            grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss(params), params)])
            state, done = net.initial_state(grad.numel()), 0
        meta_loss, params, grad, state = unroll(net, loss, params, grad, state, unroll_steps)
        meta_opt.zero_grad()
        meta_loss.backward()
        finite = all(bool(torch.isfinite(w.grad).all()) for w in weights)  # finite loss and gradient
        if finite:
            meta_opt.step()
        params = [p.detach().requires_grad_() for p in params]  # truncate: the next unroll starts a new graph
        state = (state[0].detach(), state[1].detach())
        done = done + unroll_steps if finite else optimizee_steps  # a diverged optimizee is dropped
        history.append(meta_loss.item() / unroll_steps)
    return net, history


def optimize(
    problem: Problem, make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer], steps: int
) -> Tensor:
    """Runs an ordinary optimizer loop (``zero_grad``, ``backward``, ``step``) on a problem.

    Returns:
        The loss before each step and after the last, shape ``(steps + 1,)``.
    """
    params = [p.detach().clone().requires_grad_() for p in problem.params]
    opt = make_optimizer(params)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        value = problem.loss(params)
        value.backward()
        opt.step()
        losses.append(value.detach())
    with torch.no_grad():
        losses.append(problem.loss(params))
    return torch.stack(losses)
