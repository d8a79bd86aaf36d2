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
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fewshot import io
from fewshot.algorithms.base import Algorithm, parameters_of, task_loss
from fewshot.algorithms.protonet import ProtoNet
from fewshot.datasets.base import ClassDataset
from fewshot.evaluate import evaluate
from fewshot.models.conv4 import Conv4
from fewshot.tasks.episodes import EpisodeSampler

ALGORITHMS: dict[str, Callable[[], Algorithm]] = {"protonet": ProtoNet}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a meta-training run (defaults: ProtoNet on Omniglot, Snell et al. 2017).

    Training episodes use more ways than testing (60 vs 5): the paper found this helps. The learning rate
    halves every ``lr_decay_every`` episodes (the paper: Adam 1e-3, halved every 2000 episodes).
    """

    algorithm: str = "protonet"
    dataset: str = "omniglot"
    data_root: str | None = None  # None: the copy embedded in the package
    download: bool = (
        False  # fetch the official Omniglot zips into the cache (needed for image sizes other than 28)
    )
    split_scheme: str = "vinyals"  # vinyals (rotations as classes) or lake (background / evaluation)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    image_size: int = 28
    ways: int = 60  # training ways; 60: Snell et al. 2017, Omniglot
    shots: int = 5
    queries: int = 5  # per class; 5: Snell et al. 2017 with 60 ways
    episodes: int = 10000  # training episodes (an upper bound when max_minutes is set)
    max_minutes: float | None = None  # stop after this much wall time (the checkpoint is kept)
    outer_lr: float = 1e-3
    lr_decay_every: int = 2000
    lr_decay: float = 0.5
    hidden: int = 64  # conv4 channels
    val_every: int = 500  # episodes between validations (0: never)
    val_episodes: int = 200
    val_ways: int = 5
    val_shots: int = 5
    test_queries: int = 15
    log_every: int = 50
    bf16: bool = False  # bfloat16 autocast of the network (CPU bf16 matmul is ~4x faster than fp32 here)
    channels_last: bool = True  # exact, and ~1.5x faster for conv nets on CPU
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of {sorted(ALGORITHMS)}")
        for name in ("ways", "shots", "episodes", "image_size", "hidden", "val_episodes", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.outer_lr <= 0:
            raise ValueError(f"outer_lr must be positive, got {self.outer_lr}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")


def load_split(config: TrainConfig, split: str) -> ClassDataset:
    """The dataset of one class split named in the config."""
    if config.dataset != "omniglot":
        raise ValueError(f"unknown dataset {config.dataset!r}; choose 'omniglot'")
    from fewshot.datasets.omniglot import omniglot

    return omniglot(
        split,
        scheme=config.split_scheme,
        root=config.data_root,
        image_size=config.image_size,
        download=config.download,
    )


def build_model(config: TrainConfig, in_channels: int = 1) -> nn.Module:
    """The network named by the config (conv4 for now), on CPU, in float32."""
    return Conv4(in_channels, config.hidden, image_size=config.image_size)


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

    def __init__(self, config: TrainConfig, run_dir: str | Path, progress: bool = True) -> None:
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        set_threads(config.threads)
        self.algorithm = ALGORITHMS[config.algorithm]()
        self.train_data = load_split(config, config.train_split)
        self.val_data = load_split(config, config.val_split) if config.val_every else None
        torch.manual_seed(config.seed)  # the only use of the global RNG: nn.Module initialisation
        self.model = build_model(config, self.train_data.image_shape[0])
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.outer_lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.lr_decay_every, gamma=config.lr_decay
        )
        self.sampler = EpisodeSampler(
            self.train_data.labels, config.ways, config.shots, config.queries, config.episodes, config.seed
        )
        self.best_val = -1.0

    def step(self, episode: int) -> tuple[float, float]:
        """One meta-training step on training episode ``episode``; returns (loss, query accuracy)."""
        task = self.sampler.task(self.train_data, episode)
        if self.config.channels_last:
            task = task._replace(
                support=task.support._replace(x=task.support.x.contiguous(memory_format=torch.channels_last)),
                query=task.query._replace(x=task.query.x.contiguous(memory_format=torch.channels_last)),
            )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16):
            loss, logits = task_loss(self.algorithm, self.model, parameters_of(self.model), task)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        acc = (logits.argmax(-1) == task.query.y).float().mean().item()
        return loss.item(), acc

    def validate(self) -> dict[str, float]:
        c = self.config
        assert self.val_data is not None
        # Validation episodes use their own seed stream so they never coincide with test episodes.
        r = evaluate(
            self.algorithm, self.model, self.val_data, c.val_ways, c.val_shots, c.test_queries,
            c.val_episodes, seed=c.seed + 1_000_003, progress=False,
        )  # fmt: skip
        return {"val_acc": r.mean, "val_ci95": r.ci95}

    def save(self, name: str = "model.safetensors") -> Path:
        return io.save_tensors(self.run_dir / name, self.model.state_dict(), {"config": repr(self.config)})

    def run(self) -> nn.Module:
        """Trains until ``episodes`` or ``max_minutes``, validating and checkpointing along the way."""
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        io.write_json(self.run_dir / "config.json", {"config": dataclasses.asdict(c), "env": environment()})
        metrics = self.run_dir / "metrics.jsonl"
        metrics.unlink(missing_ok=True)
        start = time.perf_counter()
        budget = 60 * c.max_minutes if c.max_minutes else float("inf")
        train_seconds = 0.0  # time spent in training steps only: validation is not charged to the budget
        losses, accs = [], []
        bar = tqdm(range(c.episodes), desc=f"train {c.algorithm}", disable=not self.progress)
        for episode in bar:
            t0 = time.perf_counter()
            loss, acc = self.step(episode)
            train_seconds += time.perf_counter() - t0
            losses.append(loss)
            accs.append(acc)
            done = episode + 1
            last = done == c.episodes or train_seconds >= budget
            if done % c.log_every == 0 or last:
                record = {
                    "episode": done, "loss": float(np.mean(losses)), "acc": float(np.mean(accs)),
                    "lr": self.scheduler.get_last_lr()[0], "train_seconds": train_seconds,
                }  # fmt: skip
                losses, accs = [], []
                if self.val_data is not None and (done % c.val_every == 0 or last):
                    record |= self.validate()
                    self.save()
                    if record["val_acc"] > self.best_val:
                        self.best_val = record["val_acc"]
                        self.save("best.safetensors")
                record["seconds"] = time.perf_counter() - start
                io.append_jsonl(metrics, record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['acc']:.3f}")
            if last:
                break
        self.save()
        return self.model


def load_model(run_dir: str | Path, checkpoint: str = "model.safetensors") -> tuple[nn.Module, TrainConfig]:
    """Rebuilds the model of a run directory and loads its weights.

    Raises:
        FileNotFoundError / ValueError: with a message saying which file is missing or unreadable.
    """
    import json

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
    in_channels = 1 if config.dataset == "omniglot" else 3
    model = build_model(config, in_channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{run_dir / checkpoint} does not fit the run's model ({first}); retrain") from e
    return model, config
