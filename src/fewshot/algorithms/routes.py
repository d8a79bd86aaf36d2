"""Routes to a meta-gradient: the mean over a batch of tasks of each task's gradient, computed one task at a
time, by threads that split the tasks between cores, or by ``torch.func.vmap`` over tasks; all tested equal.

Which is fastest depends on the model (DESIGN.md section 5, BENCHMARKS.md): conv nets with BatchNorm on a CPU
run two tasks at a time on one core each; the small sinusoid MLP maps over tasks.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn

from fewshot.algorithms.base import Algorithm, Params, all_finite
from fewshot.models import running_stats_layers
from fewshot.tasks.episodes import Split, Task


def task_at(tasks: Task, i: int) -> Task:
    """Task ``i`` of a stacked batch (see :func:`~fewshot.tasks.episodes.stack_tasks`)."""
    return Task(
        Split(tasks.support.x[i], tasks.support.y[i]), Split(tasks.query.x[i], tasks.query.y[i]), tasks.ways
    )


# vmap in_dims for a stacked Task: every tensor is batched along dim 0, `ways` is a static int (None).
TASK_DIMS = Task(Split(0, 0), Split(0, 0), None)


def meta_gradient(
    algorithm: Algorithm,
    model: nn.Module,
    params: Params,
    tasks: Task,
    route: str = "loop",
    workers: int | None = None,
    compile: bool = False,
) -> tuple[Params, Tensor]:
    """Mean over tasks of the gradient of the query loss after adaptation, w.r.t. ``params``.

    Each task contributes :meth:`Algorithm.task_gradient` (the gradient of its loss, or the algorithm's own
    update direction, such as Reptile's ``theta - theta'``).

    Args:
        params: the meta-parameters (detached from any outer graph here).
        tasks: a stacked batch of tasks, leading dimension ``tasks_per_step``.
        route: ``"loop"`` (one task at a time), ``"threads"`` (the tasks split between ``workers`` Python
            threads, each running the loop with one intra-op thread; CPU only) or ``"vmap"`` (``torch.func.vmap``
            over tasks). All give the same result (tested); which is fastest depends on the model (DESIGN.md
            section 5). ``vmap`` maps the per-task *gradient*, never the loss: differentiating a vmapped
            second-order loss through affine BatchNorm gives a wrong meta-gradient on torch 2.13-2.14.
        workers: threads for ``route="threads"`` (default: ``torch.get_num_threads()``).
        compile: ``torch.compile`` the vmapped meta-gradient (``route="vmap"`` only). The first call per
            (model, algorithm, task shapes) compiles, which takes ~20 s; later calls reuse it. For the
            sinusoid MLP it is ~4x faster than eager vmap (BENCHMARKS.md); equal results are tested.

    Returns:
        ``(grads, loss)``: name -> mean gradient, and the mean query loss (detached), on the device of
        ``params`` and ``tasks``.

    Raises:
        ValueError: ``route="threads"`` for a model or tasks not on the CPU.
    """
    params = {k: v.detach() for k, v in params.items()}
    n = tasks.support.x.shape[0]
    if compile and route != "vmap":
        raise ValueError(f"compile=True works with route='vmap', not {route!r}")
    if route == "loop":
        total, loss = _gradient_sum(algorithm, model, params, tasks, range(n))
        return {k: v / n for k, v in total.items()}, loss / n
    if route == "threads":
        devices = {t.device for t in params.values()} | {tasks.support.x.device}
        if any(d.type != "cpu" for d in devices):
            # the threads share out CPU cores and re-enter the caller's CPU autocast; a GPU runs one task's
            # kernels in parallel already, and its work is queued from one thread
            raise ValueError(
                f"route 'threads' splits tasks between CPU cores, but the model or tasks are on "
                f"{', '.join(sorted(map(str, devices - {torch.device('cpu')})))}; use route 'loop' or 'vmap' there"
            )
        return _threads(algorithm, model, params, tasks, workers or torch.get_num_threads())
    if route == "vmap":
        grads, losses = _vmapped(algorithm, model, compile)(params, tasks)
        if not all_finite({"losses": losses}):
            raise FloatingPointError(
                "a task's loss is NaN or Inf; use a smaller inner_lr, or route='loop' to see which inner step"
            )
        return {k: v.mean(0) for k, v in grads.items()}, losses.mean().detach()
    raise ValueError(f"route must be 'loop', 'threads' or 'vmap', got {route!r}")


def _vmapped(algorithm: Algorithm, model: nn.Module, compile: bool) -> Any:
    """``(params, tasks) -> (per-task gradients, per-task losses)`` by vmap, compiled once per model and
    algorithm when asked (algorithms are frozen dataclasses, so they can key the cache). The cache lives on the
    model object, so it goes when the model goes."""
    cache = model.__dict__.setdefault("_fewshot_compiled", {}) if compile else None
    if cache is not None and algorithm in cache:
        return cache[algorithm]

    def run(params: Params, tasks: Task) -> tuple[Params, Tensor]:
        return torch.func.vmap(
            lambda p, t: algorithm.task_gradient(model, p, t), in_dims=(None, TASK_DIMS), randomness="error"
        )(params, tasks)

    if cache is None:
        return run
    fn = cache[algorithm] = torch.compile(run, dynamic=False)
    return fn


def _gradient_sum(
    algorithm: Algorithm, model: nn.Module, params: Params, tasks: Task, indices: range
) -> tuple[Params, Tensor]:
    """Sum over the tasks ``indices`` of their gradients, and the sum of their query losses (detached)."""
    total: Params = {k: torch.zeros_like(v) for k, v in params.items()}
    loss = torch.zeros((), device=tasks.query.x.device)  # on the tasks' device: a sum of their losses
    for i in indices:
        g, value = algorithm.task_gradient(model, params, task_at(tasks, i))
        for k in total:
            total[k] += g[k]
        loss = loss + value.detach()
    return total, loss


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _threads(
    algorithm: Algorithm, model: nn.Module, params: Params, tasks: Task, workers: int
) -> tuple[Params, Tensor]:
    """The loop route with the tasks split into ``workers`` contiguous chunks run in parallel threads.

    Why: a conv4 task (5 support, 75 query images of 28x28) is too small for two intra-op threads to share
    well, so two tasks at a time on one thread each keep both cores busier. The torch kernels release the GIL.
    Each thread gets its own copy of the module, because ``functional_call`` swaps tensors into the module
    object it is given while it runs; the copies are made per call, so they never go stale. Autocast state is
    per thread in PyTorch, so the caller's is re-entered in every worker (CPU autocast: this route runs on the
    CPU only, which :func:`meta_gradient` checks). Intra-op threads are set to 1 while the workers run (the
    setting is process-wide) and restored afterwards.
    """
    n = tasks.support.x.shape[0]
    if model.training and running_stats_layers(model):
        raise ValueError(
            "route 'threads' runs each task on a copy of the model, so BatchNorm running statistics updated in "
            "training would be lost; use route 'loop' (or a model built with track_running_stats=False)"
        )
    workers = max(1, min(workers, n))
    if workers == 1:
        total, loss = _gradient_sum(algorithm, model, params, tasks, range(n))
        return {k: v / n for k, v in total.items()}, loss / n
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="fewshot-task")
    bounds = [round(n * w / workers) for w in range(workers + 1)]
    autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    copies = [copy.deepcopy(model) for _ in range(workers)]

    def run(w: int) -> tuple[Params, Tensor]:
        torch.set_num_threads(1)
        with torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0]):
            return _gradient_sum(algorithm, copies[w], params, tasks, range(bounds[w], bounds[w + 1]))

    threads = torch.get_num_threads()
    try:
        results = list(pool.map(run, range(workers)))
    finally:
        torch.set_num_threads(threads)
    total = {k: sum(r[0][k] for r in results) / n for k in params}
    return total, sum(r[1] for r in results) / n
