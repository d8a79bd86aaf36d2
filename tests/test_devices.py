"""Devices: every tensor of library code follows the model and data it is given, so fewshot runs on any device.

This machine has no GPU, so placement is checked on PyTorch's ``meta`` device (tensors with a shape, dtype and
device but no values): an algorithm run with its model and task there must return only meta tensors, and must
create no tensor on the CPU along the way. The second check matters: a 0-dim CPU tensor meeting a meta (or CUDA)
tensor does not raise, it is taken as a scalar (``torch.zeros(()) + x`` is on ``x``'s device), so such a tensor
would never show in the outputs. :class:`CpuCreations` records every torch call made from fewshot's own code that
returns a CPU tensor. Numerics on a real GPU are in ``test_cuda.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import fewshot
from fewshot import devices
from fewshot.algorithms import routes
from fewshot.algorithms.base import accuracy, all_finite, parameters_of
from fewshot.evaluate import evaluate, evaluate_regression
from fewshot.models import ModelRequest
from fewshot.registry import algorithms
from fewshot.tasks.episodes import Split, Task, stack_tasks
from fewshot.tasks.regression import Sinusoid

META = torch.device("meta")
SOURCE = str(Path(fewshot.__file__).parent)
TORCH = Path(torch.__file__).parent
# torch's own Python layers between a call site and the function (a call through F.cross_entropy, or a Tensor
# operator defined in Python, is reported at the fewshot line that made it, not inside torch)
WRAPPERS = tuple(str(TORCH / f) for f in ("overrides.py", "_tensor.py", "functional.py", "nn/functional.py"))
# functions that compute on the CPU on purpose and move their result: FineTune's head is drawn from a seeded CPU
# generator in float64, so that it is the same on every device (its result is checked with the task state);
# BanditBatch.of stacks the bandits (CPU values, as tasks are) before the rollout moves the batch to the model
ON_PURPOSE = {"_init_head", "BanditBatch.of"}


class CpuCreations(TorchFunctionMode):
    """Records the torch calls made from fewshot's source that return a tensor on the CPU.

    Calls made inside torch itself are not recorded (``torch.optim.Adam`` keeps its step counter on the CPU on
    purpose), nor those of :data:`ON_PURPOSE`. Works inside ``torch.func`` transforms too: the mode sees every
    call at the Python level.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_flatten(out)[0]):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(WRAPPERS):
                frame = frame.f_back
            code = frame.f_code if frame is not None else None
            if (
                code is not None
                and code.co_filename.startswith(SOURCE)
                and code.co_qualname not in ON_PURPOSE
            ):
                where = Path(frame.f_code.co_filename).relative_to(SOURCE)
                self.found.append(f"{getattr(func, '__name__', func)} at {where}:{frame.f_lineno}")
        return out


def tensors_in(*values) -> list[torch.Tensor]:
    """Every tensor in nested tuples, lists and dicts (task states are all of these)."""
    return [t for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor)]


def cpu_task(data: str, ways: int = 3, shots: int = 2, queries: int = 2, features: int = 6) -> Task:
    """A small task on the CPU: images ``(n, 1, 28, 28)``, vectors ``(n, features)`` or sinusoid points."""
    if data == "regression":
        return Sinusoid(shots=shots * ways, queries=queries * ways, seed=1).task(0)
    shape = (1, 28, 28) if data == "images" else (features,)
    g = torch.Generator().manual_seed(0)
    support = torch.rand(ways * shots, *shape, generator=g)
    query = torch.rand(ways * queries, *shape, generator=g)
    labels = torch.arange(ways)
    return Task(
        Split(support, labels.repeat_interleave(shots)), Split(query, labels.repeat_interleave(queries)), ways
    )


# every registered algorithm on every kind of data it declares, plus settings that take other code paths; LEO on
# images needs a trained run as its embedding (--embedding), so that case is in test_leo.py
SKIP = {("leo", "images")}
CASES = [
    (n, d, {}) for n, spec in algorithms().items() for d in spec.data if (n, d) not in SKIP and d != "bandit"
] + [
    ("matching", "images", {"fce": True}),
    ("siamese", "images", {"siamese_loss": "triplet"}),
    ("siamese", "vectors", {"siamese_loss": "contrastive"}),
    ("mamlpp", "images", {"bn_query_step": "next", "inner_steps": 2}),
    ("maml", "images", {"inner_clip": 1.0, "inner_steps": 2}),
]


