"""Networks that read the support set: SNAIL (Mishra et al. 2018), the in-context transformer classifier and the
MANN (Santoro et al. 2016): equivalences, order (in)dependence, the contract, and learning on small data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.icl import InContextLearner
from fewshot.algorithms.mann import MANNLearner, instance_accuracy
from fewshot.algorithms.snail import SNAILLearner
from fewshot.cli import main
from fewshot.models.sequence import MANN, SNAIL, InContextClassifier, _Attention, _Dense
from fewshot.tasks.episodes import Split, Task


def clusters(
    g: torch.Generator, ways: int, shots: int, queries: int, dim: int = 8, noise: float = 0.3
) -> Task:
    """A task of Gaussian clusters: random class centres, support and query points around them."""
    centres = torch.randn(ways, dim, generator=g)
    ys = torch.arange(ways).repeat_interleave(shots)
    yq = torch.arange(ways).repeat_interleave(queries)
    return Task(
        Split(centres[ys] + noise * torch.randn(len(ys), dim, generator=g), ys),
        Split(centres[yq] + noise * torch.randn(len(yq), dim, generator=g), yq),
        ways,
    )


def embedding(dim: int = 8, out: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, out))


def snail_reference(model: SNAIL, x: torch.Tensor, y: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """SNAIL run the plain way: one sequence (support, then this single query), causal ``conv1d`` of kernel 2 and
    masked attention over the whole sequence; the logits at the last position, ``(ways,)``."""
    z = model.embedding(torch.cat([x, query.unsqueeze(0)]))  # (n + 1, d)
    labels = torch.cat([F.one_hot(y, model.ways).to(z.dtype), z.new_zeros(1, model.ways)])
    h = torch.cat([z, labels], -1)  # (T, C)
    t = len(h)
    for block in model.blocks:
        if isinstance(block, _Dense):
            r = block.dilation
            weight = torch.stack([block.before.weight, block.now.weight], -1)  # (2F, C, 2): taps t - r, t
            a = F.conv1d(F.pad(h.T.unsqueeze(0), (r, 0)), weight, block.now.bias, dilation=r)[0].T  # (T, 2F)
            f, g = a.chunk(2, -1)
            h = torch.cat([h, torch.tanh(f) * torch.sigmoid(g)], -1)
        else:
            assert isinstance(block, _Attention)
            logits = block.query(h) @ block.key(h).T * block.scale
            mask = torch.ones(t, t, dtype=torch.bool).tril()
            h = torch.cat([h, logits.masked_fill(~mask, -torch.inf).softmax(-1) @ block.value(h)], -1)
    return model.out(h[-1])


@pytest.mark.parametrize(
    "shots, length", [(2, 9), (1, 17)]
)  # dilations up to 16: some reach before the start
def test_snail_queries_in_one_pass_equal_one_sequence_per_query_float64(shots, length):
    torch.manual_seed(0)
    model = SNAIL(embedding(), 16, ways=4, length=length).double()
    g = torch.Generator().manual_seed(1)
    task = clusters(g, 4, shots, 3)
    x, q = task.support.x.double(), task.query.x.double()
    order = torch.randperm(4 * shots, generator=g)  # any support order
    x, y = x[order], task.support.y[order]
    batched = model(x.unsqueeze(0), y.unsqueeze(0), q.unsqueeze(0))[0]  # (m, ways)
    for i in range(len(q)):
        torch.testing.assert_close(batched[i], snail_reference(model, x, y, q[i]), rtol=1e-10, atol=1e-10)


def test_snail_depends_on_the_support_order_and_only_on_items_before_the_query():
    torch.manual_seed(0)
    model = SNAIL(embedding(), 16, ways=3, length=7).double()
    task = clusters(torch.Generator().manual_seed(2), 3, 2, 2)
    x, y, q = task.support.x.double(), task.support.y, task.query.x.double()
    out = model(x[None], y[None], q[None])[0]
    swapped = torch.tensor([1, 0, 2, 3, 5, 4])
    assert not torch.allclose(out, model(x[swapped][None], y[swapped][None], q[None])[0])  # order matters
    # a query is read after the support alone: the other queries (and their number) change nothing
    for i in range(len(q)):
        torch.testing.assert_close(out[i], model(x[None], y[None], q[i : i + 1][None])[0, 0])


def test_in_context_classifier_ignores_support_order_and_other_queries_and_keep_hides_items():
    torch.manual_seed(0)
    model = InContextClassifier(embedding(), 16, ways=4, width=16, depth=2, heads=2).double().eval()
    g = torch.Generator().manual_seed(3)
    task = clusters(g, 4, 3, 2)
    x, y, q = task.support.x.double(), task.support.y, task.query.x.double()
    out = model(x[None], y[None], q[None])[0]
    order = torch.randperm(len(y), generator=g)
    torch.testing.assert_close(out, model(x[order][None], y[order][None], q[None])[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1], model(x[None], y[None], q[1:2][None])[0, 0], rtol=1e-10, atol=1e-10)
    keep = torch.tensor([True, False, True] * 4)  # two shots of each class
    torch.testing.assert_close(
        model(x[None], y[None], q[None], keep=keep[None])[0], model(x[keep][None], y[keep][None], q[None])[0],
        rtol=1e-10, atol=1e-10,
    )  # fmt: skip


def test_mann_output_at_a_step_depends_only_on_earlier_steps_and_queries_are_one_more_step():
    torch.manual_seed(0)
    model = MANN(8, ways=3, controller=16, slots=8, slot_size=6, reads=2).double()
    task = clusters(torch.Generator().manual_seed(4), 3, 3, 2)
    x, y, q = task.support.x.double(), task.support.y, task.query.x.double()
    out = model(x[None], y[None])[0]  # (9, ways)
    changed_x, changed_y = x.clone(), y.clone()
    changed_x[5], changed_y[5] = changed_x[5] + 1.0, (y[5] + 1) % 3
    other = model(changed_x[None], changed_y[None])[0]
    torch.testing.assert_close(out[:5], other[:5], rtol=0, atol=0)  # before the change: identical
    assert not torch.allclose(out[5], other[5])  # the changed image is read at step 5 ...
    assert not torch.allclose(out[6], other[6])  # ... its label from step 6 on
    queried = model(x[None], y[None], q[None])[0]  # each query: one step after the support, alone
    for i in range(len(q)):
        sequence = model(torch.cat([x, q[i : i + 1]])[None], torch.cat([y, y[:1]])[None])[0]
        torch.testing.assert_close(queried[i], sequence[-1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "learner, build",
    [
        (SNAILLearner(), lambda: SNAIL(embedding(), 16, 3, 4)),
        (InContextLearner(), lambda: InContextClassifier(embedding(), 16, 3, 16, 1, 2)),
        (MANNLearner(), lambda: MANN(8, 3, 16, 8, 6, 2)),
    ],
)
def test_fewer_ways_are_read_and_more_are_refused(learner, build):
    torch.manual_seed(0)
    model = build().eval()
    params = parameters_of(model)
    two = clusters(torch.Generator().manual_seed(5), 2, 2, 2)
    with torch.no_grad():
        assert learner.predict(
            model, params, learner.adapt(model, params, two.support, 2), two.query.x
        ).shape == (4, 2)
    five = clusters(torch.Generator().manual_seed(5), 5, 1, 1)
    with pytest.raises(ValueError, match="reads at most 3 classes"):
        learner.adapt(model, params, five.support, 5)


def test_training_randomness_is_a_function_of_the_step():
    g = torch.Generator().manual_seed(6)
    tasks = [clusters(g, 3, 4, 2) for _ in range(4)]
    torch.manual_seed(0)
    model = InContextClassifier(embedding(), 16, 3, 16, 1, 2)
    params = parameters_of(model)
    loss = lambda algo: algo.batch_loss(model, params, tasks)[0].item()  # noqa: E731
    a, b = InContextLearner().at_step(7), InContextLearner().at_step(8)
    assert loss(a) == loss(InContextLearner().at_step(7)) and loss(a) != loss(b)  # shots drawn per step
    assert loss(InContextLearner(vary_shots=False).at_step(7)) == loss(
        InContextLearner(vary_shots=False).at_step(8)
    )


class NearestSlot(nn.Module):
    """A stand-in reader with 5 label slots: each query gets (10 x) the one-hot slot of its nearest support item."""

    ways = 5

    def forward(self, x, y=None, query=None, keep=None, features=False):
        d = torch.cdist(query, x)  # (B, m, n)
        if keep is not None:
            d = d.masked_fill(~keep.unsqueeze(1), torch.inf)
        return 10.0 * F.one_hot(y.gather(1, d.argmin(-1)), self.ways).float()


class SlotSpy(nn.Module):
    """Shows the label slot given to each task's first support item, at every query and column."""

    ways = 5

    def forward(self, x, y=None, query=None, keep=None, features=False):
        return y[:, :1].float().unsqueeze(-1).expand(-1, query.shape[1], self.ways)


