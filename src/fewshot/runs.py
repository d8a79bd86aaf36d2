"""The run directory: the one interface between training and everything that reads its results.

    config.json          {"config": every setting by name, "env": versions, machine, command line}
    metrics.jsonl        one JSON line per logged step (training loss and score) and per validation
    model.safetensors    the last checkpoint: model weights and buffers, the algorithm's own meta-parameters
    best.safetensors     the checkpoint of the best validation score
    resume.safetensors   the full training state at the last logged step (``fewshot train --resume``)
    eval.json            a list of evaluation records (``fewshot eval`` and the test after training)

Every file is written to a temporary name and renamed (:mod:`fewshot.io`), so a crash never leaves half a file.
This module is the only one that knows these names; everything else asks :class:`RunDir` or :func:`load_run`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewshot import devices, io
from fewshot.algorithms.base import Algorithm, Params, parameters_of
from fewshot.config import TrainConfig

CONFIG, METRICS, EVAL = "config.json", "metrics.jsonl", "eval.json"
LAST, BEST, RESUME = "model.safetensors", "best.safetensors", "resume.safetensors"
CHECKPOINTS = {"best": BEST, "last": LAST}
EXTRA = "algorithm."  # checkpoint prefix of an algorithm's own meta-parameters


def environment() -> dict[str, Any]:
    """Versions and machine facts stored with every run and benchmark result."""
    import fewshot

    return {
        "fewshot": fewshot.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }  # fmt: skip


@dataclass
class Run:
    """A trained run, loaded: its configuration, its network with the chosen checkpoint's weights, and the
    algorithm's own meta-parameters (``extra``)."""

    path: Path
    config: TrainConfig
    model: nn.Module
    extra: Params
    checkpoint: str  # the file the weights came from

    @property
    def params(self) -> Params:
        """What the algorithm reads: the model's parameters and its own meta-parameters."""
        return parameters_of(self.model) | self.extra

    def algorithm(self, testing: bool = True) -> Algorithm:
        """The run's algorithm, by default as it is used at test time."""
        return self.config.build_algorithm(testing)


