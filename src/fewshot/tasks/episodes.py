"""Tasks as values, and the N-way K-shot episode sampler.

A few-shot *task* is a small labelled support set to adapt on and a query set to be scored on. Tasks are plain
values (NamedTuples of tensors), so they can be stacked, sent through ``torch.func.vmap`` and compared in tests.

The :class:`EpisodeSampler` draws N-way K-shot episodes from any labelled dataset. Episode ``i`` depends only on
``(seed, i)``: two algorithms evaluated with one seed see the same episodes, whatever the number of DataLoader
workers or the order in which episodes are asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor


class Split(NamedTuple):
    """One side of a task.

    Attributes:
        x: inputs, shape ``(n, *features)``; for images ``(n, channels, height, width)``.
        y: targets, shape ``(n,)`` with class ids ``0..ways-1``, or ``(n, *targets)`` for regression.
    """

    x: Tensor
    y: Tensor


class Task(NamedTuple):
    """A few-shot task: adapt on ``support``, be scored on ``query``.

    Attributes:
        support: the labelled examples the learner adapts on, ``ways * shots`` of them for classification.
        query: the examples it is scored on.
        ways: number of classes (a static int, 0 for regression), kept out of the tensors so shapes stay static
            under ``vmap``.
    """

    support: Split
    query: Split
    ways: int = 0


WITHIN = ("", "alphabet")  # how episodes may be confined to one group of classes (see groups_of)


def groups_of(class_names: Sequence[str], within: str) -> np.ndarray | None:
    """The group of every class for :class:`EpisodeSampler`'s ``groups``: for ``within="alphabet"``, the part of
    the class name before its first ``/`` (Omniglot's ``"Greek/character03"`` belongs to ``"Greek"``; the same works
    for any data whose class names are ``GROUP/NAME``); None for ``within=""`` (episodes from all classes)."""
    if not within:
        return None
    if within not in WITHIN:
        raise ValueError(f"unknown within {within!r}; choose one of {list(WITHIN)}")
    bare = next((n for n in class_names if "/" not in n), None)
    if bare is not None:
        raise ValueError(
            f"within={within} groups classes by the part of their name before '/', but class {bare!r} has none; "
            "name classes GROUP/NAME (Omniglot's are ALPHABET/CHARACTER) or drop --within"
        )
    names = sorted({n.split("/", 1)[0] for n in class_names})
    index = {g: i for i, g in enumerate(names)}
    return np.array([index[n.split("/", 1)[0]] for n in class_names])


def stack_tasks(tasks: Sequence[Task]) -> Task:
    """Stacks tasks of equal shapes into one batched Task (leading dimension ``tasks``).

    Example:
        >>> batch = stack_tasks([task_a, task_b])  # batch.support.x: (2, ways * shots, *features)
    """
    if not tasks:
        raise ValueError("stack_tasks needs at least one task")
    ways = {t.ways for t in tasks}
    if len(ways) != 1:
        raise ValueError(
            f"cannot stack tasks with different ways {sorted(ways)}; sample them with one setting"
        )
    return Task(
        support=Split(torch.stack([t.support.x for t in tasks]), torch.stack([t.support.y for t in tasks])),
        query=Split(torch.stack([t.query.x for t in tasks]), torch.stack([t.query.y for t in tasks])),
        ways=tasks[0].ways,
    )


def _check_count(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}; pass {name}>={minimum}")


def group_by_label(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct labels (sorted) and, for each, the indices of its rows in ascending order.

    Example:
        >>> group_by_label(np.array([2, 0, 2, 1]))
        (array([0, 1, 2]), [array([1]), array([3]), array([0, 2])])
    """
    classes, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(classes))
    return classes, np.split(order, np.cumsum(counts)[:-1])


