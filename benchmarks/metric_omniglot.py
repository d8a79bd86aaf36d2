"""Matching, Relation and Siamese networks on Omniglot (Vinyals split, 28x28) beside their papers' numbers.

    .venv/bin/python benchmarks/metric_omniglot.py --minutes 10                 # 3 methods x 2 models
    .venv/bin/python benchmarks/metric_omniglot.py --methods relation --shots 5 # (re)train one, keep the rest
    .venv/bin/python benchmarks/metric_omniglot.py --minutes 0.2 --test-episodes 20 --out /tmp/m.json  # smoke

Per method, two models, each trained for ``--minutes`` (validation excluded) on 20-way episodes with 5
queries per class: a 1-shot model (tested on 5-way 1-shot and 20-way 1-shot) and a 5-shot model (tested on
5-way 5-shot). Adam 1e-3 halved every 2000 steps, bf16 autocast, channels_last; the checkpoint with the best
5-way validation accuracy (100 episodes) is tested on ``--test-episodes`` (1000) episodes, 15 queries per class.

Published numbers (Omniglot, Vinyals split): Matching Networks (Vinyals et al. 2016, Table 1; without FCE,
which the paper used for miniImageNet only), Relation Network (Sung et al. 2018, Table 1), Siamese Nets (Koch
et al. 2015, as reported by Vinyals et al. 2016, Table 1). Settings: Matching with the paper's cosine
attention (scale 1), and as ``matching-s10`` with the cosines times 10 before the softmax; Siamese with Koch et al.'s weighted-L1 head and binary cross-entropy over every pair of an
episode, on the same conv4 as the others (the paper used a larger network on 105x105 images).

Writes benchmarks/results/metric_omniglot.json (machine, versions, seed, command, every number) and
benchmarks/results/metric_omniglot_curve.png.
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

PAPER = {  # (ways, shots) -> accuracy in %
    "matching": {(5, 1): 98.1, (5, 5): 98.9, (20, 1): 93.8},
    "relation": {(5, 1): 99.6, (5, 5): 99.8, (20, 1): 97.6},
    "siamese": {(5, 1): 97.3, (5, 5): 98.4, (20, 1): 88.2},
}
PAPER["matching-s10"] = PAPER["matching"]
# Variants: name -> (algorithm, settings beyond the defaults). With the paper's plain cosine (scale 1) the attention
# over 20 support examples is nearly uniform and Matching Networks learn slowly; scale 10 sharpens it.
VARIANTS = {"matching-s10": ("matching", {"matching_scale": 10.0})}
TESTS = {1: [(5, 1), (20, 1)], 5: [(5, 5)]}  # the settings each model is tested on


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per model")
    parser.add_argument("--methods", nargs="+", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], choices=[1, 5])
    parser.add_argument("--test-episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "metric_omniglot.json")
    args = parser.parse_args()

    results = header("metric_omniglot", args.seed, minutes_per_model=args.minutes, models={}, test=[])
    redo = {(m, s) for m in args.methods for s in args.shots}
    if args.out.is_file():  # keep what other invocations measured
        old = json.loads(args.out.read_text())
        results["models"] = {k: v for k, v in old["models"].items() if tuple(v["key"]) not in redo}
        results["test"] = [r for r in old["test"] if (r["method"], r["trained_shots"]) not in redo]
        results["earlier_commands"] = sorted({old["command"], *old.get("earlier_commands", [])})
    for method in args.methods:
        for shots in args.shots:
            algorithm, extra_settings = VARIANTS.get(method, (method, {}))
            config = TrainConfig.of(
                **extra_settings, algorithm=algorithm, ways=20, shots=shots, queries=5, steps=1_000_000, max_minutes=args.minutes,
                val_every=200, val_episodes=100, val_ways=5, val_shots=shots, bf16=True, seed=args.seed,
            )  # fmt: skip
            run_dir = WORK / f"{method}-20w{shots}s"
            print(f"training {method} 20-way {shots}-shot for {args.minutes} min -> {run_dir}", flush=True)
            trained = train_with_curve(config, run_dir)
            results["models"][f"{method} {shots}-shot"] = trained | {"key": [method, shots]}
            run = load_run(run_dir, "best")
            model, config = run.model, run.config
            test_data = load_split(config, "test")
            for ways, k in TESTS[shots]:
                start = time.perf_counter()
                r = evaluate(run.algorithm(), model, test_data, ways, k, 15,
                             args.test_episodes, args.seed, params=run.params, progress=False)  # fmt: skip
                results["test"].append(
                    {
                        "method": method, "trained_shots": shots, "ways": ways, "shots": k,
                        "episodes": r.episodes, "mean": r.mean, "ci95": r.ci95, "paper": PAPER[method][(ways, k)],
                        "eval_seconds": time.perf_counter() - start, "train_minutes": trained["train_seconds"] / 60,
                        "train_steps": trained["steps"],
                    }
                )  # fmt: skip
                print(f"  {method}: {r}   (paper {PAPER[method][(ways, k)]})", flush=True)
            io.write_json(args.out, results)  # after each model, so a long run keeps what it has
    plot_curves(
        {k: v for k, v in results["models"].items() if v.get("curve")},
        args.out.with_name("metric_omniglot_curve.png"),
        "Matching, Relation, Siamese on Omniglot",
    )
    print(markdown_table(results))


def markdown_table(results: dict) -> str:
    lines = ["| method | setting | fewshot (95% CI) | paper | training |", "|---|---|---|---|---|"]
    for row in sorted(results["test"], key=lambda r: (r["method"], r["ways"], r["shots"])):
        lines.append(
            f"| {row['method']} | {row['ways']}-way {row['shots']}-shot | {100 * row['mean']:.2f} ± "
            f"{100 * row['ci95']:.2f} | {row['paper']} | {row['train_minutes']:.1f} min, {row['train_steps']} "
            f"episodes |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