def test_in_context_training_draws_label_slots_per_step_and_reads_classes_back_in_order():
    g = torch.Generator().manual_seed(9)
    tasks = [clusters(g, 3, 4, 2, noise=0.0) for _ in range(8)]  # queries equal support points
    x, y = torch.stack([t.support.x for t in tasks]), torch.stack([t.support.y for t in tasks])
    query, target = torch.stack([t.query.x for t in tasks]), torch.stack([t.query.y for t in tasks])
    for step in range(20):  # logits back in class order, whatever slots and shots were drawn
        logits = InContextLearner().at_step(step).training_logits(NearestSlot(), {}, x, y, query, 3)
        assert logits.shape == (8, 6, 3) and torch.equal(logits.argmax(-1), target)
    slots = lambda step: InContextLearner().at_step(step).training_logits(SlotSpy(), {}, x, y, query, 3)  # noqa: E731
    assert torch.equal(slots(4), slots(4))  # a function of the step ...
    drawn = torch.stack([slots(step)[:, 0, 0] for step in range(10)])  # (steps, B): class 0's slot
    assert len(drawn.unique()) == 5  # ... reaching all five slots, not only the first three


def test_training_steps_run_on_the_meta_device_without_reading_values():
    g = torch.Generator().manual_seed(10)
    tasks = [clusters(g, 3, 2, 2) for _ in range(2)]
    meta = [
        Task(Split(t.support.x.to("meta"), t.support.y.to("meta")), Split(t.query.x.to("meta"), t.query.y.to("meta")), 3)
        for t in tasks
    ]  # fmt: skip
    for learner, build in [
        (SNAILLearner(), lambda: SNAIL(embedding(), 16, 5, 7)),
        (InContextLearner(), lambda: InContextClassifier(embedding(), 16, 5, 16, 1, 2)),
        (MANNLearner(), lambda: MANN(8, 5, 16, 8, 6, 2)),
    ]:
        with torch.device("meta"):
            model = build()
        loss, outputs = learner.at_step(3).batch_loss(model, parameters_of(model), meta)
        assert loss.is_meta and outputs[0].shape == (6, 3)