class EpisodeSampler:
    """Draws N-way K-shot episodes from a labelled dataset, reproducibly.

    Each episode picks ``ways`` distinct classes, then ``shots + queries`` distinct examples of each class.
    Classes are relabelled ``0..ways-1`` in the order they were drawn. Episode ``i`` is a pure function of
    ``(seed, i)``.

    It is a ``batch_sampler`` for :class:`torch.utils.data.DataLoader`: iterating yields, per episode, the flat
    list of ``ways * (shots + queries)`` dataset indices, class-major (class 0's support then its queries, then
    class 1, ...); :meth:`collate` turns the loaded items back into a :class:`Task`.

    Args:
        labels: class label of every dataset item, shape ``(n,)``; any hashable-as-int ids.
        ways: classes per episode (N).
        shots: labelled support examples per class (K).
        queries: query examples per class.
        episodes: how many episodes one pass yields.
        seed: the seed; episode ``i`` uses the random stream ``(seed, i)``.
        groups: optional group of every class, indexed by the class's label (``groups[label]``): each episode then
            draws its classes from one group (Lake et al. 2015's within-alphabet protocol: the 20 characters of a
            one-shot episode come from one alphabet, so they look alike). The group is drawn uniformly among the
            groups that can fill an episode, then its classes.

    Raises:
        ValueError: if the setting is impossible for these labels (too few classes, or a class with fewer than
            ``shots + queries`` examples); the message names the numbers and what to change.

    Example:
        >>> sampler = EpisodeSampler(dataset.labels, ways=5, shots=1, queries=15, episodes=600, seed=0)
        >>> loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.collate, num_workers=2)
        >>> task = next(iter(loader))  # task.support.x: (5, 1, 28, 28), task.query.y: (75,)
    """

    def __init__(
        self,
        labels: Sequence[int] | Tensor | np.ndarray,
        ways: int,
        shots: int,
        queries: int,
        episodes: int,
        seed: int = 0,
        groups: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        _check_count("ways", ways, 1)
        _check_count("shots", shots, 1)
        _check_count("queries", queries, 0)
        _check_count("episodes", episodes, 1)
        _check_count("seed", seed, 0)
        labels_np = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
        if labels_np.ndim != 1 or labels_np.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels_np.shape}")
        # members[c]: dataset indices of class c, in dataset order (sorted so the draw does not depend on it)
        classes, self.members = group_by_label(labels_np)
        counts = np.array([len(m) for m in self.members])
        if ways > len(classes):
            raise ValueError(
                f"ways={ways} but the dataset has only {len(classes)} classes; use ways<={len(classes)}"
            )
        per_class = shots + queries
        eligible = np.flatnonzero(counts >= per_class)
        if len(eligible) < ways:
            smallest = int(counts.min())
            raise ValueError(
                f"shots+queries={shots}+{queries}={per_class} examples per class are needed, but only "
                f"{len(eligible)} of {len(classes)} classes have that many (the smallest has {smallest}) and "
                f"ways={ways}; lower shots or queries, or ways"
            )
        # Episodes draw only from classes that can fill them (real folders are often uneven); the others are
        # listed here so a caller can report them.
        self.eligible = eligible
        self.pools = [eligible]  # the classes an episode draws from: all, or one group's
        if groups is not None:
            group_of = np.asarray(groups)
            if group_of.ndim != 1 or len(group_of) <= int(classes.max()):
                raise ValueError(
                    f"groups must give the group of every class label 0..{int(classes.max())}, got {group_of.shape}"
                )
            by_group: dict[Any, list[int]] = {}
            for c in eligible:  # positions in `classes`, grouped by the group of their label
                by_group.setdefault(group_of[classes[c]].item(), []).append(int(c))
            self.pools = [np.array(m) for _, m in sorted(by_group.items()) if len(m) >= ways]
            if not self.pools:
                largest = max(len(m) for m in by_group.values())
                raise ValueError(
                    f"ways={ways} but the largest group has {largest} classes (of {shots}+{queries} examples "
                    f"each); episodes within one group need ways<={largest}"
                )
        self.too_small = classes[counts < per_class]
        self.class_ids = classes
        self.ways, self.shots, self.queries, self.episodes, self.seed = ways, shots, queries, episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def rng(self, i: int) -> np.random.Generator:
        """The random stream of episode ``i`` (independent of every other episode)."""
        return np.random.default_rng([self.seed, i])

    def indices(self, i: int) -> np.ndarray:
        """Dataset indices of episode ``i``, shape ``(ways, shots + queries)``; row k is relabelled class k."""
        if not 0 <= i < self.episodes:
            raise IndexError(f"episode {i} is outside 0..{self.episodes - 1}")
        rng = self.rng(i)
        pool = self.pools[rng.integers(len(self.pools))] if len(self.pools) > 1 else self.pools[0]
        chosen = rng.choice(pool, size=self.ways, replace=False)
        per_class = self.shots + self.queries
        return np.stack([rng.choice(self.members[c], size=per_class, replace=False) for c in chosen])

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.episodes):
            yield self.indices(i).reshape(-1).tolist()

    def split(self, x: Tensor) -> Task:
        """Cuts a class-major episode tensor into a Task.

        Args:
            x: inputs of one episode in sampler order, shape ``(ways * (shots + queries), *features)``.
        """
        per_class = self.shots + self.queries
        x = x.reshape(self.ways, per_class, *x.shape[1:])
        labels = torch.arange(self.ways, device=x.device).unsqueeze(1)  # (ways, 1): row k is class k
        support_y = labels.expand(self.ways, self.shots).reshape(-1)
        query_y = labels.expand(self.ways, self.queries).reshape(-1)
        return Task(
            support=Split(x[:, : self.shots].reshape(-1, *x.shape[2:]), support_y),
            query=Split(x[:, self.shots :].reshape(-1, *x.shape[2:]), query_y),
            ways=self.ways,
        )

    def collate(self, batch: Sequence[Any]) -> Task:
        """``collate_fn`` for a DataLoader: items ``(x, label)`` or ``x`` in sampler order -> Task.

        The original labels are dropped: the episode's labels are the positions of its classes.
        """
        xs = [item[0] if isinstance(item, (tuple, list)) else item for item in batch]
        expected = self.ways * (self.shots + self.queries)
        if len(xs) != expected:
            raise ValueError(f"an episode has {expected} items, got {len(xs)}; use this sampler's batches")
        return self.split(torch.stack([torch.as_tensor(x) for x in xs]))

    def task(self, data: Any, i: int) -> Task:
        """Episode ``i`` gathered directly from memory (the fast path used in training and evaluation).

        Args:
            data: every dataset item as a tensor ``(n, *features)`` indexed like ``labels``, or a dataset with a
                ``gather(index_tensor)`` method (such as :class:`~fewshot.datasets.base.ClassDataset`).
            i: episode number.
        """
        idx = torch.from_numpy(self.indices(i).reshape(-1))
        return self.split(data.gather(idx) if hasattr(data, "gather") else data[idx])
