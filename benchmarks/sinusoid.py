"""Sinusoid regression (Finn et al. 2017, section 5.1): MSE after 0, 1 and 10 gradient steps.

    .venv/bin/python benchmarks/sinusoid.py                      # full: 5 methods x K = 5, 10, 20
    .venv/bin/python benchmarks/sinusoid.py --steps 300 --tasks 100   # smoke run

For each K, MAML, FOMAML, Reptile and Meta-SGD are meta-trained with 25 tasks per step on the 1-40-40-1 ReLU
MLP (Adam, outer_lr 1e-3), and a baseline is pretrained on all tasks' points jointly (one regression problem,
the paper's "pretrained" comparison). Every method is then adapted to the same 600 held-out tasks with 0, 1
and 10 steps of its own inner update (SGD with inner_lr 0.01 for MAML, FOMAML and the baseline; Meta-SGD's
learned step sizes; Reptile's inner_lr) and scored by query MSE (mean +- 95% CI over tasks).

Writes benchmarks/results/sinusoid.json and benchmarks/results/sinusoid.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from common import RESULTS, WORK, header, save_figure

from fewshot import io
from fewshot.algorithms.base import parameters_of
from fewshot.algorithms.maml import MAML
from fewshot.baselines import pretrain_jointly
from fewshot.config import TrainConfig
from fewshot.evaluate import evaluate_regression
from fewshot.models import MLP
from fewshot.tasks.regression import Sinusoid
from fewshot.train import Trainer

METHODS = {  # name -> (algorithm, inner_lr, training inner steps)
    "MAML": ("maml", 0.01, 1),
    "FOMAML": ("fomaml", 0.01, 1),
    "Reptile": ("reptile", 0.02, 5),
    "Meta-SGD": ("metasgd", 0.01, 1),
}
TEST_STEPS = (0, 1, 10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=10000, help="meta-training steps per model (25 tasks each)"
    )
    parser.add_argument("--tasks", type=int, default=600, help="held-out test tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "sinusoid.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # a 1-40-40-1 MLP is faster on one thread than two

    results = header("sinusoid", args.seed, threads=1, steps=args.steps, rows=[])
    for shots in (5, 10, 20):
        test_family = Sinusoid(shots=shots, queries=shots, seed=args.seed + 2_000_003)  # same tasks for all
        contenders = {}
        for name, (algorithm, inner_lr, inner_steps) in METHODS.items():
            config = TrainConfig.of(
                algorithm=algorithm, dataset="sinusoid", shots=shots, queries=shots, steps=args.steps,
                tasks_per_step=25, inner_lr=inner_lr, inner_steps=inner_steps, lr_schedule="constant",
                route="vmap", val_every=0, log_every=500, seed=args.seed,
            )  # fmt: skip
            start = time.perf_counter()
            trainer = Trainer(
                config, WORK / "sinusoid" / f"{algorithm}-k{shots}", progress=False, overwrite=True
            )
            trainer.run()
            contenders[name] = (
                config.build_algorithm(),
                trainer.model,
                trainer.params(),
                time.perf_counter() - start,
            )
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        family = Sinusoid(shots=shots, queries=shots, seed=args.seed)
        baseline = pretrain_jointly(MLP(), family, args.steps)
        contenders["pretrained"] = (
            MAML(0.01),
            baseline,
            parameters_of(baseline),
            time.perf_counter() - start,
        )
        for name, (algorithm, model, params, seconds) in contenders.items():
            for steps in TEST_STEPS:
                row = {
                    "method": name,
                    "shots": shots,
                    "steps": steps,
                    "tasks": args.tasks,
                    "train_seconds": seconds,
                }
                try:
                    r = evaluate_regression(
                        dataclasses.replace(algorithm, inner_steps=steps),
                        model,
                        test_family,
                        args.tasks,
                        params,
                        False,
                    )
                    row |= {"mse": r.mean, "ci95": r.ci95}
                    print(
                        f"K={shots:2d} {name:10s} {steps:2d} steps: MSE {r.mean:.4f} +- {r.ci95:.4f}",
                        flush=True,
                    )
                except FloatingPointError as e:  # e.g. Meta-SGD's step sizes, learned for 1 step, run for 10
                    row |= {"mse": None, "ci95": None, "diverged": str(e)}
                    print(f"K={shots:2d} {name:10s} {steps:2d} steps: diverged ({e})", flush=True)
                results["rows"].append(row)
        io.write_json(args.out, results)
    plot(results, Path(args.out).with_suffix(".png"))
    print(markdown_table(results))


def markdown_table(results: dict) -> str:
    methods = list(dict.fromkeys(r["method"] for r in results["rows"]))
    lines = ["| method | K | " + " | ".join(f"{s} steps" for s in TEST_STEPS) + " | training |", "|---|---|" + "---|" * (len(TEST_STEPS) + 1)]  # fmt: skip
    for shots in (5, 10, 20):
        for m in methods:
            rows = [r for r in results["rows"] if r["method"] == m and r["shots"] == shots]
            if rows:
                cells = " | ".join(
                    f"{r['mse']:.3f} +- {r['ci95']:.3f}" if r["mse"] is not None else "diverged" for r in rows
                )
                lines.append(f"| {m} | {shots} | {cells} | {rows[0]['train_seconds']:.0f} s |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, shots in zip(axes, (5, 10, 20), strict=True):
        for m in dict.fromkeys(r["method"] for r in results["rows"]):
            rows = [
                r
                for r in results["rows"]
                if r["method"] == m and r["shots"] == shots and r["mse"] is not None
            ]
            ax.errorbar([r["steps"] for r in rows], [r["mse"] for r in rows], yerr=[r["ci95"] for r in rows],
                        marker="o", capsize=3, label=m)  # fmt: skip
        ax.set_title(f"K = {shots}")
        ax.set_xlabel("gradient steps at test time")
        ax.set_xscale("symlog", linthresh=1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"query MSE ({results['rows'][0]['tasks']} held-out tasks, 95% CI)")
    axes[0].legend()
    fig.suptitle("Sinusoid regression (Finn et al. 2017 setting)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
