"""ProtoNet on Omniglot (Vinyals split): accuracy against the paper, under a training-time budget.

    .venv/bin/python benchmarks/protonet_omniglot.py            # full: 2 models x 15 min, 1000 test episodes
    .venv/bin/python benchmarks/protonet_omniglot.py --minutes 1 --test-episodes 100   # smoke run

As in Snell et al. 2017 (section 3.1), two models are trained with 60-way episodes and 5 queries per class, one
with 1 shot (tested on 1-shot tasks) and one with 5 shots (tested on 5-shot tasks), Adam 1e-3 halved every
2000 episodes. Each model gets ``--minutes`` of training time (validation excluded); the checkpoint with the
best 5-way validation accuracy is tested on 1000 episodes of the test classes, 5- and 20-way.

Writes benchmarks/results/protonet_omniglot.json (machine, versions, seed, command, every number) and
benchmarks/results/protonet_omniglot_curve.png (validation accuracy against training time).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from fewshot import io
from fewshot.evaluate import evaluate
from fewshot.registry import build_algorithm
from fewshot.train import TrainConfig, Trainer, environment, load_model, load_split

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAPER = {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9}  # Snell et al. 2017, Table 1


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except Exception:
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per model")
    parser.add_argument("--test-episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--out", default=str(RESULTS / "protonet_omniglot.json"))
    parser.add_argument("--run-root", default=str(ROOT / "benchmarks" / "work"))
    args = parser.parse_args()

    results: dict = {
        "benchmark": "protonet_omniglot",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "env": environment()
        | {"cpu_model": cpu_model(), "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "")},
        "seed": args.seed,
        "minutes_per_model": args.minutes,
        "models": {},
        "test": [],
    }
    for shots in (1, 5):
        config = TrainConfig(
            ways=60, shots=shots, queries=5, steps=1_000_000, max_minutes=args.minutes,
            val_every=args.val_every, val_episodes=300, val_ways=5, val_shots=shots,
            bf16=args.bf16, seed=args.seed,
        )  # fmt: skip
        run_dir = Path(args.run_root) / f"protonet-60w{shots}s"
        print(f"training 60-way {shots}-shot for {args.minutes} min -> {run_dir}", flush=True)
        Trainer(config, run_dir, progress=False).run()
        metrics = io.read_jsonl(run_dir / "metrics.jsonl")
        curve = [
            {
                "train_seconds": m["train_seconds"],
                "step": m["step"],
                "val_acc": m["val_score"],
                "val_ci95": m["val_ci95"],
            }
            for m in metrics
            if "val_score" in m
        ]
        results["models"][f"{shots}-shot"] = {
            "config": config.__dict__,
            "episodes": metrics[-1]["step"],
            "train_seconds": metrics[-1]["train_seconds"],
            "seconds_with_validation": metrics[-1]["seconds"],
            "curve": curve,
        }
        model, config, _ = load_model(run_dir, "best.safetensors")
        test_data = load_split(config, "test")
        algorithm = build_algorithm(config, testing=True)
        for ways in (5, 20):
            start = time.perf_counter()
            r = evaluate(
                algorithm, model, test_data, ways, shots, 15, args.test_episodes, args.seed, progress=False
            )
            row = {
                "ways": ways, "shots": shots, "episodes": r.episodes, "mean": r.mean, "ci95": r.ci95,
                "paper": PAPER[(ways, shots)], "eval_seconds": time.perf_counter() - start,
                "train_minutes": metrics[-1]["train_seconds"] / 60, "train_episodes": metrics[-1]["step"],
            }  # fmt: skip
            results["test"].append(row)
            print(f"  {r}   (paper {PAPER[(ways, shots)]})", flush=True)
        io.write_json(args.out, results)  # after each model, so a long run keeps what it has

    plot_curve(results, Path(args.out).with_name("protonet_omniglot_curve.png"))
    print(markdown_table(results))


def markdown_table(results: dict) -> str:
    lines = [
        "| setting | fewshot (95% CI) | Snell et al. 2017 | training | test episodes |",
        "|---|---|---|---|---|",
    ]
    for row in sorted(results["test"], key=lambda r: (r["ways"], r["shots"])):
        lines.append(
            f"| {row['ways']}-way {row['shots']}-shot | {100 * row['mean']:.2f} +- {100 * row['ci95']:.2f} | "
            f"{row['paper']} | {row['train_minutes']:.1f} min, {row['train_episodes']} episodes | {row['episodes']} |"
        )
    return "\n".join(lines)


def plot_curve(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, model in results["models"].items():
        xs = [p["train_seconds"] / 60 for p in model["curve"]]
        ys = [100 * p["val_acc"] for p in model["curve"]]
        cis = [100 * p["val_ci95"] for p in model["curve"]]
        ax.plot(xs, ys, marker="o", label=f"trained {name}, 5-way {name} validation")
        ax.fill_between(
            xs,
            [y - c for y, c in zip(ys, cis, strict=True)],
            [y + c for y, c in zip(ys, cis, strict=True)],
            alpha=0.2,
        )
    ax.set_xlabel("training time (minutes, 2 CPU cores)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("ProtoNet, Omniglot (Vinyals split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("FEWSHOT_THREADS", torch.get_num_threads())))
    main()
