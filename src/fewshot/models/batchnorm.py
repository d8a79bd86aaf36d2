"""Batch normalisation with a cheaper second derivative, for second-order MAML.

Ioffe & Szegedy (2015). Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
Shift. ICML. arXiv:1502.03167.

Second-order MAML differentiates the support-set *gradient*, so every BatchNorm layer's backward pass is itself
differentiated. PyTorch's built-in double backward of batch norm (``batchnorm_double_backward``) is a
composition of ~75 tensor operations per layer; on the 5-image support batches of conv4 5-way 1-shot it took
~18% of a second-order task's time in a profile on a 2-core CPU. Worked out by hand (below) the same derivative needs five
per-channel reductions and a handful of fused element-wise operations, which made a bf16 second-order conv4
task ~13% faster (41 -> 35 ms at one thread; ``benchmarks/maml_speed.py`` has the end-to-end numbers).

:class:`BatchNorm2d` is ``nn.BatchNorm2d`` with that derivative. It is used only where it applies, i.e. training
mode with batch statistics and no running statistics (``track_running_stats=False``, the MAML setting), outside
``torch.func`` transforms (their custom-function rules are not written here). Everywhere else it *is*
``nn.BatchNorm2d``. Parameters, buffers and state dicts are the same, so models and checkpoints do not change.
Values and all derivatives equal the built-in ones (float64 tests, to any order). A user's own model with plain
``nn.BatchNorm2d`` works the same, only slower.

Derivation, per channel, over the ``m = N * H * W`` entries of a channel, with means ``<.>`` over them:
forward ``x^ = (x - <x>) r`` with ``r = 1 / sqrt(var(x) + eps)``, ``y = gamma x^ + beta``; backward, for an
upstream gradient ``g``: ``dx = gamma r (g - <g> - x^ <g x^>)``, ``dgamma = m <g x^>``, ``dbeta = m <g>``.
Differentiating ``S = sum(u dx) + a dgamma + b dbeta`` (``u, a, b``: the gradients arriving at ``dx, dgamma,
dbeta``) gives, with ``k = a - gamma r <u x^>`` and ``D = <u g> - <g><u> - <g x^><u x^>``:

* ``dS/dg = gamma r u + k x^ + (b - gamma r <u>)``
* ``dS/dgamma = m r D``
* ``dS/dx = r (G - <G> - x^ <G x^>) - gamma r^2 D x^`` where ``G = dS/dx^ = k g - gamma r <g x^> u``; ``<G>``
  and ``<G x^>`` follow from the same five means, so no further pass over the tensor is needed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fewshot.models.utils import in_transform


def batch_norm_train(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)``, with the cheaper double backward.

    Args:
        x: ``(n, channels, *)``, any memory format.
        weight, bias: ``(channels,)`` or None (no affine transform).

    Returns:
        The normalised ``x``, same shape, dtype and layout as the built-in op gives.

    Raises:
        ValueError: with one value per channel (``n * h * w == 1``), as ``F.batch_norm`` does in training: the
            batch variance is 0 and every output would be ``bias``.
    """
    if math.prod((x.shape[0], *x.shape[2:])) == 1:  # n * (spatial size): the values of one channel
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}; give a "
            "batch of at least 2 examples (or larger inputs), or call model.eval() with running statistics"
        )
    return _Normalise.apply(x, weight, bias, eps)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose second derivative is cheaper in training with batch statistics (module docstring).

    Example:
        >>> bn = BatchNorm2d(64, track_running_stats=False)   # the MAML setting: the fast path applies
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.track_running_stats and not in_transform():
            self._check_input_dim(x)
            return batch_norm_train(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def _per_channel(t: Tensor, like: Tensor) -> Tensor:
    """``(channels,)`` -> ``(1, channels, 1, ...)`` in ``like``'s dtype, to broadcast against ``like``."""
    return t.to(like.dtype).view(1, -1, *([1] * (like.dim() - 2)))


class _Normalise(torch.autograd.Function):
    """Forward and backward are the native kernels; the backward is a :class:`_NormaliseBackward`, so that its
    own derivative is the hand-written one."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        affine = weight is not None
        mask = (need_x, affine and need_w, affine and need_b)
        dx, dw, db = _NormaliseBackward.apply(g, x, weight, mean, invstd, ctx.eps, mask)
        return dx, dw, db, None


class _NormaliseBackward(torch.autograd.Function):
    """``(g, x, weight) -> (dx, dweight, dbias)`` by the native backward kernel; its backward is the formula of
    the module docstring, written in differentiable operations, so derivatives of any order are exact."""

    @staticmethod
    def forward(ctx, g, x, weight, mean, invstd, eps, mask):
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean, invstd, True, eps, list(mask)
        )
        ctx.save_for_backward(g, x, weight, mean, invstd)
        ctx.eps = eps
        return dx, dw, db

    @staticmethod
    def backward(ctx, u, a, b):
        g, x, weight, mean, invstd = ctx.saved_tensors
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        dims = [0, *range(2, x.dim())]
        m = x.numel() // x.shape[1]
        acc = torch.promote_types(
            x.dtype, torch.float32
        )  # per-channel sums in float32 at least (bf16 inputs)
        if torch.is_grad_enabled():
            # A third derivative is being built: the saved mean and 1/std are constants to autograd, so
            # recompute them from x with differentiable operations (costs two more reductions).
            xa = x.to(acc)
            mean = xa.mean(dims)
            invstd = torch.rsqrt(xa.var(dims, unbiased=False) + ctx.eps)

        def avg(t: Tensor) -> Tensor:  # per-channel mean over every entry of the channel, (channels,)
            return t.sum(dims, dtype=acc) / m

        r = invstd.to(acc)
        gr = r if weight is None else weight.to(acc) * r  # gamma r
        xh = (x - _per_channel(mean, x)) * _per_channel(invstd, x)  # x^, the normalised input
        g_mean, gx_mean = avg(g), avg(g * xh)
        zero = torch.zeros_like(r)
        a = zero if a is None else a.to(acc)
        b = zero if b is None else b.to(acc)
        if u is None:
            u_mean = ux_mean = ug_mean = zero
        else:
            u_mean, ux_mean, ug_mean = avg(u), avg(u * xh), avg(u * g)
        k = a - gr * ux_mean
        d = ug_mean - g_mean * u_mean - gx_mean * ux_mean
        dg = dx = dw = None
        if need_g:
            dg = torch.addcmul(_per_channel(b - gr * u_mean, x), xh, _per_channel(k, x))
            if u is not None:
                dg = torch.addcmul(dg, u, _per_channel(gr, x))
        if need_x:
            c = -gr * gx_mean  # G = k g + c u
            big_mean = k * g_mean + c * u_mean  # <G>
            big_x_mean = k * gx_mean + c * ux_mean  # <G x^>
            dx = torch.addcmul(_per_channel(-r * big_mean, x), g, _per_channel(r * k, x))
            dx = torch.addcmul(dx, xh, _per_channel(-r * big_x_mean - r * gr * d, x))
            if u is not None:
                dx = torch.addcmul(dx, u, _per_channel(r * c, x))
        if weight is not None and need_w:
            dw = (m * r * d).to(weight.dtype)
        return dg, dx, dw, None, None, None, None


__all__ = ["BatchNorm2d", "batch_norm_train"]
