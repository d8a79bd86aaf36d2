"""On a CUDA GPU: training gives the weights the CPU gives, and a CPU checkpoint evaluates alike on the GPU.

Run with ``pytest -m cuda``; skipped where ``torch.cuda.is_available()`` is False. Placement itself (every tensor
on the model's device) is checked everywhere, GPU or not, on the meta device (``test_devices.py``); this module
checks the numbers.

Why a tolerance (1e-4, float32) and not equality: the GPU computes the same sums in other orders (cuDNN picks
its own convolution algorithms, ``index_add_`` adds with atomics), so results differ in the last bits, and three
steps of training carry that along. TF32 (10-bit mantissa matrix products on Ampere and later GPUs) is switched
off for the comparison: it is a precision choice, not a placement one. Plain SGD, as in ``test_distributed.py``:
Adam divides each step by the gradient's own size, which turns rounding noise in a gradient that is zero in
exact arithmetic (a conv bias before BatchNorm) into a step of the learning rate's size. The learning rate is
kept small for the same reason on another path: conv4's max-pooling picks among near-equal values, so rounding
can route one pixel's gradient elsewhere; with ``outer_lr`` 0.05 such a switch moves a weight far less than 1e-4.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_image_folder
from fewshot import io
from fewshot.config import TrainConfig
from fewshot.evaluate import evaluate_run
from fewshot.train import Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False here)"
    ),
]

TOLERANCE = 1e-4  # float32 weights after 3 steps, CPU against GPU (module docstring)
COMMON = dict(steps=3, val_every=0, log_every=1, optimizer="sgd", outer_lr=0.05, threads=1, seed=3, hidden=8)
EPISODES = dict(ways=3, shots=1, queries=2, tasks_per_step=2)
GRADIENT = dict(inner_lr=0.1, test_inner_steps=2)

CASES: dict[str, dict] = {
    "maml": dict(algorithm="maml", **GRADIENT, **EPISODES),
    "fomaml": dict(algorithm="fomaml", **GRADIENT, **EPISODES),
    "anil": dict(algorithm="anil", **GRADIENT, **EPISODES),
    "metasgd": dict(algorithm="metasgd", **GRADIENT, **EPISODES),
    "reptile": dict(algorithm="reptile", inner_steps=2, **GRADIENT, **EPISODES),
    "mamlpp": dict(algorithm="mamlpp", inner_lr=0.1, inner_steps=2, epoch_steps=1, **EPISODES),
    "protonet": dict(algorithm="protonet", **EPISODES),
    "matching": dict(algorithm="matching", **EPISODES),
    "relation": dict(algorithm="relation", **EPISODES),
    "siamese": dict(algorithm="siamese", **EPISODES),
    "baseline": dict(algorithm="baseline", batch_size=16, finetune_steps=10),
    "cavia": dict(
        algorithm="cavia",
        dataset="sinusoid",
        shots=5,
        queries=5,
        tasks_per_step=4,
        inner_lr=0.1,
        test_inner_steps=2,
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """15 classes of 6 small PNG images: 9 train, 3 validation, 3 test classes."""
    return write_image_folder(tmp_path_factory.mktemp("cuda") / "images", classes=15, per_class=6)


@pytest.fixture(autouse=True)
def full_float32():
    """Matrix products and convolutions in full float32 on the GPU (no TF32), restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def config(name: str, images: Path, device: str) -> TrainConfig:
    settings = CASES[name]
    data = {} if "dataset" in settings else {"dataset": "folder", "data_root": str(images)}
    return TrainConfig.of(**data, **COMMON, **settings, device=device)


def train(name: str, images: Path, device: str, run_dir: Path) -> dict[str, torch.Tensor]:
    """Trains case ``name`` on ``device``; returns its last checkpoint (read on the CPU)."""
    Trainer(config(name, images, device), run_dir, progress=False).run()
    return io.load_tensors(run_dir / "model.safetensors")


@pytest.mark.parametrize("name", list(CASES))
def test_training_on_cuda_gives_the_cpu_weights(name, images, tmp_path):
    on_cpu = train(name, images, "cpu", tmp_path / "cpu")
    on_gpu = train(name, images, "cuda", tmp_path / "cuda")
    assert on_gpu.keys() == on_cpu.keys()
    for key, value in on_cpu.items():
        torch.testing.assert_close(on_gpu[key], value, rtol=TOLERANCE, atol=TOLERANCE, msg=f"{name}: {key}")


@pytest.mark.parametrize("name", ["maml", "protonet", "relation", "baseline", "cavia"])
def test_a_cpu_checkpoint_evaluates_alike_on_cuda(name, images, tmp_path):
    """The CPU's checkpoint, loaded on the GPU: the same test episodes give the same scores.

    Accuracies may differ only where a query's two best classes are within rounding of each other (then the
    argmax can go either way): at most one query answer per episode, in a few episodes.
    """
    run = tmp_path / "run"
    train(name, images, "cpu", run)
    queries = 2
    kwargs = dict(ways=3, shots=(1,), episodes=20, seed=0, queries=queries, progress=False)
    on_cpu = evaluate_run(run, device="cpu", **kwargs)[0]
    on_gpu = evaluate_run(run, device="cuda", **kwargs)[0]
    assert isinstance(on_gpu.mean, float) and all(isinstance(a, float) for a in on_gpu.accuracies)
    cpu_scores, gpu_scores = np.array(on_cpu.accuracies), np.array(on_gpu.accuracies)
    if on_cpu.metric == "mse":
        np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-6)
    else:
        one_answer = 1 / (3 * queries)
        assert np.all(np.abs(gpu_scores - cpu_scores) <= one_answer + 1e-12)
        assert np.sum(gpu_scores != cpu_scores) <= 2, (cpu_scores, gpu_scores)


def test_predict_on_cuda_gives_the_cpu_probabilities(images, tmp_path):
    from fewshot.predict import predict

    run = tmp_path / "run"
    train("protonet", images, "cpu", run)
    support, queries = tmp_path / "support", tmp_path / "queries"
    for folder in sorted(p for p in images.iterdir() if p.is_dir())[:3]:
        shutil.copytree(folder, support / folder.name, ignore=lambda _, names: sorted(names)[3:])
        queries.mkdir(exist_ok=True)
        last = sorted(folder.iterdir())[-1]
        shutil.copy(last, queries / f"{folder.name}.png")
    on_cpu = predict(run, support, [str(queries)])
    on_gpu = predict(run, support, [str(queries)], device="cuda")
    assert on_gpu.classes == on_cpu.classes and on_gpu.queries == on_cpu.queries
    np.testing.assert_allclose(on_gpu.probabilities, on_cpu.probabilities, rtol=1e-4, atol=1e-5)
