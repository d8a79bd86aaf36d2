"""Shared pieces of the benchmark scripts: machine facts, a budgeted training run with its curve, plots."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from fewshot import io
from fewshot.config import TrainConfig
from fewshot.runs import environment
from fewshot.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "work"  # run directories (git-ignored)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except Exception:
        return platform.processor() or platform.machine()


def header(name: str, seed: int, **extra: Any) -> dict[str, Any]:
    """The part of every results file that says what ran where: command, machine, versions, seed."""
    return {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "env": environment()
        | {"cpu_model": cpu_model(), "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "")},
        "seed": seed,
        **extra,
    }


def train_with_curve(config: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Trains one run; returns its length, times and validation curve (score against training time)."""
    Trainer(config, run_dir, progress=False, overwrite=True).run()  # a rerun replaces the last one
    metrics = io.read_jsonl(run_dir / "metrics.jsonl")
    curve = [
        {
            "train_seconds": m["train_seconds"],
            "step": m["step"],
            "val": m["val_score"],
            "val_ci95": m["val_ci95"],
        }
        for m in metrics
        if "val_score" in m
    ]
    return {
        "config": config.flat(),
        "steps": metrics[-1]["step"],
        "train_seconds": metrics[-1]["train_seconds"],
        "seconds_with_validation": metrics[-1]["seconds"],
        "curve": curve,
    }


def plot_curves(models: dict[str, dict], path: Path, title: str) -> None:
    """Validation accuracy (with its 95% CI band) against training time, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, model in models.items():
        xs = [p["train_seconds"] / 60 for p in model["curve"]]
        ys = [100 * p["val"] for p in model["curve"]]
        cis = [100 * p["val_ci95"] for p in model["curve"]]
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.fill_between(xs, [y - c for y, c in zip(ys, cis, strict=True)], [y + c for y, c in zip(ys, cis, strict=True)], alpha=0.2)  # fmt: skip
    ax.set_xlabel("training time (minutes, 2 CPU cores)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Writes ``fig`` to ``path`` through a temporary file and a rename: never half a PNG."""
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
