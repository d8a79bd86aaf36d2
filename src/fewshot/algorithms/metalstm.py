"""The meta-learner LSTM: an LSTM whose cell state is the learner's weights learns how to update them.

Ravi & Larochelle (2017). Optimization as a Model for Few-Shot Learning. ICLR. (Authors' code, Lua:
twitter/meta-learning-lstm, ``model/lstm/meta-learner-lstm.lua`` and ``lstm-helper.lua``.)

A gradient step ``theta_t = theta_{t-1} - lr * grad_t`` is the cell update of an LSTM,
``c_t = f_t * c_{t-1} + i_t * (-grad_t)``, with forget gate ``f_t = 1`` and input gate ``i_t = lr``. Here the
gates are learned, per coordinate of the learner's weights (every coordinate shares the meta-learner's weights):

* a first, ordinary LSTM (``hidden`` units) reads the preprocessed loss and gradient of each coordinate
  (Andrychowicz et al. 2016, section 3.2, p = 10: 2 numbers each, 4 inputs) and outputs ``x_t``;
* ``f_t = sigmoid(w_F . [x_t, theta_{t-1}, f_{t-1}] + b_F)`` and ``i_t = sigmoid(w_I . [x_t, theta_{t-1}, i_{t-1}]
  + b_I)``, then ``theta_t = f_t * theta_{t-1} - i_t * grad_t``, starting from ``theta_0`` = the model's own
  (meta-learned) weights and ``f_0 = i_0 = 0``.

The loss and gradient fed to the meta-learner are constants (the paper ignores second derivatives through the
learner's gradient): they are computed at detached weights, so the meta-gradient flows through the gates (into
the meta-learner's weights, also via ``theta_{t-1}`` and the LSTM states) and through ``theta_0`` into the
initial weights.

Where this module differs from the authors' code, and why: the gates read the previous gate *values*, as in
the paper's equations 2 and 3 (the code feeds the pre-sigmoid values); the gradient is that of the mean support
loss (the code divides it once more by the batch size); every update uses the whole support set (as the code's
5-way settings do: batches of 25 for 5-shot, 5 for 1-shot); BatchNorm uses batch statistics at test time too;
the meta-gradient is not clipped (the code clips its norm at 0.25; the trainer here has no outer clipping).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import (
    AdaptsByGradient,
    AlgorithmSpec,
    Params,
    all_finite,
    call,
    check_range,
    grad_and_value,
    loss_fn,
    setting,
)
from fewshot.algorithms.maml import GRADIENT_ROUTES, check_model, classifier, keep_strides
from fewshot.learned_optimizer import preprocess  # (log|g| / p, sign g), p = 10, as Ravi & Larochelle
from fewshot.tasks.episodes import Split

PREFIX = "metalstm."


def meta_step(meta: Params, state: tuple[Tensor, ...], grad: Tensor, loss: Tensor) -> tuple[Tensor, ...]:
    """One update of the learner's flat weights by the meta-learner.

    Args:
        meta: the meta-learner's weights (keys without the prefix: ``lstm.weight`` ``(4 + H, 4H)``,
            ``lstm.bias`` ``(4H,)``, ``forget.weight`` / ``input.weight`` ``(H + 2,)``, ``forget.bias`` /
            ``input.bias`` ``()``).
        state: ``(h, c, f, i, theta)``: the first LSTM's state ``(n, H)`` each, the previous gates ``(n,)`` and
            the learner's weights ``(n,)`` (the second layer's cell state), for ``n`` learner coordinates.
        grad: the learner's gradient ``(n,)`` at ``theta``, a constant.
        loss: the learner's loss ``()`` at ``theta``, a constant.

    Returns:
        The next state; its last entry is the updated weights ``theta_t``.
    """
    h, c, f, i, theta = state
    hidden = h.shape[-1]
    n = theta.shape[0]
    inputs = torch.cat([preprocess(loss).expand(n, 2), preprocess(grad)], -1)  # (n, 4): loss, gradient
    z = torch.cat([inputs, h], -1) @ meta["lstm.weight"] + meta["lstm.bias"]  # (n, 4H)
    gate_in, gate_forget, gate_out, cell_in = z.split(hidden, -1)  # the authors' order
    c = torch.sigmoid(gate_forget) * c + torch.sigmoid(gate_in) * torch.tanh(cell_in)
    x = torch.sigmoid(gate_out) * torch.tanh(c)  # (n, H): x_t, the first layer's output

    def gate(name: str, previous: Tensor) -> Tensor:
        # w . [x_t, theta_{t-1}, gate_{t-1}] + b, without concatenating (n, H + 2)
        w = meta[name + ".weight"]
        return torch.sigmoid(
            x @ w[:hidden] + theta * w[hidden] + previous * w[hidden + 1] + meta[name + ".bias"]
        )

    f, i = gate("forget", f), gate("input", i)
    return x, c, f, i, f * theta - i * grad  # the cell update: theta_t = f_t theta_{t-1} + i_t (-grad_t)


@dataclass(frozen=True)
class MetaLSTM(AdaptsByGradient):
    """The meta-learner LSTM (Ravi & Larochelle 2017): learned updates of a learned initialisation.

    Args:
        inner_steps: updates of the learner per task, each on the whole support set.
        hidden: units of the meta-learner's first LSTM layer (20 in the paper).
        check_finite: raise on a NaN or Inf learner gradient (values cannot be read under vmap).

    The state returned by :meth:`adapt` is the adapted weight dict; :meth:`predict` runs the model with it.
    The meta-learner's weights come from :meth:`extra_params` (keys ``metalstm.*``), optimised with the model's.

    Example:
        >>> algo = MetaLSTM(inner_steps=5)
        >>> params = parameters_of(model) | algo.extra_params(model)   # optimise both
        >>> loss, logits = task_loss(algo, model, params, task)
    """

    inner_steps: int = 5
    hidden: int = 20
    check_finite: bool = True

    def __post_init__(self) -> None:
        check_range(self, {"inner_steps": 0, "hidden": 1})

    def extra_params(self, model: nn.Module) -> Params:
        """The meta-learner's weights, drawn from the global RNG (as ``nn.Module`` weights are) like the authors':
        every weight from U(-0.01, 0.01), the forget-gate bias from U(4, 5) (``f ~ 0.98-0.99``) and the
        input-gate bias from U(-5, -4) (``i ~ 0.007-0.018``, a small step size), so training starts near SGD."""
        like = next(model.parameters())
        k = self.hidden

        def uniform(shape: tuple[int, ...], low: float, high: float) -> Tensor:
            w = torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(low, high)
            return w.requires_grad_()

        return {
            PREFIX + "lstm.weight": uniform((4 + k, 4 * k), -0.01, 0.01),  # rows: 4 inputs, then h_{t-1}
            PREFIX + "lstm.bias": uniform((4 * k,), -0.01, 0.01),
            PREFIX + "forget.weight": uniform((k + 2,), -0.01, 0.01),  # x_t, then theta_{t-1}, f_{t-1}
            PREFIX + "forget.bias": uniform((), 4.0, 5.0),
            PREFIX + "input.weight": uniform((k + 2,), -0.01, 0.01),
            PREFIX + "input.bias": uniform((), -5.0, -4.0),
        }

    def adapt(self, model: nn.Module, params: Params, support: Split, ways: int) -> Params:
        check_model(model)  # inner steps would write running statistics into the shared buffers
        meta = {k[len(PREFIX) :]: v for k, v in params.items() if k.startswith(PREFIX)}
        if len(meta) != 6:
            raise ValueError(
                "the meta-learner's weights are missing; pass parameters_of(model) | algo.extra_params(model)"
            )
        names = [n for n, _ in model.named_parameters() if n in params]
        sizes = [params[n].numel() for n in names]

        def unflatten(flat: Tensor) -> Params:
            pieces = flat.split(sizes)
            return {
                n: keep_strides(p.view(params[n].shape), params[n])
                for n, p in zip(names, pieces, strict=True)
            }

        def support_loss(weights: Params) -> Tensor:
            return loss_fn(call(model, weights, support.x), support.y, ways)

        theta = torch.cat([params[n].reshape(-1) for n in names])  # (n,): c_0, the learned initial weights
        zeros = theta.new_zeros(theta.shape[0], self.hidden)
        state = (zeros, zeros, theta.new_zeros(theta.shape), theta.new_zeros(theta.shape), theta)
        # the meta-learner in full precision: under bf16 autocast its matmuls would round f ~ 0.99 to steps of
        # 2^-8 (the meta device, shapes only, has no autocast to turn off)
        kind = theta.device.type
        exact = torch.amp.is_autocast_available(kind)
        for step in range(self.inner_steps):
            # the learner's loss and gradient at detached weights: constant inputs to the meta-learner
            grads, loss = grad_and_value(support_loss, unflatten(state[-1].detach()), create_graph=False)
            if self.check_finite and not all_finite(grads):
                raise FloatingPointError(f"learner update {step + 1} met a NaN or Inf gradient")
            grad = torch.cat([grads[n].reshape(-1) for n in names])
            with torch.autocast(kind, enabled=False) if exact else contextlib.nullcontext():
                state = meta_step(meta, state, grad, loss.detach())
        return unflatten(state[-1])

    def predict(self, model: nn.Module, params: Params, state: Params, x: Tensor) -> Tensor:
        return call(model, state, x)


@dataclass(frozen=True)
class MetaLSTMSettings:
    inner_steps: int = setting(
        5,
        "learner updates per task, each on the whole support set (5: the authors' code for 1-shot tasks; "
        "8 for 5-shot)",
    )
    test_inner_steps: int | None = setting(
        None,
        "updates at validation and test (none: inner_steps, the number the meta-learner was trained for)",
    )
    lstm_hidden: int = setting(
        20, "units of the meta-learner's first LSTM layer (20: Ravi & Larochelle 2017)"
    )

    def __post_init__(self) -> None:
        check_range(self, {"inner_steps": 1, "test_inner_steps": 1, "lstm_hidden": 1})


def _build(s: MetaLSTMSettings, testing: bool) -> MetaLSTM:
    steps = s.test_inner_steps if testing and s.test_inner_steps is not None else s.inner_steps
    return MetaLSTM(steps, s.lstm_hidden)


SPEC = AlgorithmSpec(
    name="metalstm",
    summary="meta-learner LSTM: learned gates update the weights, and the initial weights are learned "
    "(Ravi & Larochelle 2017)",
    build=_build, model=classifier, settings=MetaLSTMSettings, fixed_ways=True, data=("images", "vectors"),
    routes=GRADIENT_ROUTES,
)  # fmt: skip