@pytest.mark.parametrize(
    "name, data, settings", CASES, ids=[f"{n}-{d}" + "".join(f"-{k}" for k in s) for n, d, s in CASES]
)
def test_every_algorithm_keeps_every_tensor_on_the_model_device(name, data, settings):
    spec = algorithms()[name]
    fields = {f.name for f in dataclasses.fields(spec.settings)}
    short = {k: 2 for k in ("finetune_steps", "test_inner_steps") if k in fields}  # fewer steps: same code
    options = spec.settings(**short | settings)
    request = ModelRequest(
        data, in_features={"images": 1, "vectors": 6, "regression": 1}[data], hidden=8, ways=3, classes=10
    )
    with torch.device(META):  # built there directly; the algorithms run outside this context (see below)
        model = spec.model(request, options)
    task = devices.move_task(cpu_task(data), META)
    # factory calls without a device default to the CPU out here, so a forgotten `device=` is recorded
    for testing in (False, True):
        algorithm = spec.build(options, testing)
        with CpuCreations() as mode:
            params = parameters_of(model) | algorithm.extra_params(model)
            state = algorithm.adapt(model, params, task.support, task.ways)
            outputs = algorithm.predict(model, params, state, task.query.x)
            probabilities = algorithm.probabilities(outputs)
            loss, logits = algorithm.task_loss(model, params, task)
            gradients = [
                routes.meta_gradient(algorithm, model, params, stack_tasks([task, task]), route)
                for route in ("loop", "vmap")
                if route in spec.routes
            ]
        assert mode.found == [], f"{name}: tensors created on the CPU: {mode.found}"
        found = tensors_in(params, state, outputs, probabilities, loss, logits, gradients)
        assert found and all(t.device == META for t in found), f"{name}: {[t.device for t in found]}"
        assert logits.shape == outputs.shape == (task.query.x.shape[0], task.ways or 1)
        if "loop" in spec.routes:
            assert set(gradients[0][0]) == set(params)


def test_threads_route_is_refused_off_the_cpu():
    spec = algorithms()["maml"]
    with torch.device(META):
        model = spec.model(ModelRequest("vectors", 6, hidden=8, ways=3), spec.settings())
    task = devices.move_task(cpu_task("vectors"), META)
    algorithm = spec.build(spec.settings(), False)
    with pytest.raises(
        ValueError, match="route 'threads' splits tasks between CPU cores.*meta.*'loop' or 'vmap'"
    ):
        routes.meta_gradient(algorithm, model, parameters_of(model), stack_tasks([task, task]), "threads")


def test_all_finite_answers_for_meta_tensors_only():
    """No values on the meta device, so nothing to check there; real tensors are still checked."""
    assert all_finite({"a": torch.full((3,), torch.nan, device=META)})
    assert not all_finite({"a": torch.tensor([1.0, torch.nan]), "b": torch.ones(2)})
    assert not all_finite({"a": torch.tensor([torch.inf])})
    assert all_finite({"a": torch.ones(2), "b": torch.zeros(3, dtype=torch.float64)})


def test_accuracy_equals_a_float64_mean():
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 75, 301):
        outputs, y = torch.randn(n, 5, generator=g), torch.randint(0, 5, (n,), generator=g)
        assert accuracy(outputs, y) == (outputs.argmax(-1) == y).double().mean().item()


# -- checkpoints --------------------------------------------------------------------------------------------


# loading into meta tensors copies nothing, and torch says so for every tensor
NO_COPY_WARNING = "ignore:.*copying from a non-meta parameter:UserWarning"