class RunDir:
    """Reads and writes the files of one run directory (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._config: TrainConfig | None = None

    def is_run(self) -> bool:
        return (self.path / CONFIG).is_file()

    def config(self) -> TrainConfig:
        """The run's configuration (read once)."""
        if self._config is None:
            path = self.path / CONFIG
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self.path} is not a fewshot run directory (no {CONFIG}); give the --run-dir of `fewshot train`"
                )
            try:
                stored = json.loads(path.read_text())["config"]
                self._config = TrainConfig.of(stored=True, **stored)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path} is damaged or from another version ({e}); retrain the run") from e
        return self._config

    def files(self) -> list[str]:
        """The names of the run files in the directory (what a new run would replace)."""
        names = [CONFIG, METRICS, EVAL, LAST, BEST, RESUME, "report", "tensorboard"]
        return [n for n in names if (self.path / n).exists()]

    def check_writable(self, overwrite: bool = False) -> None:
        """Refuses, before anything is loaded or written, a directory that cannot hold a new run: one that holds
        a run already (unless ``overwrite``), a path that is a file or lies under one, or a folder that cannot
        be written to."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise ValueError(f"--run-dir {path} is a file; give a folder for the run")
        parent = next((p for p in path.parents if p.exists()), Path("."))
        if not parent.is_dir():
            raise ValueError(f"--run-dir {path}: {parent} is a file, not a folder; give another --run-dir")
        where = path if path.is_dir() else parent
        try:  # a real probe: permissions, read-only file systems, quotas (os.access says yes to root regardless)
            os.rmdir(tempfile.mkdtemp(prefix=".fewshot-probe-", dir=where))
        except OSError as e:
            raise ValueError(
                f"--run-dir {path}: no permission to write in {where} ({e.strerror}); give a folder you can write to"
            ) from e
        found = self.files()
        if found and not overwrite:
            raise ValueError(
                f"{path} already holds a run ({', '.join(found)}); continue it with --resume {path}, give another "
                "--run-dir, or add --overwrite to replace it"
            )

    def start(self, config: TrainConfig, overwrite: bool = False) -> None:
        """Begins a fresh run: refuses a directory that holds one (unless ``overwrite``, which deletes its files
        first, so that nothing an earlier run left may be taken for this one's); writes config.json."""
        self.check_writable(overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in (BEST, LAST, RESUME, EVAL, METRICS, CONFIG):
            (self.path / stale).unlink(missing_ok=True)
        for folder in ("report", "tensorboard"):
            if (self.path / folder).is_dir():
                shutil.rmtree(self.path / folder)
        io.write_json(self.path / CONFIG, {"config": config.flat(), "env": environment()})
        self._config = config

    def checkpoint(self, which: str = "best") -> Path:
        """The checkpoint file for ``best`` (the best validation, else the last: runs trained without
        validation have no best) or ``last``."""
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {sorted(CHECKPOINTS)}, got {which!r}")
        path = self.path / CHECKPOINTS[which]
        if which == "best" and not path.is_file():
            return self.path / LAST
        return path

    def save_checkpoint(self, which: str, model: nn.Module, extra: Params, config: TrainConfig) -> Path:
        tensors = model.state_dict() | {EXTRA + k: v for k, v in extra.items()}
        return io.save_tensors(self.path / CHECKPOINTS[which], tensors, {"config": json.dumps(config.flat())})

    def load(self, which: str = "best", device: str | torch.device | None = None) -> Run:
        """The run's network with the weights of checkpoint ``which`` (``best`` or ``last``), on ``device``.

        The checkpoint is read on the CPU (whatever device it was saved from) and copied into the network
        wherever it is; the algorithm's own meta-parameters (``Run.extra``) are put on the same device.

        Args:
            which: ``best`` (the best validation, else the last) or ``last``.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"`` or a ``torch.device``; None: the CPU.

        Raises:
            FileNotFoundError / ValueError: with a message saying which file is missing or does not fit, or that
                the device is not on this machine.
        """
        device = torch.device("cpu") if device is None else devices.resolve(device)  # refused before reading
        config = self.config()
        path = self.checkpoint(which)
        state = io.load_tensors(path)
        extra = {k[len(EXTRA) :]: v.to(device) for k, v in state.items() if k.startswith(EXTRA)}
        model = config.build_model().to(device)
        try:
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith(EXTRA)})
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f"{path} does not fit the run's model ({first}); retrain") from e
        return Run(self.path, config, model, extra, path.name)

    # -- resume state ----------------------------------------------------------------------------------------

    def save_resume(self, model: nn.Module, extra: Params, optimizer: torch.optim.Optimizer, scheduler: Any,
                    counters: dict[str, Any]) -> None:  # fmt: skip
        """Everything needed to continue bit-identically: weights and buffers, the algorithm's meta-parameters,
        optimizer and scheduler state, and ``counters`` (step, times, best validation). One file, atomic."""
        tensors = {"model." + k: v for k, v in model.state_dict().items()}
        tensors |= {"extra." + k: v for k, v in extra.items()}
        opt = optimizer.state_dict()
        for idx, state in opt["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = value
        meta = counters | {"param_groups": opt["param_groups"], "scheduler": scheduler.state_dict()}
        io.save_tensors(self.path / RESUME, tensors, {"state": json.dumps(meta)})

    def load_resume(self, model: nn.Module, extra: Params, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> dict[str, Any] | None:  # fmt: skip
        """Restores the state saved by :meth:`save_resume` in place; returns its counters (None: no state)."""
        path = self.path / RESUME
        if not path.is_file():
            return None
        tensors, metadata = io.load_tensors_and_metadata(path)
        try:
            meta = json.loads(metadata["state"])
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            with torch.no_grad():
                for k, v in extra.items():
                    v.copy_(tensors["extra." + k])
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, idx, name = key.split(".", 2)
                    state.setdefault(int(idx), {})[name] = value
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
            scheduler.load_state_dict(meta["scheduler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(
                f"{path} does not fit this run ({str(e).splitlines()[0]}); start a new run"
            ) from e
        return meta

    # -- metrics and evaluations ------------------------------------------------------------------------------

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        return io.read_jsonl(path) if path.is_file() else []

    def append_metrics(self, record: dict[str, Any]) -> None:
        io.append_jsonl(self.path / METRICS, record)

    def keep_metrics_until(self, step: int) -> None:
        """Drops records written after ``step`` (a kill between a record and its resume point)."""
        kept = [m for m in self.metrics() if m["step"] <= step]
        io.write_text(self.path / METRICS, "".join(io.dumps(m) + "\n" for m in kept))

    def append_eval(self, record: dict[str, Any]) -> tuple[Path, str | None]:
        """Appends an evaluation record to eval.json; returns the file written and, when eval.json was damaged
        (not JSON, or not a list), a note saying so: the record then goes to a new file beside it, and the
        damaged one is left as it is."""
        path = self.path / EVAL
        existing: Any = []
        problem = None
        if path.is_file():
            try:
                existing = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(existing, list):
                    problem = f"holds a JSON {type(existing).__name__}, not a list of evaluations"
            except (ValueError, UnicodeDecodeError) as e:
                problem = f"is not valid JSON ({str(e).splitlines()[0]})"
        if problem is None:
            return io.write_json(path, [*existing, record]), None
        n = 2
        while (self.path / f"eval-{n}.json").exists():
            n += 1
        beside = io.write_json(self.path / f"eval-{n}.json", [record])
        return beside, f"{path} {problem}: left as it is; this evaluation was written to {beside}"


def load_run(path: str | Path, which: str = "best", device: str | torch.device | None = None) -> Run:
    """The trained run in ``path`` with checkpoint ``which`` (``best``, falling back to ``last``; or ``last``),
    its network on ``device`` (None: the CPU; see :meth:`RunDir.load`)."""
    run_dir = RunDir(path)
    if not run_dir.path.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir.path} does not exist; give the --run-dir of `fewshot train`"
        )
    return run_dir.load(which, device)
