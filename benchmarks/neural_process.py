"""Neural processes against MAML on the same sinusoid tasks (Finn et al. 2017, section 5.1).

    .venv/bin/python benchmarks/neural_process.py                    # K = 5, 10, 20
    .venv/bin/python benchmarks/neural_process.py --steps 100 --tasks 50 --quick   # smoke run

For each K (context points), three models are meta-trained with 25 tasks per step, Adam 1e-3, the same number of
steps and one thread: MAML on the 1-40-40-1 MLP (one inner SGD step of 0.01, as the paper; tested after 10 steps),
and the conditional and attentive neural processes (width 128, trained on the query Gaussian log-likelihood,
deterministic path). All three are scored on the same 600 held-out tasks with K support and K query points: query
MSE for all, and the Gaussian negative log-likelihood (nats per target) for the neural processes, which predict a
standard deviation too (MAML gives a point prediction only). Mean and 95% CI over tasks.

Writes benchmarks/results/neural_process.json and neural_process.png. Run alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import RESULTS, WORK, header, save_figure

from fewshot import io
from fewshot.algorithms.neural_process import task_nll
from fewshot.config import TrainConfig
from fewshot.evaluate import evaluate_regression, mean_ci95
from fewshot.tasks.regression import Sinusoid
from fewshot.train import Trainer

METHODS = {"MAML (10 steps at test)": "maml", "CNP": "cnp", "ANP (deterministic)": "anp"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=10000, help="meta-training steps per model (25 tasks each)"
    )
    parser.add_argument("--tasks", type=int, default=600, help="held-out test tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="write neural_process_quick.json (git-ignored)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = RESULTS / ("neural_process_quick.json" if args.quick else "neural_process.json")
    results = header("neural_process", args.seed, threads=1, steps=args.steps, tasks=args.tasks, rows=[])
    for shots in (5, 10, 20):
        test = Sinusoid(
            shots=shots, queries=shots, seed=args.seed + 2_000_003
        )  # the same tasks for every model
        for name, algorithm in METHODS.items():
            own = (
                dict(inner_lr=0.01, inner_steps=1, test_inner_steps=10, route="vmap")
                if algorithm == "maml"
                else {}
            )
            config = TrainConfig.of(algorithm=algorithm, dataset="sinusoid", shots=shots, queries=shots,
                                    steps=args.steps, tasks_per_step=25, lr_schedule="constant", val_every=0,
                                    log_every=500, seed=args.seed, **own)  # fmt: skip
            start = time.perf_counter()
            trainer = Trainer(
                config, WORK / "neural_process" / f"{algorithm}-k{shots}", progress=False, overwrite=True
            )
            trainer.run()
            seconds = time.perf_counter() - start
            model, params = trainer.model.eval(), trainer.params()
            mse = evaluate_regression(
                config.build_algorithm(testing=True), model, test, args.tasks, params, False
            )
            row = {
                "method": name,
                "shots": shots,
                "train_seconds": seconds,
                "mse": mse.mean,
                "mse_ci95": mse.ci95,
            }
            if algorithm != "maml":
                row["nll"], row["nll_ci95"] = mean_ci95(task_nll(model, params, test.task, args.tasks))
            results["rows"].append(row)
            print(f"K={shots:2d} {name}: MSE {mse.mean:.4f} +- {mse.ci95:.4f}"
                  + (f", NLL {row['nll']:.3f} +- {row['nll_ci95']:.3f}" if "nll" in row else "")
                  + f" ({seconds:.0f} s)", flush=True)  # fmt: skip
        io.write_json(out, results)
    plot(results, out.with_suffix(".png"))
    print(table(results))


def table(results: dict) -> str:
    lines = ["| method | K | query MSE | query NLL (nats) | training |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        nll = f"{r['nll']:.3f} ± {r['nll_ci95']:.3f}" if "nll" in r else "-"
        lines.append(f"| {r['method']} | {r['shots']} | {r['mse']:.4f} ± {r['mse_ci95']:.4f} | {nll} | "
                     f"{r['train_seconds']:.0f} s |")  # fmt: skip
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in METHODS:
        rows = [r for r in results["rows"] if r["method"] == name]
        ks = [r["shots"] for r in rows]
        axes[0].errorbar(ks, [r["mse"] for r in rows], yerr=[r["mse_ci95"] for r in rows], marker="o", capsize=3,
                         label=name)  # fmt: skip
        if "nll" in rows[0]:
            axes[1].errorbar(ks, [r["nll"] for r in rows], yerr=[r["nll_ci95"] for r in rows], marker="o",
                             capsize=3, label=name)  # fmt: skip
    axes[0].set_yscale("log")
    for ax, label in zip(axes, ("query MSE", "query negative log-likelihood (nats)"), strict=True):
        ax.set_xlabel("context points K")
        ax.set_ylabel(label)
        ax.set_xticks([5, 10, 20])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Sinusoids, {results['tasks']} held-out tasks, {results['steps']:,} training steps per model"
    )
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
