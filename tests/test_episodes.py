from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fewshot.tasks.episodes import EpisodeSampler, stack_tasks


def test_episode_shapes_labels_and_disjoint_support_query(blobs):
    sampler = EpisodeSampler(blobs.labels, ways=5, shots=2, queries=3, episodes=10, seed=1)
    idx = sampler.indices(4)  # (ways, shots + queries)
    assert idx.shape == (5, 5)
    original = blobs.labels[torch.from_numpy(idx)]
    # each row is one original class, and the rows are distinct classes
    assert (original == original[:, :1]).all()
    assert len(set(original[:, 0].tolist())) == 5
    # no example is used twice in an episode (support and query are disjoint)
    assert len(set(idx.reshape(-1).tolist())) == idx.size
    task = sampler.task(blobs, 4)
    assert task.ways == 5
    assert task.support.x.shape == (10, 1, 28, 28) and task.query.x.shape == (15, 1, 28, 28)
    assert task.support.y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert task.query.y.tolist() == [k for k in range(5) for _ in range(3)]
    # relabelled class k is the k-th drawn class: its support images are those of that class
    assert torch.equal(task.support.x[2], blobs.gather(torch.tensor([idx[1, 0]]))[0])


def test_episode_depends_only_on_seed_and_index(blobs):
    a = EpisodeSampler(blobs.labels, 5, 1, 4, episodes=50, seed=7)
    b = EpisodeSampler(blobs.labels, 5, 1, 4, episodes=50, seed=7)
    later_first = b.indices(30)
    for i in range(50):
        assert (a.indices(i) == b.indices(i)).all()
    assert (later_first == a.indices(30)).all()
    c = EpisodeSampler(blobs.labels, 5, 1, 4, episodes=50, seed=8)
    assert any((a.indices(i) != c.indices(i)).any() for i in range(50))
    assert (a.indices(0) != a.indices(1)).any()


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batch_sampler_gives_the_same_tasks(blobs, workers):
    sampler = EpisodeSampler(blobs.labels, ways=3, shots=2, queries=2, episodes=6, seed=3)
    loader = DataLoader(blobs, batch_sampler=sampler, collate_fn=sampler.collate, num_workers=workers)
    tasks = list(loader)
    assert len(tasks) == 6
    for i, task in enumerate(tasks):
        direct = sampler.task(blobs, i)
        assert torch.equal(task.support.x, direct.support.x) and torch.equal(task.query.x, direct.query.x)
        assert torch.equal(task.support.y, direct.support.y) and torch.equal(task.query.y, direct.query.y)


def test_uneven_classes_draw_only_from_classes_that_fit():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 10 + [3] * 10)
    sampler = EpisodeSampler(labels, ways=3, shots=2, queries=2, episodes=20, seed=0)
    assert sampler.too_small.tolist() == [1]
    for i in range(20):
        assert 1 not in labels[torch.from_numpy(sampler.indices(i))].unique().tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ways": 13, "shots": 1, "queries": 1}, r"ways=13 but the dataset has only 12 classes"),
        ({"ways": 5, "shots": 6, "queries": 5}, r"shots\+queries=6\+5=11 .* smallest has 10"),
        ({"ways": 0, "shots": 1, "queries": 1}, r"ways must be at least 1, got 0"),
        ({"ways": 5, "shots": -1, "queries": 1}, r"shots must be at least 1, got -1"),
        ({"ways": 5, "shots": 1, "queries": -2}, r"queries must be at least 0, got -2"),
        ({"ways": 5, "shots": 1, "queries": 1, "episodes": 0}, r"episodes must be at least 1"),
    ],
)
def test_impossible_settings_say_what_to_change(blobs, kwargs, message):
    kwargs.setdefault("episodes", 10)
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(blobs.labels, **kwargs)


def test_stack_tasks(blobs):
    sampler = EpisodeSampler(blobs.labels, ways=4, shots=1, queries=2, episodes=3, seed=0)
    batch = stack_tasks([sampler.task(blobs, i) for i in range(3)])
    assert batch.support.x.shape == (3, 4, 1, 28, 28) and batch.query.y.shape == (3, 8)
    assert batch.ways == 4


