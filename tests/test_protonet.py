from __future__ import annotations

import torch
from torch import nn

from fewshot.algorithms.base import parameters_of, task_loss
from fewshot.algorithms.protonet import ProtoNet, prototypes
from fewshot.models.conv4 import Conv4
from fewshot.tasks.episodes import EpisodeSampler, Split, Task


def _task(g: torch.Generator, ways=4, shots=3, queries=5, dim=6) -> Task:
    xs = torch.randn(ways * shots, dim, generator=g, dtype=torch.float64)
    xq = torch.randn(ways * queries, dim, generator=g, dtype=torch.float64)
    ys = torch.arange(ways).repeat_interleave(shots)
    yq = torch.arange(ways).repeat_interleave(queries)
    return Task(Split(xs, ys), Split(xq, yq), ways)


def _embedder(dim=6, out=5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, out), nn.Tanh()).double()


def test_prototypes_are_class_means_of_the_embedded_support():
    g = torch.Generator().manual_seed(0)
    task, model = _task(g), _embedder()
    algo = ProtoNet()
    centers = algo.adapt(model, parameters_of(model), task.support, task.ways)
    z = model(task.support.x)
    for k in range(task.ways):
        assert torch.allclose(centers[k], z[task.support.y == k].mean(0))
    # the helper works for any label order too
    perm = torch.randperm(len(task.support.y), generator=g)
    assert torch.allclose(prototypes(z[perm], task.support.y[perm], task.ways), centers)


def test_decision_rule_is_a_linear_classifier():
    g = torch.Generator().manual_seed(1)
    task, model = _task(g), _embedder()
    algo = ProtoNet()
    params = parameters_of(model)
    centers = algo.adapt(model, params, task.support, task.ways)
    logits = algo.predict(model, params, centers, task.query.x)
    z = model(task.query.x)
    linear = z @ (2 * centers).T - (centers * centers).sum(-1)  # weights 2 c_k, biases -||c_k||^2
    # they differ by -||z||^2, the same for every class, so the softmax and the decision are identical
    assert torch.allclose(logits, linear - (z * z).sum(-1, keepdim=True))
    assert torch.allclose(logits.softmax(-1), linear.softmax(-1))
    assert torch.equal(logits.argmax(-1), linear.argmax(-1))


def test_one_shot_is_nearest_neighbour_in_embedding_space():
    g = torch.Generator().manual_seed(2)
    task, model = _task(g, ways=6, shots=1, queries=7), _embedder()
    algo = ProtoNet()
    params = parameters_of(model)
    logits = algo.predict(model, params, algo.adapt(model, params, task.support, 6), task.query.x)
    nearest = torch.cdist(model(task.query.x), model(task.support.x)).argmin(-1)
    assert torch.equal(logits.argmax(-1), task.support.y[nearest])


def test_support_order_does_not_matter():
    g = torch.Generator().manual_seed(3)
    task, model = _task(g), _embedder()
    algo = ProtoNet()
    params = parameters_of(model)
    perm = torch.randperm(len(task.support.y), generator=g)
    shuffled = Split(task.support.x[perm], task.support.y[perm])
    a = algo.predict(model, params, algo.adapt(model, params, task.support, task.ways), task.query.x)
    b = algo.predict(model, params, algo.adapt(model, params, shuffled, task.ways), task.query.x)
    assert torch.allclose(a, b)


def test_fused_forward_equals_adapt_then_predict_in_eval_mode(blobs):
    torch.manual_seed(0)
    model = Conv4().eval()
    sampler = EpisodeSampler(blobs.labels, ways=5, shots=2, queries=3, episodes=1, seed=0)
    task = sampler.task(blobs, 0)
    algo, params = ProtoNet(), parameters_of(model)
    fused = algo.query_logits(model, params, task)
    separate = algo.predict(model, params, algo.adapt(model, params, task.support, 5), task.query.x)
    assert torch.allclose(fused, separate, atol=1e-4, rtol=1e-5)


def test_protonet_learns_unseen_classes():
    from conftest import make_blobs
    from fewshot.evaluate import evaluate

    train, test = make_blobs(classes=20, seed=0, noise=90.0), make_blobs(classes=10, seed=1, noise=90.0)
    torch.manual_seed(0)
    model, algo = Conv4(hidden=16), ProtoNet()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sampler = EpisodeSampler(train.labels, ways=5, shots=1, queries=5, episodes=60, seed=0)
    before = evaluate(algo, model, test, 5, 1, 5, episodes=50, seed=9, progress=False)
    for i in range(60):
        loss, _ = task_loss(algo, model, parameters_of(model), sampler.task(train, i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate(algo, model, test, 5, 1, 5, episodes=50, seed=9, progress=False)
    # held-out classes: from about chance (20%) to far above it
    assert before.mean < 0.5 and after.mean > 0.8


def test_conv4_pool_then_relu_equals_the_papers_relu_then_pool():
    torch.manual_seed(0)
    model = Conv4(hidden=8).double()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    papers = nn.Sequential(
        *[nn.Sequential(b[0], b[1], nn.ReLU(), nn.MaxPool2d(2)) for b in model.encoder], nn.Flatten()
    )
    ours, theirs = model(x), papers(x)
    assert torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), x)
    (g_theirs,) = torch.autograd.grad(theirs.square().sum(), x)
    assert torch.allclose(g_ours, g_theirs, atol=1e-12)


def test_bf16_autocast_keeps_distances_in_float32(blobs):
    torch.manual_seed(0)
    model = Conv4(hidden=16).eval()
    task = EpisodeSampler(blobs.labels, ways=5, shots=2, queries=3, episodes=1, seed=0).task(blobs, 0)
    algo, params = ProtoNet(), parameters_of(model)
    full = algo.query_logits(model, params, task)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = algo.query_logits(model, params, task)
    assert half.dtype == torch.float32
    # bf16 embeddings carry ~3 significant digits; the decisions agree and the logits are close
    assert torch.equal(half.argmax(-1), full.argmax(-1))
    assert torch.allclose(half, full, rtol=0.05, atol=0.05 * full.abs().max().item())