def test_mann_writes_each_head_to_its_own_least_used_slot():
    torch.manual_seed(0)
    model = MANN(8, 5).double()  # the paper's sizes: 128 slots, 4 heads
    task = clusters(torch.Generator().manual_seed(11), 5, 5, 5)
    x = torch.cat([task.support.x, task.query.x]).double()[None]
    y = torch.cat([task.support.y, task.query.y])[None]
    state = model.initial_state(1)
    previous = torch.zeros(1, 5, dtype=torch.float64)
    with torch.no_grad():
        for i in range(50):
            _, state = model.step(x[:, i], previous, state)
            least_used = state[5]  # (1, heads, slots)
            assert torch.equal(least_used.sum(-1), torch.ones(1, 4, dtype=torch.float64))
            assert len(set(least_used[0].argmax(-1).tolist())) == 4  # four different slots
            previous = F.one_hot(y[:, i], 5).double()
    memory = state[2][
        0
    ]  # (slots, slot size): fresh keys in fresh slots, never one key copied to all unused slots
    assert len({tuple(row.tolist()) for row in memory}) > 100


def _train(learner, model, make_task, steps: int, lr: float, batch: int = 16) -> None:
    params = parameters_of(model)
    opt = torch.optim.Adam(params.values(), lr)
    for step in range(steps):
        loss, _ = learner.at_step(step).batch_loss(model, params, [make_task() for _ in range(batch)])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _accuracy(learner, model, tasks) -> float:
    params = parameters_of(model)
    with torch.no_grad():
        return float(np.mean([(learner.query_logits(model, params, t).argmax(-1) == t.query.y).float().mean()
                              for t in tasks]))  # fmt: skip


