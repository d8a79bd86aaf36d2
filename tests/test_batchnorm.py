"""fewshot's BatchNorm2d: the same values and derivatives (of every order) as PyTorch's, by a cheaper route."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.maml import MAML
from fewshot.algorithms.routes import meta_gradient
from fewshot.models import Conv4
from fewshot.models.batchnorm import BatchNorm2d, batch_norm_train
from fewshot.tasks.episodes import Split, Task, stack_tasks


def native(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)


def derivatives(norm, x, w, b, order=3):
    """Values, then derivatives of order 1..``order`` of nonlinear functionals, w.r.t. (x, w, b)."""
    leaves = [t for t in (x, w, b) if t is not None]
    g = torch.Generator().manual_seed(1)
    y = norm(x, w, b)
    out = [y]
    f = (y.sin() * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + 0.3 * (y**3).sum()
    for _ in range(order):
        grads = torch.autograd.grad(f, leaves, create_graph=True)
        out.extend(grads)
        f = sum((gr.cos() * torch.randn(gr.shape, generator=g, dtype=gr.dtype)).sum() for gr in grads)
    return out


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "2d"])
@pytest.mark.parametrize("affine", [True, False])
def test_values_and_first_two_derivatives_equal_pytorch(layout, affine):
    g = torch.Generator().manual_seed(0)
    shape = (6, 3) if layout == "2d" else (5, 3, 4, 4)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    w0 = torch.randn(3, generator=g, dtype=torch.float64) if affine else None
    b0 = torch.randn(3, generator=g, dtype=torch.float64) if affine else None

    def leaves():
        return [None if t is None else t.clone().requires_grad_() for t in (x0, w0, b0)]

    ours, theirs = derivatives(batch_norm_train, *leaves(), order=2), derivatives(native, *leaves(), order=2)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10 * b.abs().max().item())


def third_order_objective(norm, x, w, b):
    """A scalar built from second derivatives of ``norm``: its gradient needs third derivatives."""
    return derivatives(norm, x, w, b, order=2)[-3:]


def test_third_derivative_matches_finite_differences():
    """PyTorch's own batch-norm third derivative is not exact (torch 2.13: its double backward treats the saved
    1/std as a constant; on this test it is off by a few percent), so ours is checked against central differences instead."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) * 2 + 0.5
    w0, b0 = (
        torch.randn(3, generator=g, dtype=torch.float64),
        torch.randn(3, generator=g, dtype=torch.float64),
    )
    direction = torch.randn(x0.shape, generator=g, dtype=torch.float64)

    def objective(x):
        w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
        return sum((d * torch.linspace(-1, 1, d.numel(), dtype=d.dtype).view_as(d)).sum()
                   for d in third_order_objective(batch_norm_train, x, w, b))  # fmt: skip

    x = x0.clone().requires_grad_()
    analytic = (torch.autograd.grad(objective(x), x)[0] * direction).sum().item()

    def central(h):
        up, down = (objective((x0 + s * h * direction).requires_grad_()).item() for s in (1, -1))
        return (up - down) / (2 * h)

    richardson = (4 * central(5e-5) - central(1e-4)) / 3  # error O(h^4)
    assert abs(analytic - richardson) < 1e-6 * max(1.0, abs(analytic))


def test_second_derivative_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(batch_norm_train, (x, w, b), eps=1e-6, atol=1e-8, rtol=1e-6)


def conv4_pair(dtype):
    """Two Conv4 with identical weights: fewshot's BatchNorm2d, and PyTorch's nn.BatchNorm2d in its place."""
    torch.manual_seed(0)
    ours = Conv4(out_features=3, track_running_stats=False, image_size=16).to(dtype)
    torch.manual_seed(0)
    theirs = Conv4(out_features=3, track_running_stats=False, image_size=16).to(dtype)
    for block in theirs.encoder:
        plain = nn.BatchNorm2d(block[1].num_features, track_running_stats=False).to(dtype)
        plain.load_state_dict(block[1].state_dict())
        block[1] = plain
    assert isinstance(ours.encoder[0][1], BatchNorm2d)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    return ours, theirs


def image_tasks(dtype, n=3, ways=3, queries=2):
    g = torch.Generator().manual_seed(0)
    tasks = [
        Task(
            Split(torch.randn(ways, 1, 16, 16, generator=g, dtype=dtype), torch.arange(ways)),
            Split(
                torch.randn(ways * queries, 1, 16, 16, generator=g, dtype=dtype),
                torch.arange(ways).repeat(queries),
            ),
            ways,
        )
        for _ in range(n)
    ]
    return stack_tasks(tasks)


