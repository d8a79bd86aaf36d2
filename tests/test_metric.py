"""Matching, Relation and Siamese networks, the pair samplers, and the baselines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.algorithms.base import parameters_of, predict_task, task_loss
from fewshot.algorithms.matching import MatchingModel, MatchingNet, attention_log_probs
from fewshot.algorithms.relation import RelationModel, RelationNet
from fewshot.algorithms.siamese import Siamese, SiameseModel, best_threshold, verification_accuracy
from fewshot.baselines import FineTune, NearestNeighbour, Scratch
from fewshot.evaluate import evaluate
from fewshot.models import Conv4
from fewshot.tasks.episodes import EpisodeSampler, Split, Task
from fewshot.tasks.pairs import PairSampler, TripletSampler


def _task(seed=0, ways=4, shots=3, queries=5, dim=6) -> Task:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(ways * shots, dim, generator=g, dtype=torch.float64)
    xq = torch.randn(ways * queries, dim, generator=g, dtype=torch.float64)
    ys, yq = torch.arange(ways).repeat_interleave(shots), torch.arange(ways).repeat_interleave(queries)
    return Task(Split(xs, ys), Split(xq, yq), ways)


def _embedder(dim=6, out=5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, out), nn.Tanh()).double()


def test_matching_is_an_attention_weighted_vote_and_one_hot_attention_is_nearest_neighbour():
    task, model = _task(), _embedder()
    params = parameters_of(model)
    algo = MatchingNet()
    logp = algo.predict(model, params, algo.adapt(model, params, task.support, 4), task.query.x)
    f, g = model(task.query.x), model(task.support.x)
    cos = F.normalize(f, dim=-1) @ F.normalize(g, dim=-1).T
    a = cos.softmax(-1)
    vote = torch.stack([a[:, task.support.y == k].sum(-1) for k in range(4)], -1)  # sum_i a_i onehot(y_i)
    assert torch.allclose(logp.exp(), vote) and torch.allclose(
        logp.exp().sum(-1), torch.ones(20, dtype=f.dtype)
    )
    assert torch.allclose(F.log_softmax(logp, -1), logp)  # cross-entropy on it is the paper's NLL
    # a one-hot attention (a very sharp softmax) puts all the mass on the most similar support example
    sharp = attention_log_probs(f, g, task.support.y, 4, scale=1e6).exp()
    nearest = task.support.y[cos.argmax(-1)]
    assert torch.allclose(sharp, F.one_hot(nearest, 4).double(), atol=1e-9)


def test_matching_full_context_embeddings_read_the_support_and_learn(blobs, one_thread):
    torch.manual_seed(0)
    model = MatchingModel(Conv4(hidden=8), dim=8, query_steps=2)
    algo = MatchingNet(fce=True)
    sampler = EpisodeSampler(blobs.labels, 3, 2, 3, 60, seed=0)
    params = parameters_of(model)
    assert any(k.startswith("fce.") for k in params)
    task = sampler.task(blobs, 0)
    g_plain = model(task.support.x)
    g_fce = algo.adapt(model, params, task.support, 3)[0]
    assert g_fce.shape == g_plain.shape and not torch.allclose(g_fce, g_plain)
    # the support context matters: other support examples change a query's embedding
    other = sampler.task(blobs, 1).support
    q_a = algo.predict(model, params, algo.adapt(model, params, task.support, 3), task.query.x)
    q_b = algo.predict(model, params, algo.adapt(model, params, other, 3), task.query.x)
    assert not torch.allclose(q_a, q_b)
    _learns(algo, model, blobs, ways=3, lr=3e-3)


def _learns(algo, model, data, ways=3, steps=40, lr=3e-3):
    """Trains ``model`` on a few episodes; query accuracy on held-out episodes must rise well above chance."""
    sampler = EpisodeSampler(data.labels, ways, 2, 3, steps, seed=1)
    before = evaluate(algo, model, data, ways, 2, 3, 20, seed=99, progress=False).mean
    opt = torch.optim.Adam(model.parameters(), lr)
    for i in range(steps):
        opt.zero_grad()
        task_loss(algo, model, parameters_of(model), sampler.task(data, i))[0].backward()
        opt.step()
    after = evaluate(algo, model, data, ways, 2, 3, 20, seed=99, progress=False).mean
    assert after > max(before, 1 / ways) + 0.15, (before, after)


def test_relation_scores_are_in_unit_range_trained_by_mse_to_one_hot(blobs, one_thread):
    torch.manual_seed(0)
    model = RelationModel(hidden=8, relation_dim=4)
    algo = RelationNet()
    task = EpisodeSampler(blobs.labels, 3, 2, 3, 1, seed=0).task(blobs, 0)
    params = parameters_of(model)
    classes = algo.adapt(model, params, task.support, 3)
    z = model(task.support.x)
    assert classes.shape == (3, 8, 5, 5)
    assert torch.allclose(classes[1], z[task.support.y == 1].sum(0))  # class map = sum over shots
    loss, scores = task_loss(algo, model, params, task)
    assert scores.shape == (9, 3) and (scores >= 0).all() and (scores <= 1).all()
    assert torch.allclose(loss, ((scores - F.one_hot(task.query.y, 3)) ** 2).mean())
    _learns(algo, model, blobs, ways=3, lr=3e-3)


@pytest.mark.parametrize("loss", ["bce", "contrastive", "triplet"])
def test_siamese_similarity_is_symmetric_and_each_loss_learns(blobs, one_thread, loss):
    torch.manual_seed(0)
    model = SiameseModel(Conv4(hidden=8), dim=8)
    algo = Siamese(loss=loss)
    params = parameters_of(model)
    z = model(blobs.gather(torch.arange(0, 40, 4)).float() / 255)
    sim = algo.similarity(model, params, z, z)
    assert torch.allclose(sim, sim.T)
    _learns(algo, model, blobs, ways=3, lr=3e-3)


def test_triplet_loss_is_zero_when_the_margin_holds_and_positive_otherwise():
    algo = Siamese(loss="triplet", margin=1.0)
    y = torch.tensor([0, 0, 1, 1])
    # classes 10 apart, members 0.1 apart: d(a,p)^2 - d(a,n)^2 + 1 < 0 for every triplet
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    assert algo.pair_loss(None, {}, far, y).item() == 0.0
    near = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.9, 0.0], [1.3, 0.0]])
    # anchor 0, positive 1, negative 2: 0.25 - 0.81 + 1 = 0.44 > 0
    assert algo.pair_loss(None, {}, near, y).item() > 0


def test_contrastive_loss_and_verification_threshold():
    algo = Siamese(loss="contrastive", margin=2.0)
    y = torch.tensor([0, 0, 1])
    z = torch.tensor([[0.0], [0.0], [3.0]])  # same pair at distance 0, others beyond the margin: no loss
    assert algo.pair_loss(None, {}, z, y).item() == 0.0
    z = torch.tensor([[0.0], [1.0], [1.5]])  # same pair at 1: 1^2; pairs at 1.5 and 0.5 from class 1
    expected = 0.5 * (1.0 + ((2 - 1.5) ** 2 + (2 - 0.5) ** 2) / 2)
    assert algo.pair_loss(None, {}, z, y).item() == pytest.approx(expected)
    sim, same = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.9]), torch.tensor([0, 0, 1, 1, 1])
    t = best_threshold(sim, same)
    assert verification_accuracy(sim, same, t) == pytest.approx(0.8)  # one of the two "different" is above
    assert algo.threshold() == -1.0 and Siamese(loss="triplet").threshold() is None


def test_pair_and_triplet_samplers_are_seeded_and_correct(blobs):
    pairs = PairSampler(blobs.labels, batch=9, seed=3)
    a = pairs.pairs(5)
    assert all(torch.equal(x, y) for x, y in zip(a, pairs.pairs(5), strict=True))
    assert not torch.equal(a.first, pairs.pairs(6).first)
    assert a.same.sum() == 5 and torch.equal(blobs.labels[a.first] == blobs.labels[a.second], a.same)
    assert (a.first != a.second).all()
    t = TripletSampler(blobs.labels, batch=7, seed=0).triplets(0)
    assert (blobs.labels[t.anchor] == blobs.labels[t.positive]).all() and (t.anchor != t.positive).all()
    assert (blobs.labels[t.anchor] != blobs.labels[t.negative]).all()
    with pytest.raises(ValueError, match="at least 2 classes"):
        PairSampler(torch.zeros(5), batch=2, seed=0)


def test_scratch_fits_the_support_and_generalises_less(one_thread):
    from conftest import make_blobs

    noisy = make_blobs(noise=120.0)  # one example per class does not pin the class down
    torch.manual_seed(0)
    model = Conv4(hidden=8, out_features=3, track_running_stats=False)
    r = evaluate(Scratch(steps=30, lr=1e-2), model, noisy, 3, 1, 5, 10, seed=0, progress=False, support=True)
    assert r.support_mean == 1.0
    assert 1 / 3 + 0.1 < r.mean < 0.95


def _pretrained_blob_classifier(blobs, cosine: bool) -> nn.Module:
    torch.manual_seed(0)
    model = Conv4(hidden=8, out_features=6, cosine_head=cosine)
    first = blobs.labels < 6  # pretrain on classes 0-5, test on 6-11
    x, y = blobs.images[first].float() / 255, blobs.labels[first]
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_fine_tuning_and_embedding_nn_of_a_pretrained_network_work_on_new_classes(blobs, one_thread, head):
    model = _pretrained_blob_classifier(blobs, head == "cosine")
    test = blobs.subset(blobs.labels >= 6)
    algo = FineTune(head=head, steps=50)
    r = evaluate(algo, model, test, 3, 1, 5, 20, seed=0, progress=False, support=True)
    assert r.support_mean == 1.0 and r.mean > 0.7
    full = evaluate(
        FineTune(head=head, steps=10, all_layers=True), model, test, 3, 1, 5, 5, seed=0, progress=False
    )
    assert full.mean > 1 / 3 + 0.2
    # nearest neighbour in the pretrained embedding works on the new classes too
    nn_embed = evaluate(NearestNeighbour("embedding"), model, test, 3, 1, 5, 20, seed=0, progress=False)
    assert nn_embed.mean > 0.7


def test_nearest_neighbour_in_pixels_is_exact_one_nn():
    task = _task(ways=3, shots=2, queries=4)
    algo = NearestNeighbour("pixel")
    logits = predict_task(algo, nn.Identity(), {}, task)
    nearest = torch.cdist(task.query.x, task.support.x).argmin(-1)
    assert torch.equal(logits.argmax(-1), task.support.y[nearest])
    cos = predict_task(NearestNeighbour("pixel", "cosine"), nn.Identity(), {}, task)
    sim = F.normalize(task.query.x, dim=-1) @ F.normalize(task.support.x, dim=-1).T
    assert torch.equal(cos.argmax(-1), task.support.y[sim.argmax(-1)])


def test_relation_and_siamese_scores_keep_the_models_dtype_and_lift_only_half_precision(blobs):
    # float64 models give float64 scores (a cast to float32 lost their precision); bf16 autocast gives float32
    task = EpisodeSampler(blobs.labels, 3, 1, 2, 1, seed=0).task(blobs, 0)
    torch.manual_seed(0)
    relation = RelationModel(hidden=8, relation_dim=4).eval()
    siamese = SiameseModel(Conv4(hidden=8), dim=8).eval()

    def scores(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        support, x = Split(task.support.x.to(dtype), task.support.y), task.query.x.to(dtype)
        r, s, algo = parameters_of(relation), parameters_of(siamese), Siamese()
        return {
            "relation": RelationNet().predict(relation, r, RelationNet().adapt(relation, r, support, 3), x),
            "siamese": algo.predict(siamese, s, algo.adapt(siamese, s, support, 3), x),  # via similarity()
            "verify": algo.verify(siamese, s, x[:3], x[3:]),
        }

    for model in (relation, siamese):
        model.double()
    for name, value in scores(torch.float64).items():
        assert value.dtype == torch.float64, name
    for model in (relation, siamese):
        model.float()
    full = scores(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = scores(torch.float32)
    for name, value in half.items():
        assert value.dtype == torch.float32, name
        assert torch.allclose(value, full[name], rtol=0.05, atol=0.05), name  # bf16 rounding only