def test_snail_and_the_in_context_classifier_learn_clusters_in_seconds(one_thread):
    for learner, build, steps, lr in [
        (SNAILLearner(), lambda: SNAIL(embedding(), 16, 3, 7), 200, 3e-3),
        (InContextLearner(), lambda: InContextClassifier(embedding(), 16, 3, 32, 2, 4), 400, 3e-3),
    ]:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(7)
        model = build()
        _train(learner, model, lambda: clusters(g, 3, 2, 3), steps, lr)  # noqa: B023
        model.eval()
        accuracy = _accuracy(learner, model, [clusters(g, 3, 2, 5) for _ in range(100)])
        assert accuracy > 0.8, (type(learner).__name__, accuracy)  # chance: 1/3


def test_mann_learns_to_bind_labels_in_memory(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(8)
    model = MANN(8, 2, controller=32, slots=8, slot_size=8, reads=1)
    make = lambda: clusters(g, 2, 3, 3, noise=0.0)  # noqa: E731
    _train(MANNLearner(), model, make, 400, 1e-2)
    by_instance = instance_accuracy(
        model, parameters_of(model), [make() for _ in range(100)], instances=(1, 2, 3)
    )
    # the first sight of a class is a guess; from the second on the label was stored with the image
    assert by_instance[2][0] > 0.85 and by_instance[3][0] > 0.85, by_instance
    assert by_instance[1][0] < 0.8


@pytest.mark.parametrize("algorithm", ["snail", "icl", "mann"])
def test_train_eval_compare_and_predict_from_the_cli(tmp_path, algorithm, capsys, one_thread):
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(3 * c, 0.3, size=(8, 4)) for c in range(30)]).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=np.repeat(np.arange(30), 8))
    run = tmp_path / algorithm
    argv = ["train", "--algorithm", algorithm, "--dataset", "table", "--data-root", str(tmp_path / "t.npz"),
            "--ways", "3", "--shots", "2", "--queries", "2", "--steps", "4", "--hidden", "8", "--val-every", "2",
            "--val-episodes", "2", "--val-ways", "2", "--val-shots", "1", "--test-queries", "3", "--test-shots", "1",
            "--test-episodes", "3", "--test-ways", "2", "--run-dir", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["config"]["algorithm"] == algorithm
    assert main(["compare", str(run), f"nn={run}:nn", "--ways", "3", "--shots", "1", "2", "--queries", "3", "--episodes", "3",
                 "--out", str(tmp_path / "cmp"), "--no-plots", "--quiet"]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "cmp" / "compare_3w2s.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {algorithm, "nn"}
    (tmp_path / "s.csv").write_text("a,b,c,d,label\n0,0,0,0,zero\n30,30,30,30,ten\n")
    (tmp_path / "q.csv").write_text("a,b,c,d\n0.1,0,0,0\n29,30,31,30\n")
    capsys.readouterr()
    assert main(["predict", str(run), "--support", str(tmp_path / "s.csv"), "--query", str(tmp_path / "q.csv"),
                 "--json"]) == 0  # fmt: skip
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 2
    assert (
        main(
            ["eval", str(run), "--ways", "4", "--episodes", "2", "--shots", "1", "--queries", "3", "--quiet"]
        )
        == 2
    )
    assert "reads at most 3 classes" in capsys.readouterr().err
    # more ways than the network reads are refused before any training
    assert main([*argv[:-3], "--run-dir", str(tmp_path / "b"), "--test-ways", "4", "--quiet"]) == 2
    assert "reads at most --ways 3" in capsys.readouterr().err
    assert main([*argv[:-3], "--run-dir", str(tmp_path / "c"), "--val-ways", "4", "--quiet"]) == 2
    assert "use --val-ways 3 or fewer" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
