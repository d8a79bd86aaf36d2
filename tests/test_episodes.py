from __future__ import annotations

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
