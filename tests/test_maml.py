"""Exactness of the optimisation-based family: every route and every shortcut against first principles."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fewshot.algorithms.base import loss_fn, parameters_of, task_loss
from fewshot.algorithms.maml import MAML, anil, check_model, fomaml
from fewshot.algorithms.metasgd import MetaSGD
from fewshot.algorithms.reptile import Reptile
from fewshot.algorithms.routes import meta_gradient, task_at
from fewshot.baselines import pretrain_jointly
from fewshot.models import MLP, Conv4
from fewshot.tasks.episodes import Split, Task, stack_tasks
from fewshot.tasks.regression import Sinusoid

torch.set_default_dtype(torch.float32)


def mlp64(hidden=(8, 8)) -> nn.Module:
    torch.manual_seed(0)
    return MLP(1, hidden, 1).double()


def sinusoids(n=4, shots=5, queries=6) -> Task:
    return Sinusoid(shots=shots, queries=queries, seed=3, dtype=torch.float64).batch(range(n))


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def unflat(vector: torch.Tensor, like: dict) -> dict:
    """The inverse of :func:`flat`: ``vector`` cut into tensors shaped as ``like``'s, under its names."""
    out, at = {}, 0
    for k, v in like.items():
        out[k] = vector[at : at + v.numel()].view_as(v)
        at += v.numel()
    return out


def image_tasks(n=3, ways=2, shots=1, queries=2, size=16) -> Task:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for _ in range(n):
        xs = torch.randn(ways * shots, 1, size, size, generator=g, dtype=torch.float64)
        xq = torch.randn(ways * queries, 1, size, size, generator=g, dtype=torch.float64)
        ys, yq = torch.arange(ways).repeat_interleave(shots), torch.arange(ways).repeat_interleave(queries)
        tasks.append(Task(Split(xs, ys), Split(xq, yq), ways))
    return stack_tasks(tasks)


@pytest.mark.parametrize(
    "algo",
    [MAML(inner_lr=0.05, inner_steps=2), fomaml(inner_lr=0.05, inner_steps=2), anil(inner_lr=0.1, inner_steps=2),
     Reptile(inner_lr=0.05, inner_steps=3), MetaSGD(init_lr=0.05, inner_steps=2)],
    ids=["maml", "fomaml", "anil", "reptile", "metasgd"],
)  # fmt: skip
def test_vmap_equals_loop_on_sinusoids(algo):
    model, tasks = mlp64(), sinusoids()
    params = parameters_of(model)
    if isinstance(algo, MetaSGD):
        params |= algo.extra_params(model)
    g_loop, l_loop = meta_gradient(algo, model, params, tasks, route="loop")
    g_vmap, l_vmap = meta_gradient(algo, model, params, tasks, route="vmap")
    assert torch.allclose(l_loop, l_vmap, rtol=1e-12, atol=1e-14)
    assert torch.allclose(flat(g_loop), flat(g_vmap), rtol=1e-10, atol=1e-13)


def test_vmap_equals_loop_with_affine_batchnorm_second_order():
    torch.manual_seed(0)
    model = Conv4(hidden=4, out_features=2, track_running_stats=False, image_size=16).double()
    tasks = image_tasks()
    algo = MAML(inner_lr=0.1, inner_steps=2)
    params = parameters_of(model)
    g_loop, l_loop = meta_gradient(algo, model, params, tasks, route="loop")
    g_vmap, l_vmap = meta_gradient(algo, model, params, tasks, route="vmap")
    assert torch.allclose(l_loop, l_vmap, rtol=1e-12)
    assert torch.allclose(flat(g_loop), flat(g_vmap), rtol=1e-9, atol=1e-12)
    # and the loop itself equals plain autograd through the whole inner loop, task by task
    for i in range(3):
        p = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss, _ = task_loss(algo, model, p, task_at(tasks, i))
        loss.backward()
        if i == 0:
            total = {k: v.grad.clone() for k, v in p.items()}
        else:
            for k in total:
                total[k] += p[k].grad
    assert torch.allclose(flat({k: v / 3 for k, v in total.items()}), flat(g_loop), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["maml", "reptile", "mamlpp"])