@pytest.mark.parametrize("route", ["loop", "threads"])
def test_second_order_maml_meta_gradient_equals_pytorch_batchnorm(route):
    ours, theirs = conv4_pair(torch.float64)
    tasks = image_tasks(torch.float64)
    maml = MAML(inner_lr=0.4, inner_steps=2)
    a, loss_a = meta_gradient(maml, ours, parameters_of(ours), tasks, route=route, workers=2)
    b, loss_b = meta_gradient(maml, theirs, parameters_of(theirs), tasks, route=route, workers=2)
    assert torch.allclose(loss_a, loss_b, rtol=1e-12)
    for name in b:
        scale = b[name].abs().max().item()
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-9 * max(scale, 1e-3)), name


def test_bf16_autocast_meta_gradient_stays_within_rounding_of_pytorch():
    """Under bf16 autocast both round the same activations; ours sums per channel in float32, so the two differ
    only by rounding (a few percent of an entry at most), never by a wrong term."""
    ours, theirs = conv4_pair(torch.float32)
    tasks = image_tasks(torch.float32)
    maml = MAML(inner_lr=0.4, inner_steps=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ours, y_theirs = ours(tasks.support.x[0]), theirs(tasks.support.x[0])
        a, _ = meta_gradient(maml, ours, parameters_of(ours), tasks)
        b, _ = meta_gradient(maml, theirs, parameters_of(theirs), tasks)
    assert y_ours.dtype == y_theirs.dtype and torch.equal(y_ours, y_theirs)
    # conv biases are left out: BatchNorm cancels them, so their true meta-gradient is 0 (rounding only)
    names = [n for n in b if not (n.startswith("encoder.") and n.endswith(".0.bias"))]
    diff = torch.cat([(a[n] - b[n]).flatten() for n in names]).norm()
    assert diff / torch.cat([b[n].flatten() for n in names]).norm() < 0.05


def test_outside_its_case_it_is_the_pytorch_layer():
    """Eval mode, running statistics and torch.func transforms all take nn.BatchNorm2d's own forward."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, 3)
    for track in (True, False):
        ours, theirs = BatchNorm2d(2, track_running_stats=track), nn.BatchNorm2d(2, track_running_stats=track)
        for mode in (True, False):
            ours.train(mode), theirs.train(mode)
            assert torch.equal(ours(x), theirs(x))
        assert all(
            torch.equal(p, q)
            for p, q in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True)
        )
    ours = BatchNorm2d(2, track_running_stats=False)
    params = dict(ours.named_parameters())
    loss = lambda p: torch.func.functional_call(ours, p, (x,)).square().mean()  # noqa: E731
    inside = torch.func.grad(loss)(params)
    outside = torch.autograd.grad(loss(params), list(params.values()))
    assert all(torch.allclose(i, o) for i, o in zip(inside.values(), outside, strict=True))
    with pytest.raises(ValueError, match="4D"):
        ours(torch.randn(4, 2))


@pytest.mark.parametrize("track_running_stats", [False, True])
def test_one_value_per_channel_raises_in_training_as_pytorch_does(track_running_stats):
    # one 1x1 image: the batch variance is 0 and every output would silently be the bias
    ours = BatchNorm2d(4, track_running_stats=track_running_stats)
    theirs = nn.BatchNorm2d(4, track_running_stats=track_running_stats)
    x = torch.randn(1, 4, 1, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel") as raised:
        ours(x)
    with pytest.raises(type(raised.value), match="more than 1 value per channel"):
        theirs(x)
    if not track_running_stats:
        assert "batch of at least 2" in str(raised.value)  # and says what to change
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            batch_norm_train(x, None, None)
    # two values per channel are enough, in either dimension
    for shape in ((2, 4, 1, 1), (1, 4, 1, 2)):
        y = torch.randn(shape)
        assert torch.allclose(ours(y), theirs(y))
    # evaluation mode: with running statistics it normalises one 1x1 image, as PyTorch does; without them it
    # takes batch statistics even in eval() and raises, as PyTorch does
    ours.eval(), theirs.eval()
    if track_running_stats:
        assert torch.equal(ours(x), theirs(x))
    else:
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            ours(x)
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            theirs(x)