def test_episodes_within_one_group_draw_every_class_from_one_group():
    """Lake et al.'s within-alphabet protocol: with ``groups`` each episode's classes share a group; without,
    episodes are exactly those of before (no extra draw from the stream)."""
    from fewshot.tasks.episodes import groups_of

    names = [f"{a}/c{i}" for a in ("Greek", "Latin", "Runic") for i in range(6)] + ["Tiny/c0", "Tiny/c1"]
    labels = np.repeat(np.arange(len(names)), 4)
    groups = groups_of(names, "alphabet")
    sampler = EpisodeSampler(labels, ways=5, shots=1, queries=2, episodes=300, seed=3, groups=groups)
    seen = set()
    for i in range(300):
        classes = labels[sampler.indices(i)[:, 0]]
        alphabets = {names[c].split("/")[0] for c in classes}
        assert len(alphabets) == 1 and len(set(classes)) == 5
        seen |= alphabets
    assert seen == {
        "Greek",
        "Latin",
        "Runic",
    }  # never Tiny (2 classes cannot fill 5 ways), the others all drawn
    again = EpisodeSampler(labels, ways=5, shots=1, queries=2, episodes=300, seed=3, groups=groups)
    assert np.array_equal(again.indices(17), sampler.indices(17))
    plain = EpisodeSampler(labels, ways=5, shots=1, queries=2, episodes=300, seed=3)
    rng = np.random.default_rng([3, 17])  # the draw as it always was: classes, then examples
    chosen = rng.choice(plain.eligible, size=5, replace=False)
    assert np.array_equal(plain.indices(17)[:, 0] // 4, chosen)
    with pytest.raises(ValueError, match="ways=7 but the largest group has 6 classes"):
        EpisodeSampler(labels, ways=7, shots=1, queries=2, episodes=1, groups=groups)
    with pytest.raises(ValueError, match="class 'plain' has none"):
        groups_of(["plain", "Greek/c0"], "alphabet")


def test_within_alphabet_runs_train_validate_and_test_on_lake_alphabets(tmp_path):
    """--within alphabet on Lake's background / evaluation split: training, validation and test episodes each
    from one alphabet, recorded in the run and used by eval."""
    from fewshot.config import TrainConfig
    from fewshot.evaluate import evaluate_run
    from fewshot.train import Trainer

    config = TrainConfig.of(split_scheme="lake", train_split="background", val_split="evaluation",
                            test_split="evaluation", within="alphabet", ways=20, shots=1, queries=1, steps=2,
                            val_every=2, val_episodes=2, val_ways=20, val_shots=1, test_queries=1, hidden=8,
                            log_every=1)  # fmt: skip
    trainer = Trainer(config, tmp_path / "run", progress=False)
    data = trainer.train_data
    for i in range(2):  # the run's two training episodes
        labels = data.labels[torch.from_numpy(trainer.sampler.indices(i)[:, 0])].tolist()
        assert len({data.class_names[c].split("/")[0] for c in labels}) == 1
    trainer.run()
    from fewshot.runs import RunDir

    assert RunDir(tmp_path / "run").config().within == "alphabet"
    result = evaluate_run(tmp_path / "run", 20, (1,), 5, 0, queries=1, progress=False)[0]
    assert 0 <= result.mean <= 1 and result.episodes == 5
    across = evaluate_run(tmp_path / "run", 20, (1,), 5, 0, queries=1, progress=False, within="")[0]
    assert across.accuracies != result.accuracies  # other episodes: classes from every alphabet


def test_rotations_add_each_training_class_turned_three_ways():
    from fewshot.config import TrainConfig
    from fewshot.datasets import load_split
    from fewshot.datasets.base import ClassDataset

    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.uint8).reshape(2, 1, 3, 3)
    data = ClassDataset(images, torch.tensor([0, 1]), ["Greek/a", "Latin/b"]).with_rotations()
    assert data.class_names[:4] == ["Greek/a/rot000", "Greek/a/rot090", "Greek/a/rot180", "Greek/a/rot270"]
    for label, name in enumerate(data.class_names):
        k, r = divmod(label, 4)
        (row,) = (data.labels == label).nonzero()[:, 0].tolist()
        assert torch.equal(data.images[row], torch.rot90(images[k], r, dims=(-2, -1))), name
    config = TrainConfig.of(split_scheme="lake", train_split="background", val_split="evaluation",
                            test_split="evaluation", rotations=True)  # fmt: skip
    train, test = load_split(config, "background"), load_split(config, "evaluation")
    assert train.num_classes == 4 * 964 and test.num_classes == 659  # test characters as they are
    with pytest.raises(ValueError, match="rotations turn images"):
        TrainConfig.of(dataset="table", data_root="t.csv", rotations=True)
