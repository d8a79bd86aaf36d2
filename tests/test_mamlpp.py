"""MAML++ against the authors' code (AntreasAntoniou/HowToTrainYourMAMLPytorch) and first principles.

The authors' conventions, from ``few_shot_learning_system.py`` (``get_per_step_loss_importance_vector``,
``forward``) and ``meta_neural_network_architectures.py`` (``MetaBatchNormLayer``, indexed by ``num_step``):

* multi-step loss weights at epoch ``e`` with ``T`` inner steps and ``M = msl_epochs``: each early step
  ``max(1/T - e/(T M), 0.03/T)``, the last ``min(1/T + e (T-1)/(T M), 1 - (T-1) 0.03/T)``; from ``e >= M`` on
  only the last step's query loss, with weight 1;
* ``T`` per-step BatchNorm sets: set ``t`` for the support pass of inner step ``t`` and for the query pass
  after that step.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.algorithms.base import loss_fn, parameters_of, task_loss
from fewshot.algorithms.mamlpp import MAMLPlusPlus
from fewshot.algorithms.routes import meta_gradient, task_at
from fewshot.tasks.episodes import Split, Task, stack_tasks


def bn_mlp(seed: int = 0, features: int = 3, hidden: int = 5, ways: int = 2) -> nn.Module:
    """A smooth (tanh) float64 classifier with a BatchNorm on batch statistics: finite differences apply."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.BatchNorm1d(hidden, track_running_stats=False),
        nn.Tanh(),
        nn.Linear(hidden, ways),
    ).double()


def vector_tasks(n: int = 2, features: int = 3, ways: int = 2, shots: int = 2, queries: int = 3) -> Task:
    g = torch.Generator().manual_seed(5)
    tasks = []
    for _ in range(n):
        xs = torch.randn(ways * shots, features, generator=g, dtype=torch.float64)
        xq = torch.randn(ways * queries, features, generator=g, dtype=torch.float64)
        ys, yq = torch.arange(ways).repeat_interleave(shots), torch.arange(ways).repeat_interleave(queries)
        tasks.append(Task(Split(xs, ys), Split(xq, yq), ways))
    return stack_tasks(tasks)