def test_threads_route_equals_loop_and_restores_the_thread_count(name):
    from fewshot.algorithms.mamlpp import MAMLPlusPlus

    torch.manual_seed(0)
    model = Conv4(hidden=4, out_features=2, track_running_stats=False, image_size=16).double()
    tasks = image_tasks(n=5)  # 5 tasks over 2 workers: uneven chunks (2 + 3)
    algo = {
        "maml": MAML(inner_lr=0.1, inner_steps=2),
        "reptile": Reptile(inner_lr=0.1, inner_steps=2),
        "mamlpp": MAMLPlusPlus(inner_lr=0.1, inner_steps=2),
    }[name]
    params = parameters_of(model) | (algo.extra_params(model) if name == "mamlpp" else {})
    before = torch.get_num_threads()
    g_loop, l_loop = meta_gradient(algo, model, params, tasks, route="loop")
    g_thr, l_thr = meta_gradient(algo, model, params, tasks, route="threads", workers=2)
    assert torch.get_num_threads() == before
    assert torch.allclose(l_loop, l_thr, rtol=1e-12)
    assert torch.allclose(flat(g_loop), flat(g_thr), rtol=1e-10, atol=1e-13)
    assert model.encoder[0][0].weight is params["encoder.0.0.weight"]  # the caller's module is untouched


