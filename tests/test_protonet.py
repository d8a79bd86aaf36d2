from __future__ import annotations

import torch
from torch import nn

from fewshot.algorithms.base import parameters_of, task_loss
from fewshot.algorithms.protonet import ProtoNet, prototypes, squared_euclidean
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


def large_close_embeddings(d: int = 64, norm: float = 80.0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 queries ``(15, d)`` and prototypes ``(5, d)`` of norm ~``norm``, classes ~0.3 apart."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(d, generator=g)
    base = base / base.norm() * norm  # a large component common to every embedding (e.g. post-ReLU features)
    centers = base + 0.3 / d**0.5 * torch.randn(5, d, generator=g)  # class means ~0.3 apart
    queries = centers.repeat_interleave(3, 0) + 0.15 / d**0.5 * torch.randn(15, d, generator=g)
    return queries, centers


def test_squared_distances_stay_accurate_for_large_close_embeddings():
    x, c = large_close_embeddings()
    exact = (x.double().unsqueeze(1) - c.double().unsqueeze(0)).square().sum(-1)  # (15, 5), float64 reference
    got = squared_euclidean(x, c)
    assert got.dtype == torch.float32
    # the plain expansion |x|^2 - 2 x.c + |c|^2 gave a relative error of up to 5.5e-2 here (|z|^2 = 6400
    # against squared distances of 0.013 to 0.26); centred first, 7.9e-7
    assert ((got.double() - exact).abs() / exact).max() < 1e-4
    # the same through ProtoNet, with the embedding as the identity: logits are the negative distances
    support = Split(c.repeat(2, 1), torch.arange(5).repeat(2))  # two shots per class, at the class mean
    task = Task(support, Split(x, torch.arange(5).repeat_interleave(3)), 5)
    logits = ProtoNet().query_logits(nn.Identity(), {}, task)
    assert ((-logits.double() - exact).abs() / exact).max() < 1e-4
    assert torch.equal(logits.argmax(-1), task.query.y)


def test_squared_distances_are_float32_under_bf16_autocast_differentiable_vmappable_translation_free():
    x, c = large_close_embeddings(d=16, norm=5.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = squared_euclidean(x.bfloat16(), c.bfloat16())
    assert half.dtype == torch.float32
    assert torch.allclose(half, squared_euclidean(x.bfloat16().float(), c.bfloat16().float()))
    x64, c64 = x[:6].double().requires_grad_(), c[:3].double().requires_grad_()
    assert torch.autograd.gradcheck(squared_euclidean, (x64, c64))
    # vmap over tasks; the second task is the first shifted by 1 in every coordinate: the same distances
    batched = torch.func.vmap(squared_euclidean)(torch.stack([x, x + 1]), torch.stack([c, c + 1]))
    assert torch.allclose(batched[0], squared_euclidean(x, c))
    assert torch.allclose(batched[1], batched[0], rtol=1e-5, atol=1e-6)


def test_class_mean_on_a_protonet_embedding_is_protonet():
    """The ``class-mean`` test algorithm (any run's embedding) applies ProtoNet's rule exactly."""
    from fewshot.baselines import NearestMean
    from fewshot.registry import TEST_ALGORITHMS

    torch.manual_seed(0)
    model = Conv4(1, 8).eval()
    g = torch.Generator().manual_seed(1)
    task = Task(Split(torch.rand(6, 1, 28, 28, generator=g), torch.arange(3).repeat(2)),
                Split(torch.rand(9, 1, 28, 28, generator=g), torch.arange(3).repeat(3)), 3)  # fmt: skip
    params = parameters_of(model)
    mean = TEST_ALGORITHMS["class-mean"]()
    assert isinstance(mean, NearestMean)
    with torch.no_grad():
        want = ProtoNet().query_logits(model, params, task)
        got = mean.predict(model, params, mean.adapt(model, params, task.support, 3), task.query.x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