def test_msl_weights_equal_the_authors_formula_worked_by_hand():
    # T = 5, M = 10: start 1/T = 0.2, each early step loses e / (T M) = 0.02 e, the last gains 4 * 0.02 e;
    # floor 0.03 / 5 = 0.006, cap 1 - 4 * 0.006 = 0.976 (not reached before e = 9.7, i.e. never for M = 10)
    expected = {
        0: [0.2, 0.2, 0.2, 0.2, 0.2],
        1: [0.18, 0.18, 0.18, 0.18, 0.28],  # 0.2 - 0.02; 0.2 + 0.08
        3: [0.14, 0.14, 0.14, 0.14, 0.44],  # 0.2 - 0.06; 0.2 + 0.24
        5: [0.10, 0.10, 0.10, 0.10, 0.60],  # 0.2 - 0.10; 0.2 + 0.40
        9: [0.02, 0.02, 0.02, 0.02, 0.92],  # 0.2 - 0.18; 0.2 + 0.72
        10: [0.0, 0.0, 0.0, 0.0, 1.0],  # e >= M: the last step's loss only, no floor
        11: [0.0, 0.0, 0.0, 0.0, 1.0],
        50: [0.0, 0.0, 0.0, 0.0, 1.0],
    }
    algo = MAMLPlusPlus(inner_steps=5, msl_epochs=10)
    for epoch, weights in expected.items():
        assert algo.at_epoch(epoch).step_weights() == pytest.approx(weights, abs=1e-15), epoch
    # M = 100: the clamps bind from e = 97 on: e = 98 would give 0.2 - 0.196 = 0.004 < floor 0.006, and
    # 0.2 + 4 * 0.196 = 0.984 > cap 0.976; at e = 100 the last step alone again
    slow = MAMLPlusPlus(inner_steps=5, msl_epochs=100)
    assert slow.at_epoch(50).step_weights() == pytest.approx([0.1] * 4 + [0.6], abs=1e-15)
    for epoch in (98, 99):
        assert slow.at_epoch(epoch).step_weights() == pytest.approx([0.006] * 4 + [0.976], abs=1e-15)
    assert slow.at_epoch(100).step_weights() == [0.0, 0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("schedule", ["authors", "linear"])
def test_msl_weights_sum_to_one_and_anneal_towards_the_last_step(schedule):
    for steps in (1, 2, 3, 5, 8):
        for msl_epochs in (0, 1, 10, 40):
            algo = MAMLPlusPlus(inner_steps=steps, msl_epochs=msl_epochs, msl_schedule=schedule)
            last = []
            for epoch in range(0, 2 * msl_epochs + 2):
                w = algo.at_epoch(epoch).step_weights()
                assert len(w) == steps and min(w) >= 0
                assert sum(w) == pytest.approx(1.0, abs=1e-12), (steps, msl_epochs, epoch)
                last.append(w[-1])
            assert last == sorted(last)  # the last step's share never shrinks
    off = MAMLPlusPlus(inner_steps=4, multi_step_loss=False, msl_schedule=schedule)
    assert off.step_weights() == [0, 0, 0, 1]


def old_step_weights(steps: int, msl_epochs: int, epoch: int, multi_step_loss: bool = True) -> list[float]:
    """The library's schedule before the authors' one became the default (a copy, to pin "linear")."""
    if not multi_step_loss or steps == 1:
        return [0.0] * (steps - 1) + [1.0]
    progress = min(epoch / max(msl_epochs, 1), 1.0)
    low = 0.03 / steps
    early = (1 - progress) / steps + progress * low
    return [early] * (steps - 1) + [1.0 - early * (steps - 1)]


def test_linear_schedule_is_the_previous_one_exactly():
    for steps in (1, 2, 3, 5):
        for msl_epochs in (0, 1, 10):
            for epoch in (0, 1, 4, 9, 10, 11, 30):
                algo = MAMLPlusPlus(inner_steps=steps, msl_epochs=msl_epochs, msl_schedule="linear")
                assert algo.at_epoch(epoch).step_weights() == old_step_weights(steps, msl_epochs, epoch)
    off = MAMLPlusPlus(inner_steps=3, multi_step_loss=False, msl_schedule="linear")
    assert off.step_weights() == old_step_weights(3, 10, 0, multi_step_loss=False)


def test_after_msl_epochs_only_the_last_steps_query_loss_counts():
    model, task = bn_mlp(), task_at(vector_tasks(n=1), 0)
    algo = MAMLPlusPlus(inner_lr=0.1, inner_steps=3, msl_epochs=4).at_epoch(4)
    params = parameters_of(model) | algo.extra_params(model)
    loss, _ = algo.task_loss(model, params, task)
    state = algo.adapt(model, params, task.support, task.ways)
    last = loss_fn(algo.predict(model, params, state, task.query.x), task.query.y, task.ways)
    assert torch.equal(loss, last)
    # one epoch earlier the early steps still count: a different loss
    earlier, _ = algo.at_epoch(3).task_loss(model, params, task)
    assert not torch.allclose(earlier, last, rtol=1e-6)


def recording_model() -> tuple[nn.Module, list[tuple[int, int]]]:
    """A model whose BatchNorm records (batch size, per-step set) of every forward pass: set t has bias t."""
    model = bn_mlp()
    seen: list[tuple[int, int]] = []

    def record(module: nn.Module, args: tuple) -> None:
        bias = module.bias.detach()
        assert torch.all(bias == bias[0])  # one set, all of whose entries are its index
        seen.append((args[0].shape[0], int(bias[0].item())))

    model[1].register_forward_pre_hook(record)
    return model, seen


@pytest.mark.parametrize(
    "mode, sets, query_sets", [("authors", 3, [0, 1, 2]), ("next", 4, [1, 2, 3])]
)  # fmt: skip
def test_per_step_batchnorm_set_of_every_forward_pass(mode, sets, query_sets):
    model, seen = recording_model()
    # 4 support and 6 query rows: the batch size tells the passes apart
    task = task_at(vector_tasks(n=1, shots=2, queries=3), 0)
    algo = MAMLPlusPlus(inner_lr=0.1, inner_steps=3, bn_query_step=mode)
    params = parameters_of(model) | algo.extra_params(model)
    names = [k for k in params if k.startswith("mamlpp.bn.")]
    assert sorted(names) == sorted(f"mamlpp.bn.{t}.1.{p}" for t in range(sets) for p in ("weight", "bias"))
    for t in range(sets):  # make the sets distinguishable: set t has bias t
        params[f"mamlpp.bn.{t}.1.bias"] = torch.full((5,), float(t), dtype=torch.float64)
    algo.task_loss(model, params, task)  # epoch 0: every step's query loss counts
    assert [s for n, s in seen if n == 4] == [0, 1, 2]  # support pass of inner step t: set t
    assert [s for n, s in seen if n == 6] == query_sets  # query pass after inner step t
    seen.clear()
    state = algo.adapt(model, params, task.support, task.ways)
    algo.predict(model, params, state, task.query.x)
    assert seen[-1] == (6, query_sets[-1])  # predictions use the query set of the last step


def test_mismatched_per_step_sets_and_unknown_choices_are_refused_with_the_fix():
    model, task = bn_mlp(), task_at(vector_tasks(n=1), 0)
    authors, nxt = MAMLPlusPlus(inner_steps=2), MAMLPlusPlus(inner_steps=2, bn_query_step="next")
    for algo, other in ((authors, nxt), (nxt, authors)):
        params = parameters_of(model) | other.extra_params(model)
        with pytest.raises(ValueError, match="per-step norm parameter sets"):
            algo.adapt(model, params, task.support, task.ways)
    with pytest.raises(ValueError, match=r"msl_schedule must be one of \['authors', 'linear'\]"):
        MAMLPlusPlus(msl_schedule="cosine")
    with pytest.raises(ValueError, match=r"bn_query_step must be one of \['authors', 'next'\]"):
        MAMLPlusPlus(bn_query_step="previous")


def reference_loss(model: nn.Module, params: dict, task: Task, algo: MAMLPlusPlus) -> torch.Tensor:
    """The multi-step loss written out step by step with plain autograd (second order), for comparison."""
    norms = ["1.weight", "1.bias"]
    offset = 1 if algo.bn_query_step == "next" else 0
    fast = {k: v for k, v in params.items() if not k.startswith("mamlpp.")}
    adapted = [k for k in fast if k not in norms]

    def run(weights: dict, t: int, x: torch.Tensor) -> torch.Tensor:
        bn = {n: params[f"mamlpp.bn.{t}.{n}"] for n in norms}
        return torch.func.functional_call(model, weights | bn, (x,))

    total = torch.zeros((), dtype=torch.float64)
    for t, weight in enumerate(algo.step_weights()):
        support = loss_fn(run(fast, t, task.support.x), task.support.y, task.ways)
        grads = torch.autograd.grad(support, [fast[k] for k in adapted], create_graph=True)
        fast = fast | {
            k: fast[k] - params[f"mamlpp.lr.{t}.{k}"] * g for k, g in zip(adapted, grads, strict=True)
        }
        total = total + weight * loss_fn(run(fast, t + offset, task.query.x), task.query.y, task.ways)
    return total


@pytest.mark.parametrize("schedule, mode", [("authors", "authors"), ("linear", "next"), ("authors", "next")])
def test_task_loss_equals_the_step_by_step_reference(schedule, mode):
    model, task = bn_mlp(), task_at(vector_tasks(n=1), 0)
    algo = MAMLPlusPlus(inner_lr=0.2, inner_steps=3, msl_epochs=10, msl_schedule=schedule, bn_query_step=mode)
    algo = algo.at_epoch(4)
    params = parameters_of(model) | algo.extra_params(model)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    g = torch.Generator().manual_seed(2)
    for k in params:  # distinct step sizes and norm sets, so that a mix-up of indices shows
        if k.startswith("mamlpp."):
            noise = 0.05 * torch.randn(params[k].shape, generator=g, dtype=torch.float64)
            params[k] = (params[k] + noise).detach().requires_grad_()
    loss, _ = algo.task_loss(model, params, task)
    expected = reference_loss(model, params, task, algo)
    assert torch.allclose(loss, expected, rtol=1e-13)
    # the model's own norm parameters are replaced by the per-step sets: unused (None) on both sides
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    want = torch.autograd.grad(expected, list(params.values()), allow_unused=True)
    for name, a, b in zip(params, got, want, strict=True):
        assert (a is None) == (b is None) == (name in ("1.weight", "1.bias")), name
        assert a is None or torch.allclose(a, b, rtol=1e-11, atol=1e-14), name


def test_meta_gradient_equals_central_finite_differences_with_batchnorm():
    """Second order, learned step sizes, per-step BatchNorm, multi-step loss: float64 central differences."""
    model, tasks = bn_mlp(), vector_tasks(n=2)
    algo = MAMLPlusPlus(inner_lr=0.3, inner_steps=2, msl_epochs=10).at_epoch(3)  # weights 0.35, 0.65
    assert not algo.first_order
    params = {k: v.detach().clone() for k, v in (parameters_of(model) | algo.extra_params(model)).items()}
    g = torch.Generator().manual_seed(3)
    for k in params:  # away from the symmetric start (all step sizes and sets equal)
        if k.startswith("mamlpp."):
            params[k] += 0.05 * torch.randn(params[k].shape, generator=g, dtype=torch.float64)
    grads, _ = meta_gradient(algo, model, params, tasks, route="loop")
    g_vmap, _ = meta_gradient(algo, model, params, tasks, route="vmap")

    def mean_loss(p: dict) -> float:
        return sum(task_loss(algo, model, p, task_at(tasks, i))[0].item() for i in range(2)) / 2

    probes = [("0.weight", (1, 2)), ("0.bias", (3,)), ("3.weight", (0, 4)), ("mamlpp.lr.0.0.weight", ()),
              ("mamlpp.lr.1.3.bias", ()), ("mamlpp.bn.0.1.weight", (2,)), ("mamlpp.bn.1.1.bias", (4,))]  # fmt: skip
    eps = 1e-6
    for name, index in probes:
        plus, minus = dict(params), dict(params)
        plus[name], minus[name] = params[name].clone(), params[name].clone()
        plus[name][index] += eps
        minus[name][index] -= eps
        fd = (mean_loss(plus) - mean_loss(minus)) / (2 * eps)
        assert grads[name][index].item() == pytest.approx(fd, rel=1e-6, abs=1e-9), name
        assert g_vmap[name][index].item() == pytest.approx(grads[name][index].item(), rel=1e-10, abs=1e-13)