def test_threads_route_carries_autocast_into_the_workers_and_raises_their_errors():
    torch.manual_seed(0)
    model = Conv4(hidden=4, out_features=2, track_running_stats=False, image_size=16)
    tasks = image_tasks(n=4)
    tasks = Task(
        Split(tasks.support.x.float(), tasks.support.y), Split(tasks.query.x.float(), tasks.query.y), 2
    )
    algo, params = MAML(inner_lr=0.1), parameters_of(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_loop, _ = meta_gradient(algo, model, params, tasks, route="loop")
        g_thr, _ = meta_gradient(algo, model, params, tasks, route="threads", workers=2)
    g_fp32, _ = meta_gradient(algo, model, params, tasks, route="loop")
    assert torch.allclose(flat(g_loop), flat(g_thr), rtol=1e-5, atol=1e-6)  # both in bfloat16 ...
    assert not torch.allclose(flat(g_thr), flat(g_fp32), rtol=1e-5, atol=1e-6)  # ... which differs from fp32
    bad = image_tasks(n=4)
    bad.support.x[3, 0, 0, 0, 0] = float("nan")  # the last task, so the second worker meets it
    with pytest.raises(FloatingPointError, match="inner-loop step 1"):
        meta_gradient(algo, model.double(), parameters_of(model), bad, route="threads", workers=2)


def test_adapted_weights_keep_the_channels_last_layout():
    # w - lr * g of a (64, 1, 3, 3) channels_last weight comes back in the default layout, and the conv would
    # then write its output (and so every later layer) in the slow default layout: inner_loop restores it
    torch.manual_seed(0)
    model = Conv4(out_features=5, track_running_stats=False).to(memory_format=torch.channels_last)
    x = torch.randn(5, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    support = Split(x, torch.arange(5))
    fast = MAML(inner_lr=0.4).adapt(model, parameters_of(model), support, 5)
    params = parameters_of(model)
    assert all(fast[k].stride() == params[k].stride() for k in params)
    first = torch.nn.functional.conv2d(x, fast["encoder.0.0.weight"], fast["encoder.0.0.bias"], padding=1)
    assert first.is_contiguous(memory_format=torch.channels_last)


def test_zero_inner_steps_is_the_plain_loss():
    model, tasks = mlp64(), sinusoids(n=1)
    task = task_at(tasks, 0)
    params = parameters_of(model)
    loss, _ = task_loss(MAML(inner_steps=0), model, params, task)
    plain = loss_fn(model(task.query.x), task.query.y, 0)
    assert torch.equal(loss, plain)


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights():
    model, tasks = mlp64(), sinusoids(n=1)
    task = task_at(tasks, 0)
    algo = fomaml(inner_lr=0.05, inner_steps=3)
    params = parameters_of(model)
    g, _ = meta_gradient(algo, model, params, tasks)
    fast = {k: v.detach().requires_grad_() for k, v in algo.adapt(model, params, task.support, 0).items()}
    q = loss_fn(functional_call(model, fast, (task.query.x,)), task.query.y, 0)
    expected = torch.autograd.grad(q, list(fast.values()))
    assert torch.allclose(flat(g), torch.cat([e.reshape(-1) for e in expected]), rtol=1e-12)
    # and it differs from the exact second-order gradient
    exact, _ = meta_gradient(dataclasses.replace(algo, first_order=False), model, params, tasks)
    assert not torch.allclose(flat(g), flat(exact), rtol=1e-3)


def test_maml_meta_gradient_equals_central_finite_differences():
    model, tasks = mlp64(hidden=(5,)), sinusoids(n=2)
    algo = MAML(inner_lr=0.03, inner_steps=2)
    params = {k: v.detach() for k, v in parameters_of(model).items()}
    g, _ = meta_gradient(algo, model, params, tasks)
    theta = flat(params)

    def f(vector: torch.Tensor) -> float:
        p = unflat(vector, params)
        return sum(task_loss(algo, model, p, task_at(tasks, i))[0].item() for i in range(2)) / 2

    eps = 1e-6
    basis = torch.eye(len(theta), dtype=torch.float64)
    fd = torch.tensor(
        [(f(theta + eps * e) - f(theta - eps * e)) / (2 * eps) for e in basis], dtype=torch.float64
    )
    rel = (fd - flat(g)).norm() / flat(g).norm()
    assert rel < 1e-6, rel


def test_one_step_maml_equals_the_explicit_hessian_formula():
    model, tasks = mlp64(hidden=(6,)), sinusoids(n=1)
    task = task_at(tasks, 0)
    alpha = 0.05
    params = {k: v.detach() for k, v in parameters_of(model).items()}
    def support(vector):
        return loss_fn(functional_call(model, unflat(vector, params), (task.support.x,)), task.support.y, 0)

    def query(vector):
        return loss_fn(functional_call(model, unflat(vector, params), (task.query.x,)), task.query.y, 0)

    theta = flat(params)
    hessian = torch.autograd.functional.hessian(support, theta)
    adapted = theta - alpha * torch.autograd.functional.jacobian(support, theta)
    expected = (torch.eye(len(theta), dtype=torch.float64) - alpha * hessian) @ torch.autograd.functional.jacobian(query, adapted)  # fmt: skip
    g, _ = meta_gradient(MAML(inner_lr=alpha, inner_steps=1), model, params, tasks)
    assert torch.allclose(flat(g), expected, rtol=1e-10, atol=1e-13)


def test_reptile_update_is_adapted_minus_initial_weights():
    model, tasks = mlp64(), sinusoids(n=3)
    algo = Reptile(inner_lr=0.02, inner_steps=4)
    params = parameters_of(model)
    g, _ = meta_gradient(algo, model, params, tasks)
    adapted = [algo.adapt(model, params, task_at(tasks, i).support, 0) for i in range(3)]
    for k in params:
        mean_adapted = sum(a[k] for a in adapted) / 3
        assert torch.allclose(-g[k], mean_adapted - params[k], rtol=1e-12, atol=1e-15)
    # SGD with lr epsilon on this gradient is the paper's update theta + epsilon (mean theta' - theta)
    epsilon = 0.5
    opt = torch.optim.SGD(model.parameters(), lr=epsilon)
    before = {k: v.detach().clone() for k, v in params.items()}
    for name, p in model.named_parameters():
        p.grad = g[name]
    opt.step()
    for name, p in model.named_parameters():
        mean_adapted = sum(a[name] for a in adapted) / 3
        assert torch.allclose(p, before[name] + epsilon * (mean_adapted - before[name]), rtol=1e-12)


def test_metasgd_with_a_fixed_scalar_step_equals_maml():
    model, tasks = mlp64(), sinusoids(n=2)
    meta_sgd = MetaSGD(init_lr=0.04, inner_steps=2)
    params = parameters_of(model) | meta_sgd.extra_params(model)
    g_sgd, l_sgd = meta_gradient(meta_sgd, model, params, tasks)
    g_maml, l_maml = meta_gradient(MAML(inner_lr=0.04, inner_steps=2), model, parameters_of(model), tasks)
    assert torch.allclose(l_sgd, l_maml, rtol=1e-14)
    for k in g_maml:
        assert torch.allclose(g_sgd[k], g_maml[k], rtol=1e-12, atol=1e-15)
    # the step sizes get a meta-gradient of their own
    assert all(g_sgd["inner_lr." + k].abs().sum() > 0 for k in g_maml)


def test_anil_adapts_only_the_head():
    model, tasks = mlp64(), sinusoids(n=1)
    task = task_at(tasks, 0)
    params = parameters_of(model)
    fast = anil(inner_lr=0.1, inner_steps=2).adapt(model, params, task.support, 0)
    for k in params:
        assert torch.equal(fast[k], params[k]) != k.startswith("head.")


def test_nan_in_the_inner_loop_names_the_step_and_the_fix():
    model, tasks = mlp64(), sinusoids(n=1)
    with pytest.raises(FloatingPointError, match=r"inner-loop step 2 .* smaller inner_lr"):
        MAML(inner_lr=1e200, inner_steps=3).adapt(model, parameters_of(model), task_at(tasks, 0).support, 0)


def test_running_statistics_are_refused_with_the_fix():
    check_model(Conv4(track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        check_model(Conv4())


def _gradient_learners() -> dict:
    from fewshot.algorithms.cavia import CAVIA
    from fewshot.algorithms.mamlpp import MAMLPlusPlus

    return {
        "maml": MAML(inner_lr=0.1), "fomaml": fomaml(inner_lr=0.1), "anil": anil(inner_lr=0.1, head="3."),
        "metasgd": MetaSGD(init_lr=0.1), "reptile": Reptile(inner_lr=0.1, inner_steps=2),
        "cavia": CAVIA(context_dim=2, inner_lr=0.1), "mamlpp": MAMLPlusPlus(inner_lr=0.1, inner_steps=2),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(_gradient_learners()))
@pytest.mark.parametrize("route", ["adapt", "loop", "vmap"])
def test_every_gradient_based_learner_refuses_running_statistics_and_leaves_the_buffers(name, route):
    # Conv4()'s default (track_running_stats=True): every inner step would write the shared running buffers
    algo = _gradient_learners()[name]
    extra = 2 if name == "cavia" else 0  # CAVIA appends its context to the inputs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3 + extra, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double()
    params = parameters_of(model) | (algo.extra_params(model) if hasattr(algo, "extra_params") else {})
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 8, 3, generator=g, dtype=torch.float64), torch.arange(2).repeat(2, 4)
    tasks = Task(Split(x[:, :4], y[:, :4]), Split(x[:, 4:], y[:, 4:]), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'1' tracks running statistics.*track_running_stats=False"):
        if route == "adapt":
            algo.adapt(model, params, task_at(tasks, 0).support, 2)
        else:
            meta_gradient(algo, model, params, tasks, route=route)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running mean, var and count untouched
    # the same network on batch statistics is accepted, on every route
    model[1] = nn.BatchNorm1d(6, track_running_stats=False).double()
    params = parameters_of(model) | (algo.extra_params(model) if hasattr(algo, "extra_params") else {})
    if route == "adapt":
        algo.adapt(model, params, task_at(tasks, 0).support, 2)
    else:
        meta_gradient(algo, model, params, tasks, route=route)


def test_inner_gradient_clipping_bounds_the_step():
    model, tasks = mlp64(), sinusoids(n=1)
    task = task_at(tasks, 0)
    params = parameters_of(model)
    fast = MAML(inner_lr=1.0, inner_steps=1, clip=1e-3).adapt(model, params, task.support, 0)
    step = flat({k: fast[k] - params[k] for k in params})
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-9)


def test_maml_beats_joint_pretraining_after_adaptation_on_held_out_sinusoids(one_thread):
    """A small, fast version of Finn et al.'s figure 2: same data, same steps, different objective."""

    def train(meta: bool) -> nn.Module:
        torch.manual_seed(0)
        model = MLP()
        family = Sinusoid(shots=10, queries=10, seed=0)
        if not meta:  # pretrained on all tasks' points jointly, as one regression problem
            return pretrain_jointly(model, family, steps=500)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for it in range(500):
            tasks = family.batch(range(25 * it, 25 * it + 25))
            grads, _ = meta_gradient(MAML(inner_lr=0.01), model, parameters_of(model), tasks, route="vmap")
            for name, p in model.named_parameters():
                p.grad = grads[name]
            opt.step()
        return model

    held_out = Sinusoid(shots=10, queries=10, seed=12345).batch(range(200))

    def post_adaptation_loss(model: nn.Module, steps: int) -> float:
        algo = MAML(inner_lr=0.01, inner_steps=steps)
        losses = [
            task_loss(algo, model, parameters_of(model), task_at(held_out, i))[0].item() for i in range(200)
        ]
        return sum(losses) / len(losses)

    maml, joint = train(meta=True), train(meta=False)
    for steps in (1, 5):
        assert post_adaptation_loss(maml, steps) < 0.85 * post_adaptation_loss(joint, steps)


def test_cavia_adapts_only_the_context_and_routes_agree():
    from fewshot.algorithms.cavia import CAVIA

    torch.manual_seed(0)
    model = MLP(1 + 3, (8,), 1).double()
    tasks = sinusoids(n=3)
    algo = CAVIA(context_dim=3, inner_lr=0.5, inner_steps=2)
    params = parameters_of(model)
    context = algo.adapt(model, params, task_at(tasks, 0).support, 0)
    assert context.shape == (3,) and context.abs().sum() > 0  # moved away from its zero start
    g_loop, _ = meta_gradient(algo, model, params, tasks, route="loop")
    g_vmap, _ = meta_gradient(algo, model, params, tasks, route="vmap")
    assert torch.allclose(flat(g_loop), flat(g_vmap), rtol=1e-10, atol=1e-13)
    # zero steps: the network at context 0, i.e. the plain loss with a zero-padded input
    task = task_at(tasks, 0)
    loss0, _ = task_loss(CAVIA(context_dim=3, inner_steps=0), model, params, task)
    padded = torch.cat([task.query.x, torch.zeros(len(task.query.x), 3, dtype=torch.float64)], -1)
    assert torch.equal(loss0, loss_fn(model(padded), task.query.y, 0))


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return Conv4(hidden=4, out_features=2, track_running_stats=False, image_size=16).double()


def test_mamlpp_with_every_trick_off_is_maml():
    from fewshot.algorithms.mamlpp import MAMLPlusPlus

    model, tasks = _bn_model(), image_tasks()
    plain = MAMLPlusPlus(
        inner_lr=0.1, inner_steps=2, multi_step_loss=False, learned_lrs=False, per_step_bn=False
    )
    params = parameters_of(model) | plain.extra_params(model)
    assert set(params) == set(parameters_of(model))  # no meta-parameters of its own
    g_pp, l_pp = meta_gradient(plain, model, params, tasks)
    g_maml, l_maml = meta_gradient(MAML(inner_lr=0.1, inner_steps=2), model, parameters_of(model), tasks)
    assert torch.allclose(l_pp, l_maml, rtol=1e-13)
    assert torch.allclose(flat(g_pp), flat(g_maml), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("mode, sets", [("authors", 2), ("next", 3)])
def test_mamlpp_learned_lrs_and_per_step_bn_start_as_maml_and_get_gradients(mode, sets):
    from fewshot.algorithms.mamlpp import MAMLPlusPlus, norm_parameter_names

    model, tasks = _bn_model(), image_tasks()
    algo = MAMLPlusPlus(inner_lr=0.1, inner_steps=2, multi_step_loss=False, bn_query_step=mode)
    params = parameters_of(model) | algo.extra_params(model)
    norms = norm_parameter_names(model)
    assert norms and all(f"mamlpp.bn.{sets - 1}.{n}" in params for n in norms)
    assert not any(f"mamlpp.bn.{sets}.{n}" in params for n in norms)
    g_pp, l_pp = meta_gradient(algo, model, params, tasks)
    # the reference: MAML in which the norm parameters are shared, not adapted
    others = tuple(n for n, _ in model.named_parameters() if n not in norms)
    g_ref, l_ref = meta_gradient(
        MAML(inner_lr=0.1, inner_steps=2, adapted=others), model, parameters_of(model), tasks
    )
    assert torch.allclose(l_pp, l_ref, rtol=1e-13)
    for n in others:
        assert torch.allclose(g_pp[n], g_ref[n], rtol=1e-10, atol=1e-14)
    for n in norms:  # the per-step copies share out the shared parameter's gradient
        assert torch.allclose(
            sum(g_pp[f"mamlpp.bn.{t}.{n}"] for t in range(sets)), g_ref[n], rtol=1e-10, atol=1e-14
        )
        assert torch.count_nonzero(g_pp[n]) == 0  # the model's own copy is not used
    assert all(g_pp[k].abs() > 0 for k in params if k.startswith("mamlpp.lr."))
    g_vmap, _ = meta_gradient(algo, model, params, tasks, route="vmap")
    assert torch.allclose(flat(g_pp), flat(g_vmap), rtol=1e-9, atol=1e-12)


def test_mamlpp_multi_step_loss_weights_and_derivative_order_annealing():
    from fewshot.algorithms.mamlpp import MAMLPlusPlus

    algo = MAMLPlusPlus(inner_steps=5, msl_epochs=10, first_order_epochs=3)
    start, middle, end = (
        algo.step_weights(),
        algo.at_epoch(5).step_weights(),
        algo.at_epoch(50).step_weights(),
    )
    assert start == pytest.approx([0.2] * 5)
    for w in (start, middle, end):
        assert sum(w) == pytest.approx(1.0)
    assert middle[-1] > start[-1] and middle[0] < start[0]
    assert end == [0, 0, 0, 0, 1.0]  # the authors' schedule: the last step alone after msl_epochs
    linear = dataclasses.replace(algo, msl_schedule="linear")  # the earlier schedule keeps the floor
    assert linear.at_epoch(50).step_weights()[0] == pytest.approx(0.03 / 5)
    assert MAMLPlusPlus(inner_steps=5, multi_step_loss=False).step_weights() == [0, 0, 0, 0, 1.0]
    assert algo.at_epoch(2).first_order and not algo.at_epoch(3).first_order
    # the multi-step loss is the weighted sum of the query losses after each step
    model, tasks = mlp64(), sinusoids(n=1)
    task = task_at(tasks, 0)
    pp = MAMLPlusPlus(inner_lr=0.02, inner_steps=3, learned_lrs=False, per_step_bn=False)
    loss, _ = pp.task_loss(model, parameters_of(model), task)
    expected = sum(
        w * task_loss(MAML(inner_lr=0.02, inner_steps=t + 1), model, parameters_of(model), task)[0]
        for t, w in enumerate(pp.step_weights())
    )
    assert torch.allclose(loss, expected, rtol=1e-13)


def test_compiled_vmap_route_equals_the_loop(one_thread):
    model, tasks = mlp64(hidden=(8,)), sinusoids(n=3)
    algo = MAML(inner_lr=0.05, inner_steps=2)
    params = parameters_of(model)
    g_loop, l_loop = meta_gradient(algo, model, params, tasks, route="loop")
    for _ in range(2):  # compiled on the first call, reused on the second
        g_c, l_c = meta_gradient(algo, model, params, tasks, route="vmap", compile=True)
        assert torch.allclose(l_loop, l_c, rtol=1e-12)
        assert torch.allclose(flat(g_loop), flat(g_c), rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="route='vmap'"):
        meta_gradient(algo, model, params, tasks, route="loop", compile=True)


def test_routes_agree_on_a_channels_last_one_channel_conv_net():
    # the case where inner_loop restores the adapted weights' layout (keep_strides): every route must agree
    torch.manual_seed(0)
    model = Conv4(hidden=4, out_features=2, track_running_stats=False, image_size=16).double()
    model = model.to(memory_format=torch.channels_last)
    t = image_tasks()
    cl = lambda x: x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # noqa: E731
    tasks = Task(Split(cl(t.support.x), t.support.y), Split(cl(t.query.x), t.query.y), t.ways)
    algo, params = MAML(inner_lr=0.1, inner_steps=2), parameters_of(model)
    g_loop, _ = meta_gradient(algo, model, params, tasks, route="loop")
    for route in ("threads", "vmap"):
        g, _ = meta_gradient(algo, model, params, tasks, route=route, workers=2)
        assert torch.allclose(flat(g_loop), flat(g), rtol=1e-9, atol=1e-12), route
    plain, _ = meta_gradient(algo, model.to(memory_format=torch.contiguous_format), params, t, route="loop")
    assert torch.allclose(flat(g_loop), flat(plain), rtol=1e-9, atol=1e-12)


def test_threads_route_refuses_running_statistics_in_training():
    model = Conv4(hidden=4, out_features=2, image_size=16).double()  # tracks running statistics
    with pytest.raises(ValueError, match="running statistics"):
        meta_gradient(Reptile(), model, parameters_of(model), image_tasks(), route="threads", workers=2)


def test_plain_autograd_and_torch_func_inner_loops_agree_and_no_grad_builds_no_graph():
    # grad_and_value takes plain autograd outside a torch.func transform and torch.func.grad inside one
    from fewshot.algorithms.base import grad_and_value

    torch.manual_seed(0)
    model = Conv4(hidden=4, out_features=2, track_running_stats=False, image_size=16).double()
    task, algo = task_at(image_tasks(n=1), 0), MAML(inner_lr=0.1, inner_steps=2)
    params = {k: v.detach() for k, v in parameters_of(model).items()}

    def f(p):
        return task_loss(algo, model, p, task)[0]

    plain, value = grad_and_value(f, params, create_graph=False)
    functorch, value_f = torch.func.grad_and_value(f)(params)
    assert torch.allclose(value, value_f, rtol=1e-13)
    assert torch.allclose(flat(plain), flat(functorch), rtol=1e-10, atol=1e-13)
    assert not flat(plain).requires_grad
    # evaluation: under no_grad the adapted weights are the same numbers and hold no graph
    with_graph = algo.adapt(model, parameters_of(model), task.support, 2)
    with torch.no_grad():
        without = algo.adapt(model, parameters_of(model), task.support, 2)
    assert torch.allclose(flat(with_graph), flat(without), rtol=1e-13)
    assert flat(with_graph).requires_grad and not any(v.requires_grad for v in without.values())
