"""One top-down meta-training loop and the run directory it writes.

A run directory is the one interface between training and everything that reads its results:

    config.json          the resolved configuration, package versions, seed, command line
    metrics.jsonl        one JSON line per logged step (training loss/accuracy) and per validation
    model.safetensors    the latest checkpoint (model weights and buffers); best.safetensors: best validation
    eval.json            evaluation results on the test classes (written by ``fewshot eval`` / the main job)

Every file is written to a temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fewshot import io
from fewshot.algorithms.base import meta_gradient, parameters_of, task_loss
from fewshot.evaluate import evaluate, evaluate_regression
from fewshot.registry import (
    ALGORITHMS,
    DATASETS,
    HEADLESS,
    METRIC,
    SUPERVISED,
    UNTRAINED,
    build_algorithm,
    build_model,
    extra_params,
)
from fewshot.tasks.episodes import EpisodeSampler, Task, stack_tasks
from fewshot.tasks.regression import Sinusoid


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a meta-training run (defaults: ProtoNet on Omniglot, Snell et al. 2017).

    ProtoNet trains with more ways than it is tested on (60 vs 5), which the paper found helps; the learning
    rate halves every ``lr_decay_every`` steps (Adam 1e-3, halved every 2000 episodes). Gradient-based
    algorithms (maml, fomaml, anil, metasgd, reptile, cavia, mamlpp) use ``inner_lr``, ``inner_steps`` and
    ``tasks_per_step`` tasks per meta-step, and are tested with ``test_inner_steps``.
    """

    algorithm: str = "protonet"
    # omniglot, sinusoid, folder (images, one subfolder per class) or table (csv / npz of feature vectors)
    dataset: str = "omniglot"
    data_root: str | None = (
        None  # omniglot: None = the copy embedded in the package; folder / table: the path
    )
    download: bool = False  # fetch the official Omniglot zips into the cache (needed for sizes other than 28)
    split_scheme: str = "vinyals"  # vinyals (rotations as classes) or lake (background / evaluation)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    image_size: int = 28
    channels: int = 1  # folder: images converted to grey (1) or RGB (3)
    invert: bool = False  # folder: store 255 - pixel (dark ink on white -> bright on black, as Omniglot)
    label_column: str = "label"  # table: the column (csv) or array (npz) that holds the labels
    # folder / table without train/val/test folders: shares of the classes kept for validation and testing,
    # drawn with their own seed (not `seed`), so runs with different seeds test on the same classes
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    in_features: int | None = None  # input channels (images) or features (tables); set by the trainer
    ways: int = 60  # training ways; 60: Snell et al. 2017, Omniglot
    shots: int = 5
    queries: int = 5  # per class; 5: Snell et al. 2017 with 60 ways
    steps: int = 10000  # meta-training steps (an upper bound when max_minutes is set)
    tasks_per_step: int = 1
    max_minutes: float | None = None  # stop after this much training time (validation excluded)
    outer_lr: float = 1e-3
    optimizer: str = "adam"  # adam or sgd (sgd with outer_lr = epsilon is Reptile's own update)
    lr_schedule: str = "step"  # step (halve every lr_decay_every), cosine (over `steps`), or constant
    lr_decay_every: int = 2000
    lr_decay: float = 0.5
    inner_lr: float = 0.4  # 0.4: MAML, Omniglot 5-way (Finn et al. 2017)
    inner_steps: int = 1
    test_inner_steps: int | None = 10  # Finn et al. test with 10 steps
    first_order: bool = False
    inner_clip: float | None = None
    context_dim: int = 4  # CAVIA
    first_order_epochs: int = 0  # MAML++ derivative-order annealing
    epoch_steps: int = 500  # MAML++ epochs (multi-step loss annealing), in meta-steps
    # how the meta-gradient is computed: autograd (one backward through all tasks), loop, threads (tasks split
    # between threads) or vmap (torch.func per-task gradients); auto picks by measurement (BENCHMARKS.md)
    route: str = "auto"
    fce: bool = False  # Matching Networks: full context embeddings
    matching_scale: float = 1.0  # Matching Networks: cosine similarities times this before the softmax
    siamese_loss: str = "bce"  # Siamese: bce (Koch et al.), contrastive or triplet
    margin: float = 1.0  # Siamese: contrastive / triplet margin
    finetune_steps: int = 100  # baseline, baselinepp, scratch: gradient steps on each test support set
    finetune_lr: float = 1e-2
    batch_size: int = 64  # baseline, baselinepp: images per supervised pretraining step
    classes: int | None = None  # baseline, baselinepp: training classes (set by the trainer)
    hidden: int = 64  # conv4 channels
    val_every: int = 500  # steps between validations (0: never)
    val_episodes: int = 200
    val_ways: int = 5
    val_shots: int = 5
    test_queries: int = 15
    log_every: int = 50
    bf16: bool = False  # bfloat16 autocast of the network (CPU bf16 matmul is ~4x faster than fp32 here)
    channels_last: bool = True  # exact, and ~1.5x faster for conv nets on CPU
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    compile: bool = False  # torch.compile the vmap route's meta-gradient (~20 s once; ~4x, sinusoid MLP)
    tensorboard: bool = False  # also log to RUN/tensorboard (pip install 'fewshot[tensorboard]')
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "algorithm": sorted(ALGORITHMS), "dataset": list(DATASETS), "optimizer": ["adam", "sgd"],
            "lr_schedule": ["step", "cosine", "constant"], "route": ["auto", "autograd", "loop", "threads", "vmap"],
        }  # fmt: skip
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {valid}")
        for name in (
            "ways",
            "shots",
            "steps",
            "tasks_per_step",
            "image_size",
            "hidden",
            "val_episodes",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("outer_lr", "inner_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.route == "auto":
            # metric learners: one backward pass; the sinusoid MLP: vmap (~6x a loop); conv nets: two tasks at
            # a time on one core each beat one task on two (benchmarks/maml_speed.py)
            threads = self.threads or torch.get_num_threads()
            route = (
                "autograd" if self.algorithm in METRIC | SUPERVISED | UNTRAINED
                else "vmap" if self.dataset == "sinusoid"
                else "threads" if threads > 1 else "loop"
            )  # fmt: skip
            object.__setattr__(self, "route", route)  # resolved once, so config.json records the route used
        if self.route == "threads" and self.threads is None:
            # the split of tasks between threads fixes the order of the float sums: recorded, so that a resumed
            # run (or a rerun on another machine) adds in the same order
            object.__setattr__(self, "threads", torch.get_num_threads())
        if self.route in ("threads", "vmap") and self.algorithm in METRIC | SUPERVISED | UNTRAINED:
            raise ValueError(
                f"route {self.route} is for gradient-based algorithms; {self.algorithm} keeps BatchNorm running "
                "statistics, which per-task copies would lose: use --route autograd (or auto)"
            )
        if self.compile and self.route != "vmap":
            raise ValueError(f"compile needs route vmap (this run uses route {self.route}); add --route vmap")
        if self.algorithm in HEADLESS | UNTRAINED and self.dataset == "sinusoid":
            raise ValueError(
                f"{self.algorithm} classifies; for sinusoid regression use maml, fomaml, metasgd, reptile, ..."
            )
        if self.dataset == "table" and self.algorithm == "relation":
            raise ValueError(
                "relation compares image feature maps; for a table use protonet, matching, maml, ..."
            )
        if self.dataset in ("folder", "table") and self.data_root is None:
            raise ValueError(f"dataset {self.dataset} needs --data-root (its folder or file)")
        if self.siamese_loss not in ("bce", "contrastive", "triplet"):
            raise ValueError(
                f"unknown siamese_loss {self.siamese_loss!r}; choose one of bce, contrastive, triplet"
            )


def load_split(config: TrainConfig, split: str) -> Any:
    """The data of one split: a ClassDataset for Omniglot, a task family for sinusoids."""
    if config.dataset in ("folder", "table"):
        from fewshot.datasets.folder import image_folder, table_dataset

        if config.data_root is None:
            raise ValueError(
                f"dataset {config.dataset} needs --data-root (the {'folder' if config.dataset == 'folder' else 'csv or npz file'})"
            )
        fractions = (config.val_fraction, config.test_fraction)
        if config.dataset == "table":
            return table_dataset(config.data_root, split, config.label_column, fractions, config.split_seed)
        return image_folder(
            config.data_root,
            split,
            config.image_size,
            config.channels,
            config.invert,
            fractions,
            config.split_seed,
        )
    if config.dataset == "sinusoid":
        # each split is its own random stream of tasks: same distribution, never the same tasks
        offset = {"train": 0, "val": 1_000_003, "test": 2_000_003}.get(split, 3_000_017)
        return Sinusoid(shots=config.shots, queries=config.queries, seed=config.seed + offset)
    from fewshot.datasets.omniglot import omniglot

    return omniglot(
        split,
        scheme=config.split_scheme,
        root=config.data_root,
        image_size=config.image_size,
        download=config.download,
    )


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with every run and benchmark result."""
    import fewshot

    return {
        "fewshot": fewshot.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


class Trainer:
    """Meta-trains one model and keeps its run directory up to date.

    Args:
        config: the settings.
        run_dir: where config, metrics and checkpoints go (created if missing).
        progress: show a progress bar.
    """

    def __init__(
        self, config: TrainConfig, run_dir: str | Path, progress: bool = True, resume: bool = False
    ) -> None:
        self.config, self.run_dir, self.progress, self.resume = config, Path(run_dir), progress, resume
        set_threads(config.threads)
        self.algorithm = build_algorithm(config)
        self.train_data = load_split(config, config.train_split)
        self.val_data = load_split(config, config.val_split) if config.val_every else None
        if config.algorithm in SUPERVISED:  # the classifier covers every training class
            config = self.config = dataclasses.replace(config, classes=self.train_data.num_classes)
        torch.manual_seed(config.seed)  # the only use of the global RNG: nn.Module initialisation
        if config.dataset != "sinusoid":  # recorded so that load_model can rebuild the network
            config = self.config = dataclasses.replace(config, in_features=self.train_data.image_shape[0])
        self.model = build_model(config, config.in_features or 1)
        self.images = config.dataset != "sinusoid"  # episodic classification (images or table rows)
        self.channels_last = (
            config.channels_last and self.images and config.dataset != "table"
        )  # 4-D inputs only
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.extra = extra_params(self.algorithm, self.model)
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
        if self.images and config.algorithm not in SUPERVISED | UNTRAINED:
            self.sampler = EpisodeSampler(
                self.train_data.labels, config.ways, config.shots, config.queries,
                config.steps * config.tasks_per_step, config.seed,
            )  # fmt: skip
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

    def params(self) -> dict[str, torch.Tensor]:
        """Everything the algorithm reads: the model's parameters and its own meta-parameters."""
        return parameters_of(self.model) | self.extra

    def task(self, i: int) -> Task:
        """Training task ``i`` (episode ``i`` of the sampler, or sinusoid ``i``)."""
        if not self.images:
            return self.train_data.task(i)
        task = self.sampler.task(self.train_data, i)
        if self.channels_last:
            task = task._replace(
                support=task.support._replace(x=task.support.x.contiguous(memory_format=torch.channels_last)),
                query=task.query._replace(x=task.query.x.contiguous(memory_format=torch.channels_last)),
            )
        return task

    def step(self, step: int) -> tuple[float, float | None]:
        """One meta-training step on ``tasks_per_step`` tasks; returns (query loss, query score or None)."""
        c = self.config
        if c.algorithm in SUPERVISED:
            return self.supervised_step(step)
        algorithm = self.algorithm
        if hasattr(algorithm, "at_epoch"):  # MAML++: multi-step loss weights, derivative order
            algorithm = algorithm.at_epoch(step // c.epoch_steps)
        tasks = [self.task(step * c.tasks_per_step + j) for j in range(c.tasks_per_step)]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.bf16):
            if c.route == "autograd" and not hasattr(algorithm, "task_gradient"):
                losses, outs = zip(
                    *(task_loss(algorithm, self.model, self.params(), t) for t in tasks), strict=True
                )
                loss = torch.stack(losses).mean()
                loss.backward()
            else:
                grads, loss = meta_gradient(
                    algorithm,
                    self.model,
                    self.params(),
                    stack_tasks(tasks),
                    c.route,
                    workers=c.threads,
                    compile=c.compile,
                )
                for name, p in self.params().items():
                    p.grad = grads[name]
                outs = None
                if (step + 1) % c.log_every == 0:  # query predictions for the logged training score only
                    with torch.no_grad():
                        outs = [task_loss(algorithm, self.model, self.params(), t)[1] for t in tasks]
        self.optimizer.step()
        self.scheduler.step()
        if outs is None:
            return loss.item(), None
        return loss.item(), float(np.mean([score(out, t) for out, t in zip(outs, tasks, strict=True)]))

    def supervised_step(self, step: int) -> tuple[float, float]:
        """One step of ordinary classification over all training classes (Chen et al. 2019's pretraining)."""
        c = self.config
        rng = np.random.default_rng([c.seed, step])  # batch `step` depends only on (seed, step)
        idx = torch.as_tensor(rng.integers(0, len(self.train_data), size=c.batch_size))
        x, y = self.train_data.gather(idx), self.train_data.labels[idx]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.bf16):
            logits = self.model(x).float()
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item(), (logits.argmax(-1) == y).float().mean().item()

    def validate(self) -> dict[str, float]:
        c = self.config
        assert self.val_data is not None
        algorithm = build_algorithm(c, testing=True)
        if not self.images:
            r = evaluate_regression(
                algorithm, self.model, self.val_data, c.val_episodes, self.params(), False
            )
        else:
            ways = c.val_ways if c.algorithm in HEADLESS else c.ways  # a classifier head has `ways` outputs
            # Validation episodes use their own seed stream so they never coincide with test episodes.
            r = evaluate(
                algorithm, self.model, self.val_data, ways, c.val_shots, c.test_queries, c.val_episodes,
                seed=c.seed + 1_000_003, params=self.params(), progress=False,
            )  # fmt: skip
        return {"val_score": r.mean, "val_ci95": r.ci95}

    def save(self, name: str = "model.safetensors") -> Path:
        tensors = self.model.state_dict() | {EXTRA + k: v for k, v in self.extra.items()}
        return io.save_tensors(
            self.run_dir / name, tensors, {"config": json.dumps(dataclasses.asdict(self.config))}
        )

    @classmethod
    def resumed(cls, run_dir: str | Path, progress: bool = True) -> Trainer:
        """A trainer that continues the run in ``run_dir`` from its last resume point (see :meth:`run`)."""
        run_dir = Path(run_dir)
        path = run_dir / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a fewshot run directory (no config.json); give a run to resume"
            )
        try:
            config = TrainConfig(**json.loads(path.read_text())["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is damaged or from another version ({e}); start a new run") from e
        return cls(config, run_dir, progress, resume=True)

    def save_resume(self, done: int, train_seconds: float, seconds: float) -> None:
        """Everything needed to continue bit-identically after step ``done``: weights and buffers, the
        algorithm's meta-parameters, optimizer and scheduler state, counters. One safetensors file, atomic."""
        tensors = {"model." + k: v for k, v in self.model.state_dict().items()}
        tensors |= {"extra." + k: v for k, v in self.extra.items()}
        opt = self.optimizer.state_dict()
        for idx, state in opt["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = value
        meta = {
            "step": done, "train_seconds": train_seconds, "seconds": seconds, "best_val": self.best_val,
            "param_groups": opt["param_groups"], "scheduler": self.scheduler.state_dict(),
        }  # fmt: skip
        io.save_tensors(self.run_dir / RESUME, tensors, {"state": json.dumps(meta)})

    def load_resume(self) -> dict[str, Any]:
        tensors, metadata = io.load_tensors_and_metadata(self.run_dir / RESUME)
        try:
            meta = json.loads(metadata["state"])
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            with torch.no_grad():
                for k, v in self.extra.items():
                    v.copy_(tensors["extra." + k])
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, idx, name = key.split(".", 2)
                    state.setdefault(int(idx), {})[name] = value
            self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
            self.scheduler.load_state_dict(meta["scheduler"])
            self.best_val = meta["best_val"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(
                f"{self.run_dir / RESUME} does not fit this run ({str(e).splitlines()[0]}); start a new run"
            ) from e
        return meta

    def run(self) -> nn.Module:
        """Trains until ``steps`` or ``max_minutes``, validating and checkpointing along the way.

        At every logged step (``log_every``) the full training state is saved to ``resume.safetensors``;
        a run killed at any moment continues from there with :meth:`resumed` (``fewshot train --resume``),
        and reaches the same final weights as an uninterrupted run: episodes depend only on (seed, step).
        """
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.run_dir / "metrics.jsonl"
        start = time.perf_counter()
        train_seconds = 0.0  # time spent in training steps only: validation is not charged to the budget
        first = 0
        if self.resume and (self.run_dir / RESUME).is_file():
            meta = self.load_resume()
            first, train_seconds = meta["step"], meta["train_seconds"]
            if self.board is not None:  # events logged after the resume point are dropped, as metrics are
                self.board = self.board(str(self.run_dir / "tensorboard"), purge_step=first + 1)
            start -= meta["seconds"]
            # records written after the resume point (a kill between the two writes) are dropped
            kept = [m for m in io.read_jsonl(metrics) if m["step"] <= first] if metrics.is_file() else []
            io.write_text(metrics, "".join(json.dumps(m) + "\n" for m in kept))
        else:
            # a fresh run: nothing an earlier run left in this directory may be taken for this one's
            for stale in ("best.safetensors", "model.safetensors", RESUME, "eval.json", "metrics.jsonl"):
                (self.run_dir / stale).unlink(missing_ok=True)
            for folder in ("report", "tensorboard"):
                if (self.run_dir / folder).is_dir():
                    shutil.rmtree(self.run_dir / folder)
            io.write_json(
                self.run_dir / "config.json", {"config": dataclasses.asdict(c), "env": environment()}
            )
            if self.board is not None:
                self.board = self.board(str(self.run_dir / "tensorboard"))
        budget = 60 * c.max_minutes if c.max_minutes else float("inf")
        losses, scores = [], []
        higher_is_better = self.images  # accuracy for classification, MSE for regression
        if c.algorithm in UNTRAINED:  # nothing to learn before test time: keep the initial weights
            self.save()
            self.save("best.safetensors")
            io.append_jsonl(
                metrics, {"step": 0, "episodes": 0, "loss": None, "train_seconds": 0.0, "seconds": 0.0}
            )
            return self.model
        if first >= c.steps or (train_seconds >= budget and first > 0):  # it had finished
            self.save()
            return self.model
        bar = tqdm(
            range(first, c.steps),
            desc=f"train {c.algorithm}",
            total=c.steps,
            initial=first,
            disable=not self.progress,
        )
        for step in bar:
            t0 = time.perf_counter()
            loss, s = self.step(step)
            train_seconds += time.perf_counter() - t0
            losses.append(loss)
            if s is not None:
                scores.append(s)
            done = step + 1
            last = done == c.steps or train_seconds >= budget
            validate_now = self.val_data is not None and (done % c.val_every == 0 or last)
            if done % c.log_every == 0 or validate_now or last:
                record = {
                    "step": done, "episodes": done * c.tasks_per_step, "loss": float(np.mean(losses)),
                    "score": float(np.mean(scores)) if scores else None, "lr": self.scheduler.get_last_lr()[0],
                    "train_seconds": train_seconds,
                }  # fmt: skip
                losses, scores = [], []
                if validate_now:
                    record |= self.validate()
                    self.save()
                    value = record["val_score"] if higher_is_better else -record["val_score"]
                    if value > self.best_val:
                        self.best_val = value
                        self.save("best.safetensors")
                record["seconds"] = time.perf_counter() - start
                io.append_jsonl(metrics, record)
                self.save_resume(done, train_seconds, record["seconds"])
                shown = {"loss": f"{record['loss']:.3f}"}
                if record.get("score") is not None:
                    shown["acc" if self.images else "mse"] = f"{record['score']:.3f}"
                if record.get("val_score") is not None:
                    shown["val"] = f"{record['val_score']:.3f}"
                bar.set_postfix(shown)
                if self.board is not None:
                    for key in ("loss", "score", "val_score", "lr"):
                        if record.get(key) is not None:
                            self.board.add_scalar(key, record[key], done)
                    self.board.flush()
            if last:
                break
        self.save()
        return self.model


EXTRA = "algorithm."  # checkpoint prefix of an algorithm's own meta-parameters
RESUME = "resume.safetensors"  # the full training state at the last logged step


def score(out: torch.Tensor, task: Task) -> float:
    """Query accuracy (classification) or mean squared error (regression) of one task's predictions."""
    if task.ways:
        return (out.argmax(-1) == task.query.y).float().mean().item()
    return (out.float() - task.query.y).square().mean().item()


def load_model(
    run_dir: str | Path, checkpoint: str = "model.safetensors"
) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuilds the model of a run directory and loads its weights.

    Returns:
        ``(model, config, extra)``: ``extra`` holds the algorithm's own meta-parameters (may be empty); pass
        ``parameters_of(model) | extra`` as ``params`` when evaluating.

    Raises:
        FileNotFoundError / ValueError: with a message saying which file is missing or unreadable.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a fewshot run directory (no config.json); give a run path")
    try:
        stored = json.loads(config_path.read_text())["config"]
        config = TrainConfig(**stored)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_path} is damaged or from another version ({e}); retrain the run") from e
    state = io.load_tensors(run_dir / checkpoint)
    extra = {k[len(EXTRA) :]: v for k, v in state.items() if k.startswith(EXTRA)}
    state = {k: v for k, v in state.items() if not k.startswith(EXTRA)}
    model = build_model(config, config.in_features or 1)  # (runs from before in_features: grey images)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{run_dir / checkpoint} does not fit the run's model ({first}); retrain") from e
    return model, config, extra
