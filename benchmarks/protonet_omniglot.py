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
import json
import time
from pathlib import Path

from common import RESULTS, WORK, header, plot_curves, train_with_curve

from fewshot import io
from fewshot.config import TrainConfig
from fewshot.datasets import load_split
from fewshot.evaluate import evaluate
from fewshot.runs import load_run

PAPER = {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9}  # Snell et al. 2017, Table 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per model")
    parser.add_argument("--test-episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], choices=[1, 5],
                        help="which models to (re)train; results of the others are kept from --out")  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS / "protonet_omniglot.json"))
    args = parser.parse_args()

    results = header("protonet_omniglot", args.seed, minutes_per_model=args.minutes, models={}, test=[])
    if set(args.shots) != {1, 5} and Path(args.out).is_file():  # keep the other model's measured results
        old = json.loads(Path(args.out).read_text())
        results["models"] = {
            k: v
            for k, v in old["models"].items()
            if not k.startswith(tuple(f"trained {s}-shot" for s in args.shots))
        }
        results["test"] = [r for r in old["test"] if r["shots"] not in args.shots]
        results["earlier_runs"] = [
            {"command": old["command"], "shots": sorted({r["shots"] for r in results["test"]})}
        ]
    for shots in args.shots:
        config = TrainConfig.of(
            ways=60, shots=shots, queries=5, steps=1_000_000, max_minutes=args.minutes,
            val_every=args.val_every, val_episodes=300, val_ways=5, val_shots=shots,
            bf16=args.bf16, seed=args.seed,
        )  # fmt: skip
        run_dir = WORK / f"protonet-60w{shots}s"
        print(f"training 60-way {shots}-shot for {args.minutes} min -> {run_dir}", flush=True)
        trained = results["models"][f"trained {shots}-shot, 5-way {shots}-shot validation"] = (
            train_with_curve(config, run_dir)
        )
        run = load_run(run_dir, "best")
        model, config = run.model, run.config
        test_data = load_split(config, "test")
        for ways in (5, 20):
            start = time.perf_counter()
            r = evaluate(run.algorithm(), model, test_data, ways, shots, 15,
                         args.test_episodes, args.seed, params=run.params, progress=False)  # fmt: skip
            results["test"].append(
                {
                    "ways": ways,
                    "shots": shots,
                    "episodes": r.episodes,
                    "mean": r.mean,
                    "ci95": r.ci95,
                    "paper": PAPER[(ways, shots)],
                    "eval_seconds": time.perf_counter() - start,
                    "train_minutes": trained["train_seconds"] / 60,
                    "train_steps": trained["steps"],
                }  # fmt: skip
            )
            print(f"  {r}   (paper {PAPER[(ways, shots)]})", flush=True)
        io.write_json(args.out, results)  # after each model, so a long run keeps what it has

    plot_curves(
        results["models"],
        Path(args.out).with_name("protonet_omniglot_curve.png"),
        "ProtoNet, Omniglot (Vinyals split)",
    )
    print(markdown_table(results))


def markdown_table(results: dict) -> str:
    lines = [
        "| setting | fewshot (95% CI) | Snell et al. 2017 | training | test episodes |",
        "|---|---|---|---|---|",
    ]
    for row in sorted(results["test"], key=lambda r: (r["ways"], r["shots"])):
        lines.append(
            f"| {row['ways']}-way {row['shots']}-shot | {100 * row['mean']:.2f} +- {100 * row['ci95']:.2f} | "
            f"{row['paper']} | {row['train_minutes']:.1f} min, {row['train_steps']} episodes | {row['episodes']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