@pytest.mark.filterwarnings(NO_COPY_WARNING)
@pytest.mark.parametrize("algorithm, dataset", [("metasgd", "sinusoid"), ("mamlpp", "omniglot")])
def test_a_checkpoint_loads_on_another_device(tmp_path, algorithm, dataset):
    """Saved from the CPU, loaded on meta (and back on the CPU with the same values); the algorithm's own
    meta-parameters (Meta-SGD's step sizes, MAML++'s per-step ones) go with the model."""
    from fewshot.config import TrainConfig
    from fewshot.runs import RunDir, load_run

    config = TrainConfig.of(algorithm=algorithm, dataset=dataset, hidden=8)
    torch.manual_seed(0)
    model = config.build_model()
    extra = config.build_algorithm().extra_params(model)
    run_dir = RunDir(tmp_path / "run")
    run_dir.start(config)
    run_dir.save_checkpoint("last", model, extra, config)

    run = load_run(run_dir.path, "last", device="meta")
    placed = [*run.model.parameters(), *run.model.buffers(), *run.extra.values(), *run.params.values()]
    assert placed and all(t.device == META for t in placed)
    assert set(run.extra) == set(extra)

    for device in (None, "cpu", torch.device("cpu")):
        back = run_dir.load("last", device=device)
        loaded = back.model.state_dict()
        for k, v in model.state_dict().items():
            assert loaded[k].device.type == "cpu" and torch.equal(loaded[k], v)
        assert all(torch.equal(back.extra[k], v.detach()) for k, v in extra.items())


def test_loading_on_a_missing_device_is_refused_in_one_line(tmp_path):
    from fewshot.config import TrainConfig
    from fewshot.runs import RunDir, load_run

    config = TrainConfig.of(algorithm="maml", dataset="sinusoid")
    run_dir = RunDir(tmp_path / "run")
    run_dir.start(config)
    run_dir.save_checkpoint("last", config.build_model(), {}, config)
    with pytest.raises(ValueError, match="banana") as error:
        load_run(run_dir.path, "last", device="banana")
    assert "\n" not in str(error.value)


def test_compare_builtins_follow_the_device():
    from fewshot.compare import load_method

    scratch = load_method("scratch", 3, (1, 28, 28), 5, device="meta")
    assert all(p.device == META for p in scratch.params.values()) and scratch.params
    pixels = load_method("pixel-nn", 3, (1, 28, 28), device="meta")
    assert pixels.device == META and pixels.params == {}
    assert load_method("pixel-nn", 3, (1, 28, 28)).device is None  # computes where the data is


@pytest.mark.filterwarnings(NO_COPY_WARNING)
def test_web_models_load_on_a_device():
    from fewshot.web.models import web_models

    on_meta = web_models(device="meta")
    for loaded in (on_meta.maml, on_meta.pretrained, on_meta.protonet):
        assert loaded.device == META
        assert all(t.device == META for t in loaded.model.state_dict().values())
    assert web_models().protonet.device.type == "cpu"  # the default, shared with the web tests


# -- choosing a device --------------------------------------------------------------------------------------

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not devices._mps_available()


def test_auto_is_the_best_device_here():
    expected = "cuda" if not NO_CUDA else "mps" if not NO_MPS else "cpu"
    assert devices.resolve("auto").type == expected
    assert devices.resolve() == devices.resolve("auto")
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.resolve(torch.device("meta")) == META


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_is_refused_without_a_gpu(name):
    with pytest.raises(ValueError) as error:
        devices.resolve(name)
    message = str(error.value)
    assert "no CUDA GPU" in message and name in message and "\n" not in message


def test_an_unknown_device_is_refused_naming_the_choices():
    for name in ("banana", "xla"):
        with pytest.raises(ValueError) as error:
            devices.resolve(name)
        message = str(error.value)
        assert name in message and "\n" not in message
        assert all(choice in message for choice in devices.CHOICES)


@pytest.mark.skipif(not NO_MPS, reason="this machine has MPS")
def test_mps_is_refused_where_it_is_missing():
    with pytest.raises(ValueError, match="MPS is not available"):
        devices.resolve("mps")


# -- evaluation moves each task to the model ----------------------------------------------------------------


