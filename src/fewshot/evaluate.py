"""Honest few-shot evaluation: many test episodes, per-episode scores, mean and 95% confidence interval.

``evaluate`` returns numbers and prints nothing (beyond an optional progress bar). Episodes come from an
:class:`~fewshot.tasks.episodes.EpisodeSampler`, so one seed means identical episodes for every method.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewshot import devices
from fewshot.algorithms.base import Algorithm, Params, accuracy, parameters_of, predict_task
from fewshot.attacks import Attack
from fewshot.datasets.base import ClassDataset
from fewshot.progress import progress as show_progress
from fewshot.tasks.episodes import EpisodeSampler, Task, groups_of


def mean_ci95(scores: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * s / sqrt(n)`` (``s``: sample standard deviation, ddof=1).

    With a single score the half-width is ``nan``: one episode says nothing about the spread.
    """
    a = np.asarray(scores, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no scores to summarise; evaluate at least one episode")
    if a.size == 1:
        return float(a[0]), math.nan
    return float(a.mean()), float(1.96 * a.std(ddof=1) / math.sqrt(a.size))


@dataclass
class EvalResult:
    """Per-episode accuracies of one method on one setting, with their summary.

    Attributes:
        accuracies: accuracy on each episode's query set, in episode order (episode i is the same for every
            method evaluated with the same seed).
        mean: mean accuracy.
        ci95: 95% confidence half-width of the mean.
    """

    ways: int
    shots: int
    queries: int
    episodes: int
    seed: int
    accuracies: list[float] = field(repr=False)
    mean: float = 0.0
    ci95: float = 0.0
    seconds: float = 0.0
    metric: str = "accuracy"  # or "mse" for regression
    # with evaluate(..., support=True): accuracy on the support set itself, after adapting on it
    support_accuracies: list[float] | None = field(default=None, repr=False)
    support_mean: float | None = None
    seconds_per_episode: float = (
        0.0  # median time to adapt and predict one episode (and attack it, with attack)
    )
    method: str = ""  # the run's model when empty; else the baseline scored on the same tasks
    # with evaluate(..., attack=...): the attack's settings and accuracy on perturbed queries, same episodes
    attack: dict[str, Any] | None = None
    adversarial_accuracies: list[float] | None = field(default=None, repr=False)
    adversarial_mean: float | None = None
    adversarial_ci95: float | None = None

    def __str__(self) -> str:
        if self.metric == "mse":
            return (
                f"{self.method + ': ' if self.method else ''}{self.shots}-shot regression: MSE {self.mean:.4f} "
                f"+- {self.ci95:.4f} ({self.episodes} tasks, 95% CI)"
            )
        text = (
            f"{self.ways}-way {self.shots}-shot: {100 * self.mean:.2f} +- {100 * self.ci95:.2f} % "
            f"({self.episodes} episodes, 95% CI)"
        )
        if self.attack is not None and self.adversarial_mean is not None:
            a = self.attack
            text += (
                f"; under {a['kind']} (epsilon {a['epsilon']:g}{', support too' if a['support'] else ''}): "
                f"{100 * self.adversarial_mean:.2f} +- {100 * (self.adversarial_ci95 or 0.0):.2f} %"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_tasks(
    algorithm: Algorithm,
    model: nn.Module,
    task_at: Callable[[int], Task],
    episodes: int,
    params: Params | None = None,
    progress: bool = True,
    desc: str = "eval",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Per-episode scores of ``algorithm`` on tasks ``task_at(0..episodes-1)``.

    The score is query accuracy for classification tasks (``ways > 0``) and query mean squared error for
    regression tasks (``ways == 0``). The model is in ``eval()`` mode for the duration, then restored. Each task
    is moved to ``device`` (default: where ``params``, else the model, are; see :func:`score_tasks`).
    """
    return score_tasks(algorithm, model, task_at, episodes, params, progress, desc, device=device)[0]


def score_tasks(
    algorithm: Algorithm,
    model: nn.Module,
    task_at: Callable[[int], Task],
    episodes: int,
    params: Params | None = None,
    progress: bool = True,
    desc: str = "eval",
    support: bool = False,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """:func:`evaluate_tasks` with more per episode: ``(query scores, support accuracies, seconds)``.

    ``seconds[i]`` is the wall time of adapting to episode ``i`` and predicting its query set (on a GPU, until
    its work is done). With ``support``, the adapted learner also labels its own support set (classification
    only; ``None`` otherwise); that adapts via ``adapt`` + ``predict``, which equals the fused route in
    ``eval()`` mode.

    Each task is moved to ``device`` before it is timed, so a model on a GPU is evaluated on datasets held on
    the CPU. By default that is the device of ``params`` (else of the model's parameters or buffers); a learner
    with neither (nearest neighbour in pixel space) keeps the tasks where they are unless ``device`` is given.
    """
    params = parameters_of(model) if params is None else params
    device = devices.device_of(params, model) if device is None else devices.resolve(device)
    was_training = model.training
    model.eval()
    scores, seconds = np.empty(episodes), np.empty(episodes)
    support_scores = np.empty(episodes) if support else None
    try:
        bar = show_progress(range(episodes), desc, enabled=progress, leave=False)
        for i in bar:
            task = task_at(i)
            if device is not None:
                task = devices.move_task(task, device)
            start = time.perf_counter()
            if support_scores is not None and task.ways:
                with torch.no_grad():
                    state = algorithm.adapt(model, params, task.support, task.ways)
                    out = algorithm.predict(model, params, state, task.query.x)
                    devices.synchronize(device)  # GPU work is queued: time it done, not queued
                    seconds[i] = time.perf_counter() - start
                    fit = algorithm.predict(model, params, state, task.support.x)
                support_scores[i] = accuracy(fit, task.support.y)
            else:
                out = predict_task(algorithm, model, params, task)
                devices.synchronize(device)
                seconds[i] = time.perf_counter() - start
            if task.ways:
                scores[i] = accuracy(out, task.query.y)
            else:  # in float64 on the CPU: not every device has float64 (MPS)
                scores[i] = (out - task.query.y).cpu().double().square().mean().item()
            if i % 20 == 0:
                bar.set_postfix(score=f"{scores[: i + 1].mean():.4f}")
    finally:
        model.train(was_training)
    return scores, support_scores, seconds


def evaluate(
    algorithm: Algorithm,
    model: nn.Module,
    dataset: ClassDataset,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
    params: Params | None = None,
    progress: bool = True,
    support: bool = False,
    device: str | torch.device | None = None,
    attack: Attack | None = None,
    within: str = "",
) -> EvalResult:
    """Accuracy of ``algorithm`` with ``model`` over test episodes.

    Args:
        algorithm: any :class:`~fewshot.algorithms.base.Algorithm`.
        model: the meta-trained network; put in ``eval()`` mode for the duration and restored afterwards.
        dataset: held-out classes to sample episodes from.
        ways, shots, queries: the episode setting (queries per class).
        episodes: number of test episodes (600 is the field's usual minimum for a stable 95% CI).
        seed: episode seed; the same seed gives the same episodes.
        params: parameters to use instead of the model's own (defaults to the model's; pass
            ``parameters_of(model) | algorithm.extra_params(model)`` for algorithms with meta-parameters).
        progress: show a progress bar.
        support: also score the adapted learner on its own support set (``support_mean``).
        device: where each episode is computed; its tensors are moved there from the dataset's device (default:
            the device of ``params``, else of the model; see :func:`score_tasks`).
        attack: also score each episode's queries perturbed by this :class:`~fewshot.attacks.Attack` against
            the adapted learner (``adversarial_mean``); PGD's random start is seeded per ``(seed, episode)``.
        within: ``"alphabet"``: each episode's classes from one group (:func:`~fewshot.tasks.episodes.groups_of`).

    Returns:
        An :class:`EvalResult` with per-episode accuracies, mean and 95% CI half-width.

    Example:
        >>> result = evaluate(ProtoNet(), model, omniglot("test"), ways=5, shots=1)
        >>> print(result)   # 5-way 1-shot: 98.1 +- 0.2 % (600 episodes, 95% CI)
    """
    if ways < 2:
        raise ValueError(f"ways must be at least 2 (a 1-way episode is always answered right), got {ways}")
    groups = groups_of(dataset.class_names, within)
    sampler = EpisodeSampler(dataset.labels, ways, shots, queries, episodes, seed, groups)
    start = time.perf_counter()
    if attack is not None:
        if support:
            raise ValueError("score the support set (support=True) or attack the queries, one at a time")
        return _evaluate_attack(algorithm, model, sampler, dataset, attack, params, progress, device, start)
    scores, fit, seconds = score_tasks(
        algorithm, model, lambda i: sampler.task(dataset, i), episodes, params, progress, f"eval {ways}w{shots}s",
        support, device,
    )  # fmt: skip
    mean, ci95 = mean_ci95(scores)
    return EvalResult(
        ways, shots, queries, episodes, seed, scores.tolist(), mean, ci95, time.perf_counter() - start,
        support_accuracies=None if fit is None else fit.tolist(),
        support_mean=None if fit is None else float(fit.mean()),
        seconds_per_episode=float(np.median(seconds)),
    )  # fmt: skip


def _evaluate_attack(
    algorithm: Algorithm,
    model: nn.Module,
    sampler: EpisodeSampler,
    dataset: ClassDataset,
    attack: Attack,
    params: Params | None,
    progress: bool,
    device: str | torch.device | None,
    start: float,
) -> EvalResult:
    """:func:`evaluate` under ``attack``: clean and adversarial accuracy of every episode."""
    from fewshot.attacks import attacked_scores

    params = parameters_of(model) if params is None else params
    device = devices.device_of(params, model) if device is None else devices.resolve(device)
    n, was_training = sampler.episodes, model.training
    clean, adversarial, seconds = np.empty(n), np.empty(n), np.empty(n)
    model.eval()
    try:
        bar = show_progress(
            range(n), f"attack {sampler.ways}w{sampler.shots}s", enabled=progress, leave=False
        )
        for i in bar:
            task = sampler.task(dataset, i)
            if device is not None:
                task = devices.move_task(task, device)
            # PGD's random start: one stream per (seed, episode), like the episodes themselves
            # drawn on the CPU and moved, so a GPU draws the same start as the CPU
            generator = torch.Generator().manual_seed(sampler.seed * 1_000_003 + i)
            tick = time.perf_counter()
            clean[i], adversarial[i] = attacked_scores(algorithm, model, params, task, attack, generator)
            seconds[i] = time.perf_counter() - tick
            if i % 20 == 0:
                bar.set_postfix(
                    clean=f"{clean[: i + 1].mean():.4f}", attacked=f"{adversarial[: i + 1].mean():.4f}"
                )
    finally:
        model.train(was_training)
    mean, ci95 = mean_ci95(clean)
    adv_mean, adv_ci95 = mean_ci95(adversarial)
    return EvalResult(
        sampler.ways, sampler.shots, sampler.queries, n, sampler.seed, clean.tolist(), mean, ci95,
        time.perf_counter() - start, seconds_per_episode=float(np.median(seconds)), attack=asdict(attack),
        adversarial_accuracies=adversarial.tolist(), adversarial_mean=adv_mean, adversarial_ci95=adv_ci95,
    )  # fmt: skip


def evaluate_regression(
    algorithm: Algorithm,
    model: nn.Module,
    family: Any,
    episodes: int = 600,
    params: Params | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Query mean squared error over ``episodes`` tasks of a regression family (e.g. ``Sinusoid(seed=...)``),
    each task moved to ``device`` (default: where ``params``, else the model, are)."""
    start = time.perf_counter()
    scores = evaluate_tasks(
        algorithm, model, family.task, episodes, params, progress, "eval regression", device
    )
    mean, ci95 = mean_ci95(scores)
    seconds = time.perf_counter() - start
    return EvalResult(
        0, family.shots, family.queries, episodes, family.seed, scores.tolist(), mean, ci95, seconds, metric="mse",
        seconds_per_episode=seconds / episodes,  # the mean: tasks are drawn inside the timed loop too
    )  # fmt: skip


def evaluate_run(
    path: str | Path,
    ways: int | None = None,
    shots: tuple[int, ...] | None = None,
    episodes: int = 600,
    seed: int = 0,
    split: str | None = None,
    checkpoint: str = "best",
    queries: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    baselines: bool = False,
    attack: Attack | None = None,
    within: str | None = None,
) -> list[EvalResult]:
    """Tests a trained run on its held-out classes (or tasks) at each number of ``shots`` and appends the
    results to its ``eval.json``.

    Args:
        path: the run directory.
        ways: classes per episode (default 5; a fixed-head classifier: its training ways, and no other).
        shots, episodes, seed, queries: the episodes (shots default to 1 and 5, queries per class to the run's
            ``test_queries``); bandit runs take ``episodes`` and ``seed`` only.
        split: the split to test on (default: the run's test split).
        checkpoint: ``best`` (the best validation, else the last) or ``last``.
        device: where the model is loaded and evaluated (``cpu``, ``cuda``, ``auto``, ...; default: the CPU).
        baselines: regression runs: also score least squares, ridge, 3-NN, averaging and tuned gradient descent
            (:func:`~fewshot.regression_baselines.prompt_baselines`) on the very same tasks, after the model;
            bandit runs: every strategy of :data:`fewshot.rl.strategies.STRATEGIES` on the very same bandits.
        attack: classifiers: also score queries perturbed against the adapted learner (:class:`~fewshot.attacks.Attack`).
        within: episodes within one group (``"alphabet"``) or not (``""``); None: as the run was trained.
    """
    from fewshot.datasets import load_split
    from fewshot.runs import RunDir

    run_dir = RunDir(path)
    run = run_dir.load(checkpoint, device)
    config, algorithm = run.config, run.algorithm(testing=True)
    split = split or config.test_split
    data = load_split(config, split)
    results: list[Any] = []
    if config.data == "bandit":
        if attack is not None or ways is not None or queries is not None or shots is not None:
            raise ValueError(
                "--ways, --shots, --queries and --attack are for classifiers; a bandit run plays --episodes test "
                "bandits (--seed picks them)"
            )
        from fewshot.rl.evaluate import evaluate_bandits, model_player, strategy, strategy_player
        from fewshot.rl.strategies import GITTINS_HORIZON, STRATEGIES

        data = replace(data, seed=data.seed + seed)  # seed 0: the split's own bandits
        player = model_player(algorithm, run.model, run.params)
        results.append(evaluate_bandits(player, data, episodes, config.algorithm, progress))
        names = [n for n in STRATEGIES if n != "gittins" or data.horizon <= GITTINS_HORIZON]
        if baselines and data.horizon > GITTINS_HORIZON:
            warnings.warn(
                f"Gittins left out: its table is computed up to horizon {GITTINS_HORIZON}", stacklevel=2
            )
        for name in names if baselines else ():
            results.append(evaluate_bandits(strategy_player(strategy(name)), data, episodes, name, progress))
    elif config.data == "regression":
        if attack is not None:
            raise ValueError(
                "--attack scores classifiers; this run is a regression run (no accuracy to attack)"
            )
        for k in shots or (1, 5):
            family = replace(data, shots=k, queries=queries or data.queries)
            results.append(evaluate_regression(algorithm, run.model, family, episodes, run.params, progress))
            if baselines:
                from fewshot.regression_baselines import prompt_baselines

                for name, baseline in prompt_baselines(family).items():
                    result = evaluate_regression(
                        baseline, nn.Identity(), family, episodes, {}, progress, "cpu"
                    )
                    result.method = name
                    results.append(result)
    else:
        if baselines:
            raise ValueError(
                "--baselines scores regression runs; for classifiers, `fewshot compare` puts a run beside the "
                "nearest-neighbour and fine-tuning baselines on the same episodes"
            )
        if config.spec.fixed_ways:  # a classifier head answers for exactly `config.ways` classes
            if ways not in (None, config.ways):
                raise ValueError(
                    f"this {config.algorithm} model has a {config.ways}-way head; test with --ways {config.ways}"
                )
            ways = config.ways
        for k in shots or (1, 5):
            results.append(
                evaluate(
                    algorithm,
                    run.model,
                    data,
                    ways or 5,
                    k,
                    queries or config.test_queries,
                    episodes,
                    seed,
                    params=run.params,
                    progress=progress,
                    attack=attack,
                    within=config.within if within is None else within,
                )  # fmt: skip
            )
    record = {"checkpoint": run.checkpoint, "split": split, "results": [r.to_dict() for r in results]}
    _, note = run_dir.append_eval(record)
    if note is not None:
        warnings.warn(note, RunFileWarning, stacklevel=2)
    return results


class RunFileWarning(UserWarning):
    """A file of a run directory was damaged and left alone; what was written instead is in the message."""


__all__ = ["EvalResult", "evaluate", "evaluate_regression", "evaluate_run", "evaluate_tasks", "mean_ci95"]
