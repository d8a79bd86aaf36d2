"""One top-down meta-training loop.

:class:`Trainer` builds what a :class:`~fewshot.config.TrainConfig` asks for (data, network, algorithm, outer
optimizer), then :meth:`Trainer.run` steps, logs, validates and checkpoints into the run directory
(:mod:`fewshot.runs`) until the step or time budget is spent. How one step is computed depends only on what the
algorithm declares (:class:`~fewshot.algorithms.base.AlgorithmSpec`): meta-training on episodes, ordinary
classification on batches of all training classes, or nothing to train.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot import devices, distributed
from fewshot.algorithms.base import accuracy, all_finite, parameters_of
from fewshot.algorithms.routes import meta_gradient
from fewshot.config import IMAGESET_NAMES, TrainConfig
from fewshot.datasets import load_split
from fewshot.evaluate import evaluate, evaluate_regression
from fewshot.progress import progress
from fewshot.runs import RunDir, load_run
from fewshot.tasks.curriculum import Curriculum
from fewshot.tasks.episodes import EpisodeSampler, Task, groups_of, stack_tasks

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "load_run", "score"]


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or weights; the run directory keeps the last finite checkpoint."""


class Trainer:
    """Meta-trains one model and keeps its run directory up to date.

    Args:
        config: the settings.
        run_dir: where config, metrics and checkpoints go (created if missing).
        progress: show progress (a bar on a terminal, plain lines in a log).
        resume: continue from the run directory's resume point (see :meth:`resumed`).
        overwrite: replace a run that ``run_dir`` holds already (otherwise refused, before anything is loaded).
    """

    def __init__(
        self, config: TrainConfig, run_dir: str | Path, progress: bool = True, resume: bool = False,
        overwrite: bool = False,
    ) -> None:  # fmt: skip
        self.overwrite = overwrite
        self.device = distributed.local_device(
            devices.resolve(config.device)
        )  # cuda:LOCAL_RANK under torchrun
        self.world = distributed.start(self.device)  # one process unless launched by torchrun
        if not resume and self.world.main:
            RunDir(run_dir).check_writable(overwrite)  # before minutes of data loading, not after
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.spec = config.spec
        self.algorithm = config.build_algorithm()
        episodic_validation = config.val_every and self.spec.training != "none"
        if config.dataset in IMAGESET_NAMES:  # a copy without its test split fails now, not after training
            load_split(config, config.test_split)  # decoded into the cache once: testing reads it back
        if config.dataset == "folder":  # a bad image among the test classes fails now, not after training
            from fewshot.datasets.folder import check_files

            splits = {config.train_split, config.test_split} | (
                {config.val_split} if episodic_validation else set()
            )
            check_files(config.data_root, sorted(splits), (config.val_fraction, config.test_fraction),
                        config.split_seed)  # fmt: skip
        self.train_data = load_split(config, config.train_split)
        self.val_data = load_split(config, config.val_split) if episodic_validation else None
        if self.val_data is not None and config.data in (
            "images",
            "vectors",
        ):  # validation episodes that cannot be drawn
            ways = (
                config.ways if self.spec.fixed_ways else config.val_ways
            )  # fail now, not at the first validation
            try:
                EpisodeSampler(
                    self.val_data.labels,
                    ways,
                    config.val_shots,
                    config.test_queries,
                    1,
                    config.seed,
                    groups_of(self.val_data.class_names, config.within),
                )
            except ValueError as e:
                raise ValueError(
                    f"validation episodes ({config.val_split} split): {e}; or --val-every 0"
                ) from e
        if config.data in ("images", "vectors"):  # recorded so that the run's network can be rebuilt
            config = dataclasses.replace(
                config, in_features=self.train_data.image_shape[0], classes=self.train_data.num_classes
            )
        else:
            config = dataclasses.replace(config, in_features=self.train_data.in_features)
        self.config, self.run_dir, self.progress, self.resume = config, RunDir(run_dir), progress, resume
        torch.manual_seed(config.seed)  # the only use of the global RNG: nn.Module initialisation
        self.model = config.build_model().to(self.device)
        self.extra = self.algorithm.extra_params(self.model)
        trainable = [*self.model.parameters(), *self.extra.values()]
        if config.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(trainable, lr=config.outer_lr)
        else:
            self.optimizer = torch.optim.SGD(trainable, lr=config.outer_lr)
        if config.lr_schedule == "step":
            self.scheduler: Any = torch.optim.lr_scheduler.StepLR(
                self.optimizer, config.lr_decay_every, config.lr_decay
            )
        elif config.lr_schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.steps)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        if self.spec.training == "episodes" and config.data in ("images", "vectors"):
            self.groups = groups_of(
                self.train_data.class_names, config.within
            )  # None: episodes from all classes
            self.sampler = EpisodeSampler(
                self.train_data.labels, config.ways, config.shots, config.queries,
                config.steps * config.tasks_per_step, config.seed, self.groups,
            )  # fmt: skip
        self.curriculum = (
            Curriculum.parse(config.curriculum, config.curriculum_every) if config.curriculum else None
        )
        self._samplers: dict[tuple[int, ...], EpisodeSampler] = {}
        self.best_val = -float("inf")
        self.board: Any = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError(
                    "--tensorboard needs the tensorboard package: pip install 'fewshot[tensorboard]'"
                ) from e
            self.board = SummaryWriter  # opened in run(), once the run directory is settled

    @classmethod
    def resumed(cls, run_dir: str | Path, progress: bool = True) -> Trainer:
        """A trainer that continues the run in ``run_dir`` from its last resume point (see :meth:`run`)."""
        return cls(RunDir(run_dir).config(), run_dir, progress, resume=True)

    def params(self) -> dict[str, torch.Tensor]:
        """Everything the algorithm reads: the model's parameters and its own meta-parameters."""
        return parameters_of(self.model) | self.extra

    def task(self, i: int) -> Task:
        """Training task ``i`` (episode ``i`` of the sampler, or regression task ``i``)."""
        c = self.config
        if c.data == "bandit":  # a value the algorithm plays (its rollout moves it to the model's device)
            return self.train_data.task(i)
        if c.data == "regression":
            family = self.train_data
            # task i belongs to step i // tasks_per_step: its curriculum settings follow from i alone
            if self.curriculum:
                family = self.curriculum.at(family, i // c.tasks_per_step)
            return devices.move_task(family.task(i), self.device)
        task = self.sampler_at(i // c.tasks_per_step).task(self.train_data, i)
        if c.augment:  # support and query images alike, from a generator of (seed, episode): resumable
            x = augment_images(torch.cat([task.support.x, task.query.x]), c.seed, i)
            n = task.support.x.shape[0]
            task = task._replace(support=task.support._replace(x=x[:n]), query=task.query._replace(x=x[n:]))
        if self.config.channels_last and self.config.data == "images":
            task = task._replace(
                support=task.support._replace(x=task.support.x.contiguous(memory_format=torch.channels_last)),
                query=task.query._replace(x=task.query.x.contiguous(memory_format=torch.channels_last)),
            )
        return devices.move_task(task, self.device)  # once per step; pinned and asynchronous to CUDA

    def sampler_at(self, step: int) -> EpisodeSampler:
        """The episode sampler of training step ``step``: the run's, or the curriculum's ways, shots and queries
        at that step (one sampler per stage, kept)."""
        if not self.curriculum:
            return self.sampler
        c = self.config
        values = {"ways": c.ways, "shots": c.shots, "queries": c.queries} | self.curriculum_now(step)
        key = tuple(values.values())
        if key not in self._samplers:
            self._samplers[key] = EpisodeSampler(
                self.train_data.labels, *key, c.steps * c.tasks_per_step, c.seed, self.groups
            )
        return self._samplers[key]

    def curriculum_now(self, step: int) -> dict[str, Any]:
        """The curriculum's settings in force at ``step`` (recorded in metrics.jsonl)."""
        return self.curriculum.values(self.config.curriculum_targets(), step)

    def step(self, step: int) -> tuple[float, float | None]:
        """One meta-training step on ``tasks_per_step`` tasks (this process's block of them when distributed);
        returns the query loss and score (None when not computed) over all of them."""
        c, world = self.config, self.world
        # DropBlock's masks come from torch's global generator: seeded per (seed, step, process), so that a
        # resumed run draws the masks an uninterrupted one would
        if c.dropblock:
            torch.manual_seed(seed_of(c.seed, step, world.rank))
        if self.spec.training == "batches":
            return self.batch_step(step)
        algorithm = self.algorithm.at_step(step)  # MAML++: loss weights and derivative order by epoch
        tasks = [self.task(step * c.tasks_per_step + j) for j in world.block(c.tasks_per_step)]
        share = len(tasks) / c.tasks_per_step  # this block's part of the mean over all tasks (1 alone)
        self.optimizer.zero_grad(set_to_none=True)
        loss, outs, failure = torch.zeros((), device=self.device), None, None
        try:
            with devices.autocast(self.device, c.bf16):
                if tasks and c.route == "autograd":  # one backward pass through the mean of the task losses
                    loss, outs = algorithm.batch_loss(self.model, self.params(), tasks)
                    (loss * share).backward()
                elif tasks:
                    grads, loss = meta_gradient(
                        algorithm, self.model, self.params(), stack_tasks(tasks), c.route, workers=c.threads,
                        compile=c.compile,
                    )  # fmt: skip
                    for name, p in self.params().items():
                        p.grad = grads[name] * share
                    if (step + 1) % c.log_every == 0:  # query predictions for the logged training score only
                        with torch.no_grad():
                            outs = [algorithm.task_loss(self.model, self.params(), t)[1] for t in tasks]
        except FloatingPointError as e:  # an inner loop met a NaN or Inf gradient: every rank stops together
            failure = str(e)
        if distributed.any_(failure is not None, world, self.device):
            raise FloatingPointError(failure or "another process of this run met a NaN or Inf inner gradient")
        scores = [score(out, t) for out, t in zip(outs, tasks, strict=True)] if outs is not None else []
        total = self.reduce([loss.detach().float() * share, sum(scores) / c.tasks_per_step])
        self.optimizer.step()
        self.scheduler.step()
        scored = c.route == "autograd" or (step + 1) % c.log_every == 0  # the same on every process
        return total[0], (total[1] if scored else None)

    def reduce(self, numbers: list[Any]) -> list[float]:
        """Sums per-process ``numbers`` and every parameter's gradient over the processes of the run (the
        gradients of the blocks of tasks add up to the gradient of the mean over all tasks), and averages the
        BatchNorm running statistics. Alone, nothing to do: the numbers come back as floats and the gradients
        stay as they are (None where a loss does not depend on a parameter)."""
        if self.world.size == 1:
            return [float(v) for v in numbers]
        params = list(self.params().values())
        for p in params:
            if p.grad is None:  # this block's loss does not reach it, or the block is empty
                p.grad = torch.zeros_like(p)
        values = torch.tensor([float(v) for v in numbers], device=self.device, dtype=torch.float64)
        distributed.sum_([p.grad for p in params], self.world)
        distributed.sum_([values], self.world)
        # BatchNorm running statistics: each process saw only its block of tasks; their mean keeps every
        # process's network the same (close to, not equal to, one process's sequential updates)
        buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        distributed.sum_(buffers, self.world)
        with torch.no_grad():
            for b in buffers:
                b /= self.world.size
        return values.tolist()

    def guarded_step(self, step: int) -> tuple[float, float | None]:
        """:meth:`step`, stopped with :class:`TrainingDiverged` when its loss or the weights it leaves are not
        finite; the weights and buffers from before the step are put back and saved as the last checkpoint, so
        the run directory never holds NaN weights."""
        before = {k: v.detach().clone() for k, v in self.state().items()}  # ~0.1-1 MB: cheap beside a step
        try:
            loss, s = self.step(step)
            problem = None if math.isfinite(loss) else f"the loss is {loss}"
        except FloatingPointError as e:  # an inner loop met a NaN or Inf gradient
            problem = str(e)
        if problem is None and not all_finite(
            {k: v for k, v in self.state().items() if v.is_floating_point()}
        ):
            problem = "the weights became NaN or infinite"
        if problem is None:
            return loss, s
        with torch.no_grad():
            for k, v in self.state().items():
                v.copy_(before[k])
        kept = self.save("last") if self.world.main else self.run_dir.path / "model.safetensors"
        rates = {"outer_lr": self.config.outer_lr} | {
            f.name: getattr(self.config.settings, f.name)
            for f in dataclasses.fields(self.config.settings)
            if f.name.endswith("lr")
        }  # every learning rate of the run, the algorithm's own included
        raise TrainingDiverged(
            f"training diverged at step {step + 1}: {problem}; likely causes: a learning rate too large "
            f"({', '.join(f'{k} {v:g}' for k, v in rates.items())}), or NaN or infinite values in the data; the "
            f"weights from before this step are in {kept}"
        )

    def state(self) -> dict[str, torch.Tensor]:
        """The model's parameters and buffers and the algorithm's meta-parameters (the tensors themselves)."""
        return dict(self.model.state_dict(keep_vars=True)) | {
            "algorithm." + k: v for k, v in self.extra.items()
        }

    def batch_step(self, step: int) -> tuple[float, float]:
        """One step of ordinary classification over all training classes (Chen et al. 2019's pretraining); when
        distributed, each process takes its block of the batch's rows (BatchNorm then normalises each block with
        its own statistics, as DistributedDataParallel without SyncBatchNorm does)."""
        c = self.config
        rng = np.random.default_rng([c.seed, step])  # batch `step` depends only on (seed, step)
        batch = rng.integers(0, len(self.train_data), size=c.settings.batch_size)
        mine = self.world.block(len(batch))
        idx = torch.as_tensor(batch[mine.start : mine.stop])
        share = len(idx) / len(batch)
        augmented = None
        if c.augment:  # the whole batch, from (seed, step), so any number of processes sees the same images
            augmented = augment_images(self.train_data.gather(torch.as_tensor(batch)), c.seed, step)
            augmented = augmented[mine.start : mine.stop]
        self.optimizer.zero_grad(set_to_none=True)
        loss, right = torch.zeros((), device=self.device), 0.0
        if len(idx):
            x = augmented if augmented is not None else self.train_data.gather(idx)
            y = self.train_data.labels[idx]
            if c.channels_last and c.data == "images":
                x = x.contiguous(memory_format=torch.channels_last)
            x, y = x.to(self.device), y.to(self.device)
            with devices.autocast(self.device, c.bf16):
                logits = self.model(x).float()
            loss = F.cross_entropy(logits, y)
            (loss * share).backward()
            right = accuracy(logits, y) * share
        total = self.reduce([loss.detach() * share, right])
        self.optimizer.step()
        self.scheduler.step()
        return total[0], total[1]

    def validate(self) -> dict[str, float]:
        c = self.config
        assert self.val_data is not None
        algorithm = c.build_algorithm(testing=True)
        if c.data == "bandit":
            from fewshot.rl.evaluate import evaluate_bandits, model_player

            r = evaluate_bandits(
                model_player(algorithm, self.model, self.params()), self.val_data, c.val_episodes
            )
            self.model.train()
            return {"val_score": r.mean, "val_ci95": r.ci95}
        if c.data == "regression":
            r = evaluate_regression(
                algorithm, self.model, self.val_data, c.val_episodes, self.params(), False
            )
        else:
            ways = c.ways if self.spec.fixed_ways else c.val_ways  # a classifier head has `ways` outputs
            # validation episodes use their own seed stream so they never coincide with test episodes
            r = evaluate(
                algorithm, self.model, self.val_data, ways, c.val_shots, c.test_queries, c.val_episodes,
                seed=c.seed + 1_000_003, params=self.params(), progress=False, within=c.within,
            )  # fmt: skip
        return {"val_score": r.mean, "val_ci95": r.ci95}

    def save(self, which: str = "last") -> Path:
        return self.run_dir.save_checkpoint(which, self.model, self.extra, self.config)

    def run(self) -> nn.Module:
        """Trains until ``steps`` or ``max_minutes``, validating and checkpointing along the way.

        At every logged step (``log_every``) the full training state is saved to the resume point; a run killed
        at any moment continues from there with :meth:`resumed` (``fewshot train --resume``), and reaches the
        same final weights as an uninterrupted run: episodes depend only on (seed, step). When distributed,
        rank 0 alone reads and writes the run directory, validates and shows progress.
        """
        c, main = self.config, self.world.main
        start = time.perf_counter()
        train_seconds = 0.0  # time spent in training steps only: validation is not charged to the budget
        first = 0
        counters = None
        failure = None
        if self.resume and main:
            try:
                counters = self.run_dir.load_resume(self.model, self.extra, self.optimizer, self.scheduler)
            except (ValueError, OSError) as e:
                failure = e
        if self.world.size > 1:  # every process stops with rank 0's one-line error, not a traceback
            message = distributed.broadcast_object(None if failure is None else str(failure), self.world)
            if message is not None:
                raise ValueError(message)
        elif failure is not None:
            raise failure
        counters = self.share_state(counters)  # every process starts from rank 0's weights and optimizer
        if counters is not None:
            first, train_seconds, self.best_val = (
                counters["step"],
                counters["train_seconds"],
                counters["best_val"],
            )
            start -= counters["seconds"]
            if main:
                self.run_dir.keep_metrics_until(first)  # records written after the resume point are dropped
                if self.board is not None:  # and so are events
                    self.board = self.board(str(self.run_dir.path / "tensorboard"), purge_step=first + 1)
        elif main:  # a fresh run, or a resumed one that stopped before its first resume point: from step 0
            self.run_dir.start(c, self.overwrite or self.resume)
            if self.board is not None:
                self.board = self.board(str(self.run_dir.path / "tensorboard"))
        if self.spec.training == "none":  # nothing to learn before test time: keep the initial weights
            if main:
                self.save("last")
                self.save("best")
                self.run_dir.append_metrics(
                    {"step": 0, "episodes": 0, "loss": None, "train_seconds": 0.0, "seconds": 0.0}
                )
            return self.model
        budget = 60 * c.max_minutes if c.max_minutes else float("inf")
        if first >= c.steps or (train_seconds >= budget and first > 0):  # it had finished
            if main:
                self.save("last")
            return self.model
        losses, scores = [], []
        higher_is_better = c.data != "regression"  # accuracy for classification, MSE for regression
        bar = progress(range(first, c.steps), f"train {c.algorithm}", total=c.steps, initial=first,
                       enabled=self.progress and main)  # fmt: skip
        step = first
        # a lost peer shows wherever this process is (a collective in the step, the broadcast of `last`, or
        # torchrun's SIGTERM while logging): every place gets the same message with the command that resumes
        try:
            for step in bar:
                t0 = time.perf_counter()
                loss, s = self.guarded_step(step)
                train_seconds += time.perf_counter() - t0
                losses.append(loss)
                if s is not None:
                    scores.append(s)
                done = step + 1
                last = done == c.steps or train_seconds >= budget
                if math.isfinite(
                    budget
                ):  # rank 0's clock decides (the others' include waiting for its validation)
                    last = distributed.from_main(last, self.world, self.device)
                validate_now = main and self.val_data is not None and (done % c.val_every == 0 or last)
                if main and (done % c.log_every == 0 or validate_now or last):
                    record = {
                        "step": done, "episodes": done * c.tasks_per_step, "loss": float(np.mean(losses)),
                        "score": float(np.mean(scores)) if scores else None, "lr": self.scheduler.get_last_lr()[0],
                        "train_seconds": train_seconds,
                    }  # fmt: skip
                    if self.curriculum:  # the settings of this step's tasks
                        record["curriculum"] = self.curriculum_now(step)
                    losses, scores = [], []
                    if validate_now:
                        try:
                            record |= self.validate()
                        except FloatingPointError as e:
                            kept = self.save("last")
                            raise TrainingDiverged(
                                f"validation after step {done} diverged: {e}; the weights of step {done} are in {kept} "
                                "(test with fewer test_inner_steps or a smaller inner_lr)"
                            ) from e
                        self.save("last")
                        value = record["val_score"] if higher_is_better else -record["val_score"]
                        if value > self.best_val:
                            self.best_val = value
                            self.save("best")
                    record["seconds"] = time.perf_counter() - start
                    self.run_dir.append_metrics(record)
                    self.run_dir.save_resume(
                        self.model, self.extra, self.optimizer, self.scheduler,
                        {"step": done, "train_seconds": train_seconds, "seconds": record["seconds"],
                         "best_val": self.best_val},
                    )  # fmt: skip
                    self._show(bar, record, done)
                if last:
                    break
        except RuntimeError as e:
            if self.world.size == 1 or isinstance(e, TrainingDiverged):
                raise
            raise distributed.ProcessLost(
                f"a process of this distributed run stopped at step {step + 1} ({str(e).splitlines()[0]}); "
                f"{self.run_dir.path} resumes from its last logged step: run the same torchrun command with "
                f"`train --resume {self.run_dir.path}`"
            ) from e
        if main:
            self.save("last")
        return self.model

    def share_state(self, counters: dict[str, Any] | None) -> dict[str, Any] | None:
        """Rank 0's weights, buffers, meta-parameters, optimizer and scheduler state, and resume counters, on
        every process (the state file is read by rank 0 alone; the configuration, by every process, so a run on
        several machines resumes from a shared disk)."""
        if self.world.size == 1:
            return counters
        if not distributed.broadcast_object(
            counters is not None, self.world
        ):  # rank 0 knows: it read the file
            # a fresh run: the same seed gave every process the same weights; make it certain
            distributed.broadcast([*self.model.state_dict().values(), *self.extra.values()], self.world)
            return None
        payload = None
        if self.world.main:
            cpu = {k: v.detach().cpu() for k, v in self.state().items()}
            payload = (cpu, self.optimizer.state_dict(), self.scheduler.state_dict(), counters)
        state, optimizer, scheduler, counters = distributed.broadcast_object(payload, self.world)
        if not self.world.main:
            with torch.no_grad():
                for k, v in self.state().items():
                    v.copy_(state[k])
            self.optimizer.load_state_dict(optimizer)
            self.scheduler.load_state_dict(scheduler)
        return counters

    def _show(self, bar: Any, record: dict[str, Any], done: int) -> None:
        """The logged numbers on the progress bar and in TensorBoard."""
        shown = {"loss": f"{record['loss']:.3f}"}
        if record.get("score") is not None:
            shown[{"regression": "mse", "bandit": "reward"}.get(self.config.data, "acc")] = (
                f"{record['score']:.3f}"
            )
        if record.get("val_score") is not None:
            shown["val"] = f"{record['val_score']:.3f}"
        bar.set_postfix(shown)
        if self.board is not None:
            for key in ("loss", "score", "val_score", "lr"):
                if record.get(key) is not None:
                    self.board.add_scalar(key, record[key], done)
            self.board.flush()


def augment_images(x: torch.Tensor, *key: int) -> torch.Tensor:
    """:func:`fewshot.datasets.augment.augment` of ``x`` (float images in [0, 1]) with a generator seeded by
    ``key`` (the run's seed and the episode or step): the same images on every rerun and after a resume."""
    from fewshot.datasets.augment import augment

    return augment(x, torch.Generator().manual_seed(seed_of(*key)))


def seed_of(*key: int) -> int:
    """A 63-bit seed that is a function of ``key`` alone (numpy's SeedSequence hash of the integers)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)


def score(out: torch.Tensor, task: Any) -> float:
    """Query accuracy (classification) or mean squared error (regression) of one task's predictions; for an RL
    task (a bandit), its score itself (the trial's total reward, from the algorithm's ``batch_loss``)."""
    if not isinstance(task, Task):
        return float(out)
    if task.ways:
        return accuracy(out, task.query.y)
    return (out.float() - task.query.y).square().mean().item()