class DeviceChecked(nn.Module):
    """A linear embedding whose forward insists on getting its input where its weight is."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.device == self.linear.weight.device, (
            f"input on {x.device}, weight on {self.linear.weight.device}"
        )
        return self.linear(x.flatten(1))


@pytest.fixture
def moves(monkeypatch) -> list[torch.device]:
    """The device of every ``move_task`` call made by evaluation (the real one still runs)."""
    seen: list[torch.device] = []

    def spy(task: Task, device: torch.device) -> Task:
        seen.append(device)
        return real(task, device)

    real = devices.move_task
    monkeypatch.setattr(devices, "move_task", spy)
    return seen


def test_evaluate_moves_every_episode_to_the_parameters(blobs, moves):
    from fewshot.algorithms.protonet import ProtoNet

    model = DeviceChecked(28 * 28)
    result = evaluate(ProtoNet(), model, blobs, ways=3, shots=1, queries=2, episodes=4, progress=False)
    assert moves == [model.linear.weight.device] * 4
    assert all(isinstance(a, float) for a in result.accuracies) and isinstance(result.mean, float)
    moves.clear()
    params = {k: v.detach() for k, v in parameters_of(model).items()}
    evaluate(ProtoNet(), model, blobs, 3, 1, 2, episodes=2, params=params, progress=False, support=True)
    assert moves == [torch.device("cpu")] * 2


def test_evaluate_without_parameters_keeps_the_data_device_unless_told(blobs, moves):
    from fewshot.baselines import NearestNeighbour

    evaluate(NearestNeighbour("pixel"), nn.Identity(), blobs, 3, 1, 2, episodes=2, progress=False)
    assert moves == []
    evaluate(
        NearestNeighbour("pixel"), nn.Identity(), blobs, 3, 1, 2, episodes=2, progress=False, device="cpu"
    )
    assert moves == [torch.device("cpu")] * 2


def test_evaluate_regression_moves_tasks_and_gives_floats(moves):
    from fewshot.algorithms.maml import MAML

    class Checked(DeviceChecked):
        def __init__(self) -> None:
            super().__init__(1)
            self.linear = nn.Linear(1, 1)

    result = evaluate_regression(MAML(0.01, 1), Checked(), Sinusoid(shots=5, queries=5), 3, progress=False)
    assert moves == [torch.device("cpu")] * 3
    assert all(isinstance(s, float) for s in result.accuracies) and result.metric == "mse"


def test_the_run_directory_functions_take_a_device():
    """Every reader of a run takes ``device`` (None: the CPU, as before), so the command line can pass it on."""
    import importlib
    import inspect

    from fewshot import compare, report, runs

    evaluation = importlib.import_module("fewshot.evaluate")  # `fewshot.evaluate` is also the function
    predicting = importlib.import_module("fewshot.predict")
    for fn in (runs.load_run, runs.RunDir.load, compare.load_method, compare.prepare, predicting.predict,
               evaluation.evaluate, evaluation.evaluate_regression, evaluation.score_tasks,
               evaluation.evaluate_tasks, evaluation.evaluate_run, report.report):  # fmt: skip
        parameter = inspect.signature(fn).parameters["device"]
        assert parameter.default is None, fn.__qualname__


def test_move_task_is_a_no_op_on_the_same_device():
    task = cpu_task("vectors")
    assert devices.move_task(task, torch.device("cpu")) is task
    moved = devices.move_task(task, META)
    assert isinstance(moved, Task) and moved.ways == task.ways
    assert all(t.device == META for t in tensors_in(moved))


@pytest.mark.parametrize("name", [n for n, spec in algorithms().items() if "bandit" in spec.data])
def test_every_bandit_algorithm_keeps_every_tensor_on_the_model_device(name):
    from fewshot.rl.bandits import BanditBatch, Bandits

    spec = algorithms()[name]
    options = spec.settings()
    with torch.device(META):
        model = spec.model(ModelRequest("bandit", in_features=0, hidden=8, actions=3), options)
    tasks = [Bandits(arms=3, horizon=6, seed=0).task(i) for i in range(3)]
    for testing in (False, True):
        algorithm = spec.build(options, testing)
        with CpuCreations() as mode:
            params = parameters_of(model) | algorithm.extra_params(model)
            loss, scores = algorithm.batch_loss(model, params, tasks)
            actions, rewards = algorithm.play(model, params, BanditBatch.of(tasks))
        assert mode.found == [], f"{name}: tensors created on the CPU: {mode.found}"
        found = tensors_in(params, loss, scores, actions, rewards)
        assert found and all(t.device == META for t in found), f"{name}: {[t.device for t in found]}"
        assert actions.shape == rewards.shape == (3, 6) and len(scores) == 3
