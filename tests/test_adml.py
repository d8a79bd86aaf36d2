"""ADML and the attacks: FGSM and PGD against their definitions, ADML against MAML and finite differences, and
the evaluation under attack through Python and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.algorithms.adml import ADML
from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.maml import MAML
from fewshot.algorithms.protonet import ProtoNet
from fewshot.algorithms.routes import meta_gradient
from fewshot.attacks import Attack, attacked_scores, fgsm, input_gradient, pgd
from fewshot.cli import main
from fewshot.evaluate import evaluate
from fewshot.models import Conv4
from fewshot.tasks.episodes import EpisodeSampler, Split, Task, stack_tasks

TINY = ["--ways", "5", "--shots", "1", "--queries", "3", "--steps", "4", "--hidden", "8", "--val-every", "0",
        "--log-every", "2", "--quiet", "--test-episodes", "3", "--test-shots", "1"]  # fmt: skip


def image_task(ways=3, shots=2, queries=2, size=16, seed=0, dtype=torch.float64) -> Task:
    g = torch.Generator().manual_seed(seed)
    y_s, y_q = torch.arange(ways).repeat_interleave(shots), torch.arange(ways).repeat_interleave(queries)
    x_s = torch.rand(ways * shots, 1, size, size, generator=g, dtype=dtype)
    x_q = torch.rand(ways * queries, 1, size, size, generator=g, dtype=dtype)
    return Task(Split(x_s, y_s), Split(x_q, y_q), ways)


def conv(ways=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return Conv4(1, 4, ways, track_running_stats=False).double()


def linear_loss(w: torch.Tensor, y: torch.Tensor):
    return lambda x: F.cross_entropy(x.flatten(1) @ w, y)


def test_fgsm_is_epsilon_times_the_sign_of_the_input_gradient_inside_the_pixel_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 5, 5, generator=g, dtype=torch.float64)
    x[0, 0, 0] = torch.tensor([0.0, 1.0, 0.02, 0.99, 0.5])  # pixels at and near the edges of [0, 1]
    loss = linear_loss(torch.randn(25, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]))
    sign = input_gradient(loss, x).sign()
    adv = fgsm(loss, x, 0.1)
    assert adv.min() >= 0 and adv.max() <= 1
    inside = ((x + 0.1 * sign) >= 0) & ((x + 0.1 * sign) <= 1)
    assert inside.float().mean() > 0.5 and not inside.all()  # both cases occur
    torch.testing.assert_close((adv - x)[inside], 0.1 * sign[inside], rtol=0, atol=1e-15)
    torch.testing.assert_close(adv[~inside], (x + 0.1 * sign).clamp(0, 1)[~inside], rtol=0, atol=0)
    assert loss(adv) > loss(x)
    vectors = torch.randn(6, 25, generator=g, dtype=torch.float64) * 3  # no pixel range for feature vectors
    sign = input_gradient(loss, vectors).sign()
    torch.testing.assert_close(fgsm(loss, vectors, 0.5, None) - vectors, 0.5 * sign, rtol=0, atol=1e-15)


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_the_epsilon_ball_and_the_pixel_range_and_beats_fgsm_or_ties(random_start):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(9, 1, 4, 4, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    y = torch.arange(3).repeat(3)

    def loss(z):
        return F.cross_entropy(net(z), y)

    start = torch.Generator().manual_seed(5) if random_start else None
    adv = pgd(loss, x, 0.05, steps=20, generator=start)
    assert (adv - x).abs().max() <= 0.05 + 1e-15 and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > 0.04  # it moved out to the ball's edge somewhere
    assert loss(adv) >= loss(fgsm(loss, x, 0.05)) - 1e-9 > loss(x)
    if random_start:  # the random start is drawn from the generator: the same seed, the same attack
        again = pgd(loss, x, 0.05, steps=20, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(adv, again, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_adml_with_epsilon_zero_is_maml_loss_and_meta_gradient(kind):
    model, task = conv(), image_task()
    params = parameters_of(model)
    maml = MAML(inner_lr=0.3, inner_steps=2)
    adml = ADML(inner_lr=0.3, inner_steps=2, attack=Attack(kind, 0.0))
    (loss_m, out_m), (loss_a, out_a) = (
        maml.task_loss(model, params, task),
        adml.task_loss(model, params, task),
    )
    torch.testing.assert_close(loss_a, loss_m, rtol=1e-14, atol=0)
    torch.testing.assert_close(out_a, out_m, rtol=1e-14, atol=0)
    g_m = torch.autograd.grad(loss_m, list(params.values()))
    g_a = torch.autograd.grad(loss_a, list(params.values()))
    for a, m in zip(g_a, g_m, strict=True):
        torch.testing.assert_close(a, m, rtol=1e-12, atol=1e-15)


def test_adml_meta_gradient_matches_finite_differences_and_its_routes_agree():
    """The perturbations are constants of the meta-gradient; nudging theta by 1e-6 leaves every sign unchanged."""
    model, task = conv(seed=2), image_task(seed=3)
    params = {k: v.detach().clone() for k, v in parameters_of(model).items()}
    adml = ADML(inner_lr=0.2, inner_steps=1, attack=Attack("fgsm", 0.1))
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    grads = dict(zip(leaves, torch.autograd.grad(adml.task_loss(model, leaves, task)[0], list(leaves.values())),
                     strict=True))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for name in ["head.weight", "encoder.0.0.weight", "encoder.3.1.bias"]:
        for _ in range(3):
            i = int(torch.randint(params[name].numel(), (1,), generator=gen))
            h = 1e-6
            plus, minus = dict(params), dict(params)
            plus[name] = params[name].flatten().index_add(0, torch.tensor([i]), torch.tensor([h]).double())
            minus[name] = params[name].flatten().index_add(0, torch.tensor([i]), torch.tensor([-h]).double())
            plus[name], minus[name] = plus[name].view_as(params[name]), minus[name].view_as(params[name])
            numeric = (adml.task_loss(model, plus, task)[0] - adml.task_loss(model, minus, task)[0]) / (2 * h)
            assert abs(numeric.item() - grads[name].flatten()[i].item()) < 1e-6
    batch = stack_tasks([image_task(seed=s) for s in range(3)])
    loop, _ = meta_gradient(adml, model, leaves, batch, route="loop")
    threads, _ = meta_gradient(adml, model, leaves, batch, route="threads", workers=2)
    tasks = [Task(Split(batch.support.x[i], batch.support.y[i]), Split(batch.query.x[i], batch.query.y[i]), 3)
             for i in range(3)]  # fmt: skip
    loss, _ = adml.batch_loss(model, leaves, tasks)  # the autograd route: one backward through the mean loss
    auto = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    for k in loop:
        torch.testing.assert_close(threads[k], loop[k], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(auto[k], loop[k], rtol=1e-10, atol=1e-13)


def test_attack_evaluation_scores_every_learner_on_the_same_episodes(blobs):
    torch.manual_seed(0)
    model = Conv4(1, 8)
    algorithm = ProtoNet()
    none = evaluate(algorithm, model, blobs, 3, 1, 2, episodes=6, progress=False, attack=Attack("pgd", 0.0))
    assert none.adversarial_accuracies == none.accuracies  # epsilon 0: the attack changes nothing
    plain = evaluate(algorithm, model, blobs, 3, 1, 2, episodes=6, progress=False)
    attacked = evaluate(algorithm, model, blobs, 3, 1, 2, episodes=6, progress=False,
                        attack=Attack("pgd", 0.2, steps=5, support=True))  # fmt: skip
    assert attacked.accuracies == plain.accuracies  # clean scores: the same episodes as without an attack
    assert attacked.adversarial_mean < attacked.mean
    assert "under pgd (epsilon 0.2, support too)" in str(attacked)
    maml = MAML(inner_lr=0.4, inner_steps=2)
    model = Conv4(1, 8, 3, track_running_stats=False)
    task = EpisodeSampler(blobs.labels, 3, 1, 2, 1).task(blobs, 0)
    clean, adversarial = attacked_scores(maml, model, parameters_of(model), task, Attack("fgsm", 0.3))
    plain = evaluate(maml, model, blobs, 3, 1, 2, episodes=1, progress=False)
    assert clean == plain.accuracies[0] and adversarial < clean  # the same episode, and the attack hurts


def test_fewshot_eval_attack_and_adml_training_from_the_cli(tmp_path, capsys, one_thread):
    run = tmp_path / "adml"
    argv = ["train", "--algorithm", "adml", "--run-dir", str(run), *TINY, "--epsilon", "0.1", "--attack", "pgd",
            "--attack-steps", "2"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["algorithm"], config["attack"], config["epsilon"]) == ("adml", "pgd", 0.1)
    capsys.readouterr()
    assert main(["eval", str(run), "--shots", "1", "--episodes", "4", "--attack", "pgd", "--epsilon", "0.2",
                 "--attack-steps", "3", "--quiet"]) == 0  # fmt: skip
    assert "under pgd (epsilon 0.2)" in capsys.readouterr().out
    record = json.loads((run / "eval.json").read_text())[-1]["results"][0]
    assert record["attack"]["epsilon"] == 0.2 and len(record["adversarial_accuracies"]) == 4
    assert main(["eval", str(run), "--epsilon", "0.2", "--quiet"]) == 2
    assert "go with --attack" in capsys.readouterr().err
    assert main(["eval", str(run), "--attack-steps", "3", "--quiet"]) == 2
    assert "go with --attack" in capsys.readouterr().err
    assert main(["eval", str(run), "--attack", "pgd", "--epsilon", "-1", "--quiet"]) == 2
    assert "epsilon must be" in capsys.readouterr().err
    assert main(["train", "--algorithm", "adml", "--epsilon", "-0.1", "--quiet"]) == 2
    assert "epsilon must be at least 0" in capsys.readouterr().err


def test_adml_loss_is_algorithm_1_written_out_by_hand():
    """FGSM on the support against theta, on the query against theta_clean; each adaptation scored on the other
    kind of query set (Yin et al. 2018, Algorithm 1), written with plain autograd on a one-hidden-layer network."""
    g = torch.Generator().manual_seed(4)
    w1, w2 = (
        torch.randn(5, 7, generator=g, dtype=torch.float64),
        torch.randn(7, 3, generator=g, dtype=torch.float64),
    )
    xs, xq = (
        torch.randn(6, 5, generator=g, dtype=torch.float64),
        torch.randn(9, 5, generator=g, dtype=torch.float64),
    )
    ys, yq = torch.arange(3).repeat(2), torch.arange(3).repeat(3)
    eps, lr, adv_lr = 0.3, 0.5, 0.2

    def ce(w, x, y):
        return F.cross_entropy(torch.tanh(x @ w[0]) @ w[1], y)

    def fgsm_by_hand(w, x, y):
        x = x.clone().requires_grad_()
        return (x + eps * torch.autograd.grad(ce(w, x, y), x)[0].sign()).detach()

    def adapted(w, x, y, step):
        grads = torch.autograd.grad(ce(w, x, y), w, create_graph=True)
        return [p - step * d for p, d in zip(w, grads, strict=True)]

    w = [w1.clone().requires_grad_(), w2.clone().requires_grad_()]
    clean, adv = adapted(w, xs, ys, lr), adapted(w, fgsm_by_hand(w, xs, ys), ys, adv_lr)
    want = 0.5 * (ce(clean, fgsm_by_hand(clean, xq, yq), yq) + ce(adv, xq, yq))
    swapped = 0.5 * (ce(adv, fgsm_by_hand(adv, xq, yq), yq) + ce(clean, xq, yq))  # the other pairing

    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.Tanh(), nn.Linear(7, 3, bias=False)).double()
    params = {"0.weight": w[0].T, "2.weight": w[1].T}
    task = Task(Split(xs, ys), Split(xq, yq), 3)
    got, _ = ADML(inner_lr=lr, adv_inner_lr=adv_lr, attack=Attack("fgsm", eps)).task_loss(model, params, task)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    assert abs(got.item() - swapped.item()) > 1e-3
    grads = torch.autograd.grad(got, w)  # and the meta-gradient: the perturbations are constants
    for a, b in zip(grads, torch.autograd.grad(want, w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
